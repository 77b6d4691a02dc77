"""What an export writes: options, defaults from the spec's fabrication section, output paths (pure, no I/O).

`plan_export` resolves the options against the spec and the design into an `ExportPlan`; `check_outputs` then looks
at the file system once, before anything is written. Errors name spec fields (`fabrication.levels`) or
`ExportOptions` arguments (`{levels}` fields of an `ArgumentError`, which a command shows as its own option names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lensdesign.errors import ArgumentError
from lensdesign.fabrication.quantize import level_step
from lensdesign.rundir import Design
from lensdesign.spec import Spec

PROCESSES = ("multilevel", "grayscale", "two_photon")
TONES = ("clear", "dark")


@dataclass
class ExportOptions:
    """What to write and how; None means: take it from the spec's fabrication section. Lengths in metres.

    `tone` is the polarity of the multilevel masks: "clear" draws the material kept during each etch (clear-field
    photomask with positive resist), "dark" draws the areas etched (its complement within the die square).
    """

    tiff: bool = False
    gds: bool = False
    oasis: bool = False
    stl: bool = False
    levels: int | None = None
    process: str | None = None
    out: Path | None = None
    force: bool = False
    field_m: float = 500e-6
    base_m: float = 5e-6
    lut: Path | None = None
    misalignment_m: float | None = None
    workers: int | None = None
    arc_tolerance_m: float = 10e-9  # ring polygons within this of their circles (plus the 1 nm grid)
    tone: str = "clear"
    sag: bool = False  # NAME.sag.csv: the continuous sag of a refractive or hybrid element


@dataclass(frozen=True)
class StlField:
    """One two-photon print field: its grid position (R counts from the bottom row), pixel rows and columns [a, b),
    and its file."""

    row: int
    col: int
    r0: int
    r1: int
    c0: int
    c1: int
    path: Path


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export will do, resolved: process, levels, files, geometry. Lengths in metres."""

    name: str
    run: Path
    out: Path
    process: str
    levels: int
    tone: str
    tiff: bool
    gds: bool
    oasis: bool
    stl: bool
    paths: dict[str, Path]  # "height", "levels", "grey", "gds", "oas" → file
    stl_fields: tuple[StlField, ...]
    rules_path: Path
    force: bool
    n: int
    pitch_m: float
    max_height_m: float
    level_height_m: float
    aperture_m: float
    material: str
    design_wavelength_m: float
    radial: bool
    field_m: float
    base_m: float
    lut: Path | None
    misalignment_m: float
    min_feature_m: float | None
    workers: int | None
    arc_tolerance_m: float
    wrapped: bool = True  # a diffractive relief (levels wrap at max_height); False: a refractive or hybrid sag

    @property
    def layered(self) -> bool:
        """Whether a GDSII or OASIS layout is written."""
        return self.gds or self.oasis

    @property
    def mask_count(self) -> int:
        """Binary masks of a multilevel process (log2 levels); 0 for a single exposure."""
        return round(math.log2(self.levels)) if self.process == "multilevel" else 0

    @property
    def etch_depths_m(self) -> list[float]:
        """Etch depth of each multilevel mask j: max_height · 2^j / levels (m)."""
        return [self.max_height_m * 2**j / self.levels for j in range(self.mask_count)]

    @property
    def cell_names(self) -> list[str]:
        """Layout cell of each multilevel mask: NAME_M{j+1}_ETCH{depth in nm, '.' as 'p'}NM."""
        from lensdesign.fabrication.gds import cell_name

        return [cell_name(f"{self.name}_M{j + 1}_ETCH{d * 1e9:.1f}NM".replace(".", "p"))
                for j, d in enumerate(self.etch_depths_m)]

    @property
    def files(self) -> list[Path]:
        """Every file this export writes, NAME.rules.json last."""
        return [*self.paths.values(), *(f.path for f in self.stl_fields), self.rules_path]


def resolve_process_levels(spec: Spec, process: str | None, levels: int | None) -> tuple[str, int]:
    """Process and level count from the arguments or the spec, checked (one-line errors naming the source)."""
    proc = process or spec.fabrication.process
    if proc not in PROCESSES:
        src = "{process}" if process else "fabrication.process"
        raise ArgumentError(src + ": unknown process {proc!r}; use multilevel, grayscale or two_photon", proc=proc)
    if proc == "multilevel" and spec.optics.element != "diffractive":
        src = "{process}" if process else "fabrication.process"
        raise ArgumentError(src + ": a multilevel mask set cannot make the {element} sag of this design (its "
                            "binary etches build a wrapped relief); use grayscale or two_photon, or {sag} for a "
                            "sag table", element=spec.optics.element)
    n = int(levels if levels is not None else spec.fabrication.levels)
    src = "{levels}" if levels is not None else "fabrication.levels"
    if n < 2 or n > 65536:
        raise ArgumentError(src + ": {n} levels is out of range; use 2 to 65536", n=n)
    if proc == "multilevel" and n & (n - 1):
        raise ArgumentError(src + ": {n} is not a power of two; process multilevel uses k binary masks for 2^k "
                            "levels: use 2, 4, 8, 16 or 32", n=n)
    return proc, n


def field_grid(n: int, field_px: int) -> list[tuple[int, int, int, int, int, int]]:
    """(R, C, r0, r1, c0, c1) of each print field, R counting from the bottom row.

    As few fields as fit `field_px`, of (nearly) equal size: no sliver fields at the edge.
    """
    k = math.ceil(n / field_px)
    cuts = [round(i * n / k) for i in range(k + 1)]
    return [(a, b, cuts[a], cuts[a + 1], cuts[b], cuts[b + 1]) for a in range(k) for b in range(k)]


def _formats(opts: ExportOptions, process: str, levels: int, wrapped: bool = True) -> tuple[bool, bool, bool, bool]:
    """(tiff, gds, oasis, stl) to write: the options, or the process's defaults when none is chosen (a sag, not
    `wrapped`: no layout by default, its sag table instead)."""
    tiff, gds, oas, stl = opts.tiff, opts.gds, opts.oasis, opts.stl
    if not (tiff or gds or oas or stl or opts.lut or opts.sag):
        tiff, gds, stl = True, process != "two_photon" and wrapped, process == "two_photon"
    if (gds or oas) and process != "multilevel" and levels > 256:
        src = "{levels}" if opts.levels is not None else "fabrication.levels"
        raise ArgumentError(src + ": a {process} layout stores the level in the GDS datatype (0-255); use at most "
                            "256 levels with {gds}/{oasis}, or write {tiff} only", process=process)
    return tiff, gds, oas, stl


def _check_geometry(opts: ExportOptions, process: str, pitch_m: float, stl: bool) -> int:
    """Tone, field and base checked against the process and the pitch; returns the print field in pixels."""
    if opts.tone not in TONES:
        raise ArgumentError("{tone}: unknown tone {t!r}; use clear or dark", t=opts.tone)
    if opts.tone != "clear" and process != "multilevel":
        raise ArgumentError("{tone}: tone {t} applies to the binary masks of process multilevel; a {process} export "
                            "has none, drop the tone", t=opts.tone, process=process)
    field_px = math.floor(opts.field_m / pitch_m + 1e-9)
    if stl and field_px < 1:
        raise ArgumentError("{field_m}: {f:.4g} um is smaller than the pitch {p:.4g} um; use e.g. a 500 um field",
                            f=opts.field_m * 1e6, p=pitch_m * 1e6)
    if opts.base_m <= 0:
        raise ArgumentError("{base_m}: the substrate base must be thicker than 0; use e.g. 5 um")
    return field_px


def _paths(out: Path, name: str, tiff: bool, grey: bool, gds: bool, oas: bool, sag: bool = False) -> dict[str, Path]:
    """Output files of the TIFF, sag-table and layout writers, by kind."""
    paths: dict[str, Path] = {}
    if sag:
        paths["sag"] = out / f"{name}.sag.csv"
    if tiff:
        paths["height"] = out / f"{name}.height.tiff"
        paths["levels"] = out / f"{name}.levels.tiff"
    if grey:
        paths["grey"] = out / f"{name}.grey.tiff"
    if gds:
        paths["gds"] = out / f"{name}.gds"
    if oas:
        paths["oas"] = out / f"{name}.oas"
    return paths


def plan_export(spec: Spec, design: Design, opts: ExportOptions, run: Path) -> ExportPlan:
    """Resolve `opts` against the run's spec and design: what to write where, and with which numbers. No I/O."""
    process, levels = resolve_process_levels(spec, opts.process, opts.levels)
    wrapped = design.element == "diffractive"
    tiff, gds, oas, stl = _formats(opts, process, levels, wrapped)
    pitch = design.pitch_m
    field_px = _check_geometry(opts, process, pitch, stl)
    n = int(design.height_m.shape[0])
    name = design.name
    out = Path(opts.out) if opts.out is not None else run / "export"
    fields = field_grid(n, field_px) if stl else []
    stl_fields = tuple(
        StlField(fr, fc, r0, r1, c0, c1,
                 out / (f"{name}.stl" if len(fields) == 1 else f"{name}.field-{fr:02d}-{fc:02d}.stl"))
        for fr, fc, r0, r1, c0, c1 in fields)
    mis = opts.misalignment_m if opts.misalignment_m is not None else (spec.fabrication.misalignment or 0.0)
    max_h = design.max_height_m
    if opts.sag and wrapped:
        raise ArgumentError("{sag}: a sag table is for refractive and hybrid elements; this design is a diffractive "
                            "relief wrapped at max_height, export it with {tiff}, {gds} or {stl}")
    sag = opts.sag or (not wrapped and not (opts.tiff or opts.gds or opts.oasis or opts.stl or opts.lut))
    return ExportPlan(
        name=name, run=run, out=out, process=process, levels=levels, tone=opts.tone, tiff=tiff, gds=gds, oasis=oas,
        stl=stl, paths=_paths(out, name, tiff, opts.lut is not None, gds, oas, sag), stl_fields=stl_fields,
        rules_path=out / f"{name}.rules.json", force=opts.force, n=n, pitch_m=pitch, max_height_m=max_h,
        level_height_m=level_step(max_h, levels, wrapped), aperture_m=design.aperture_m or spec.optics.aperture,
        material=design.material or spec.material_name,
        design_wavelength_m=design.design_wavelength_m or spec.design_wavelength_m,
        radial=design.parameterization == "radial", field_m=field_px * pitch, base_m=opts.base_m, lut=opts.lut,
        misalignment_m=mis, min_feature_m=spec.fabrication.min_feature, workers=opts.workers,
        arc_tolerance_m=opts.arc_tolerance_m, wrapped=wrapped)


def check_outputs(plan: ExportPlan) -> None:
    """Refuse, before anything is written, an output folder that is a file or a planned file that exists
    (unless `force`)."""
    if plan.out.exists() and not plan.out.is_dir():
        raise ArgumentError("{out}: {path} is a file; give a folder", path=plan.out)
    if not plan.force:
        for p in plan.files:
            if p.exists():
                raise ArgumentError("{path}: already exists; pass {force} to overwrite or choose another {out}", path=p)


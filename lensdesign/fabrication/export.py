"""Export a run's design for fabrication: quantize, write TIFF / GDSII / OASIS / STL and the design-rule report.

The level map is the one quantizer the optimizer trains against (`quantize.level_index`) applied to the design's
height map (m), set to level 0 outside the clear aperture. A radial design is written as rings, and its level map
is the pixel-centre rasterization of the ring polygons actually written (see `rings`), so every file rebuilds to
the same pixels. Every file is written whole or not at all; NAME.rules.json comes last and lists the others.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensdesign.errors import LensdesignError
from lensdesign.fabrication import gds as gdsmod
from lensdesign.fabrication.quantize import level_index, level_step, staircase_efficiency
from lensdesign.fabrication.rings import MAX_VERTICES, RingLayout, ring_layout, ring_runs, rings_polygons
from lensdesign.fabrication.rules import fill_factor, misalignment_report, plateau_lengths, run_lengths
from lensdesign.fabrication.tiff import grey_levels, level_dtype, read_lut, write_tiff
from lensdesign.rundir import RunDir, atomic_write_json
from lensdesign.spec import Spec

PROCESSES = ("multilevel", "grayscale", "two_photon")
ROW_CONVENTION = ("array row 0 is at the bottom (smallest y) and y increases with the row index; TIFF rows are array "
                  "rows (TIFF Orientation tag 4, bottom-left)")
ORIGIN_CONVENTION = "the optical axis is at (0, 0), the centre of pixel (N//2, N//2); pixel (i, j) is centred at " \
                    "x = (j - N//2)·pitch, y = (i - N//2)·pitch"


@dataclass
class ExportOptions:
    """What to write and how; None means: take it from the spec's fabrication section."""

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


@dataclass
class ExportResult:
    out: Path
    name: str
    files: dict[str, int]  # file name → bytes
    rules: dict[str, Any]
    violations: list[str]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class LevelMap:
    """The quantized design: level per pixel (0 outside the aperture), the aperture, and the rings if radial."""

    levels: np.ndarray
    inside: np.ndarray
    rings: RingLayout | None = None
    ring_levels: np.ndarray | None = None
    note: str | None = None


def resolve_process_levels(spec: Spec, process: str | None, levels: int | None) -> tuple[str, int]:
    """Process and level count from the options or the spec, checked (one-line errors naming the option)."""
    proc = process or spec.fabrication.process
    if proc not in PROCESSES:
        raise LensdesignError(f"--process: unknown process {proc!r}; use multilevel, grayscale or two_photon")
    n = int(levels if levels is not None else spec.fabrication.levels)
    src = "--levels" if levels is not None else "fabrication.levels"
    if n < 2 or n > 65536:
        raise LensdesignError(f"{src}: {n} levels is out of range; use 2 to 65536")
    if proc == "multilevel" and n & (n - 1):
        raise LensdesignError(f"{src}: {n} is not a power of two; process multilevel uses k binary masks for 2^k "
                              "levels: use 2, 4, 8, 16 or 32")
    return proc, n


def level_map(spec: Spec, design: Any, levels: int, tolerance_m: float = 10e-9) -> LevelMap:
    """Quantize a design (rundir.Design) to `levels` over [0, max_height); rings for a radial design."""
    from lensdesign.optics.psf import aperture_mask

    h = np.asarray(design.height_m, dtype=np.float64)
    n = h.shape[0]
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise LensdesignError(f"design height map has shape {h.shape}; export needs a square map, re-create the run")
    pitch = design.pitch_m
    aperture = float(design.meta.get("aperture_m", spec.optics.aperture))
    max_h = design.max_height_m
    meta = design.meta
    if meta.get("parameterization") == "radial":
        prof = design.tensors.get("radial_profile_m")
        w = meta.get("ring_width_m")
        if prof is not None and w:
            rl = ring_layout(float(w), aperture, pitch, n, tolerance_m)
            ring_lv = np.asarray(level_index(prof.double().numpy(), max_h, levels), dtype=np.int64)
            if len(ring_lv) < rl.rings:
                raise LensdesignError(f"design: radial_profile_m has {len(ring_lv)} rings but the aperture holds "
                                      f"{rl.rings}; re-create the run")
            inside = rl.ring_index >= 0
            lv = np.where(inside, ring_lv[np.maximum(rl.ring_index, 0)], 0)
            return LevelMap(lv, inside, rl, ring_lv[: rl.rings])
        note = "design.json says radial but radial_profile_m or ring_width_m is missing: exported as pixels"
    else:
        note = None
    inside = aperture_mask(n, pitch, aperture).numpy().astype(bool)
    lv = np.asarray(level_index(h, max_h, levels), dtype=np.int64)
    lv[~inside] = 0
    return LevelMap(lv, inside, note=note)


def _field_grid(n: int, field_px: int) -> list[tuple[int, int, int, int, int, int]]:
    """(R, C, r0, r1, c0, c1) of each print field, R counting from the bottom row.

    As few fields as fit `field_px`, of (nearly) equal size: no sliver fields at the edge.
    """
    k = math.ceil(n / field_px)
    cuts = [round(i * n / k) for i in range(k + 1)]
    return [(a, b, cuts[a], cuts[a + 1], cuts[b], cuts[b + 1]) for a in range(k) for b in range(k)]


def _ring_feature_widths(rl: RingLayout, selected: np.ndarray) -> tuple[float | None, float | None]:
    """Smallest feature and gap (m) of a set of rings: radial widths of annuli, diameters of a central disk/hole."""
    radii = np.array([0.0] + [b.radius_nm for b in rl.boundaries]) * 1e-9
    feats, gaps = [], []
    runs = ring_runs(selected)
    for a, b in runs:
        feats.append(2 * radii[b] if a == 0 else radii[b] - radii[a])
    for (_, b0), (a1, _) in itertools.pairwise(runs):
        gaps.append(radii[a1] - radii[b0])
    if runs and runs[0][0] > 0:
        gaps.append(2 * radii[runs[0][0]])  # the hole in the middle of the innermost annulus
    return (min(feats) if feats else None), (min(gaps) if gaps else None)


def export_run(run: str | Path, opts: ExportOptions) -> ExportResult:
    """Export RUN's design. Raises LensdesignError (one line) on a user error; writes nothing in that case."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    r = RunDir(run).require()
    spec = r.load_spec()
    design = r.load_design()
    process, levels = resolve_process_levels(spec, opts.process, opts.levels)
    want_tiff, want_gds, want_oas, want_stl = opts.tiff, opts.gds, opts.oasis, opts.stl
    if not (want_tiff or want_gds or want_oas or want_stl or opts.lut):
        want_tiff = True
        want_gds = process != "two_photon"
        want_stl = process == "two_photon"
    layered = want_gds or want_oas
    if layered and process != "multilevel" and levels > 256:
        raise LensdesignError(f"--levels: a {process} layout stores the level in the GDS datatype (0-255); use at most "
                              "256 levels for --gds/--oasis, or export --tiff only")
    pitch = design.pitch_m
    n = design.height_m.shape[0]
    radial = design.meta.get("parameterization") == "radial"
    if layered or radial:
        gdsmod.check_pitch(pitch)
    lut = read_lut(opts.lut) if opts.lut is not None else None
    field_px = math.floor(opts.field_m / pitch + 1e-9)
    if want_stl and field_px < 1:
        raise LensdesignError(f"--field: {opts.field_m * 1e6:.4g} um is smaller than the pitch {pitch * 1e6:.4g} um; "
                              "use e.g. --field 500um")
    if opts.base_m <= 0:
        raise LensdesignError("--base: the substrate base must be thicker than 0; use e.g. --base 5um")
    max_h = design.max_height_m
    step = level_step(max_h, levels)
    name = str(design.meta.get("name", spec.name))
    out = Path(opts.out) if opts.out is not None else r.path / "export"

    # ---- the files this export will write, checked before anything is written ------------------------------
    paths: dict[str, Path] = {}
    if want_tiff:
        paths["height"] = out / f"{name}.height.tiff"
        paths["levels"] = out / f"{name}.levels.tiff"
    if lut is not None:
        paths["grey"] = out / f"{name}.grey.tiff"
    if want_gds:
        paths["gds"] = out / f"{name}.gds"
    if want_oas:
        paths["oas"] = out / f"{name}.oas"
    fields = _field_grid(n, field_px) if want_stl else []
    stl_paths = []
    for fr, fc, *_ in fields:
        stl_paths.append(out / (f"{name}.stl" if len(fields) == 1 else f"{name}.field-{fr:02d}-{fc:02d}.stl"))
    rules_path = out / f"{name}.rules.json"
    if not opts.force:
        for p in [*paths.values(), *stl_paths, rules_path]:
            if p.exists():
                raise LensdesignError(f"{p}: already exists; pass --force to overwrite or choose another --out")
    if out.exists() and not out.is_dir():
        raise LensdesignError(f"--out: {out} is a file; give a folder")

    grey_table = grey_levels(lut[0], lut[1], np.arange(levels) * step, str(opts.lut)) if lut is not None else None
    t0 = time.perf_counter()
    lm = level_map(spec, design, levels, opts.arc_tolerance_m)
    timings["quantize_s"] = time.perf_counter() - t0
    lv = lm.levels
    heights = lv.astype(np.float64) * step
    desc = {
        "name": name, "process": process, "pitch_m": pitch, "pitch_um": pitch * 1e6, "levels": levels,
        "level_height_m": step, "max_height_m": max_h, "material": design.meta.get("material", spec.material_name),
        "design_wavelength_m": design.meta.get("design_wavelength_m", spec.design_wavelength_m),
        "aperture_m": float(design.meta.get("aperture_m", spec.optics.aperture)), "rows": ROW_CONVENTION,
        "origin": ORIGIN_CONVENTION,
    }
    # ---- TIFF -----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if want_tiff:
        write_tiff(paths["height"], heights.astype(np.float32), pitch,
                   {**desc, "content": "quantized height (m), float32: level index × level_height_m"})
        write_tiff(paths["levels"], lv.astype(level_dtype(levels)), pitch,
                   {**desc, "content": "level index (0 … levels-1); height = index × level_height_m"})
    if grey_table is not None:
        write_tiff(paths["grey"], grey_table[lv], pitch,
                   {**desc, "content": "8-bit grey value per pixel from the dose curve", "lut": str(opts.lut),
                    "grey_per_level": grey_table.tolist()})
    timings["tiff_s"] = time.perf_counter() - t0

    # ---- layout ---------------------------------------------------------------------------------------------
    k = round(math.log2(levels)) if process == "multilevel" else 0
    depths = [max_h * 2**j / levels for j in range(k)]
    masks = [((lv >> j) & 1).astype(bool) for j in range(k)]
    cell_names = [gdsmod.cell_name(f"{name}_M{j + 1}_ETCH{depths[j] * 1e9:.1f}NM".replace(".", "p")) for j in range(k)]
    shapes: dict[tuple[int, int], gdsmod.Shapes] = {}
    if layered:
        t0 = time.perf_counter()
        shapes = _layout_shapes(lm, process, levels, pitch, masks, opts.workers)
        timings["polygons_s"] = time.perf_counter() - t0
        if process == "multilevel":
            cells = [gdsmod.MaskCell(cell_names[j], [shapes[(j + 1, 0)]], f"{name} mask {j + 1} (bit {j}): etch "
                                     f"{depths[j] * 1e9:.2f} nm outside the drawn areas", mark_layer=j + 1)
                     for j in range(k)]
        else:
            cells = [gdsmod.MaskCell(gdsmod.cell_name(f"{name}_GRAYSCALE_{levels}L"), list(shapes.values()),
                                     f"{name} grayscale: datatype = level (step {step * 1e9:.3f} nm)",
                                     mark_layer=gdsmod.MARK_LAYER)]
        layout = gdsmod.Layout(name, cells, gdsmod.grid_half_size_um(n, pitch),
                               float(desc["aperture_m"]) / 2 / gdsmod.UNIT_M)
        t0 = time.perf_counter()
        lib = gdsmod.build_library(layout)
        timings["library_s"] = time.perf_counter() - t0
        if want_gds:
            t0 = time.perf_counter()
            gdsmod.write_library(lib, paths["gds"])
            timings["write_gds_s"] = time.perf_counter() - t0
        if want_oas:
            t0 = time.perf_counter()
            gdsmod.write_library(lib, paths["oas"], oasis=True)
            timings["write_oas_s"] = time.perf_counter() - t0
        del lib

    # ---- STL ------------------------------------------------------------------------------------------------
    stl_info = []
    if want_stl:
        from lensdesign.fabrication.stl import write_field_stl

        t0 = time.perf_counter()
        c = n // 2
        p_um = pitch * 1e6
        for (fr, fc, r0, r1, c0, c1), path in zip(fields, stl_paths, strict=True):
            x0, y0 = (c0 - c - 0.5) * p_um, (r0 - c - 0.5) * p_um
            header = f"lensdesign {name} field {fr},{fc} um x0={x0:.3f} y0={y0:.3f}"
            ntri = write_field_stl(path, lv[r0:r1, c0:c1], x0, y0, p_um, opts.base_m * 1e6, step * 1e6, header)
            stl_info.append({"file": path.name, "field": [fr, fc], "rows": [r0, r1], "cols": [c0, c1],
                             "origin_um": [x0, y0], "size_um": [(c1 - c0) * p_um, (r1 - r0) * p_um], "triangles": ntri})
        timings["stl_s"] = time.perf_counter() - t0

    # ---- design rules ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    min_feat = spec.fabrication.min_feature
    limit_px = (min_feat / pitch) if min_feat else 0.0
    violations: list[str] = []
    warnings: list[str] = []
    rules: dict[str, Any] = {
        "name": name, "run": str(r.path), "process": process, "levels": levels, "max_height_m": max_h,
        "level_height_m": step, "pitch_m": pitch, "grid": n, "material": desc["material"],
        "design_wavelength_m": desc["design_wavelength_m"], "aperture_m": desc["aperture_m"],
        "min_feature_m": min_feat, "staircase_efficiency": staircase_efficiency(levels),
        "parameterization": "radial" if lm.rings is not None else "pixel",
        "conventions": {
            "units": "GDS/OASIS: user unit 1 um, database unit 1 nm; STL: um; TIFF heights: m",
            "origin": ORIGIN_CONVENTION, "rows": ROW_CONVENTION,
            "levels": "level q has relief height q·level_height_m above the deepest etch floor; level 0 outside the "
                      "clear aperture",
        },
    }
    if lm.note:
        rules["note"] = lm.note
    if lm.rings is not None:
        ref = np.asarray(level_index(np.asarray(design.height_m, dtype=np.float64), max_h, levels))
        ref = np.where(lm.inside, ref, 0)
        rules["rings"] = {
            "ring_width_m": lm.rings.ring_width_nm * 1e-9, "rings": lm.rings.rings,
            "arc_tolerance_m": opts.arc_tolerance_m,
            "pixels_differing_from_design_map": int((ref != lv).sum()),
            "note": "levels.tiff is the pixel-centre rasterization of the ring polygons written; pixels whose centre "
                    "lies within a few nm of a ring edge may differ from the design's own pixel map",
        }
    layers: dict[str, str] = {}
    if process == "multilevel":
        mask_rows = []
        rules["conventions"]["masks"] = (
            "mask j (GDS layer j+1, cell NAME_M{j+1}_ETCH...) covers exactly the pixels whose level index has bit j set. "
            "The drawn areas keep their material during etch step j, which removes etch_depth_m everywhere else "
            "(e.g. chrome on a clear-field photomask with positive resist); the relief height of a pixel is then "
            "the sum of the etch depths of the masks that cover it = level × level_height_m. Where drawn areas are "
            "etched instead (e.g. e-beam direct write on positive resist), invert each mask's tone.")
        for j in range(k):
            m = masks[j]
            runs = run_lengths(m, limit_px)
            row: dict[str, Any] = {
                "mask": j + 1, "bit": j, "gds_layer": j + 1, "cell": cell_names[j], "etch_depth_m": depths[j],
                "fill_factor": fill_factor(m, lm.inside),
                "min_feature_m": runs.min_feature_px * pitch if runs.min_feature_px else None,
                "min_gap_m": runs.min_gap_px * pitch if runs.min_gap_px else None,
                "features_below_min": runs.features_below, "gaps_below_min": runs.gaps_below,
            }
            if lm.rings is not None:
                sel = ((lm.ring_levels >> j) & 1).astype(bool)
                rf, rg = _ring_feature_widths(lm.rings, sel)
                row["min_ring_feature_m"], row["min_ring_gap_m"] = rf, rg
                feat, gap = rf, rg
            else:
                feat, gap = row["min_feature_m"], row["min_gap_m"]
            if (j + 1, 0) in shapes:
                sh = shapes[(j + 1, 0)]
                row.update(polygons=sh.polygons, vertices=sh.vertices, max_vertices_per_polygon=sh.max_vertices)
            if min_feat:
                if feat is not None and feat < min_feat * (1 - 1e-9):
                    violations.append(f"mask {j + 1}: smallest feature {feat * 1e6:.3g} um < fabrication.min_feature "
                                      f"{min_feat * 1e6:.3g} um")
                if gap is not None and gap < min_feat * (1 - 1e-9):
                    violations.append(f"mask {j + 1}: smallest gap {gap * 1e6:.3g} um < fabrication.min_feature "
                                      f"{min_feat * 1e6:.3g} um")
            if not m.any():
                warnings.append(f"mask {j + 1}: empty (no pixel uses bit {j}); check the design and --levels")
            mask_rows.append(row)
            layers[str(j + 1)] = f"mask {j + 1}: bit {j}, etch {depths[j] * 1e9:.2f} nm (+ alignment marks)"
        rules["masks"] = mask_rows
    else:
        runs = plateau_lengths(lv, lm.inside, limit_px)
        rules["plateaus"] = {"min_feature_m": runs.min_feature_px * pitch if runs.min_feature_px else None,
                             "features_below_min": runs.features_below,
                             "note": "smallest run of one level between two level changes, along rows and columns"}
        if min_feat and runs.min_feature_px is not None and runs.min_feature_px * pitch < min_feat * (1 - 1e-9):
            violations.append(f"levels: smallest plateau {runs.min_feature_px * pitch * 1e6:.3g} um < "
                              f"fabrication.min_feature {min_feat * 1e6:.3g} um ({runs.features_below} runs)")
        if layered:
            layers["1"] = "grayscale: datatype = level index (level 0 is not drawn)"
            layers[str(gdsmod.MARK_LAYER)] = "alignment marks"
            rules["datatypes"] = [{"datatype": dt, "level": dt, "height_m": dt * step, "polygons": sh.polygons,
                                   "vertices": sh.vertices, "max_vertices_per_polygon": sh.max_vertices}
                                  for (_, dt), sh in sorted(shapes.items())]
    if layered:
        layers[str(gdsmod.APERTURE_LAYER)] = "clear aperture outline (not etched)"
        rules["layers"] = layers
        over = [f"layer {ly}/{dt}" for (ly, dt), sh in shapes.items() if sh.max_vertices > MAX_VERTICES]
        if over:  # pragma: no cover - the tiler splits such polygons
            violations.append(f"polygons over {MAX_VERTICES} vertices on {', '.join(over)}")
        rules["polygons"] = sum(sh.polygons for sh in shapes.values())
        rules["vertices"] = sum(sh.vertices for sh in shapes.values())
        rules["max_vertices_per_polygon"] = max((sh.max_vertices for sh in shapes.values()), default=0)
        rules["vertex_limit"] = MAX_VERTICES
    if grey_table is not None:
        rules["grey_per_level"] = grey_table.tolist()
    if stl_info:
        rules["stl"] = {"base_m": opts.base_m, "field_m": field_px * pitch, "fields": stl_info,
                        "note": "one closed solid per file, um; z = 0 is the bottom of the substrate base, the relief "
                                "top is base + height; pixel columns are flat-topped"}
    # ---- misalignment ---------------------------------------------------------------------------------------
    mis = opts.misalignment_m if opts.misalignment_m is not None else (spec.fabrication.misalignment or 0.0)
    if process != "multilevel":
        rules["misalignment"] = {"misalignment_m": mis, "note": f"not applicable: {process} is a single exposure"}
    elif mis <= 0:
        rules["misalignment"] = {"misalignment_m": 0.0, "note": "not simulated (misalignment 0); set --misalignment"}
    else:
        from lensdesign.optics.psf import plan_grid

        if plan_grid(spec).n != n:
            rules["misalignment"] = {"misalignment_m": mis, "note": "not simulated: the run's spec grid no longer "
                                     "matches the design; re-create the run"}
        else:
            t1 = time.perf_counter()
            rules["misalignment"] = misalignment_report(spec, masks, mis, pitch, depths)
            timings["misalignment_s"] = time.perf_counter() - t1
    timings["rules_s"] = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in [*paths.values(), *stl_paths]}
    rules["files"] = files
    rules["violations"] = violations
    rules["warnings"] = warnings
    timings["total_s"] = time.perf_counter() - t_start
    rules["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write_json(rules_path, _jsonable(rules))
    return ExportResult(out, name, {**files, rules_path.name: rules_path.stat().st_size}, rules, violations, warnings,
                        timings)


def _layout_shapes(lm: LevelMap, process: str, levels: int, pitch: float, masks: list[np.ndarray],
                   workers: int | None) -> dict[tuple[int, int], gdsmod.Shapes]:
    """Polygons per (layer, datatype): k masks for multilevel, one layer with datatype = level otherwise."""
    n = lm.levels.shape[0]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n >= 512 else 1
    out: dict[tuple[int, int], gdsmod.Shapes] = {}
    if lm.rings is not None:
        pnm = round(pitch * 1e9)
        assert lm.ring_levels is not None
        if process == "multilevel":
            for j in range(len(masks)):
                sel = ((lm.ring_levels >> j) & 1).astype(bool)
                out[(j + 1, 0)] = gdsmod.Shapes.from_list(j + 1, 0, gdsmod.nm_to_um(rings_polygons(lm.rings, sel, pnm)))
        else:
            for q in np.unique(lm.ring_levels).tolist():
                if q:
                    polys = gdsmod.nm_to_um(rings_polygons(lm.rings, lm.ring_levels == q, pnm))
                    out[(1, q)] = gdsmod.Shapes.from_list(1, q, polys)
        return out
    if process == "multilevel":
        for j, m in enumerate(masks):
            d = gdsmod.label_polygons(m.astype(np.int8), pitch, workers=workers)
            pts, cnt = d.get(1, (np.zeros((0, 2)), np.zeros(0, dtype=np.int64)))
            out[(j + 1, 0)] = gdsmod.Shapes(j + 1, 0, pts, cnt)
    else:
        lab = lm.levels.astype(np.int16 if levels <= 32767 else np.int32)
        for q, (pts, cnt) in gdsmod.label_polygons(lab, pitch, workers=workers).items():
            out[(1, q)] = gdsmod.Shapes(1, q, pts, cnt)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

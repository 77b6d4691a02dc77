"""Command `export`: fabrication files (TIFF, GDSII, OASIS, STL) and the design-rule report of a run."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lensdesign.errors import ArgumentError, LensdesignError

console = Console()

# ExportOptions argument → the option of this command that sets it (library errors name arguments)
FLAGS = {"tiff": "--tiff", "gds": "--gds", "oasis": "--oasis", "stl": "--stl", "levels": "--levels",
         "process": "--process", "out": "--out", "force": "--force", "field_m": "--field", "base_m": "--base",
         "lut": "--lut", "misalignment_m": "--misalignment", "workers": "--workers",
         "arc_tolerance_m": "--arc-tolerance", "tone": "--tone", "sag": "--sag"}


def _length(value: str, option: str, allow_zero: bool = False) -> float:
    """A length option ("500um", "0.5 um") in metres; one-line error naming the option."""
    from lensdesign.spec import parse_length

    if allow_zero and re.fullmatch(r"\s*[+]?0*\.?0*\s*[a-zA-Zµμ]*\s*", value) and re.search(r"0", value):
        return 0.0
    try:
        return parse_length(value)
    except ValueError as e:
        raise LensdesignError(f"{option}: {e}") from None


def _um(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x * 1e6:.{digits}g} um"


def _size(b: int) -> str:
    for unit, f in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b} B"


def rules_table(rules: dict) -> Table:
    """The design-rule report as a rich table."""
    t = Table(title=f"lensdesign export: {rules['name']} ({rules['process']}, {rules['levels']} levels)",
              caption="feature / gap: smallest run along rows and columns; kept: focal-core energy kept when the mask "
                      "is misaligned (mask 1 is the reference)")
    mis = rules.get("misalignment", {})
    per_mask = {m["mask"]: m for m in mis.get("per_mask", [])}
    if rules["process"] == "multilevel":
        for col in ("mask", "etch", "fill", "feature", "gap", "polygons", "vertices (max)", "kept"):
            t.add_column(col, justify="right")
        for m in rules["masks"]:
            feat = m.get("min_ring_feature_m", m["min_feature_m"])
            gap = m.get("min_ring_gap_m", m["min_gap_m"])
            pm = per_mask.get(m["mask"])
            kept = f"{pm['core_energy_kept']:.1%}" if pm else ("ref" if m["mask"] == 1 and per_mask else "—")
            poly = f"{m['polygons']:,}" if "polygons" in m else "—"
            vert = f"{m['vertices']:,} ({m['max_vertices_per_polygon']})" if "vertices" in m else "—"
            t.add_row(str(m["mask"]), f"{m['etch_depth_m'] * 1e9:.2f} nm", f"{m['fill_factor']:.1%}", _um(feat), _um(gap),
                      poly, vert, kept)
    else:
        t.add_column("item")
        t.add_column("value", justify="right")
        t.add_row("smallest plateau", _um(rules["plateaus"]["min_feature_m"]))
        if "polygons" in rules:
            t.add_row("polygons / vertices (max)", f"{rules['polygons']:,} / {rules['vertices']:,} "
                                                   f"({rules['max_vertices_per_polygon']})")
    return t


def summary_table(rules: dict) -> Table:
    t = Table(show_header=False, title="summary")
    t.add_column("item", style="bold")
    t.add_column("value")
    t.add_row("level step / max height", f"{rules['level_height_m'] * 1e9:.3f} nm / {rules['max_height_m'] * 1e9:.1f} nm")
    t.add_row("min feature (spec)", _um(rules["min_feature_m"]))
    t.add_row("staircase efficiency sinc²(1/N)", f"{rules['staircase_efficiency']:.2%}")
    if "tone" in rules:
        t.add_row("mask tone", {"clear": "clear: polygons = material kept (clear-field mask)",
                                "dark": "dark: polygons = areas etched (dark-field mask)"}[rules["tone"]])
    mis = rules.get("misalignment", {})
    if "all_masks_core_energy_kept" in mis:
        t.add_row(f"misalignment {_um(mis['misalignment_m'], 3)}, all masks",
                  f"{mis['all_masks_core_energy_kept']:.2%} of the focal-core energy kept "
                  f"(lost {mis['efficiency_lost']:.2%}; peak {mis['all_masks_peak_kept']:.2%})")
    elif mis.get("note"):
        t.add_row("misalignment", mis["note"])
    if "rings" in rules:
        rg = rules["rings"]
        t.add_row("rings", f"{rg['rings']} of width {_um(rg['ring_width_m'])}; {rg['pixels_differing_from_design_map']} "
                  "pixel(s) differ from the design's pixel map")
    for name, size in rules["files"].items():
        t.add_row(name, _size(size))
    return t


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        run: Annotated[Path, typer.Argument(help="run directory (from optimize or baseline)")],
        tiff: Annotated[bool, typer.Option("--tiff", help="NAME.height.tiff (m) and NAME.levels.tiff (level index)")] = False,
        gds: Annotated[bool, typer.Option("--gds", help="NAME.gds: masks (multilevel) or datatype = level")] = False,
        oasis: Annotated[bool, typer.Option("--oasis", help="NAME.oas: the same layout as OASIS")] = False,
        stl: Annotated[bool, typer.Option("--stl", help="binary STL per print field (two-photon lithography)")] = False,
        sag: Annotated[bool, typer.Option("--sag", help="NAME.sag.csv: x, y, sag (m) of a refractive or hybrid "
                                                         "element (diamond turning)")] = False,
        levels: Annotated[int | None, typer.Option(help="quantization levels (default fabrication.levels)")] = None,
        process: Annotated[str | None, typer.Option(help="multilevel | grayscale | two_photon "
                                                          "(default fabrication.process)")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="output folder (default RUN/export)")] = None,
        force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
        field: Annotated[str, typer.Option(help="STL print field size, e.g. 500um")] = "500um",
        base: Annotated[str, typer.Option(help="STL substrate base under the relief, e.g. 5um")] = "5um",
        lut: Annotated[Path | None, typer.Option(help="dose curve CSV (height_nm,grey 0-255) → NAME.grey.tiff")] = None,
        misalignment: Annotated[str | None, typer.Option(
            help="mask-to-mask misalignment to simulate, e.g. 0.5um (default fabrication.misalignment or 0)")] = None,
        strict: Annotated[bool, typer.Option("--strict", help="exit 1 when a design rule is violated")] = False,
        arc_tolerance: Annotated[str, typer.Option(
            "--arc-tolerance", help="radial designs: largest distance of a ring polygon from its circle")] = "10nm",
        workers: Annotated[int | None, typer.Option(help="processes for polygon building (default: CPU count)")] = None,
        tone: Annotated[str, typer.Option(
            help="multilevel mask polarity: clear = polygons are the material kept in each etch (clear-field "
                 "photomask, positive resist); dark = polygons are the areas etched (dark-field photomask)")] = "clear",
    ) -> None:
        """Quantize a run's design and write fabrication files with a design-rule report.

        With no file option, writes TIFF + GDS (multilevel, grayscale) or TIFF + STL (two_photon), and the sag table
        of a refractive or hybrid element.
        """
        from lensdesign.fabrication.export import ExportOptions, export_run
        from lensdesign.lock import run_lock

        opts = ExportOptions(
            tiff=tiff, gds=gds, oasis=oasis, stl=stl, sag=sag, levels=levels, process=process, out=out, force=force,
            field_m=_length(field, "--field"), base_m=_length(base, "--base"), lut=lut,
            misalignment_m=None if misalignment is None else _length(misalignment, "--misalignment", allow_zero=True),
            workers=workers, arc_tolerance_m=_length(arc_tolerance, "--arc-tolerance"), tone=tone,
        )
        if workers is not None and workers < 1:
            raise LensdesignError("--workers: use 1 or more")
        try:
            with run_lock(run, "export", create=False):  # one writer per run directory
                res = export_run(run, opts)
        except ArgumentError as e:
            raise LensdesignError(e.render(FLAGS)) from None
        console.print(rules_table(res.rules))
        console.print(summary_table(res.rules))
        for w in res.warnings:
            console.print(f"[yellow]warning[/yellow]: {w}")
        for v in res.violations:
            console.print(f"[red]violation[/red]: {v}")
        console.print(f"wrote {len(res.files)} file(s) to {res.out} in {res.timings['total_s']:.1f} s")
        if res.violations and strict:
            print(f"error: {len(res.violations)} design-rule violation(s); --strict makes them an error", file=sys.stderr)
            raise typer.Exit(1)

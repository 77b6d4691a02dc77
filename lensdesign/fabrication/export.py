"""Export a run's design for fabrication: plan, quantize, write TIFF / GDSII / OASIS / STL, check the design rules.

The steps each live in one module: `plan` (options and spec → what to write where, no I/O), `levelmap` (the
quantized design), `writers` (one writer per format), `checks` (the design-rule report, pure). Every planned file
is checked before anything is written: an existing file without `force` stops the export with nothing written.
Every file is written whole or not at all; NAME.rules.json comes last and lists the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensdesign.fabrication import gds as gdsmod
from lensdesign.fabrication.checks import RulesReport, check_rules, misalignment_check
from lensdesign.fabrication.levelmap import LevelMap, level_map, pixels_differing_from_design
from lensdesign.fabrication.plan import ExportOptions, ExportPlan, check_outputs, plan_export
from lensdesign.fabrication.tiff import grey_levels, read_lut
from lensdesign.fabrication.writers import (
    ShapeMap,
    layout_shapes,
    mask_layout,
    write_sag_table,
    write_stl_fields,
    write_tiffs,
)
from lensdesign.rundir import RunDir, atomic_write_json
from lensdesign.units import json_safe

__all__ = ["ExportOptions", "ExportResult", "export_run"]


@dataclass
class ExportResult:
    """What an export wrote: folder, name, file sizes (bytes, rules.json included) and the design-rule report."""

    out: Path
    name: str
    files: dict[str, int]  # file name → bytes
    rules: dict[str, Any]  # NAME.rules.json as written
    violations: list[str]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: RulesReport | None = None


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time (s) of the block to timings[key]."""
    t0 = time.perf_counter()
    yield
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _grey_table(plan: ExportPlan) -> np.ndarray | None:
    """Grey value per level from the dose curve (plan.lut), or None without one."""
    if plan.lut is None:
        return None
    lut_h, lut_g = read_lut(plan.lut)
    return grey_levels(lut_h, lut_g, np.arange(plan.levels) * plan.level_height_m, str(plan.lut))


def _write_layouts(plan: ExportPlan, shapes: ShapeMap, timings: dict[str, float]) -> None:
    """NAME.gds and/or NAME.oas from the same library."""
    with _timed(timings, "library_s"):
        lib = gdsmod.build_library(mask_layout(plan, shapes))
    if plan.gds:
        with _timed(timings, "write_gds_s"):
            gdsmod.write_library(lib, plan.paths["gds"])
    if plan.oasis:
        with _timed(timings, "write_oas_s"):
            gdsmod.write_library(lib, plan.paths["oas"], oasis=True)


def export_run(run: str | Path, opts: ExportOptions) -> ExportResult:
    """Export RUN's design. Raises LensdesignError (one line) on a user error; writes nothing in that case."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    r = RunDir(run).require()
    spec = r.load_spec()
    design = r.load_design()
    plan = plan_export(spec, design, opts, r.path)
    if plan.layered or plan.radial:
        gdsmod.check_pitch(plan.pitch_m)
    check_outputs(plan)
    grey_table = _grey_table(plan)
    with _timed(timings, "quantize_s"):
        lm: LevelMap = level_map(design, plan)
    shapes: ShapeMap = {}
    if plan.layered:  # polygons before any file: building them is the last step that can refuse the design
        with _timed(timings, "polygons_s"):
            shapes = layout_shapes(plan, lm)
    with _timed(timings, "tiff_s"):
        write_tiffs(plan, lm, grey_table)
    if "sag" in plan.paths:
        with _timed(timings, "sag_s"):
            write_sag_table(plan.paths["sag"], design.height_m, plan.pitch_m, lm.inside, plan.name)
    if plan.layered:
        _write_layouts(plan, shapes, timings)
    stl_fields = []
    if plan.stl:
        with _timed(timings, "stl_s"):
            stl_fields = write_stl_fields(plan, lm)
    with _timed(timings, "rules_s"):
        differing = pixels_differing_from_design(design, lm, plan) if lm.rings is not None else None
        report = check_rules(plan, lm, shapes, differing, grey_table)
        t0 = time.perf_counter()
        report.misalignment = misalignment_check(spec, plan, lm)
        if "per_mask" in report.misalignment:
            timings["misalignment_s"] = time.perf_counter() - t0
    report.stl_fields = stl_fields
    report.files = {p.name: p.stat().st_size for p in plan.files if p != plan.rules_path}
    timings["total_s"] = time.perf_counter() - t_start
    report.timings_s = timings
    rules = report.to_json()
    atomic_write_json(plan.rules_path, json_safe(rules))
    files = {**report.files, plan.rules_path.name: plan.rules_path.stat().st_size}
    return ExportResult(plan.out, plan.name, files, rules, report.violations, report.warnings, timings, report)

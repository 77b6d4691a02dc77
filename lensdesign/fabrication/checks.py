"""The design-rule check of an export, as a typed report; NAME.rules.json is its `to_json()`.

`check_rules` is pure: from the plan, the level map and the layout's polygons it measures each multilevel mask
(fill factor, smallest feature and gap along rows and columns, and for rings their radial widths) or the plateaus
of a single-exposure map, and lists violations of `fabrication.min_feature` and warnings. Feature and gap sizes
describe the relief (material kept / etched in each step) whatever the mask tone; polygon counts describe what is
drawn. `misalignment_check` adds the focusing efficiency kept under mask-to-mask misalignment.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lensdesign.fabrication import gds as gdsmod
from lensdesign.fabrication.levelmap import LevelMap
from lensdesign.fabrication.plan import ExportPlan
from lensdesign.fabrication.quantize import staircase_efficiency
from lensdesign.fabrication.rings import MAX_VERTICES, RingLayout, ring_runs
from lensdesign.fabrication.rules import fill_factor, misalignment_report, plateau_lengths, run_lengths
from lensdesign.fabrication.writers import ORIGIN_CONVENTION, ROW_CONVENTION, ShapeMap
from lensdesign.spec import Spec

MASKS_CONVENTION = (
    "mask j (GDS layer j+1, cell NAME_M{j+1}_ETCH...) covers exactly the pixels whose level index has bit j set. "
    "The drawn areas keep their material during etch step j, which removes etch_depth_m everywhere else "
    "(e.g. chrome on a clear-field photomask with positive resist); the relief height of a pixel is then "
    "the sum of the etch depths of the masks that cover it = level × level_height_m. Where drawn areas are "
    "etched instead (e.g. e-beam direct write on positive resist), invert each mask's tone.")
MASKS_CONVENTION_DARK = (
    "mask j (GDS layer j+1, cell NAME_M{j+1}_ETCH...) covers exactly the pixels whose level index has bit j clear, "
    "within the die square of half-size (N//2 + 1/2)·pitch around the optical axis. The drawn areas are etched "
    "etch_depth_m in step j and everything else keeps its material (e.g. the openings of a dark-field photomask "
    "with positive resist, or e-beam direct write on positive resist); the relief height of a pixel is then the "
    "sum of the etch depths of the masks that do not cover it = level × level_height_m.")
TONE_CONVENTION = {
    "clear": "clear: mask polygons mark the material kept during each etch step (clear-field photomask, positive "
             "resist); feature and gap sizes refer to kept and etched material",
    "dark": "dark: mask polygons mark the areas etched in each step, the complement of the clear tone within the die "
            "square (dark-field photomask, positive resist); feature and gap sizes refer to kept and etched material",
}


@dataclass
class MaskRules:
    """Design rules of one multilevel mask (lengths in m; None where there is no feature or gap)."""

    mask: int
    cell: str
    etch_depth_m: float
    fill_factor: float
    min_feature_m: float | None
    min_gap_m: float | None
    features_below_min: int
    gaps_below_min: int
    ring_widths: tuple[float | None, float | None] | None = None  # smallest ring feature, gap (radial designs)
    shapes: gdsmod.Shapes | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "mask": self.mask, "bit": self.mask - 1, "gds_layer": self.mask, "cell": self.cell,
            "etch_depth_m": self.etch_depth_m, "fill_factor": self.fill_factor, "min_feature_m": self.min_feature_m,
            "min_gap_m": self.min_gap_m, "features_below_min": self.features_below_min,
            "gaps_below_min": self.gaps_below_min,
        }
        if self.ring_widths is not None:
            row["min_ring_feature_m"], row["min_ring_gap_m"] = self.ring_widths
        if self.shapes is not None:
            row.update(_shape_stats(self.shapes))
        return row


@dataclass
class RulesReport:
    """Everything NAME.rules.json holds; writers' results (files, STL fields, timings) are filled in after writing."""

    plan: ExportPlan
    parameterization: str
    note: str | None
    rings: dict[str, Any] | None
    masks: list[MaskRules] | None
    plateaus: dict[str, Any] | None
    shapes: ShapeMap
    grey_per_level: list[int] | None
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    misalignment: dict[str, Any] = field(default_factory=dict)
    stl_fields: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """rules.json as a dict of plain values (key order as written)."""
        p = self.plan
        out: dict[str, Any] = {
            "name": p.name, "run": str(p.run), "process": p.process, "levels": p.levels,
            "max_height_m": p.max_height_m, "level_height_m": p.level_height_m, "pitch_m": p.pitch_m, "grid": p.n,
            "material": p.material, "design_wavelength_m": p.design_wavelength_m, "aperture_m": p.aperture_m,
            "min_feature_m": p.min_feature_m, "staircase_efficiency": staircase_efficiency(p.levels),
            "parameterization": self.parameterization, "conventions": self._conventions(),
        }
        if p.process == "multilevel":
            out["tone"] = p.tone
        if self.note:
            out["note"] = self.note
        if self.rings is not None:
            out["rings"] = self.rings
        if self.masks is not None:
            out["masks"] = [m.to_json() for m in self.masks]
        if self.plateaus is not None:
            out["plateaus"] = self.plateaus
            if p.layered:
                out["datatypes"] = [{"datatype": dt, "level": dt, "height_m": dt * p.level_height_m,
                                     **_shape_stats(sh)} for (_, dt), sh in sorted(self.shapes.items())]
        if p.layered:
            out.update(self._layout_json())
        if self.grey_per_level is not None:
            out["grey_per_level"] = self.grey_per_level
        if self.stl_fields:
            out["stl"] = {"base_m": p.base_m, "field_m": p.field_m, "fields": self.stl_fields,
                          "note": "one closed solid per file, um; z = 0 is the bottom of the substrate base, the "
                                  "relief top is base + height; pixel columns are flat-topped"}
        out.update(misalignment=self.misalignment, files=self.files, violations=self.violations,
                   warnings=self.warnings, timings_s={k: round(v, 3) for k, v in self.timings_s.items()})
        return out

    def _conventions(self) -> dict[str, str]:
        conv = {
            "units": "GDS/OASIS: user unit 1 um, database unit 1 nm; STL: um; TIFF heights: m",
            "origin": ORIGIN_CONVENTION, "rows": ROW_CONVENTION,
            "levels": "level q has relief height q·level_height_m above the deepest etch floor; level 0 outside the "
                      "clear aperture",
        }
        if self.plan.process == "multilevel":
            conv["masks"] = MASKS_CONVENTION_DARK if self.plan.tone == "dark" else MASKS_CONVENTION
            conv["tone"] = TONE_CONVENTION[self.plan.tone]
        return conv

    def _layout_json(self) -> dict[str, Any]:
        p = self.plan
        layers: dict[str, str] = {}
        for j, depth in enumerate(p.etch_depths_m):
            layers[str(j + 1)] = f"mask {j + 1}: bit {j}, etch {depth * 1e9:.2f} nm (+ alignment marks)"
        if p.process != "multilevel":
            layers["1"] = "grayscale: datatype = level index (level 0 is not drawn)"
            layers[str(gdsmod.MARK_LAYER)] = "alignment marks"
        layers[str(gdsmod.APERTURE_LAYER)] = "clear aperture outline (not etched)"
        sh = self.shapes.values()
        return {"layers": layers, "polygons": sum(s.polygons for s in sh), "vertices": sum(s.vertices for s in sh),
                "max_vertices_per_polygon": max((s.max_vertices for s in sh), default=0), "vertex_limit": MAX_VERTICES}


def _shape_stats(sh: gdsmod.Shapes) -> dict[str, int]:
    return {"polygons": sh.polygons, "vertices": sh.vertices, "max_vertices_per_polygon": sh.max_vertices}


def ring_feature_widths(rl: RingLayout, selected: np.ndarray) -> tuple[float | None, float | None]:
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


def _short(what: str, size: float | None, limit: float | None) -> str | None:
    """'smallest WHAT … < fabrication.min_feature …' when a measured size (m) falls short of the limit (m)."""
    if not limit or size is None or size >= limit * (1 - 1e-9):
        return None
    return f"smallest {what} {size * 1e6:.3g} um < fabrication.min_feature {limit * 1e6:.3g} um"


def _mask_rules(plan: ExportPlan, lm: LevelMap, shapes: ShapeMap, violations: list[str],
                warnings: list[str]) -> list[MaskRules]:
    """Feature, gap and fill of each multilevel mask; violations and warnings appended."""
    pitch, min_feat = plan.pitch_m, plan.min_feature_m
    limit_px = (min_feat / pitch) if min_feat else 0.0
    rows = []
    for j, m in enumerate(lm.masks(plan.mask_count)):
        runs = run_lengths(m, limit_px)
        row = MaskRules(j + 1, plan.cell_names[j], plan.etch_depths_m[j], fill_factor(m, lm.inside),
                        runs.min_feature_px * pitch if runs.min_feature_px else None,
                        runs.min_gap_px * pitch if runs.min_gap_px else None, runs.features_below, runs.gaps_below,
                        shapes=shapes.get((j + 1, 0)))
        feat, gap = row.min_feature_m, row.min_gap_m
        if lm.rings is not None:
            row.ring_widths = feat, gap = ring_feature_widths(lm.rings, lm.ring_selection(j))
        for what, size in (("feature", feat), ("gap", gap)):
            short = _short(what, size, min_feat)
            if short:
                violations.append(f"mask {j + 1}: {short}")
        if not m.any():
            warnings.append(f"mask {j + 1}: empty (no pixel uses bit {j}); check the design and the level count")
        rows.append(row)
    return rows


def _plateau_rules(plan: ExportPlan, lm: LevelMap, violations: list[str]) -> dict[str, Any]:
    """Smallest plateau of a single-exposure level map; a violation appended when below min_feature."""
    pitch, min_feat = plan.pitch_m, plan.min_feature_m
    runs = plateau_lengths(lm.levels, lm.inside, (min_feat / pitch) if min_feat else 0.0)
    size = runs.min_feature_px * pitch if runs.min_feature_px else None
    short = _short("plateau", size, min_feat)
    if short:
        violations.append(f"levels: {short} ({runs.features_below} runs)")
    return {"min_feature_m": size, "features_below_min": runs.features_below,
            "note": "smallest run of one level between two level changes, along rows and columns"}


def check_rules(plan: ExportPlan, lm: LevelMap, shapes: ShapeMap, pixels_differing: int | None = None,
                grey_table: np.ndarray | None = None) -> RulesReport:
    """The design-rule report of a level map and its layout polygons. No I/O.

    `pixels_differing`: pixels where a ring raster differs from the design's own pixel map (radial designs).
    """
    violations: list[str] = []
    warnings: list[str] = []
    rings = None
    if lm.rings is not None:
        rings = {"ring_width_m": lm.rings.ring_width_nm * 1e-9, "rings": lm.rings.rings,
                 "arc_tolerance_m": plan.arc_tolerance_m, "pixels_differing_from_design_map": pixels_differing,
                 "note": "levels.tiff is the pixel-centre rasterization of the ring polygons written; pixels whose "
                         "centre lies within a few nm of a ring edge may differ from the design's own pixel map"}
    multi = plan.process == "multilevel"
    masks = _mask_rules(plan, lm, shapes, violations, warnings) if multi else None
    plateaus = None if multi else _plateau_rules(plan, lm, violations)
    over = [f"layer {ly}/{dt}" for (ly, dt), sh in shapes.items() if sh.max_vertices > MAX_VERTICES]
    if over:  # pragma: no cover - the tiler splits such polygons
        violations.append(f"polygons over {MAX_VERTICES} vertices on {', '.join(over)}")
    return RulesReport(plan, "radial" if lm.rings is not None else "pixel", lm.note, rings, masks, plateaus, shapes,
                       grey_table.tolist() if grey_table is not None else None, violations, warnings)


def misalignment_check(spec: Spec, plan: ExportPlan, lm: LevelMap) -> dict[str, Any]:
    """Focusing efficiency kept when the multilevel masks are misaligned by `plan.misalignment_m` (or why not)."""
    mis = plan.misalignment_m
    if plan.process != "multilevel":
        return {"misalignment_m": mis, "note": f"not applicable: {plan.process} is a single exposure"}
    if mis <= 0:
        return {"misalignment_m": 0.0, "note": "not simulated (misalignment 0); set fabrication.misalignment"}
    from lensdesign.optics.psf import plan_grid

    if plan_grid(spec).n != plan.n:
        return {"misalignment_m": mis, "note": "not simulated: the run's spec grid no longer matches the design; "
                "re-create the run"}
    return misalignment_report(spec, lm.masks(plan.mask_count), mis, plan.pitch_m, plan.etch_depths_m)

"""The quantized design as a level map: what every export file is built from.

The level map is the one quantizer the optimizer trains against (`quantize.level_index`) applied to the design's
height map (m), set to level 0 outside the clear aperture. A radial design is quantized ring by ring, and its
level map is the pixel-centre rasterization of the ring polygons actually written (see `rings`), so every file
rebuilds to the same pixels. Multilevel mask j holds the pixels whose level index has bit j set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lensdesign.errors import LensdesignError
from lensdesign.fabrication.plan import ExportPlan
from lensdesign.fabrication.quantize import level_index
from lensdesign.fabrication.rings import RingLayout, ring_layout
from lensdesign.rundir import Design


@dataclass
class LevelMap:
    """The quantized design: level per pixel (0 outside the aperture), the aperture, and the rings if radial."""

    levels: np.ndarray
    inside: np.ndarray
    rings: RingLayout | None = None
    ring_levels: np.ndarray | None = None
    note: str | None = None

    def heights(self, level_height_m: float) -> np.ndarray:
        """Quantized heights (m, float32): level index × level height, computed as `quantize` does."""
        return (self.levels.astype(np.float64) * level_height_m).astype(np.float32)

    def masks(self, count: int) -> list[np.ndarray]:
        """Binary masks of the first `count` bits of the level index (mask j: bit j set)."""
        return [((self.levels >> j) & 1).astype(bool) for j in range(count)]

    def ring_selection(self, bit: int) -> np.ndarray:
        """Which rings have `bit` of their level index set (radial designs)."""
        assert self.ring_levels is not None
        return ((self.ring_levels >> bit) & 1).astype(bool)


def level_map(design: Design, plan: ExportPlan) -> LevelMap:
    """Quantize a design to `plan.levels` over [0, max_height) (a sag: over [0, max_height], not wrapped); rings for
    a radial design."""
    from lensdesign.optics.psf import aperture_mask

    n, levels = plan.n, plan.levels
    note = None
    if plan.radial:
        prof = design.tensors.get("radial_profile_m")
        w = design.meta.get("ring_width_m")
        if prof is not None and w:
            rl = ring_layout(float(w), plan.aperture_m, plan.pitch_m, n, plan.arc_tolerance_m)
            ring_lv = np.asarray(level_index(prof.double().numpy(), plan.max_height_m, levels, plan.wrapped), dtype=np.int64)
            if len(ring_lv) < rl.rings:
                raise LensdesignError(f"design: radial_profile_m has {len(ring_lv)} rings but the aperture holds "
                                      f"{rl.rings}; re-create the run")
            inside = rl.ring_index >= 0
            lv = np.where(inside, ring_lv[np.maximum(rl.ring_index, 0)], 0)
            return LevelMap(lv, inside, rl, ring_lv[: rl.rings])
        note = "design.json says radial but radial_profile_m or ring_width_m is missing: exported as pixels"
    inside = aperture_mask(n, plan.pitch_m, plan.aperture_m).numpy().astype(bool)
    lv = np.asarray(level_index(np.asarray(design.height_m, dtype=np.float64), plan.max_height_m, levels, plan.wrapped),
                    dtype=np.int64)
    lv[~inside] = 0
    return LevelMap(lv, inside, note=note)


def pixels_differing_from_design(design: Design, lm: LevelMap, plan: ExportPlan) -> int:
    """Pixels whose level differs from the design's own pixel map quantized (`Design.quantized`, level 0 outside
    the aperture): where a ring raster and the design's pixels disagree."""
    ref = np.where(lm.inside, design.quantized(plan.levels), np.float32(0))
    return int((ref != lm.heights(plan.level_height_m)).sum())

"""One writer per export format: TIFF (heights, levels, grey), sag table (CSV), GDSII / OASIS layout, STL print
fields.

Every writer takes the resolved `ExportPlan` and the `LevelMap`, and writes its files whole or not at all
(temporary name in the same folder, then rename). Layout polygons are built per (layer, datatype) first, so the
design-rule report can count them before anything is written.

Mask tone (multilevel layouts): with tone "clear" mask j draws the pixels whose level index has bit j set, the
material kept during etch step j; with tone "dark" it draws the complement of those within the die square
[−(N//2 + ½)·pitch, (N//2 + ½)·pitch]², the areas etched. Both tones build the same relief on the pixel grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lensdesign.fabrication import gds as gdsmod
from lensdesign.fabrication.levelmap import LevelMap
from lensdesign.fabrication.plan import ExportPlan
from lensdesign.fabrication.rings import rings_polygons, square_frame_polygons
from lensdesign.fabrication.tiff import level_dtype, write_tiff

ShapeMap = dict[tuple[int, int], gdsmod.Shapes]

ROW_CONVENTION = ("array row 0 is at the bottom (smallest y) and y increases with the row index; TIFF rows are array "
                  "rows (TIFF Orientation tag 4, bottom-left)")
ORIGIN_CONVENTION = "the optical axis is at (0, 0), the centre of pixel (N//2, N//2); pixel (i, j) is centred at " \
                    "x = (j - N//2)·pitch, y = (i - N//2)·pitch"


def tiff_description(plan: ExportPlan) -> dict[str, object]:
    """The facts a fab needs, stored as JSON in every TIFF's description."""
    return {
        "name": plan.name, "process": plan.process, "pitch_m": plan.pitch_m, "pitch_um": plan.pitch_m * 1e6,
        "levels": plan.levels, "level_height_m": plan.level_height_m, "max_height_m": plan.max_height_m,
        "material": plan.material, "design_wavelength_m": plan.design_wavelength_m, "aperture_m": plan.aperture_m,
        "rows": ROW_CONVENTION, "origin": ORIGIN_CONVENTION,
    }


def write_tiffs(plan: ExportPlan, lm: LevelMap, grey_table: np.ndarray | None) -> None:
    """NAME.height.tiff (m, float32) and NAME.levels.tiff (level index), and NAME.grey.tiff with a dose curve."""
    desc = tiff_description(plan)
    lv = lm.levels
    if plan.tiff:
        write_tiff(plan.paths["height"], lm.heights(plan.level_height_m), plan.pitch_m,
                   {**desc, "content": "quantized height (m), float32: level index × level_height_m"})
        write_tiff(plan.paths["levels"], lv.astype(level_dtype(plan.levels)), plan.pitch_m,
                   {**desc, "content": "level index (0 … levels-1); height = index × level_height_m"})
    if grey_table is not None:
        write_tiff(plan.paths["grey"], grey_table[lv], plan.pitch_m,
                   {**desc, "content": "8-bit grey value per pixel from the dose curve", "lut": str(plan.lut),
                    "grey_per_level": grey_table.tolist()})


def write_sag_table(path: Path, height_m: np.ndarray, pitch_m: float, inside: np.ndarray, name: str) -> int:
    """NAME.sag.csv: x_m, y_m, sag_m of every pixel inside the aperture, the design's continuous sag (float32
    values written so that they read back exactly), x and y as in ORIGIN_CONVENTION. Returns the rows written."""
    from lensdesign.rundir import atomic_write_text

    c = height_m.shape[0] // 2
    rows, cols = np.nonzero(inside)
    lines = [f"# lensdesign {name}: sag (m) of a refractive surface for diamond turning or a continuous process; "
             + ORIGIN_CONVENTION, "x_m,y_m,sag_m"]
    lines += [f"{(j - c) * pitch_m!r},{(i - c) * pitch_m!r},{float(height_m[i, j])!r}"
              for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(rows)


# ---- layout ---------------------------------------------------------------------------------------------------
def die_half_px(n: int) -> float:
    """Half the side of the die square in pixels: N//2 + ½ (the pixel grid, made symmetric about the axis)."""
    return n // 2 + 0.5


def _pixel_mask_shapes(mask: np.ndarray, layer: int, plan: ExportPlan, workers: int) -> gdsmod.Shapes:
    """Merged polygons of a binary pixel mask in the plan's tone (dark: the complement within the die square)."""
    if plan.tone == "dark":
        n = mask.shape[0]
        side = 2 * (n // 2) + 1  # odd: same centre pixel, edges at ±(N//2 + ½)·pitch
        mask = np.pad(~mask, ((0, side - n), (0, side - n)), constant_values=True)
    d = gdsmod.label_polygons(mask.astype(np.int8), plan.pitch_m, workers=workers)
    pts, cnt = d.get(1, (np.zeros((0, 2)), np.zeros(0, dtype=np.int64)))
    return gdsmod.Shapes(layer, 0, pts, cnt)


def _ring_mask_shapes(lm: LevelMap, bit: int, plan: ExportPlan) -> gdsmod.Shapes:
    """Ring polygons of one multilevel mask in the plan's tone (dark: the other rings plus the die outside the
    aperture)."""
    assert lm.rings is not None
    pnm = round(plan.pitch_m * 1e9)
    sel = lm.ring_selection(bit)
    if plan.tone == "dark":
        half_nm = round(die_half_px(plan.n) * pnm)
        polys = rings_polygons(lm.rings, ~sel, pnm) + square_frame_polygons(lm.rings.boundaries[-1], half_nm, pnm)
    else:
        polys = rings_polygons(lm.rings, sel, pnm)
    return gdsmod.Shapes.from_list(bit + 1, 0, gdsmod.nm_to_um(polys))


def layout_shapes(plan: ExportPlan, lm: LevelMap) -> ShapeMap:
    """Polygons per (layer, datatype): mask j on layer j+1 (multilevel), or one layer with datatype = level."""
    n = plan.n
    workers = plan.workers if plan.workers is not None else (min(os.cpu_count() or 1, 8) if n >= 512 else 1)
    out: ShapeMap = {}
    if plan.process == "multilevel":
        for j, m in enumerate(lm.masks(plan.mask_count)):
            sh = _ring_mask_shapes(lm, j, plan) if lm.rings is not None else _pixel_mask_shapes(m, j + 1, plan, workers)
            out[(j + 1, 0)] = sh
    elif lm.rings is not None:
        pnm = round(plan.pitch_m * 1e9)
        assert lm.ring_levels is not None
        for q in np.unique(lm.ring_levels).tolist():
            if q:
                polys = gdsmod.nm_to_um(rings_polygons(lm.rings, lm.ring_levels == q, pnm))
                out[(1, q)] = gdsmod.Shapes.from_list(1, q, polys)
    else:
        lab = lm.levels.astype(np.int16 if plan.levels <= 32767 else np.int32)
        for q, (pts, cnt) in gdsmod.label_polygons(lab, plan.pitch_m, workers=workers).items():
            out[(1, q)] = gdsmod.Shapes(1, q, pts, cnt)
    return out


def mask_layout(plan: ExportPlan, shapes: ShapeMap) -> gdsmod.Layout:
    """The layout's cells: one per multilevel mask, or one grayscale cell; labels say what is drawn."""
    name = plan.name
    if plan.process == "multilevel":
        where = "inside" if plan.tone == "dark" else "outside"
        cells = [gdsmod.MaskCell(cell, [shapes[(j + 1, 0)]], f"{name} mask {j + 1} (bit {j}): etch "
                                 f"{depth * 1e9:.2f} nm {where} the drawn areas", mark_layer=j + 1)
                 for j, (cell, depth) in enumerate(zip(plan.cell_names, plan.etch_depths_m, strict=True))]
    else:
        cells = [gdsmod.MaskCell(gdsmod.cell_name(f"{name}_GRAYSCALE_{plan.levels}L"), list(shapes.values()),
                                 f"{name} grayscale: datatype = level (step {plan.level_height_m * 1e9:.3f} nm)",
                                 mark_layer=gdsmod.MARK_LAYER)]
    return gdsmod.Layout(name, cells, gdsmod.grid_half_size_um(plan.n, plan.pitch_m),
                         plan.aperture_m / 2 / gdsmod.UNIT_M)


# ---- STL -------------------------------------------------------------------------------------------------------
def write_stl_fields(plan: ExportPlan, lm: LevelMap) -> list[dict[str, object]]:
    """One closed solid per print field (µm); returns what rules.json lists for each field."""
    from lensdesign.fabrication.stl import write_field_stl

    c = plan.n // 2
    p_um = plan.pitch_m * 1e6
    info: list[dict[str, object]] = []
    for f in plan.stl_fields:
        x0, y0 = (f.c0 - c - 0.5) * p_um, (f.r0 - c - 0.5) * p_um
        header = f"lensdesign {plan.name} field {f.row},{f.col} um x0={x0:.3f} y0={y0:.3f}"
        ntri = write_field_stl(f.path, lm.levels[f.r0:f.r1, f.c0:f.c1], x0, y0, p_um, plan.base_m * 1e6,
                               plan.level_height_m * 1e6, header)
        info.append({"file": f.path.name, "field": [f.row, f.col], "rows": [f.r0, f.r1], "cols": [f.c0, f.c1],
                     "origin_um": [x0, y0], "size_um": [(f.c1 - f.c0) * p_um, (f.r1 - f.r0) * p_um],
                     "triangles": ntri})
    return info

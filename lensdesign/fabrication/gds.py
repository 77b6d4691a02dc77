"""GDSII / OASIS layout of a quantized design, written with gdstk.

Units: user unit 1 µm, database unit 1 nm. The optical axis is at the origin: pixel (i, j) of an N × N map of
pitch p covers x ∈ [(j − N//2 − ½)p, (j − N//2 + ½)p], y ∈ [(i − N//2 − ½)p, (i − N//2 + ½)p], so array row 0
is at the bottom and y grows with the row index.

Pixel maps become merged polygons built tile by tile (64 × 64 pixels): each row is cut into runs of equal value,
runs repeated in consecutive rows are stacked into rectangles, and gdstk's boolean union merges the rectangles of
one tile. No polygon crosses a tile border, which keeps the union fast (a single merge of a whole 2048² mask takes
tens of minutes) and bounds the vertex count; a tile whose union still exceeds `MAX_VERTICES` is split in four.
Radial designs become concentric ring polygons (see `rings`).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gdstk
import numpy as np

from lensdesign.fabrication.rings import MAX_VERTICES
from lensdesign.fabrication.runs import true_runs

UNIT_M = 1e-6  # user unit: 1 µm
DBU_M = 1e-9  # database unit: 1 nm
TILE = 64  # pixels per tile side
APERTURE_LAYER = 100  # clear-aperture outline (not etched)
MARK_LAYER = 101  # alignment marks of a single-layer (grayscale) layout
MARK_OFFSET_UM = 150.0  # alignment-mark centres sit this far outside the pixel grid corners
MARK_ARM_UM = 100.0  # cross arm length (each side of the centre)
MARK_WIDTH_UM = 10.0  # cross arm width


@dataclass
class Shapes:
    """Polygons on one layer/datatype: vertices (V, 2) in µm, concatenated, and the vertex count of each polygon."""

    layer: int
    datatype: int
    points: np.ndarray
    counts: np.ndarray

    @property
    def polygons(self) -> int:
        return len(self.counts)

    @property
    def vertices(self) -> int:
        return int(self.counts.sum())

    @property
    def max_vertices(self) -> int:
        return int(self.counts.max()) if len(self.counts) else 0

    def each(self) -> Iterable[np.ndarray]:
        off = 0
        for c in self.counts.tolist():
            yield self.points[off:off + c]
            off += c

    @staticmethod
    def from_list(layer: int, datatype: int, polys: Sequence[np.ndarray]) -> Shapes:
        if not polys:
            return Shapes(layer, datatype, np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
        return Shapes(layer, datatype, np.concatenate(polys).astype(np.float64),
                      np.array([len(p) for p in polys], dtype=np.int64))


@dataclass
class MaskCell:
    """One cell of the layout: its name, its shapes, and a note for the label placed beside it."""

    name: str
    shapes: list[Shapes]
    label: str = ""
    mark_layer: int | None = None


@dataclass
class Layout:
    """Everything a layout file holds, before it is written."""

    name: str
    cells: list[MaskCell]
    half_size_um: float  # half the side of the pixel grid
    aperture_radius_um: float
    extra_marks: list[int] = field(default_factory=list)  # layers with marks placed in the top cell


def cell_name(text: str) -> str:
    """A GDS-safe cell name: letters, digits, '_' and '$' only."""
    return re.sub(r"[^A-Za-z0-9_$]", "_", text)


# ---- pixel maps → polygons ----------------------------------------------------------------------------------
def _edges(pitch_um: float, centre: int, n: int, start: int) -> np.ndarray:
    """Pixel-edge coordinates (µm) of pixels start … start+n (n+1 values)."""
    return (np.arange(start, start + n + 1, dtype=np.float64) - centre - 0.5) * pitch_um


def _rect_points(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """(R, 4, 2) corner points of axis-aligned rectangles."""
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)], 1)


def _union(rects: np.ndarray, max_vertices: int) -> list[np.ndarray] | None:
    """Merged polygons of (R, 4, 2) rectangles, or None when one exceeds `max_vertices`."""
    polys = gdstk.boolean([gdstk.Polygon(r) for r in rects], [], "or", precision=1e-3)
    out = [p.points for p in polys]
    if any(len(p) > max_vertices for p in out):
        return None
    return out


def _block_polygons(sub: np.ndarray, r0: int, c0: int, pitch_um: float, centre: int, max_vertices: int) -> list[np.ndarray]:
    """Merged polygons of the True pixels of a block whose first pixel is (r0, c0); splits until within the limit."""
    rows, cols = sub.shape
    r, s, e = true_runs(sub)
    if len(r) == 0:
        return []
    xe = _edges(pitch_um, centre, cols, c0)
    ye = _edges(pitch_um, centre, rows, r0)
    out = _union(_rect_points(xe[s], ye[r], xe[e], ye[r + 1]), max_vertices)
    if out is not None:
        return out
    hr, hc = max(1, rows // 2), max(1, cols // 2)
    polys: list[np.ndarray] = []
    for a0, a1 in ((0, hr), (hr, rows)):
        for b0, b1 in ((0, hc), (hc, cols)):
            if a1 > a0 and b1 > b0:
                polys += _block_polygons(sub[a0:a1, b0:b1], r0 + a0, c0 + b0, pitch_um, centre, max_vertices)
    return polys


def _band_polygons(args: tuple[np.ndarray, int, float, int, int, int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Polygons per label of one band of tile rows: {label: (points (V, 2) µm, counts)}; label 0 is background."""
    band, r0, pitch_um, centre, tile, max_vertices = args
    rows, cols = band.shape
    # runs of equal label along each row, cut at tile borders
    brk = np.ones((rows, cols), dtype=bool)
    brk[:, 1:] = band[:, 1:] != band[:, :-1]
    brk[:, ::tile] = True
    rr, ss = np.nonzero(brk)
    ee = np.empty_like(ss)
    ee[:-1] = ss[1:]
    last = np.ones(len(ss), dtype=bool)
    last[:-1] = rr[1:] != rr[:-1]
    ee[last] = cols
    lab = band[rr, ss]
    keep = lab != 0
    rr, ss, ee, lab = rr[keep], ss[keep], ee[keep], lab[keep]
    # stack runs repeated in consecutive rows of the same tile into rectangles
    trow = rr // tile
    order = np.lexsort((rr, ee, ss, lab, trow))
    rr, ss, ee, lab, trow = rr[order], ss[order], ee[order], lab[order], trow[order]
    cont = np.zeros(len(rr), dtype=bool)
    cont[1:] = (trow[1:] == trow[:-1]) & (lab[1:] == lab[:-1]) & (ss[1:] == ss[:-1]) & (ee[1:] == ee[:-1]) & \
        (rr[1:] == rr[:-1] + 1)
    first = np.nonzero(~cont)[0]
    height = np.diff(np.append(first, len(rr)))
    rr, ss, ee, lab, trow = rr[first], ss[first], ee[first], lab[first], trow[first]
    xe = _edges(pitch_um, centre, cols, 0)
    ye = _edges(pitch_um, centre, rows, r0)
    rects = _rect_points(xe[ss], ye[rr], xe[ee], ye[rr + height])
    tcol = ss // tile
    key = (trow * (cols // tile + 1) + tcol) * (int(lab.max(initial=0)) + 1) + lab
    order = np.argsort(key, kind="stable")
    key, rects, lab = key[order], rects[order], lab[order]
    starts = np.nonzero(np.diff(np.concatenate([[-1], key])))[0]
    ends = np.append(starts[1:], len(key))
    out: dict[int, list[np.ndarray]] = {}
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        label = int(lab[a])
        polys = _union(rects[a:b], max_vertices)
        if polys is None:  # rare: one tile's union exceeds the vertex limit; split the tile
            k = int(key[a] // (int(lab.max()) + 1))
            ti, tj = divmod(k, cols // tile + 1)
            sub = band[ti * tile:(ti + 1) * tile, tj * tile:(tj + 1) * tile] == label
            polys = _block_polygons(sub, r0 + ti * tile, tj * tile, pitch_um, centre, max_vertices)
        out.setdefault(label, []).extend(polys)
    return {k: (np.concatenate(v), np.array([len(p) for p in v], dtype=np.int64)) for k, v in out.items()}


def label_polygons(labels: np.ndarray, pitch_m: float, tile: int = TILE, workers: int = 1,
                   max_vertices: int = MAX_VERTICES) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Merged polygons (µm) of each nonzero label of an (N, M) integer map, tile by tile.

    Returns {label: (points (V, 2), vertices per polygon (P,))}. The map is square with the optical axis at pixel
    (N//2, N//2); `workers` > 1 spreads bands of tile rows over processes.
    """
    labels = np.ascontiguousarray(labels)
    centre = labels.shape[0] // 2
    pitch_um = pitch_m / UNIT_M
    jobs = [(labels[r0:r0 + tile], r0, pitch_um, centre, tile, max_vertices) for r0 in range(0, labels.shape[0], tile)]
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers need only numpy and gdstk, and the caller's main module is not re-imported
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as ex:
            parts = list(ex.map(_band_polygons, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        parts = [_band_polygons(j) for j in jobs]
    merged: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for part in parts:
        for k, (pts, cnt) in part.items():
            merged.setdefault(k, ([], []))
            merged[k][0].append(pts)
            merged[k][1].append(cnt)
    return {k: (np.concatenate(p), np.concatenate(c)) for k, (p, c) in sorted(merged.items())}


# ---- marks, aperture, writing --------------------------------------------------------------------------------
def alignment_marks(half_size_um: float, layer: int, datatype: int = 0) -> list[gdstk.Polygon]:
    """Four crosses outside the corners of the pixel grid, identical on every mask layer."""
    c = half_size_um + MARK_OFFSET_UM
    a, w = MARK_ARM_UM, MARK_WIDTH_UM / 2
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * c, sy * c
            cross = gdstk.boolean(gdstk.rectangle((x - a, y - w), (x + a, y + w)),
                                  gdstk.rectangle((x - w, y - a), (x + w, y + a)), "or", layer=layer, datatype=datatype)
            out.extend(cross)
    return out


def aperture_outline(radius_um: float, layer: int = APERTURE_LAYER) -> gdstk.Polygon:
    """The clear aperture as a polygon within MAX_VERTICES (tolerance grows from 1 nm until it fits)."""
    tol = 1e-3
    while True:
        p = gdstk.ellipse((0, 0), radius_um, tolerance=tol, layer=layer)
        if p.size <= MAX_VERTICES:
            return p
        tol *= 2


def build_library(layout: Layout) -> gdstk.Library:
    """A gdstk library: one top cell referencing one cell per mask, plus the aperture outline."""
    lib = gdstk.Library(name=cell_name(layout.name), unit=UNIT_M, precision=DBU_M)
    top = gdstk.Cell(cell_name(layout.name))
    for mc in layout.cells:
        cell = gdstk.Cell(mc.name)
        for sh in mc.shapes:
            cell.add(*[gdstk.Polygon(p, layer=sh.layer, datatype=sh.datatype) for p in sh.each()])
        if mc.mark_layer is not None:
            cell.add(*alignment_marks(layout.half_size_um, mc.mark_layer))
            if mc.label:
                pos = (-layout.half_size_um - MARK_OFFSET_UM, layout.half_size_um + MARK_OFFSET_UM + 2 * MARK_ARM_UM)
                cell.add(gdstk.Label(mc.label, pos, layer=mc.mark_layer))
        lib.add(cell)
        top.add(gdstk.Reference(cell))
    for layer in layout.extra_marks:
        top.add(*alignment_marks(layout.half_size_um, layer))
    top.add(aperture_outline(layout.aperture_radius_um))
    lib.add(top)
    return lib


def write_library(lib: gdstk.Library, path: Path, oasis: bool = False) -> None:
    """Write GDSII (or OASIS) whole or not at all: to a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if oasis:
            lib.write_oas(str(tmp))
        else:
            # our polygons hold at most MAX_VERTICES; never let gdstk fracture them (its default is 199)
            lib.write_gds(str(tmp), max_points=2 * MAX_VERTICES + 2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def nm_to_um(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Integer-nanometre vertices → µm floats (gdstk snaps them back to the 1 nm grid exactly)."""
    return [p.astype(np.float64) / 1000.0 for p in polys]


def grid_half_size_um(n: int, pitch_m: float) -> float:
    """Half the side of the pixel grid (µm), from the optical axis to the farther grid edge."""
    return (n - n // 2 + 0.5) * pitch_m / UNIT_M


def check_pitch(pitch_m: float) -> int:
    """Pitch in nm; pixel edges (±pitch/2 from a centre) must fall on the 1 nm grid."""
    p_nm = pitch_m / DBU_M
    if abs(p_nm - round(p_nm)) > 1e-6 or round(p_nm) % 2:
        from lensdesign.errors import LensdesignError

        raise LensdesignError(f"optics.pitch: {pitch_m * 1e6:.6g} um is not a multiple of 2 nm, so pixel edges miss the "
                              "1 nm GDS grid; use a pitch such as 2 um")
    return round(p_nm)


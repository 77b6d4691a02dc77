"""Concentric rings as polygons on the 1 nm layout grid, and their exact rasterization at pixel centres.

A rotationally symmetric design is a list of ring heights, ring j covering radii [j·w, (j+1)·w). In the layout
each ring boundary is a circle approximated by a polygon with integer vertices in nanometres (the GDS database
unit), within `tolerance` (+ 2 nm) of it. Because a polygon is not a circle,
the pixel map a fab or a test rebuilds from the layout is defined by the polygons, not by the circles: a pixel
belongs to the inside of a boundary when its centre lies inside that boundary's polygon. That test is done here
in exact integer arithmetic, and every polygon is built so that no pixel centre lies on its edge (a tie would make
the rasterization depend on the tool), so the levels written next to the layout rebuild from it exactly.

Coordinates: integer nanometres, origin on the optical axis; pixel (i, j) of an N × N grid of pitch P (nm) has its
centre at x = (j − N//2)·P, y = (i − N//2)·P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lensdesign.errors import LensdesignError

MAX_VERTICES = 4094  # per polygon: what a GDSII BOUNDARY record holds with room to spare


@dataclass
class CirclePolygon:
    """A circle of radius `radius_nm` as a CCW polygon `vertices` (n, 2) int64 nm, centred on the origin."""

    radius_nm: float
    vertices: np.ndarray
    r_in: float  # every point closer to the origin than this is inside (nm)
    r_out: float  # every point farther than this is outside (nm)

    @property
    def n(self) -> int:
        return len(self.vertices)


def vertex_count(radius_nm: float, tolerance_nm: float) -> int:
    """Vertices of a regular polygon whose chords stay within `tolerance_nm` of a circle of `radius_nm`."""
    if radius_nm <= tolerance_nm:
        return 16
    return max(16, math.ceil(math.pi / math.acos(1.0 - tolerance_nm / radius_nm)))


def circle_polygon(radius_nm: float, tolerance_nm: float, phase: float = 0.5, closed: bool = False) -> CirclePolygon:
    """Polygon of a circle with integer vertices (nm) at angles 2π(k + phase)/n.

    Like the pixel map of a radial design (ring j holds radii in [j·w, (j+1)·w)), the polygon lies inside the
    open disk r < R, so a pixel centre exactly on the circle falls outside it; with `closed` it instead contains
    the closed disk r ≤ R (the clear aperture, which holds the pixels with r ≤ D/2). Either way it stays within
    `tolerance_nm` + 2 nm of the circle.
    """
    n = vertex_count(radius_nm, tolerance_nm)
    rho = (radius_nm + 1.0) / math.cos(math.pi / n) if closed else radius_nm - 1.0  # 1 nm > vertex rounding (0.71)
    t = 2 * math.pi * (np.arange(n) + phase) / n
    v = np.stack([np.rint(rho * np.cos(t)), np.rint(rho * np.sin(t))], axis=1).astype(np.int64)
    nxt = np.roll(v, -1, axis=0)
    cross = v[:, 0] * nxt[:, 1] - v[:, 1] * nxt[:, 0]
    if np.any(cross <= 0):  # angles must increase strictly: the wedge test below relies on it
        raise LensdesignError(f"ring radius {radius_nm:.0f} nm is too small for the 1 nm layout grid; use wider rings")
    edge = np.hypot(*(nxt - v).T.astype(np.float64))
    r_in = float(np.min(cross / edge)) - 1e-3
    r_out = float(np.max(np.hypot(v[:, 0], v[:, 1]))) + 1e-3
    return CirclePolygon(radius_nm, v, r_in, r_out)


def classify(circle: CirclePolygon, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Exact side of each point (int64 nm) w.r.t. the polygon: +1 inside, −1 outside, 0 on its boundary."""
    px = np.asarray(px, dtype=np.int64)
    py = np.asarray(py, dtype=np.int64)
    r = np.hypot(px.astype(np.float64), py.astype(np.float64))
    out = np.where(r < circle.r_in, 1, -1).astype(np.int8)
    band = (r >= circle.r_in) & (r <= circle.r_out)
    if not band.any():
        return out
    bx, by = px[band], py[band]
    v = circle.vertices
    n = len(v)
    theta = np.mod(np.arctan2(by, bx), 2 * np.pi)
    guess = np.floor(theta * n / (2 * np.pi) - 0.5).astype(np.int64)
    side = np.zeros(len(bx), dtype=np.int8)
    found = np.zeros(len(bx), dtype=bool)
    for d in (0, -1, 1, -2, 2):
        i = np.mod(guess + d, n)
        a, b = v[i], v[np.mod(i + 1, n)]
        in_wedge = (a[:, 0] * by - a[:, 1] * bx >= 0) & (b[:, 0] * by - b[:, 1] * bx < 0) & ~found
        s = (b[:, 0] - a[:, 0]) * (by - a[:, 1]) - (b[:, 1] - a[:, 1]) * (bx - a[:, 0])
        side[in_wedge] = np.sign(s[in_wedge]).astype(np.int8)
        found |= in_wedge
    if not found.all():  # pragma: no cover - the angle guess is within ±2 wedges by construction
        raise RuntimeError("ring rasterization: wedge search failed")
    out[band] = side
    return out


def lattice_near(radius_lo: float, radius_hi: float, pitch_nm: int, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (int64 nm) of the N × N grid whose distance from the axis lies in [radius_lo, radius_hi]."""
    c = n_grid // 2
    k = np.arange(n_grid, dtype=np.int64) - c
    y = k * pitch_nm
    yf = y.astype(np.float64)
    lo2 = max(radius_lo, 0.0) ** 2 - yf**2
    hi2 = radius_hi**2 - yf**2
    ok = hi2 >= 0
    xs, ys = [], []
    a0 = np.ceil(np.sqrt(np.maximum(lo2, 0.0)) / pitch_nm) - 1  # one extra on each side: float rounding
    a1 = np.floor(np.sqrt(np.maximum(hi2, 0.0)) / pitch_nm) + 1
    a0 = np.maximum(a0, 0)
    count = int(np.max(np.where(ok, a1 - a0 + 1, 0), initial=0))
    for sign in (1, -1):
        for extra in range(count):
            a = a0 + extra
            sel = ok & (a <= a1)
            if sign < 0:
                sel &= a > 0  # x = 0 is counted once
            ax = (sign * a[sel]).astype(np.int64)
            inside = (ax >= -c) & (ax <= n_grid - 1 - c)
            xs.append(ax[inside] * pitch_nm)
            ys.append(y[sel][inside])
    return np.concatenate(xs), np.concatenate(ys)


def tie_free_circle(radius_nm: float, tolerance_nm: float, pitch_nm: int, n_grid: int, closed: bool = False) -> CirclePolygon:
    """A circle polygon with no pixel centre of the grid on its boundary (tries a few vertex phases)."""
    for attempt in range(32):
        circ = circle_polygon(radius_nm, tolerance_nm, phase=0.5 + 0.0371 * attempt, closed=closed)
        lx, ly = lattice_near(circ.r_in, circ.r_out, pitch_nm, n_grid)
        if lx.size == 0 or np.all(classify(circ, lx, ly) != 0):
            return circ
    raise RuntimeError(f"could not place a circle of radius {radius_nm} nm off the pixel centres")  # pragma: no cover


def segment_hits_lattice(a: np.ndarray, b: np.ndarray, pitch_nm: int) -> bool:
    """Whether a pixel-centre lattice point (multiples of `pitch_nm`) lies on the segment a–b (int64 nm), exactly."""
    (ax, ay), (bx, by) = (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))
    dx, dy = bx - ax, by - ay
    u0, u1 = -(-min(ax, bx) // pitch_nm), max(ax, bx) // pitch_nm
    for u in range(u0, u1 + 1):
        x = u * pitch_nm
        if dx == 0:
            v0, v1 = -(-min(ay, by) // pitch_nm), max(ay, by) // pitch_nm
            if v0 <= v1:
                return True
            continue
        num = ay * dx + (x - ax) * dy  # y · dx at this x
        if num % (dx * pitch_nm) == 0 and (num // dx) % pitch_nm == 0:
            y = num // dx
            if min(ay, by) <= y <= max(ay, by):
                return True
    return False


@dataclass
class RingLayout:
    """Ring boundaries of a radial design clipped to the aperture, and the pixel map they rasterize to.

    `boundaries[k]` is the polygon of radius (k + 1)·w for k < K and the aperture for k = K; `ring_index` (N, N)
    holds the ring of each pixel centre (−1 outside the aperture polygon).
    """

    ring_width_nm: float
    boundaries: list[CirclePolygon]
    ring_index: np.ndarray

    @property
    def rings(self) -> int:
        """Rings inside the aperture (the last one ends at the aperture)."""
        return len(self.boundaries)


def ring_layout(ring_width_m: float, aperture_m: float, pitch_m: float, n_grid: int,
                tolerance_m: float = 10e-9) -> RingLayout:
    """Boundary polygons of rings of width `ring_width_m` up to the aperture, and the exact pixel-centre raster."""
    pitch_nm = round(pitch_m * 1e9)
    w = ring_width_m * 1e9
    ra = aperture_m / 2 * 1e9
    tol = tolerance_m * 1e9
    margin = 4 * tol + 8  # nm: ring boundaries closer than this to the aperture are dropped (they would cross it)
    k_max = math.floor((ra - margin) / w)
    while k_max > 0 and k_max * w >= ra - margin:
        k_max -= 1
    radii = [k * w for k in range(1, k_max + 1)] + [ra]
    bounds = [tie_free_circle(r, tol, pitch_nm, n_grid, closed=(i == len(radii) - 1)) for i, r in enumerate(radii)]
    c = n_grid // 2
    k = (np.arange(n_grid, dtype=np.int64) - c) * pitch_nm
    xx, yy = np.meshgrid(k, k)  # yy varies with the row index
    r = np.hypot(xx.astype(np.float64), yy.astype(np.float64))
    radii_a = np.asarray(radii)
    # number of boundaries whose circle lies at or inside r, then correct the one nearest boundary exactly
    idx = np.searchsorted(radii_a, r, side="right")
    nearest = np.clip(np.searchsorted(radii_a, r), 0, len(radii) - 1)
    lower = np.clip(nearest - 1, 0, len(radii) - 1)
    use_lower = np.abs(radii_a[lower] - r) < np.abs(radii_a[nearest] - r)
    nearest = np.where(use_lower, lower, nearest)
    ring = idx.astype(np.int64)
    r_in = np.array([b.r_in for b in bounds])
    r_out = np.array([b.r_out for b in bounds])
    band = np.nonzero(((r >= r_in[nearest]) & (r <= r_out[nearest])).ravel())[0]
    nb = nearest.ravel()[band]
    flat = ring.ravel()
    for b in np.unique(nb).tolist():
        pix = band[nb == b]
        side = classify(bounds[b], xx.ravel()[pix], yy.ravel()[pix])
        # in the band: outside this polygon counts this boundary and all below it, inside only those below
        flat[pix] = b + (side < 0)
    ring = flat.reshape(r.shape)
    ring = ring.astype(np.int64)
    ring[ring >= len(bounds)] = -1  # outside the aperture polygon
    return RingLayout(w, bounds, ring.reshape(n_grid, n_grid))


def _arc(v: np.ndarray, i0: int, i1: int) -> np.ndarray:
    """Vertices i0, i0+1, …, i1 (inclusive, cyclic) of a closed polygon."""
    n = len(v)
    if i1 < i0:
        i1 += n
    return v[np.arange(i0, i1 + 1) % n]


def annulus_polygons(inner: CirclePolygon | None, outer: CirclePolygon, pitch_nm: int,
                     max_vertices: int = MAX_VERTICES) -> list[np.ndarray]:
    """Simple polygons (int64 nm) that together cover exactly outer-polygon minus inner-polygon.

    A disk (no inner boundary) with few vertices is one polygon; otherwise the annulus is cut into sectors along
    near-radial edges that pass through no pixel centre, each sector within `max_vertices`.
    """
    vo = outer.vertices
    if inner is None and outer.n <= max_vertices:
        return [vo]
    if inner is None:
        # disk sectors around an apex that is not a pixel centre
        apex = np.array([pitch_nm // 2 + 1, pitch_nm // 3 + 1], dtype=np.int64)
        s = math.ceil(outer.n / (max_vertices - 2))
        cuts = [round(q * outer.n / s) for q in range(s)]
        for q in range(s):
            while segment_hits_lattice(apex, vo[cuts[q] % outer.n], pitch_nm):
                cuts[q] += 1
        polys = []
        for q in range(s):
            arc = _arc(vo, cuts[q] % outer.n, cuts[(q + 1) % s] % outer.n)
            polys.append(np.concatenate([apex[None], arc]))
        return polys
    vi = inner.vertices
    s = max(2, math.ceil((outer.n + inner.n) / (max_vertices - 4)))
    co = [round(q * outer.n / s) for q in range(s)]
    ci = [round(q * inner.n / s) for q in range(s)]
    for q in range(s):
        while segment_hits_lattice(vo[co[q] % outer.n], vi[ci[q] % inner.n], pitch_nm):
            co[q] += 1
    polys = []
    for q in range(s):
        a_out = _arc(vo, co[q] % outer.n, co[(q + 1) % s] % outer.n)
        a_in = _arc(vi, ci[q] % inner.n, ci[(q + 1) % s] % inner.n)[::-1]
        polys.append(np.concatenate([a_out, a_in]))
    return polys


def ring_runs(selected: np.ndarray) -> list[tuple[int, int]]:
    """Runs [a, b) of consecutive True entries of a 1-D boolean array."""
    d = np.diff(np.concatenate([[0], selected.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist(), strict=True))


def rings_polygons(layout: RingLayout, selected: np.ndarray, pitch_nm: int) -> list[np.ndarray]:
    """Polygons (int64 nm) covering the rings marked in `selected` (len = layout.rings), merged over runs."""
    polys: list[np.ndarray] = []
    for a, b in ring_runs(selected[: layout.rings]):
        inner = layout.boundaries[a - 1] if a > 0 else None
        polys.extend(annulus_polygons(inner, layout.boundaries[b - 1], pitch_nm))
    return polys


def _square_position(p: np.ndarray, half_nm: int) -> int:
    """Distance (nm) along the boundary of the square [−h, h]² from its corner (−h, −h), counter-clockwise."""
    x, y, h = int(p[0]), int(p[1]), half_nm
    if y == -h:
        return x + h
    if x == h:
        return 2 * h + y + h
    if y == h:
        return 4 * h + h - x
    return 6 * h + h - y


def square_frame_polygons(hole: CirclePolygon, half_nm: int, pitch_nm: int,
                          max_vertices: int = MAX_VERTICES) -> list[np.ndarray]:
    """Simple polygons (int64 nm) that together cover exactly the square [−h, h]² minus the polygon `hole`.

    The frame is cut along axis-parallel rays from hole vertices to the square (vertical where |y| ≥ |x|,
    horizontal elsewhere, so no two cuts cross), each passing through no pixel centre; the square's sides lie
    half a pitch off the pixel centres when h is an odd multiple of pitch/2.
    """
    if hole.r_out >= half_nm:
        raise LensdesignError(f"the aperture (radius {hole.radius_nm * 1e-3:.6g} um) reaches beyond the square of "
                              f"half-size {half_nm * 1e-3:.6g} um it is cut from; re-create the run")
    v, n = hole.vertices, hole.n
    s = max(4, math.ceil(n / (max_vertices - 8)))

    def ray(i: int) -> np.ndarray:
        x, y = int(v[i % n, 0]), int(v[i % n, 1])
        if abs(y) >= abs(x):
            return np.array([x, half_nm if y > 0 else -half_nm], dtype=np.int64)
        return np.array([half_nm if x > 0 else -half_nm, y], dtype=np.int64)

    cuts = [round(q * n / s) for q in range(s)]
    for q in range(s):
        while segment_hits_lattice(v[cuts[q] % n], ray(cuts[q]), pitch_nm):
            cuts[q] += 1
    corners = np.array([[-half_nm, -half_nm], [half_nm, -half_nm], [half_nm, half_nm], [-half_nm, half_nm]],
                       dtype=np.int64)
    corner_pos = [2 * half_nm * k for k in range(4)]
    perimeter = 8 * half_nm
    polys = []
    for q in range(s):
        i0, i1 = cuts[q] % n, cuts[(q + 1) % s] % n
        a, b = ray(i0), ray(i1)
        pa, pb = _square_position(a, half_nm), _square_position(b, half_nm)
        span = (pb - pa) % perimeter
        between = sorted((((cp - pa) % perimeter, k) for k, cp in enumerate(corner_pos)
                          if 0 < (cp - pa) % perimeter < span))
        outer = [a, *(corners[k] for _, k in between), b]
        polys.append(np.concatenate([np.stack(outer), _arc(v, i0, i1)[::-1]]))
    return polys

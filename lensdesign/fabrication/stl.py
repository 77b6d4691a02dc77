"""Binary STL of a quantized height map for two-photon lithography: one closed solid per print field.

Each pixel is a flat-topped column of height base + h standing on z = 0, so the solid's volume is exactly
Σ (base + h)·pitch² (coordinates in µm). The mesh is watertight in the strict sense: every edge is shared by exactly
two triangles, with opposite orientation (outward normals), and no triangle is degenerate.

Two things make that work on a pixel grid:

* Walls between pixels of different height are split at every height that meets their vertical edges, so no
  vertex sits inside another triangle's edge (no T-junctions).
* A "saddle" corner — two diagonal pixels both higher than the other two — would make the high columns touch along
  a vertical line shared by four walls. There the corner is moved apart into two junction points on the high
  pixels' diagonal, p/16 either side of the corner, joined by a short bridge wall, and the pixel edges meeting
  the corner bend a quarter pixel away from it. The four pixel outlines keep their area exactly, so the volume
  is unchanged; the high columns now share a face instead of a line.

Internally x, y are integers in 1/16 pixel and z is a level code (0 = the bottom, q + 1 = level q), mapped to µm
only when the file is written; z increases with the code, which is all the orientation test needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensdesign.rundir import atomic_write_bytes

SUB = 16  # xy sub-units per pixel
ARM = 4  # arm points at a quarter pixel from a saddle corner
JUNC = 1  # junction points at 1/16 pixel along the diagonal

# arms: 0 = east, 1 = north, 2 = west, 3 = south
_ARM_VEC = np.array([[ARM, 0], [0, ARM], [-ARM, 0], [0, -ARM]], dtype=np.int64)
# junction offset by saddle kind (0 none, 1 = NE & SW high, 2 = NW & SE high) and arm
_J_OFF = np.zeros((3, 4, 2), dtype=np.int64)
_J_OFF[1] = [[-JUNC, -JUNC], [JUNC, JUNC], [JUNC, JUNC], [-JUNC, -JUNC]]
_J_OFF[2] = [[-JUNC, JUNC], [-JUNC, JUNC], [JUNC, -JUNC], [JUNC, -JUNC]]

_STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])


@dataclass
class _Corners:
    """Per-corner data of a field: the four surrounding codes and the saddle kind."""

    sw: np.ndarray
    se: np.ndarray
    nw: np.ndarray
    ne: np.ndarray
    kind: np.ndarray

    def incident(self, ci: np.ndarray, cj: np.ndarray, arm: int | np.ndarray) -> np.ndarray:
        """Codes of the pixels that meet the junction used by `arm` at corners (ci, cj): (n, 4), −1 = none."""
        sw, se, nw, ne = self.sw[ci, cj], self.se[ci, cj], self.nw[ci, cj], self.ne[ci, cj]
        k = self.kind[ci, cj]
        arm = np.broadcast_to(np.asarray(arm), k.shape)
        none = np.full_like(sw, -1)
        out = np.stack([sw, se, nw, ne], axis=1)
        a_j1 = (k == 1) & ((arm == 1) | (arm == 2))
        a_j2 = (k == 1) & ((arm == 0) | (arm == 3))
        b_j1 = (k == 2) & ((arm == 1) | (arm == 0))
        b_j2 = (k == 2) & ((arm == 2) | (arm == 3))
        out[a_j1] = np.stack([nw, ne, sw, none], 1)[a_j1]
        out[a_j2] = np.stack([ne, se, sw, none], 1)[a_j2]
        out[b_j1] = np.stack([nw, ne, se, none], 1)[b_j1]
        out[b_j2] = np.stack([nw, sw, se, none], 1)[b_j2]
        return out

    def junction(self, ci: np.ndarray, cj: np.ndarray, arm: int | np.ndarray) -> np.ndarray:
        """(n, 2) position of the junction used by `arm` at corners (ci, cj)."""
        base = np.stack([cj * SUB, ci * SUB], axis=1).astype(np.int64)
        return base + _J_OFF[self.kind[ci, cj], arm]

    def arm_point(self, ci: np.ndarray, cj: np.ndarray, arm: int) -> np.ndarray:
        base = np.stack([cj * SUB, ci * SUB], axis=1).astype(np.int64)
        return base + _ARM_VEC[arm]


def _corners(codes: np.ndarray) -> _Corners:
    kp = np.pad(codes, 1)
    sw, se, nw, ne = kp[:-1, :-1], kp[:-1, 1:], kp[1:, :-1], kp[1:, 1:]
    kind = np.zeros(sw.shape, dtype=np.int64)
    kind[np.minimum(ne, sw) > np.maximum(nw, se)] = 1
    kind[np.minimum(nw, se) > np.maximum(ne, sw)] = 2
    return _Corners(sw, se, nw, ne, kind)


def _chain(inc: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct codes of `inc` (n, 4) within [lo, hi]: (n, 4) padded with a large value, and the lengths."""
    big = np.iinfo(np.int64).max // 4
    c = np.where((inc >= lo[:, None]) & (inc <= hi[:, None]), inc, big)
    c.sort(axis=1)
    dup = np.zeros_like(c, dtype=bool)
    dup[:, 1:] = c[:, 1:] == c[:, :-1]
    c[dup] = big
    c.sort(axis=1)
    return c, (c < big).sum(axis=1)


def _ladder(u: np.ndarray, v: np.ndarray, cu: np.ndarray, nu: np.ndarray, cv: np.ndarray,
            nv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate vertical wall panels between the vertical lines at u and v (n, 2), split at chain codes.

    Each step adds the next point of whichever chain is lower. Returns (T, 3, 3) integer triangles (x, y, code)
    and the panel each triangle belongs to.
    """
    big = np.iinfo(np.int64).max // 4
    n = len(u)
    i = np.zeros(n, dtype=np.int64)
    j = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    pad_u = np.concatenate([cu, np.full((n, 1), big)], axis=1)
    pad_v = np.concatenate([cv, np.full((n, 1), big)], axis=1)
    tris, owner = [], []
    for _ in range(8):
        active = (i < nu - 1) | (j < nv - 1)
        if not active.any():
            break
        nxt_u = np.where(i < nu - 1, pad_u[rows, i + 1], big)
        nxt_v = np.where(j < nv - 1, pad_v[rows, j + 1], big)
        take_u = active & (nxt_u <= nxt_v)
        take_v = active & ~take_u
        a = np.concatenate([u, pad_u[rows, i][:, None]], axis=1)
        b = np.concatenate([v, pad_v[rows, j][:, None]], axis=1)
        cu_n = np.concatenate([u, nxt_u[:, None]], axis=1)
        cv_n = np.concatenate([v, nxt_v[:, None]], axis=1)
        tris.append(np.stack([a, b, cu_n], axis=1)[take_u])
        tris.append(np.stack([a, b, cv_n], axis=1)[take_v])
        owner += [rows[take_u], rows[take_v]]
        i = i + take_u
        j = j + take_v
    if not tris:
        return np.zeros((0, 3, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(tris), np.concatenate(owner)


def _orient(tris: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points against `want` (T, 3); every normal must have a clear side."""
    e1 = tris[:, 1] - tris[:, 0]
    e2 = tris[:, 2] - tris[:, 0]
    nrm = np.cross(e1, e2)
    d = (nrm * want).sum(axis=1)
    if np.any(d == 0):  # pragma: no cover - would be a bug in the construction
        raise RuntimeError("STL mesh: degenerate or misplaced triangle")
    flip = d < 0
    out = tris.copy()
    out[flip, 1], out[flip, 2] = tris[flip, 2], tris[flip, 1]
    return out


def _walls(cr: _Corners, nr: int, nc: int, kp: np.ndarray) -> np.ndarray:
    """All wall triangles: between pixels of different code along pixel edges, and across saddle bridges."""
    out = []
    # edges: horizontal (corner (ci, cj) → (ci, cj+1)), vertical ((ci, cj) → (ci+1, cj))
    for horizontal in (True, False):
        if horizontal:
            ci, cj = np.meshgrid(np.arange(nr + 1), np.arange(nc), indexing="ij")
            qi, qj = ci, cj + 1
            left, right = kp[ci + 1, cj + 1], kp[ci, cj + 1]  # above, below
            arm_p, arm_q = 0, 2
        else:
            ci, cj = np.meshgrid(np.arange(nr), np.arange(nc + 1), indexing="ij")
            qi, qj = ci + 1, cj
            left, right = kp[ci + 1, cj], kp[ci + 1, cj + 1]
            arm_p, arm_q = 1, 3
        sel = left != right
        ci, cj, qi, qj, left, right = ci[sel], cj[sel], qi[sel], qj[sel], left[sel], right[sel]
        sp = cr.kind[ci, cj] > 0
        sq = cr.kind[qi, qj] > 0
        jp, jq = cr.junction(ci, cj, arm_p), cr.junction(qi, qj, arm_q)
        ap, aq = cr.arm_point(ci, cj, arm_p), cr.arm_point(qi, qj, arm_q)
        inc_p, inc_q = cr.incident(ci, cj, arm_p), cr.incident(qi, qj, arm_q)
        none = np.full_like(left, -1)
        inc_a = np.stack([left, right, none, none], axis=1)
        # panel a: J_P → (AP_P | AP_Q | J_Q); b: AP_P → (AP_Q | J_Q) where P is a saddle; c: AP_Q → J_Q where Q is
        end_a = np.where(sp[:, None], ap, np.where(sq[:, None], aq, jq))
        inc_end_a = np.where((sp | sq)[:, None], inc_a, inc_q)
        panels = [(np.ones_like(sp), jp, inc_p, end_a, inc_end_a),
                  (sp, ap, inc_a, np.where(sq[:, None], aq, jq), np.where(sq[:, None], inc_a, inc_q)),
                  (sq, aq, inc_a, jq, inc_q)]
        for m, u, iu, v, iv in panels:
            out.append(_wall_panels(u[m], iu[m], v[m], iv[m], left[m], right[m]))
    # bridges at saddle corners: J1 → J2 with (left, right) = (NE, SW) for kind 1, (SE, NW) for kind 2
    for kind in (1, 2):
        ci, cj = np.nonzero(cr.kind == kind)
        if kind == 1:
            j1, j2 = cr.junction(ci, cj, 1), cr.junction(ci, cj, 0)
            i1, i2 = cr.incident(ci, cj, 1), cr.incident(ci, cj, 0)
            left, right = cr.ne[ci, cj], cr.sw[ci, cj]
        else:
            j1, j2 = cr.junction(ci, cj, 1), cr.junction(ci, cj, 2)
            i1, i2 = cr.incident(ci, cj, 1), cr.incident(ci, cj, 2)
            left, right = cr.se[ci, cj], cr.nw[ci, cj]
        m = left != right
        out.append(_wall_panels(j1[m], i1[m], j2[m], i2[m], left[m], right[m]))
    return np.concatenate(out)


def _wall_panels(u: np.ndarray, inc_u: np.ndarray, v: np.ndarray, inc_v: np.ndarray,
                 left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Oriented triangles of wall panels u → v between the pixel on the left (code `left`) and on the right."""
    if len(u) == 0:
        return np.zeros((0, 3, 3), dtype=np.int64)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    cu, nu = _chain(inc_u, lo, hi)
    cv, nv = _chain(inc_v, lo, hi)
    tris, owner = _ladder(u, v, cu, nu, cv, nv)
    # the normal points to the lower side: left of u → v when the left pixel is the lower one
    d = v - u
    sign = np.where(left < right, 1, -1)
    want = np.stack([-d[:, 1] * sign, d[:, 0] * sign, np.zeros_like(sign)], axis=1)
    return _orient(tris, want[owner])


def _tops(cr: _Corners, codes: np.ndarray) -> np.ndarray:
    """Top faces of all pixels at their own code, oriented up."""
    nr, nc = codes.shape
    pi, pj = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    pi, pj = pi.ravel(), pj.ravel()
    z = codes.ravel().astype(np.int64)
    # the pixel's corners in CCW order, with the arms by which its outline enters and leaves each one
    # SW corner: in = N (1), out = E (0); SE: in = W (2), out = N (1); NE: in = S (3), out = W (2); NW: in = E (0), out = S (3)
    corners = [(pi, pj, 1, 0), (pi, pj + 1, 2, 1), (pi + 1, pj + 1, 3, 2), (pi + 1, pj, 0, 3)]
    inside_sign = [(1, 1), (-1, 1), (-1, -1), (1, -1)]  # the pixel's quadrant as seen from each corner
    sad = [cr.kind[ci, cj] > 0 for ci, cj, _, _ in corners]
    deformed = sad[0] | sad[1] | sad[2] | sad[3]

    def pt(xy: np.ndarray, zz: np.ndarray) -> np.ndarray:
        return np.concatenate([xy, zz[:, None]], axis=1)

    out = []
    reg = ~deformed
    c = [np.stack([cj * SUB, ci * SUB], axis=1).astype(np.int64) for ci, cj, _, _ in corners]
    zr = z[reg]
    out.append(np.stack([pt(c[0][reg], zr), pt(c[1][reg], zr), pt(c[2][reg], zr)], axis=1))
    out.append(np.stack([pt(c[0][reg], zr), pt(c[2][reg], zr), pt(c[3][reg], zr)], axis=1))
    d = deformed
    if d.any():
        zd = z[d]
        centre = np.stack([pj[d] * SUB + SUB // 2, pi[d] * SUB + SUB // 2], axis=1).astype(np.int64)
        ring = []
        for k, (_, _, a_in, a_out) in enumerate(corners):
            s = sad[k][d]
            p = c[k][d]
            ring.append(np.where(s[:, None], p + _ARM_VEC[a_in], p))
            ring.append(np.where(s[:, None], p + _ARM_VEC[a_out], p))
        for m in range(8):
            a, b = ring[m], ring[(m + 1) % 8]
            keep = np.any(a != b, axis=1)
            out.append(np.stack([pt(centre[keep], zd[keep]), pt(a[keep], zd[keep]), pt(b[keep], zd[keep])], axis=1))
        for k, (ci, cj, a_in, a_out) in enumerate(corners):
            s = sad[k] & d
            if not s.any():
                continue
            ci_s, cj_s, zs = ci[s], cj[s], z[s]
            ap_in = cr.arm_point(ci_s, cj_s, a_in)
            ap_out = cr.arm_point(ci_s, cj_s, a_out)
            ja = cr.junction(ci_s, cj_s, a_in)
            jb = cr.junction(ci_s, cj_s, a_out)
            low = np.all(ja == jb, axis=1)
            out.append(np.stack([pt(ap_in[low], zs[low]), pt(ja[low], zs[low]), pt(ap_out[low], zs[low])], axis=1))
            hi = ~low
            base = np.stack([cj_s * SUB, ci_s * SUB], axis=1)
            sx, sy = inside_sign[k]
            a_inside = hi & ((ja - base) == np.array([sx * JUNC, sy * JUNC])).all(axis=1)
            b_inside = hi & ~a_inside
            m = a_inside
            out.append(np.stack([pt(ap_in[m], zs[m]), pt(ja[m], zs[m]), pt(ap_out[m], zs[m])], axis=1))
            out.append(np.stack([pt(ja[m], zs[m]), pt(jb[m], zs[m]), pt(ap_out[m], zs[m])], axis=1))
            m = b_inside
            out.append(np.stack([pt(ap_in[m], zs[m]), pt(ja[m], zs[m]), pt(jb[m], zs[m])], axis=1))
            out.append(np.stack([pt(ap_in[m], zs[m]), pt(jb[m], zs[m]), pt(ap_out[m], zs[m])], axis=1))
    tris = np.concatenate(out)
    want = np.zeros((len(tris), 3), dtype=np.int64)
    want[:, 2] = 1
    return _orient(tris, want)


def _bottom(nr: int, nc: int) -> np.ndarray:
    """The bottom face at code 0: a fan from the field centre over every boundary corner, oriented down."""
    bx = np.concatenate([np.arange(nc + 1), np.full(nr, nc), np.arange(nc - 1, -1, -1), np.zeros(nr - 1, dtype=np.int64)])
    by = np.concatenate([np.zeros(nc + 1, dtype=np.int64), np.arange(1, nr + 1), np.full(nc, nr), np.arange(nr - 1, 0, -1)])
    b = np.stack([bx * SUB, by * SUB, np.zeros_like(bx)], axis=1).astype(np.int64)
    centre = np.array([nc * SUB // 2, nr * SUB // 2, 0], dtype=np.int64)
    tris = np.stack([np.broadcast_to(centre, b.shape), b, np.roll(b, -1, axis=0)], axis=1)
    want = np.zeros((len(tris), 3), dtype=np.int64)
    want[:, 2] = -1
    return _orient(tris, want)


def field_mesh(codes: np.ndarray) -> np.ndarray:
    """Closed mesh of the pixel columns of one field: (T, 3, 3) int64 triangles (x, y in 1/16 pixel, z code).

    `codes` (rows, cols) ≥ 1 are the column heights as codes (row 0 at y = 0); code 0 is the bottom plane.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.min() < 1:
        raise ValueError("column codes must be ≥ 1 (0 is the bottom)")
    nr, nc = codes.shape
    cr = _corners(codes)
    kp = np.pad(codes, 1)
    return np.concatenate([_tops(cr, codes), _walls(cr, nr, nc, kp), _bottom(nr, nc)])


def stl_bytes(tris_um: np.ndarray, header: str) -> bytes:
    """Binary STL of (T, 3, 3) float triangles (µm) with unit normals; header is ASCII, at most 80 bytes."""
    h = header.encode("ascii", "replace")[:80].ljust(80, b" ")
    if h.lower().startswith(b"solid"):
        h = b"lensdesign " + h[:69]
    t = tris_um.astype(np.float64)
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    rec = np.zeros(len(t), dtype=_STL_DTYPE)
    rec["normal"] = n
    rec["v"] = tris_um
    return h + struct.pack("<I", len(t)) + rec.tobytes()


def field_triangles_um(levels: np.ndarray, x0_um: float, y0_um: float, pitch_um: float, base_um: float,
                       level_step_um: float) -> np.ndarray:
    """Float32 triangles (T, 3, 3) in µm of the field whose lower-left pixel corner is at (x0, y0)."""
    tri = field_mesh(np.asarray(levels, dtype=np.int64) + 1)
    step = pitch_um / SUB
    code = tri[..., 2]
    z = np.where(code == 0, 0.0, base_um + (code - 1) * level_step_um)
    out = np.empty(tri.shape, dtype=np.float32)
    out[..., 0] = x0_um + tri[..., 0] * step
    out[..., 1] = y0_um + tri[..., 1] * step
    out[..., 2] = z
    return out


def write_field_stl(path: Path, levels: np.ndarray, x0_um: float, y0_um: float, pitch_um: float, base_um: float,
                    level_step_um: float, header: str) -> int:
    """Write one print field as a binary STL (whole or not at all); returns the triangle count."""
    tri = field_triangles_um(levels, x0_um, y0_um, pitch_um, base_um, level_step_um)
    atomic_write_bytes(path, stl_bytes(tri, header))
    return len(tri)

"""TIFF images of a quantized design for grayscale writers: heights (m), level indices, and 8-bit grey values.

Rows are array rows: row 0 is the bottom of the element (y = −(N//2)·pitch), y grows with the row index, as in the
GDS layout. The TIFF Orientation tag says so (4 = bottom-left), for readers that honour it. The pitch is in the
X/Y resolution tags (pixels per centimetre) and, exactly, in the JSON description with the other facts a fab needs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from lensdesign.errors import ArgumentError
from lensdesign.rundir import atomic_write_bytes

ORIENTATION_BOTLEFT = 4  # TIFF tag 274: row 0 at the bottom, column 0 at the left


def tiff_bytes(image: np.ndarray, pitch_m: float, description: dict[str, Any]) -> bytes:
    """One-page TIFF of `image` with the pitch in the resolution tags and `description` as JSON."""
    buf = io.BytesIO()
    px_per_cm = 1e-2 / pitch_m
    tifffile.imwrite(buf, image, description=json.dumps(description), metadata=None, resolution=(px_per_cm, px_per_cm),
                     resolutionunit="CENTIMETER", extratags=[(274, "H", 1, ORIENTATION_BOTLEFT, True)])
    return buf.getvalue()


def write_tiff(path: Path, image: np.ndarray, pitch_m: float, description: dict[str, Any]) -> None:
    """Write a TIFF whole or not at all."""
    atomic_write_bytes(path, tiff_bytes(image, pitch_m, description))


def level_dtype(levels: int) -> type[np.unsignedinteger]:
    """uint8 for up to 256 levels, else uint16."""
    return np.uint8 if levels <= 256 else np.uint16


def read_lut(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A dose curve: CSV of height (nm) and grey value (0–255), one pair a line; a header line is allowed.

    Returns (heights in metres, grey values), sorted by height. Raises a one-line `ArgumentError` naming the argument
    `lut`.
    """
    if not path.is_file():
        raise ArgumentError("{lut}: {path}: no such file; give a CSV of height_nm,grey pairs", path=path)
    rows: list[tuple[float, float]] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ArgumentError("{lut}: {path}: not a text file; give a CSV of height_nm,grey pairs", path=path) from None
    for n, rec in enumerate(csv.reader(io.StringIO(text)), start=1):
        rec = [c.strip() for c in rec if c.strip()]
        if not rec or rec[0].startswith("#"):
            continue
        try:
            h, g = float(rec[0]), float(rec[1])
        except (ValueError, IndexError):
            if not rows and n == 1:
                continue  # header
            raise ArgumentError("{lut}: {path}: line {n} is not 'height_nm,grey'; fix that line",
                                path=path, n=n) from None
        rows.append((h, g))
    if len(rows) < 2:
        raise ArgumentError("{lut}: {path}: needs at least two height_nm,grey rows", path=path)
    a = np.array(rows, dtype=np.float64)
    a = a[np.argsort(a[:, 0], kind="stable")]
    h, g = a[:, 0], a[:, 1]
    if np.any(np.diff(h) <= 0):
        raise ArgumentError("{lut}: {path}: heights repeat; give each height once", path=path)
    dg = np.diff(g)
    if not (np.all(dg >= 0) or np.all(dg <= 0)):
        raise ArgumentError("{lut}: {path}: grey values are not monotonic in height; a dose curve must be", path=path)
    if g.min() < 0 or g.max() > 255:
        raise ArgumentError("{lut}: {path}: grey values must lie in 0–255", path=path)
    return h * 1e-9, g


def grey_levels(lut_heights_m: np.ndarray, lut_grey: np.ndarray, level_heights_m: np.ndarray, source: str) -> np.ndarray:
    """8-bit grey value of each level height (m), interpolated linearly in the dose curve; no extrapolation."""
    lo, hi = lut_heights_m[0], lut_heights_m[-1]
    tol = 1e-12
    if level_heights_m.min() < lo - tol or level_heights_m.max() > hi + tol:
        raise ArgumentError("{lut}: {source} covers {lo:.4g}–{hi:.4g} nm but the levels need {a:.4g}–{b:.4g} nm; "
                            "extend the table", source=source, lo=lo * 1e9, hi=hi * 1e9,
                            a=level_heights_m.min() * 1e9, b=level_heights_m.max() * 1e9)
    return np.clip(np.rint(np.interp(level_heights_m, lut_heights_m, lut_grey)), 0, 255).astype(np.uint8)

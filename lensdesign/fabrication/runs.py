"""Runs of True pixels along the rows of a binary mask: the shared basis of polygon building and width checks."""

from __future__ import annotations

import numpy as np


def true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) of every run of True along the rows of a 2-D mask; `end` is exclusive (pixels)."""
    rows, cols = mask.shape
    pad = np.zeros((rows, cols + 2), dtype=np.int8)
    pad[:, 1:-1] = mask
    d = np.diff(pad, axis=1)
    r, s = np.nonzero(d == 1)
    _, e = np.nonzero(d == -1)
    return r, s, e

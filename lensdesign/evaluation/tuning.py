"""Baseline tuning: golden-section maximization (the Wiener γ search) and the cubic phase plate's strength.

`golden_max` is pure (no torch); `tune_cubic` scores cubic plates with an `Evaluator`
(lensdesign.evaluation.scoring), each with its own tuned γ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lensdesign.units import defocus_waves

if TYPE_CHECKING:
    from lensdesign.evaluation.scoring import Evaluator

LOG10_GAMMA_RANGE = (-7.0, 1.0)


def golden_max(f: Callable[[float], float], lo: float, hi: float, iters: int = 20, grid: int = 0,
               transform: Callable[[float], float] | None = None) -> tuple[float, float]:
    """Maximize a (roughly unimodal) f on [lo, hi]: optional coarse grid, then golden-section search.

    Returns (transform(x*), f(x*)).
    """
    tf = transform or (lambda v: v)
    if grid > 1:
        xs = np.linspace(lo, hi, grid)
        vals = [f(float(x)) for x in xs]
        i = int(np.argmax(vals))
        lo, hi = float(xs[max(0, i - 1)]), float(xs[min(grid - 1, i + 1)])
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    x, fx = (c, fc) if fc >= fd else (d, fd)
    return tf(x), fx


def tune_cubic(evaluator: Evaluator, n: int, seed: int = 0,
               log: Callable[[str], None] | None = None) -> tuple[float, float]:
    """Cubic strength α (waves) of an n × n plate that maximizes the γ-tuned mean PSNR (dB) on the tuning draw.

    A coarse geometric grid of α around the largest defocus W020 (0.5 … 6 × W020, at least 0.5 … 12 waves),
    then a golden-section refinement of log α between the best point's neighbours. Returns (α, tuning PSNR).
    """
    from lensdesign.baselines import cubic_height

    spec = evaluator.spec
    w = max(defocus_waves(spec), 1.0)
    grid = np.geomspace(0.5 * w, 6.0 * w, 8)
    cache: dict[float, float] = {}

    def score(log_a: float) -> float:
        a = float(np.exp(log_a))
        key = round(log_a, 6)
        if key not in cache:
            cache[key] = evaluator.bench(cubic_height(spec, n, a).float(), seed).tune_gamma(iters=14)[1]
            if log:
                log(f"  cubic α = {a:.3g} waves: {cache[key]:.3f} dB (tuning draw)")
        return cache[key]

    with evaluator.threads():
        vals = [score(float(np.log(a))) for a in grid]
        i = int(np.argmax(vals))
        lo, hi = float(np.log(grid[max(0, i - 1)])), float(np.log(grid[min(len(grid) - 1, i + 1)]))
        a, v = golden_max(score, lo, hi, iters=5, transform=lambda x: float(np.exp(x)))
    if v < vals[i]:
        a, v = float(grid[i]), vals[i]
    return a, v

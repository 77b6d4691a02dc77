"""Quantization of a height map to N levels over [0, max_height): the one quantizer export and training share.

Level q has height q·Δ with Δ = max_height / N. A height is rounded to the nearest level; the level N (at
max_height, one full wave for an `auto` etch depth) wraps to 0, which is the same phase. An N-level staircase
of a blazed grating has first-order efficiency sinc²(1/N).
"""

from __future__ import annotations

import numpy as np
import torch


def level_step(max_height: float, levels: int) -> float:
    """Height of one level step (m)."""
    return max_height / levels


def level_index(height: np.ndarray | torch.Tensor, max_height: float, levels: int) -> np.ndarray | torch.Tensor:
    """Level index in [0, levels) of each height (m): round to the nearest level, wrap the top level to 0."""
    step = level_step(max_height, levels)
    if isinstance(height, torch.Tensor):
        return torch.remainder(torch.round(height / step), levels).to(torch.int64)
    return np.mod(np.rint(np.asarray(height, dtype=np.float64) / step), levels).astype(np.int64)


def quantize(height: np.ndarray | torch.Tensor, max_height: float, levels: int) -> np.ndarray | torch.Tensor:
    """Quantized heights (m) of a height map (m)."""
    q = level_index(height, max_height, levels)
    step = level_step(max_height, levels)
    if isinstance(q, torch.Tensor):
        return q.to(height.dtype) * step  # type: ignore[union-attr]
    return q.astype(np.float64) * step


def quantize_ste(height: torch.Tensor, max_height: float, levels: int) -> torch.Tensor:
    """Straight-through quantizer: the forward pass sees the quantized map, the gradient passes unchanged."""
    return height + (quantize(height.detach(), max_height, levels) - height.detach())


def soft_quantize(height: torch.Tensor, max_height: float, levels: int, temperature: float) -> torch.Tensor:
    """Annealed soft staircase: temperature → 0 gives `quantize`, large temperature gives the identity.

    Within each step the height follows a sigmoid of sharpness 1/temperature (in units of the step),
    differentiable everywhere; wraps like `quantize`.
    """
    step = level_step(max_height, levels)
    x = height / step
    base = torch.floor(x + 0.5)
    frac = x + 0.5 - base - 0.5  # in [-0.5, 0.5)
    t = max(float(temperature), 1e-4)
    s = torch.sigmoid(frac / t)
    s0 = torch.sigmoid(torch.tensor(-0.5 / t, device=height.device, dtype=height.dtype))
    s = (s - s0) / (1 - 2 * s0) - 0.5  # in [-0.5, 0.5]
    return torch.remainder((base + s) * step, max_height)


def staircase_efficiency(levels: int) -> float:
    """First-order diffraction efficiency of an N-level staircase blaze: sinc²(1/N)."""
    x = np.pi / levels
    return float((np.sin(x) / x) ** 2)

"""Quantization of a height map to N levels over [0, max_height): the one quantizer export and training share.

Level q has height q·Δ with Δ = max_height / N. A height is rounded to the nearest level; the level N (at
max_height, one full wave for an `auto` etch depth) wraps to 0, which is the same phase. An N-level staircase
of a blazed grating has first-order efficiency sinc²(1/N).

`wrap=False` quantizes a refractive sag (no phase wrap): N levels q·Δ with Δ = max_height / (N − 1), so level
N − 1 is max_height itself; heights are rounded to the nearest level and clipped to [0, N − 1].
"""

from __future__ import annotations

import numpy as np
import torch


def level_step(max_height: float, levels: int, wrap: bool = True) -> float:
    """Height of one level step (m): max_height / N, or max_height / (N − 1) for a sag (`wrap=False`)."""
    return max_height / levels if wrap else max_height / (levels - 1)


def level_index(height: np.ndarray | torch.Tensor, max_height: float, levels: int,
                wrap: bool = True) -> np.ndarray | torch.Tensor:
    """Level index in [0, levels) of each height (m): round to the nearest level, wrap the top level to 0
    (`wrap=False`: clip to [0, levels − 1])."""
    step = level_step(max_height, levels, wrap)
    if isinstance(height, torch.Tensor):
        r = torch.round(height / step)
        return (torch.remainder(r, levels) if wrap else torch.clamp(r, 0, levels - 1)).to(torch.int64)
    r = np.rint(np.asarray(height, dtype=np.float64) / step)
    return (np.mod(r, levels) if wrap else np.clip(r, 0, levels - 1)).astype(np.int64)


def quantize(height: np.ndarray | torch.Tensor, max_height: float, levels: int,
             wrap: bool = True) -> np.ndarray | torch.Tensor:
    """Quantized heights (m) of a height map (m)."""
    q = level_index(height, max_height, levels, wrap)
    step = level_step(max_height, levels, wrap)
    if isinstance(q, torch.Tensor):
        return q.to(height.dtype) * step  # type: ignore[union-attr]
    return q.astype(np.float64) * step


def quantize_ste(height: torch.Tensor, max_height: float, levels: int, wrap: bool = True) -> torch.Tensor:
    """Straight-through quantizer: the forward pass sees the quantized map, the gradient passes unchanged."""
    return height + (quantize(height.detach(), max_height, levels, wrap) - height.detach())


def soft_quantize(height: torch.Tensor, max_height: float, levels: int, temperature: float,
                  wrap: bool = True) -> torch.Tensor:
    """Annealed soft staircase: temperature → 0 gives `quantize`, large temperature gives the identity.

    Within each step the height follows a sigmoid of sharpness 1/temperature (in units of the step),
    differentiable everywhere; wraps (or clips) like `quantize`.
    """
    step = level_step(max_height, levels, wrap)
    x = height / step
    base = torch.floor(x + 0.5)
    frac = x + 0.5 - base - 0.5  # in [-0.5, 0.5)
    t = max(float(temperature), 1e-4)
    s = torch.sigmoid(frac / t)
    s0 = torch.sigmoid(torch.tensor(-0.5 / t, device=height.device, dtype=height.dtype))
    s = (s - s0) / (1 - 2 * s0) - 0.5  # in [-0.5, 0.5]
    out = (base + s) * step
    return torch.remainder(out, max_height) if wrap else torch.clamp(out, 0.0, max_height)


def staircase_efficiency(levels: int) -> float:
    """First-order diffraction efficiency of an N-level staircase blaze: sinc²(1/N)."""
    x = np.pi / levels
    return float((np.sin(x) / x) ** 2)

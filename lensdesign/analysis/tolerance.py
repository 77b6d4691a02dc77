"""As-built height maps: random fabrication errors applied to the quantized design, and a seeded Monte Carlo.

Error model (all lengths in metres, from `spec.fabrication`):

* multilevel (k = log2(levels) binary masks; mask j is bit j of the level index and etches max_height·2^j/levels):
  - etch-depth error: each mask's etch depth is off by an amount drawn uniformly from ±height_tolerance, the same
    over the whole element (one etch step), so every level is off by the sum over its masks;
  - misalignment: every mask after the first (which defines the frame) is shifted by a vector of length
    `misalignment` in a uniformly random direction; sub-pixel shifts by linear interpolation, i.e. a shifted
    edge leaves a pixel partly etched, at the area-weighted mean height;
  - feature rounding: each mask is low-passed by a Gaussian of σ = min_feature/4 before it is applied.
* grayscale and two_photon (one exposure): per-pixel height error drawn uniformly from ±height_tolerance, and
  feature rounding as a Gaussian low-pass of σ = min_feature/4 on the height map; a refractive or hybrid sag
  (`wrap` False: quantized over [0, max_height] without wrapping) is also scaled by 1 + ε, ε drawn uniformly
  from ±sag_error (form error).

Errors that are zero or not given are not applied, and with none at all the as-built map equals the quantized
map exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from lensdesign.fabrication.quantize import level_index, level_step, quantize
from lensdesign.spec import Spec


@dataclass(frozen=True)
class FabricationErrors:
    """The error budget of one fabrication process (lengths in metres; 0 = not applied)."""

    process: str
    levels: int
    max_height: float
    pitch: float
    height_tolerance: float = 0.0
    misalignment: float = 0.0
    min_feature: float = 0.0
    sag_error: float = 0.0
    wrap: bool = True

    @classmethod
    def from_spec(cls, spec: Spec, max_height: float | None = None, levels: int | None = None,
                  pitch: float | None = None) -> FabricationErrors:
        f = spec.fabrication
        return cls(process=f.process, levels=int(levels if levels is not None else f.levels),
                   max_height=float(max_height if max_height is not None else spec.max_height_m),
                   pitch=float(pitch if pitch is not None else spec.optics.pitch),
                   height_tolerance=float(f.height_tolerance or 0.0),
                   misalignment=float(f.misalignment or 0.0) if f.process == "multilevel" else 0.0,
                   min_feature=float(f.min_feature or 0.0), sag_error=float(f.sag_error or 0.0),
                   wrap=spec.optics.element == "diffractive")

    @property
    def rounding_sigma_px(self) -> float:
        """σ of the feature-rounding low-pass, in pixels: min_feature / 4 / pitch."""
        return self.min_feature / 4.0 / self.pitch

    @property
    def masks(self) -> int:
        """Number of binary masks of a multilevel process (0 otherwise)."""
        return round(math.log2(self.levels)) if self.process == "multilevel" else 0

    @property
    def is_zero(self) -> bool:
        return (self.height_tolerance == 0 and self.misalignment == 0 and self.min_feature == 0
                and self.sag_error == 0)

    def describe(self) -> str:
        """One line for the report, in nm / µm."""
        parts = [f"{self.process}, {self.levels} levels"]
        if self.height_tolerance:
            kind = "per mask" if self.process == "multilevel" else "per pixel"
            parts.append(f"etch-depth error ±{self.height_tolerance * 1e9:.3g} nm ({kind}, uniform)")
        if self.misalignment:
            parts.append(f"mask misalignment {self.misalignment * 1e9:.3g} nm (random direction)")
        if self.sag_error:
            parts.append(f"sag form error ±{self.sag_error * 100:.3g} % (scale, uniform)")
        if self.min_feature:
            parts.append(f"edge rounding σ = min_feature/4 = {self.min_feature / 4 * 1e6:.3g} µm")
        if self.is_zero:
            parts.append("no error sources given in spec.fabrication (height_tolerance, misalignment, min_feature)")
        return "; ".join(parts)


def binary_masks(level: np.ndarray, levels: int) -> list[np.ndarray]:
    """Binary masks (float64 0/1) of a level-index map: mask j = bit j, etching max_height·2^j/levels."""
    k = round(math.log2(levels))
    if 2**k != levels:
        raise ValueError("binary masks need a power-of-two number of levels")
    return [((level >> j) & 1).astype(np.float64) for j in range(k)]


def shift_mask(mask: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Mask shifted by (dy, dx) pixels; fractional shifts interpolate linearly (area-weighted edges)."""
    if shift_px == (0.0, 0.0):
        return mask
    return ndimage.shift(mask, shift_px, order=1, mode="nearest")


def round_features(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of σ pixels (feature rounding); identity for σ = 0."""
    if sigma_px <= 0:
        return x
    return ndimage.gaussian_filter(x, sigma_px, mode="nearest")


def as_built_height(height: np.ndarray, errors: FabricationErrors, rng: np.random.Generator) -> np.ndarray:
    """One as-built realisation (N, N) float64 (m) of the design `height` (m), quantized and then perturbed.

    Draws from `rng` in a fixed order, so one seed gives one element. With no error sources the result is
    `quantize(height, max_height, levels)` exactly.
    """
    e = errors
    if e.process == "multilevel":
        q = level_index(np.asarray(height, dtype=np.float64), e.max_height, e.levels)
        masks = binary_masks(q, e.levels)
        step = level_step(e.max_height, e.levels)
        depth_err = (rng.uniform(-1.0, 1.0, size=len(masks)) * e.height_tolerance if e.height_tolerance
                     else np.zeros(len(masks)))
        angles = rng.uniform(0.0, 2 * math.pi, size=len(masks))
        steps = np.zeros_like(masks[0])
        extra = np.zeros_like(masks[0])
        for j, mk in enumerate(masks):
            if j > 0 and e.misalignment:
                r = e.misalignment / e.pitch
                mk = shift_mask(mk, (r * math.sin(angles[j]), r * math.cos(angles[j])))
            mk = round_features(mk, e.rounding_sigma_px)
            steps = steps + float(2**j) * mk
            if depth_err[j]:
                extra = extra + depth_err[j] * mk
        return steps * step + extra
    hq = np.asarray(quantize(np.asarray(height, dtype=np.float64), e.max_height, e.levels, e.wrap), dtype=np.float64)
    if e.sag_error and not e.wrap:
        hq = hq * (1.0 + rng.uniform(-1.0, 1.0) * e.sag_error)
    if e.height_tolerance:
        hq = hq + rng.uniform(-1.0, 1.0, size=hq.shape) * e.height_tolerance
    return round_features(hq, e.rounding_sigma_px)


def monte_carlo(height: np.ndarray, errors: FabricationErrors, samples: int, seed: int,
                evaluate: Callable[[np.ndarray], dict[str, Any]],
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate `samples` as-built elements drawn with `seed`; returns `evaluate(as_built_height)` per sample.

    The same seed gives the same elements (and, for a deterministic `evaluate`, the same numbers).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(samples):
        out.append(evaluate(as_built_height(height, errors, rng)))
        if progress is not None:
            progress(i + 1)
    return out

"""Reference designs an engineer would otherwise use: a Fresnel lens and a cubic phase plate (heights in m)."""

from __future__ import annotations

import math

import torch

from lensdesign.errors import SpecError
from lensdesign.optics.psf import coords
from lensdesign.spec import Spec


def focal_length(spec: Spec, focus_depth: float | None = None) -> float:
    """Focal length (m) that images `focus_depth` (default the spec's focus depth) onto the sensor."""
    z = spec.focus_depth_m if focus_depth is None else focus_depth
    v = (0.0 if math.isinf(z) else 1.0 / z) + 1.0 / spec.optics.sensor_distance
    return 1.0 / v


def wave_height(spec: Spec) -> float:
    """Height of one 2π wave at the design wavelength (m)."""
    return spec.design_wavelength_m / (spec.design_index - 1.0)


def require_one_wave(spec: Spec) -> None:
    """Raise a one-line SpecError when `optics.max_height` is below one wave at the design wavelength, the depth a
    wrapped Fresnel lens (every diffractive design's start and the reference lenses) needs."""
    hw = wave_height(spec)
    if spec.max_height_m < hw * (1 - 1e-6):
        raise SpecError(f"optics.max_height: {spec.max_height_m * 1e6:.6g} um is below one wave ({hw * 1e6:.6g} um "
                        f"at the design wavelength {spec.design_wavelength_m * 1e9:.4g} nm), which a diffractive "
                        "relief and its Fresnel start need; use 'auto' or at least that height")


def phase_to_height(phase: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Wrap a design-wavelength phase (rad) into heights in [0, one wave) (m)."""
    require_one_wave(spec)
    return torch.remainder(phase / (2 * math.pi), 1.0) * wave_height(spec)


def lens_phase(spec: Spec, n: int, focus_depth: float | None = None) -> torch.Tensor:
    """Paraxial lens phase −k r²/(2f) at the design wavelength (rad), (n, n) float64."""
    y, x = coords(n, spec.optics.pitch)
    k = 2 * math.pi / spec.design_wavelength_m
    return -k * (x**2 + y**2) / (2 * focal_length(spec, focus_depth))


def fresnel_height(spec: Spec, n: int, focus_depth: float | None = None, wrapped: bool = True) -> torch.Tensor:
    """Fresnel lens for the design wavelength focused at the focus depth, (n, n) float64 heights (m).

    `wrapped=False` gives the unwrapped (refractive-equivalent) profile, offset to be non-negative.
    """
    ph = lens_phase(spec, n, focus_depth)
    if wrapped:
        return phase_to_height(ph, spec)
    hw = wave_height(spec)
    h = ph / (2 * math.pi) * hw
    return h - h.min()


def cubic_height(spec: Spec, n: int, strength_waves: float, focus_depth: float | None = None) -> torch.Tensor:
    """Cubic phase plate α(x̂³ + ŷ³) (α in waves, x̂ = x/R) on top of the Fresnel lens, (n, n) heights (m)."""
    y, x = coords(n, spec.optics.pitch)
    r = spec.optics.aperture / 2
    cubic = 2 * math.pi * strength_waves * ((x / r) ** 3 + (y / r) ** 3)
    return phase_to_height(lens_phase(spec, n, focus_depth) + cubic, spec)


def default_cubic_strength(spec: Spec) -> float:
    """A starting cubic strength (waves): about 2.5× the largest defocus W020 over the depth range, ≥ 5 waves."""
    from lensdesign.units import defocus_waves

    return max(5.0, 2.5 * defocus_waves(spec))

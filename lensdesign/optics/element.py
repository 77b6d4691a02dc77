"""Element kinds (`optics.element`): what the height map is and how it is limited, sampled and built.

* diffractive: a relief wrapped modulo `max_height` (one 2π wave at the design wavelength for `auto`); phase
  2π(n(λ) − 1)h/λ, so its focal length scales like 1/λ (strong dispersion).
* refractive: an unwrapped sag h ∈ [0, max_height], the same phase law with the material's n(λ): its focal
  length f(λ) = R / (n(λ) − 1) follows the lensmaker's formula (weak dispersion). Step sizes of the optimizer
  are in waves of phase at the design wavelength (`unit` = λ/(n − 1)). A sag must be sampled by the element
  grid: its local phase gradient may not exceed π per sample at any wavelength (`check_max_height`).
* hybrid: the spec's focusing lens as a fixed refractive base (thin-lens sag, `thin_lens_sag`) plus a
  diffractive relief of one wave optimized on top; built as one continuous sag.

Refractive and hybrid elements are made by continuous processes (grayscale lithography, two-photon printing,
diamond turning): `fabrication.levels` grey / print steps over the whole sag without wrapping, a relative form
error `fabrication.sag_error` and the per-sample `height_tolerance`. Lengths in metres.
"""

from __future__ import annotations

import torch

from lensdesign.baselines import focal_length, require_one_wave
from lensdesign.errors import SpecError
from lensdesign.optics.surfaces import HybridSurface, Surface, make_surface
from lensdesign.spec import Spec


def is_wrapped(element: str) -> bool:
    """Whether heights of this element kind wrap modulo max_height (a diffractive relief)."""
    return element == "diffractive"


def focus_lens_sag_m(spec: Spec) -> float:
    """Centre sag (m) of the thin plano-convex lens of the spec's focal length at the design wavelength:
    R² / (2 f (n − 1)) with R the aperture radius."""
    r = spec.optics.aperture / 2
    return r * r / (2.0 * focal_length(spec) * (spec.design_index - 1.0))


def thin_lens_sag(n: int, pitch: float, aperture: float, focal_length: float, index: float) -> torch.Tensor:
    """Sag (N, N) float64 (m) of a thin lens of `focal_length` (m) for refractive index `index`:
    (R² − r²) / (2 f (n − 1)) inside the aperture radius R, 0 outside (paraxial lensmaker's formula)."""
    x = (torch.arange(n, dtype=torch.float64) - n // 2) * pitch
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    return torch.clamp((aperture / 2) ** 2 - r2, min=0.0) / (2.0 * focal_length * (index - 1.0))


def base_sag(spec: Spec, n: int) -> torch.Tensor:
    """The hybrid element's refractive base: the spec's focusing lens as a thin-lens sag (N, N) float64 (m)."""
    o = spec.optics
    return thin_lens_sag(n, o.pitch, o.aperture, focal_length(spec), spec.design_index)


def max_sag_sampled(spec: Spec, pitch: float | None = None) -> float:
    """Largest sag (m) the element grid samples: a paraboloid of that depth over the aperture radius R has slope
    2H/R at its rim, and its phase may change by at most π per sample at every wavelength:
    H ≤ min_λ λ R / (4 (n(λ) − 1) pitch)."""
    p = spec.optics.pitch if pitch is None else pitch
    r = spec.optics.aperture / 2
    return min(w * r / (4.0 * (nw - 1.0) * p) for w, nw in zip(spec.wavelengths, spec.refractive_indices, strict=True))


def check_max_height(spec: Spec) -> None:
    """Raise a one-line SpecError when `optics.max_height` cannot be made or simulated: a diffractive relief
    shallower than one wave at the design wavelength (the Fresnel lens every design starts from, and the
    reference lenses, need a full wave), or a refractive sag (the base lens of a hybrid) too deep for the pitch."""
    if spec.optics.element == "diffractive":
        require_one_wave(spec)
        return
    sag = spec.max_height_m - (spec.wave_height_m if spec.optics.element == "hybrid" else 0.0)
    limit = max_sag_sampled(spec)
    if sag > limit * (1 + 1e-9):
        pitch = spec.optics.pitch * limit / sag
        raise SpecError(f"optics.max_height: a {spec.optics.element} sag of {sag * 1e6:.4g} um over the "
                        f"{spec.optics.aperture * 1e3:.4g} mm aperture changes the phase by more than π per "
                        f"{spec.optics.pitch * 1e6:.4g} um sample at its rim; lower optics.max_height to at most "
                        f"{limit * 1e6:.4g} um or optics.pitch to at most {pitch * 1e6:.4g} um")


def make_element_surface(spec: Spec, n: int) -> Surface:
    """The trainable surface of `optics.element` with `optics.parameterization` on an n × n grid."""
    o = spec.optics

    def build(max_height: float) -> Surface:
        return make_surface(o.parameterization, n, o.pitch, max_height, spec.fabrication.min_feature, o.aperture,
                            spec.zernike_term_count, o.fourier_fraction)

    if o.element == "diffractive":
        return build(spec.max_height_m)
    if o.element == "refractive":
        s = build(spec.max_height_m)
        s.unit, s.wrapped = spec.wave_height_m, False
        return s
    return HybridSurface(build(spec.wave_height_m), base_sag(spec, n), spec.max_height_m)

"""The 1-D (Hankel) path against optics formulas, an independent Hankel transform and the 2-D path."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import special
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq

from lensdesign.errors import LensdesignError
from lensdesign.fabrication.quantize import quantize
from lensdesign.optics.hankel import (
    FORMS,
    RadialSystem,
    asm_transfer_radial,
    choose_radial_propagator,
    fresnel_chirp_phase,
    fresnel_hankel_kernel,
    hankel_kernel,
    lens_profile,
    profile_from_height,
    render_rings,
    ring_count,
    ring_quadrature,
    series_kernel,
    spectral_nodes,
)
from lensdesign.optics.propagation import PropagatorChoice
from lensdesign.optics.psf import OpticalSystem, plan_grid
from lensdesign.optics.surfaces import RadialSurface
from lensdesign.spec import parse_spec

WL = 550e-9
D = 0.5e-3
Z = 10e-3


def radial_spec(pitch: float = 2e-6, pixel: float = 6e-6, psf_size: int = 31, wavelengths: list | None = None,
                depths: list | None = None, min_feature: float = 12e-6, propagator: str = "auto", padding: float = 1.5,
                aperture: float = D, z: float = Z):
    return parse_spec({
        "optics": {"aperture": aperture, "sensor_distance": z, "pitch": pitch, "padding": padding,
                   "parameterization": "radial", "propagator": propagator},
        "wavelengths": wavelengths or [WL],
        "scene": {"depths": depths or ["inf"]},
        "sensor": {"pixel_pitch": pixel, "psf_size": psf_size},
        "fabrication": {"min_feature": min_feature},
    })


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Relative L2 difference per PSF of two (D, W, P, P) stacks, against `b`."""
    a, b = a.double().flatten(2), b.double().flatten(2)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).numpy()


@pytest.fixture(scope="module")
def focused() -> tuple[RadialSystem, torch.Tensor]:
    """An in-focus lens of narrow rings (0.25 um: at most 0.07 rad of phase step per ring) seen on 2 um pixels."""
    spec = radial_spec(pitch=0.25e-6, pixel=2e-6, psf_size=601, min_feature=0.25e-6, padding=4.0)
    system = RadialSystem(spec)
    return system, lens_profile(spec, system.rings, system.ring_width, math.inf).float()


def test_airy_first_zero(focused) -> None:
    """First dark ring of the in-focus lens at 1.22 λ f / D within 1 % (sign change of the field's amplitude)."""
    system, profile = focused
    with torch.no_grad():
        u = system.field(profile, math.inf, 0).to(torch.complex128).numpy()
    amp = (u * np.conj(u[0])).real / abs(u[0])  # signed: the in-focus field has one phase across the pattern
    rho = system.radii(0)
    expected = 1.22 * WL * Z / D
    spline = CubicSpline(rho, amp)
    k = int(np.flatnonzero(amp < 0)[0])
    zero = brentq(spline, rho[k - 1], rho[k])
    assert abs(zero - expected) / expected < 0.01, (zero, expected)
    assert abs(amp[k]) < 0.2 * amp[0]


def test_mtf_matches_diffraction_limit(focused) -> None:
    """The pixel-integrated PSF's MTF, divided by the pixel's sinc, within 0.01 of (2/π)(acos ν − ν√(1 − ν²))."""
    system, profile = focused
    with torch.no_grad():
        psf = system.psf(profile)[0, 0].double().numpy()
    pitch = system.grid.sensor_pitch
    otf = np.abs(np.fft.fft2(np.fft.ifftshift(psf)))
    otf /= otf[0, 0]
    f = np.fft.fftfreq(psf.shape[0], d=pitch)
    nu = f / (D / (WL * Z))
    sel = (nu >= 0) & (nu <= 0.8)
    expected = 2 / np.pi * (np.arccos(nu[sel]) - nu[sel] * np.sqrt(1 - nu[sel] ** 2))
    pixel = np.sinc(f[sel] * pitch)
    for cut in (otf[0, sel], otf[sel, 0]):
        assert np.max(np.abs(cut / pixel - expected)) < 0.01
    i = np.argmin(np.abs(nu - 0.5))  # not trivially flat: 0.39 at half the cutoff
    assert abs(otf[0, i] / np.sinc(f[i] * pitch) - 0.391) < 0.01


def test_energy_in_window_matches_airy_integral(focused) -> None:
    """Power in the window equals the Airy pattern integrated over that square within 1e-3 (light outside is lost),
    and the radial intensity holds 1 − J0² − J1² of the power inside each radius."""
    system, profile = focused
    with torch.no_grad():
        psf = system.psf(profile)[0, 0].double().numpy()
        i_rho = system.field(profile, math.inf, 0).abs().double().numpy() ** 2
    half = psf.shape[0] * system.grid.sensor_pitch / 2
    # Airy intensity over the square window: midpoints of a 0.25 um grid in one quadrant (the pattern is symmetric)
    x = (np.arange(round(half / 0.25e-6)) + 0.5) * 0.25e-6
    v = 2 * np.pi / WL * (D / 2) * np.hypot(x[:, None], x[None, :]) / Z
    airy = (2 * special.j1(v) / v) ** 2 * (np.pi * (D / 2) ** 2 / (WL * Z) ** 2)  # I(0) = area / (λz)² for unit power
    expected = 4 * airy.sum() * 0.25e-6**2
    assert 0.99 < expected < 0.999  # the window holds the pattern but not every tail
    assert abs(psf.sum() - expected) < 1e-3, (psf.sum(), expected)
    rho = system.radii(0)
    ee = CubicSpline(rho, i_rho * 2 * np.pi * rho).antiderivative()
    for r in (1.22 * WL * Z / D, 5e-5, 2e-4):
        v = 2 * np.pi / WL * (D / 2) * r / Z
        assert abs(ee(r) - (1 - special.j0(v) ** 2 - special.j1(v) ** 2)) < 1e-3


def test_gradient_matches_float64_finite_differences() -> None:
    """float32 autograd gradient of a weighted PSF sum against central differences of the float64 path (< 1e-3)."""
    spec = radial_spec(wavelengths=[460e-9, 640e-9], depths=[0.1, math.inf], min_feature=8e-6)
    s32, s64 = RadialSystem(spec), RadialSystem(spec, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    profile = torch.rand(s32.rings, generator=gen, dtype=torch.float64) * spec.max_height_m
    weight = torch.rand(s32.shape, generator=gen, dtype=torch.float64)
    p = profile.float().requires_grad_()
    (s32.psf(p) * weight.float()).sum().backward()
    step = 1e-10
    for j in (0, 5, 17, 30):
        e = torch.zeros_like(profile)
        e[j] = step
        fd = ((s64.psf(profile + e) * weight).sum() - (s64.psf(profile - e) * weight).sum()).item() / (2 * step)
        assert abs(p.grad[j].item() - fd) < 1e-3 * abs(fd), (j, p.grad[j].item(), fd)
    assert p.grad[s32.rings - 1].item() == 0.0  # a ring outside the aperture does nothing


@pytest.mark.parametrize("form", FORMS)
def test_field_agrees_with_pyhank(form: str) -> None:
    """A Gaussian beam (waist 20 um, 4 Rayleigh ranges) propagated by the module's ring quadrature and kernels
    against pyhank's quasi-discrete Hankel transform (an independent implementation) on 2000 nodes."""
    pyhank = pytest.importorskip("pyhank")
    w0, a, z, f_max = 20e-6, 0.25e-3, 10e-3, 2e5
    quad = ring_quadrature(2e-6, a, lambda r: 2 * np.pi * f_max + 2 * np.pi * r / (WL * z))
    gauss = np.exp(-((quad.r / w0) ** 2))
    rho = np.linspace(0.0, 0.2e-3, 201)
    if form == "fresnel":
        chirp = np.exp(1j * fresnel_chirp_phase(quad.r, WL, z)) / (WL * z)
        u = (gauss * chirp) @ fresnel_hankel_kernel(quad.r, quad.weight, rho, WL, z)
        u = u * np.exp(1j * fresnel_chirp_phase(rho, WL, z)) / 1j  # the phase factors the PSF drops
    else:
        nodes = spectral_nodes(1e-3, f_max)
        spectrum = gauss @ hankel_kernel(quad.r, quad.weight, nodes.f)
        u = (spectrum * asm_transfer_radial(nodes.f, WL, z, f_max)) @ series_kernel(nodes, rho)
    ht = pyhank.HankelTransform(order=0, max_radius=1e-3, n_points=2000)
    kz = np.sqrt(np.clip((2 * np.pi / WL) ** 2 - ht.kr**2, 0, None))
    if form == "fresnel":
        kz = 2 * np.pi / WL - ht.kr**2 / (2 * 2 * np.pi / WL)  # paraxial
    uz = ht.iqdht(ht.qdht(np.exp(-((ht.r / w0) ** 2))) * np.exp(1j * (kz - 2 * np.pi / WL) * z))
    ref = np.interp(rho, ht.r, uz.real) + 1j * np.interp(rho, ht.r, uz.imag)
    assert np.abs(ref[-1]) < 0.05 * np.abs(ref[0]) and np.abs(ref[0]) < 0.3  # the beam spread: a real propagation
    err = np.linalg.norm(u - ref) / np.linalg.norm(ref)
    assert err < 1e-3, err


def _two_d(spec_kwargs: dict, profile: torch.Tensor, width: float, steps: int) -> torch.Tensor:
    spec = radial_spec(pitch=6e-6 / steps, **spec_kwargs)
    system = OpticalSystem(spec)
    with torch.no_grad():
        return system.psf(render_rings(profile, system.grid.n, system.grid.dx, width).float())


@pytest.mark.parametrize("design", ["fresnel", "random", "quantized16"])
def test_agrees_with_converged_2d_path(design: str) -> None:
    """The same ring design through the 2-D path at 6/11 um and 6/23 um pitch (converged: the two differ by
    < 0.5 %) and through the 1-D path at 2 um: within 1 % relative L2 (one PSF each, a different depth and
    wavelength per design)."""
    case = {"fresnel": ([550e-9], [0.1]), "random": ([460e-9], ["inf"]), "quantized16": ([640e-9], [0.2])}[design]
    kwargs = {"wavelengths": case[0], "depths": case[1]}
    spec = radial_spec(**kwargs)
    system = RadialSystem(spec)
    gen = torch.Generator().manual_seed(1)
    if design == "fresnel":
        profile = lens_profile(spec, system.rings, system.ring_width, 0.2)
    else:
        profile = torch.rand(system.rings, generator=gen, dtype=torch.float64) * spec.max_height_m
        if design == "quantized16":
            profile = torch.as_tensor(quantize(profile.numpy(), spec.max_height_m, 16))
    with torch.no_grad():
        one_d = system.psf(profile.float())
    coarse = _two_d(kwargs, profile, system.ring_width, 11)
    fine = _two_d(kwargs, profile, system.ring_width, 23)
    assert rel_l2(coarse, fine).max() < 0.005
    assert rel_l2(one_d, fine).max() < 0.01, rel_l2(one_d, fine)
    assert one_d.shape == fine.shape and one_d.dtype == torch.float32


def test_asm_form_agrees_with_2d_angular_spectrum() -> None:
    """With the angular spectrum asked for, both paths compute it and agree (a lens focusing 0.2 m, seen from 0.1 m)."""
    spec = radial_spec(propagator="asm", pitch=6e-6 / 11, wavelengths=[460e-9, 640e-9], depths=[0.1])
    system = RadialSystem(spec)
    two_d = OpticalSystem(spec)
    assert two_d.grid.choice.kind == "asm" and system.choice.kind == "asm"
    assert "angular spectrum" in system.choice.reason
    profile = lens_profile(spec, system.rings, system.ring_width, 0.2)
    with torch.no_grad():
        a = system.psf(profile.float())
        b = two_d.psf(render_rings(profile, two_d.grid.n, two_d.grid.dx, system.ring_width).float())
    assert rel_l2(a, b).max() < 0.01, rel_l2(a, b)


def test_auto_follows_the_2d_choice() -> None:
    """auto computes the physics the 2-D path would: Fresnel forms → Fresnel–Hankel, angular spectrum → asm."""
    grid = plan_grid(radial_spec())
    assert grid.choice.kind == "impulse"
    assert choose_radial_propagator(grid).kind == "fresnel"
    straddled = replace(grid, choice=PropagatorChoice("asm", "λz/L straddles dx"))
    choice = choose_radial_propagator(straddled)
    assert choice.kind == "asm" and "straddles" in choice.reason


def test_ring_profile_is_the_radial_surface() -> None:
    """Ring count and the rendered 2-D map are those of the radial parameterization."""
    spec = radial_spec()
    system = RadialSystem(spec)
    surf = RadialSurface(system.grid.n, spec.optics.pitch, spec.max_height_m, system.ring_width)
    assert surf.rings == system.rings == ring_count(system.grid.n, spec.optics.pitch, system.ring_width)
    with torch.no_grad():
        surf.param.copy_(torch.rand(surf.rings) * spec.max_height_m)
    rendered = render_rings(surf.param.data, system.grid.n, spec.optics.pitch, system.ring_width)
    assert torch.equal(rendered, surf.height().data)
    inside = math.ceil(D / 2 / system.ring_width)  # rings that reach the grid's axis row
    back = profile_from_height(rendered, spec.optics.pitch, system.ring_width, system.rings)
    assert torch.equal(back[:inside], surf.param.data[:inside])


def test_refuses_unknown_form_and_nearer_depths() -> None:
    spec = radial_spec(depths=[0.1, math.inf])
    with pytest.raises(LensdesignError, match="propagator"):
        RadialSystem(spec, form="impulse")
    system = RadialSystem(spec)
    with pytest.raises(LensdesignError, match="nearer"):
        system.psf(torch.zeros(system.rings), depths=[0.05])
    assert system.psf(torch.zeros(system.rings), depths=[0.2]).shape == (1, 1, 31, 31)

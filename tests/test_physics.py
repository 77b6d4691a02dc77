"""The physics core against optics formulas (not against itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensdesign.baselines import fresnel_height
from lensdesign.fabrication.quantize import quantize, staircase_efficiency
from lensdesign.materials import MATERIALS
from lensdesign.optics.propagation import asm_band_limit, choose_propagator, fft_size
from lensdesign.optics.psf import OpticalSystem
from lensdesign.optics.surfaces import make_surface
from lensdesign.spec import parse_spec

WL = 550e-9
D = 1e-3
Z = 20e-3
PITCH = 1e-6


def lens_spec(propagator: str = "auto", psf_size: int = 401, pitch: float = PITCH, padding: float = 2.0, z: float = Z,
              wavelengths: list | None = None, aperture: float = D):
    """Single-wavelength in-focus Fresnel lens, sensor sampled at the simulation pitch."""
    return parse_spec({
        "optics": {"aperture": aperture, "sensor_distance": z, "pitch": pitch, "padding": padding, "propagator": propagator},
        "wavelengths": wavelengths or [WL],
        "scene": {"depths": ["inf"]},
        "sensor": {"pixel_pitch": pitch, "psf_size": psf_size},
    })


def in_focus_psf(spec) -> np.ndarray:
    system = OpticalSystem(spec)
    h = fresnel_height(spec, system.grid.n, math.inf)
    with torch.no_grad():
        return system.psf(h.float())[0, 0].double().numpy()


@pytest.fixture(scope="module")
def airy() -> np.ndarray:
    return in_focus_psf(lens_spec())


def test_airy_first_zero(airy: np.ndarray) -> None:
    """First dark ring at 1.22 λ f / D within 2 % (parabolic fit of the minimum along both axes)."""
    c = airy.shape[0] // 2
    row = 0.5 * (airy[c, :] + airy[:, c])
    expected = 1.22 * WL * Z / D / PITCH  # pixels
    lo, hi = int(expected * 0.6), int(expected * 1.4)
    i = int(np.argmin(row[c + lo:c + hi])) + c + lo
    y0, y1, y2 = row[i - 1], row[i], row[i + 1]
    r = i - c + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    assert abs(r - expected) / expected < 0.02, (r, expected)
    assert row[i] < 0.02 * row[c]  # a real zero, not a shoulder


def dl_mtf(nu: np.ndarray) -> np.ndarray:
    nu = np.clip(nu, 0, 1)
    return 2 / np.pi * (np.arccos(nu) - nu * np.sqrt(1 - nu**2))


def test_mtf_matches_diffraction_limit(airy: np.ndarray) -> None:
    otf = np.abs(np.fft.fft2(np.fft.ifftshift(airy)))
    otf /= otf[0, 0]
    f = np.fft.fftfreq(airy.shape[0], d=PITCH)
    nu = f / (D / (WL * Z))
    sel = (nu >= 0) & (nu <= 0.8)
    for prof in (otf[0, sel], otf[sel, 0]):
        assert np.max(np.abs(prof - dl_mtf(nu[sel]))) < 0.02
    # and it is not trivially flat: MTF at half cutoff is the formula's 0.39
    i = np.argmin(np.abs(nu - 0.5))
    assert abs(otf[0, i] - dl_mtf(np.array([nu[i]]))[0]) < 0.02


def test_energy_conserved_when_window_holds_pattern() -> None:
    spec = lens_spec(psf_size=1999)  # the whole padded field
    p = in_focus_psf(spec)
    assert abs(p.sum() - 1.0) < 0.01


def test_encircled_energy_within_first_ring(airy: np.ndarray) -> None:
    """83.8 % of the Airy pattern's energy lies within the first dark ring (1 − J0² − J1² at v = 3.832)."""
    c = airy.shape[0] // 2
    yy, xx = np.indices(airy.shape)
    r = np.hypot(yy - c, xx - c) * PITCH
    ee = airy[r <= 1.22 * WL * Z / D].sum() / airy.sum()
    assert abs(ee - 0.838) < 0.01, ee


def test_light_leaving_window_is_lost(airy: np.ndarray) -> None:
    """A small window keeps only its share of the energy: no renormalization."""
    p = in_focus_psf(lens_spec(psf_size=9))
    c = airy.shape[0] // 2
    assert p.sum() < 0.5
    assert np.allclose(p, airy[c - 4:c + 5, c - 4:c + 5], rtol=1e-4, atol=1e-9)


def test_wrapped_lens_equals_unwrapped_at_design_wavelength() -> None:
    spec = lens_spec(psf_size=201)
    system = OpticalSystem(spec)
    n = system.grid.n
    hw = fresnel_height(spec, n, math.inf, wrapped=True)
    hu = fresnel_height(spec, n, math.inf, wrapped=False)
    assert float(hu.max()) > 10 * float(hw.max())  # genuinely different surfaces
    with torch.no_grad():
        pw = system.psf(hw.float())
        pu = system.psf(hu.float())
    assert torch.allclose(pw, pu, atol=1e-6 * float(pw.max()), rtol=1e-3)


def test_wrapped_lens_differs_off_design_wavelength() -> None:
    """The 2π wrap is only exact at the design wavelength: at 460 nm the two surfaces differ (chromatic)."""
    spec = lens_spec(psf_size=201, wavelengths=[460e-9, 550e-9, 640e-9])
    system = OpticalSystem(spec)
    n = system.grid.n
    with torch.no_grad():
        pw = system.psf(fresnel_height(spec, n, math.inf).float())
        pu = system.psf(fresnel_height(spec, n, math.inf, wrapped=False).float())
    assert torch.allclose(pw[0, 1], pu[0, 1], atol=1e-6 * float(pw.max()), rtol=1e-3)
    assert (pw[0, 0] - pu[0, 0]).abs().max() > 0.05 * pw[0, 0].max()


def _defocused_psf(propagator: str, padding: float) -> np.ndarray:
    # Short distance so the transfer function is well sampled (dx >= λz/L) with padding 4
    spec = lens_spec(propagator=propagator, psf_size=301, pitch=2e-6, padding=padding, z=5e-3, aperture=0.5e-3)
    system = OpticalSystem(spec)
    # a lens focused at 50 mm: defocused at 5 mm, a broad paraxial pattern
    y = (torch.arange(system.grid.n, dtype=torch.float64) - system.grid.n // 2) * 2e-6
    r2 = y[:, None] ** 2 + y[None, :] ** 2
    phase = -2 * math.pi / WL * r2 / (2 * 50e-3)
    h = torch.remainder(phase / (2 * math.pi), 1.0) * spec.max_height_m
    with torch.no_grad():
        return system.psf(h.float())[0, 0].double().numpy()


def test_transfer_function_agrees_with_angular_spectrum_paraxially() -> None:
    assert choose_propagator(2e-6, fft_size(1000) * 2e-6, [WL], 5e-3).kind == "transfer"
    a = _defocused_psf("transfer", 4.0)
    b = _defocused_psf("asm", 4.0)
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel < 0.03, rel
    assert np.linalg.norm(a - np.roll(b, 3, 0)) / np.linalg.norm(b) > 10 * rel  # the comparison can fail


def test_impulse_response_agrees_with_angular_spectrum() -> None:
    a = in_focus_psf(lens_spec("impulse", psf_size=201))
    b = in_focus_psf(lens_spec("asm", psf_size=201))
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.03


def test_seed_setup_chooses_impulse_response() -> None:
    """REFERENCE: at 2 µm and 1.5 N padding, λz/L = 2.18 / 2.61 / 3.03 µm > dx: the transfer function aliases."""
    wls = [460e-9, 550e-9, 640e-9]
    m = 2496 * 3 // 2
    ch = choose_propagator(2e-6, m * 2e-6, wls, 35.5e-3)
    assert ch.kind == "impulse"
    crit = [w * 35.5e-3 / (m * 2e-6) * 1e6 for w in wls]
    assert np.allclose(crit, [2.18, 2.61, 3.03], atol=0.01)
    # band limit of the angular spectrum on the seed grid: 228 / 191 / 164 cycles/mm
    lims = [asm_band_limit(m, 2e-6, w, 35.5e-3) / 1e3 for w in wls]
    assert np.allclose(lims, [228, 191, 164], atol=1.0)


def test_off_axis_depth_psf_is_broader() -> None:
    """A point at finite depth is defocused by a lens focused at infinity (spherical source wave)."""
    spec = parse_spec({
        "optics": {"aperture": D, "sensor_distance": Z, "pitch": 2e-6},
        "wavelengths": [WL], "scene": {"depths": [0.05, "inf"]},
        "sensor": {"pixel_pitch": 2e-6, "psf_size": 151},
    })
    system = OpticalSystem(spec)
    h = fresnel_height(spec, system.grid.n, math.inf)
    with torch.no_grad():
        p = system.psf(h.float())[:, 0]
    assert p[1].max() > 5 * p[0].max()
    # the geometric blur diameter D·z_s/z_o = 0.4 mm holds most of the defocused energy
    c = p.shape[-1] // 2
    yy, xx = np.indices(p.shape[-2:])
    inside = np.hypot(yy - c, xx - c) * 2e-6 <= 0.25e-3
    assert p[0].numpy()[inside].sum() > 0.9 * p[0].sum().item()


def test_fused_silica_matches_reference() -> None:
    n = [MATERIALS["fused_silica"](w) for w in (460e-9, 550e-9, 640e-9)]
    assert np.allclose(n, [1.4648, 1.4599, 1.4568], atol=1e-4)
    # one 2π wave at 550 nm: 1.196 µm
    assert abs(550e-9 / (n[1] - 1) - 1.196e-6) < 1e-9


@pytest.mark.parametrize("levels,expected", [(2, 0.405), (4, 0.811), (8, 0.950), (16, 0.987)])
def test_quantized_blaze_efficiency_is_sinc2(levels: int, expected: float) -> None:
    """The quantizer applied to a blazed grating: first-order power from an FFT equals sinc²(1/N)."""
    period, periods = 4096, 4
    x = np.arange(period * periods)
    h = (x % period) / period  # one wave per period (max_height = 1)
    hq = quantize(h, 1.0, levels)
    spectrum = np.abs(np.fft.fft(np.exp(2j * np.pi * hq))) ** 2 / len(x) ** 2
    first = spectrum[periods]  # +1 order
    assert abs(first - expected) < 0.002
    assert abs(staircase_efficiency(levels) - first) < 1e-3


@pytest.mark.parametrize("kind", ["pixel", "radial", "zernike", "fourier"])
def test_surfaces_stay_within_height_range(kind: str) -> None:
    s = make_surface(kind, 64, 2e-6, 1.2e-6, 8e-6, 128e-6, zernike_terms=10, fourier_fraction=0.5)
    with torch.no_grad():
        for p in s.parameters():
            p.normal_(0, 3e-6 if kind in ("pixel", "radial") else 3.0)
    h = s.height().detach()
    assert h.shape == (64, 64)
    assert float(h.min()) >= 0 and float(h.max()) < 1.2e-6
    assert float(h.std()) > 0.1e-6


def test_pixel_surface_respects_min_feature() -> None:
    s = make_surface("pixel", 64, 2e-6, 1.2e-6, 8e-6, 128e-6)
    with torch.no_grad():
        s.param.uniform_(0, 1.2e-6)
    h = s.height().detach().numpy()
    # every 4×4 block is constant: no feature below 8 µm
    blocks = h.reshape(16, 4, 16, 4)
    assert np.all(blocks.max(axis=(1, 3)) == blocks.min(axis=(1, 3)))
    assert len(np.unique(h)) > 100


def test_radial_surface_is_rotationally_symmetric() -> None:
    s = make_surface("radial", 64, 2e-6, 1.2e-6, 4e-6, 128e-6)
    with torch.no_grad():
        s.param.uniform_(0, 1.2e-6)
    h = s.height().detach().numpy()
    c = 32
    assert np.allclose(h[c, c + 10], h[c + 10, c]) and np.allclose(h[c, c - 10], h[c - 10, c])
    assert np.allclose(h, h.T)


def test_psf_gradient_matches_autograd_reference() -> None:
    """The hand-written adjoint equals autograd through a plain implementation, and finite differences."""
    spec = parse_spec({
        "optics": {"aperture": "64 um", "sensor_distance": "1 mm", "pitch": "2 um"},
        "wavelengths": ["460 nm", "640 nm"], "scene": {"depths": ["5 mm", "inf"]},
        "sensor": {"pixel_pitch": "4 um", "psf_size": 9},
    })
    system = OpticalSystem(spec)
    g = system.grid
    torch.manual_seed(0)
    h = (torch.rand(g.n, g.n) * 1e-6).requires_grad_()
    w = torch.randn(system.shape)
    (system.psf(h) * w).sum().backward()
    # reference: plain autograd (lensdesign.optics.forward.psf_reference)
    h2 = h.detach().clone().requires_grad_()
    p = system.psf_reference(h2)
    assert torch.allclose(p, system.psf(h.detach()), atol=1e-9)
    (p * w).sum().backward()
    assert (h2.grad - h.grad).norm() / h.grad.norm() < 1e-5

    # finite differences (float64, through the plain implementation the adjoint was just checked against)
    def loss(x: torch.Tensor) -> torch.Tensor:
        return (system.psf_reference(x) * w.double()).sum()

    d = torch.randn(g.n, g.n, dtype=torch.float64) * 1e-10
    x0 = h.detach().double()
    fd = (loss(x0 + d) - loss(x0 - d)) / 2
    an = (h.grad.double() * d).sum()
    assert abs(fd - an) / abs(an) < 1e-3, (fd, an)


def test_psf_workspaces_reused_between_calls_give_fresh_results() -> None:
    """The zero-padded buffers kept between calls hold no trace of earlier PSFs or gradients.

    The PSF window (42 fine pixels) is larger than the element (32), so a gradient left in a buffer that the
    forward pass reuses would reach the next PSF.
    """
    spec = parse_spec({
        "optics": {"aperture": "64 um", "sensor_distance": "1 mm", "pitch": "2 um"},
        "wavelengths": ["460 nm", "640 nm"], "scene": {"depths": ["5 mm", "inf"]},
        "sensor": {"pixel_pitch": "4 um", "psf_size": 21},
    })
    torch.manual_seed(1)
    reused = OpticalSystem(spec)
    g = reused.grid
    assert g.window_fine > g.n
    heights = [torch.rand(g.n, g.n) * 1e-6 for _ in range(2)]
    weights = [torch.randn(reused.shape) for _ in range(2)]

    def run(system: OpticalSystem, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = h.clone().requires_grad_()
        p = system.psf(x)
        (p * w).sum().backward()
        return p.detach(), x.grad

    run(reused, heights[0], weights[0])  # leaves the first PSF and gradient in the workspaces
    p_reused, g_reused = run(reused, heights[1], weights[1])
    p_fresh, g_fresh = run(OpticalSystem(spec), heights[1], weights[1])
    assert torch.equal(p_reused, p_fresh) and torch.equal(g_reused, g_fresh)

"""Analysis metrics against closed-form optics: diffraction-limited MTF, Airy FWHM / encircled energy, Strehl of
a defocused pupil. References are the formulas (and REFERENCE.md numbers), never the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensdesign.analysis import metrics as M
from lensdesign.analysis.psfs import FieldAnalyzer, radial_mtf
from lensdesign.baselines import cubic_height, fresnel_height
from lensdesign.optics.psf import OpticalSystem
from lensdesign.spec import parse_spec

SINGLE = {
    "name": "single",
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um"},
    "wavelengths": ["550 nm"],
    "scene": {"depths": ["1 m"], "focus_depth": "1 m"},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32]},
}


def formula_mtf(nu: np.ndarray) -> np.ndarray:
    """(2/π)(acos ν − ν√(1−ν²)), written out here independently of the module."""
    nu = np.clip(nu, 0, 1)
    return 2 / np.pi * (np.arccos(nu) - nu * np.sqrt(1 - nu * nu))


@pytest.fixture(scope="module")
def single():
    spec = parse_spec(SINGLE)
    fa = FieldAnalyzer(spec)
    h = torch.as_tensor(fresnel_height(spec, fa.n).numpy(), dtype=torch.float32)
    return spec, fa, h


def test_reference_numbers_from_reference_md():
    # MTF at 125 cycles/mm for f_c = 306 / 256 / 220 cycles/mm: 0.495 / 0.404 / 0.318
    for fc, want in ((306.0, 0.495), (256.0, 0.404), (220.0, 0.318)):
        assert M.diffraction_limited_mtf(125.0 / fc) == pytest.approx(want, abs=0.003)
    assert M.diffraction_limited_mtf(0.0) == pytest.approx(1.0)
    assert M.diffraction_limited_mtf(1.0) == pytest.approx(0.0, abs=1e-12)
    # Airy first zero 1.22 λ z / D for the seed (5 mm, 35.5 mm): 3.98 / 4.76 / 5.54 µm
    for lam, want in ((460e-9, 3.98e-6), (550e-9, 4.76e-6), (640e-9, 5.54e-6)):
        assert M.airy_first_zero(lam, 35.5 / 5) == pytest.approx(want, rel=3e-3)
    assert M.airy_fwhm(550e-9, 7.1) == pytest.approx(1.029 * 550e-9 * 7.1, rel=1e-3)
    r80 = M.airy_ee_radius(0.8, 550e-9, 7.1)
    assert float(M.airy_encircled_energy(r80, 550e-9, 7.1)) == pytest.approx(0.8, abs=1e-9)
    assert M.airy_first_zero(550e-9, 7.1) > r80 > M.airy_fwhm(550e-9, 7.1) / 2


def test_in_focus_fresnel_is_diffraction_limited(single):
    _spec, fa, h = single
    su = fa.spectrum(h, 1.0)
    peaks, _ = fa.refined_peaks(su, fa.coarse_intensity(su))
    assert peaks[0] / fa.reference_peaks()[0] == pytest.approx(1.0, abs=0.02)
    fc = 0.5e-3 / (550e-9 * 10e-3)
    for u in (1, 2):
        rm = radial_mtf(fa.fine_intensity(su, u), fa.dx / u, 1.05 * fc)
        sel = rm.freq <= 0.8 * fc
        assert sel.sum() > 50
        err = np.abs(rm.mean[0, sel] - formula_mtf(rm.freq[sel] / fc))
        assert err.max() < 0.02, f"oversample {u}: max MTF error {err.max():.4f}"
        assert rm.asymmetry(0.9 * fc) < 0.05
    fine = fa.fine_intensity(su, 2)[0].double().numpy()
    n_f = 10e-3 / 0.5e-3
    assert M.fwhm(fine, fa.dx / 2) == pytest.approx(1.029 * 550e-9 * n_f, rel=0.02)
    assert M.ee_radius(fine, fa.dx / 2, 0.8) == pytest.approx(M.airy_ee_radius(0.8, 550e-9, n_f), rel=0.02)


@pytest.mark.parametrize("depth", [0.2, 0.1])
def test_defocus_strehl_is_sinc_squared(single, depth):
    """A lens focused at 1 m seen from `depth`: defocus W020 = (D/2)²·|1/z − 1|/2, Strehl = sinc²(W020/λ)."""
    _spec, fa, h = single
    w020 = (0.25e-3) ** 2 * abs(1 / depth - 1.0) / 2 / 550e-9
    s = fa.strehl(h, [depth])[0, 0]
    want = float(np.sinc(w020) ** 2)
    assert want < 0.9
    assert s == pytest.approx(want, abs=0.01)


def test_refined_peak_finds_a_peak_between_samples(single):
    """Tilt the focus by half a sample: the sampled maximum drops, the refined peak keeps Strehl ≈ 1."""
    spec, fa, _ = single
    dx, lam, z = fa.dx, 550e-9, 10e-3
    shift = 0.5 * dx
    x = (torch.arange(fa.n, dtype=torch.float64) - fa.n // 2) * dx
    ph = (-2 * math.pi / lam * (x[None, :] ** 2 + x[:, None] ** 2) / (2 * (1 / (1 / 1.0 + 1 / z)))
          + 2 * math.pi * shift / (lam * z) * (x[None, :] + x[:, None]))
    hw = lam / (spec.design_index - 1)
    h = (torch.remainder(ph / (2 * math.pi), 1.0) * hw).float()
    su = fa.spectrum(h, 1.0)
    co = fa.coarse_intensity(su)
    peaks, _ = fa.refined_peaks(su, co)
    ref = fa.reference_peaks()[0]
    assert float(co.max()) / ref < 0.9
    assert peaks[0] / ref == pytest.approx(1.0, abs=0.02)


def test_fine_intensity_agrees_with_training_psf_and_keeps_energy(single):
    spec, fa, h = single
    system = OpticalSystem(spec, psf_size=41, bin_override=1)
    p_train = system.psf(h)[0, 0].numpy()
    su = fa.spectrum(h, 1.0)
    p1 = fa.fine_intensity(su, 1)[0].numpy()
    c = fa.m // 2
    assert np.abs(p1[c - 20:c + 21, c - 20:c + 21] - p_train).max() < 1e-6 * p_train.max() + 1e-9
    p3 = fa.fine_intensity(su, 3)[0].double()
    assert float(p3.sum()) == pytest.approx(float(p1.sum()), rel=1e-4)
    assert 0.99 < float(p1.sum()) <= 1.0 + 1e-6
    assert int(p3.argmax()) == (3 * fa.m // 2) * (3 * fa.m) + 3 * fa.m // 2  # the axis is the centre sample


def test_cubic_mtf_is_flagged_not_rotationally_symmetric():
    spec = parse_spec({**SINGLE, "wavelengths": ["550 nm"]})
    fa = FieldAnalyzer(spec)
    h = torch.as_tensor(cubic_height(spec, fa.n, 4.0).numpy(), dtype=torch.float32)
    fc = 0.5e-3 / (550e-9 * 10e-3)
    rm = radial_mtf(fa.fine_intensity(fa.spectrum(h, 1.0), 1), fa.dx, 1.05 * fc)
    assert rm.asymmetry(0.9 * fc) > 0.1


def test_numpy_radial_mtf_of_a_gaussian():
    """MTF of a Gaussian PSF of σ samples is exp(−2π²σ²f²) (f in cycles/sample)."""
    k, sigma, pitch = 129, 3.0, 1e-6
    y = np.arange(k) - k // 2
    g = np.exp(-(y[:, None] ** 2 + y[None, :] ** 2) / (2 * sigma**2))
    f, m = M.radial_mtf(g, pitch)
    want = np.exp(-2 * np.pi**2 * sigma**2 * (f * pitch) ** 2)
    assert np.abs(m - want).max() < 0.01
    assert M.fwhm(g, pitch) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma * pitch, rel=0.01)
    # EE of a Gaussian: 1 − exp(−r²/2σ²) = 0.8 at r = σ√(2 ln 5)
    assert M.ee_radius(g, pitch, 0.8) == pytest.approx(sigma * math.sqrt(2 * math.log(5)) * pitch, rel=0.02)

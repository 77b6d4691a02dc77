"""The report's field analysis of broadband channels: polychromatic PSFs (the weighted sum of the sampled
wavelengths' PSFs), their Strehl ratio against the formula for a dispersive Fresnel lens on both paths, and the
2-D analyzer's channel PSF against monochromatic analyses mixed separately."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lensdesign.analysis.psfs import FieldAnalyzer
from lensdesign.analysis.radial import RadialFieldAnalyzer
from lensdesign.baselines import fresnel_height
from lensdesign.materials import refractive_index
from lensdesign.spec import parse_spec
from tests.conftest import TINY
from tests.test_spectral import _box_csv


def _mono(spec_data: dict, wavelengths: list[float]) -> dict:
    d = copy.deepcopy(spec_data)
    d.pop("spectrum", None)
    d["wavelengths"] = [f"{w * 1e9:.6f} nm" for w in wavelengths]
    return d


def test_channel_psf_and_strehl_are_the_weighted_sums_of_monochromatic_ones() -> None:
    """2-D path: a channel's fine PSF equals the weighted sum of monochromatic fine PSFs from an analyzer of a
    plain spec of the sampled wavelengths, and its Strehl ratio is the peak of that sum (4× finer grid) over the
    peak of the same sum of diffraction-limited PSFs; the channel's mean wavelength alone gives other values."""
    torch.set_num_threads(1)
    d = copy.deepcopy(TINY)
    d.pop("wavelengths")
    d["spectrum"] = {"camera": "Nikon 5100", "samples": 5}
    spec = parse_spec(d)
    fa = FieldAnalyzer(spec)
    h = fresnel_height(spec, fa.n).float()
    z = spec.depths_m[0]
    ch = spec.spectral
    mono = FieldAnalyzer(parse_spec(_mono(d, list(ch.wavelengths_m))), oversample=4)
    w = torch.tensor(ch.weights)
    fine = torch.einsum("cw,wab->cab", w, mono.fine_intensity(mono.spectrum(h, z)).double())
    ref = torch.einsum("cw,wab->cab", w, mono.reference_psf(4).double())
    got = fa.fine_intensity(fa.spectrum(h, z), 4).double()
    torch.testing.assert_close(got, fine, rtol=1e-4, atol=1e-9)
    strehl = fa.strehl(h, [z])[0]
    want = (fine.amax(dim=(1, 2)) / ref.amax(dim=(1, 2))).numpy()
    np.testing.assert_allclose(strehl, want, rtol=2e-3)
    centroid = FieldAnalyzer(parse_spec(_mono(d, list(spec.wavelengths)))).strehl(h, [z])[0]
    assert np.abs(centroid - strehl).max() > 0.1, (centroid, strehl)


@pytest.mark.parametrize("path", ["2-D", "1-D"])
def test_fresnel_polychromatic_strehl_follows_dispersion(tmp_path: Path, path: str) -> None:
    """In-focus polychromatic Strehl ratio of a Fresnel lens (λ0 = 550 nm) in a flat band of width Δ, illuminant E:
    S(Δ) = Σ w_i η_i sinc²(a_i/2) λ_i⁻² / Σ w_i λ_i⁻² (the perfect peak ∝ 1/λ², first-order efficiency η_i, rim
    defocus a_i = π(D/2)²/f (1/λ_i − 1/λ0) of the order-1 focus). 2-D: the point-sampled lens, S(Δ) itself. 1-D: the
    ring lens (one height per 5 µm ring, which costs 8 % at λ0 even in one line), S(Δ)/S(0), and the 2-D analysis of
    the same ring map within 2 %."""
    torch.set_num_threads(1)
    lam0, d_ap, f = 550e-9, 1e-3, 20e-3
    n0 = refractive_index("fused_silica", lam0)
    sinc = lambda x: np.sinc(x / np.pi)  # noqa: E731  sin(x)/x
    got, want = [], []
    for width in (0.0, 40.0, 80.0, 160.0):
        data = {"optics": {"aperture": "1 mm", "sensor_distance": "20 mm", "pitch": "5 um", "propagator": "asm",
                           "parameterization": "radial" if path == "1-D" else "pixel"},
                "scene": {"depths": ["inf"]}, "sensor": {"pixel_pitch": "5 um", "resolution": [16, 16], "psf_size": 9},
                "spectrum": {"csv": str(_box_csv(tmp_path / f"b{width:.0f}.csv", width)), "illuminant": "E",
                             "samples": 7}}
        spec = parse_spec(data)
        fa = FieldAnalyzer(spec)
        if path == "2-D":
            got.append(float(fa.strehl(fresnel_height(spec, fa.n).float(), [np.inf])[0, 0]))
        else:
            ra = RadialFieldAnalyzer(spec)
            rings = ra.system.lens_map()
            got.append(float(next(ra.depth_psfs(rings, [np.inf], 2, 1e5, 8))[1].strehl[0]))
            if width == 160.0:
                assert abs(got[-1] / float(fa.strehl(rings, [np.inf])[0, 0]) - 1) < 0.02
        ch = spec.spectral
        lam = np.asarray(ch.wavelengths_m[:7])
        eta = np.array([sinc(np.pi * (1 - lam0 * (refractive_index("fused_silica", x) - 1) / (x * (n0 - 1)))) ** 2
                        for x in lam])
        a = np.pi * (d_ap / 2) ** 2 / f * (1 / lam - 1 / lam0)
        wt = ch.weights[0, :7] / lam**2
        want.append(float(wt @ (eta * sinc(a / 2) ** 2) / wt.sum()))
    if path == "1-D":
        assert 0.85 < got[0] < 0.95  # the rings' own loss in one line
        got, want = [g / got[0] for g in got], [w / want[0] for w in want]
    assert np.all(np.diff(got) < 0), got
    assert want[-1] < 0.5  # the widest band really is dispersion-limited
    np.testing.assert_allclose(got, want, rtol=0.05)

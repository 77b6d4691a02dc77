"""Broadband channels: sampling of sensitivity × illuminant, channel PSFs, dispersion, Bayer demosaic, bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lensdesign.baselines import fresnel_height
from lensdesign.materials import refractive_index
from lensdesign.optics.psf import OpticalSystem, plan_grid
from lensdesign.spec import parse_spec
from lensdesign.spectral import spectral_channels
from lensdesign.system import Pipeline
from tests.conftest import TINY, write_spec


def test_weights_integrate_the_camera_curve() -> None:
    """Σ w_i g(λ_i) matches ∫ S·E g / ∫ S·E (trapezoid, 0.1 nm grid) within 1 % for g smooth on the scale of
    a bin (1/λ², λ², a 150 nm Gaussian)."""
    import colour

    ch = spectral_channels("Nikon 5100 (NPL)", None, "D65", 7)
    cam = colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"]
    ill = colour.SDS_ILLUMINANTS["D65"]
    fine = np.arange(cam.wavelengths[0], cam.wavelengths[-1] + 0.05, 0.1)
    e = np.interp(fine, ill.wavelengths, ill.values)
    lam = np.asarray(ch.wavelengths_m) * 1e9
    for g in (lambda x: 1.0 / x**2, lambda x: x**2, lambda x: np.exp(-(((x - 540.0) / 150.0) ** 2))):
        for c, label in enumerate(ch.labels):
            f = np.interp(fine, cam.wavelengths, cam.values[:, ["red", "green", "blue"].index(label)]) * e
            want = np.trapezoid(f * g(fine), fine) / np.trapezoid(f, fine)
            got = float(ch.weights[c] @ g(lam))
            assert abs(got / want - 1) < 0.01, (label, got, want)
    assert np.allclose(ch.weights.sum(1), 1.0)
    assert [lbl for lbl in ch.labels] == ["blue", "green", "red"]


def _small(spectrum: dict, propagator: str = "asm") -> dict:
    d = copy.deepcopy(TINY)
    d.pop("wavelengths")
    d["spectrum"] = spectrum
    d["optics"]["propagator"] = propagator
    d["sensor"]["psf_size"] = 15
    return d


def test_channel_psf_is_weighted_sum_of_monochromatic_psfs() -> None:
    spec = parse_spec(_small({"camera": "Nikon 5100", "samples": 3}))
    pipe = Pipeline(spec)
    h = torch.rand(plan_grid(spec).n, plan_grid(spec).n, generator=torch.Generator().manual_seed(0)) * spec.max_height_m
    ref, extra = pipe.psfs(h, [0.3])
    assert ref.shape[1] == 3 and extra.shape == (1, 3, 15, 15)
    ch = spec.spectral
    mono = []
    for w in ch.wavelengths_m:  # each wavelength on its own, in its own plain spec
        d = copy.deepcopy(TINY)
        d["wavelengths"] = [w]
        d["optics"]["propagator"] = "asm"
        d["sensor"]["psf_size"] = 15
        mono.append(OpticalSystem(parse_spec(d), depths=[*spec.depths_m, 0.3]).psf(h)[:, 0])
    want = torch.einsum("cw,wdyx->dcyx", torch.tensor(ch.weights, dtype=torch.float32), torch.stack(mono))
    torch.testing.assert_close(torch.cat([ref, extra]), want, rtol=1e-5, atol=1e-8)


def _box_csv(path: Path, width_nm: float) -> Path:
    lam = np.arange(380.0, 781.0, 0.5)
    half = width_nm / 2 if width_nm > 0 else 0.3
    s = (np.abs(lam - 550.0) <= half).astype(float)
    np.savetxt(path, np.column_stack([lam, s, s, s]), delimiter=",", header="nm,R,G,B")
    return path


def test_fresnel_broadband_strehl_falls_as_dispersion_predicts(tmp_path: Path) -> None:
    """In-focus peak of a Fresnel lens (designed at λ0 = 550 nm) in a flat band of width Δ under illuminant E,
    relative to the single line: S(Δ) = Σ_i w_i η(λ_i) sinc²(a_i/2) (λ0/λ_i)², with the first-order efficiency
    η = sinc²(1 − λ0(n(λ)−1)/(λ(n0−1))), the defocus of the order-1 focus f λ0/λ at the rim a = π(D/2)²/f ·
    (1/λ − 1/λ0) rad (on-axis intensity of pure defocus: sinc²(a/2) exactly) and the perfect peak ∝ 1/λ²."""
    base = {"optics": {"aperture": "1 mm", "sensor_distance": "20 mm", "pitch": "5 um", "propagator": "asm"},
            "scene": {"depths": ["inf"]}, "sensor": {"pixel_pitch": "5 um", "resolution": [16, 16], "psf_size": 9}}
    lam0, d_ap, f = 550e-9, 1e-3, 20e-3
    n0 = refractive_index("fused_silica", lam0)
    sinc = lambda x: np.sinc(x / np.pi)  # noqa: E731  sin(x)/x
    peaks, preds = [], []
    for width in (0.0, 40.0, 80.0, 160.0):
        spec = parse_spec({**base, "spectrum": {"csv": str(_box_csv(tmp_path / f"b{width:.0f}.csv", width)),
                                                "illuminant": "E", "samples": 7}})
        assert abs(spec.design_wavelength_m - lam0) < 0.3e-9
        h = fresnel_height(spec, plan_grid(spec).n).float()
        ref, _ = Pipeline(spec).psfs(h)
        peaks.append(float(ref[0, 0, 4, 4]))
        ch = spec.spectral
        lam = np.asarray(ch.wavelengths_m[:7])
        eta = np.array([sinc(np.pi * (1 - lam0 * (refractive_index("fused_silica", x) - 1) / (x * (n0 - 1)))) ** 2
                        for x in lam])
        a = np.pi * (d_ap / 2) ** 2 / f * (1 / lam - 1 / lam0)
        preds.append(float(ch.weights[0, :7] @ (eta * sinc(a / 2) ** 2 * (lam0 / lam) ** 2)))
    measured = np.array(peaks) / peaks[0]
    predicted = np.array(preds) / preds[0]
    assert np.all(np.diff(measured) < 0), measured
    assert predicted[-1] < 0.5  # the widest band really is dispersion-limited
    np.testing.assert_allclose(measured, predicted, rtol=0.05)


def test_bilinear_demosaic_matches_colour_demosaicing() -> None:
    from colour_demosaicing import demosaicing_CFA_Bayer_bilinear, mosaicing_CFA_Bayer

    from lensdesign.imaging.mosaic import mosaic_demosaic

    rng = np.random.default_rng(1)
    for shape in ((17, 22), (32, 32)):
        rgb = rng.random((*shape, 3))
        for p in ("RGGB", "BGGR", "GRBG", "GBRG"):
            want = demosaicing_CFA_Bayer_bilinear(mosaicing_CFA_Bayer(rgb, p), p)
            bgr = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)[None]  # channels blue, green, red
            got = mosaic_demosaic(bgr, p.lower(), [2, 1, 0])[0].permute(1, 2, 0).numpy()[..., ::-1]
            assert np.abs(got - want).max() < 1e-4, p


def test_mosaic_pipeline_is_differentiable_and_plain_wavelengths_unchanged() -> None:
    d = copy.deepcopy(TINY)
    plain = parse_spec(d)
    assert plain.optical_spec is plain and Pipeline(plain).channel_weights is None
    d["sensor"]["mosaic"] = "rggb"
    pipe = Pipeline(parse_spec(d))
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    y = pipe.noisy(x, torch.zeros(1), torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert math.isclose(float(y.detach()[0, 0, 1, 1]), float(x.detach()[0, 0, 1, 1]), rel_tol=1e-6)  # rggb: blue at (1, 1)


@pytest.mark.parametrize("spectrum, needle", [
    ({"camera": "Canon 9000"}, "spectrum.camera"),
    ({"camera": "Nikon 5100", "samples": 0}, "samples"),
    ({"csv": "BAD"}, "spectrum.csv"),
    ({"csv": "NAN"}, "non-finite"),
])
def test_bad_spectrum_is_one_line_exit_2(tmp_path: Path, cli, spectrum: dict, needle: str) -> None:
    if spectrum.get("csv") == "BAD":
        (tmp_path / "bad.csv").write_text("nm,R,G,B\n400,1,2\n500,x,1,1\n")
        spectrum = {"csv": str(tmp_path / "bad.csv")}
    elif spectrum.get("csv") == "NAN":
        (tmp_path / "nan.csv").write_text("400,1,1,1\n500,nan,1,1\n600,1,1,1\n")
        spectrum = {"csv": str(tmp_path / "nan.csv")}
    r = cli("check", write_spec(tmp_path, _small(spectrum)))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_check_and_report_figure_show_the_channels(tmp_path: Path, cli) -> None:
    from lensdesign.analysis.figures import spectrum_figure

    r = cli("check", write_spec(tmp_path, _small({"camera": "Nikon 5100", "samples": 3})))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    ch = spectral_channels("Nikon 5100", None, "D65", 3)
    assert "equal-area" in out and f"{ch.wavelengths_m[0] * 1e9:.0f}×0.333" in out
    assert spectrum_figure(ch)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_broadband_run_shows_channel_psfs(tmp_path: Path, cli) -> None:
    d = _small({"camera": "Nikon 5100", "samples": 3})
    run = tmp_path / "run"
    assert cli("baseline", write_spec(tmp_path, d), "--kind", "fresnel", "--out", run).returncode == 0
    r = cli("report", run)
    assert r.returncode == 0, r.stderr
    for name in ("spectrum.png", "channel-psf.png"):
        assert (run / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "Broadband channel PSFs" in (run / "report" / "index.html").read_text()
    # the field analysis is polychromatic: report.json's Strehl ratios are the channel PSFs' (2-D analyzer)
    from lensdesign.analysis.psfs import FieldAnalyzer
    from lensdesign.rundir import RunDir

    rep = json.loads((run / "report" / "report.json").read_text())
    assert rep["settings"]["spectrum"].startswith("polychromatic: 3 channels × 3 wavelengths")
    spec = parse_spec(d)
    want = FieldAnalyzer(spec).strehl(torch.from_numpy(RunDir(run).load_design().height_m), spec.depths_m)
    got = np.array([row["strehl"] for row in rep["psf"]]).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("parameterization", ["pixel", "radial"])
def test_psf_command_writes_the_pipelines_channel_psfs(tmp_path: Path, cli, parameterization: str) -> None:
    """`psf` of a broadband run: one plane per channel, the weighted sum the pipeline images with (2-D and 1-D
    paths), with the channels' sampled wavelengths and weights alongside."""
    from lensdesign.rundir import RunDir

    d = _small({"camera": "Nikon 5100", "samples": 3}, propagator="auto")
    d["optics"]["parameterization"] = parameterization
    run = tmp_path / "run"  # a ring design (the achromat) takes the 1-D path, the Fresnel lens the 2-D path
    kind = "achromat" if parameterization == "radial" else "fresnel"
    assert cli("baseline", write_spec(tmp_path, d), "--kind", kind, "--out", run).returncode == 0
    r = cli("psf", run, "--out", tmp_path / "psf.npz", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "channel PSF stack" in " ".join(r.stdout.split())
    got = np.load(tmp_path / "psf.npz")
    spec = parse_spec(d)
    pipe = Pipeline(spec)
    assert pipe.radial == (parameterization == "radial")
    with torch.no_grad():
        _, want = pipe.psfs(torch.from_numpy(RunDir(run).load_design().height_m), spec.depths_m)
    assert got["psf"].shape == (3, 3, 15, 15)
    np.testing.assert_allclose(got["psf"], want.numpy(), rtol=0, atol=1e-6 * float(want.max()))
    ch = spec.spectral
    np.testing.assert_allclose(got["wavelengths_m"], ch.centroids_m)
    np.testing.assert_allclose(got["sampled_wavelengths_m"], ch.wavelengths_m)
    np.testing.assert_allclose(got["channel_weights"], ch.weights)
    assert list(got["channels"]) == ["blue", "green", "red"]


@pytest.mark.parametrize("command", ["check", "optimize"])
def test_mosaic_without_one_channel_per_band_is_refused_before_anything_is_written(tmp_path: Path, cli,
                                                                                     command: str) -> None:
    d = copy.deepcopy(TINY)
    d["wavelengths"] = ["500 nm", "550 nm", "640 nm"]  # two in the G band, none in B
    d["sensor"]["mosaic"] = "rggb"
    args = ["--out", tmp_path / "run", "--steps", "1"] if command == "optimize" else []
    r = cli(command, write_spec(tmp_path, d), *args)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "sensor.mosaic" in err and "500 nm" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_check_shows_each_channels_focus_spread_against_the_depth_range(tmp_path: Path, cli) -> None:
    """A diffractive lens's power scales as λ: over a channel's sampled wavelengths (equal weights) the object
    vergence in focus spreads by P0·std(λ)/λc, P0 = 1/z_sensor + 1/z_focus."""
    d = _small({"camera": "Nikon 5100", "samples": 5})
    r = cli("check", write_spec(tmp_path, d))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.replace("│", " ").split())
    spec = parse_spec(d)
    ch = spec.spectral
    p0 = 1 / spec.optics.sensor_distance + 1 / spec.focus_depth_m
    for c, label in enumerate(ch.labels):
        lam = np.asarray(ch.wavelengths_m[c * 5:(c + 1) * 5])
        assert f"{label} ±{p0 * lam.std() / ch.centroids_m[c]:.2f} D" in out, out
    assert f"depth range's {1 / spec.depths_m[0]:.2f} D" in out


def test_optimize_names_channels_and_sampled_wavelengths(tmp_path: Path, cli) -> None:
    """The run's header counts a broadband spec's channels and the wavelengths its optics simulates."""
    r = cli("optimize", write_spec(tmp_path, _small({"camera": "Nikon 5100", "samples": 3})), "--out",
            tmp_path / "run", "--steps", "1", "--no-eval")
    assert r.returncode == 0, r.stderr
    assert "3 depths × 3 channels (9 wavelengths)" in " ".join(r.stdout.split()), r.stdout

"""Hyperspectral scenes through `lensdesign simulate`: each wavelength blurred by its own PSF and integrated by the
channels, against monochromatic systems and scipy convolutions computed separately; the bundled ColorChecker; bad
cubes refused with one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from lensdesign.baselines import fresnel_height
from lensdesign.evaluation.scoring import Evaluator
from lensdesign.imaging.hyperspectral import colorchecker_cube, sample_cube
from lensdesign.optics.psf import OpticalSystem, plan_grid
from lensdesign.simulate import _blur
from lensdesign.spec import parse_spec
from tests.conftest import TINY, write_spec
from tests.test_spectral import _small


def test_cube_blurred_per_wavelength_and_mixed_by_the_channels() -> None:
    """A cube linear in λ, R = a + b·λ (so its interpolation is exact), through a Fresnel lens at 0.3 m: channel c
    is Σ_i w_ci PSF_i ⊛ R(λ_i), with PSF_i from a plain spec of that wavelength alone and ⊛ scipy's mirrored
    convolution; the same cube sampled at the channel means alone would give another image."""
    torch.set_num_threads(1)
    spec = parse_spec(_small({"camera": "Nikon 5100", "samples": 3}))
    ch = spec.spectral
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 40, 48))
    wl = np.linspace(380e-9, 780e-9, 9)
    cube = a[None] + b[None] * ((wl - 380e-9) / 400e-9)[:, None, None]
    lam = np.asarray(ch.wavelengths_m)
    want_scene = a[None] + b[None] * ((lam - 380e-9) / 400e-9)[:, None, None]
    scene = torch.from_numpy(sample_cube(cube, wl, list(lam)))[None]
    np.testing.assert_allclose(scene[0].numpy(), want_scene, rtol=1e-5, atol=1e-6)

    ev = Evaluator(spec, "cpu")
    h = fresnel_height(spec, plan_grid(spec).n).float()
    with torch.no_grad():
        got, info = _blur(ev, h, scene, 0.3, None, cube=True)
    assert info["depth_m"] == 0.3
    blurred = []
    for i, w in enumerate(lam):
        d = copy.deepcopy(TINY)
        d["wavelengths"] = [float(w)]
        d["optics"]["propagator"] = "asm"
        d["sensor"]["psf_size"] = 15
        psf = OpticalSystem(parse_spec(d), depths=[0.3]).psf(h)[0, 0].double().numpy()
        blurred.append(ndimage.convolve(want_scene[i], psf, mode="mirror"))
    want = np.einsum("cw,wyx->cyx", ch.weights, np.stack(blurred))
    np.testing.assert_allclose(got[0].double().numpy(), want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        at_means, _ = _blur(ev, h, torch.from_numpy(want_scene[[1, 4, 7]]).float()[None], 0.3, None, cube=False)
    assert float((at_means[0].double() - torch.from_numpy(want)).abs().max()) > 1e-3


def test_colorchecker_cube_holds_the_measured_reflectances() -> None:
    import colour

    cube, wl = colorchecker_cube(patch=10, gap=2)
    sds = colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"]
    assert cube.shape == (len(wl), 4 * 10 + 5 * 2, 6 * 10 + 7 * 2)
    white = sds["white 9.5 (.05 D)"]
    np.testing.assert_allclose(cube[:, 2 + 3 * 12 + 5, 2 + 5], white.values, rtol=1e-6)  # first patch of row 4
    assert abs(wl[0] - 380e-9) < 1e-15 and cube[:, 0, 0].max() < 0.05  # black surround


@pytest.fixture(scope="module")
def broadband_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Fresnel baseline run of a tiny broadband spec (Nikon 5100 × D65, 3 wavelengths per channel)."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("hs")
    run = tmp / "run"
    assert run_cli("baseline", write_spec(tmp, _small({"camera": "Nikon 5100", "samples": 3})), "--kind", "fresnel",
                   "--out", run).returncode == 0
    return run


def test_simulate_a_hyperspectral_scene_end_to_end(tmp_path: Path, cli, broadband_run: Path) -> None:
    from lensdesign.simulate import simulate_picture

    r = cli("simulate", broadband_run, "--image", "colorchecker", "--out", tmp_path / "cc")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "cc" / "metrics.json").read_text())
    assert m["scene"] == "hyperspectral" and m["bands_nm"] == [380.0, 780.0, 81]
    assert np.isfinite(m["psnr_db"]) and m["psnr_db"] > m["sensor_psnr_db"]
    for name in ("sensor.png", "recon.png"):
        assert (tmp_path / "cc" / name).read_bytes()[:4] == b"\x89PNG"
    # a cube file of the same chart gives the same result
    cube, wl = colorchecker_cube()
    np.savez(tmp_path / "cc.npz", cube=cube, wavelengths_nm=wl * 1e9)
    m2 = simulate_picture(broadband_run, tmp_path / "cc.npz", tmp_path / "cc2")
    assert m2["psnr_db"] == pytest.approx(m["psnr_db"], abs=1e-3)
    # layers of a depth map: every layer at the focus depth is the single-depth image
    np.save(tmp_path / "dm.npy", np.full(cube.shape[1:], 0.2))
    m3 = simulate_picture(broadband_run, tmp_path / "cc.npz", tmp_path / "cc3", depth_map=tmp_path / "dm.npy")
    assert m3["depth_map"] and m3["layer_fraction"][1] == 1.0
    m4 = simulate_picture(broadband_run, tmp_path / "cc.npz", tmp_path / "cc4", depth="0.2")
    assert m3["psnr_db"] == pytest.approx(m4["psnr_db"], abs=1e-3)


@pytest.mark.parametrize("bad, needle", [
    ({"cube": np.ones((3, 16, 16))}, "wavelengths_nm"),
    ({"cube": np.full((3, 16, 16), np.nan), "wavelengths_nm": [400.0, 550.0, 700.0]}, "non-finite"),
    ({"cube": np.ones((3, 16, 16)), "wavelengths_nm": [500.0, 550.0, 700.0]}, "covers 500.0–700.0 nm"),
    ({"cube": -np.ones((3, 16, 16)), "wavelengths_nm": [400.0, 550.0, 700.0]}, "negative"),
    ({"cube": np.ones((3, 16, 16)), "wavelengths_nm": [400.0, 700.0, 550.0]}, "increase"),
    ({"cube": np.ones((3, 16)), "wavelengths_nm": [400.0, 550.0, 700.0]}, "(L, H, W)"),
    ({"cube": np.ones((3, 6, 16)), "wavelengths_nm": [400.0, 550.0, 700.0]}, "at least 8 × 8"),
])
def test_bad_cube_is_refused_with_one_line_and_nothing_written(tmp_path: Path, broadband_run: Path, bad: dict,
                                                               needle: str) -> None:
    from lensdesign.errors import LensdesignError
    from lensdesign.simulate import simulate_picture

    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(LensdesignError) as e:
        simulate_picture(broadband_run, tmp_path / "bad.npz", tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value), e.value
    assert not (tmp_path / "out").exists()


def test_bad_cube_through_the_cli_is_exit_2(tmp_path: Path, cli, broadband_run: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    r = cli("simulate", broadband_run, "--image", tmp_path / "junk.npz", "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "junk.npz" in err and "numpy.savez" in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()

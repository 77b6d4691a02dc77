"""From mask to camera: `calibrate` recovers a known PSF from a simulated point-source capture, `reconstruct`
with that calibration matches the true PSF on a full frame without seams, and bad captures are refused."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import TINY, run_cli, write_spec

BITS = 12
FULL = 2**BITS - 1
WAVELENGTHS = [460e-9, 550e-9, 640e-9]  # TINY's


def design_psfs(run: Path, depths: list[float], shift_px: tuple[float, float] = (0.0, 0.0),
                psf_size: int | None = None, bin_override: int | None = None) -> np.ndarray:
    """PSFs (D, C, P, P) of the run's quantized design; `shift_px` moves the point source sideways so that its
    image moves by that many sensor pixels (a tilted wave, computed before pixel integration). `bin_override` 1:
    on the simulation grid instead of the sensor's."""
    from lensdesign.optics.psf import OpticalSystem, coords
    from lensdesign.rundir import RunDir

    r = RunDir(run)
    spec = r.load_spec()
    h = r.load_design(spec).quantized()
    system = OpticalSystem(spec, depths=depths, psf_size=psf_size, bin_override=bin_override)
    g = system.grid
    y, x = coords(g.n, g.dx)
    sy, sx = (s * g.sensor_pitch / spec.optics.sensor_distance for s in shift_px)
    tilt = torch.stack([torch.polar(torch.ones_like(y * x), 2 * math.pi / w * (sy * y + sx * x))
                        for w in system.wavelengths]).to(torch.complex64)
    system.src = system.src * tilt[None]
    with torch.no_grad():
        return system.psf(torch.as_tensor(np.asarray(h), dtype=torch.float32)).double().numpy()


def to_rgb(channels: np.ndarray) -> np.ndarray:
    from lensdesign.imaging.scenes import rgb_from_channels

    return rgb_from_channels(channels.astype(np.float32), WAVELENGTHS)


def to_12bit(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0, 1) * FULL).astype(np.uint16)


def point_capture(psf_field: np.ndarray, rng: np.random.Generator, size: int = 80, at: tuple[int, int] = (37, 44),
                  peak: float = 0.7, background: float = 0.04, sigma: float = 0.002, hot: int = 8,
                  weights: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A 12-bit RGB capture (size, size, 3) of one PSF field (C, F, F) centred at pixel `at`: spectral weights,
    background, read noise, hot pixels (one stuck at full scale)."""
    c, f, _ = psf_field.shape
    img = np.zeros((c, size, size))
    y0, x0 = at[0] - f // 2, at[1] - f // 2
    ys, xs = slice(max(y0, 0), min(y0 + f, size)), slice(max(x0, 0), min(x0 + f, size))
    img[:, ys, xs] = psf_field[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    img *= np.asarray(weights)[:, None, None]
    img *= peak / img.max()
    img += background + sigma * rng.standard_normal(img.shape)
    for k in range(hot):
        py, px = rng.integers(2, size - 2, 2)
        while abs(py - at[0]) < 6 and abs(px - at[1]) < 6:
            py, px = rng.integers(2, size - 2, 2)
        img[rng.integers(0, c), py, px] = 1.0 if k == 0 else rng.uniform(0.3, 0.9)
    return to_12bit(to_rgb(img))


def write_tiff(path: Path, img: np.ndarray) -> Path:
    tifffile.imwrite(path, img, photometric="rgb" if img.ndim == 3 else "minisblack", metadata=None)
    return path


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def unit(p: np.ndarray) -> np.ndarray:
    return p / p.sum(axis=(-2, -1), keepdims=True)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Fresnel baseline of the tiny spec, one simulated 12-bit point-source capture per depth (each shifted by a
    random sub-pixel offset), and their calibration through the CLI."""
    tmp = tmp_path_factory.mktemp("camera")
    run = tmp / "run"
    r = run_cli("baseline", write_spec(tmp, TINY), "--kind", "fresnel", "--out", run)
    assert r.returncode == 0, r.stderr
    from lensdesign.rundir import RunDir

    depths = RunDir(run).load_spec().depths_m
    rng = np.random.default_rng(2018)
    shifts = rng.uniform(-0.5, 0.5, (len(depths), 2))
    files = []
    for i, z in enumerate(depths):
        field = design_psfs(run, [z], tuple(shifts[i]), psf_size=127)[0]
        files.append(write_tiff(tmp / f"psf{i}.tif", point_capture(field, rng, sigma=0.0005)))
    out = tmp / "cal"
    r = run_cli("calibrate", run, *[a for f in files for a in ("--psf", f)], "--out", out, "--bit-depth", BITS)
    assert r.returncode == 0, r.stderr
    return {"tmp": tmp, "run": run, "out": out, "depths": depths, "shifts": shifts, "files": files,
            "truth": unit(design_psfs(run, depths)), "stdout": r.stdout}


def test_calibration_recovers_the_true_psf(calibrated: dict) -> None:
    """Background, read noise (2 LSB), hot pixels (one stuck at full scale), 12 bits and a sub-pixel offset: each
    depth's PSF (all channels) within 5 % relative L2 of the true one (measured 3.1–3.8 % over six noise seeds),
    each channel within 12 % (8–9.3 %: the weakest, blue at 0.1 m, is spread thin and noise-limited)."""
    import json

    with np.load(calibrated["out"] / "psf.npz") as z:
        psf = z["psf"].astype(np.float64)
        assert psf.dtype == np.float64 and z["psf"].dtype == np.float32
        np.testing.assert_allclose(z["depths_m"], calibrated["depths"])
        np.testing.assert_allclose(z["wavelengths_m"], WAVELENGTHS)
        assert float(z["pitch_m"]) == pytest.approx(8e-6)
    truth = calibrated["truth"]
    assert psf.shape == truth.shape == (3, 3, 33, 33)
    np.testing.assert_allclose(psf.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
    per_depth = [relative_l2(psf[i], truth[i]) for i in range(len(psf))]
    per_channel = [relative_l2(psf[i, c], truth[i, c]) for i in range(3) for c in range(3)]
    assert max(per_depth) < 0.05, per_depth
    assert max(per_channel) < 0.12, per_channel
    rep = json.loads((calibrated["out"] / "calibration.json").read_text())
    assert all(8 <= f["hot_pixels"] <= 10 for f in rep["frames"]), rep["frames"]
    assert rep["frames"][0]["noise_sigma"][0] == pytest.approx(0.0005, rel=0.25)
    assert rep["frames"][0]["background"][1] == pytest.approx(0.04, abs=2e-4)
    # the report compares with the simulated (quantized) design, which here is the truth
    got = [p["relative_l2"] for p in rep["psfs"]]
    np.testing.assert_allclose(got, per_channel, atol=1e-4)
    assert "<script" not in (calibrated["out"] / "calibration.html").read_text()
    assert (calibrated["out"] / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def srgb_scene(size: int, seed: int) -> np.ndarray:
    """A dead-leaves scene (C, size, size), linear, one channel per wavelength."""
    from lensdesign.imaging.scenes import channels_from_rgb, dead_leaves, srgb_to_linear

    return channels_from_rgb(np.asarray(srgb_to_linear(dead_leaves(size, seed))), WAVELENGTHS).astype(np.float64)


def error_profile_ratio(err: np.ndarray, band: int = 16, periods: tuple[int, ...] = (16, 32, 64, 128)) -> tuple[float, float]:
    """(RMS error in the outer `band` pixels / RMS error inside, seam score): the seam score is, for the worst
    tile period T in `periods` and the row or column means of the error, the spectral power at the harmonics of
    1/T over the median power of their neighbouring frequencies. About 1–3 for an error without borders or
    seams."""
    inner = np.zeros(err.shape, dtype=bool)
    inner[band:-band, band:-band] = True
    ratio = float(np.sqrt(np.mean(err[~inner] ** 2) / np.mean(err[inner] ** 2)))
    worst = 0.0
    for m in (err.mean(0), err.mean(1)):
        n = m.size
        pw = np.abs(np.fft.rfft(m - m.mean())) ** 2
        for t in periods:
            ks = range(n // t, pw.size - 3, n // t)
            local = sum(float(np.median(np.r_[pw[k - 3:k], pw[k + 1:k + 4]])) for k in ks)
            worst = max(worst, float(sum(pw[k] for k in ks)) / local)
    return ratio, worst


def test_reconstruction_with_calibrated_psf_matches_the_true_psf(calibrated: dict) -> None:
    """A 512² capture (16 × the training patch in area) of a scene at 0.2 m, blurred by the true PSF, 12-bit with
    read noise: the reconstruction with the calibrated PSFs is within 0.5 dB PSNR of the one with the design's
    (true) PSFs, and its error shows no border band and no periodic structure in its row / column means."""
    from lensdesign.imaging.sensor import convolve_valid

    tmp, run = calibrated["tmp"], calibrated["run"]
    size, p = 512, 33
    psf = unit(design_psfs(run, [calibrated["depths"][1]])[0])
    scene = srgb_scene(size + p - 1, 7)
    blurred = convolve_valid(torch.as_tensor(scene)[None], torch.as_tensor(psf)[None])[0].numpy()
    rng = np.random.default_rng(3)
    capture = write_tiff(tmp / "frame.tif", to_12bit(to_rgb(blurred + 0.003 * rng.standard_normal(blurred.shape))))
    truth = to_rgb(scene[:, p // 2:p // 2 + size, p // 2:p // 2 + size])
    from tests.inproc import run_main

    psnr = {}
    for name, extra in (("true", []), ("calibrated", ["--psf", calibrated["out"]])):
        out = tmp / f"rec-{name}"
        runner = run_cli if name == "calibrated" else run_main  # one as a user's process, one in-process (faster)
        r = runner("reconstruct", run, capture, "--out", out, "--bit-depth", BITS, "--gamma", "0.003", *extra)
        assert r.returncode == 0, r.stderr
        x = tifffile.imread(out / "frame.tiff")
        assert x.dtype == np.uint16 and x.shape == (size, size, 3)
        assert (out / "frame.png").read_bytes()[:4] == b"\x89PNG"
        err = x.astype(np.float64) / 65535.0 - truth
        psnr[name] = -10 * math.log10(float(np.mean(err**2)))
        border, peak = error_profile_ratio(err.mean(-1))
        assert border < 1.2 and peak < 6, (name, border, peak)
    sensor = -10 * math.log10(float(np.mean((np.clip(to_rgb(blurred), 0, 1) - truth) ** 2)))
    assert psnr["true"] > sensor + 2, (psnr, sensor)
    assert abs(psnr["calibrated"] - psnr["true"]) < 0.5, psnr


def test_error_profile_flags_borders_and_seams() -> None:
    """The border / seam measure of the reconstruction test flags an error that is larger along the borders (a
    Wiener filter without padding rings there) and a faint periodic line (a seam at a tile border)."""
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 0.02, (256, 256))
    border, peak = error_profile_ratio(clean)
    assert border < 1.2 and peak < 6
    ringing = clean.copy()
    ringing[:8] *= 3
    assert error_profile_ratio(ringing)[0] > 1.2
    seams = clean.copy()
    seams[:, ::32] += 0.005
    assert error_profile_ratio(seams)[1] > 6


def test_tiled_unet_has_no_seams() -> None:
    """The U-Net on overlapping, blended tiles: close to the network on the whole frame, and the difference
    has no jumps at tile borders (measured against the output's own column-to-column changes), unlike the same
    network on hard-edged tiles."""
    from lensdesign.camera.reconstruct import tile_starts, tiled
    from lensdesign.imaging.reconstruct import UNet

    net = UNet(3, 3, channels=4, depth=2, seed=1)
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight, std=0.2, generator=torch.Generator().manual_seed(2))
    x = torch.as_tensor(srgb_scene(232, 3)[None, :, :136, :], dtype=torch.float32)
    starts = tile_starts(232, 64, 32, 4)
    assert starts[0] == 0 and starts[-1] == 232 - 64 and all(s % 4 == 0 for s in starts)
    assert all(0 < b - a <= 64 - 32 for a, b in itertools.pairwise(starts))  # overlaps of ≥ 32 pixels
    with torch.no_grad():
        whole = net(x)[0].mean(0).numpy()
        blended = tiled(net, x, tile=64, overlap=32, align=4)[0].mean(0).numpy()
        hard = np.zeros_like(whole)
        for y0 in range(0, 136, 64):
            for x0 in range(0, 232, 64):
                hard[y0:y0 + 64, x0:x0 + 64] = net(x[..., y0:y0 + 64, x0:x0 + 64])[0].mean(0).numpy()
    jumps = lambda d: np.abs(np.diff(d, axis=1)).mean(0)  # noqa: E731
    scale = float(np.median(jumps(whole)))
    assert np.abs(blended - whole).max() < 0.15 * np.abs(whole).max()
    assert jumps(hard - whole).max() > 1.0 * scale  # the measure sees hard seams …
    assert jumps(blended - whole).max() < 0.15 * scale  # … and none after blending


def _bad_capture(kind: str, tmp: Path, good: Path) -> tuple[list[str], str]:
    """Arguments for `calibrate` (after RUN) with one bad input, and the words the error must contain."""
    rng = np.random.default_rng(5)
    frame = tifffile.imread(good)
    if kind == "no point source":
        noise = to_12bit(0.04 + 0.0005 * rng.standard_normal(frame.shape))
        return ["--psf", str(write_tiff(tmp / "dark.tif", noise))], "no point source"
    if kind == "saturated":
        return ["--psf", str(write_tiff(tmp / "sat.tif", np.clip(frame.astype(np.int64) * 3, 0, FULL).astype(np.uint16)))], \
            "saturated"
    if kind == "channels":
        return ["--psf", str(write_tiff(tmp / "grey.tif", frame[..., 1]))], "3 wavelengths"
    if kind == "bit depth":
        dark = write_tiff(tmp / "dark8.tif", np.full(frame.shape, 10, dtype=np.uint8))
        return ["--psf", str(good), "--dark", str(dark)], "bit"
    if kind == "bit depth range":
        return ["--psf", str(good), "--bit-depth", "10"], "--bit-depth"
    if kind == "small":
        return ["--psf", str(write_tiff(tmp / "small.tif", frame[20:50, 20:50]))], "smaller than"
    if kind == "missing":
        return ["--psf", str(tmp / "nowhere.tif")], "no such capture file"
    bad = frame.astype(np.float32) / FULL
    bad[3, 4, 0] = np.nan
    return ["--psf", str(write_tiff(tmp / "nan.tif", bad))], "non-finite"


BAD = ["no point source", "saturated", "channels", "bit depth", "bit depth range", "small", "missing", "non-finite"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_captures_exit_2_with_one_line(calibrated: dict, kind: str, tmp_path: Path) -> None:
    """Each bad capture: exit code 2, one line naming the problem, no psf.npz. The command line runs in-process
    (`tests.inproc`: the user's entry point, its error handling and exit codes); the missing file also in a
    subprocess, as a user sees it."""
    from tests.inproc import run_main

    args, words = _bad_capture(kind, tmp_path, calibrated["files"][0])
    out = tmp_path / "cal"
    bits = [] if kind == "bit depth range" else ["--bit-depth", BITS]
    run = run_cli if kind == "missing" else run_main
    r = run("calibrate", calibrated["run"], *args, "--depths", "0.2 m", *bits, "--out", out)
    assert r.returncode == 2, (kind, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert not (out / "psf.npz").exists()


@pytest.mark.parametrize("kind", ["small", "non-finite"])
def test_reconstruct_refuses_bad_captures(calibrated: dict, kind: str, tmp_path: Path) -> None:
    from tests.inproc import run_main

    args, words = _bad_capture(kind, tmp_path, calibrated["files"][0])
    out = tmp_path / "rec"
    r = run_main("reconstruct", calibrated["run"], args[1], "--out", out, "--bit-depth", BITS)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "grbg", "gbrg"])
def test_bayer_planes_and_photosite_offsets(pattern: str) -> None:
    """A raw mosaic of a linear ramp split at half resolution: each plane reads the ramp at its photosites, which
    sit at the documented offsets from the quad centre (R and B a quarter quad off diagonally, the mean of the
    two greens centred); channels follow the wavelengths' sRGB bands."""
    from lensdesign.camera.captures import bayer_planes, channel_offsets, to_channels

    h, w = 6, 8
    ramp = lambda y, x: 100.0 + 3.0 * y + 5.0 * x  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]
    raw = ramp(yy, xx).astype(np.uint16)
    planes = bayer_planes(raw, pattern)
    assert planes.shape == (h // 2, w // 2, 3)
    qy, qx = np.mgrid[0:h // 2, 0:w // 2]
    centre_y, centre_x = 2 * qy + 0.5, 2 * qx + 0.5  # quad centres in photosites
    offsets = channel_offsets(WAVELENGTHS, pattern)  # B, G, R channels for 460, 550, 640 nm
    for band, c in (("r", 2), ("g", 1), ("b", 0)):
        expected = ramp(centre_y + 2 * offsets[c, 0], centre_x + 2 * offsets[c, 1])
        np.testing.assert_allclose(planes[..., "rgb".index(band)], expected, atol=1e-9)
        i = pattern.index(band)
        if band != "g":
            assert tuple(offsets[c]) == ((i // 2 - 0.5) / 2, (i % 2 - 0.5) / 2)
    np.testing.assert_allclose(offsets[1], 0.0)
    ch = to_channels(raw, WAVELENGTHS, pattern, 65535.0)
    np.testing.assert_allclose(ch[2] * 65535, planes[..., 0])
    np.testing.assert_allclose(ch[0] * 65535, planes[..., 2])


def test_reconstruct_with_a_unet_run_on_tiles(calibrated: dict, tmp_path: Path) -> None:
    """A run with a U-Net (random, non-zero output layer) on a 640 × 576 frame, larger than one 512-pixel tile:
    the written reconstruction is the Wiener filter with the learned γ plus the U-Net applied to the whole frame,
    up to the 16-bit output and the blending of the tiles."""
    import json
    import shutil

    from scipy import ndimage

    from lensdesign.camera.captures import to_channels
    from lensdesign.camera.reconstruct import reconstruct_image, reference_psf
    from lensdesign.imaging.reconstruct import UNetReconstruction
    from lensdesign.rundir import RunDir
    from tests.inproc import run_main

    run = tmp_path / "unet-run"
    shutil.copytree(calibrated["run"], run)
    rd = RunDir(run)
    spec = rd.load_spec()
    design = rd.load_design(spec)
    rec = UNetReconstruction(3, 0.01, 1, unet_channels=4, unet_depth=2, seed=3)
    with torch.no_grad():
        torch.nn.init.normal_(rec.unet.out.weight, std=0.05, generator=torch.Generator().manual_seed(4))
    meta = {**design.meta, "reconstruction_arch": rec.architecture(), "reconstruction": "unet"}
    rd.write_design(spec, design.height_m, meta, tensors=rec.tensors())
    rng = np.random.default_rng(9)
    img = np.clip(0.5 + 4 * ndimage.gaussian_filter(rng.standard_normal((3, 640, 576)), (0, 3, 3)), 0, 1)
    capture = write_tiff(tmp_path / "big.tif", to_12bit(to_rgb(img)))
    r = run_main("reconstruct", run, capture, "--out", tmp_path / "out", "--bit-depth", BITS)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "reconstruct.json").read_text())["reconstruction"] == "unet"
    got = tifffile.imread(tmp_path / "out" / "big.tiff").astype(np.float64) / 65535
    y = to_channels(tifffile.imread(capture), WAVELENGTHS, None, float(FULL))
    ref, _ = reference_psf(spec, rd.load_design(spec), None)
    wiener = reconstruct_image(y, ref, 0.01)
    with torch.no_grad():
        w = torch.as_tensor(wiener, dtype=torch.float32)[None]
        whole = (w + rec.unet(w))[0].numpy()
    expected = np.clip(to_rgb(whole), 0, 1)
    assert np.abs(to_rgb(whole) - to_rgb(wiener)).max() > 0.05  # the network does change the image
    assert np.abs(got - expected).max() < 0.002, np.abs(got - expected).max()


def test_dark_frame_removes_fixed_pattern_and_hot_pixels() -> None:
    """With a dark frame, a fixed pattern (a gradient) and hot pixels present in both frames cancel: the cleaned
    capture is the point source within the noise and no pixel is taken for hot; the border estimate of the
    background is then ≈ 0 and the noise σ ≈ √2 × the read noise."""
    from lensdesign.camera.calibrate import clean_capture

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = 0.5 * np.exp(-((yy - 30.3) ** 2 + (xx - 33.6) ** 2) / 4.0)
    pattern = 0.02 + 0.0002 * xx + 0.0001 * yy
    pattern[5, 50] = pattern[44, 9] = 0.8
    dark = pattern[None] + 0.001 * rng.standard_normal((1, 64, 64))
    capture = (pattern + blob)[None] + 0.001 * rng.standard_normal((1, 64, 64))
    cl = clean_capture(capture, dark, np.zeros((64, 64), dtype=bool), "capture")
    assert cl.hot_pixels == 0
    assert abs(cl.background[0]) < 3e-4 and cl.sigma[0] == pytest.approx(0.001 * math.sqrt(2), rel=0.15)
    assert np.abs(cl.image[0] - blob).max() < 6 * 0.001 * math.sqrt(2)
    no_dark = clean_capture(capture, None, np.zeros((64, 64), dtype=bool), "capture")
    assert no_dark.hot_pixels == 2 and no_dark.image[0, 5, 50] < 0.05


@pytest.mark.parametrize(("gamma", "bayer"), [("-1", None), ("0.1,0.2", None), ("abc", None), (None, "rgbg")])
def test_reconstruct_refuses_bad_options(calibrated: dict, tmp_path: Path, gamma: str | None, bayer: str | None) -> None:
    from tests.inproc import run_main

    opts = ["--gamma", gamma] if gamma else ["--bayer", bayer]
    r = run_main("reconstruct", calibrated["run"], calibrated["files"][0], "--out", tmp_path / "rec", *opts)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and opts[0] in lines[0], r.stderr
    assert not (tmp_path / "rec").exists()


def test_calibrate_raw_bayer_mosaic(calibrated: dict, tmp_path: Path) -> None:
    """Raw RGGB captures (photosites of half the run's pixel pitch, each integrating its own quarter of the quad)
    split at half resolution: every channel's PSF lands where the true one is (centroids within 0.15 pixel: the
    R and B photosites' quarter-pixel offsets are removed; a sign error would put them 0.5 pixel apart) and
    within 15 % relative L2 (what remains is the photosites' smaller area, measured 8–11 %)."""
    from lensdesign.analysis.metrics import centroid
    from tests.inproc import run_main

    run, depths = calibrated["run"], calibrated["depths"][1:2]
    rng = np.random.default_rng(11)
    files = []
    for i, z in enumerate(depths):
        # PSFs on the 4 µm simulation grid (bin 1): one sample per photosite
        fine = design_psfs(run, [z], tuple(rng.uniform(-0.5, 0.5, 2)), psf_size=255, bin_override=1)[0][:, 1:, 1:]
        raw = np.zeros(fine.shape[1:])
        for k, band in enumerate("rggb"):
            c = {"r": 2, "g": 1, "b": 0}[band]  # TINY's channels are 460, 550, 640 nm
            raw[k // 2::2, k % 2::2] = fine[c, k // 2::2, k % 2::2]
        raw = raw * (0.7 / raw.max()) + 0.04 + 0.0003 * rng.standard_normal(raw.shape)
        files.append(write_tiff(tmp_path / f"raw{i}.tif", to_12bit(raw)))
    out = tmp_path / "cal"
    r = run_main("calibrate", run, *[a for f in files for a in ("--psf", f)], "--bayer", "rggb", "--bit-depth", BITS,
                 "--depths", "0.2 m", "--out", out)
    assert r.returncode == 0, r.stderr
    with np.load(out / "psf.npz") as zf:
        psf = zf["psf"].astype(np.float64)
    truth = calibrated["truth"][1:2]
    for i in range(len(depths)):
        for c in range(3):
            dy, dx = np.subtract(centroid(np.clip(psf[i, c], 0, None)), centroid(truth[i, c]))
            assert math.hypot(dy, dx) < 0.15, (i, c, dy, dx)
            assert relative_l2(psf[i, c], truth[i, c]) < 0.15

"""Simulated camera captures of a run's element, for trying `lensdesign calibrate` and `lensdesign reconstruct`.

    python examples/simulated_captures.py RUN --out CAPTURES      # psf-0.tif … (one per depth), scene.tif, truth.tiff
    python examples/simulated_captures.py --score CAPTURES/truth.tiff RECON/scene.tiff

The element is the run's design quantized to its fabrication levels (as built). Point-source captures: 12-bit
RGB frames of 192 × 192 pixels, the source off the window centre by a random sub-pixel amount (a tilted source
wave), background 4 % of full scale, read noise 0.05 %, eight hot pixels (one stuck at full scale). Scene
capture: scikit-image's held-out 'coffee' photograph (400 × 600) at the spec's first depth, blurred by the PSF
(a 'valid' convolution of the picture padded by reflection), read noise 0.3 %, 12 bits. truth.tiff is the
sharp picture, 16-bit linear RGB, for `--score` (PSNR in dB of a reconstruction's 16-bit linear TIFF).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import tifffile
import torch

FULL = 4095  # 12 bits


def _frame(channels: np.ndarray, wavelengths: list[float]) -> np.ndarray:
    from lensdesign.imaging.scenes import rgb_from_channels

    return np.rint(np.clip(rgb_from_channels(channels.astype(np.float32), wavelengths), 0, 1) * FULL).astype(np.uint16)


def write_captures(run_dir: Path, out: Path, seed: int = 0) -> None:
    from skimage.data import coffee

    from lensdesign.camera.calibrate import full_field, simulated_psfs, unit_sum
    from lensdesign.imaging.scenes import channels_from_rgb, rgb_from_channels, srgb_to_linear, to_float_rgb
    from lensdesign.imaging.sensor import convolve_same
    from lensdesign.rundir import RunDir

    run = RunDir(run_dir).require()
    spec = run.load_spec()
    design = run.load_design(spec)
    wls = list(spec.wavelengths)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    size, field = 192, min(full_field(spec), 191)
    for i, z in enumerate(spec.depths_m):
        shift = rng.uniform(-0.5, 0.5, (1, len(wls), 2)).round(3)
        shift[:] = shift[:, :1]  # one source position for every colour
        psf = simulated_psfs(spec, design, [z], shifts_px=shift, psf_size=field)[0]
        img = np.zeros((len(wls), size, size))
        o = (size - field) // 2
        img[:, o:o + field, o:o + field] = psf * (0.7 / psf.max())
        img += 0.04 + 0.0005 * rng.standard_normal(img.shape)
        for k in range(8):  # hot pixels, away from the PSF's core
            y, x = rng.integers(4, size - 4, 2)
            while max(abs(y - size // 2), abs(x - size // 2)) < 12:
                y, x = rng.integers(4, size - 4, 2)
            img[rng.integers(len(wls)), y, x] = 1.0 if k == 0 else rng.uniform(0.3, 0.9)
        tifffile.imwrite(out / f"psf-{i}.tif", _frame(img, wls), photometric="rgb", metadata=None)
        print(f"psf-{i}.tif: depth {z:g} m, source off centre by ({shift[0, 0, 0]:+.3f}, {shift[0, 0, 1]:+.3f}) px")
    scene = channels_from_rgb(np.asarray(srgb_to_linear(to_float_rgb(coffee()))), wls)
    at = unit_sum(simulated_psfs(spec, design, [spec.depths_m[0]]))
    with torch.no_grad():
        blurred = convolve_same(torch.as_tensor(scene, dtype=torch.float64)[None],
                                torch.as_tensor(at, dtype=torch.float64))[0].numpy()
    noisy = blurred + 0.003 * rng.standard_normal(blurred.shape)
    tifffile.imwrite(out / "scene.tif", _frame(noisy, wls), photometric="rgb", metadata=None)
    truth = np.rint(rgb_from_channels(scene, wls) * 65535).astype(np.uint16)
    tifffile.imwrite(out / "truth.tiff", truth, photometric="rgb", metadata=None)
    print(f"scene.tif: {scene.shape[2]} × {scene.shape[1]} pixels at {spec.depths_m[0]:g} m; truth.tiff: the sharp picture")


def score(truth: Path, recon: Path) -> float:
    """PSNR (dB) of a 16-bit linear TIFF against the truth."""
    a = tifffile.imread(truth).astype(np.float64) / 65535
    b = tifffile.imread(recon).astype(np.float64) / 65535
    return -10 * math.log10(float(np.mean((a - b) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", nargs=2, type=Path, metavar=("TRUTH", "RECON"))
    a = ap.parse_args()
    if a.score:
        print(f"PSNR {score(*a.score):.2f} dB")
    elif a.run and a.out:
        write_captures(a.run, a.out, a.seed)
    else:
        ap.error("give RUN --out DIR, or --score TRUTH RECON")


if __name__ == "__main__":
    main()

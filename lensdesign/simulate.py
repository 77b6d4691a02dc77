"""`lensdesign simulate`: a user's picture through a run's design — file I/O around the scoring pipeline.

Reads the run (validated by `RunDir`), the picture and an optional depth map (checked where they enter), images
the picture through the design, reconstructs it with the run's Wiener filter (and U-Net), and writes
OUT/sensor.png, OUT/recon.png and OUT/metrics.json only once everything has been computed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensdesign.errors import LensdesignError
from lensdesign.evaluation.scoring import Evaluator, crop_to_factor, image_through
from lensdesign.imaging.sensor import convolve_same, eval_read_noise, psnr, ssim
from lensdesign.rundir import META, Design, RunDir, atomic_write_bytes, atomic_write_json
from lensdesign.spec import Spec, parse_length

SENSOR_PNG = "sensor.png"
RECON_PNG = "recon.png"
METRICS_JSON = "metrics.json"


def write_png(path: Path, img_hwc: np.ndarray) -> None:
    """Write a linear (H, W, 3) image in [0, 1] as an 8-bit sRGB PNG, atomically."""
    from PIL import Image

    from lensdesign.imaging.scenes import linear_to_srgb

    a = np.clip(np.rint(linear_to_srgb(img_hwc) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def run_gamma(spec: Spec, design: Design, height: torch.Tensor,
              ev: Evaluator | None = None) -> tuple[float | list[float], str]:
    """The Wiener γ of a run: learned (`recon.log_gamma`), else design.json's `gamma`, else tuned now on the
    validation set for `height` (N, N, m) with `ev` (default a fresh CPU evaluator of `spec`)."""
    t = design.tensors.get("recon.log_gamma")
    if t is not None:
        return t.float().exp().tolist(), "learned"
    g = design.gamma
    if g is not None:
        return g, META
    return (ev or Evaluator(spec)).evaluate_height(height)["gamma"], "tuned on the validation set"


def read_depth_map(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A depth map (.npy, metres per pixel, real numbers > 0, inf allowed) of the picture's `shape` (H, W)."""
    p = Path(path)
    if not p.is_file():
        raise LensdesignError(f"--depth-map: {p}: no such file; give a .npy array of depths in metres")
    try:
        dm = np.load(p, allow_pickle=False)
    except Exception as e:
        raise LensdesignError(f"--depth-map: {p}: not a .npy array ({e.__class__.__name__}); "
                              "save it with numpy.save") from None
    if not isinstance(dm, np.ndarray) or not (np.issubdtype(dm.dtype, np.integer) or np.issubdtype(dm.dtype, np.floating)):
        raise LensdesignError(f"--depth-map: {p}: dtype {getattr(dm, 'dtype', type(dm).__name__)} is not a real number "
                              "type; save depths in metres as float")
    dm = np.squeeze(np.asarray(dm, dtype=np.float64))
    if dm.shape != shape:
        raise LensdesignError(f"--depth-map: shape {dm.shape} does not match the image {shape}; give one depth "
                              "in metres per pixel")
    if np.isnan(dm).any() or (dm <= 0).any():
        raise LensdesignError(f"--depth-map: {p.name}: depths must be positive metres (inf allowed), without NaN")
    return dm


def _picture(image_path: str | Path, spec: Spec) -> tuple[torch.Tensor, bool, dict[str, Any]]:
    """(the picture as linear channels (1, C, H, W), or a hyperspectral cube's scene per simulated wavelength
    (1, W, H, W); whether it is a cube; metrics about the scene); at least 8 × 8 pixels."""
    from lensdesign.imaging import hyperspectral as hs
    from lensdesign.imaging.scenes import channels_from_rgb, read_image, srgb_to_linear

    if hs.is_cube(image_path):
        cube, wl = hs.read_cube(image_path)
        name = Path(image_path).name
        scene = torch.from_numpy(hs.sample_cube(cube, wl, list(spec.optical_spec.wavelengths), name))[None]
        return scene, True, {"scene": "hyperspectral", "bands_nm": [round(float(wl[0]) * 1e9, 2),
                                                                    round(float(wl[-1]) * 1e9, 2), len(wl)]}
    rgb = read_image(image_path)
    img = torch.from_numpy(channels_from_rgb(srgb_to_linear(rgb), spec.wavelengths))[None]
    hh, ww = img.shape[-2:]
    if min(hh, ww) < 8:
        raise LensdesignError(f"--image: {Path(image_path).name} is {ww} × {hh} pixels; give a picture of at least 8 × 8")
    return img, False, {"scene": "rgb"}


def _blur(ev: Evaluator, h: torch.Tensor, src: torch.Tensor, z: float, dm: np.ndarray | None,
          cube: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """(noise-free fine-grid irradiance (1, C, H, W), metrics about the depths): one depth z (m), or layers of a
    depth map. A hyperspectral cube's scene `src` (1, W, H, W) is blurred wavelength by wavelength with the
    monochromatic PSFs and then mixed to the channels; a picture (1, C, H, W) with the channel PSFs."""
    from lensdesign.imaging.scenes import depth_layers
    from lensdesign.imaging.sensor import render_layers

    pipe, spec = ev.pipe, ev.spec
    depths = [z] if dm is None else spec.depths_m
    psfs = pipe.wavelength_psfs(h, depths) if cube else pipe.psfs(h, depths)[1]
    if dm is None:
        out, info = convolve_same(src, psfs), {"depth_m": None if math.isinf(z) else z, "depth_map": False}
    else:
        layers = torch.from_numpy(depth_layers(dm, depths))[None]
        info = {"depth_m": None, "depth_map": True, "layers_m": [None if math.isinf(v) else v for v in depths],
                "layer_fraction": [round(float((layers == i).float().mean()), 4) for i in range(len(depths))]}
        out = render_layers(src, layers, psfs)
    return (pipe.to_channels(out) if cube else out), info


def simulate_picture(run_path: str | Path, image_path: str | Path, out: str | Path, depth: str | None = None,
                     depth_map: str | Path | None = None, quantized: bool = False, seed: int = 0) -> dict[str, Any]:
    """Image a picture (sRGB file) through a run's design and reconstruct it; writes OUT/sensor.png, recon.png and
    metrics.json and returns the metrics.

    One depth (`depth`, metres or 'inf'; default the spec's focus depth) blurs the whole picture with that PSF;
    a depth map (.npy, metres, same H × W) is split into the spec depths' layers (nearest in diopters), each
    layer blurred with its PSF and composited far to near with occlusion (metrics: `depth_map` true, `layers_m`).
    PSNR / SSIM compare the reconstruction with the sharp picture (linear intensity). A run with a U-Net
    reconstructs with it.

    Super-resolution: the picture is the scene on the fine grid (cropped to a multiple of the factor k);
    sensor.png is the k-times smaller sensor image, recon.png the fine reconstruction; `sensor_psnr_db` scores
    the sensor image upsampled bicubically.
    """
    if depth is not None and depth_map is not None:
        raise LensdesignError("--depth-m and --depth-map: give one of them (one depth for the whole picture, or a map)")
    run = RunDir(run_path).require()
    spec = run.load_spec()
    design = run.load_design(spec)
    try:
        z = spec.focus_depth_m if depth is None else parse_length(depth, allow_inf=True)
    except ValueError as e:
        raise LensdesignError(f"--depth-m: {e}") from None
    pic, cube, scene_info = _picture(image_path, spec)
    dm = None if depth_map is None else read_depth_map(depth_map, tuple(pic.shape[-2:]))
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise LensdesignError(f"--out: {outp} is a file; give a folder")
    ev = Evaluator(spec, "cpu")
    h = torch.from_numpy(design.quantized() if quantized else design.height_m)
    with ev.threads():
        gamma, gamma_from = run_gamma(spec, design, h, ev)
        recon = design.reconstruction()
        k = ev.pipe.factor
        pic = crop_to_factor(pic, k)
        # a cube's sharp image: what a perfect lens would record, Σ_i w_ci R(λ_i)
        img = ev.pipe.to_channels(pic) if cube else pic
        if dm is not None:
            dm = dm[:img.shape[-2], :img.shape[-1]]
        with torch.no_grad():
            ref, _ = ev.pipe.psfs(h)
            clean, info = _blur(ev, h, pic, z, dm, cube)
            y, x, plan = image_through(ev.pipe, clean, ref.mean(0), gamma, recon, seed)
            yu = plan.upsampled
        metrics = {"image": Path(image_path).name, **scene_info, "size": list(img.shape[-2:]),
                   "sensor_size": list(y.shape[-2:]), "superres_factor": k, **info,
                   "psnr_db": round(float(psnr(x, img)), 4), "ssim": round(ssim(x, img)[0], 5),
                   "sensor_psnr_db": round(float(psnr(yu, img)), 4), "sensor_ssim": round(ssim(yu, img)[0], 5),
                   "reconstruction": "wiener" if recon is None else recon.kind,
                   "gamma": gamma, "gamma_from": gamma_from, "read_noise": eval_read_noise(spec.sensor.read_noise),
                   "quantized": quantized, "seed": seed}
    _write_outputs(outp, spec, y, x, metrics)
    return metrics


def _write_outputs(outp: Path, spec: Spec, y: torch.Tensor, x: torch.Tensor, metrics: dict[str, Any]) -> None:
    """OUT/sensor.png, OUT/recon.png (sRGB of the wavelength channels) and OUT/metrics.json."""
    from lensdesign.imaging.scenes import rgb_from_channels

    outp.mkdir(parents=True, exist_ok=True)
    write_png(outp / SENSOR_PNG, rgb_from_channels(y[0], spec.wavelengths))
    write_png(outp / RECON_PNG, rgb_from_channels(x[0].clamp(0, 1), spec.wavelengths))
    atomic_write_json(outp / METRICS_JSON, metrics)

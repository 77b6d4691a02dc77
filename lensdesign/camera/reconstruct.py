"""Apply a run's reconstruction to camera captures of any size.

* **PSF.** By default the simulated PSF of the design quantized to `fabrication.levels` (the element as
  built); with `psf` a calibrated stack (`psf.npz` from `lensdesign calibrate`, or from `lensdesign psf`). As in
  training, the reconstruction deconvolves with the mean over the task's reference depths (the calibrated
  stack must hold each of them, matched within 1 % in diopters). Every PSF is scaled to unit sum first, so
  the output keeps the capture's brightness (the camera's exposure sets the scale, not the window's share of
  the light). Bayer photosite offsets (`lensdesign.camera.captures`) are folded into each channel's PSF.
* **Full frames.** The Wiener filter (the run's learned γ per channel; a baseline run's γ comes from
  design.json or is tuned on the validation set; `--gamma` overrides it) runs on the whole frame at once, zero seams: one FFT of
  the frame padded by the PSF width with reflection tapered to the mean by a raised cosine
  (`lensdesign.imaging.reconstruct.WienerPlan`), so the non-periodic borders do not ring. A U-Net after it
  runs on tiles of `TILE` pixels overlapping by `OVERLAP`, blended with raised-cosine weights that sum to one
  (tile corners aligned to the U-Net's pooling grid).
* **Files.** 8/16-bit or float TIFF / PNG, RGB or a raw Bayer mosaic; `--input linear` (raw sensor data, the
  default) or `srgb` (decoded with the sRGB curve). Each capture gives NAME.png (8-bit sRGB, for viewing)
  and NAME.tiff (16-bit *linear*, full scale 65535), RGB for several wavelengths (each in its sRGB band,
  `rgb_from_channels`), grey for one; `reconstruct.json` records the settings.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensdesign.errors import LensdesignError

TILE = 512  # U-Net tile (pixels of the output grid)
OVERLAP = 128  # overlap between U-Net tiles (pixels; ≥ twice the reach of a depth-3 U-Net), raised-cosine blending
DEPTH_MATCH = 0.01  # a calibrated depth matches a reference depth within 1 % (of the larger diopter value, ≥ 0.01 D)


def _diopters(z: float) -> float:
    return 0.0 if math.isinf(z) else 1.0 / z


def load_psf_file(path: Path, wavelengths: list[float], pitch: float) -> tuple[np.ndarray, list[float]]:
    """(PSF stack (D, C, P, P) float64, depths m) from a psf.npz (or a folder holding one), checked against the
    run's wavelengths and sensor pitch."""
    f = path / "psf.npz" if path.is_dir() else path
    if not f.is_file():
        raise LensdesignError(f"--psf: {f}: no such file; give the folder written by 'lensdesign calibrate'")
    try:
        with np.load(f, allow_pickle=False) as z:
            psf = np.asarray(z["psf"], dtype=np.float64)
            depths = [float(v) for v in np.asarray(z["depths_m"], dtype=np.float64).ravel()]
            wls = np.asarray(z["wavelengths_m"], dtype=np.float64).ravel()
            pm = float(z["pitch_m"])
    except Exception as e:
        raise LensdesignError(f"--psf: {f}: not a PSF stack ({e.__class__.__name__}); re-run 'lensdesign calibrate'") from None
    if psf.ndim != 4 or psf.shape[0] != len(depths) or psf.shape[-1] != psf.shape[-2]:
        raise LensdesignError(f"--psf: {f}: psf {psf.shape} is not (depth, channel, P, P); re-run 'lensdesign calibrate'")
    if psf.shape[1] != len(wavelengths) or not np.allclose(wls, wavelengths, rtol=1e-6):
        raise LensdesignError(f"--psf: {f}: wavelengths {np.round(wls * 1e9).tolist()} nm do not match the run's "
                              f"{[round(w * 1e9) for w in wavelengths]} nm; calibrate for this run")
    if abs(pm - pitch) > 1e-6 * pitch:
        raise LensdesignError(f"--psf: {f}: pitch {pm * 1e6:.4g} um is not the run's sensor pitch {pitch * 1e6:.4g} um; "
                              "calibrate for this run")
    if not np.isfinite(psf).all() or (psf.sum(axis=(-2, -1)) <= 0).any():
        raise LensdesignError(f"--psf: {f}: non-finite or empty PSFs; re-run 'lensdesign calibrate'")
    return psf, depths


def pick_depths(stack: np.ndarray, depths: list[float], wanted: list[float], source: str) -> np.ndarray:
    """(len(wanted), C, P, P): for each wanted depth the PSF of `stack` at the same depth (within DEPTH_MATCH)."""
    out = []
    for z in wanted:
        dz = [abs(_diopters(d) - _diopters(z)) for d in depths]
        i = int(np.argmin(dz))
        if dz[i] > DEPTH_MATCH * max(_diopters(z), _diopters(depths[i]), 1.0):
            label = "inf" if math.isinf(z) else f"{z:g} m"
            raise LensdesignError(f"--psf: {source} has no PSF at {label}, a depth the run's reconstruction uses; "
                                  "calibrate at the spec's depths")
        out.append(stack[i])
    return np.stack(out)


def reference_psf(spec: Any, design: Any, psf_path: Path | None, quantized: bool = True) -> tuple[np.ndarray, str]:
    """The PSF (C, P, P), unit sum per channel, that the reconstruction deconvolves with, and where it came from."""
    from lensdesign.camera.calibrate import simulated_psfs, unit_sum
    from lensdesign.optics.psf import plan_grid
    from lensdesign.system import make_task

    wanted = make_task(spec).reference_depths()
    if psf_path is None:
        stack = simulated_psfs(spec, design, wanted, quantized)
        what = "simulated, design quantized to the fabrication levels" if quantized else "simulated, continuous design"
    else:
        if spec.sensor.superres_factor != 1:
            raise LensdesignError("--psf: a super-resolution run deconvolves with a PSF finer than the sensor grid; "
                                  "leave out --psf to use the simulated PSF")
        stack, depths = load_psf_file(psf_path, list(spec.wavelengths), plan_grid(spec).sensor_pitch)
        stack = pick_depths(stack, depths, wanted, str(psf_path))
        what = f"calibrated, {psf_path}"
    return unit_sum(stack).mean(0), what


def shift_channels(psf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """PSF (C, P, P) with channel c moved by −offsets[c] (pixels): deconvolving samples taken at +offset with it
    puts the result on the pixel-centre grid."""
    from lensdesign.camera.calibrate import fourier_shift

    if not offsets.any():
        return psf
    return np.stack([fourier_shift(p, (-float(o[0]), -float(o[1]))) for p, o in zip(psf, offsets, strict=True)])


def _weights(n: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """Blending weights along one axis of a tile: 1, with raised-cosine ramps over `overlap` samples at the ends
    that meet a neighbouring tile."""
    w = torch.ones(n, dtype=torch.float64)
    t = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
    up = 0.5 - 0.5 * torch.cos(math.pi * t)
    if not first:
        w[:overlap] *= up
    if not last:
        w[n - overlap:] *= up.flip(0)
    return w


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start of each tile along an axis: evenly spread, aligned down to `align`, consecutive tiles overlapping by
    at least `overlap`, the last one ending at `size`."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    starts = [round(float(v)) // align * align for v in np.linspace(0, size - tile, n)]
    starts[-1] = size - tile
    return starts


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP,
          align: int = 1) -> torch.Tensor:
    """fn applied to images (B, C, H, W) tile by tile (tile × tile, overlapping by at least `overlap`, starts
    aligned to `align`), blended with raised-cosine weights normalized to sum to one; the whole image at once
    when it fits one tile. `fn` must keep the spatial size."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    th, tw = min(tile, h), min(tile, w)
    acc: torch.Tensor | None = None
    norm = torch.zeros(h, w, dtype=torch.float64)
    for i, y0 in enumerate(ys):
        wy = _weights(th, overlap, i == 0, i == len(ys) - 1)
        for j, x0 in enumerate(xs):
            wt = wy[:, None] * _weights(tw, overlap, j == 0, j == len(xs) - 1)[None, :]
            out = fn(x[..., y0:y0 + th, x0:x0 + tw]).double()
            if acc is None:
                acc = torch.zeros(*out.shape[:-2], h, w, dtype=torch.float64)
            acc[..., y0:y0 + th, x0:x0 + tw] += out * wt
            norm[y0:y0 + th, x0:x0 + tw] += wt
    assert acc is not None
    return (acc / norm).to(x.dtype)


def reconstruct_image(y: np.ndarray, psf: np.ndarray, gamma: Any, recon: Any = None, factor: int = 1) -> np.ndarray:
    """Reconstruction (C, kH, kW) of a capture (C, H, W) (linear) with the reference PSF (C, P, P): Wiener with γ
    (scalar or per channel) on the whole frame, then the U-Net of `recon` (a learned reconstruction) in tiles."""
    from lensdesign.imaging.reconstruct import WienerPlan

    yt = torch.as_tensor(y, dtype=torch.float32)[None]
    pt = torch.as_tensor(psf, dtype=torch.float32)
    with torch.no_grad():
        plan = WienerPlan(yt, pt, factor=factor)
        if recon is None or not recon.network_parameters():
            g = torch.as_tensor(gamma if recon is None else recon.gamma, dtype=torch.float32)
            return plan.solve(g if g.dim() else float(g))[0].numpy()
        c = y.shape[0]
        x = plan.solve(recon.gamma)
        both = torch.cat([x, plan.upsampled], dim=1)
        align = 2 ** recon.unet.depth
        tile = max(2 * align, TILE // align * align)
        out = tiled(lambda t: recon.refine(t[:, :c], t[:, c:]), both, tile, min(OVERLAP, tile // 2), align)
        return out[0].numpy()


def encode_outputs(x: np.ndarray, wavelengths: list[float]) -> tuple[bytes, bytes]:
    """(8-bit sRGB PNG, 16-bit linear TIFF) of a reconstruction (C, H, W), clipped to [0, 1]."""
    import tifffile
    from PIL import Image

    from lensdesign.imaging.scenes import linear_to_srgb, rgb_from_channels

    img = np.clip(x, 0.0, 1.0)
    disp = rgb_from_channels(img, wavelengths) if len(wavelengths) > 1 else img[0]
    png = io.BytesIO()
    Image.fromarray(np.rint(np.asarray(linear_to_srgb(disp)) * 255.0).astype(np.uint8)).save(png, format="PNG")
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.rint(disp * 65535.0).astype(np.uint16),
                     photometric="rgb" if disp.ndim == 3 else "minisblack", metadata=None)
    return png.getvalue(), tif.getvalue()


def _stem(name: str) -> str:
    """Output name stem of a frame name: 'a.tif' → 'a', 'a.tif[3]' (page 3 of a stack) → 'a-3'."""
    base, _, page = name.partition("[")
    stem = base.rsplit(".", 1)[0]
    return f"{stem}-{page.rstrip(']')}" if page else stem


def _gamma(spec: Any, design: Any, recon: Any, gamma: list[float] | None) -> tuple[Any, str]:
    """(γ, where it came from): `gamma` if given (also set as the U-Net run's γ), else the U-Net run's learned γ,
    else `lensdesign.simulate.run_gamma` (learned, design.json, or tuned on the validation set)."""
    from lensdesign.simulate import run_gamma

    if gamma is not None:
        g: Any = gamma[0] if len(gamma) == 1 else list(gamma)
        if recon is not None:
            with torch.no_grad():
                recon.log_gamma.copy_(torch.as_tensor(g, dtype=torch.float32).log().expand_as(recon.log_gamma))
        return g, "--gamma"
    if recon is not None:
        return recon.gamma.detach().tolist(), "learned"
    return run_gamma(spec, design, torch.as_tensor(design.height_m, dtype=torch.float32))


def reconstruct_captures(run_path: Path, captures: list[Path], out: Path, *, psf: Path | None = None,
                         bayer: str | None = None, bit_depth: int | None = None, encoding: str = "linear",
                         quantized: bool = True, gamma: list[float] | None = None, force: bool = False,
                         on_file: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Reconstruct every frame of `captures` with a run's reconstruction; writes OUT/NAME.png, OUT/NAME.tiff and
    OUT/reconstruct.json and returns the latter's content. `on_file(done, total, name)` reports progress."""
    from lensdesign.camera.captures import (
        BAYER_PATTERNS,
        ENCODINGS,
        channel_offsets,
        check_channels,
        check_choice,
        frame_shape,
        read_captures,
        to_channels,
    )
    from lensdesign.optics.psf import plan_grid
    from lensdesign.rundir import RunDir, atomic_write_bytes, atomic_write_json

    check_choice("--bayer", bayer, BAYER_PATTERNS)
    check_choice("--input", encoding, ENCODINGS)
    run = RunDir(run_path).require()
    spec = run.load_spec()
    if out.exists() and not out.is_dir():
        raise LensdesignError(f"--out: {out} is a file; give a folder")
    caps = read_captures(captures, bit_depth)
    wls = list(spec.wavelengths)
    if gamma is not None and (len(gamma) not in (1, len(wls)) or not all(math.isfinite(v) and v > 0 for v in gamma)):
        raise LensdesignError(f"--gamma: give one positive value or one per wavelength ({len(wls)}), e.g. 0.003")
    check_channels(caps, len(wls), bayer)
    stems = [_stem(n) for n in caps.names]
    if len(set(stems)) != len(stems):
        raise LensdesignError("captures: two files have the same name stem; rename one so the outputs do not collide")
    targets = [out / f"{s}{ext}" for s in stems for ext in (".png", ".tiff")]
    if not force and (clash := [t for t in targets if t.exists()]):
        raise LensdesignError(f"--out: {clash[0]} exists; pass --force to overwrite or choose another --out")
    g = plan_grid(spec)
    fh, fw = frame_shape(caps, bayer)
    k = spec.sensor.superres_factor
    if min(fh, fw) * k < g.psf_size:
        raise LensdesignError(f"{caps.names[0]}: {fw} × {fh} pixels is smaller than the run's {g.psf_size} × "
                              f"{g.psf_size} PSF window; give full sensor frames")
    design = run.load_design(spec)
    ref, psf_from = reference_psf(spec, design, psf, quantized)
    ref = shift_channels(ref, channel_offsets(wls, bayer) * k)
    recon = design.reconstruction()
    g_used, gamma_from = _gamma(spec, design, recon, gamma)
    files = []
    n = len(caps.frames)
    out.mkdir(parents=True, exist_ok=True)
    for i, (frame, name, stem) in enumerate(zip(caps.frames, caps.names, stems, strict=True)):
        if on_file is not None:
            on_file(i, n, name)
        y = to_channels(frame, wls, bayer, caps.full_scale, encoding)
        x = reconstruct_image(y, ref, g_used, recon, k)
        png, tif = encode_outputs(x, wls)
        atomic_write_bytes(out / f"{stem}.png", png)
        atomic_write_bytes(out / f"{stem}.tiff", tif)
        files.append({"capture": name, "png": f"{stem}.png", "tiff": f"{stem}.tiff", "size": list(x.shape[-2:])})
    if on_file is not None:
        on_file(n, n, "")
    summary = {"run": str(run_path), "psf": psf_from, "reconstruction": "wiener" if recon is None else recon.kind,
               "gamma": g_used, "gamma_from": gamma_from, "input": encoding, "bayer": bayer,
               "bit_depth": caps.bit_depth, "superres_factor": k,
               "outputs": "NAME.png 8-bit sRGB; NAME.tiff 16-bit linear (full scale 65535)", "files": files}
    atomic_write_json(out / "reconstruct.json", summary)
    return summary

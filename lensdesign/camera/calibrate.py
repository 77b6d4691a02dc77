"""Calibrate the fabricated element's PSFs from point-source captures onto a run's sensor grid.

For each capture (one per depth, in the order of the depths; `average` consecutive exposures per depth are
averaged first):

1. **Dark / background.** The dark frame, if given, is subtracted; then a robust background per channel from
   a border strip (width max(2, min(H, W) / 10)): the mean and standard deviation σ of the strip's values
   within 4 · 1.4826 · MAD of its median (robust to stars and hot pixels, unbiased on quantized values).
2. **Hot pixels.** A pixel is hot when it stands more than 6 σ above the median of its 3 × 3 neighbourhood,
   at least twice that median, *and* more than 8 times as far above it as its second-brightest neighbour: a
   spike (or a pair). The peak of a real PSF, however sharp, drags several neighbours up with it
   (diffraction and pixel integration), and a sharp core of one colour on a wide halo sits where the other
   colours peak too: a pixel next to a local maximum of the other channels is never hot. Hot pixels are
   replaced by that median; two passes. A pixel at full scale that is not a hot pixel means a saturated PSF:
   refused.
3. **Point source.** The PSF must stand out: its brightest 3 × 3 box more than 10 σ above the background.
4. **Sub-pixel centring.** The energy centroid of all channels together (pixels more than 3 σ above the
   background, iterated on a P × P window, P the run's PSF window) is moved onto the centroid of the
   simulated PSF of the design at the same depth, measured the same way. The optical axis then sits where the
   simulation puts it, also for PSFs without symmetry (a cubic phase plate). The move is a Fourier phase ramp
   (`scipy.ndimage.fourier_shift`) on a region a few pixels larger than the window, per channel, including
   each channel's Bayer photosite offset (see `lensdesign.camera.captures`). A Fourier shift is exact only
   for band-limited samples, and a sensor usually under-samples the PSF (it aliases), so the shift is
   model-assisted (`resample`): the design's PSF displaced by the same sub-pixel amount is computed exactly
   (a tilted source wave, before pixel integration), and the window is the design's on-axis PSF plus the
   Fourier-shifted residual of the capture against it. What differs between element and design is carried
   by the residual; the report gives the model's share of each PSF (0 where the design explains less than
   half of the capture: there the Fourier shift alone is used).
5. **Crop and normalize.** The P × P window, each channel scaled to unit sum: a capture does not know the
   source's power, so the calibrated PSF keeps the shape and the reconstruction keeps the capture's brightness.

Output (PSFDIR): `psf.npz` (`psf` float32 (depth, channel, P, P), `depths_m`, `wavelengths_m`, `pitch_m`: the
layout `lensdesign psf` writes) and a calibration report, `calibration.json`, `calibration.html` and
`calibration.png`: per PSF its Strehl-like peak (the brightest pixel's share of the energy), FWHM and 80 %
encircled-energy radius, next to the simulated PSF of the design quantized to `fabrication.levels` (as
built), and the relative L2 distance ‖calibrated − simulated‖ / ‖simulated‖ of the unit-sum PSFs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensdesign.camera.captures import Captures, channel_offsets
from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec

HOT_SIGMA = 6.0  # a hot pixel stands this many σ above its 3 × 3 median …
HOT_RATIO = 8.0  # … and this many times further above it than its second-brightest neighbour
DETECT_SIGMA = 10.0  # the PSF's brightest 3 × 3 box must stand this many σ (of the box mean) above the background
CENTROID_SIGMA = 3.0  # pixels counted in the centroid: more than this many σ above the background
MARGIN = 4  # extra pixels on each side of the window for the Fourier shift
MODEL_RESIDUAL = 0.5  # model-assisted resampling only where the design explains the capture to within this (L2)
SIGMA_FLOOR = 1e-6  # noise floor (full scale 1) for noise-free synthetic captures


@dataclass
class Cleaned:
    """A capture after dark / background subtraction and hot-pixel removal (linear, full scale 1)."""

    image: np.ndarray  # (C, H, W)
    background: np.ndarray  # (C,)
    sigma: np.ndarray  # (C,) read noise estimated from the border
    hot_pixels: int
    peak_snr: float  # brightest 3 × 3 box of the channel sum, in σ of the box mean


def border_statistics(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background, noise σ) per channel of (C, H, W): clipped mean and deviation of a border strip of width
    max(2, min(H, W) // 10) (see the module doc)."""
    h, w = img.shape[-2:]
    b = max(2, min(h, w) // 10)
    mask = np.ones((h, w), dtype=bool)
    mask[b:h - b, b:w - b] = False
    strip = img[:, mask]
    med = np.median(strip, axis=1)
    mad = np.maximum(1.4826 * np.median(np.abs(strip - med[:, None]), axis=1), SIGMA_FLOOR)
    keep = np.abs(strip - med[:, None]) <= 4 * mad[:, None]
    n = keep.sum(1)
    mean = (strip * keep).sum(1) / n  # clipped mean and deviation: unbiased on quantized data, unlike the MAD
    sigma = np.sqrt((np.square(strip - mean[:, None]) * keep).sum(1) / np.maximum(n - 1, 1))
    return mean, np.maximum(sigma, SIGMA_FLOOR)


def hot_pixel_mask(img: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hot-pixel mask (C, H, W), 3 × 3 median (C, H, W)) of background-subtracted channels (see module doc)."""
    from scipy import ndimage

    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    med = np.stack([ndimage.median_filter(c, size=3, mode="reflect") for c in img])
    nbr = np.stack([ndimage.rank_filter(c, -2, footprint=ring, mode="reflect") for c in img])
    excess = img - med
    hot = ((excess > HOT_SIGMA * sigma[:, None, None]) & (excess > 0.5 * img)
           & (excess > HOT_RATIO * np.maximum(nbr - med, 0.0)))
    if img.shape[0] > 1:  # a sharp core on a wide halo (one colour) is real where the other colours peak too
        for c in range(img.shape[0]):
            other = np.delete(img, c, axis=0).sum(0)
            s_other = float(np.sqrt((np.delete(sigma, c) ** 2).sum()))
            peak = (other >= ndimage.maximum_filter(other, size=3, mode="reflect")) & (other > HOT_SIGMA * s_other)
            hot[c] &= ~ndimage.binary_dilation(peak, np.ones((3, 3), dtype=bool))
    return hot, med


def clean_capture(img: np.ndarray, dark: np.ndarray | None, sat: np.ndarray, name: str) -> Cleaned:
    """Dark / background subtraction, hot-pixel removal and the saturation and point-source tests of one capture
    (C, H, W) with its full-scale mask `sat` (H, W)."""
    x = img - dark if dark is not None else img.copy()
    bg, sigma = border_statistics(x)
    x -= bg[:, None, None]
    anyhot = np.zeros(x.shape[-2:], dtype=bool)
    for _ in range(2):  # a second pass finds the dimmer member of a pair of neighbouring hot pixels
        hot, med = hot_pixel_mask(x, sigma)
        x[hot] = med[hot]
        anyhot |= hot.any(0)
    left = sat & ~anyhot
    if left.any():
        raise LensdesignError(f"{name}: {int(left.sum())} pixels of the point source at full scale: the PSF is "
                              "saturated; shorten the exposure or dim the source")
    from scipy import ndimage

    total = x.sum(0)
    box = ndimage.uniform_filter(total, size=3, mode="constant")
    s_box = float(np.sqrt((sigma**2).sum())) / 3.0
    snr = float(box.max() / s_box)
    if snr < DETECT_SIGMA:
        raise LensdesignError(f"{name}: no point source found (brightest spot {snr:.1f} σ above the background, "
                              f"need {DETECT_SIGMA:.0f}); check the exposure, the source and the file")
    return Cleaned(image=x, background=bg, sigma=sigma, hot_pixels=int(anyhot.sum()), peak_snr=snr)


def thresholded_centroid(img: np.ndarray, threshold: float) -> tuple[float, float]:
    """Energy centroid (y, x) in samples of the part of a 2-D image above `threshold`."""
    from lensdesign.analysis.metrics import centroid

    w = np.clip(img - threshold, 0.0, None)
    if w.sum() <= 0:
        raise LensdesignError("no energy above the noise in the PSF window; check the capture")
    return centroid(w)


def locate(total: np.ndarray, sigma: float, p: int, name: str) -> tuple[float, float]:
    """Centroid (y, x) in pixels of the point source in a background-free channel sum (H, W), refined on a
    P × P window that follows it (see module doc)."""
    from scipy import ndimage

    h, w = total.shape
    smooth = ndimage.uniform_filter(total, size=max(3, p // 4 | 1), mode="constant")
    cy, cx = (float(v) for v in np.unravel_index(int(np.argmax(smooth)), smooth.shape))
    half = p // 2
    for _ in range(8):
        y0 = min(max(round(cy) - half, 0), h - p)
        x0 = min(max(round(cx) - half, 0), w - p)
        ty, tx = thresholded_centroid(total[y0:y0 + p, x0:x0 + p], CENTROID_SIGMA * sigma)
        ny, nx = y0 + ty, x0 + tx
        if abs(ny - cy) < 1e-3 and abs(nx - cx) < 1e-3:
            break
        cy, cx = ny, nx
    return cy, cx


def fourier_shift(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """2-D image moved by `shift` (dy, dx) pixels: out(y, x) = img(y − dy, x − dx), by a Fourier phase ramp."""
    from scipy import ndimage

    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift)).real


def window_regions(cleaned: np.ndarray, origin: tuple[float, float], offsets: np.ndarray, size: int, margin: int,
                   name: str) -> tuple[np.ndarray, np.ndarray]:
    """(regions (C, S + 2m, S + 2m), fractional parts (C, 2)) of `cleaned` (C, H, W): for each channel the
    integer-aligned region whose sample `margin` + (i, j) lies (f_y, f_x) pixels before the window point
    `origin` + (i, j) (capture pixels), channel c's samples sitting at `offsets[c]` (Bayer photosites)."""
    h, w = cleaned.shape[-2:]
    n = size + 2 * margin
    regions = np.empty((cleaned.shape[0], n, n))
    frac = np.empty((cleaned.shape[0], 2))
    for c in range(cleaned.shape[0]):
        oy, ox = origin[0] - offsets[c, 0], origin[1] - offsets[c, 1]
        iy, ix = math.floor(oy) - margin, math.floor(ox) - margin
        if iy < 0 or ix < 0 or iy + n > h or ix + n > w:
            raise LensdesignError(f"{name}: the point source at pixel ({origin[0] + size // 2:.0f}, "
                                  f"{origin[1] + size // 2:.0f}) is too close to the border for the {size} × {size} "
                                  "PSF window; centre the source in the capture")
        regions[c] = cleaned[c, iy:iy + n, ix:ix + n]
        frac[c] = (oy - math.floor(oy), ox - math.floor(ox))
    return regions, frac


def resample(regions: np.ndarray, frac: np.ndarray, model: np.ndarray, model0: np.ndarray,
             margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-assisted sub-pixel resampling: (window PSFs (C, P, P), the model's share (C,)).

    `regions` (C, P + 2m, P + 2m) hold the capture with the window's sample grid moved by `frac` (C, 2) pixels;
    `model` is the design's PSF displaced the same way (computed exactly, before pixel integration) on the
    regions' grid and `model0` the design's PSF on the window. A Fourier shift alone is exact only for
    band-limited samples, and the sensor under-samples a diffraction-limited PSF (aliasing), so the window is
    the model's PSF plus the Fourier-shifted residual of the capture against the model:
    E · model0 + shift(region − E · model), E the capture's energy over the model's. The share reported is
    ‖E · (model0 − shift(model))‖ / ‖result‖, the part that comes from the model rather than the capture.
    A channel whose residual exceeds MODEL_RESIDUAL of the capture (the element is not the design) is shifted
    alone (share 0).
    """
    p = model0.shape[-1]
    out = np.empty((regions.shape[0], p, p))
    share = np.zeros(regions.shape[0])
    crop = (slice(margin, margin + p), slice(margin, margin + p))
    for c in range(regions.shape[0]):
        e = regions[c].sum() / model[c].sum()
        d = (-float(frac[c, 0]), -float(frac[c, 1]))
        resid = regions[c] - e * model[c]
        if np.linalg.norm(resid) > MODEL_RESIDUAL * np.linalg.norm(regions[c]):
            out[c] = fourier_shift(regions[c], d)[crop]  # the design does not describe this element: shift alone
            continue
        out[c] = e * model0[c] + fourier_shift(resid, d)[crop]
        corr = e * (model0[c] - fourier_shift(model[c], d)[crop])
        share[c] = np.linalg.norm(corr) / max(float(np.linalg.norm(out[c])), 1e-30)
    return out, share


def simulated_psfs(spec: Spec, design: Any, depths: list[float], quantized: bool = True,
                   shifts_px: np.ndarray | None = None, psf_size: int | None = None) -> np.ndarray:
    """PSFs (D, C, P, P) float64 of a run's design at `depths` (m) on the sensor grid, the height map quantized to
    the design's levels (as built) unless `quantized` is False.

    `shifts_px` (D, C, 2): displace each PSF by (dy, dx) sensor pixels, as a point source slightly off axis does
    (the source wave tilted by sin θ = shift · pitch / sensor distance; exact before pixel integration).
    `psf_size`: window in sensor pixels (default the run's).
    """
    import torch

    from lensdesign.optics.psf import OpticalSystem, PSFStack, coords

    h = design.quantized() if quantized else design.height_m
    system = OpticalSystem(spec, depths=depths, psf_size=psf_size)
    g = system.grid
    src = system.src
    if shifts_px is not None:
        y, x = coords(g.n, g.dx)
        sin = torch.as_tensor(np.asarray(shifts_px, dtype=np.float64)) * (g.sensor_pitch / spec.optics.sensor_distance)
        k = (2 * math.pi / torch.tensor(system.wavelengths, dtype=torch.float64))[None, :, None, None]
        phase = k * (sin[..., 0, None, None] * y + sin[..., 1, None, None] * x)
        src = src * torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
    with torch.no_grad():
        return PSFStack.apply(torch.as_tensor(np.asarray(h), dtype=torch.float32), system, src).double().numpy()


def full_field(spec: Spec) -> int:
    """Largest odd PSF window (sensor pixels) the simulated field holds."""
    from lensdesign.optics.psf import plan_grid

    g = plan_grid(spec)
    f = g.m // g.bin
    return f - 1 + f % 2


def unit_sum(psf: np.ndarray) -> np.ndarray:
    """PSFs (…, P, P) scaled to unit sum each."""
    s = psf.sum(axis=(-2, -1), keepdims=True)
    return psf / np.where(s > 0, s, 1.0)


def psf_measures(psf: np.ndarray, pitch: float) -> dict[str, float]:
    """Strehl-like peak (brightest sample / sum), FWHM (µm) and 80 % encircled-energy radius (µm) of a PSF."""
    from lensdesign.analysis.metrics import ee_radius, fwhm

    p = np.asarray(psf, dtype=np.float64)
    return {"peak_fraction": round(float(p.max() / p.sum()), 5),
            "fwhm_um": round(fwhm(p, pitch) * 1e6, 3),
            "ee80_radius_um": round(ee_radius(p, pitch, 0.8) * 1e6, 3)}


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ over the last two axes."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def parse_depths(text: str | None, spec: Spec, count: int) -> list[float]:
    """Depths (m) of the captures: `--depths` ('0.5 m, 1 m, inf'), else the spec's depths (one capture each)."""
    from lensdesign.spec import parse_length

    if text is None:
        if count != len(spec.depths_m):
            raise LensdesignError(f"{count} point-source captures for the spec's {len(spec.depths_m)} depths; give one "
                                  "capture per depth or name the depths with --depths '0.5 m, 1 m, inf'")
        return list(spec.depths_m)
    try:
        depths = [parse_length(t.strip(), allow_inf=True) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise LensdesignError(f"--depths: {e}") from None
    if len(depths) != count or any(z <= 0 for z in depths):
        raise LensdesignError(f"--depths: {len(depths)} positive depths for {count} captures; give one per capture")
    return depths


def _load_dark(dark: Path | None, caps: Captures, bit_depth: int | None, channels: Any) -> np.ndarray | None:
    from lensdesign.camera.captures import check_same_format, read_captures

    if dark is None:
        return None
    d = read_captures([dark], bit_depth, what="dark")
    if len(d.frames) != 1:
        raise LensdesignError(f"--dark: {dark.name} holds {len(d.frames)} frames; give one dark frame")
    check_same_format(d, caps)
    return channels(d.frames[0])


def calibrate_capture(cl: Cleaned, name: str, spec: Spec, design: Any, depth: float, sim_raw: np.ndarray,
                      offsets: np.ndarray, p: int, margin: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(PSF (C, P, P), the model's share per channel, what the report says about the capture) of one cleaned
    capture at `depth` (m), `sim_raw` (C, P, P) the design's PSF there: locate, centre, resample (module doc)."""
    s_tot = float(np.sqrt((cl.sigma**2).sum()))
    cy, cx = locate(cl.image.sum(0), s_tot, p, name)
    y0, x0 = round(cy) - p // 2, round(cx) - p // 2
    win = cl.image[:, max(y0, 0):y0 + p, max(x0, 0):x0 + p].sum(axis=(-2, -1)).clip(min=0)
    if (win <= 0).any():
        raise LensdesignError(f"{name}: a colour channel holds no light in the PSF window; check the source's "
                              "spectrum and --bayer")
    w_off = (win[:, None] * offsets).sum(0) / float(win.sum())
    centre = (cy + float(w_off[0]), cx + float(w_off[1]))
    target = thresholded_centroid((unit_sum(sim_raw) * win[:, None, None]).sum(0), CENTROID_SIGMA * s_tot)
    origin = (centre[0] - target[0], centre[1] - target[1])
    regions, frac = window_regions(cl.image, origin, offsets, p, margin, name)
    model = simulated_psfs(spec, design, [depth], shifts_px=frac[None], psf_size=p + 2 * margin)[0]
    psf, share = resample(regions, frac, model, sim_raw, margin)
    if (psf.sum(axis=(-2, -1)) <= 0).any():
        raise LensdesignError(f"{name}: a colour channel holds no light in the PSF window; check the source's "
                              "spectrum and --bayer")
    info = {"position_px": [round(centre[0], 3), round(centre[1], 3)],
            "background": [round(float(v), 6) for v in cl.background],
            "noise_sigma": [round(float(v), 6) for v in cl.sigma], "hot_pixels": cl.hot_pixels,
            "peak_snr": round(cl.peak_snr, 1)}
    return psf, share, info


def calibrate(run_path: Path, captures: list[Path], out: Path, *, dark: Path | None = None, bayer: str | None = None,
              depths: str | None = None, bit_depth: int | None = None, average: int = 1,
              force: bool = False) -> dict[str, Any]:
    """Calibrate PSFs from point-source captures of a run's element; writes OUT/psf.npz and the calibration
    report (json, html, png) and returns the report's content. `average`: consecutive frames per depth, averaged
    (several exposures of the same source lower the noise)."""
    from lensdesign.camera.captures import (
        BAYER_PATTERNS,
        check_channels,
        check_choice,
        frame_shape,
        read_captures,
        saturated,
        to_channels,
    )
    from lensdesign.optics.psf import plan_grid
    from lensdesign.rundir import RunDir

    check_choice("--bayer", bayer, BAYER_PATTERNS)
    run = RunDir(run_path).require()
    spec = run.load_spec()
    if spec.sensor.superres_factor != 1:
        raise LensdesignError(f"{run_path}: a super-resolution run simulates its PSF on a grid finer than the sensor; "
                              "calibrated PSFs are on the sensor grid, so reconstruct it with the simulated PSF")
    if out.exists() and not out.is_dir():
        raise LensdesignError(f"--out: {out} is a file; give a folder")
    if (out / "psf.npz").exists() and not force:
        raise LensdesignError(f"--out: {out / 'psf.npz'} exists; pass --force to overwrite it or choose another --out")
    caps = read_captures(captures, bit_depth)
    wls = list(spec.wavelengths)
    check_channels(caps, len(wls), bayer)
    if average < 1 or len(caps.frames) % average:
        raise LensdesignError(f"--average: {len(caps.frames)} frames do not split into groups of {average}; give the same "
                              "number of exposures for every depth")
    zs = parse_depths(depths, spec, len(caps.frames) // average)
    g = plan_grid(spec)
    p = g.psf_size
    margin = max(0, min(MARGIN, (full_field(spec) - p) // 2))
    fh, fw = frame_shape(caps, bayer)
    if min(fh, fw) < p + 2 * margin + 2:
        raise LensdesignError(f"{caps.names[0]}: {fw} × {fh} pixels{' (Bayer quads)' if bayer else ''} is smaller than the "
                              f"run's {p} × {p} PSF window plus {margin + 1} pixels per side; capture a larger region")

    def channels(frame: np.ndarray) -> np.ndarray:
        return to_channels(frame, wls, bayer, caps.full_scale)

    dk = _load_dark(dark, caps, bit_depth, channels)
    groups = [range(i * average, (i + 1) * average) for i in range(len(zs))]
    names = [caps.names[gr[0]] + (f" (+{average - 1} averaged)" if average > 1 else "") for gr in groups]
    cleaned = [clean_capture(np.mean([channels(caps.frames[j]) for j in gr], axis=0), dk,
                             np.any([saturated(caps.frames[j], caps.full_scale, bayer) for j in gr], axis=0), n)
               for gr, n in zip(groups, names, strict=True)]
    design = run.load_design(spec)
    sim_raw = simulated_psfs(spec, design, zs)
    sim = unit_sum(sim_raw)
    offsets = channel_offsets(wls, bayer)
    cal = np.empty_like(sim)
    frames_info = []
    shares = np.empty(sim.shape[:2])
    for i, (cl, name) in enumerate(zip(cleaned, names, strict=True)):
        psf, shares[i], info = calibrate_capture(cl, name, spec, design, zs[i], sim_raw[i], offsets, p, margin)
        cal[i] = unit_sum(psf)
        frames_info.append({"capture": name, "depth_m": None if math.isinf(zs[i]) else zs[i], **info})
    pitch = g.sensor_pitch
    rows = _psf_rows(cal, sim, shares, zs, wls, pitch)
    report = {
        "run": str(run_path), "psf_file": "psf.npz", "psf_shape": list(cal.shape), "pitch_m": pitch,
        "depths_m": [None if math.isinf(z) else z for z in zs], "wavelengths_m": wls,
        "captures": caps.names, "frames_averaged": average, "dark": None if dark is None else dark.name, "bayer": bayer,
        "bit_depth": caps.bit_depth,
        "simulated": f"design quantized to {design.levels} levels (as built)",
        "centring": "centroid of all channels (pixels > 3 σ) moved onto the simulated PSF's centroid; Fourier phase ramp",
        "normalization": "unit sum per depth and channel",
        "frames": frames_info, "psfs": rows,
        "max_relative_l2": round(max(r["relative_l2"] for r in rows), 5),
    }
    _write_calibration(out, report, cal, sim, zs, wls, pitch)
    return report


def _psf_rows(cal: np.ndarray, sim: np.ndarray, shares: np.ndarray, zs: list[float], wls: list[float],
              pitch: float) -> list[dict[str, Any]]:
    """One report row per (depth, wavelength): PSF measures of the calibrated and simulated PSF (pitch in m),
    their relative L2 distance and the share of the capture the model explains."""
    return [{"depth_m": None if math.isinf(z) else z, "wavelength_m": wl,
             "calibrated": psf_measures(cal[i, c], pitch), "simulated": psf_measures(sim[i, c], pitch),
             "relative_l2": round(relative_l2(cal[i, c], sim[i, c]), 5), "model_share": round(float(shares[i, c]), 5)}
            for i, z in enumerate(zs) for c, wl in enumerate(wls)]


def _write_calibration(out: Path, report: dict[str, Any], cal: np.ndarray, sim: np.ndarray, zs: list[float],
                       wls: list[float], pitch: float) -> None:
    """OUT/psf.npz (PSFs (D, C, P, P), depths, wavelengths, pitch in m) and the report as json, html and png; every
    file built in memory first and written atomically."""
    from lensdesign.rundir import atomic_write_bytes, atomic_write_json

    buf = io.BytesIO()
    np.savez(buf, psf=cal.astype(np.float32), depths_m=np.array(zs, dtype=np.float64),
             wavelengths_m=np.array(wls, dtype=np.float64), pitch_m=np.float64(pitch))
    figure = calibration_figure(cal, sim, zs, wls)
    page = calibration_page(report).encode()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "calibration.png", figure)
    atomic_write_json(out / "calibration.json", report)
    atomic_write_bytes(out / "calibration.html", page)
    atomic_write_bytes(out / "psf.npz", buf.getvalue())


def _depth_label(z: float) -> str:
    return "∞" if math.isinf(z) else f"{z:g} m"


def calibration_figure(cal: np.ndarray, sim: np.ndarray, depths: list[float], wavelengths: list[float]) -> bytes:
    """PNG: one row per depth, calibrated and simulated PSF side by side per wavelength (square-root scale)."""
    from matplotlib.figure import Figure

    d, c = cal.shape[:2]
    fig = Figure(figsize=(1.7 * 2 * c, 1.8 * d + 0.4), layout="constrained")
    axes = fig.subplots(d, 2 * c, squeeze=False)
    for i in range(d):
        for j in range(c):
            vmax = float(np.sqrt(max(cal[i, j].max(), sim[i, j].max(), 1e-30)))
            for k, (img, what) in enumerate(((cal[i, j], "calibrated"), (sim[i, j], "simulated"))):
                ax = axes[i, 2 * j + k]
                ax.imshow(np.sqrt(np.clip(img, 0, None)), cmap="magma", vmin=0, vmax=vmax, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{what}\n{wavelengths[j] * 1e9:.0f} nm, {_depth_label(depths[i])}", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def calibration_page(report: dict[str, Any]) -> str:
    """The calibration report as a small HTML page (templates/calibration.html.j2, autoescaped)."""
    from lensdesign.analysis.report_page import environment

    return environment().get_template("calibration.html.j2").render(r=report)

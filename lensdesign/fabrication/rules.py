"""Design-rule checks of a quantized design: feature and gap sizes, fill factors, and the focusing efficiency
kept under mask-to-mask misalignment.

Features are measured on the pixel grid, along rows and along columns: the smallest run of 1s of a binary mask
(a feature) and the smallest run of 0s between two 1s (a gap), times the pitch. For a single-exposure (grayscale)
map, a feature is a run of one level between two level changes.

Misalignment: mask j shifted by (dx, dy) covers, in each pixel, an area fraction c (bilinear in the sub-pixel
shift, exact for a pixel mask). The pixel then transmits (1 − c) + c·exp(iφ_j) times the rest of its phase, with
φ_j the phase of mask j's etch step at the design wavelength; independent masks multiply. The PSF of that
transmission at the design wavelength and the focus depth is compared with the PSF of the aligned, quantized design:
the efficiency kept is the ratio of the energies within the Airy-core radius 1.22 λ z / D around the aligned PSF's
peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lensdesign.fabrication.runs import true_runs
from lensdesign.spec import CustomMaterial, Spec


@dataclass
class Runs:
    """Smallest feature and gap (pixels) of a binary mask along rows and columns, and counts below a limit."""

    min_feature_px: int | None
    min_gap_px: int | None
    features_below: int
    gaps_below: int


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of runs of True (features) and of False between two Trues (gaps), along each row."""
    r, s, e = true_runs(mask)
    feat = e - s
    same_row = r[1:] == r[:-1]
    gaps = (s[1:] - e[:-1])[same_row]
    return feat, gaps


def run_lengths(mask: np.ndarray, limit_px: float = 0.0) -> Runs:
    """Smallest feature and gap of a binary mask along rows and columns (pixels); counts of runs below `limit_px`."""
    f1, g1 = _row_runs(mask)
    f2, g2 = _row_runs(mask.T)
    feat = np.concatenate([f1, f2])
    gaps = np.concatenate([g1, g2])
    return Runs(int(feat.min()) if feat.size else None, int(gaps.min()) if gaps.size else None,
                int((feat < limit_px - 1e-9).sum()), int((gaps < limit_px - 1e-9).sum()))


def plateau_lengths(levels: np.ndarray, inside: np.ndarray, limit_px: float = 0.0) -> Runs:
    """Smallest run of one level between two level changes, along rows and columns, inside the aperture (pixels)."""
    out = []
    for lv, ins in ((levels, inside), (levels.T, inside.T)):
        change = np.ones(lv.shape, dtype=bool)
        change[:, 1:] = lv[:, 1:] != lv[:, :-1]
        r, s = np.nonzero(change)
        e = np.empty_like(s)
        e[:-1] = s[1:]
        last = np.ones(len(s), dtype=bool)
        last[:-1] = r[1:] != r[:-1]
        e[last] = lv.shape[1]
        # a plateau counts when bounded by level changes on both sides, and lies inside the aperture
        bounded = (s > 0) & ~last & ins[r, s] & ins[r, e - 1]
        out.append((e - s)[bounded])
    runs = np.concatenate(out)
    return Runs(int(runs.min()) if runs.size else None, None, int((runs < limit_px - 1e-9).sum()), 0)


def fill_factor(mask: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of the aperture's pixels covered by the mask."""
    n = int(inside.sum())
    return float(mask[inside].sum() / n) if n else 0.0


# ---- misalignment ----------------------------------------------------------------------------------------------
def shifted_coverage(mask: np.ndarray, dy_px: float, dx_px: float) -> np.ndarray:
    """Area fraction of each pixel covered by `mask` shifted by (dy, dx) pixels (bilinear; zero outside)."""
    out = mask.astype(np.float64)
    for axis, d in ((0, dy_px), (1, dx_px)):
        if d == 0:
            continue
        k = math.floor(d)
        f = d - k
        a = _shift_int(out, k, axis)
        b = _shift_int(out, k + 1, axis)
        out = (1 - f) * a + f * b
    return out


def _shift_int(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """x shifted by k whole pixels along `axis` (towards higher indices for k > 0), zero filled."""
    out = np.zeros_like(x)
    n = x.shape[axis]
    if abs(k) >= n:
        return out
    src = [slice(None)] * 2
    dst = [slice(None)] * 2
    if k >= 0:
        src[axis], dst[axis] = slice(0, n - k), slice(k, n)
    else:
        src[axis], dst[axis] = slice(-k, n), slice(0, n + k)
    out[tuple(dst)] = x[tuple(src)]
    return out


def focus_spec(spec: Spec) -> Spec:
    """A copy of the spec with only the design wavelength (and its refractive index), for a fast focus PSF."""
    wl = spec.design_wavelength_m
    optics = spec.optics
    if isinstance(optics.material, CustomMaterial):
        optics = optics.model_copy(update={"material": CustomMaterial(index=[spec.design_index], name=optics.material.name)})
    return spec.model_copy(update={"wavelengths": [wl], "optics": optics})


class FocusModel:
    """PSF at the design wavelength and the focus depth, sampled at the element pitch around the axis."""

    def __init__(self, spec: Spec, airy_cores: float = 4.0) -> None:
        from lensdesign.optics.psf import OpticalSystem, plan_grid

        s1 = focus_spec(spec)
        g = plan_grid(s1, bin_override=1)
        wl = spec.design_wavelength_m
        self.airy_px = 1.22 * wl * spec.optics.sensor_distance / spec.optics.aperture / g.dx
        size = 2 * math.ceil(airy_cores * max(self.airy_px, 2.0)) + 1
        size = min(size, g.m - (1 - g.m % 2))
        self.system = OpticalSystem(s1, depths=[spec.focus_depth_m], psf_size=size, bin_override=1)
        self.phase_per_m = float(self.system.phase_per_m[0])

    def psf(self, transmission: np.ndarray) -> np.ndarray:
        """PSF (P, P) of a complex transmission (N, N), unit input power, with the same propagation as the PSF stack."""
        from lensdesign.optics.forward import pupil_psf

        s = self.system
        g = s.grid
        t = torch.as_tensor(transmission, dtype=torch.complex64, device=s.device)
        return pupil_psf(s.src[0, 0] * t, s.h_window[0], g.psf_size, g.bin).cpu().numpy().astype(np.float64)

    def core_energy(self, p: np.ndarray, centre: tuple[int, int]) -> float:
        """Energy within the Airy-core radius around `centre`."""
        yy, xx = np.indices(p.shape)
        r2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
        return float(p[r2 <= self.airy_px**2].sum())


def misalignment_report(spec: Spec, masks: list[np.ndarray], shift_m: float, pitch_m: float,
                        etch_depths_m: list[float]) -> dict:
    """Efficiency kept (core energy and peak, vs the aligned quantized design) when masks are shifted by `shift_m`.

    Cases: each mask j ≥ 1 alone shifted along +x and +y (the worse is kept), and all masks j ≥ 1 shifted together
    in the same direction and in turning directions (0°, 90°, 180°, …); mask 1 is the reference the others align to.
    """
    model = FocusModel(spec)
    ph = [model.phase_per_m * d for d in etch_depths_m]
    steps = [np.exp(1j * p) for p in ph]
    cov0 = [m.astype(np.float64) for m in masks]

    def transmission(cov: list[np.ndarray]) -> np.ndarray:
        t = np.ones(masks[0].shape, dtype=np.complex128)
        for c, e in zip(cov, steps, strict=True):
            t *= (1 - c) + c * e
        return t

    ref = model.psf(transmission(cov0))
    peak = np.unravel_index(int(np.argmax(ref)), ref.shape)
    e_ref = model.core_energy(ref, peak)
    p_ref = float(ref[peak])
    d = shift_m / pitch_m

    def kept(shifts: dict[int, tuple[float, float]]) -> tuple[float, float]:
        cov = [shifted_coverage(masks[j], *shifts[j]) if j in shifts else cov0[j] for j in range(len(masks))]
        p = model.psf(transmission(cov))
        return model.core_energy(p, peak) / e_ref, float(p[peak]) / p_ref

    per_mask = []
    for j in range(1, len(masks)):
        cases = [kept({j: (0.0, d)}), kept({j: (d, 0.0)})]
        worst = min(cases)
        per_mask.append({"mask": j + 1, "core_energy_kept": worst[0], "peak_kept": worst[1]})
    together = []
    if len(masks) > 1:
        together.append(kept({j: (0.0, d) for j in range(1, len(masks))}))
        turn = {j: (d * math.sin(math.pi / 2 * (j - 1)), d * math.cos(math.pi / 2 * (j - 1))) for j in range(1, len(masks))}
        together.append(kept(turn))
    all_kept = min(together) if together else (1.0, 1.0)
    return {
        "misalignment_m": shift_m,
        "wavelength_m": spec.design_wavelength_m,
        "depth_m": None if math.isinf(spec.focus_depth_m) else spec.focus_depth_m,
        "airy_radius_px": model.airy_px,
        "aligned_core_energy": e_ref,
        "per_mask": per_mask,
        "all_masks_core_energy_kept": all_kept[0],
        "all_masks_peak_kept": all_kept[1],
        "efficiency_lost": 1.0 - all_kept[0],
        "method": "bilinear sub-pixel coverage of each shifted mask, pixel transmission (1-c)+c·exp(iφ_j); energy "
                  "within the Airy-core radius around the aligned PSF peak, design wavelength, focus depth",
    }

"""Broadband sensor channels: camera spectral sensitivity × illuminant, sampled at a few wavelengths per channel.

A channel's relative response is f_c(λ) = S_c(λ) · E(λ) (S_c a measured camera sensitivity from colour-science's
`MSDS_CAMERA_SENSITIVITIES` or a CSV of wavelength nm, R, G, B; E an illuminant from `colour.SDS_ILLUMINANTS`,
D65 by default), tabulated on the curve's own grid and interpolated linearly. Sampling (equal-mass quantiles):
the cumulative integral of f_c is cut into N bins of equal area; a bin's wavelength is its f-weighted mean
wavelength and its weight is 1/N (the bin's share of the area). So the weights sum to 1 per channel, integrate
f_c exactly for constants and for λ itself, and approach ∫ f_c g / ∫ f_c for any smooth g as N grows.
Channels are ordered by their mean wavelength (blue, green, red), like a plain `wavelengths` list.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensdesign.errors import SpecError


@dataclass(frozen=True)
class SpectralChannels:
    """Sampled channels: `curves` (C, L) relative response on `grid_nm` (L,), `wavelengths_m` (C·N,) the sampled
    wavelengths channel by channel, `weights` (C, C·N) each row summing to 1, `centroids_m` (C,) mean wavelengths,
    `labels` the channel names."""

    grid_nm: np.ndarray
    curves: np.ndarray
    wavelengths_m: tuple[float, ...]
    weights: np.ndarray
    centroids_m: tuple[float, ...]
    labels: tuple[str, ...]
    source: str


def _camera_curves(name: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    import colour

    sets = colour.MSDS_CAMERA_SENSITIVITIES
    keys = list(sets.keys())
    hit = [k for k in keys if k.lower() == name.lower()] or [k for k in keys if k.lower().startswith(name.lower())]
    if len(hit) != 1:
        raise SpecError(f"spectrum.camera: {name!r} is not a camera sensitivity set; use one of {keys} or spectrum.csv")
    msds = sets[hit[0]]
    return np.asarray(msds.wavelengths, float), np.asarray(msds.values, float), list(msds.labels), hit[0]


def _csv_curves(path: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spectrum.csv: {path}: no such file; give a CSV of wavelength nm, R, G, B")
    try:
        a = np.loadtxt(p, delimiter=",", ndmin=2, comments="#")
    except ValueError:
        try:
            a = np.loadtxt(p, delimiter=",", ndmin=2, comments="#", skiprows=1)
        except ValueError as e:
            raise SpecError(f"spectrum.csv: {path}: not numeric columns wavelength nm, R, G, B ({e})") from None
    if a.shape[1] != 4 or a.shape[0] < 2:
        raise SpecError(f"spectrum.csv: {path}: needs at least 2 rows of 4 columns (wavelength nm, R, G, B), "
                        f"got {a.shape[0]} × {a.shape[1]}")
    if not np.isfinite(a).all():
        raise SpecError(f"spectrum.csv: {path}: holds non-finite values (nan / inf); give finite numbers")
    if (np.diff(a[:, 0]) <= 0).any() or a[0, 0] < 100 or a[-1, 0] > 20000:
        raise SpecError(f"spectrum.csv: {path}: wavelengths (nm, first column) must increase and lie in 100 … 20000")
    if (a[:, 1:] < 0).any() or (a[:, 1:].sum(axis=0) <= 0).any():
        raise SpecError(f"spectrum.csv: {path}: sensitivities must be ≥ 0 with a positive sum in each channel")
    return a[:, 0], a[:, 1:], ["red", "green", "blue"], str(p)


def _illuminant(name: str, grid_nm: np.ndarray) -> np.ndarray:
    import colour

    if name not in colour.SDS_ILLUMINANTS:
        raise SpecError(f"spectrum.illuminant: {name!r} is unknown; use e.g. D65, D50, A or E (colour.SDS_ILLUMINANTS)")
    sd = colour.SDS_ILLUMINANTS[name]
    return np.interp(grid_nm, np.asarray(sd.wavelengths, float), np.asarray(sd.values, float))


def quantile_samples(grid_nm: np.ndarray, f: np.ndarray, n: int) -> np.ndarray:
    """N wavelengths (nm) of the equal-area bins of the piecewise-linear curve `f` on `grid_nm`: each bin's
    f-weighted mean wavelength (weight 1/N each)."""
    fine = np.linspace(grid_nm[0], grid_nm[-1], 64 * (len(grid_nm) - 1) + 1)
    ff = np.interp(fine, grid_nm, f)
    seg = 0.5 * (ff[1:] + ff[:-1]) * np.diff(fine)
    mom = 0.5 * (ff[1:] * fine[1:] + ff[:-1] * fine[:-1]) * np.diff(fine)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    cmom = np.concatenate([[0.0], np.cumsum(mom)])
    edges = np.linspace(0.0, cum[-1], n + 1)
    at = np.interp(edges, cum, cmom)  # first moment up to each equal-area edge
    return np.diff(at) / np.diff(edges)


@functools.lru_cache(maxsize=16)
def spectral_channels(camera: str | None, csv: str | None, illuminant: str, samples: int) -> SpectralChannels:
    """The sampled channels of a camera set (or CSV) under an illuminant, `samples` wavelengths per channel."""
    if samples < 1:
        raise SpecError(f"spectrum.samples: {samples} must be at least 1 (wavelengths per channel), e.g. 7")
    if (camera is None) == (csv is None):
        raise SpecError("spectrum: give exactly one of camera (e.g. 'Nikon 5100 (NPL)') or csv (wavelength nm, R, G, B)")
    grid, s, labels, source = _camera_curves(camera) if camera is not None else _csv_curves(csv or "")
    curves = (s * _illuminant(illuminant, grid)[:, None]).T
    if not np.isfinite(curves).all():
        raise SpecError("spectrum: the sensitivity × illuminant curves hold non-finite values; check the inputs")
    curves = curves / curves.max(axis=1, keepdims=True)
    cent = (curves * grid).sum(1) / curves.sum(1)
    order = np.argsort(cent)
    curves, cent = curves[order], cent[order]
    c = len(order)
    wls = np.concatenate([quantile_samples(grid, curves[i], samples) for i in range(c)])
    weights = np.zeros((c, c * samples))
    for i in range(c):
        weights[i, i * samples:(i + 1) * samples] = 1.0 / samples
    return SpectralChannels(grid_nm=grid, curves=curves, wavelengths_m=tuple(float(w) * 1e-9 for w in wls),
                            weights=weights, centroids_m=tuple(float(f"{w * 1e-9:.6g}") for w in cent),
                            labels=tuple(labels[i] for i in order), source=f"{source} × {illuminant}")

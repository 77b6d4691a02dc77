"""Image-quality metrics of a PSF: MTF, Strehl ratio, encircled energy, FWHM; analytic references.

Pure numpy functions. A PSF is a 2-D array of energy per sample on a square grid of pitch `pitch` (m); the
optical axis (the nominal image point) sits at index (K // 2, K // 2). Frequencies are in cycles per metre unless
a name says otherwise (`_cyc_per_mm`). Distances are in metres.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

# ---- analytic references -------------------------------------------------------------------------------------


def diffraction_limited_mtf(nu: np.ndarray | float) -> np.ndarray:
    """MTF of an aberration-free circular pupil, (2/π)(acos ν − ν√(1 − ν²)), ν = f / f_c; zero for ν ≥ 1."""
    v = np.clip(np.abs(np.asarray(nu, dtype=np.float64)), 0.0, 1.0)
    return (2.0 / np.pi) * (np.arccos(v) - v * np.sqrt(1.0 - v**2))


def cutoff_frequency(aperture: float, wavelength: float, distance: float) -> float:
    """Incoherent cutoff f_c = D / (λ z) in cycles/m for aperture D (m) imaging at distance z (m)."""
    return aperture / (wavelength * distance)


def airy_fwhm(wavelength: float, f_number: float) -> float:
    """Full width at half maximum of the Airy pattern, ≈ 1.029 λ N (m)."""
    # [2 J1(v)/v]² = 1/2 at v = 1.61634
    return 2 * 1.616339948 * wavelength * f_number / math.pi


def airy_first_zero(wavelength: float, f_number: float) -> float:
    """Radius of the first dark ring of the Airy pattern, 1.22 λ N (m)."""
    return 1.219669891 * wavelength * f_number


def airy_encircled_energy(r: np.ndarray | float, wavelength: float, f_number: float) -> np.ndarray:
    """Fraction of the Airy pattern's energy within radius r (m): 1 − J0²(v) − J1²(v), v = π r / (λ N)."""
    v = np.pi * np.asarray(r, dtype=np.float64) / (wavelength * f_number)
    return 1.0 - special.j0(v) ** 2 - special.j1(v) ** 2


def airy_ee_radius(fraction: float, wavelength: float, f_number: float) -> float:
    """Radius (m) holding `fraction` of the Airy pattern's energy (fraction < 0.838: inside the first ring)."""
    if not 0.0 < fraction < 0.838:
        raise ValueError("fraction must lie in (0, 0.838) (inside the first dark ring)")
    v = optimize.brentq(lambda v: 1.0 - special.j0(v) ** 2 - special.j1(v) ** 2 - fraction, 1e-6, 3.8317)
    return float(v * wavelength * f_number / np.pi)


def defocus_strehl(w020_waves: float) -> float:
    """On-axis Strehl ratio of a uniform circular pupil with defocus W020 (waves at the edge): sinc²(W020)."""
    return float(np.sinc(w020_waves) ** 2)


# ---- MTF -----------------------------------------------------------------------------------------------------


def mtf_2d(psf: np.ndarray) -> np.ndarray:
    """|OTF| of a PSF, normalized to 1 at zero frequency, in FFT order (zero frequency at [0, 0])."""
    p = np.asarray(psf, dtype=np.float64)
    otf = np.abs(np.fft.fft2(p))
    dc = otf[0, 0]
    if dc <= 0:
        raise ValueError("the PSF holds no energy")
    return otf / dc


def radial_average(values: np.ndarray, pitch: float, max_frequency: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radial average of a 2-D array in FFT order over rings of width 1/(K·pitch).

    Returns (frequency, mean) where frequency is the mean |f| (cycles/m) of the samples in each ring, so the
    average is not biased by the ring width; rings up to `max_frequency` (default: the grid Nyquist).
    """
    ky, kx = values.shape
    fy = np.fft.fftfreq(ky, d=pitch)
    fx = np.fft.fftfreq(kx, d=pitch)
    df = 1.0 / (max(ky, kx) * pitch)
    r = np.hypot(fy[:, None], fx[None, :])
    idx = np.rint(r / df).astype(np.int64).ravel()
    fmax = min(1.0 / (2 * pitch), max_frequency if max_frequency is not None else math.inf)
    nb = math.floor(fmax / df + 1e-9) + 1
    keep = idx < nb
    cnt = np.bincount(idx[keep], minlength=nb)
    s = np.bincount(idx[keep], weights=values.ravel()[keep], minlength=nb)
    sr = np.bincount(idx[keep], weights=r.ravel()[keep], minlength=nb)
    ok = cnt > 0
    return sr[ok] / cnt[ok], s[ok] / cnt[ok]


def radial_mtf(psf: np.ndarray, pitch: float, max_frequency: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged MTF: (frequency cycles/m, MTF) of a PSF sampled at `pitch` (m)."""
    return radial_average(mtf_2d(psf), pitch, max_frequency)


def mtf_cuts(psf: np.ndarray, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTF along the fx axis (fy = 0; sagittal for an on-axis point) and along the fy axis (fx = 0; tangential).

    Returns (frequency cycles/m, mtf_x, mtf_y) for the non-negative frequencies below the grid Nyquist.
    """
    m = mtf_2d(psf)
    k = min(m.shape)
    half = k // 2
    f = np.arange(half) / (k * pitch)
    return f, m[0, :half].copy(), m[:half, 0].copy()


def mtf_at(freq: np.ndarray, mtf: np.ndarray, f0: float) -> float:
    """MTF at frequency f0 (cycles/m), linearly interpolated from a radial curve."""
    return float(np.interp(f0, freq, mtf))


def asymmetry(psf: np.ndarray, pitch: float) -> float:
    """Largest difference between the x and y MTF cuts: 0 for a PSF with the symmetry of a square."""
    _, mx, my = mtf_cuts(psf, pitch)
    return float(np.max(np.abs(mx - my)))


# ---- PSF measures --------------------------------------------------------------------------------------------


def centroid(psf: np.ndarray) -> tuple[float, float]:
    """Energy centroid (y, x) in samples."""
    p = np.asarray(psf, dtype=np.float64)
    tot = p.sum()
    if tot <= 0:
        raise ValueError("the PSF holds no energy")
    y = np.arange(p.shape[0])
    x = np.arange(p.shape[1])
    return float((p.sum(1) * y).sum() / tot), float((p.sum(0) * x).sum() / tot)


def encircled_energy(psf: np.ndarray, pitch: float, center: tuple[float, float] | None = None, step: float = 0.25,
                     subsamples: int = 4, total: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encircled-energy curve (radius m, fraction of the energy) around `center` (samples; default the centroid).

    Each sample's energy is spread evenly over `subsamples`² points inside its square, which removes most of the
    error of assigning a whole sample to one radius when the core spans few samples. Radii are spaced `step`
    samples. `total` is the energy the fractions refer to (default the sum of `psf`; pass the whole field's
    energy when `psf` is a crop).
    """
    p = np.asarray(psf, dtype=np.float64)
    cy, cx = centroid(p) if center is None else center
    tot = float(p.sum()) if total is None else float(total)
    if tot <= 0:
        raise ValueError("the PSF holds no energy")
    s = max(1, int(subsamples))
    off = (np.arange(s) + 0.5) / s - 0.5
    y = np.arange(p.shape[0]) - cy
    x = np.arange(p.shape[1]) - cx
    e = np.zeros(1)
    w = p.ravel() / (s * s)
    for oy in off:
        for ox in off:
            r = np.hypot((y + oy)[:, None], (x + ox)[None, :]) / step
            idx = np.ceil(r).astype(np.int64).ravel()
            b = np.bincount(idx, weights=w)
            if b.size > e.size:
                b[: e.size] += e
                e = b
            else:
                e[: b.size] += b
    cum = np.cumsum(e) / tot
    radius = np.arange(cum.size) * step * pitch
    return radius, cum


def ee_radius(psf: np.ndarray, pitch: float, fraction: float = 0.8, center: tuple[float, float] | None = None,
              total: float | None = None) -> float:
    """Radius (m) around the centroid (or `center`, samples) that holds `fraction` of the energy (`total`,
    default the sum of `psf`); NaN when `psf` (a crop) holds less than that fraction."""
    radius, cum = encircled_energy(psf, pitch, center, total=total)
    i = int(np.searchsorted(cum, fraction))
    if i == 0:
        return float(radius[0])
    if i >= cum.size:
        return math.nan
    c0, c1 = cum[i - 1], cum[i]
    t = (fraction - c0) / (c1 - c0) if c1 > c0 else 0.0
    return float(radius[i - 1] + t * (radius[i] - radius[i - 1]))


def _half_width(profile: np.ndarray, i0: int, half: float, direction: int) -> float:
    """Distance (samples) from index i0 to where `profile` first falls to `half`, linearly interpolated."""
    i = i0
    n = profile.size
    while 0 <= i + direction < n and profile[i + direction] > half:
        i += direction
    j = i + direction
    if not 0 <= j < n:
        return float(abs(i - i0))
    a, b = profile[i], profile[j]
    t = (a - half) / (a - b) if a != b else 0.0
    return abs(i - i0) + t


def fwhm(psf: np.ndarray, pitch: float) -> float:
    """Full width at half maximum (m): mean of the widths of the x and y profiles through the peak."""
    p = np.asarray(psf, dtype=np.float64)
    iy, ix = np.unravel_index(int(np.argmax(p)), p.shape)
    half = p[iy, ix] / 2
    row, col = p[iy, :], p[:, ix]
    wx = _half_width(row, ix, half, -1) + _half_width(row, ix, half, +1)
    wy = _half_width(col, iy, half, -1) + _half_width(col, iy, half, +1)
    return float(0.5 * (wx + wy) * pitch)


def energy_within(psf: np.ndarray, pitch: float, radius: float, center: tuple[float, float]) -> float:
    """Energy of the samples whose centres lie within `radius` (m) of `center` (samples)."""
    p = np.asarray(psf, dtype=np.float64)
    y = np.arange(p.shape[0]) - center[0]
    x = np.arange(p.shape[1]) - center[1]
    inside = np.hypot(y[:, None], x[None, :]) * pitch <= radius
    return float(p[inside].sum())


def psnr_db(estimate: np.ndarray, truth: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) of an image against the truth, both in [0, peak]."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)

"""PSFs for analysis: the whole simulated field, finely sampled, with the complex field kept for exact peaks.

The training model (`OpticalSystem.psf`) returns intensities binned to the sensor pitch in a window the size of
the sensor. Analysis needs more: the whole padded field (so the MTF is not cut by the window), a sampling fine
enough that the intensity does not alias (its band reaches f_c = D/(λz), so the pitch must be at most λz/(2D) =
λN/2), and the true peak of the intensity, which may fall between samples.

`FieldAnalyzer` reuses the precomputed parts of an `OpticalSystem` at the simulation pitch (`bin_override=1`):
source waves, element phase per metre of height and transfer functions, and computes per (depth, wavelength):

* the sensor-plane spectrum U = FFT(source × aperture × element) · H_w by the forward model's own functions
  (`lensdesign.optics.forward`: `transmission`, `sensor_spectrum`, `window_transfer`), with the window of the
  sensor-grid convention spanning the whole padded field, so the axis is at index (M // 2, M // 2);
* the intensity on the simulation grid, or on a grid `oversample` times finer by band-limited (zero-padded
  spectrum) interpolation of the field, which is exact for the band-limited field;
* the peak intensity refined to 1/8 sample by evaluating the band-limited field near the coarse maximum with a
  small matrix DFT.

Intensities are energy per sample (each PSF sums to the power that stays in the field, at most 1), with the
optical axis at index (K // 2, K // 2).

Broadband channels (`spec.spectrum`): the fields are computed at every sampled wavelength and each intensity is the
channel's weighted sum of them (the polychromatic PSF the sensor records); the Strehl ratio is the polychromatic
one, the peak of the channel PSF over the peak of the channel's diffraction-limited PSF (the same weighted sum of
perfect-lens PSFs), and the MTF is the channel PSF's. The results are per channel, labelled with its mean
wavelength.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lensdesign.analysis import metrics as M
from lensdesign.optics.forward import intensity, sensor_spectrum, transmission, window_start, window_transfer
from lensdesign.optics.psf import OpticalSystem, coords
from lensdesign.spec import Spec

MAX_ANALYSIS_GRID = 4096


def oversample_factor(spec: Spec, dx: float, m: int) -> int:
    """Fine samples per simulation sample (per axis) for a Nyquist-sampled intensity: dx/u <= λ_min z / (2D).

    Capped so that the fine grid stays within MAX_ANALYSIS_GRID samples.
    """
    crit = min(spec.optical_spec.wavelengths) * spec.optics.sensor_distance / (2 * spec.optics.aperture)
    u = max(1, math.ceil(dx / crit - 1e-9))
    return max(1, min(u, MAX_ANALYSIS_GRID // m))


@dataclass
class FieldResult:
    """One (depth, wavelength) PSF: intensity (K, K) float64 at `pitch` (m) with the axis at K // 2, and the peak
    intensity (energy per simulation-grid sample) refined between samples."""

    intensity: np.ndarray
    pitch: float
    peak: float
    coarse_peak_index: tuple[int, int]


@dataclass
class DepthPSF:
    """The finely sampled PSFs of one depth (W wavelengths): `strehl` and `totals` (W,) (energy in the analysed
    field), `crops` (W, 2h + 1, 2h + 1) energy per fine sample with the axis at the centre, their radially averaged
    `mtf`, and `ee_whole(j, fraction)`: the encircled-energy radius (m) of wavelength j over the whole field
    (`whole_is_cheap`: cheap enough to size the display window with when the crops do not hold 95 %)."""

    strehl: np.ndarray
    totals: np.ndarray
    crops: np.ndarray
    mtf: RadialMTF
    ee_whole: Callable[[int, float], float]
    whole_is_cheap: bool = False


class FieldAnalyzer:
    """Sensor-plane fields and finely sampled PSFs of height maps over the whole padded field.

    Parameters: `spec`; `device`; `oversample` fine samples per simulation sample (default: Nyquist for the
    shortest wavelength, see `oversample_factor`). `wavelengths` are the channels' (C); the optics runs at
    `system.wavelengths` (W: the sampled wavelengths of broadband channels, mixed by `weights` (C, W)).
    """

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", oversample: int | None = None) -> None:
        self.spec = spec
        self.system = OpticalSystem(spec.optical_spec, device=device, psf_size=3, bin_override=1)
        g = self.system.grid
        self.n, self.m, self.dx = g.n, g.m, g.dx
        self.device = self.system.device
        self.wavelengths = list(spec.wavelengths)
        ch = spec.spectral
        self.weights = None if ch is None else torch.tensor(ch.weights, dtype=torch.float32, device=self.device)
        self.oversample = oversample if oversample is not None else oversample_factor(spec, g.dx, g.m)
        self.propagator = g.choice.kind
        self._ref_peaks: np.ndarray | None = None
        self._src_cache: dict[float, torch.Tensor] = {
            float(z): self.system.src[i] for i, z in enumerate(self.system.depths)}
        f = torch.fft.fftfreq(self.m, d=1.0 / self.m, dtype=torch.float64)  # signed integer frequency index
        self._fidx = f.to(self.device)
        self._delta_tabs: dict[int, torch.Tensor] = {}
        # the whole padded field as the PSF window (M samples, bin 1): the axis at index M // 2
        self._h_field = window_transfer(self.system.h, window_start(self.n, self.m, 1))

    # ---- geometry ------------------------------------------------------------------------------------------
    @property
    def f_number(self) -> float:
        return self.spec.optics.sensor_distance / self.spec.optics.aperture

    @property
    def fine_pitch(self) -> float:
        """Pitch (m) of the oversampled PSF."""
        return self.dx / self.oversample

    def fine_pitch_for(self, oversample: int) -> float:
        return self.dx / oversample

    # ---- fields --------------------------------------------------------------------------------------------
    def _src(self, depth: float) -> torch.Tensor:
        key = float(depth)
        if key not in self._src_cache:
            self._src_cache[key] = self.system.source_waves([depth])[0]
        return self._src_cache[key]

    def spectrum_from_pupil(self, pupil: torch.Tensor) -> torch.Tensor:
        """Sensor-plane spectrum (W, M, M) complex64 of a pupil field (W, N, N), the axis at index M // 2."""
        return sensor_spectrum(pupil.to(torch.complex64), self._h_field)

    def spectrum(self, height: torch.Tensor, depth: float) -> torch.Tensor:
        """Sensor-plane spectrum (W, M, M) of the element `height` (N, N, m) lit from an on-axis point at `depth`."""
        t = transmission(height.to(self.device, torch.float32), self.system.phase_per_m)
        return self.spectrum_from_pupil(self._src(depth) * t)

    def _channels(self, spec_u: torch.Tensor, one: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`one` (spectra (w, M, M) → intensities (w, K, K)) of the spectra (W, M, M), mixed to the channels'
        (C, K, K) with broadband channels (one wavelength at a time in memory); unchanged otherwise."""
        if self.weights is None:
            return one(spec_u)
        out = None
        for j in range(spec_u.shape[0]):
            term = self.weights[:, j, None, None] * one(spec_u[j:j + 1])
            out = term if out is None else out.add_(term)
        assert out is not None
        return out

    def coarse_intensity(self, spec_u: torch.Tensor) -> torch.Tensor:
        """Intensity (C, M, M) float32 on the simulation grid, the axis at index M // 2."""
        return self._channels(spec_u, lambda s: intensity(torch.fft.ifft2(s)))

    def fine_intensity(self, spec_u: torch.Tensor, oversample: int | None = None) -> torch.Tensor:
        """Intensity (C, uM, uM) float32 on a grid `oversample` (u) times finer, axis at the centre index uM // 2.

        Energy per fine sample: the sum equals that of the coarse intensity.
        """
        u = self.oversample if oversample is None else oversample
        if u == 1:
            return self.coarse_intensity(spec_u)
        return self._channels(spec_u, lambda s: self._fine(s, u))

    def _fine(self, spec_u: torch.Tensor, u: int) -> torch.Tensor:
        """Monochromatic intensities (W, uM, uM) of spectra (W, M, M), band-limited interpolation by `u`."""
        m = self.m
        k = u * m
        h = m // 2
        big = torch.zeros(spec_u.shape[0], k, k, dtype=spec_u.dtype, device=spec_u.device)
        big[:, :h, :h] = spec_u[:, :h, :h]
        big[:, :h, k - h:] = spec_u[:, :h, h:]
        big[:, k - h:, :h] = spec_u[:, h:, :h]
        big[:, k - h:, k - h:] = spec_u[:, h:, h:]
        f = torch.fft.ifft2(big)
        del big
        return intensity(f).mul_(float(u * u))

    def refined_peaks(self, spec_u: torch.Tensor, coarse: torch.Tensor,
                      steps: int = 17) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Peak intensity per channel (C,) of the band-limited field (of the channel's weighted sum of intensities
        with broadband channels), searched within ±1 sample of the coarse maximum on a grid of 1/8 sample; and the
        coarse maximum's (y, x) index (axis at M // 2). `spec_u` (W, M, M), `coarse` (C, M, M)."""
        c, m, _ = coarse.shape
        flat = coarse.reshape(c, -1).argmax(dim=1).tolist()
        peaks = np.empty(c)
        idx: list[tuple[int, int]] = []
        if steps not in self._delta_tabs:
            delta = torch.linspace(-1.0, 1.0, steps, dtype=torch.float64, device=self.device)
            self._delta_tabs[steps] = torch.exp(2j * math.pi * delta[:, None] * self._fidx[None, :] / m)
        tab = self._delta_tabs[steps]
        for j in range(c):
            iy, ix = divmod(int(flat[j]), m)
            idx.append((iy, ix))
            # exp(2πi f (i + δ)/m) = exp(2πi f i/m) · exp(2πi f δ/m): one DFT row times the sub-sample table
            ay = (tab * torch.exp(2j * math.pi * iy * self._fidx / m)[None, :]).to(torch.complex64)
            ax = (tab * torch.exp(2j * math.pi * ix * self._fidx / m)[None, :]).to(torch.complex64)
            if self.weights is None:
                vals = (ay @ spec_u[j]) @ ax.T
                sub = vals.real.square() + vals.imag.square()
            else:  # the channel's own wavelengths only
                own = torch.nonzero(self.weights[j]).squeeze(1)
                vals = (ay[None] @ spec_u[own]) @ ax.T[None]
                sub = torch.einsum("w,wab->ab", self.weights[j, own], vals.real.square() + vals.imag.square())
            peak = float(sub.max()) / float(m) ** 4
            peaks[j] = max(peak, float(coarse[j, iy, ix]))
        return peaks, idx

    # ---- references ----------------------------------------------------------------------------------------
    def ideal_pupil(self) -> torch.Tensor:
        """Pupil (W, N, N) of a perfect lens focusing onto the sensor: the aperture times a converging wave that
        the propagator in use images without aberration (paraxial for the Fresnel forms, spherical for ASM),
        power-normalized like the design's pupil. Its PSF is the diffraction-limited reference at every depth."""
        y, x = coords(self.n, self.dx)
        r2 = x**2 + y**2
        z = self.spec.optics.sensor_distance
        ap = self.system.aperture.to(torch.float64).cpu() / math.sqrt(self.system.n_open)
        out = []
        for w in self.system.wavelengths:
            k = 2 * math.pi / w
            opl = torch.sqrt(r2 + z * z) - z if self.propagator == "asm" else r2 / (2 * z)
            out.append(torch.polar(ap, -k * opl))
        return torch.stack(out).to(torch.complex64).to(self.device)

    def reference_peaks(self) -> np.ndarray:
        """Peak intensity (C,) of the diffraction-limited PSF per channel (energy per simulation sample)."""
        if self._ref_peaks is None:
            su = self.spectrum_from_pupil(self.ideal_pupil())
            self._ref_peaks, _ = self.refined_peaks(su, self.coarse_intensity(su))
        return self._ref_peaks

    def reference_psf(self, oversample: int | None = None) -> torch.Tensor:
        """Diffraction-limited PSFs (C, uM, uM) on the fine grid."""
        return self.fine_intensity(self.spectrum_from_pupil(self.ideal_pupil()), oversample)

    def reference_peaks_fine(self, oversample: int) -> np.ndarray:
        """Axial intensity (C,) of the diffraction-limited PSF, energy per fine sample at `oversample`."""
        ref_fine = self.reference_psf(oversample)
        kf = ref_fine.shape[-1] // 2
        return ref_fine[:, kf, kf].double().cpu().numpy()

    def table_oversample(self) -> int:
        """Fine samples per simulation sample for the PSF table and figures: at least 2 while the grid allows."""
        return max(self.oversample, 2) if self.m * 2 <= MAX_ANALYSIS_GRID else self.oversample

    @property
    def label(self) -> str:
        """The propagator, in the words of report.json."""
        return self.propagator

    def ring_design(self, height: np.ndarray) -> np.ndarray:
        """The height map as this analyzer sees it (the 2-D grid: unchanged)."""
        return height

    # ---- iteration -----------------------------------------------------------------------------------------
    def iter_depths(self, height: np.ndarray | torch.Tensor, depths: list[float]) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (depth index, spectrum (W, M, M)) for each depth, one depth in memory at a time."""
        h = torch.as_tensor(np.asarray(height), dtype=torch.float32) if not isinstance(height, torch.Tensor) else height
        with torch.no_grad():
            for i, z in enumerate(depths):
                yield i, self.spectrum(h, z)

    def depth_psfs(self, height: np.ndarray | torch.Tensor, depths: list[float], oversample: int, fmax: float,
                   crop_half: int) -> Iterator[tuple[int, DepthPSF]]:
        """Per depth: Strehl ratio (refined peaks), the fine intensity's MTF up to `fmax` (cycles/m), the energy in
        the whole padded field and crops of ±`crop_half` fine samples around the axis."""
        pitch = self.fine_pitch_for(oversample)
        ref = self.reference_peaks()
        c = self.m * oversample // 2
        hw = min(crop_half, c - 1)
        for i, su in self.iter_depths(height, depths):
            peaks, _ = self.refined_peaks(su, self.coarse_intensity(su))
            fine = self.fine_intensity(su, oversample)
            yield i, DepthPSF(strehl=peaks / ref, totals=fine.sum(dim=(-2, -1)).double().cpu().numpy(),
                              crops=fine[:, c - hw:c + hw + 1, c - hw:c + hw + 1].cpu().numpy(),
                              mtf=radial_mtf(fine, pitch, fmax),
                              ee_whole=lambda j, frac, f=fine: M.ee_radius(f[j].double().cpu().numpy(), pitch, frac))
            del fine

    def mtf_at(self, height: np.ndarray | torch.Tensor, depths: list[float], f0: float,
               progress: Callable[[], None] | None = None) -> np.ndarray:
        """Radially averaged MTF (D, W) at f0 (cycles/m), on a grid fine enough to be free of aliasing there;
        `progress()` after each depth."""
        u = oversample_for_frequency(self.spec, self.dx, self.m, f0)
        pitch = self.fine_pitch_for(u)
        v = np.empty((len(depths), len(self.wavelengths)))
        for i, su in self.iter_depths(height, depths):
            v[i] = mtf_at_frequency(self.fine_intensity(su, u), pitch, f0)
            if progress is not None:
                progress()
        return v

    def core_meter(self, depths: list[float], continuous: np.ndarray) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """Strehl and central-core energy per (depth, wavelength) of height maps (`CoreMeter`)."""
        return CoreMeter(self, depths, continuous)

    def strehl(self, height: np.ndarray | torch.Tensor, depths: list[float]) -> np.ndarray:
        """Strehl ratio (D, W): refined peak over the diffraction-limited peak at the same wavelength."""
        ref = self.reference_peaks()
        out = np.empty((len(depths), len(self.wavelengths)))
        for i, su in self.iter_depths(height, depths):
            peaks, _ = self.refined_peaks(su, self.coarse_intensity(su))
            out[i] = peaks / ref
        return out


class CoreMeter:
    """Strehl ratio and energy in the central core (radius 1.22 λN, around the continuous design's peak) per
    (depth, wavelength), on the simulation grid: the quantities the fabrication Monte Carlo tracks."""

    def __init__(self, fa: FieldAnalyzer, depths: list[float], continuous: np.ndarray) -> None:
        self.fa = fa
        self.depths = depths
        m = fa.m
        self.masks: list[list[torch.Tensor]] = []
        idx = torch.arange(m, device=fa.device)
        for _, su in fa.iter_depths(continuous, depths):
            _, peaks_at = fa.refined_peaks(su, fa.coarse_intensity(su))
            row = []
            for j, (iy, ix) in enumerate(peaks_at):
                r = M.airy_first_zero(fa.wavelengths[j], fa.f_number) / fa.dx
                dy = (idx - iy + m // 2) % m - m // 2
                dx = (idx - ix + m // 2) % m - m // 2
                row.append((dy[:, None] ** 2 + dx[None, :] ** 2) <= r * r)
            self.masks.append(row)

    def __call__(self, height: np.ndarray) -> dict[str, np.ndarray]:
        fa = self.fa
        ref = fa.reference_peaks()
        d, w = len(self.depths), len(fa.wavelengths)
        strehl = np.empty((d, w))
        core = np.empty((d, w))
        for i, su in fa.iter_depths(height, self.depths):
            coarse = fa.coarse_intensity(su)
            peaks, _ = fa.refined_peaks(su, coarse)
            strehl[i] = peaks / ref
            for j in range(w):
                core[i, j] = float(coarse[j][self.masks[i][j]].sum())
        return {"strehl": strehl, "core": core}


# ---- MTF on the device ---------------------------------------------------------------------------------------


@dataclass
class RadialMTF:
    """Radially averaged MTF of W PSFs: `freq` (F,) cycles/m (mean |f| per ring), `mean`, `lo`, `hi` (W, F) the
    ring mean and the ring mean plus the least / largest deviation over orientations (each sample compared with
    the ring means interpolated to its exact radius), and axis cuts `cut_freq` (G,), `sagittal`/`tangential`
    (W, G) along fx (fy = 0) and fy (fx = 0)."""

    freq: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    cut_freq: np.ndarray
    sagittal: np.ndarray
    tangential: np.ndarray

    def asymmetry(self, fmax: float) -> float:
        """Largest spread over orientations (hi − lo) below `fmax` (cycles/m): ~0 for a rotationally symmetric PSF."""
        sel = self.freq <= fmax
        return float((self.hi[:, sel] - self.lo[:, sel]).max()) if sel.any() else 0.0


def _mtf_half(intensity: torch.Tensor) -> torch.Tensor:
    """|OTF| / OTF(0) of real PSFs (W, K, K) on the half plane (rfft2 layout, (W, K, K // 2 + 1))."""
    otf = torch.fft.rfft2(intensity.to(torch.float32)).abs()
    return otf / otf[:, :1, :1].clamp_min(1e-30)


class _Rings:
    """Ring geometry on the rfft2 half plane of a K × K grid at `pitch` (m), rings of width 1/(K·pitch) up to
    `fmax` (cycles/m): everything that does not depend on the PSF, computed once per grid."""

    def __init__(self, k: int, pitch: float, fmax: float, device: torch.device) -> None:
        fy = torch.fft.fftfreq(k, d=pitch, dtype=torch.float64, device=device)
        fx = torch.fft.rfftfreq(k, d=pitch, dtype=torch.float64, device=device)
        df = 1.0 / (k * pitch)
        r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).reshape(-1)
        nb = math.floor(min(fmax, 1.0 / (2 * pitch)) / df + 1e-9) + 1
        idx = torch.round(r / df).to(torch.int64)
        self.keep = torch.nonzero(idx < nb).squeeze(1)
        ik = idx[self.keep]
        rk = r[self.keep]
        cnt = torch.bincount(ik, minlength=nb).to(torch.float64)
        ring_r = torch.bincount(ik, weights=rk, minlength=nb) / cnt.clamp_min(1)
        # each sample sits between the mean radii of two rings: linear interpolation of the ring means at its |f|
        lo_i = torch.where(rk >= ring_r[ik], ik, (ik - 1).clamp_min(0))
        hi_i = (lo_i + 1).clamp_max(nb - 1)
        span = (ring_r[hi_i] - ring_r[lo_i]).clamp_min(1e-30)
        self.t = ((rk - ring_r[lo_i]) / span).clamp(0.0, 1.0).to(torch.float32)
        self.ik, self.lo_i, self.hi_i = ik, lo_i, hi_i
        self.cnt = cnt.to(torch.float32)
        self.nb = nb
        self.ok = (cnt > 0).cpu().numpy()
        self.freq = ring_r.cpu().numpy()
        self.df = df


_RINGS: dict[tuple[int, float, float, str], _Rings] = {}


def _rings(k: int, pitch: float, fmax: float, device: torch.device) -> _Rings:
    key = (k, pitch, fmax, str(device))
    if key not in _RINGS:
        if len(_RINGS) > 8:
            _RINGS.clear()
        _RINGS[key] = _Rings(k, pitch, fmax, device)
    return _RINGS[key]


def radial_mtf(intensity: torch.Tensor, pitch: float, fmax: float) -> RadialMTF:
    """Radially averaged MTF of PSFs (W, K, K) sampled at `pitch` (m), rings of width 1/(K·pitch) up to `fmax`
    (cycles/m, at most the grid Nyquist). Averages over the half plane (the MTF is point-symmetric)."""
    w, k, _ = intensity.shape
    mtf = _mtf_half(intensity)
    g = _rings(k, pitch, fmax, intensity.device)
    nb = g.nb
    mean = np.empty((w, nb))
    lo = np.empty((w, nb))
    hi = np.empty((w, nb))
    for j in range(w):
        v = mtf[j].reshape(-1)[g.keep]
        mj = torch.zeros(nb, dtype=torch.float32, device=v.device).index_add_(0, g.ik, v) / g.cnt.clamp_min(1)
        res = v - torch.lerp(mj[g.lo_i], mj[g.hi_i], g.t)
        mean[j] = mj.double().cpu().numpy()
        lo[j] = (mj + torch.full((nb,), math.inf, device=v.device).scatter_reduce(0, g.ik, res, "amin")).double().cpu().numpy()
        hi[j] = (mj + torch.full((nb,), -math.inf, device=v.device).scatter_reduce(0, g.ik, res, "amax")).double().cpu().numpy()
    nc = min(nb, k // 2)
    cut_f = np.arange(nc) * g.df
    sag = mtf[:, 0, :nc].double().cpu().numpy()
    tan = mtf[:, :nc, 0].double().cpu().numpy()
    ok = g.ok
    return RadialMTF(g.freq[ok], mean[:, ok], lo[:, ok], hi[:, ok], cut_f, sag, tan)


_RING_WEIGHTS: dict[tuple[int, float, float, str], tuple[torch.Tensor, torch.Tensor]] = {}


def mtf_at_frequency(intensity: torch.Tensor, pitch: float, f0: float) -> np.ndarray:
    """Radially averaged MTF (W,) at f0 (cycles/m) of PSFs (W, K, K) sampled at `pitch` (m): the mean over the
    samples with |f| within one ring width of f0, weighted by 1 − ||f| − f0| / Δf (linear interpolation)."""
    w, k, _ = intensity.shape
    if f0 == 0:
        return np.ones(w)
    key = (k, pitch, f0, str(intensity.device))
    if key not in _RING_WEIGHTS:
        if len(_RING_WEIGHTS) > 8:
            _RING_WEIGHTS.clear()
        fy = torch.fft.fftfreq(k, d=pitch, dtype=torch.float64, device=intensity.device)
        fx = torch.fft.rfftfreq(k, d=pitch, dtype=torch.float64, device=intensity.device)
        df = 1.0 / (k * pitch)
        r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).reshape(-1)
        wt = (1.0 - (r - f0).abs() / df).clamp_min(0.0)
        sel = torch.nonzero(wt > 0).squeeze(1)
        _RING_WEIGHTS[key] = (sel, (wt[sel] / wt[sel].sum()).to(torch.float32))
    sel, wt = _RING_WEIGHTS[key]
    mtf = _mtf_half(intensity).reshape(w, -1)[:, sel]
    return (mtf * wt).sum(dim=1).double().cpu().numpy()


def oversample_for_frequency(spec: Spec, dx: float, m: int, f0: float) -> int:
    """Smallest oversampling u for which the sampled intensity is free of aliasing at f0 (cycles/m):
    f0 <= u/dx − f_c(λ_min) and f0 < u/(2 dx)."""
    fc = spec.optics.aperture / (min(spec.optical_spec.wavelengths) * spec.optics.sensor_distance)
    u = 1
    while u < MAX_ANALYSIS_GRID // m and (f0 > u / dx - fc or f0 >= u / (2 * dx)):
        u += 1
    return u

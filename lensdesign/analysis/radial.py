"""Analysis PSFs of ring designs on the 1-D (Hankel) path: the report's `FieldAnalyzer` contract from radial fields.

A ring design lit on axis gives a rotationally symmetric field, so everything the report measures follows from the
radial intensity I(ρ) (1/m², ∫ I dA = power) that `RadialSystem.fields` computes over a disk of the area of the
2-D path's whole padded field (radius M·dx/√π), at λ_min z/(8D) per sample (an eighth of the finest intensity fringe):

* Strehl ratio: max I over the diffraction-limited PSF's max at the same wavelength (`RadialSystem.ideal_nodes`,
  the same propagator), both on the same radial samples;
* energy in the field ∫ I 2πρ dρ (Simpson's rule in ρ), encircled-energy radii from its running integral, energy in the
  central core (radius 1.22 λN);
* MTF: the OTF of a rotationally symmetric PSF is the Hankel transform OTF(f) = ∫ I(ρ) J₀(2πfρ) 2πρ dρ, divided by
  its value at f = 0; exact in direction (sagittal = tangential = the radial mean);
* display crops: I at each fine sample's radius (cubic spline through the radial samples) times the sample area.

A 2-D height map is read as rings one sample per ring (`RadialSystem.profile_of`), as the training pipeline reads
it; `ring_design` turns an arbitrary 2-D map (an as-built element) into the ring map of its mean height per ring.

Broadband channels (`spec.spectrum`): each sampled wavelength's radial intensity is interpolated (cubic spline) onto
one grid of radii, the finest spacing of any wavelength out to the shortest reach, and a channel's intensity is the
weighted sum there; everything above then follows from it (polychromatic Strehl ratio against the same weighted sum
of diffraction-limited PSFs, the channel PSF's MTF and encircled energy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import integrate, interpolate, special

from lensdesign.analysis import metrics as M
from lensdesign.analysis.psfs import DepthPSF, RadialMTF, oversample_factor
from lensdesign.optics.hankel import RadialSystem, render_rings, ring_index
from lensdesign.optics.psf import plan_grid
from lensdesign.spec import Spec

MTF_FREQUENCIES = 512  # frequencies of the MTF curves, 0 … fmax


class RadialFieldAnalyzer:
    """Sensor-plane intensity profiles of ring designs over the 2-D path's whole field (see the module docstring).

    Parameters: `spec` (its element a ring design on the 1-D path); `device`; `form` the radial propagator
    (`auto`: the one the training pipeline uses, see `choose_radial_propagator`; `fresnel` or `asm`).
    """

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", form: str = "auto") -> None:
        self.spec = spec
        g = plan_grid(spec, psf_size=3, bin_override=1)
        self.n, self.m, self.dx = g.n, g.m, g.dx
        self.field_radius = g.m * g.dx / math.sqrt(math.pi)  # a disk of the 2-D path's field area
        self.system = RadialSystem(spec.optical_spec, device, psf_size=3, bin_override=1, form=form,
                                   field_radius=self.field_radius)
        self.device = self.system.device
        self.wavelengths = list(spec.wavelengths)
        self.oversample = oversample_factor(spec, g.dx, 1)  # Nyquist for the shortest wavelength (no grid to cap)
        self.propagator = f"hankel-{self.system.choice.kind}"
        self.label = f"{self.propagator} (1-D ring path)"
        radii = [np.asarray(self.system.radii(j), dtype=np.float64) for j in range(len(self.system.wavelengths))]
        ch = spec.spectral
        self._weights = None if ch is None else np.asarray(ch.weights, dtype=np.float64)
        self._radii = radii
        if ch is not None:  # one grid for the channels: the finest spacing, out to the shortest reach
            step = min(float(r[1] - r[0]) for r in radii)
            radii = [np.arange(math.floor(min(float(r[-1]) for r in self._radii) / step) + 1) * step] * len(ch.labels)
        self._rho = radii  # per channel (C,) arrays of radii (m)
        self._dA = [_ring_areas(r) for r in self._rho]  # quadrature weights of ∫ · 2πρ dρ (m²)
        with torch.no_grad():
            ref = self.system.propagate_nodes(self.system.ideal_nodes())
        self._ref = self._mix(ref.abs().square().double().cpu().numpy()[None])[0]  # (C, K) 1/m²
        self._j0: dict[tuple[int, float, int], np.ndarray] = {}

    # ---- geometry ------------------------------------------------------------------------------------------
    @property
    def f_number(self) -> float:
        return self.spec.optics.sensor_distance / self.spec.optics.aperture

    def fine_pitch_for(self, oversample: int) -> float:
        return self.dx / oversample

    def table_oversample(self) -> int:
        """Fine samples per simulation sample for the PSF table and figures: Nyquist, and at least 2."""
        return max(self.oversample, 2)

    # ---- intensities ---------------------------------------------------------------------------------------
    def profile(self, height: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Ring heights (J,) in metres of a ring map (N, N), one sample per ring (as the training pipeline)."""
        return self.system.profile_of(torch.as_tensor(np.asarray(height), dtype=torch.float32))

    def intensities(self, height: np.ndarray | torch.Tensor, depths: list[float]) -> np.ndarray:
        """Radial intensities (D, C, K) in 1/m² at the radii of each channel (`_rho`)."""
        with torch.no_grad():
            u = self.system.fields(self.profile(height), self.system.source_waves(depths))
        return self._mix(u.abs().square().double().cpu().numpy())

    def _mix(self, stack: np.ndarray) -> np.ndarray:
        """Channel intensities (D, C, K) on the channels' radii of monochromatic ones (D, W, K) on each
        wavelength's radii (`system.radii`): the weighted sum of cubic-spline interpolants; unchanged for one
        wavelength per channel."""
        if self._weights is None:
            return stack
        rho = self._rho[0]
        out = np.zeros((stack.shape[0], self._weights.shape[0], len(rho)))
        for j, r in enumerate(self._radii):
            out += self._weights[None, :, j, None] * interpolate.CubicSpline(r, stack[:, j], axis=1)(rho)[:, None]
        return out

    def ring_design(self, height: np.ndarray) -> np.ndarray:
        """The ring map (N, N) float32 of the mean height of each ring of `height` (N, N) (m): what the 1-D path can
        represent of an element that is not exactly made of rings (an as-built one)."""
        s = self.system
        ring = ring_index(self.n, self.dx, s.ring_width, s.rings).numpy().ravel()
        cnt = np.bincount(ring, minlength=s.rings)
        mean = np.bincount(ring, weights=np.asarray(height, dtype=np.float64).ravel(), minlength=s.rings)
        prof = torch.from_numpy(mean / np.maximum(cnt, 1))
        return render_rings(prof, self.n, self.dx, s.ring_width).numpy().astype(np.float32)

    # ---- the report's measurements --------------------------------------------------------------------------
    def _otf(self, intensity: np.ndarray, j: int, freqs: np.ndarray) -> np.ndarray:
        """|OTF| / OTF(0) (F,) of one radial intensity (K,) of wavelength j at frequencies `freqs` (cycles/m)."""
        key = (j, float(freqs[-1]), len(freqs))
        if key not in self._j0:
            if len(self._j0) > 8:
                self._j0.clear()
            self._j0[key] = special.j0(2 * np.pi * np.outer(self._rho[j], freqs)) * self._dA[j][:, None]
        otf = intensity @ self._j0[key]
        return np.abs(otf) / max(abs(float(otf[0])), 1e-300)

    def reference_peaks_fine(self, oversample: int) -> np.ndarray:
        """Axial intensity (C,) of the diffraction-limited PSF, energy per fine sample at `oversample`."""
        return self._ref[:, 0] * self.fine_pitch_for(oversample) ** 2

    def depth_psfs(self, height: np.ndarray | torch.Tensor, depths: list[float], oversample: int, fmax: float,
                   crop_half: int) -> Iterator[tuple[int, DepthPSF]]:
        """Per depth: Strehl ratio, MTF up to `fmax` (cycles/m), energy in the field and crops of ±`crop_half` fine
        samples around the axis (`FieldAnalyzer.depth_psfs`' contract)."""
        pitch = self.fine_pitch_for(oversample)
        hw = max(1, min(crop_half, math.floor(self.field_radius / (pitch * math.sqrt(2))) - 1))
        off = np.arange(-hw, hw + 1) * pitch
        r_crop = np.hypot(off[:, None], off[None, :])
        freqs = np.linspace(0.0, min(fmax, 1.0 / (2 * pitch)), MTF_FREQUENCIES)
        w = len(self.wavelengths)
        stack = self.intensities(height, depths)
        for i in range(len(depths)):
            prof = stack[i]
            totals = np.array([float(prof[j] @ self._dA[j]) for j in range(w)])
            crops = np.stack([interpolate.CubicSpline(self._rho[j], prof[j])(r_crop) * pitch**2
                              for j in range(w)]).astype(np.float32)
            mtf = np.stack([self._otf(prof[j], j, freqs) for j in range(w)])
            yield i, DepthPSF(strehl=prof.max(axis=1) / self._ref.max(axis=1), totals=totals, crops=crops,
                              mtf=RadialMTF(freqs, mtf, mtf, mtf, freqs, mtf, mtf),
                              ee_whole=lambda j, frac, p=prof: self._ee_radius(p[j], j, frac), whole_is_cheap=True)

    def _ee_radius(self, intensity: np.ndarray, j: int, fraction: float) -> float:
        """Radius (m) holding `fraction` of the energy in the field."""
        run = _running_energy(intensity, self._rho[j])
        return float(np.interp(fraction * run[-1], run, self._rho[j]))

    def mtf_at(self, height: np.ndarray | torch.Tensor, depths: list[float], f0: float,
               progress: Callable[[], None] | None = None) -> np.ndarray:
        """MTF (D, W) at f0 (cycles/m) (exact: the Hankel transform of the radial intensity at f0)."""
        stack = self.intensities(height, depths)
        out = np.empty(stack.shape[:2])
        for i in range(len(depths)):
            out[i] = [self._otf(stack[i, j], j, np.array([0.0, f0]))[1] for j in range(stack.shape[1])]
            if progress is not None:
                progress()
        return out

    def core_meter(self, depths: list[float], continuous: np.ndarray) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """Strehl ratio and energy within the central core (radius 1.22 λN around the axis) per (depth,
        wavelength) of height maps; `continuous` is not needed (the PSFs of ring designs peak on their axis of
        symmetry, so the core is centred there)."""
        airy = [M.airy_first_zero(w, self.f_number) for w in self.wavelengths]

        def meter(height: np.ndarray) -> dict[str, np.ndarray]:
            stack = self.intensities(height, depths)
            core = np.array([[np.interp(airy[j], self._rho[j], _running_energy(stack[i, j], self._rho[j]))
                              for j in range(stack.shape[1])] for i in range(stack.shape[0])])
            return {"strehl": stack.max(axis=2) / self._ref.max(axis=1)[None], "core": core}

        return meter


def _ring_areas(rho: np.ndarray) -> np.ndarray:
    """Weights (K,) m² of ∫ f 2πρ dρ on uniform radii ρ (K,) from 0: Simpson's rule on 2πρ f(ρ), smooth for an f
    even in ρ (the trapezoid rule would miss (h²/12)·2πf(0), 0.6 % of the power of an Airy pattern at 8 samples
    per fringe); the last interval by the trapezoid rule when the count is even."""
    h = float(rho[1] - rho[0])
    k = len(rho)
    n = k if k % 2 else k - 1
    w = np.zeros(k)
    w[:n:2] = 2 * h / 3
    w[1:n:2] = 4 * h / 3
    w[0] = w[n - 1] = h / 3
    if n < k:
        w[-2:] += h / 2
    return w * 2 * np.pi * rho


def _running_energy(intensity: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """∫₀^ρ_k I 2πρ' dρ' (K,): the energy inside each radius ρ_k (cumulative Simpson's rule)."""
    return integrate.cumulative_simpson(intensity * 2 * np.pi * rho, x=rho, initial=0.0)

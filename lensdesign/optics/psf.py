"""Point sources at depth, the PSF stack (depth, wavelength, y, x) and sampling to the sensor.

The element sits in the pupil: a circular aperture of diameter D on an N×N grid of pitch dx, zero padded to
M×M for propagation over the sensor distance. A point source at depth z (or at infinity) illuminates it with
a spherical (or plane) wave; the element adds phase 2π(n(λ) − 1)h/λ; the field is propagated to the sensor and
its intensity integrated over sensor pixels. The input power is normalized to 1 per (depth, wavelength), every
propagator is unitary, and light that leaves the PSF window is lost (not renormalized away), so each PSF sums
to at most 1.

The arithmetic lives in `lensdesign.optics.forward` (pure functions, their adjoints, the sensor-grid convention
and the contract any PSF-stack implementation honours). Here: the sampling plan (`plan_grid`), the element-plane
geometry, `OpticalSystem` (everything that does not depend on the height map, precomputed once: source waves,
aperture, transfer functions, the window-shifted transfer functions) and `PSFStack`, a custom autograd function
over the forward functions with the adjoint written out: one FFT pair forward, one pair backward, one PSF at a time
into a reused zero-padded buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lensdesign.errors import SpecError
from lensdesign.optics import forward
from lensdesign.optics.forward import (
    Scratch,
    binned_intensity_into,
    propagate_conj_adjoint,
    propagate_conj_adjoint_pruned,
    propagate_to_window,
    propagate_to_window_pruned,
    psf_reference,
    spread_times_into,
    transmission,
    transmission_vjp,
    window_start,
    window_transfer,
)
from lensdesign.optics.propagation import PropagatorChoice, choose_propagator, fft_size, transfer_function
from lensdesign.spec import Spec


@dataclass
class Grid:
    """Sampling of one simulation: element grid N at pitch dx, padded grid M, sensor binning and PSF window."""

    n: int  # element grid (pixels)
    m: int  # padded FFT grid (pixels)
    dx: float  # element / simulation pitch (m)
    bin: int  # simulation pixels per sensor pixel (per axis)
    psf_size: int  # PSF window on the sensor (sensor pixels, odd)
    choice: PropagatorChoice
    notes: list[str] = field(default_factory=list)

    @property
    def sensor_pitch(self) -> float:
        """PSF sample pitch on the sensor (m)."""
        return self.dx * self.bin

    @property
    def window_fine(self) -> int:
        return self.psf_size * self.bin


def plan_grid(spec: Spec, psf_size: int | None = None, bin_override: int | None = None) -> Grid:
    """Work out the sampling for `spec`, refusing an under-sampled or impossible setup with the reason.

    `bin_override` samples the PSF on a finer grid than the sensor (1 = the simulation pitch), for analysis.
    """
    o = spec.optics
    dx = o.pitch
    d = o.aperture
    z = o.sensor_distance
    wls = spec.wavelengths
    notes: list[str] = []
    n = math.ceil(d / dx - 1e-9)
    n += n % 2
    if n < 16:
        raise SpecError(f"optics.pitch: {dx * 1e6:.3g} um gives only {n} samples across the aperture; "
                        "use a pitch of at most aperture/16")
    # Element sampling: the phase that focuses the nearest depth onto the sensor must not alias at the rim.
    z_near = spec.depths_m[0]
    vergence = (0.0 if math.isinf(z_near) else 1.0 / z_near) + 1.0 / z
    need = min(wls) / (d * vergence)
    if dx > need * (1 + 1e-9):
        raise SpecError(f"optics.pitch: {dx * 1e6:.3g} um under-samples the element: focusing the nearest depth "
                        f"at {min(wls) * 1e9:.0f} nm needs pitch <= λ/(D(1/z_near + 1/z_sensor)) = "
                        f"{need * 1e6:.3g} um; reduce optics.pitch")
    sensor_pitch = spec.sensor.pixel_pitch / spec.sensor.superres_factor
    ratio = sensor_pitch / dx
    b = round(ratio)
    if b < 1 or abs(ratio - b) > 1e-6 * ratio:
        raise SpecError(f"sensor.pixel_pitch: {sensor_pitch * 1e6:.4g} um is not an integer multiple of optics.pitch "
                        f"{dx * 1e6:.4g} um; choose pitches with an integer ratio")
    if bin_override is not None:
        b = bin_override
    m = fft_size(math.ceil(n * o.padding))
    choice = choose_propagator(dx, m * dx, wls, z, "auto" if o.propagator == "hankel" else o.propagator)
    if not choice.ok:
        raise SpecError(choice.reason)
    full = m // b
    full -= 1 - full % 2  # odd
    size = psf_size if psf_size is not None else spec.sensor.psf_size
    if size is None:
        size = min(full, max(spec.sensor.resolution) * spec.sensor.superres_factor)
    if size % 2 == 0:
        size += 1
    if size * b > m:
        raise SpecError(f"sensor.psf_size: {size} pixels ({size * sensor_pitch * 1e3:.3g} mm) exceeds the simulated "
                        f"field of {m * dx * 1e3:.3g} mm; reduce sensor.psf_size to at most {full} or raise optics.padding")
    nyq = min(wls) * z / d / 2
    if sensor_pitch > nyq:
        notes.append(f"sensor pitch {sensor_pitch * 1e6:.3g} um under-samples the diffraction-limited PSF at "
                     f"{min(wls) * 1e9:.0f} nm (Nyquist λN#/2 = {nyq * 1e6:.3g} um): expected, the sensor aliases")
    return Grid(n=n, m=m, dx=dx, bin=b, psf_size=size, choice=choice, notes=notes)


def coords(n: int, dx: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Element-plane coordinates (y, x) in metres, (n, 1) and (1, n); the optical axis is at index n // 2."""
    x = (torch.arange(n, dtype=torch.float64, device=device) - n // 2) * dx
    return x[:, None], x[None, :]


def aperture_mask(n: int, dx: float, diameter: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Circular clear aperture, (n, n) float64 of 0/1."""
    y, x = coords(n, dx, device)
    return ((x**2 + y**2) <= (diameter / 2) ** 2).to(torch.float64)


def source_wave(n: int, dx: float, wavelength: float, depth: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Spherical wave from an on-axis point at `depth` (plane wave for inf) in the element plane, (n, n) complex128."""
    if math.isinf(depth):
        return torch.ones(n, n, dtype=torch.complex128, device=device)
    y, x = coords(n, dx, device)
    k = 2 * math.pi / wavelength
    path = torch.sqrt(x**2 + y**2 + depth**2) - depth
    return torch.polar(torch.ones_like(path), k * path)


class OpticalSystem:
    """Precomputed, height-independent tensors of the forward model for one spec (no trainable state, read-only).

    Tensors on `device`: `src` (D, W, N, N) complex64 aperture × source wave, power-normalized; `phase_per_m` (W,)
    radians per metre of height, 2π(n − 1)/λ; `h` (W, M, M) complex64 transfer functions; `h_window` (W, M, M) the
    same with the PSF window moved to the grid corner (see `lensdesign.optics.forward`); `aperture` (N, N) 0/1.
    `window_start` is the window's first sample relative to the element's (simulation samples). `scratch` holds
    the PSF stack's zero-padded buffers, the only state that changes between calls.
    """

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", depths: list[float] | None = None,
                 psf_size: int | None = None, bin_override: int | None = None) -> None:
        self.spec = spec
        self.grid = plan_grid(spec, psf_size=psf_size, bin_override=bin_override)
        self.device = torch.device(device)
        self.depths = list(depths) if depths is not None else spec.depths_m
        self.wavelengths = list(spec.wavelengths)
        g = self.grid
        ap = aperture_mask(g.n, g.dx, spec.optics.aperture)
        self.n_open = float(ap.sum())
        self.aperture = ap.to(torch.float32).to(self.device)
        self._norm = 1.0 / math.sqrt(self.n_open)
        self.src = self.source_waves(self.depths)
        idx = spec.refractive_indices
        self.phase_per_m = torch.tensor([2 * math.pi * (nn - 1) / w for nn, w in zip(idx, self.wavelengths, strict=True)],
                                        dtype=torch.float32, device=self.device)
        z = spec.optics.sensor_distance
        self.h = torch.stack([transfer_function(g.choice.kind, g.m, g.dx, w, z).to(torch.complex64)
                              for w in self.wavelengths]).to(self.device)
        self.window_start = window_start(g.n, g.psf_size, g.bin)
        self.h_window = window_transfer(self.h, self.window_start)
        self.scratch = Scratch(g.m)

    def source_waves(self, depths: list[float]) -> torch.Tensor:
        """Aperture × source wave, power-normalized, (D, W, N, N) complex64 on the device, for any depths (m)."""
        g = self.grid
        ap = self.aperture.to(torch.float64).cpu()
        src = torch.empty(len(depths), len(self.wavelengths), g.n, g.n, dtype=torch.complex64)
        for i, z in enumerate(depths):
            for j, w in enumerate(self.wavelengths):
                src[i, j] = (source_wave(g.n, g.dx, w, z) * ap * self._norm).to(torch.complex64)
        return src.to(self.device)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.depths), len(self.wavelengths), self.grid.psf_size, self.grid.psf_size)

    def psf(self, height: torch.Tensor, depths: list[float] | None = None) -> torch.Tensor:
        """PSF stack (D, W, P, P) float32 on the sensor pitch for a height map (N, N) in metres.

        `depths` (m) other than the system's own are computed on the fly (e.g. random training depths).
        """
        src = self.src if depths is None else self.source_waves(depths)
        return PSFStack.apply(height.to(self.device, torch.float32), self, src)

    def psf_reference(self, height: torch.Tensor, src: torch.Tensor | None = None) -> torch.Tensor:
        """The same PSF stack through `forward.psf_reference` (plain autograd, any precision): for tests."""
        g = self.grid
        src = self.src if src is None else src
        cplx = torch.complex128 if height.dtype == torch.float64 else torch.complex64
        return psf_reference(height, src.to(cplx), self.phase_per_m.to(height.dtype), self.h_window.to(cplx),
                             g.psf_size, g.bin)


class PSFStack(torch.autograd.Function):
    """Height map (N, N) → PSF stack (D, W, P, P): the functions of `lensdesign.optics.forward` with the adjoint
    written out.

    Forward and backward each cost one padded fft2+ifft2 pair per PSF (on grids from `forward.PRUNE_MIN`, with
    the transform on the window's side pruned to the window), computed one PSF at a time into a
    reused zero-padded buffer (measured faster on the CPU than batching, whose large allocations are
    page-faulted on every call). Each PSF's (M, M) FFT outputs are released before the next PSF's are
    allocated, so the allocator hands back the same warm memory; holding one across iterations measured
    20-40 % slower at M = 1536. The backward pass runs in conjugate space (`propagate_conj_adjoint`), so it
    reuses the forward's transfer functions and the saved conj(u) directly.
    """

    @staticmethod
    def forward(ctx, height: torch.Tensor, system: OpticalSystem, src_all: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s = system
        g = s.grid
        dd, ww = src_all.shape[0], src_all.shape[1]
        n, k = g.n, g.window_fine
        t = transmission(height, s.phase_per_m)  # (W, N, N)
        out = torch.empty(dd, ww, g.psf_size, g.psf_size, dtype=torch.float32, device=height.device)
        saved = torch.empty(dd, ww, k, k, dtype=torch.complex64, device=height.device)  # conj(u) on the window
        pad = s.scratch.get("forward", height.device)  # only the element corner is rewritten for each PSF
        corner = pad[:n, :n]
        propagate = propagate_to_window_pruned if g.m >= forward.PRUNE_MIN else propagate_to_window
        for w in range(ww):
            for d in range(dd):
                torch.mul(src_all[d, w], t[w], out=corner)
                u = propagate(pad, s.h_window[w], k)
                binned_intensity_into(u, saved[d, w], out[d, w], g.bin)
                del u  # free the (M, M) field before the next PSF allocates: keeps the allocator on warm pages
        ctx.system = s
        ctx.save_for_backward(t, saved, src_all)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        s: OpticalSystem = ctx.system
        t, saved, src_all = ctx.saved_tensors
        g = s.grid
        dd, ww = src_all.shape[0], src_all.shape[1]
        n, k = g.n, g.window_fine
        # dL/du* = u dL/dI, so the window gradient in torch's convention (2 dL/du*) is 2 dL/dI · u; conjugated:
        gi = (2 * grad_out).to(torch.complex64)  # one conversion, so the products below need no mixed-dtype copy
        dev = t.device
        grad_h = torch.zeros(n, n, dtype=torch.float32, device=dev)
        acc = torch.empty(n, n, dtype=torch.complex64, device=dev)
        pad = s.scratch.get("backward", dev)  # only the PSF-window corner is rewritten for each PSF
        window = pad[:k, :k]
        for w in range(ww):
            acc.zero_()
            for d in range(dd):
                spread_times_into(gi[d, w], saved[d, w], window, g.bin)  # conj of the window gradient
                # conj of the element-plane gradient gU
                v = (propagate_conj_adjoint_pruned(window, s.h_window[w], n) if g.m >= forward.PRUNE_MIN
                     else propagate_conj_adjoint(pad, s.h_window[w], n))
                acc.addcmul_(src_all[d, w], v)  # Σ_d src · conj(gU) = conj(dL/dt), since U = src · t
                del v  # as in forward
            transmission_vjp(t[w:w + 1], s.phase_per_m[w:w + 1], acc.conj()[None], out=grad_h)
        return grad_h, None, None

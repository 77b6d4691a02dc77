"""Point sources at depth, the PSF stack (depth, wavelength, y, x) and sampling to the sensor.

The element sits in the pupil: a circular aperture of diameter D on an N×N grid of pitch dx, zero padded to
M×M for propagation over the sensor distance. A point source at depth z (or at infinity) illuminates it with
a spherical (or plane) wave; the element adds phase 2π(n(λ) − 1)h/λ; the field is propagated to the sensor and
its intensity integrated over sensor pixels. The input power is normalized to 1 per (depth, wavelength), every
propagator is unitary, and light that leaves the PSF window is lost (not renormalized away), so each PSF sums
to at most 1.

The PSF computation is a custom autograd function with the adjoint written out: one FFT pair forward, one
pair backward, one PSF at a time into a reused zero-padded buffer. Everything that does not depend on the height map
(source waves, aperture, transfer functions, crop indices) is precomputed once in `OpticalSystem`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lensdesign.errors import SpecError
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
    choice = choose_propagator(dx, m * dx, wls, z, o.propagator)
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
    """Precomputed, height-independent parts of the imaging model for one spec (no trainable state).

    Attributes are tensors on `device`: `src` (D, W, N, N) complex64 aperture × source wave, power-normalized;
    `phase_per_m` (W,) radians per metre of height, 2π(n − 1)/λ; `h` (W, M, M) complex64 transfer functions.
    """

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", depths: list[float] | None = None,
                 psf_size: int | None = None, bin_override: int | None = None) -> None:
        self.spec = spec
        self.grid = plan_grid(spec, psf_size=psf_size, bin_override=bin_override)
        self.device = torch.device(device)
        self.depths = list(depths) if depths is not None else spec.depths_m
        self.wavelengths = list(spec.wavelengths)
        g = self.grid
        n, m, dx = g.n, g.m, g.dx
        ap = aperture_mask(n, dx, spec.optics.aperture)
        self.n_open = float(ap.sum())
        self.aperture = ap.to(torch.float32).to(self.device)
        norm = 1.0 / math.sqrt(self.n_open)
        self._norm = norm
        self.src = self.source_waves(self.depths)
        idx = spec.refractive_indices
        self.phase_per_m = torch.tensor([2 * math.pi * (nn - 1) / w for nn, w in zip(idx, self.wavelengths, strict=True)],
                                        dtype=torch.float32, device=self.device)
        z = spec.optics.sensor_distance
        self.h = torch.stack([transfer_function(g.choice.kind, m, dx, w, z).to(torch.complex64)
                              for w in self.wavelengths]).to(self.device)
        # Crop: the on-axis fine pixel (index n//2, since the input sits at [0:n] of the padded grid) at the
        # centre of the central sensor pixel; indices wrap around the circular grid.
        k = g.window_fine
        self.crop_start = (n // 2 - (g.psf_size // 2) * g.bin - g.bin // 2) % m
        self.crop = (torch.arange(k, device=self.device) + self.crop_start) % m
        # The same transfer functions with the window moved to the grid corner (shift theorem), so that the
        # forward pass crops with a slice and the adjoint is a plain zero-padded FFT.
        f = torch.fft.fftfreq(m, dtype=torch.float64)
        ramp = torch.polar(torch.ones(m, dtype=torch.float64), 2 * math.pi * f * self.crop_start)
        self._workspaces: dict[str, torch.Tensor] = {}
        self.h_window = (self.h.cpu().to(torch.complex128) * (ramp[:, None] * ramp[None, :])).to(torch.complex64).to(self.device)

    def source_waves(self, depths: list[float]) -> torch.Tensor:
        """Aperture × source wave, power-normalized, (D, W, N, N) complex64 on the device, for any depths (m)."""
        g = self.grid
        ap = self.aperture.to(torch.float64).cpu()
        src = torch.empty(len(depths), len(self.wavelengths), g.n, g.n, dtype=torch.complex64)
        for i, z in enumerate(depths):
            for j, w in enumerate(self.wavelengths):
                src[i, j] = (source_wave(g.n, g.dx, w, z) * ap * self._norm).to(torch.complex64)
        return src.to(self.device)

    def workspace(self, name: str, device: torch.device) -> torch.Tensor:
        """A zero-padded (M, M) complex64 buffer kept between calls, one per pass (`forward`, `backward`).

        Each pass overwrites the same corner of its buffer on every use and leaves the rest zero, so the
        buffer is cleared once, not on every call.
        """
        buf = self._workspaces.get(name)
        if buf is None or buf.device != device:
            buf = torch.zeros(self.grid.m, self.grid.m, dtype=torch.complex64, device=device)
            self._workspaces[name] = buf
        return buf

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.depths), len(self.wavelengths), self.grid.psf_size, self.grid.psf_size)

    def psf(self, height: torch.Tensor, depths: list[float] | None = None) -> torch.Tensor:
        """PSF stack (D, W, P, P) float32 on the sensor pitch for a height map (N, N) in metres.

        `depths` (m) other than the system's own are computed on the fly (e.g. random training depths).
        """
        src = self.src if depths is None else self.source_waves(depths)
        return PSFStack.apply(height.to(self.device, torch.float32), self, src)


def _intensity_binned(u: torch.Tensor, saved: torch.Tensor, out: torch.Tensor, b: int) -> None:
    """Save conj(u) into `saved` (k, k) and write |u|² summed over b × b blocks (sensor pixels) into `out`.

    |u|² = u · conj(u) as one complex product of the saved copy with the window view (no square root, no
    separate squares of strided real and imaginary parts); binning adds strided slices.
    """
    torch.conj_physical(u, out=saved)
    x = torch.mul(saved, u).real
    if b == 1:
        out.copy_(x)
        return
    torch.add(x[0::b, 0::b], x[0::b, 1::b], out=out)
    for i in range(b):
        for j in range(b):
            if i or j > 1:
                out.add_(x[i::b, j::b])


def _spread_times(g: torch.Tensor, saved: torch.Tensor, dest: torch.Tensor, b: int) -> None:
    """dest (k, k) = g (P, P) repeated over b × b blocks, times saved (k, k), without building the repeat.

    `g` has the dtype of `saved` (complex), so each strided product is written straight into `dest`.
    """
    k = saved.shape[-1]
    for i in range(b):
        for j in range(b):
            torch.mul(g, saved[i::b, j::b], out=dest[i:k:b, j:k:b])


def _propagate(padded: torch.Tensor, hf: torch.Tensor, k: int) -> torch.Tensor:
    """ifft2(hf · fft2(padded)) for a zero-padded element field (m, m), cropped to the (k, k) PSF window.

    `hf` is the window-shifted transfer function, which moves the PSF window to the grid corner.
    """
    f = torch.fft.fft2(padded)
    f.mul_(hf)
    return torch.fft.ifft2(f)[..., :k, :k]


def _propagate_conj_adjoint(padded: torch.Tensor, hf: torch.Tensor, n: int) -> torch.Tensor:
    """conj(A^H y) = fft2(hf · ifft2(pad(conj y))) cropped to (n, n), for the map A of `_propagate`.

    With unnormalized fft2 (ifft2 scaled by 1/M²), A^H = crop ∘ ifft2 ∘ conj(hf) ∘ fft2 ∘ pad, and conjugating
    swaps the two transforms, so the adjoint needs no conjugate transfer function and takes the saved conj(u).
    """
    f = torch.fft.ifft2(padded)
    f.mul_(hf)
    return torch.fft.fft2(f)[..., :n, :n]


def _transmission(height: torch.Tensor, phase_per_m: torch.Tensor) -> torch.Tensor:
    """Element transmission exp(i a_w h), (W, N, N) complex64, for heights (N, N) in metres.

    cos and sin separately: several times faster than `torch.polar` on the CPU.
    """
    phase = phase_per_m[:, None, None] * height[None]
    return torch.complex(torch.cos(phase), torch.sin(phase))


class PSFStack(torch.autograd.Function):
    """Height map (N, N) → PSF stack (D, W, P, P), with the adjoint propagation written out.

    Forward and backward each cost one padded fft2+ifft2 pair per PSF, computed one PSF at a time into a
    reused zero-padded buffer (measured faster on the CPU than batching, whose large allocations are
    page-faulted on every call). Each PSF's (M, M) FFT outputs are released before the next PSF's are
    allocated, so the allocator hands back the same warm memory; holding one across iterations measured
    20-40 % slower at M = 1536. The backward pass runs in conjugate space (`_propagate_conj_adjoint`), so it
    reuses the forward's transfer functions and the saved conj(u) directly.
    """

    @staticmethod
    def forward(ctx, height: torch.Tensor, system: OpticalSystem, src_all: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s = system
        g = s.grid
        dd, ww = src_all.shape[0], src_all.shape[1]
        n, k = g.n, g.window_fine
        t = _transmission(height, s.phase_per_m)  # (W, N, N)
        out = torch.empty(dd, ww, g.psf_size, g.psf_size, dtype=torch.float32, device=height.device)
        saved = torch.empty(dd, ww, k, k, dtype=torch.complex64, device=height.device)  # conj(u) on the window
        pad = s.workspace("forward", height.device)  # only the element corner is rewritten for each PSF
        corner = pad[:n, :n]
        for w in range(ww):
            for d in range(dd):
                torch.mul(src_all[d, w], t[w], out=corner)
                u = _propagate(pad, s.h_window[w], k)
                _intensity_binned(u, saved[d, w], out[d, w], g.bin)
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
        gi = grad_out.to(torch.complex64)  # one conversion, so the products below need no mixed-dtype copy
        dev = t.device
        grad_h = torch.zeros(n, n, dtype=torch.float32, device=dev)
        acc = torch.empty(n, n, dtype=torch.complex64, device=dev)
        pad = s.workspace("backward", dev)  # only the PSF-window corner is rewritten for each PSF
        window = pad[:k, :k]
        for w in range(ww):
            acc.zero_()
            for d in range(dd):
                # conj(dL/du*) / 2 = dL/dI · conj(u) on the window (torch convention dL/du* = 2 u dL/dI)
                _spread_times(gi[d, w], saved[d, w], window, g.bin)
                v = _propagate_conj_adjoint(pad, s.h_window[w], n)  # conj of the element-plane gradient, / 2
                acc.addcmul_(src_all[d, w], v)  # Σ_d src · conj(gU) = conj(Σ_d conj(src) · gU)
                del v  # as in forward
            # U = src·t, t = exp(i a h): dL/dh = a · Im(conj(t) · Σ conj(src) gU) = −2a · Im(t · acc)
            grad_h.sub_((t[w] * acc).imag, alpha=2.0 * float(s.phase_per_m[w]))
        return grad_h, None, None

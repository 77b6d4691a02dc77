"""The forward model as pure tensor functions: element transmission, propagation to the PSF window, intensity
binned to sensor pixels, and the adjoints of their linear parts.

A PSF of one (depth, wavelength) pair is

    psf = bin_b(|crop_k(ifft2(H_w · fft2(pad_M(src · exp(i a h)))))|²)

with `src` (N, N) the power-normalized source wave times the aperture, `a` = 2π(n(λ) − 1)/λ the phase per metre
of height `h` (N, N, metres), `H_w` (M, M) the window-shifted transfer function, `crop_k` the first k × k
samples of the padded grid and `bin_b` the sum over b × b blocks (sensor pixels, k = P · b).

Sensor-grid convention: the PSF window is P × P sensor pixels of b × b simulation samples; the optical axis (the
element's sample N // 2) lies at the centre of the central pixel P // 2, whatever the parity of b (and of P:
pixel P // 2 is the central one of an odd window and the one just past the middle of an even window). For odd P
the window's samples then lie symmetrically about the axis, from −(P·b − 1)/2 to +(P·b − 1)/2 samples.
`window_start` gives the window's first sample relative to the element's first sample, in simulation samples: a
half-integer when b is even, so the field is read half a sample off the element grid. `window_transfer` folds that
shift into the transfer function by the shift theorem (a unit-modulus phase ramp: for a fractional shift, the
band-limited interpolation of the field on the periodic grid), so the window is the corner of the grid, cropping is
a slice and the adjoint is a zero-padded FFT. The analysis path (`FieldAnalyzer`) uses the same two functions with
the whole padded field as its window (P = M, b = 1: the axis at index M // 2). Energy: `src` carries unit power,
every transfer function is unitary, so a PSF sums to the power that falls into its window (at most 1).

Contract for any implementation of the PSF stack (the 2-D path here, `OpticalSystem` / `PSFStack`; a 1-D or
sharded path must honour the same):

* input: element heights (metres, float32) and depths (metres, `inf` for a plane wave);
* output: (D, W, P, P) float32, depth-major, wavelengths in spec order, intensity integrated over each sensor
  pixel of pitch `Grid.sensor_pitch`, the axis at the centre of pixel (P // 2, P // 2);
* normalization: unit input power per (depth, wavelength) through the clear aperture; light leaving the window is
  lost, never renormalized;
* differentiable with respect to the heights; `psf_reference` (plain autograd) is the reference it is tested
  against.

Shapes: N element grid, M padded FFT grid, k = P · b PSF window in simulation samples, W wavelengths, D depths.
FFTs are unnormalized forward (`fft2`) and 1/M²-normalized inverse (`ifft2`).
"""

from __future__ import annotations

import math

import torch

# ---- sensor-grid convention ----------------------------------------------------------------------------------


def window_start(n: int, psf_size: int, b: int) -> float:
    """First sample of the PSF window relative to the element's first sample (simulation samples, mod M).

    The axis (element sample n // 2) at window coordinate (P // 2) · b + (b − 1) / 2, the centre of pixel P // 2:
    an integer start for odd b, a half-integer for even b.
    """
    return n // 2 - (psf_size // 2) * b - (b - 1) / 2


def window_transfer(h: torch.Tensor, start: float) -> torch.Tensor:
    """Transfer functions (…, M, M) with the field shifted by `start` samples (shift theorem), same dtype as `h`.

    ifft2(window_transfer(h, s) · X)[i, j] = ifft2(h · X)[i + s, j + s] (circular; band-limited for fractional s).
    """
    m = h.shape[-1]
    f = torch.fft.fftfreq(m, dtype=torch.float64)
    ramp = torch.polar(torch.ones(m, dtype=torch.float64), 2 * math.pi * f * (start % m))
    return (h.cpu().to(torch.complex128) * (ramp[:, None] * ramp[None, :])).to(h.dtype).to(h.device)


# ---- element ------------------------------------------------------------------------------------------------


def transmission(height: torch.Tensor, phase_per_m: torch.Tensor) -> torch.Tensor:
    """Element transmission exp(i a_w h), (W, N, N) complex, for heights (N, N) in metres and a (W,) in rad/m.

    cos and sin separately: several times faster than `torch.polar` on the CPU.
    """
    phase = phase_per_m[:, None, None] * height[None]
    return torch.complex(torch.cos(phase), torch.sin(phase))


def transmission_jvp(t: torch.Tensor, phase_per_m: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    """Linearization of `transmission` at t (W, N, N): the change i a_w t_w dh (W, N, N) for a height change dh (N, N)."""
    return 1j * phase_per_m[:, None, None] * t * dh[None]


def transmission_vjp(t: torch.Tensor, phase_per_m: torch.Tensor, grad_t: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Adjoint of `transmission_jvp` (real inner product): Σ_w a_w Im(conj(t_w) g_w), (N, N) real, added to `out`.

    `grad_t` (W, N, N) is the gradient with respect to t in torch's convention (dL/dRe t + i dL/dIm t).
    """
    if out is None:
        out = torch.zeros(t.shape[-2:], dtype=t.real.dtype, device=t.device)
    for w in range(t.shape[0]):
        out.sub_((t[w] * grad_t[w].conj()).imag, alpha=float(phase_per_m[w]))  # Im(conj(t) g) = −Im(t conj(g))
    return out


# ---- propagation ---------------------------------------------------------------------------------------------


def sensor_spectrum(field: torch.Tensor, h_window: torch.Tensor) -> torch.Tensor:
    """Spectrum of the sensor-plane field, fft2(pad_M(field)) · H_w, (…, M, M), for an element field (…, N, N)
    (or already zero-padded (…, M, M)) and transfer functions (…, M, M)."""
    m = h_window.shape[-1]
    return torch.fft.fft2(field, s=(m, m)).mul_(h_window)


def propagate_to_window(field: torch.Tensor, h_window: torch.Tensor, k: int) -> torch.Tensor:
    """Sensor-plane field on the k × k PSF window, (…, k, k), of an element field (…, N, N) or (…, M, M) padded.

    The operator A = crop_k ∘ ifft2 ∘ H_w ∘ fft2 ∘ pad_M; see `propagate_to_window_adjoint`.
    """
    return torch.fft.ifft2(sensor_spectrum(field, h_window))[..., :k, :k]


def propagate_conj_adjoint(padded: torch.Tensor, h_window: torch.Tensor, n: int) -> torch.Tensor:
    """conj(Aᴴ y) (…, n, n) for `padded` = pad_M(conj y) (…, M, M), with A the map of `propagate_to_window`.

    Aᴴ = crop_n ∘ ifft2 ∘ conj(H_w) ∘ fft2 ∘ pad_M; conjugating swaps the two transforms, so the adjoint needs no
    conjugate transfer function: conj(Aᴴ y) = crop_n(fft2(H_w · ifft2(pad_M(conj y)))).
    """
    f = torch.fft.ifft2(padded)
    f.mul_(h_window)
    return torch.fft.fft2(f)[..., :n, :n]


PRUNE_MIN = 1536
"""Padded grids from this size on use the pruned transforms (`propagate_to_window_pruned`,
`propagate_conj_adjoint_pruned`): measured 1.13–1.21× faster forward and 1.12–1.18× adjoint per PSF at M = 1536 …
3750 on one CPU thread, slower below M ≈ 1024 (`make bench`)."""


def propagate_to_window_pruned(padded: torch.Tensor, h_window: torch.Tensor, k: int) -> torch.Tensor:
    """`propagate_to_window` of a zero-padded field (…, M, M) with the inverse transform pruned to the window: the
    transform along x runs over all M rows, the one along y only over the window's k columns (on a transposed
    copy, so both are contiguous row transforms). Returns the window field (…, k, k) as a transposed view."""
    spec = sensor_spectrum(padded, h_window)
    cols = torch.fft.ifft(spec, dim=-1)[..., :k]  # (…, M, k): the window's columns, still a spectrum along y
    del spec
    return torch.fft.ifft(cols.transpose(-1, -2).contiguous(), dim=-1)[..., :k].transpose(-1, -2)


def propagate_conj_adjoint_pruned(window: torch.Tensor, h_window: torch.Tensor, n: int) -> torch.Tensor:
    """`propagate_conj_adjoint` from the window alone, `window` = conj y (…, k, k): the first inverse transform
    runs along y over the window's k columns only (zero-padded to M), then along x over all M rows."""
    m = h_window.shape[-1]
    cols = torch.fft.ifft(window.transpose(-1, -2), n=m, dim=-1)  # (…, k, M): x, then the y frequency
    f = torch.fft.ifft(cols.transpose(-1, -2).contiguous(), n=m, dim=-1)  # (…, M, M)
    del cols
    f.mul_(h_window)
    return torch.fft.fft2(f)[..., :n, :n]


def propagate_to_window_adjoint(y: torch.Tensor, h_window: torch.Tensor, n: int) -> torch.Tensor:
    """Aᴴ y (…, n, n) for a window field y (…, k, k): the adjoint of `propagate_to_window`."""
    m = h_window.shape[-1]
    k = y.shape[-1]
    padded = torch.nn.functional.pad(y.conj().resolve_conj(), (0, m - k, 0, m - k))
    return propagate_conj_adjoint(padded, h_window, n).conj()


# ---- sensor pixels -------------------------------------------------------------------------------------------


def bin_pixels(x: torch.Tensor, b: int) -> torch.Tensor:
    """Sum over b × b blocks: (…, P·b, P·b) → (…, P, P) (integration over sensor pixels)."""
    *lead, k, _ = x.shape
    p = k // b
    return x.reshape(*lead, p, b, p, b).sum(dim=(-1, -3))


def spread_pixels(g: torch.Tensor, b: int) -> torch.Tensor:
    """Adjoint of `bin_pixels`: each pixel's value repeated over its b × b block, (…, P, P) → (…, P·b, P·b)."""
    return g.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)


def intensity(u: torch.Tensor) -> torch.Tensor:
    """|u|² of complex fields (…), real, without a square root."""
    return u.real.square() + u.imag.square()


def binned_intensity(u: torch.Tensor, b: int) -> torch.Tensor:
    """Intensity |u|² of window fields (…, P·b, P·b) integrated over sensor pixels, (…, P, P) real."""
    return bin_pixels(intensity(u), b)


def binned_intensity_into(u: torch.Tensor, saved: torch.Tensor, out: torch.Tensor, b: int) -> None:
    """`binned_intensity(u, b)` (k, k) → (P, P) written into `out`, saving conj(u) into `saved` (k, k).

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


def spread_times_into(g: torch.Tensor, saved: torch.Tensor, dest: torch.Tensor, b: int) -> None:
    """dest (k, k) = spread_pixels(g, b) · saved, for g (P, P) of the dtype of `saved`, without building the spread."""
    k = saved.shape[-1]
    for i in range(b):
        for j in range(b):
            torch.mul(g, saved[i::b, j::b], out=dest[i:k:b, j:k:b])


def pupil_psf(pupil: torch.Tensor, h_window: torch.Tensor, psf_size: int, b: int) -> torch.Tensor:
    """PSFs (…, P, P) of element-plane fields (…, N, N) (source × aperture × element): propagate, |u|², bin."""
    return binned_intensity(propagate_to_window(pupil, h_window, psf_size * b), b)


# ---- the reference -------------------------------------------------------------------------------------------


def psf_reference(height: torch.Tensor, src: torch.Tensor, phase_per_m: torch.Tensor, h_window: torch.Tensor,
                  psf_size: int, b: int) -> torch.Tensor:
    """The PSF stack (D, W, P, P) written with plain autograd, every step out of place: the test reference.

    `src` (D, W, N, N) power-normalized source waves × aperture, `phase_per_m` (W,), `h_window` (W, M, M); works in
    any precision (complex128 inputs give a float64 stack).
    """
    t = torch.polar(torch.ones_like(height), phase_per_m[:, None, None] * height[None])
    m = h_window.shape[-1]
    u = torch.fft.ifft2(torch.fft.fft2(src * t[None], s=(m, m)) * h_window[None])
    k = psf_size * b
    return bin_pixels(intensity(u[..., :k, :k]), b)


class Scratch:
    """Zero-padded (M, M) complex64 buffers kept between PSF-stack calls, one per pass (`forward`, `backward`).

    Each pass rewrites the same corner of its buffer on every use and leaves the rest zero, so a buffer is
    cleared once, when it is made (on first use, on the device of the call).
    """

    def __init__(self, m: int) -> None:
        self.m = m
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, device: torch.device) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.device != device:
            buf = torch.zeros(self.m, self.m, dtype=torch.complex64, device=device)
            self._bufs[name] = buf
        return buf

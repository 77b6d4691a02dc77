"""Free-space propagators (pure tensor functions) and the sampling criteria that choose between them.

All lengths in metres, frequencies in cycles/metre. Transfer functions are returned in FFT order (zero
frequency at index 0) so that ``ifft2(fft2(u) * H)`` propagates ``u`` by ``z``. The constant phase
``exp(i k z)`` is dropped everywhere (it does not change intensities).

Criteria (Voelz, *Computational Fourier Optics*, 2011; Matsushima & Shimobaba, Opt. Express 17, 19662, 2009):

* Fresnel transfer function: chirp well sampled when ``dx >= λ z / L`` (L = padded width).
* Fresnel impulse response: chirp well sampled when ``dx <= λ z / L``.
* Band-limited angular spectrum: exact scalar diffraction, band-limited to
  ``|f| <= 1 / (λ sqrt((2 z / L)² + 1))``; accurate for both regimes at the cost of a non-separable kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROPAGATORS = ("transfer", "impulse", "asm")


def fft_size(n: int) -> int:
    """Smallest even 5-smooth integer >= n (fast FFT sizes)."""
    m = max(2, n + (n % 2))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1 and m % 2 == 0:
            return m
        m += 2


def _freqs(m: int, dx: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.fft.fftfreq(m, d=dx, dtype=dtype)


def fresnel_transfer(m: int, dx: float, wavelength: float, z: float) -> torch.Tensor:
    """Fresnel transfer function H(fx, fy) = exp(-iπλz(fx² + fy²)), (m, m) complex128, built separably."""
    f = _freqs(m, dx)
    h1 = torch.exp(-1j * math.pi * wavelength * z * f**2)
    return h1[:, None] * h1[None, :]


def fresnel_impulse_transfer(m: int, dx: float, wavelength: float, z: float) -> torch.Tensor:
    """Transfer function of the sampled Fresnel impulse response h = exp(iπ r²/(λz)) / (iλz), (m, m) complex128.

    ``H = FFT(h) dx²``, computed separably from 1-D chirps (the 2-D FFT of an outer product is the outer
    product of the 1-D FFTs).
    """
    x = (torch.arange(m, dtype=torch.float64) - m // 2) * dx
    h1 = torch.exp(1j * math.pi * x**2 / (wavelength * z))
    g1 = torch.fft.fft(torch.fft.ifftshift(h1)) * dx
    scale = 1.0 / (1j * wavelength * z)
    return (g1[:, None] * g1[None, :]) * scale


def asm_band_limit(m: int, dx: float, wavelength: float, z: float) -> float:
    """Band limit of the angular spectrum method, cycles/m (Matsushima & Shimobaba 2009)."""
    df = 1.0 / (m * dx)
    return 1.0 / (wavelength * math.sqrt((2.0 * df * z) ** 2 + 1.0))


def asm_transfer(m: int, dx: float, wavelength: float, z: float) -> torch.Tensor:
    """Band-limited angular-spectrum transfer function exp(i2πz(√(1/λ² − f²) − 1/λ)), (m, m) complex128."""
    f = _freqs(m, dx)
    fx, fy = f[:, None], f[None, :]
    arg = 1.0 / wavelength**2 - fx**2 - fy**2
    kz = torch.sqrt(torch.clamp(arg, min=0.0))
    phase = 2 * math.pi * z * (kz - 1.0 / wavelength)
    lim = asm_band_limit(m, dx, wavelength, z)
    mask = (fx.abs() <= lim) & (fy.abs() <= lim) & (arg > 0)
    return torch.polar(mask.to(torch.float64), phase)


def transfer_function(kind: str, m: int, dx: float, wavelength: float, z: float) -> torch.Tensor:
    """Transfer function of propagator `kind` (one of PROPAGATORS)."""
    if kind == "transfer":
        return fresnel_transfer(m, dx, wavelength, z)
    if kind == "impulse":
        return fresnel_impulse_transfer(m, dx, wavelength, z)
    if kind == "asm":
        return asm_transfer(m, dx, wavelength, z)
    raise ValueError(f"unknown propagator {kind!r}; use one of {PROPAGATORS}")


@dataclass(frozen=True)
class PropagatorChoice:
    """Which propagator and why; `ok` False means no propagator is well sampled for the request."""

    kind: str
    reason: str
    ok: bool = True


def choose_propagator(dx: float, padded_width: float, wavelengths: list[float], z: float,
                      requested: str = "auto") -> PropagatorChoice:
    """Pick the propagator by the chirp-sampling criterion λz/L against dx for all wavelengths."""
    crit = [w * z / padded_width for w in wavelengths]
    crit_s = ", ".join(f"{c * 1e6:.3g}" for c in crit)
    dx_s = f"{dx * 1e6:.3g} um"
    if requested == "transfer":
        if all(dx >= c for c in crit):
            return PropagatorChoice("transfer", f"requested; dx = {dx_s} >= λz/L = {crit_s} um")
        return PropagatorChoice("transfer", f"optics.propagator transfer is under-sampled: dx = {dx_s} < λz/L = "
                                f"{crit_s} um; use propagator auto, impulse or asm, or raise optics.padding", ok=False)
    if requested == "impulse":
        if all(dx <= c for c in crit):
            return PropagatorChoice("impulse", f"requested; dx = {dx_s} <= λz/L = {crit_s} um")
        return PropagatorChoice("impulse", f"optics.propagator impulse is under-sampled: dx = {dx_s} > λz/L = "
                                f"{crit_s} um; use propagator auto, transfer or asm", ok=False)
    if requested == "asm":
        return PropagatorChoice("asm", "requested; band-limited angular spectrum (Matsushima & Shimobaba 2009)")
    if all(dx >= c for c in crit):
        return PropagatorChoice("transfer", f"Fresnel transfer function: dx = {dx_s} >= λz/L = {crit_s} um "
                                "at every wavelength (chirp well sampled)")
    if all(dx <= c for c in crit):
        return PropagatorChoice("impulse", f"Fresnel impulse response: dx = {dx_s} <= λz/L = {crit_s} um "
                                "at every wavelength (transfer-function chirp would alias)")
    return PropagatorChoice("asm", f"band-limited angular spectrum: λz/L = {crit_s} um straddles dx = {dx_s}, "
                            "so neither Fresnel form is well sampled at every wavelength")

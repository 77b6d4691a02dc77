"""Surface parameterizations → height map h(x, y) in metres, kept within [0, max_height).

Each surface is an `nn.Module` holding only its trainable parameters; `height()` returns the (N, N) map.
A diffractive surface (`wrapped`, the default) wraps heights modulo `max_height` (a phase wrap when max_height
is a whole number of waves), which keeps the element inside the etch depth while leaving the optimizer free to
move across the wrap. A refractive sag (`wrapped = False`, see lensdesign.optics.element) is clamped to
[0, max_height] instead, zernike and fourier sags with their piston removed. `unit` (m) is the height one unit of
a zernike / fourier coefficient stands for: max_height for a diffractive surface, one wave at the design
wavelength for a refractive sag; `step_scale` converts a learning rate in those units to the parameters' units.

* pixel: one free height per block of `block × block` grid pixels (block = ceil(min_feature / pitch)), so no
  feature is smaller than the fabrication minimum.
* radial: rotationally symmetric, constant over rings of width `ring_width` (≥ min_feature).
* zernike: Noll-ordered Zernike polynomials over the aperture, coefficients in units of `unit`.
* fourier: low-frequency Fourier coefficients (a fraction of the band), in units of `unit`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def wrap(h: torch.Tensor, max_height: float) -> torch.Tensor:
    """Heights modulo max_height, in [0, max_height); gradient 1 almost everywhere."""
    return torch.remainder(h, max_height)


class Surface(nn.Module):
    """Base class: an element of n × n samples at pitch `pitch` (m) with heights in [0, max_height) (m)."""

    kind = "base"

    def __init__(self, n: int, pitch: float, max_height: float) -> None:
        super().__init__()
        self.n = n
        self.pitch = pitch
        self.max_height = max_height
        self.unit = max_height
        self.wrapped = True

    def limit(self, h: torch.Tensor) -> torch.Tensor:
        """Heights (m) into the element: wrapped modulo max_height, or clamped to [0, max_height] (a sag)."""
        return wrap(h, self.max_height) if self.wrapped else torch.clamp(h, 0.0, self.max_height)

    @property
    def step_scale(self) -> float:
        """Metres per unit of the learning rate for these parameters (heights in metres: `unit`)."""
        return self.unit

    def height(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def init_from_height(self, h: torch.Tensor) -> None:  # pragma: no cover - abstract
        """Set the parameters to approximate the height map h (N, N) in metres."""
        raise NotImplementedError


class PixelSurface(Surface):
    kind = "pixel"

    def __init__(self, n: int, pitch: float, max_height: float, block: int = 1) -> None:
        super().__init__(n, pitch, max_height)
        self.block = max(1, block)
        nb = math.ceil(n / self.block)
        self.param = nn.Parameter(torch.zeros(nb, nb))

    def height(self) -> torch.Tensor:
        h = self.limit(self.param)
        if self.block > 1:
            h = h.repeat_interleave(self.block, 0).repeat_interleave(self.block, 1)
        return h[: self.n, : self.n]

    def init_from_height(self, h: torch.Tensor) -> None:
        b = self.block
        nb = self.param.shape[0]
        hp = torch.nn.functional.pad(h, (0, nb * b - self.n, 0, nb * b - self.n))
        # sample the block centres (a block average would blur across 2π wraps)
        c = b // 2
        with torch.no_grad():
            self.param.copy_(hp[c::b, c::b][:nb, :nb])


class RadialSurface(Surface):
    kind = "radial"

    def __init__(self, n: int, pitch: float, max_height: float, ring_width: float) -> None:
        super().__init__(n, pitch, max_height)
        self.ring_width = max(ring_width, pitch)
        x = (torch.arange(n, dtype=torch.float64) - n // 2) * pitch
        r = torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2)
        idx = torch.floor(r / self.ring_width).long()
        self.rings = int(idx.max()) + 1
        self.register_buffer("ring_index", idx, persistent=False)
        self.param = nn.Parameter(torch.zeros(self.rings))

    def height(self) -> torch.Tensor:
        return self.limit(self.param)[self.ring_index]

    def ring_heights(self) -> torch.Tensor:
        """Height of each ring (m), ring j covering radii [j·w, (j+1)·w)."""
        return self.limit(self.param).detach()

    def init_from_height(self, h: torch.Tensor) -> None:
        with torch.no_grad():
            r = (torch.arange(self.rings, dtype=torch.float64) + 0.5) * self.ring_width
            i = torch.clamp(torch.round(r / self.pitch).long() + self.n // 2, max=self.n - 1)
            self.param.copy_(h[self.n // 2, i].to(self.param.dtype))


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index j (1-based) → radial order n and signed azimuthal frequency m (m > 0: cos, m < 0: sin)."""
    n, j1 = 0, j - 1
    while j1 > n:
        n += 1
        j1 -= n
    m = (-1) ** j * ((n % 2) + 2 * ((j1 + ((n + 1) % 2)) // 2))
    return n, m


def zernike(j: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Noll-normalized Zernike polynomial Z_j on the unit disk (zero outside)."""
    n, m = noll_to_nm(j)
    ma = abs(m)
    rad = torch.zeros_like(rho)
    for k in range((n - ma) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + ma) // 2 - k) * math.factorial((n - ma) // 2 - k))
        rad = rad + c * rho ** (n - 2 * k)
    if m == 0:
        z = math.sqrt(n + 1) * rad
    elif m > 0:
        z = math.sqrt(2 * (n + 1)) * rad * torch.cos(ma * theta)
    else:
        z = math.sqrt(2 * (n + 1)) * rad * torch.sin(ma * theta)
    return torch.where(rho <= 1.0, z, torch.zeros_like(z))


class ZernikeSurface(Surface):
    kind = "zernike"

    def __init__(self, n: int, pitch: float, max_height: float, terms: int, aperture: float) -> None:
        super().__init__(n, pitch, max_height)
        x = (torch.arange(n, dtype=torch.float64) - n // 2) * pitch
        yy, xx = x[:, None].expand(n, n), x[None, :].expand(n, n)
        rho = torch.sqrt(xx**2 + yy**2) / (aperture / 2)
        theta = torch.atan2(yy, xx)
        basis = torch.stack([zernike(j, rho, theta) for j in range(1, terms + 1)]).to(torch.float32)
        self.register_buffer("basis", basis, persistent=False)
        self.param = nn.Parameter(torch.zeros(terms))

    @property
    def step_scale(self) -> float:
        return 1.0  # coefficients are in units of `unit`

    def height(self) -> torch.Tensor:
        h = torch.einsum("j,jyx->yx", self.param, self.basis) * self.unit
        if not self.wrapped:  # a sag: piston removed over the aperture, zero outside it
            inside = self.basis[0] != 0
            h = torch.where(inside, h - h[inside].min(), torch.zeros_like(h))
        return self.limit(h)

    def init_from_height(self, h: torch.Tensor) -> None:
        # least squares on the (unwrapped) map is ill-posed after wrapping; start flat
        with torch.no_grad():
            self.param.zero_()


class FourierSurface(Surface):
    kind = "fourier"

    def __init__(self, n: int, pitch: float, max_height: float, fraction: float) -> None:
        super().__init__(n, pitch, max_height)
        k = max(2, round(n * fraction))
        k -= k % 2
        self.k = k
        self.param = nn.Parameter(torch.zeros(2, k, k))

    def height(self) -> torch.Tensor:
        n, k = self.n, self.k
        c = torch.complex(self.param[0], self.param[1])
        spec = torch.zeros(n, n, dtype=c.dtype, device=c.device)
        a = n // 2 - k // 2
        spec = spec.index_put((torch.arange(a, a + k, device=c.device)[:, None],
                               torch.arange(a, a + k, device=c.device)[None, :]), c)
        h = torch.fft.ifft2(torch.fft.ifftshift(spec), norm="ortho").real * self.unit
        if not self.wrapped:
            h = h - h.min()
        return self.limit(h)

    @property
    def step_scale(self) -> float:
        return 1.0  # coefficients are in units of `unit`

    def init_from_height(self, h: torch.Tensor) -> None:
        with torch.no_grad():
            self.param.zero_()


def make_surface(kind: str, n: int, pitch: float, max_height: float, min_feature: float | None,
                 aperture: float, zernike_terms: int = 36, fourier_fraction: float = 0.625) -> Surface:
    """Build the surface named by `optics.parameterization`."""
    block = max(1, math.ceil((min_feature or pitch) / pitch - 1e-9))
    if kind == "pixel":
        return PixelSurface(n, pitch, max_height, block)
    if kind == "radial":
        return RadialSurface(n, pitch, max_height, block * pitch)
    if kind == "zernike":
        return ZernikeSurface(n, pitch, max_height, zernike_terms, aperture)
    if kind == "fourier":
        return FourierSurface(n, pitch, max_height, fourier_fraction)
    raise ValueError(f"unknown parameterization {kind!r}")


class HybridSurface(Surface):
    """A fixed refractive base sag (N, N) in metres plus a diffractive `inner` surface wrapped at one wave on top,
    clamped to [0, max_height]; the parameters are the inner surface's."""

    kind = "hybrid"

    def __init__(self, inner: Surface, base: torch.Tensor, max_height: float) -> None:
        super().__init__(inner.n, inner.pitch, max_height)
        self.inner = inner
        self.unit = inner.unit
        self.wrapped = False
        self.register_buffer("base", base.to(torch.float32), persistent=False)

    @property
    def step_scale(self) -> float:
        return self.inner.step_scale

    def height(self) -> torch.Tensor:
        return self.limit(self.base + self.inner.height())

    def relief(self) -> torch.Tensor:
        """The diffractive relief alone (N, N), m."""
        return self.inner.height()

    def init_from_height(self, h: torch.Tensor) -> None:
        """Start the relief flat: the base lens already focuses."""
        with torch.no_grad():
            for p in self.inner.parameters():
                p.zero_()

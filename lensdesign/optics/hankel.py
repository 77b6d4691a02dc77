"""The 1-D (Hankel) path for rotationally symmetric systems: ring profile → PSF stack (D, W, P, P).

For an element made of rings (heights constant on annuli [j·w, (j+1)·w), w the ring width) lit by on-axis point
sources through a circular aperture of radius a, the field stays rotationally symmetric and the 2-D diffraction
integral collapses to a 1-D integral over the radius. This module implements the PSF contract of the 2-D path
(`optics/forward.py`): (D, W, P, P) float32 on the `plan_grid` window with the axis at the centre of pixel
(P // 2, P // 2), intensity integrated over each square sensor pixel, input power normalized to 1 per (depth,
wavelength), light that leaves the window lost (no periodic wrap), differentiable with respect to the heights.

Element field (r in metres, r ≤ a), normalized so that ∫|U|² dA = 1:

    U(r) = exp(i k (√(r² + z_d²) − z_d)) · exp(i 2π (n(λ) − 1) h(r) / λ) / √(π a²)      (plane wave for z_d = inf)

Two propagators to the sensor at distance z:

* ``fresnel`` (paraxial), the Fresnel–Hankel integral, up to a phase factor that drops out of |u|²:
  u(ρ) = (2π / λz) ∫₀ᵃ U(r) exp(iπ r² / λz) J₀(2π r ρ / λz) r dr.
* ``asm`` (non-paraxial), the angular spectrum through a Hankel transform: F(f) = 2π ∫₀ᵃ U(r) J₀(2π f r) r dr at the
  nodes f_m = j_m / (2πR) of the quasi-discrete Hankel transform (Guizar-Sicairos & Gutiérrez-Vega, JOSA A 21,
  53, 2004), times H(f) = exp(i2πz(√(1/λ² − f²) − 1/λ)) band-limited to the light that can reach the window, and
  the Fourier–Bessel series u(ρ) = Σ_m F(f_m) H(f_m) J₀(2π f_m ρ) / (π R² J₁²(j_m)), exact for a field that
  vanishes beyond R.

The ring integrals are not point-sampled: each ring is integrated by Gauss–Legendre with as many nodes as the
turn of the integrand's phase over it (source wave + propagation chirp + Bessel kernel) needs for an error below
1e-3 of the ring's weight (`GL_TURN`). The element phase is constant on a ring, so the ring heights enter as one
complex factor per ring. Everything that does not depend on the heights — quadrature nodes, source waves, kernel
matrices, the radius → sensor-pixel integration weights — is precomputed once in `RadialSystem`; a PSF stack is
then one real (2·D·W × Q) @ (Q × K) matrix product for all PSFs (``fresnel``: the radii of wavelength λ are
scaled by λ/λ_min so that one kernel serves every wavelength; ``asm``: two products), one sparse product for the
pixel integration, and plain autograd for the gradient (the sparse product with its stored transpose).

Pixel integration: the intensity is sampled on a radial grid of step dρ = λ_min z / (8 D) (an eighth of the
finest intensity fringe), interpolated by Keys cubic convolution in ρ, and integrated over each square sensor
pixel by an s × s Gauss–Legendre rule with s from the same fringe period; the weights of a pixel's sub-samples are
summed into one sparse row per pixel (W·P² × W·K, block-diagonal over wavelengths).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse, special

from lensdesign.errors import LensdesignError
from lensdesign.optics.psf import Grid, plan_grid
from lensdesign.spec import Spec

FORMS = ("fresnel", "asm")
# Largest phase turn (rad) over an interval that q-point Gauss–Legendre integrates exp(iφ) on to 1e-3 (q = 1 … 10)
GL_TURN = (0.15, 1.44, 3.61, 6.22, 9.1, 12.15, 15.32, 18.58, 21.91, 25.3)
RADIAL_SAMPLES = 8  # radial intensity samples per λ_min z / D (the period of the finest intensity fringe)
PIXEL_SAMPLES = 4  # Gauss–Legendre sub-samples per λ_min z / D across a sensor pixel (per axis), plus one
ASM_MARGIN = 1.1  # band limit and domain margin of the angular-spectrum form


# ---- geometry ------------------------------------------------------------------------------------------------


def ring_width(spec: Spec) -> float:
    """Ring width (m) of the radial parameterization: ⌈min_feature / pitch⌉ pitches (as `make_surface`)."""
    dx = spec.optics.pitch
    block = max(1, math.ceil((spec.fabrication.min_feature or dx) / dx - 1e-9))
    return block * dx


def ring_count(n: int, pitch: float, width: float) -> int:
    """Number of rings of the radial surface on an n × n grid at `pitch` (m): rings reach the grid corner."""
    r_corner = math.hypot(n // 2, n // 2) * pitch
    return math.floor(r_corner / width + 1e-12) + 1


def ring_index(n: int, pitch: float, width: float, rings: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, n) int64: the ring ⌊r / width⌋ of each sample of the element grid (axis at index n // 2), at most
    rings − 1 (the last ring reaches beyond the profile's end). The one rule of every ring ↔ grid conversion."""
    x = (torch.arange(n, dtype=torch.float64, device=device) - n // 2) * pitch
    return torch.floor(torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2) / width).long().clamp_(max=rings - 1)


def render_rings(profile: torch.Tensor, n: int, pitch: float, width: float) -> torch.Tensor:
    """The (n, n) height map (m) of a ring profile (J,) on the 2-D element grid (axis at index n // 2), as the
    radial surface renders it: sample (i, j) takes ring ⌊r / width⌋ (the last ring beyond the profile's end)."""
    return profile[ring_index(n, pitch, width, profile.shape[0], profile.device)]


@functools.lru_cache(maxsize=8)
def ring_samples(n: int, pitch: float, width: float, rings: int) -> torch.Tensor:
    """Flat index (J,) into an (n, n) grid of one sample inside each ring, with the ring of a sample computed as
    `render_rings` computes it (floating-point edges included); rings with no sample take the last one."""
    idx = ring_index(n, pitch, width, rings).reshape(-1)
    first = torch.full((rings,), n * n - 1, dtype=torch.long)
    return first.scatter_reduce_(0, idx, torch.arange(n * n), reduce="amin")


def profile_from_height(height: torch.Tensor, pitch: float, width: float, rings: int) -> torch.Tensor:
    """Ring heights (J,) (m) read back from a rendered (n, n) ring map, one sample per ring (`ring_samples`):
    the inverse of `render_rings` for ring maps, differentiable (a ring's gradient lands on its sample)."""
    n = height.shape[-1]
    return height.reshape(-1)[ring_samples(n, pitch, width, rings).to(height.device)]


def lens_profile(spec: Spec, rings: int, width: float, focus_depth: float | None = None) -> torch.Tensor:
    """Ring heights (J,) float64 (m) of the Fresnel lens for the design wavelength focused at `focus_depth` (default
    the spec's): the wrapped paraxial lens phase −k r²/(2f) at each ring's centre."""
    from lensdesign.baselines import focal_length, phase_to_height

    r = (torch.arange(rings, dtype=torch.float64) + 0.5) * width
    phase = -2 * math.pi / spec.design_wavelength_m * r**2 / (2 * focal_length(spec, focus_depth))
    return phase_to_height(phase, spec)


@dataclass(frozen=True)
class RingQuadrature:
    """Quadrature nodes over the element's radius: `r` (Q,) m, `weight` (Q,) m² (2π r dr, so Σ weight = π a²
    for a full aperture) and `ring` (Q,) the ring index of each node."""

    r: np.ndarray
    weight: np.ndarray
    ring: np.ndarray


@functools.cache
def _gauss_legendre(q: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(q)


def ring_quadrature(width: float, radius: float, phase_rate: Callable[[float], float]) -> RingQuadrature:
    """Nodes that integrate a function of r over each ring [j·w, (j+1)·w) ∩ [0, radius] without aliasing.

    `phase_rate(r)` bounds |dφ/dr| (rad/m) of the integrand's phase on [0, r] (non-decreasing in r). A ring over
    which the phase turns by Θ gets the fewest Gauss–Legendre nodes q whose error for exp(iφ) is below 1e-3 of
    the ring's weight (`GL_TURN[q − 1]` ≥ Θ); a ring that turns by more is split into equal sub-intervals.
    """
    rings = math.ceil(radius / width - 1e-12)
    r_all, w_all, j_all = [], [], []
    for j in range(rings):
        lo, hi = j * width, min((j + 1) * width, radius)
        if hi <= lo:
            continue
        turn = phase_rate(hi) * (hi - lo)
        pieces = max(1, math.ceil(turn / GL_TURN[-1]))
        q = next(i + 1 for i, lim in enumerate(GL_TURN) if lim >= turn / pieces)
        x, wq = _gauss_legendre(q)
        h = (hi - lo) / pieces
        r = (lo + h * np.arange(pieces)[:, None] + h * (x[None, :] + 1) / 2).ravel()
        r_all.append(r)
        w_all.append(np.pi * h * r * np.tile(wq, pieces))  # 2π r × (h/2) w_q
        j_all.append(np.full(r.size, j))
    return RingQuadrature(np.concatenate(r_all), np.concatenate(w_all), np.concatenate(j_all))


@dataclass(frozen=True)
class PixelIntegration:
    """Integration of radial intensity profiles over the P × P square sensor pixels, one block per wavelength:
    `matrix` (W·P², W·K) sparse CSR, block-diagonal, m² (pixel value = Σ_k matrix[p, k] · I(ρ_k)), `matrix_t` its
    transpose for the adjoint."""

    matrix: torch.Tensor
    matrix_t: torch.Tensor
    size: int  # P

    @classmethod
    def blocks(cls, mats: list[sparse.csr_matrix], size: int) -> PixelIntegration:
        """The operator of per-wavelength (P², K) matrices (from `pixel_weights`)."""
        full = sparse.block_diag(mats, format="csr")
        return cls(_csr(full), _csr(full.T.tocsr()), size)

    def to(self, device: torch.device, dtype: torch.dtype) -> PixelIntegration:
        return PixelIntegration(self.matrix.to(device, dtype), self.matrix_t.to(device, dtype), self.size)


def _csr(m: sparse.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)), torch.from_numpy(m.indices.astype(np.int32)),
                                       torch.from_numpy(m.data), size=m.shape)


def _keys_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights (a = −1/2) of the samples at offsets −1, 0, 1, 2 for fractions t, (…, 4)."""
    t2, t3 = t * t, t * t * t
    return np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0, -1.5 * t3 + 2.0 * t2 + 0.5 * t,
                     0.5 * t3 - 0.5 * t2], axis=-1)


def pixel_weights(size: int, pitch: float, offset: float, d_rho: float, sub: int,
                  count: int | None = None) -> tuple[sparse.csr_matrix, int]:
    """Weights that integrate I(ρ), sampled at ρ_k = k·dρ and interpolated by Keys cubic convolution (I even in
    ρ), over each of the P × P sensor pixels (pixel c centred at (c − P//2)·pitch + offset, m), by an s × s
    Gauss–Legendre rule per pixel.

    Returns the (P², K) matrix (m², P² pixels in row-major order) and the number of radial samples K it reads
    (ρ_max = (K − 1)·dρ); `count` fixes K (at least what the window needs).
    """
    c = (np.arange(size) - size // 2) * pitch + offset
    iy, ix = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    if offset == 0.0:  # the window has the symmetries of the square: |i|, |j| and their swap
        a, b = np.abs(iy - size // 2), np.abs(ix - size // 2)
        key = np.minimum(a, b) * size + np.maximum(a, b)
    else:  # only the swap of x and y
        key = np.minimum(iy, ix) * size + np.maximum(iy, ix)
    keys, first, pixel_of = np.unique(key.ravel(), return_index=True, return_inverse=True)
    cy, cx = c[iy.ravel()[first]], c[ix.ravel()[first]]
    nodes, wts = np.polynomial.legendre.leggauss(sub)
    area = np.outer(wts, wts).ravel() * (pitch / 2) ** 2
    units, chunk = len(keys), max(1, 2_000_000 // (sub * sub))
    starts, rows_w = np.empty(units, dtype=np.int64), []
    for lo in range(0, units, chunk):
        ys = cy[lo:lo + chunk, None, None] + pitch / 2 * nodes[None, :, None]
        xs = cx[lo:lo + chunk, None, None] + pitch / 2 * nodes[None, None, :]
        rho = np.sqrt(ys**2 + xs**2).reshape(-1, sub * sub) / d_rho
        k0 = np.floor(rho).astype(np.int64)
        taps = k0[..., None] + np.arange(-1, 3)  # (u, s², 4) sample indices, reflected at ρ = 0 (I is even)
        wk = _keys_weights(rho - k0) * area[None, :, None]
        taps = np.abs(taps)
        start = taps.min(axis=(1, 2))
        starts[lo:lo + chunk] = start
        rows_w.append((taps - start[:, None, None], wk))
    band = max(int(t.max()) for t, _ in rows_w) + 1
    w = np.zeros((units, band))
    for i, (col, wk) in enumerate(rows_w):
        lo = i * chunk
        n = col.shape[0]
        flat = (np.arange(n)[:, None, None] * band + col).ravel()
        w[lo:lo + n] = np.bincount(flat, weights=wk.ravel(), minlength=n * band).reshape(n, band)
    need = int(starts.max()) + band
    if count is None:
        count = need
    elif count < need:
        raise ValueError(f"count {count} < {need} radial samples needed by the window")
    pixel_of = pixel_of.ravel()
    cols = (starts[:, None] + np.arange(band)[None, :])[pixel_of]
    full = sparse.csr_matrix((w[pixel_of].ravel(), cols.ravel(), np.arange(size * size + 1) * band),
                             shape=(size * size, count))
    full.eliminate_zeros()
    return full, count


class _IntegratePixels(torch.autograd.Function):
    """x (R, C) → (R, Cp) = (matrix @ xᵀ)ᵀ, with the adjoint through the stored transpose."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pix: PixelIntegration) -> torch.Tensor:  # type: ignore[override]
        ctx.pix = pix
        return (pix.matrix @ x.t()).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return (ctx.pix.matrix_t @ grad.t()).t(), None


def integrate_pixels(intensity: torch.Tensor, pix: PixelIntegration) -> torch.Tensor:
    """Radial intensities (D, W, K) (1/m², ∫ I dA = power) → pixel values (D, W, P, P): power per sensor pixel."""
    d, w, _ = intensity.shape
    flat = _IntegratePixels.apply(intensity.reshape(d, -1), pix)
    return flat.reshape(d, w, pix.size, pix.size)


# ---- fields and kernels ----------------------------------------------------------------------------------------


def source_phase(r: np.ndarray, wavelength: float, depth: float) -> np.ndarray:
    """Phase (rad) of the spherical wave from an on-axis point at `depth` (m) at radii r (m); 0 for inf."""
    if math.isinf(depth):
        return np.zeros_like(r)
    return 2 * np.pi / wavelength * (np.sqrt(r**2 + depth**2) - depth)


def fresnel_chirp_phase(r: np.ndarray, wavelength: float, z: float) -> np.ndarray:
    """Phase π r² / (λ z) (rad) of the Fresnel–Hankel integrand at radii r (m)."""
    return np.pi * r**2 / (wavelength * z)


def fresnel_hankel_kernel(r: np.ndarray, weight: np.ndarray, rho: np.ndarray, wavelength: float, z: float) -> np.ndarray:
    """(Q, K) float64: u(ρ_k) = Σ_i U(r_i) exp(iπr_i²/λz) / (λz) · kernel[i, k] is the paraxial field at the sensor.

    kernel[i, k] = weight_i J₀(2π r_i ρ_k / λz) with weight_i = 2π r_i dr_i (m²).
    """
    return weight[:, None] * special.j0(2 * np.pi * np.outer(r, rho) / (wavelength * z))


@dataclass(frozen=True)
class SpectralNodes:
    """Quasi-discrete Hankel transform nodes: f (N,) cycles/m, `series` (N,) the Fourier–Bessel factors
    1 / (π R² J₁²(j_m)), and the domain radius R (m)."""

    f: np.ndarray
    series: np.ndarray
    radius: float


def spectral_nodes(radius: float, f_max: float) -> SpectralNodes:
    """QDHT nodes f_m = j_m / (2πR) (j_m the zeros of J₀) up to f_max (cycles/m) on a domain of radius R (m)."""
    count = int(2 * radius * f_max + 4)
    zeros = special.jn_zeros(0, count)
    zeros = zeros[zeros / (2 * np.pi * radius) <= f_max]
    return SpectralNodes(zeros / (2 * np.pi * radius), 1.0 / (np.pi * radius**2 * special.j1(zeros) ** 2), radius)


def hankel_kernel(r: np.ndarray, weight: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(Q, N) float64: F(f_m) = Σ_i U(r_i) · kernel[i, m] = 2π ∫ U(r) J₀(2π f_m r) r dr."""
    return weight[:, None] * special.j0(2 * np.pi * np.outer(r, f))


def series_kernel(nodes: SpectralNodes, rho: np.ndarray) -> np.ndarray:
    """(N, K) float64: u(ρ_k) = Σ_m G(f_m) · kernel[m, k], the Fourier–Bessel series of a field on [0, R]."""
    return nodes.series[:, None] * special.j0(2 * np.pi * np.outer(nodes.f, rho))


def asm_transfer_radial(f: np.ndarray, wavelength: float, z: float, f_cut: float) -> np.ndarray:
    """Angular-spectrum transfer function exp(i2πz(√(1/λ² − f²) − 1/λ)) at radial frequencies f (cycles/m), zero
    above `f_cut` (complex128)."""
    kz = np.sqrt(np.clip(1.0 / wavelength**2 - f**2, 0.0, None))
    return np.where(f <= f_cut, np.exp(2j * np.pi * z * (kz - 1.0 / wavelength)), 0.0)


# ---- the choice of propagator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathChoice:
    """Which PSF path a spec's element uses: the 1-D ring path (`radial` True) or the 2-D grid, and why."""

    radial: bool
    reason: str


def choose_path(spec: Spec) -> PathChoice:
    """The PSF path of the spec's own element (`optics.propagator` and `parameterization`; baselines that are not
    ring designs, such as the cubic plate, always take the 2-D path)."""
    o = spec.optics
    if o.propagator == "hankel":
        return PathChoice(True, "optics.propagator hankel")
    if o.parameterization != "radial":
        return PathChoice(False, f"parameterization {o.parameterization} is not rotationally symmetric")
    if o.element == "hybrid":
        return PathChoice(False, "a hybrid element's refractive base is not made of rings")
    if o.propagator != "auto":
        return PathChoice(False, f"optics.propagator {o.propagator} requested")
    return PathChoice(True, "parameterization radial: rings lit on axis through a circular aperture stay rotationally "
                            "symmetric, so a 1-D integral over the radius gives the 2-D path's PSFs")


@dataclass(frozen=True)
class RadialChoice:
    """Which radial propagator (`fresnel` or `asm`) and why."""

    kind: str
    reason: str


def choose_radial_propagator(grid: Grid, requested: str = "auto") -> RadialChoice:
    """The radial form that computes the same diffraction model as the 2-D path's choice on `grid`.

    The 2-D path picks a Fresnel form (transfer function or impulse response) when its chirp is well sampled
    at every wavelength and the band-limited angular spectrum when the wavelengths straddle the criterion; the
    1-D path computes the same physics without a periodic window: the Fresnel–Hankel integral (paraxial) for
    the Fresnel forms, the angular spectrum through the quasi-discrete Hankel transform otherwise.
    """
    if requested in FORMS:
        return RadialChoice(requested, f"requested: {_FORM_NAMES[requested]}")
    if requested != "auto":
        raise LensdesignError(f"propagator: unknown radial form {requested!r}; use auto, fresnel or asm")
    kind = "asm" if grid.choice.kind == "asm" else "fresnel"
    return RadialChoice(kind, f"{_FORM_NAMES[kind]}, the physics of the 2-D choice ({grid.choice.reason})")


_FORM_NAMES = {
    "fresnel": "paraxial Fresnel–Hankel integral",
    "asm": "angular spectrum through the quasi-discrete Hankel transform (Guizar-Sicairos & Gutiérrez-Vega 2004)",
}


# ---- the PSF stack ---------------------------------------------------------------------------------------------


def radial_psf(profile: torch.Tensor, phase_per_m: torch.Tensor, src: torch.Tensor, ring: torch.Tensor,
               kernel: torch.Tensor, pix: PixelIntegration, transfer: torch.Tensor | None = None,
               series: torch.Tensor | None = None) -> torch.Tensor:
    """PSF stack (D, W, P, P) from ring heights `profile` (J,) in metres; differentiable by autograd.

    `phase_per_m` (W,) rad/m = 2π(n − 1)/λ; `src` (D, W, Q) complex: the factors at the quadrature nodes that do
    not depend on the heights (normalized source wave, times the Fresnel chirp / λz for ``fresnel``); `ring`
    (Q,) the ring of each node. ``fresnel``: `kernel` (Q, K) real maps nodes to sensor radii (one matrix for all
    wavelengths, the radii scaling with λ). ``asm``: `kernel` (Q, N) maps nodes to spectral nodes, `transfer`
    (W, N) complex, `series` (N, K) real maps them to sensor radii. `pix` integrates each wavelength's K radial
    intensities over the sensor pixels.
    """
    phase = phase_per_m[:, None] * profile[None, :]  # (W, J)
    t = torch.complex(torch.cos(phase), torch.sin(phase))[:, ring]  # (W, Q)
    d, w, q = src.shape
    rows = torch.view_as_real(src * t[None]).permute(0, 1, 3, 2).reshape(d * w * 2, q)  # re, im rows per PSF
    u = rows @ kernel
    if transfer is not None:
        spec_ri = u.reshape(d, w, 2, -1)
        spec_c = torch.complex(spec_ri[:, :, 0], spec_ri[:, :, 1]) * transfer[None]
        u = torch.view_as_real(spec_c).permute(0, 1, 3, 2).reshape(d * w * 2, -1) @ series
    u = u.reshape(d, w, 2, -1)
    intensity = u[:, :, 0] ** 2 + u[:, :, 1] ** 2  # (D, W, K), 1/m²
    return integrate_pixels(intensity, pix)


class RadialSystem:
    """Precomputed, height-independent parts of the 1-D imaging model for one spec; `psf(profile)` mirrors
    `OpticalSystem.psf` for ring designs: the same grid (`plan_grid`), window, centring and normalization.

    The element is the ring profile (J,) in metres, ring j covering radii [j·w, (j+1)·w) with w = `ring_width`;
    rings beyond the aperture have no effect. `dtype` float32 (training) or float64 (checks). `field_radius` (m):
    compute fields out to at least this sensor radius (analysis of the whole field; default the PSF window).
    `build` False stops after the plan (grid, radii, quadrature): enough for `memory_estimate`, no matrices.
    """

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", depths: list[float] | None = None,
                 psf_size: int | None = None, bin_override: int | None = None, form: str = "auto",
                 dtype: torch.dtype = torch.float32, nearest: float | None = None,
                 field_radius: float | None = None, build: bool = True) -> None:
        self.spec = spec
        self.grid = plan_grid(spec, psf_size=psf_size, bin_override=bin_override)
        self.device = torch.device(device)
        self.dtype = dtype
        self.depths = list(depths) if depths is not None else spec.depths_m
        self.wavelengths = list(spec.wavelengths)
        self.choice = choose_radial_propagator(self.grid, form)
        g, o = self.grid, spec.optics
        self.ring_width = ring_width(spec)
        self.rings = ring_count(g.n, g.dx, self.ring_width)
        self.radius = o.aperture / 2
        self.z = o.sensor_distance
        lam_min = min(self.wavelengths)
        fringe = lam_min * self.z / o.aperture  # period of the finest intensity fringe on the sensor (m)
        self.d_rho = fringe / RADIAL_SAMPLES  # radial step at the shortest wavelength
        sub = math.ceil(PIXEL_SAMPLES * g.sensor_pitch / fringe) + 1
        offset = 0.0  # the axis at the centre of pixel (P // 2, P // 2), the contract of optics/forward.py
        fresnel = self.choice.kind == "fresnel"
        # fresnel: the radii of wavelength λ are k·dρ·λ/λ_min, so that one kernel serves every wavelength
        scales = [lam / lam_min for lam in self.wavelengths] if fresnel else [1.0] * len(self.wavelengths)
        centres, count = pixel_weights(g.psf_size, g.sensor_pitch, offset, self.d_rho, 1)
        self._pixel_taps = centres.nnz  # weights per wavelength with one sample per pixel (for the estimate)
        count += 2 * (math.ceil(g.sensor_pitch / self.d_rho) + 2)  # room for the sub-samples of the outer pixels
        if field_radius is not None:
            count = max(count, math.ceil(field_radius / self.d_rho) + 1)
        self._scales = scales
        self.rho = np.arange(count) * self.d_rho
        rho_max = float(self.rho[-1])
        # the quadrature is planned for the nearest depth the system will see (`nearest`: e.g. random training depths)
        self._vergence = max(self._vergence_of(z) for z in [*self.depths, *([nearest] if nearest else [])])
        k_max = 2 * math.pi / lam_min
        if fresnel:
            kernel_rate = 2 * math.pi * rho_max / (lam_min * self.z)
            chirp = 2 * math.pi / (lam_min * self.z)
        else:
            # light from the aperture reaching the window leaves at tan θ ≤ (a + ρ_max)/z; keep a margin, cut the
            # rest, and hold everything that is kept inside the domain radius R
            tan_c = ASM_MARGIN * (self.radius + rho_max) / self.z
            sin_c = tan_c / math.sqrt(1 + tan_c**2)
            self.f_cut = [sin_c / lam for lam in self.wavelengths]
            domain = ASM_MARGIN * (self.radius + self.z * tan_c)
            self.nodes = spectral_nodes(domain, max(self.f_cut))
            kernel_rate = 2 * math.pi * float(self.nodes.f[-1])
            chirp = 0.0
        self.quad = ring_quadrature(self.ring_width, self.radius,
                                    lambda r: (k_max * self._vergence + chirp) * r + kernel_rate)
        if not build:  # the plan only
            return
        cache: dict[float, sparse.csr_matrix] = {}
        for sc in scales:
            if sc not in cache:
                cache[sc] = pixel_weights(g.psf_size, g.sensor_pitch, offset, self.d_rho * sc, sub, count)[0]
        self.pix = PixelIntegration.blocks([cache[sc] for sc in scales], g.psf_size).to(self.device, dtype)
        quad = self.quad
        self.ring = torch.from_numpy(quad.ring).to(torch.int64).to(self.device)
        self.amplitude = 1.0 / math.sqrt(math.pi * self.radius**2)
        self.phase_per_m = torch.tensor([2 * math.pi * (nn - 1) / lam for nn, lam in
                                         zip(spec.refractive_indices, self.wavelengths, strict=True)],
                                        dtype=dtype, device=self.device)
        if fresnel:
            self.kernel = torch.from_numpy(fresnel_hankel_kernel(quad.r, quad.weight, self.rho, lam_min, self.z))
            self.transfer = self.series = None
        else:
            self.kernel = torch.from_numpy(hankel_kernel(quad.r, quad.weight, self.nodes.f))
            self.transfer = torch.stack([torch.from_numpy(asm_transfer_radial(self.nodes.f, lam, self.z, fc))
                                         for lam, fc in zip(self.wavelengths, self.f_cut, strict=True)]
                                        ).to(self.device, _complex(dtype))
            self.series = torch.from_numpy(series_kernel(self.nodes, self.rho)).to(self.device, dtype)
        self.kernel = self.kernel.to(self.device, dtype)
        self.src = self.source_waves(self.depths)

    def memory_estimate(self) -> dict[str, float]:
        """Bytes held by one PSF-stack forward + backward on this path, by part (float32 / complex64; the pixel
        integration from its one-sample-per-pixel weights, a lower bound)."""
        q, k = len(self.quad.r), len(self.rho)
        d, w, n = len(self.depths), len(self.wavelengths), self.grid.n
        kernel = q * k * 4 if self.choice.kind == "fresnel" else (q + k) * len(self.nodes.f) * 4 + w * len(self.nodes.f) * 8
        return {
            "source factors": (d + 1) * w * q * 8,  # the spec's depths and one training depth
            "kernels": kernel,
            "pixel integration": 2 * w * self._pixel_taps * 8,  # matrix and transpose: values and column indices
            "fields and intensities": 3 * 2 * d * w * k * 4,  # forward and their gradients
            "ring map on the element grid": n * n * (8 + 4 + 4),  # ring index, heights, their gradient
        }

    @staticmethod
    def _vergence_of(depth: float) -> float:
        return 0.0 if math.isinf(depth) else 1.0 / depth

    def radii(self, wavelength_index: int) -> np.ndarray:
        """Sensor radii (K,) in metres at which wavelength `wavelength_index`'s field is computed."""
        return self.rho * self._scales[wavelength_index]

    def source_waves(self, depths: list[float]) -> torch.Tensor:
        """(D, W, Q) complex: normalized source wave at the nodes (times the Fresnel chirp / λz for ``fresnel``)."""
        if max(self._vergence_of(z) for z in depths) > self._vergence * (1 + 1e-9):
            raise LensdesignError(f"depths: {min(depths):.4g} m is nearer than the nearest depth the radial "
                                  f"quadrature was planned for ({1 / self._vergence:.4g} m); build the system with it")
        r = self.quad.r
        out = np.empty((len(depths), len(self.wavelengths), len(r)), dtype=np.complex128)
        for i, zd in enumerate(depths):
            for j, lam in enumerate(self.wavelengths):
                if self.choice.kind == "fresnel":
                    ph = source_phase(r, lam, zd) + fresnel_chirp_phase(r, lam, self.z)
                    out[i, j] = self.amplitude / (lam * self.z) * np.exp(1j * ph)
                else:
                    out[i, j] = self.amplitude * np.exp(1j * source_phase(r, lam, zd))
        return torch.from_numpy(out).to(self.device, _complex(self.dtype))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.depths), len(self.wavelengths), self.grid.psf_size, self.grid.psf_size)

    def psf(self, profile: torch.Tensor, depths: list[float] | None = None) -> torch.Tensor:
        """PSF stack (D, W, P, P) on the sensor pitch for ring heights `profile` (J,) in metres.

        `depths` (m) other than the system's own are computed on the fly (no nearer than the system's nearest).
        """
        return self.stack(profile, self.src if depths is None else self.source_waves(depths))

    def stack(self, profile: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """PSF stack (D, W, P, P) for ring heights `profile` (J,) in metres and source factors `src` (D, W, Q) from
        `source_waves` (the radial counterpart of `PSFStack.apply(height, system, src)`)."""
        return radial_psf(profile.to(self.device, self.dtype), self.phase_per_m, src, self.ring, self.kernel,
                          self.pix, self.transfer, self.series)

    def profile_of(self, height: torch.Tensor) -> torch.Tensor:
        """Ring heights (J,) in metres of a ring map (N, N) rendered on the element grid (`render_rings`);
        differentiable (each ring reads one sample, so its gradient is the ring's)."""
        return profile_from_height(height, self.grid.dx, self.ring_width, self.rings)

    def lens_map(self, focus_depth: float | None = None) -> torch.Tensor:
        """The Fresnel lens as a ring design (`lens_profile`, each ring at its centre's phase) rendered on the element
        grid, (N, N) float64 in metres: the Fresnel baseline of the 1-D path."""
        prof = lens_profile(self.spec, self.rings, self.ring_width, focus_depth)
        return render_rings(prof, self.grid.n, self.grid.dx, self.ring_width)

    def field(self, profile: torch.Tensor, depth: float, wavelength_index: int) -> torch.Tensor:
        """Complex field (K,) at the sensor radii `radii(wavelength_index)` for one depth and wavelength,
        normalized so that ∫|u|² dA is the power that arrives (for ``fresnel`` up to a phase factor of ρ)."""
        return self.fields(profile, self.source_waves([depth]))[0, wavelength_index]

    def fields(self, profile: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Complex fields (D, W, K) at the sensor radii of each wavelength for ring heights `profile` (J,) in
        metres and source factors `src` (D, W, Q) (`source_waves`)."""
        phase = self.phase_per_m[:, None] * profile.to(self.device, self.dtype)[None, :]
        return self.propagate_nodes(src * torch.polar(torch.ones_like(phase), phase)[:, self.ring][None])

    def propagate_nodes(self, x: torch.Tensor) -> torch.Tensor:
        """Sensor fields (…, W, K) of element fields given at the quadrature nodes (…, W, Q), source factors
        included (as `source_waves` makes them)."""
        u = _real_matmul(x, self.kernel)
        if self.transfer is None:
            return u
        return _real_matmul(u * self.transfer, self.series)

    def ideal_nodes(self) -> torch.Tensor:
        """(W, Q) complex: the element field of a perfect lens imaging the on-axis point at infinity onto the
        sensor, at the nodes (normalized as `source_waves`): its PSF is the diffraction-limited reference. For
        ``fresnel`` the paraxial lens −πr²/(λz) cancels the chirp; for ``asm`` a converging spherical wave."""
        r = self.quad.r
        out = np.empty((len(self.wavelengths), len(r)), dtype=np.complex128)
        for j, lam in enumerate(self.wavelengths):
            if self.choice.kind == "fresnel":
                out[j] = self.amplitude / (lam * self.z)
            else:
                out[j] = self.amplitude * np.exp(-2j * np.pi / lam * (np.sqrt(r**2 + self.z**2) - self.z))
        return torch.from_numpy(out).to(self.device, _complex(self.dtype))


def _real_matmul(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Complex x (…, Q) times a real matrix m (Q, K) as one real product of the stacked real and imaginary parts."""
    ri = torch.view_as_real(x).transpose(-1, -2) @ m.to(x.real.dtype)  # (…, 2, K)
    return torch.complex(ri[..., 0, :], ri[..., 1, :])


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64

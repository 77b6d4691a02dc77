"""Image formation on the sensor: blur by the PSF ('valid' convolution, no circular wrap), noise, bit depth.

Images are (B, C, H, W) float tensors in linear intensity, full scale 1. PSFs are (…, C, P, P) on the sensor
pitch with the optical axis at the centre pixel (P odd) and sum ≤ 1 (light that leaves the window is lost).

The sensor image is simulated from a scene crop *larger* than the sensor by the PSF margin P − 1 and keeps only
the 'valid' part of the convolution, so nothing wraps around the borders. Noise model: Gaussian read noise of
standard deviation σ (fraction of full scale; fixed, or drawn uniformly from [low, high] per image), optional
shot noise (`sensor.full_well` electrons at full scale; Poisson, Gaussian-approximated in training), clipping
to [0, 1] and optional quantization to `sensor.bit_depth` bits.

Super-resolution (`sensor.superres_factor` k): scene and PSF are on the fine grid (pixel pitch / k); the blurred
fine image is integrated over k × k blocks (`integrate_pixels`) and the noise is added at the sensor resolution.
"""

from __future__ import annotations

import math

import torch

from lensdesign.optics.propagation import fft_size


def psf_margin(psf_size: int) -> int:
    """Scene pixels needed on each side of the sensor image for a 'valid' convolution with a P × P PSF."""
    return psf_size // 2


def convolve_valid(scene: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """'Valid' convolution of scenes (B, C, H + P − 1, W + P − 1) with PSFs (B or 1, C, P, P) → (B, C, H, W).

    Computed with one FFT pair on a grid at least as large as the scene: the circular wrap only touches the
    P − 1 border pixels that the valid part drops. Output pixel (i, j) is centred on scene pixel
    (i + P // 2, j + P // 2).
    """
    p = psf.shape[-1]
    hs, ws = scene.shape[-2:]
    fh, fw = fft_size(hs), fft_size(ws)
    sf = torch.fft.rfft2(scene, s=(fh, fw))
    kf = torch.fft.rfft2(psf, s=(fh, fw))
    full = torch.fft.irfft2(sf * kf, s=(fh, fw))
    return full[..., p - 1:hs, p - 1:ws]


def convolve_same(image: torch.Tensor, psf: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Blur images (B, C, H, W) keeping their size: pad by P // 2 (`reflect` or `replicate`), then 'valid'."""
    m = psf_margin(psf.shape[-1])
    if m == 0:
        return convolve_valid(image, psf)
    if mode == "reflect" and min(image.shape[-2:]) <= m:
        mode = "replicate"
    padded = torch.nn.functional.pad(image, (m, m, m, m), mode=mode)
    return convolve_valid(padded, psf)


def integrate_pixels(fine: torch.Tensor, factor: int) -> torch.Tensor:
    """Sensor pixels of a fine-grid irradiance image (…, kH, kW) → (…, H, W): each sensor pixel is the mean of its
    k × k fine pixels (k = `factor`; block (i, j) covers fine rows k·i … k·i + k − 1).

    Irradiance is per unit area, so the mean keeps full scale at 1 (a uniform scene reads the same on both
    grids) and conserves energy: sum(sensor) · k² = sum(fine), the sensor pixel being k² fine pixels in area.
    """
    if factor == 1:
        return fine
    *lead, h, w = fine.shape
    k = factor
    if h % k or w % k:
        raise ValueError(f"image {h} × {w} is not a multiple of the super-resolution factor {k}")
    return fine.reshape(*lead, h // k, k, w // k, k).mean(dim=(-1, -3))


def sample_read_noise(read_noise: float | tuple[float, float], count: int, gen: torch.Generator) -> torch.Tensor:
    """Read-noise σ per image (count,), fixed or uniform in [low, high] (drawn from the CPU generator `gen`)."""
    if isinstance(read_noise, (tuple, list)):
        lo, hi = float(read_noise[0]), float(read_noise[1])
        return lo + (hi - lo) * torch.rand(count, generator=gen, dtype=torch.float32)
    return torch.full((count,), float(read_noise), dtype=torch.float32)


def eval_read_noise(read_noise: float | tuple[float, float]) -> float:
    """The σ used for evaluation: the fixed value, or the middle of the training range."""
    if isinstance(read_noise, (tuple, list)):
        return 0.5 * (float(read_noise[0]) + float(read_noise[1]))
    return float(read_noise)


def add_noise(clean: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator, full_well: float | None = None,
              bit_depth: int | None = None, differentiable: bool = True) -> torch.Tensor:
    """Noisy sensor read-out of a clean irradiance image (B, C, H, W) in [0, 1] (full scale 1).

    `sigma` (B,) read-noise standard deviations; `full_well` electrons at full scale turns on shot noise
    (variance x / full_well; Gaussian approximation when `differentiable`, exact Poisson otherwise);
    `bit_depth` rounds to 2^bits − 1 levels (straight-through gradient when `differentiable`). The result is
    clipped to [0, 1]. All random numbers come from the CPU generator `gen` and are moved to the image's device.
    """
    shape = clean.shape
    dev = clean.device
    z = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
    y = clean + sigma.to(dev, clean.dtype).view(-1, *([1] * (clean.dim() - 1))) * z
    if full_well is not None:
        if differentiable:
            zs = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
            y = y + torch.sqrt(clean.clamp(min=0) / full_well + 1e-12) * zs
        else:
            electrons = torch.poisson((clean.detach().clamp(min=0) * full_well).cpu(), generator=gen).to(dev)
            y = y + (electrons / full_well - clean.detach())
    y = y.clamp(0.0, 1.0)
    if bit_depth is not None:
        q = float(2**bit_depth - 1)
        yq = torch.round(y * q) / q
        y = y + (yq - y).detach() if differentiable else yq
    return y


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of (B, C, H, W) images against `ref`, data range 1, after clipping `x` to [0, 1]."""
    mse = (x.clamp(0, 1) - ref).square().mean(dim=tuple(range(1, x.dim())))
    return -10.0 * torch.log10(mse.clamp(min=1e-12))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """SSIM per image (skimage.metrics.structural_similarity, data range 1, Gaussian window), `x` clipped."""
    from skimage.metrics import structural_similarity

    a = x.detach().clamp(0, 1).cpu().double().numpy()
    b = ref.detach().cpu().double().numpy()
    out = []
    for i in range(a.shape[0]):
        out.append(float(structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0, gaussian_weights=True,
                                               sigma=1.5, use_sample_covariance=False)))
    return out


def mse_to_psnr(mse: float) -> float:
    """PSNR (dB) for a mean squared error at data range 1."""
    return -10.0 * math.log10(max(mse, 1e-12))


def render_layers(image: torch.Tensor, layers: torch.Tensor, psfs: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Blur an RGB-D scene by depth layers, far to near, with occlusion (Hasinoff & Kutulakos style compositing).

    `image` (B, C, H, W) linear; `layers` (B, H, W) int layer index per pixel, 0 = nearest; `psfs` (L, C, P, P)
    one PSF per layer, ordered like the layer indices (nearest first). Each layer's masked image and its mask
    (alpha) are blurred with the layer's PSF; nearer layers are composited over farther ones:
    out ← out · (1 − blur(alpha)) + blur(alpha · image). Returns (B, C, H, W) sensor irradiance.
    """
    out = torch.zeros_like(image)
    for li in range(psfs.shape[0] - 1, -1, -1):
        alpha = (layers == li).to(image.dtype)[:, None]
        if not bool(alpha.any()):
            continue
        k = psfs[li:li + 1]
        blurred = convolve_same(image * alpha, k, mode)
        a = convolve_same(alpha.expand_as(image), k, mode)
        # a PSF that sums to s < 1 dims the layer; normalize the occlusion so a fully covered area hides the back
        s = k.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
        out = out * (1.0 - (a / s).clamp(0, 1)) + blurred
    return out

"""Reconstruction from the sensor image: the Wiener filter with a learned regularizer (Sitzmann et al. 2018).

    X = conj(H) · Y / (|H|² + γ)

H is the OTF of the reference PSF (for extended depth of field: the PSF averaged over the task's depths, since
the depth of a scene point is unknown at reconstruction time), Y the spectrum of the sensor image, γ > 0 a
regularizer learned per colour channel, parametrized as log γ. H is normalized like the PSF (H(0) = PSF sum ≤ 1).

Edges: an FFT treats the image as periodic; a sensor image is not, and a Wiener filter rings at the borders.
The sensor image is therefore padded by `pad` pixels on each side (reflection), and the padding is tapered with
a raised cosine towards the image mean so that the periodic continuation is smooth; the result is cropped back.

`reconstruction.kind: unet` (a CNN after the Wiener filter) is not available yet; `make_reconstruction`
refuses it with a one-line error.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lensdesign.errors import LensdesignError
from lensdesign.optics.propagation import fft_size
from lensdesign.spec import Spec


def psf_to_otf(psf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """OTF (…, H, W // 2 + 1) (real-FFT layout) of a centred PSF (…, P, P) on an H × W periodic grid."""
    p = psf.shape[-1]
    c = p // 2
    big = torch.zeros(*psf.shape[:-2], *shape, dtype=psf.dtype, device=psf.device)
    big[..., :p, :p] = psf
    big = torch.roll(big, shifts=(-c, -c), dims=(-2, -1))
    return torch.fft.rfft2(big)


def default_pad(psf_size: int) -> int:
    """Padding (pixels per side) for the Wiener filter: the PSF width, so the filter never sees the wrap."""
    return psf_size


def taper_pad(y: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad images (B, C, H, W) by `pad` pixels per side: reflection, tapered to the image mean (raised cosine)."""
    if pad <= 0:
        return y
    h, w = y.shape[-2:]
    mode = "reflect" if pad < min(h, w) else "replicate"
    yp = torch.nn.functional.pad(y, (pad, pad, pad, pad), mode=mode)
    mean = y.mean(dim=(-2, -1), keepdim=True)
    dev, dt = y.device, y.dtype

    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n + 2 * pad, device=dev, dtype=dt)
        t = (torch.arange(pad, device=dev, dtype=dt) + 0.5) / pad  # 0 → 1 towards the image
        up = 0.5 - 0.5 * torch.cos(math.pi * t)
        r[:pad] = up
        r[-pad:] = up.flip(0)
        return r

    win = ramp(h)[:, None] * ramp(w)[None, :]
    return mean + (yp - mean) * win


class WienerPlan:
    """Wiener filter of fixed sensor images and reference PSF, solved cheaply for many γ (e.g. a search).

    `y` (B, C, H, W) sensor images; `psf` (C, P, P) or (B, C, P, P) reference PSF; `pad` pixels per side.
    """

    def __init__(self, y: torch.Tensor, psf: torch.Tensor, pad: int | None = None) -> None:
        self.h, self.w = y.shape[-2:]
        self.pad = default_pad(psf.shape[-1]) if pad is None else pad
        yp = taper_pad(y, self.pad)
        self.shape = (fft_size(yp.shape[-2]), fft_size(yp.shape[-1]))
        if self.shape != tuple(yp.shape[-2:]):
            yp = torch.nn.functional.pad(yp, (0, self.shape[1] - yp.shape[-1], 0, self.shape[0] - yp.shape[-2]),
                                         mode="replicate")
        otf = psf_to_otf(psf, self.shape)
        self.num = otf.conj() * torch.fft.rfft2(yp)
        self.den = otf.real.square() + otf.imag.square()

    def solve(self, gamma: torch.Tensor | float) -> torch.Tensor:
        """Reconstruction (B, C, H, W) for γ: a scalar or a (C,) tensor."""
        g = torch.as_tensor(gamma, dtype=self.den.dtype, device=self.den.device)
        if g.dim() == 1:
            g = g.view(-1, 1, 1)
        x = torch.fft.irfft2(self.num / (self.den + g), s=self.shape)
        p = self.pad
        return x[..., p:p + self.h, p:p + self.w]


def wiener_deconvolve(y: torch.Tensor, psf: torch.Tensor, gamma: torch.Tensor | float, pad: int | None = None) -> torch.Tensor:
    """Wiener-deconvolve sensor images (B, C, H, W) with a centred PSF (C, P, P); γ scalar or (C,)."""
    return WienerPlan(y, psf, pad).solve(gamma)


class WienerReconstruction(nn.Module):
    """Wiener filter with a learned regularizer γ = exp(log_gamma), one per colour channel."""

    kind = "wiener"

    def __init__(self, channels: int, gamma_init: float) -> None:
        super().__init__()
        self.log_gamma = nn.Parameter(torch.full((channels,), math.log(gamma_init)))

    @property
    def gamma(self) -> torch.Tensor:
        """γ per channel (C,), dimensionless (relative to |H|², H(0) = PSF sum)."""
        return self.log_gamma.exp()

    def forward(self, y: torch.Tensor, psf: torch.Tensor, pad: int | None = None) -> torch.Tensor:
        """Reconstruct (B, C, H, W) from sensor images y (B, C, H, W) and the reference PSF (C, P, P)."""
        return WienerPlan(y, psf, pad).solve(self.gamma)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters for the run directory, named `recon.*`."""
        return {"recon.log_gamma": self.log_gamma.detach().cpu().clone()}


def make_reconstruction(spec: Spec) -> WienerReconstruction:
    """The reconstruction named by `reconstruction.kind` (only `wiener` is available for now)."""
    r = spec.reconstruction
    if r.kind != "wiener":
        raise LensdesignError(f"reconstruction.kind: {r.kind!r} is not available yet; use kind: wiener")
    return WienerReconstruction(len(spec.wavelengths), r.gamma_init)

"""Reconstruction from the sensor image: the Wiener filter with a learned regularizer (Sitzmann et al. 2018), and
optionally a small U-Net after it (`reconstruction.kind: unet`).

    X = conj(H) · Y / (|H|² + γ)

H is the OTF of the reference PSF (for extended depth of field: the PSF averaged over the task's depths, since
the depth of a scene point is unknown at reconstruction time), Y the spectrum of the sensor image, γ > 0 a
regularizer learned per colour channel, parametrized as log γ. H is normalized like the PSF (H(0) = PSF sum ≤ 1).

Edges: an FFT treats the image as periodic; a sensor image is not, and a Wiener filter rings at the borders.
The sensor image is therefore padded by `pad` pixels on each side (reflection), and the padding is tapered with
a raised cosine towards the image mean so that the periodic continuation is smooth; the result is cropped back.

Super-resolution (`sensor.superres_factor` k ≥ 2): the PSF lives on the fine grid (pixel pitch / k) and each
sensor pixel is the mean of k × k fine pixels. The sensor image is upsampled to the fine grid (bicubic,
`align_corners=False`, so a sensor pixel's value lands on the centre of its k × k block) and deconvolved with the
effective PSF: the fine PSF convolved with `upsampling_kernel(k)`, the pixel integration followed by the
upsampling, averaged over the k² sub-pixel positions of a scene point (the shift-invariant part of the
sample-and-interpolate chain; the remainder is aliasing, which the regularizer and the U-Net absorb).

U-Net (`kind: unet`): a small residual U-Net refines the Wiener output, x = wiener + unet(wiener [, upsampled
sensor image]). Its last layer starts at zero, so training starts from the Wiener reconstruction. Its
hyper-parameters (`UNetReconstruction.architecture()`) go to design.json and its weights to
design.safetensors as `recon.unet.*`; `reconstruction_from_design` rebuilds it from those numbers and tensors
alone (no code is loaded from any file).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lensdesign.errors import LensdesignError
from lensdesign.optics.propagation import fft_size
from lensdesign.spec import Spec

UPSAMPLING = "bicubic"


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


# ---- super-resolution: sensor grid ↔ fine grid ------------------------------------------------------------------

def upsample(y: torch.Tensor, factor: int, mode: str = UPSAMPLING) -> torch.Tensor:
    """Sensor images (B, C, H, W) → fine grid (B, C, kH, kW): `mode` interpolation ('bicubic' or 'nearest'),
    align_corners=False, so sensor pixel i lands on the centre of fine pixels [k·i, k·i + k)."""
    if factor == 1:
        return y
    size = (y.shape[-2] * factor, y.shape[-1] * factor)
    if mode == "nearest":
        return F.interpolate(y, size=size, mode="nearest")
    return F.interpolate(y, size=size, mode=mode, align_corners=False)


@functools.lru_cache(maxsize=16)
def _upsampling_kernel(factor: int, mode: str) -> torch.Tensor:
    from lensdesign.imaging.sensor import integrate_pixels

    k = factor
    r = 3 * k  # bicubic reaches 2 sensor pixels, the pixel box one more
    size = 12 * k
    c = 6 * k  # on a block boundary
    acc = torch.zeros(2 * r + 1, 2 * r + 1, dtype=torch.float64)
    for jy in range(k):
        for jx in range(k):
            d = torch.zeros(1, 1, size, size, dtype=torch.float64)
            d[..., c + jy, c + jx] = 1.0
            resp = upsample(integrate_pixels(d, k), k, mode)[0, 0]
            acc += resp[c + jy - r:c + jy + r + 1, c + jx - r:c + jx + r + 1]
    return (acc / (k * k)).to(torch.float32)


def upsampling_kernel(factor: int, mode: str = UPSAMPLING) -> torch.Tensor:
    """Fine-grid kernel (6k + 1, 6k + 1), centred, sum 1, of pixel integration (mean of k × k fine pixels) followed
    by `upsample`, averaged over the k² sub-pixel positions of a point: the effective PSF of super-resolution is
    the fine PSF convolved with it. Even k works too: the half-pixel offsets of the box and the interpolation
    cancel. Factor 1: the 1 × 1 identity."""
    if factor == 1:
        return torch.ones(1, 1)
    return _upsampling_kernel(int(factor), mode).clone()


class WienerPlan:
    """Wiener filter of fixed sensor images and reference PSF, solved cheaply for many γ (e.g. a search).

    `y` (B, C, H, W) sensor images; `psf` (C, P, P) or (B, C, P, P) reference PSF; `pad` pixels per side (on the
    output grid). `factor` k > 1: super-resolution — `y` is on the sensor grid, the PSF on the k-times finer
    grid; the plan upsamples `y` (`upsampled`, (B, C, kH, kW)) and deconvolves with PSF ⊛ `upsampling_kernel(k)`.
    """

    def __init__(self, y: torch.Tensor, psf: torch.Tensor, pad: int | None = None, factor: int = 1) -> None:
        self.factor = factor
        self.upsampled = upsample(y, factor)
        y = self.upsampled
        self.h, self.w = y.shape[-2:]
        self.pad = default_pad(psf.shape[-1]) if pad is None else pad
        yp = taper_pad(y, self.pad)
        self.shape = (fft_size(yp.shape[-2]), fft_size(yp.shape[-1]))
        if self.shape != tuple(yp.shape[-2:]):
            yp = torch.nn.functional.pad(yp, (0, self.shape[1] - yp.shape[-1], 0, self.shape[0] - yp.shape[-2]),
                                         mode="replicate")
        otf = psf_to_otf(psf, self.shape)
        if factor > 1:
            g = upsampling_kernel(factor).to(psf.device, psf.dtype)
            otf = otf * psf_to_otf(g, self.shape)
        self.num = otf.conj() * torch.fft.rfft2(yp)
        self.den = otf.real.square() + otf.imag.square()

    def solve(self, gamma: torch.Tensor | float) -> torch.Tensor:
        """Reconstruction (B, C, H, W) (fine grid for super-resolution) for γ: a scalar or a (C,) tensor."""
        g = torch.as_tensor(gamma, dtype=self.den.dtype, device=self.den.device)
        if g.dim() == 1:
            g = g.view(-1, 1, 1)
        x = torch.fft.irfft2(self.num / (self.den + g), s=self.shape)
        p = self.pad
        return x[..., p:p + self.h, p:p + self.w]


def wiener_deconvolve(y: torch.Tensor, psf: torch.Tensor, gamma: torch.Tensor | float, pad: int | None = None,
                      factor: int = 1) -> torch.Tensor:
    """Wiener-deconvolve sensor images (B, C, H, W) with a centred PSF (C, P, P); γ scalar or (C,)."""
    return WienerPlan(y, psf, pad, factor).solve(gamma)


# ---- the trainable reconstructions -----------------------------------------------------------------------------

class WienerReconstruction(nn.Module):
    """Wiener filter with a learned regularizer γ = exp(log_gamma), one per colour channel; `factor` is the
    super-resolution factor (1: the output is on the sensor grid)."""

    kind = "wiener"

    def __init__(self, channels: int, gamma_init: float, factor: int = 1) -> None:
        super().__init__()
        self.factor = int(factor)
        self.log_gamma = nn.Parameter(torch.full((channels,), math.log(gamma_init)))

    @property
    def gamma(self) -> torch.Tensor:
        """γ per channel (C,), dimensionless (relative to |H|², H(0) = PSF sum)."""
        return self.log_gamma.exp()

    def plan(self, y: torch.Tensor, psf: torch.Tensor, pad: int | None = None) -> WienerPlan:
        """The Wiener plan of sensor images y (B, C, H, W) and the reference PSF (C, P, P)."""
        return WienerPlan(y, psf, pad, self.factor)

    def refine(self, wiener: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        """What follows the Wiener filter: nothing here (see UNetReconstruction)."""
        return wiener

    def finish(self, plan: WienerPlan, gamma: torch.Tensor | float | None = None) -> torch.Tensor:
        """Reconstruction from a plan with `gamma` (default the learned γ), refined."""
        return self.refine(plan.solve(self.gamma if gamma is None else gamma), plan.upsampled)

    def forward(self, y: torch.Tensor, psf: torch.Tensor, pad: int | None = None) -> torch.Tensor:
        """Reconstruct (B, C, kH, kW) from sensor images y (B, C, H, W) and the reference PSF (C, P, P)."""
        return self.finish(self.plan(y, psf, pad))

    def wiener_parameters(self) -> list[nn.Parameter]:
        return [self.log_gamma]

    def network_parameters(self) -> list[nn.Parameter]:
        return []

    def architecture(self) -> dict[str, Any]:
        """Hyper-parameters that rebuild this module (plain numbers, for design.json)."""
        return {"kind": self.kind, "channels": int(self.log_gamma.numel()), "superres_factor": self.factor,
                "upsampling": UPSAMPLING}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters for the run directory, named `recon.*`."""
        return {"recon.log_gamma": self.log_gamma.detach().cpu().clone()}


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1))


class UNet(nn.Module):
    """A small U-Net: `depth` times (two 3 × 3 convolutions, 2 × 2 average pooling) with `channels`·2^i features
    at level i, a bottleneck, and the mirror path with transposed-convolution upsampling and skip connections;
    a 1 × 1 output convolution initialized to zero. Any image size (padded by reflection to a multiple of
    2^depth, cropped back). Weights drawn from a generator seeded with `seed` (reproducible runs)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 16, depth: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.channels, self.depth = in_channels, out_channels, channels, depth
        ch = [channels * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList([_conv_block(in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(depth)])
        self.mid = _conv_block(ch[depth - 1], ch[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(depth)])
        self.dec = nn.ModuleList([_conv_block(2 * ch[i], ch[i]) for i in range(depth)])
        self.out = nn.Conv2d(ch[0], out_channels, 1)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for mod in self.modules():
                if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_uniform_(mod.weight, a=0.1, nonlinearity="leaky_relu", generator=gen)
                    assert mod.bias is not None
                    mod.bias.zero_()
            self.out.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.mid(x)
        for i in range(self.depth - 1, -1, -1):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.out(x)[..., :h, :w]


class UNetReconstruction(WienerReconstruction):
    """Wiener filter (learned γ) followed by a residual U-Net: x = wiener + unet(wiener [, upsampled sensor])."""

    kind = "unet"

    def __init__(self, channels: int, gamma_init: float, factor: int = 1, unet_channels: int = 16, unet_depth: int = 3,
                 sensor_input: bool = False, seed: int = 0) -> None:
        super().__init__(channels, gamma_init, factor)
        self.sensor_input = bool(sensor_input)
        cin = channels * (2 if self.sensor_input else 1)
        self.unet = UNet(cin, channels, unet_channels, unet_depth, seed)

    def refine(self, wiener: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([wiener, upsampled], dim=1) if self.sensor_input else wiener
        return wiener + self.unet(inp)

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), "unet_channels": self.unet.channels, "unet_depth": self.unet.depth,
                "unet_sensor_input": self.sensor_input}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = super().tensors()
        out.update({f"recon.unet.{k}": v.detach().cpu().clone() for k, v in self.unet.state_dict().items()})
        return out


def make_reconstruction(spec: Spec) -> WienerReconstruction:
    """The reconstruction named by `reconstruction.kind` for `spec` (U-Net weights seeded by `training.seed`)."""
    r = spec.reconstruction
    c, k = len(spec.wavelengths), spec.sensor.superres_factor
    if r.kind == "unet":
        return UNetReconstruction(c, r.gamma_init, k, r.unet_channels, r.unet_depth, r.unet_sensor_input,
                                  seed=spec.training.seed)
    return WienerReconstruction(c, r.gamma_init, k)


def _int_field(arch: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = arch.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise LensdesignError(f"design.json: reconstruction {key} = {v!r} is not an integer in [{lo}, {hi}]; "
                              "re-run 'lensdesign optimize'")
    return v


def reconstruction_from_design(arch: dict[str, Any], tensors: dict[str, torch.Tensor]) -> WienerReconstruction:
    """Rebuild a run's reconstruction from design.json's `reconstruction` numbers and the `recon.*` tensors of
    design.safetensors alone (nothing executable is read). Raises LensdesignError on a mismatch."""
    kind = arch.get("kind")
    lg = tensors.get("recon.log_gamma")
    if lg is None or lg.dim() != 1:
        raise LensdesignError("design.safetensors: no recon.log_gamma (C,) tensor; the run has no learned reconstruction")
    c = _int_field(arch, "channels", 1, 64)
    if lg.numel() != c:
        raise LensdesignError(f"design.safetensors: recon.log_gamma has {lg.numel()} channels, design.json says {c}")
    k = _int_field(arch, "superres_factor", 1, 8)
    if arch.get("upsampling", UPSAMPLING) != UPSAMPLING:
        raise LensdesignError(f"design.json: upsampling {arch.get('upsampling')!r} is not {UPSAMPLING!r}; re-run the design")
    if kind == "wiener":
        rec: WienerReconstruction = WienerReconstruction(c, 1.0, k)
    elif kind == "unet":
        rec = UNetReconstruction(c, 1.0, k, _int_field(arch, "unet_channels", 1, 1024), _int_field(arch, "unet_depth", 1, 8),
                                 bool(arch.get("unet_sensor_input", False)))
    else:
        raise LensdesignError(f"design.json: unknown reconstruction kind {kind!r}; re-run 'lensdesign optimize'")
    state = {k2[len("recon."):]: v for k2, v in tensors.items() if k2.startswith("recon.")}
    try:
        rec.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LensdesignError(f"design.safetensors: reconstruction tensors do not match design.json "
                              f"({str(e).splitlines()[0]}); re-run 'lensdesign optimize'") from None
    return rec.eval()

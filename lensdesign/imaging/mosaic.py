"""Bayer colour filter array: sampling the channels through the mosaic and a differentiable bilinear demosaic.

`sensor.mosaic` names the 2 × 2 tile from the top-left photosite (rggb, bggr, grbg, gbrg). Channels are matched to
the R, G, B filters by their wavelength band (`lensdesign.imaging.scenes.rgb_band`), so a mosaic needs three
channels, one per band. The demosaic is the classic bilinear one: each plane's photosites, zero elsewhere,
convolved with [[0,1,0],[1,4,1],[0,1,0]]/4 (G) or [[1,2,1],[2,4,2],[1,2,1]]/4 (R, B), the image border repeated
(the same result as colour-demosaicing's `demosaicing_CFA_Bayer_bilinear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lensdesign.errors import LensdesignError
from lensdesign.imaging.scenes import rgb_band

PATTERNS = ("rggb", "bggr", "grbg", "gbrg")
_K_G = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4
_K_RB = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4


def channel_bands(wavelengths: list[float]) -> list[int]:
    """The filter (0 R, 1 G, 2 B) of each channel; refuses channel sets that are not one per band."""
    bands = [rgb_band(w) for w in wavelengths]
    if sorted(bands) != [0, 1, 2]:
        nm = ", ".join(f"{w * 1e9:.0f} nm" for w in wavelengths)
        raise LensdesignError(f"sensor.mosaic: a Bayer mosaic needs three channels, one in each of the R, G, B bands "
                              f"(< 490, 490-580, >= 580 nm); the channels are at {nm}; set sensor.mosaic: none")
    return bands


def cfa_masks(pattern: str, bands: list[int], h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(C, H, W) 0/1 masks: where channel c (filter `bands[c]`) is sampled by the `pattern` mosaic."""
    out = torch.zeros(len(bands), h, w, device=device)
    for ch, (y, x) in zip(pattern.upper(), [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        c = bands.index("RGB".index(ch))
        out[c, y::2, x::2] = 1.0
    return out


def demosaic_bilinear(raw: torch.Tensor, masks: torch.Tensor, bands: list[int]) -> torch.Tensor:
    """Bilinear demosaic of mosaicked images (B, H, W) (or (B, 1, H, W)) with `cfa_masks` (C, H, W) of the
    channels' filters `bands` → (B, C, H, W)."""
    if raw.dim() == 4:
        raw = raw[:, 0]
    planes = raw[:, None] * masks[None]
    k = torch.stack([(_K_G if b == 1 else _K_RB) for b in bands]).to(raw.device, raw.dtype)[:, None]
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, k, groups=masks.shape[0])


def mosaic_demosaic(img: torch.Tensor, pattern: str, bands: list[int]) -> torch.Tensor:
    """Images (B, C, H, W) read through the `pattern` mosaic (each photosite keeps its filter's channel), then
    bilinearly demosaicked back to (B, C, H, W); differentiable."""
    masks = cfa_masks(pattern, bands, img.shape[-2], img.shape[-1], img.device).to(img.dtype)
    return demosaic_bilinear((img * masks[None]).sum(1), masks, bands)

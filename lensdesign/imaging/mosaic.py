"""Bayer colour filter array: sampling the channels through the mosaic and a differentiable demosaic in torch.

`sensor.mosaic` names the 2 × 2 tile from the top-left photosite (rggb, bggr, grbg, gbrg). Channels are matched to
the R, G, B filters by their wavelength band (`lensdesign.imaging.scenes.rgb_band`), so a mosaic needs three
channels, one per band. `sensor.demosaic` picks the demosaic:

* bilinear (default): each plane's photosites, zero elsewhere, convolved with [[0,1,0],[1,4,1],[0,1,0]]/4 (G) or
  [[1,2,1],[2,4,2],[1,2,1]]/4 (R, B), the image border repeated (the same result as colour-demosaicing's
  `demosaicing_CFA_Bayer_bilinear`).
* malvar: Malvar, He & Cutler (2004), "High-quality linear interpolation for demosaicing of Bayer-patterned color
  images": a missing value is the bilinear one corrected by the Laplacian of the photosite's own colour, as four
  5 × 5 filters on the raw mosaic (G at R and B sites; R, B at G sites in R rows or in B rows; R at B and B at R).
  The border is mirrored about the edge (d c b a | a b c d, scipy.ndimage's 'reflect') and the output is not
  clipped: the same result as colour-demosaicing's `demosaicing_CFA_Bayer_Malvar2004`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lensdesign.errors import LensdesignError
from lensdesign.imaging.scenes import rgb_band

PATTERNS = ("rggb", "bggr", "grbg", "gbrg")
DEMOSAICS = ("bilinear", "malvar")
_K_G = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4
_K_RB = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4

# Malvar–He–Cutler filters (Fig. 2 of the paper, sums 1): G at an R or B site; R (B) at a G site whose row holds
# R (B) photosites (the 'horizontal' one; its transpose for a G site whose column holds them); R at B and B at R.
_K_MALVAR = torch.tensor([
    [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]],
    [[0, 0, -1, 0, 0], [0, -1, 4, -1, 0], [0.5, 0, 5, 0, 0.5], [0, -1, 4, -1, 0], [0, 0, -1, 0, 0]],
    [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]],
]) / 8


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


def _mirror_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """(..., H, W) padded by `p` on each side, mirrored about the edge (d c b a | a b c d); needs H, W ≥ p."""
    for dim in (-2, -1):
        n = x.shape[dim]
        idx = torch.cat([torch.arange(p - 1, -1, -1), torch.arange(n), torch.arange(n - 1, n - 1 - p, -1)])
        x = x.index_select(dim, idx.to(x.device))
    return x


def demosaic_malvar(raw: torch.Tensor, masks: torch.Tensor, bands: list[int]) -> torch.Tensor:
    """Malvar–He–Cutler (2004) demosaic of mosaicked images (B, H, W) (or (B, 1, H, W)) with `cfa_masks`
    (C, H, W) of the channels' filters `bands` → (B, C, H, W); linear in `raw`, not clipped."""
    if raw.dim() == 4:
        raw = raw[:, 0]
    k = _K_MALVAR.to(raw.device, raw.dtype)[:, None]
    est = torch.cat([raw[:, None], F.conv2d(_mirror_pad(raw[:, None], 2), k)], 1)  # (B, 5, H, W): raw, 4 filters
    m = masks.to(raw.dtype)
    rows, cols = m.amax(-1, keepdim=True), m.amax(-2, keepdim=True)  # channels with photosites in a row / column
    r, b = bands.index(0), bands.index(2)
    zero = torch.zeros_like(m[0])
    weights = []  # per channel: the share of [raw, G filter, row filter, column filter, R↔B filter] at each site
    for c, band in enumerate(bands):
        if band == 1:
            weights.append(torch.stack([m[c], 1 - m[c], zero, zero, zero]))
        else:
            o = b if c == r else r  # the other of R and B
            weights.append(torch.stack([m[c], zero, rows[c] * cols[o], rows[o] * cols[c], m[o]]))
    return torch.einsum("bkhw,ckhw->bchw", est, torch.stack(weights))


def mosaic_demosaic(img: torch.Tensor, pattern: str, bands: list[int], method: str = "bilinear") -> torch.Tensor:
    """Images (B, C, H, W) read through the `pattern` mosaic (each photosite keeps its filter's channel), then
    demosaicked back to (B, C, H, W) by `method` (bilinear or malvar); differentiable."""
    masks = cfa_masks(pattern, bands, img.shape[-2], img.shape[-1], img.device).to(img.dtype)
    raw = (img * masks[None]).sum(1)
    if method == "malvar":
        return demosaic_malvar(raw, masks, bands)
    if method != "bilinear":
        raise LensdesignError(f"sensor.demosaic: unknown method {method!r}; use one of {', '.join(DEMOSAICS)}")
    return demosaic_bilinear(raw, masks, bands)

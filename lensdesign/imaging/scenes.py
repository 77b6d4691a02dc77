"""Scenes: built-in training / validation images, image folders, crops, colour channels and depth layers.

Images are held as float32 tensors (C, H, W) in *linear* intensity in [0, 1] (sRGB is decoded with the sRGB
transfer curve). One image channel per spec wavelength: each wavelength takes the sRGB band it falls in
(blue < 490 nm ≤ green < 580 nm ≤ red), so [460, 550, 640] nm read the B, G and R bands.

`training.images: builtin` needs no download: a dead-leaves generator (the texture model used to evaluate
cameras, IEEE 1858 / Cao et al. 2010) and the natural photographs that scikit-image ships inside its wheel.
Held out for validation (never used in training): `chelsea`, `coffee`, `immunohistochemistry` and a dead-leaves
image drawn from its own seed. `training.images: DIR` reads every jpg/png/tif in DIR (sorted by name); every
fifth file (at least one) is held out for validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lensdesign.errors import LensdesignError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
BUILTIN_TRAIN = ("astronaut", "rocket", "camera", "grass", "gravel", "brick", "coins", "clock", "moon",
                 "motorcycle")
BUILTIN_VALIDATION = ("chelsea", "coffee", "immunohistochemistry")
DEAD_LEAVES_TRAIN = 6
DEAD_LEAVES_SIZE = 384
_DEAD_LEAVES_SEED = 20180812  # training dead-leaves images use seeds _SEED + i, validation uses _SEED - 1


# ---- colour ------------------------------------------------------------------------------------------------

def srgb_to_linear(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Decode sRGB values in [0, 1] to linear intensity in [0, 1] (IEC 61966-2-1)."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp(min=0) ** 2.4)
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clip(0) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Encode linear intensity in [0, 1] as sRGB in [0, 1] (clips first)."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(0, 1)
        return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=1e-12) ** (1 / 2.4) - 0.055)
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 1e-12) ** (1 / 2.4) - 0.055).astype(np.float32)


def rgb_band(wavelength_m: float) -> int:
    """sRGB band index (0 R, 1 G, 2 B) a wavelength (m) is read from / displayed in."""
    if wavelength_m < 490e-9:
        return 2
    if wavelength_m < 580e-9:
        return 1
    return 0


def channels_from_rgb(rgb: np.ndarray, wavelengths: list[float]) -> np.ndarray:
    """(H, W, 3) linear RGB → (C, H, W), one channel per wavelength (a single wavelength reads luminance)."""
    if len(wavelengths) == 1:
        lum = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
        return lum[None].astype(np.float32)
    return np.stack([rgb[..., rgb_band(w)] for w in wavelengths]).astype(np.float32)


def rgb_from_channels(img: np.ndarray | torch.Tensor, wavelengths: list[float]) -> np.ndarray:
    """(C, H, W) channels → (H, W, 3) RGB for display: each band averages its wavelengths; empty bands get gray."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    a = a.astype(np.float32)
    gray = a.mean(axis=0)
    out = np.empty((*a.shape[1:], 3), dtype=np.float32)
    for band in range(3):
        idx = [i for i, w in enumerate(wavelengths) if rgb_band(w) == band] if len(wavelengths) > 1 else []
        out[..., band] = a[idx].mean(axis=0) if idx else gray
    return out


# ---- image files and the built-in set ----------------------------------------------------------------------

def to_float_rgb(a: np.ndarray) -> np.ndarray:
    """Any decoded image array → (H, W, 3) float32 in [0, 1] (still sRGB-encoded); drops alpha, expands gray."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    else:
        a = a.astype(np.float32)
        if a.max(initial=0) > 1.0:
            a = a / a.max()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] >= 3:
        a = a[..., :3]
    else:
        raise ValueError(f"unsupported image shape {a.shape}")
    return np.clip(a, 0.0, 1.0)


def read_image(path: str | Path) -> np.ndarray:
    """Read a jpg/png/tiff file → (H, W, 3) float32 sRGB values in [0, 1]. Raises LensdesignError."""
    p = Path(path)
    if not p.is_file():
        raise LensdesignError(f"{p}: no such image file; check the path")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(p)
            if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
                a = np.moveaxis(a, 0, -1)
        else:
            from PIL import Image

            with Image.open(p) as im:
                a = np.asarray(im.convert("RGB") if im.mode not in ("L", "I;16", "I", "F", "RGB") else im)
        if np.iscomplexobj(a) or not np.isfinite(a).all():
            raise LensdesignError(f"{p}: pixel values are complex or not finite (NaN or inf); save the picture with "
                                  "real, finite values")
        return to_float_rgb(a)
    except LensdesignError:
        raise
    except Exception as e:
        raise LensdesignError(f"{p}: cannot read the image ({e.__class__.__name__}); use a jpg, png or tiff file") from None


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def dead_leaves(size: int, seed: int, r_min: float = 1.5, r_max: float | None = None, supersample: int = 2) -> np.ndarray:
    """Dead-leaves image (H = W = size), (size, size, 3) float32 sRGB in [0, 1].

    Opaque disks with radii distributed as p(r) ∝ r⁻³ on [r_min, r_max] (pixels; scale invariant like natural
    images) and uniform random sRGB colours fall one behind the other (each pixel shows the first disk that
    covers it) until 99 % of the plane is covered; the last specks take their nearest neighbour's colour.
    Rendered at `supersample`× and box-averaged (anti-aliased edges). Vectorized: disks are drawn in batches,
    grouped by size, and each pixel keeps the smallest disk index that covers it.
    """
    rng = np.random.default_rng(seed)
    s = supersample
    n = size * s
    r_max = r_max if r_max is not None else size / 4
    lo, hi = r_min * s, r_max * s
    none = np.iinfo(np.int64).max
    label = np.full(n * n, none, dtype=np.int64)
    colours: list[np.ndarray] = []
    batch = 4096
    drawn = 0
    while True:
        u = rng.random(batch)
        radii = 1.0 / np.sqrt(1.0 / lo**2 - u * (1.0 / lo**2 - 1.0 / hi**2))  # inverse CDF of r^-3 on [lo, hi]
        centres = rng.random((batch, 2)) * (n + 2 * radii[:, None]) - radii[:, None]
        colours.append(rng.random((batch, 3)).astype(np.float32))
        half = np.ceil(radii).astype(np.int64) + 1
        bucket = np.ceil(np.log2(half)).astype(np.int64)
        for k in np.unique(bucket):
            sel = np.nonzero(bucket == k)[0]
            b = int(2**k)
            off = np.arange(-b, b + 1)
            cy, cx, r = centres[sel, 0], centres[sel, 1], radii[sel]
            ys = np.floor(cy).astype(np.int64)[:, None, None] + off[None, :, None]
            xs = np.floor(cx).astype(np.int64)[:, None, None] + off[None, None, :]
            inside = (ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2 <= (r**2)[:, None, None]
            inside &= (ys >= 0) & (ys < n) & (xs >= 0) & (xs < n)
            idx = np.broadcast_to((drawn + sel)[:, None, None], inside.shape)
            np.minimum.at(label, (np.broadcast_to(ys, inside.shape) * n + np.broadcast_to(xs, inside.shape))[inside],
                          idx[inside])
        drawn += batch
        if np.count_nonzero(label == none) <= 0.01 * n * n:
            break
    palette = np.concatenate(colours)
    covered = label != none
    canvas = np.zeros((n * n, 3), dtype=np.float32)
    canvas[covered] = palette[label[covered]]
    canvas = canvas.reshape(n, n, 3)
    if not covered.all():
        from scipy.ndimage import distance_transform_edt

        _, (iy, ix) = distance_transform_edt(~covered.reshape(n, n), return_indices=True)
        canvas = canvas[iy, ix]
    return canvas.reshape(size, s, size, s, 3).mean(axis=(1, 3))


@dataclass
class ImageSet:
    """Training and held-out validation images, each (C, H, W) float32 linear in [0, 1]."""

    train: list[torch.Tensor]
    validation: list[torch.Tensor]
    train_names: list[str]
    validation_names: list[str]


def _prepare(rgb: np.ndarray, wavelengths: list[float], min_size: int) -> torch.Tensor:
    """sRGB (H, W, 3) → linear channels (C, H, W), upscaled (bilinear) when smaller than `min_size`."""
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        from skimage.transform import resize

        f = min_size / min(h, w)
        rgb = resize(rgb, (math.ceil(h * f), math.ceil(w * f)), order=1, anti_aliasing=False).astype(np.float32)
    lin = srgb_to_linear(rgb)
    return torch.from_numpy(np.ascontiguousarray(channels_from_rgb(lin, wavelengths)))


_RAW: dict[str, tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]] = {}
_CACHE: dict[tuple, ImageSet] = {}


def _raw_images(source: str) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(training, validation) lists of (name, sRGB (H, W, 3) float32) for `training.images`, cached."""
    if source in _RAW:
        return _RAW[source]
    if source == "builtin":
        train_rgb = [(name, to_float_rgb(_skimage(name))) for name in BUILTIN_TRAIN]
        train_rgb += [(f"dead_leaves_{i}", dead_leaves(DEAD_LEAVES_SIZE, _DEAD_LEAVES_SEED + i))
                      for i in range(DEAD_LEAVES_TRAIN)]
        val_rgb = [(name, to_float_rgb(_skimage(name))) for name in BUILTIN_VALIDATION]
        val_rgb.insert(2, ("dead_leaves_val", dead_leaves(DEAD_LEAVES_SIZE, _DEAD_LEAVES_SEED - 1)))
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise LensdesignError(f"training.images: {source} is neither 'builtin' nor a folder; give a folder of "
                                  "jpg/png/tiff images or 'builtin'")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(files) < 2:
            raise LensdesignError(f"training.images: {folder} holds {len(files)} image(s); give at least 2 "
                                  "(every fifth one is held out for validation)")
        held = {i for i in range(len(files)) if i % 5 == 4} or {len(files) - 1}
        train_rgb = [(p.name, read_image(p)) for i, p in enumerate(files) if i not in held]
        val_rgb = [(p.name, read_image(p)) for i, p in enumerate(files) if i in held]
    _RAW[source] = (train_rgb, val_rgb)
    return train_rgb, val_rgb


def load_images(source: str, wavelengths: list[float], min_size: int) -> ImageSet:
    """The image set named by `training.images` ('builtin' or a folder), cached per process.

    `min_size` (pixels) is the smallest crop that will be asked for; smaller images are upscaled to it.
    """
    key = (source, tuple(wavelengths), min_size)
    if key not in _CACHE:
        train_rgb, val_rgb = _raw_images(source)
        _CACHE[key] = ImageSet(train=[_prepare(a, wavelengths, min_size) for _, a in train_rgb],
                               validation=[_prepare(a, wavelengths, min_size) for _, a in val_rgb],
                               train_names=[n for n, _ in train_rgb], validation_names=[n for n, _ in val_rgb])
    return _CACHE[key]


# ---- crops ---------------------------------------------------------------------------------------------------

def random_crops(images: list[torch.Tensor], count: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """`count` random crops (size × size) with random horizontal / vertical flips → (count, C, size, size).

    All randomness comes from `gen` (a CPU generator), so a step's batch is a function of its seed.
    """
    idx = torch.randint(len(images), (count,), generator=gen).tolist()
    u = torch.rand(count, 2, generator=gen).tolist()
    flips = torch.rand(count, 2, generator=gen).tolist()
    out = []
    for i, (uy, ux), (fy, fx) in zip(idx, u, flips, strict=True):
        im = images[i]
        h, w = im.shape[-2:]
        y0 = int(uy * (h - size + 1))
        x0 = int(ux * (w - size + 1))
        c = im[:, y0:y0 + size, x0:x0 + size]
        if fy < 0.5:
            c = c.flip(-2)
        if fx < 0.5:
            c = c.flip(-1)
        out.append(c)
    return torch.stack(out)


def fixed_crops(images: list[torch.Tensor], count: int, size: int) -> torch.Tensor:
    """`count` deterministic crops (size × size) cycling through `images`: the centre crop first, then crops
    spread along the longer axis for further passes → (count, C, size, size)."""
    out = []
    passes = math.ceil(count / len(images))
    offsets = [0.5] if passes == 1 else [0.5, *np.linspace(0.0, 1.0, passes - 1).tolist()]
    for k in range(count):
        im = images[k % len(images)]
        f = offsets[k // len(images)]
        h, w = im.shape[-2:]
        fy, fx = (0.5, f) if w >= h else (f, 0.5)
        y0 = round(fy * (h - size))
        x0 = round(fx * (w - size))
        out.append(im[:, y0:y0 + size, x0:x0 + size])
    return torch.stack(out)


# ---- depth layers ----------------------------------------------------------------------------------------

def diopters(depth_m: float | np.ndarray) -> float | np.ndarray:
    """Vergence 1/z (1/m) of a depth in metres; 0 for infinity."""
    with np.errstate(divide="ignore"):
        return np.where(np.isinf(depth_m), 0.0, 1.0 / np.asarray(depth_m, dtype=np.float64))


def depth_layers(depth_map_m: np.ndarray, layer_depths_m: list[float]) -> np.ndarray:
    """Index of the nearest layer (in diopters) for each pixel of a depth map in metres → (H, W) int64."""
    d = np.asarray(depth_map_m, dtype=np.float64)
    p = diopters(d)
    layers = diopters(np.asarray(layer_depths_m, dtype=np.float64))
    return np.abs(p[..., None] - layers).argmin(axis=-1).astype(np.int64)

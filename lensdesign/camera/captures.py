"""Camera captures: reading and checking TIFF / PNG files (8–16 bit integer or float TIFF), raw Bayer mosaics,
dark frames, and turning them into linear channel images, one channel per spec wavelength.

Files and frames:

* TIFF (tifffile): colour samples (`S` axis) become the last axis; any other leading axes (pages, a stack)
  become separate frames, so a multi-page TIFF is a stack of captures. Integer or floating point.
* PNG (Pillow): 8-bit grey / RGB and 16-bit grey. Pillow cannot decode 16-bit RGB PNG without losing bits,
  so such a file is refused (save it as a 16-bit TIFF).

Values: integer data are divided by the full scale 2^bits − 1, where `bits` is the container's (8 or 16) or the
camera's bit depth given with `--bit-depth` (e.g. 12-bit data stored in 16-bit words); a value above that
full scale is an error. Float data are taken as linear intensity with full scale 1 and cannot be tested for
saturation. Captures are linear by default (raw sensor values); `encoding="srgb"` decodes the sRGB curve first.

Colour: an RGB frame gives one channel per wavelength from the sRGB band the wavelength falls in
(`lensdesign.imaging.scenes.channels_from_rgb`). A raw Bayer mosaic (`bayer` = rggb, bggr, grbg or gbrg) is
split into colour planes at half resolution, without demosaicing: each 2 × 2 quad is one pixel, R and B are
its red and blue photosites and G the mean of its two green ones. The photosites do not sit at the quad
centre: in quad units R and B are offset by (±¼, ±¼), and the mean of the two greens is centred.
`channel_offsets` returns these offsets, which the calibration removes and the reconstruction folds into the
PSF. The run's sensor pixel is then the quad: a camera whose photosite pitch is p images at pitch 2p. Each
photosite integrates only its own quarter of the quad, where the simulation integrates the whole quad, so a
calibrated Bayer PSF is a little sharper than the simulated one (8–11 % relative L2 on the tests' tiny spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensdesign.errors import LensdesignError

BAYER_PATTERNS = ("rggb", "bggr", "grbg", "gbrg")
ENCODINGS = ("linear", "srgb")
SUFFIXES = (".tif", ".tiff", ".png")
_BANDS = "rgb"
_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


@dataclass
class Captures:
    """Frames read from capture files, as stored (integer or float), with their common format.

    `frames[i]` is (H, W) for a grey or raw frame or (H, W, 3) for RGB; `names[i]` names it for messages
    (file name, with the page for stacks); `full_scale` is 2^bits − 1 for integer data, None for float."""

    frames: list[np.ndarray]
    names: list[str]
    dtype: np.dtype
    bit_depth: int | None

    @property
    def full_scale(self) -> float | None:
        return None if self.bit_depth is None else float(2**self.bit_depth - 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frames[0].shape


def check_choice(option: str, value: str | None, allowed: tuple[str, ...]) -> None:
    """One-line error when `value` (of command-line `option`) is not one of `allowed`."""
    if value is not None and value not in allowed:
        raise LensdesignError(f"{option}: unknown value {value!r}; use one of {', '.join(allowed)}")


def _png_array(p: Path) -> np.ndarray:
    from PIL import Image

    head = p.read_bytes()[:26]
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6):
        raise LensdesignError(f"{p}: 16-bit RGB PNG cannot be read without losing bits; save it as a 16-bit TIFF")
    with Image.open(p) as im:
        if im.mode in ("P", "LA", "RGBA", "CMYK", "YCbCr", "1"):
            im = im.convert("L" if im.mode in ("LA", "1") else "RGB")
        a = np.asarray(im)
    if a.dtype == np.int32 and a.size and a.min() >= 0 and a.max() <= 65535:
        a = a.astype(np.uint16)  # Pillow's 32-bit mode for 16-bit grey
    return a


def _tiff_frames(p: Path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(p) as tf:
        series = tf.series[0]
        a = series.asarray()
        axes = series.axes
    if "S" in axes:
        a = np.moveaxis(a, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    lead = len(axes) - (3 if axes.endswith("S") else 2)
    frames = a.reshape(-1, *a.shape[lead:]) if lead > 0 else a[None]
    return list(frames)


def read_frames(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, frame) for every frame in a capture file: one for an image, one per page for a TIFF stack."""
    p = Path(path)
    if not p.is_file():
        raise LensdesignError(f"{p}: no such capture file; check the path")
    if p.suffix.lower() not in SUFFIXES:
        raise LensdesignError(f"{p}: unknown capture format {p.suffix!r}; give TIFF or PNG files")
    try:
        frames = _tiff_frames(p) if p.suffix.lower() in (".tif", ".tiff") else [_png_array(p)]
    except LensdesignError:
        raise
    except Exception as e:
        raise LensdesignError(f"{p}: cannot read the capture ({e.__class__.__name__}); give an 8/16-bit or float "
                              "TIFF or PNG file") from None
    out = []
    for i, f in enumerate(frames):
        if f.ndim == 3 and f.shape[-1] in (3, 4):
            f = f[..., :3]
        elif f.ndim == 3 and f.shape[-1] == 1:
            f = f[..., 0]
        if f.ndim != 2 and not (f.ndim == 3 and f.shape[-1] == 3):
            raise LensdesignError(f"{p}: frame of shape {f.shape} is neither grey/raw (H, W) nor RGB (H, W, 3)")
        out.append((p.name if len(frames) == 1 else f"{p.name}[{i}]", f))
    return out


def _bits(name: str, a: np.ndarray, bit_depth: int | None) -> int | None:
    """The bit depth of an integer frame (None for float); checks values against it."""
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise LensdesignError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite values (NaN or inf); "
                                  "fix or re-export the capture")
        return None
    if not np.issubdtype(a.dtype, np.integer) or a.dtype.itemsize > 2 or (a.size and a.min() < 0):
        raise LensdesignError(f"{name}: {a.dtype} data; give unsigned 8/16-bit integers or float32 values")
    container = 8 * a.dtype.itemsize
    bits = container if bit_depth is None else bit_depth
    if bits > container:
        raise LensdesignError(f"--bit-depth: {bits} bits do not fit the {container}-bit data of {name}; "
                              f"give at most {container}")
    top = int(a.max()) if a.size else 0
    if top > 2**bits - 1:
        raise LensdesignError(f"{name}: values up to {top} exceed the {bits}-bit full scale {2**bits - 1}; "
                              "pass the camera's bit depth with --bit-depth")
    return bits


def read_captures(paths: list[Path], bit_depth: int | None = None, what: str = "capture") -> Captures:
    """All frames of `paths`, checked: readable, finite, within the bit depth, one format and size for all.

    `bit_depth` (1–16): the camera's bit depth for integer data (default the container's, 8 or 16).
    """
    if bit_depth is not None and not 1 <= bit_depth <= 16:
        raise LensdesignError(f"--bit-depth: {bit_depth} is not in 1 … 16; give the camera's bit depth")
    if not paths:
        raise LensdesignError(f"no {what} files given; name at least one TIFF or PNG file")
    frames: list[np.ndarray] = []
    names: list[str] = []
    for p in paths:
        for name, f in read_frames(p):
            frames.append(f)
            names.append(name)
    bits = [_bits(n, f, bit_depth) for n, f in zip(names, frames, strict=True)]
    for n, f, b in zip(names, frames, bits, strict=True):
        if (b, f.dtype) != (bits[0], frames[0].dtype):
            raise LensdesignError(f"{n}: {f.dtype} data ({b or 'float'} bit) does not match {names[0]} "
                                  f"({frames[0].dtype}, {bits[0] or 'float'} bit); give captures of one bit depth")
        if f.shape != frames[0].shape:
            raise LensdesignError(f"{n}: frame {f.shape} does not match {names[0]} {frames[0].shape}; give captures "
                                  "of one size and colour layout")
    return Captures(frames=frames, names=names, dtype=frames[0].dtype, bit_depth=bits[0])


def check_same_format(dark: Captures, caps: Captures) -> None:
    """A dark frame must have the captures' size, colour layout and bit depth."""
    if dark.shape != caps.shape or dark.dtype != caps.dtype or dark.bit_depth != caps.bit_depth:
        raise LensdesignError(f"--dark: {dark.names[0]} is {dark.shape} {dark.dtype} ({dark.bit_depth or 'float'} "
                              f"bit), the captures are {caps.shape} {caps.dtype} ({caps.bit_depth or 'float'} bit); "
                              "give a dark frame taken with the same camera settings")


def bayer_planes(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Raw mosaic (H, W) → (H // 2, W // 2, 3) RGB at half resolution: R, mean of the two G, B per 2 × 2 quad."""
    a = raw[: raw.shape[0] // 2 * 2, : raw.shape[1] // 2 * 2].astype(np.float64)
    sites = {(r, c): a[r::2, c::2] for r in (0, 1) for c in (0, 1)}
    pos = {(0, 0): pattern[0], (0, 1): pattern[1], (1, 0): pattern[2], (1, 1): pattern[3]}
    band = {b: [sites[k] for k, v in pos.items() if v == b] for b in _BANDS}
    return np.stack([np.mean(band[b], axis=0) for b in _BANDS], axis=-1)


def band_offsets(pattern: str) -> np.ndarray:
    """(3, 2) position (dy, dx) of the R, G, B samples of a Bayer quad relative to its centre, in quad units."""
    pos = {pattern[0]: [], pattern[1]: [], pattern[2]: [], pattern[3]: []}
    for i, b in enumerate(pattern):
        pos[b].append(((i // 2 - 0.5) / 2, (i % 2 - 0.5) / 2))
    return np.array([np.mean(pos[b], axis=0) for b in _BANDS])


def channel_offsets(wavelengths: list[float], bayer: str | None) -> np.ndarray:
    """(C, 2) sample position (dy, dx) of each wavelength's channel relative to the pixel centre, in pixels:
    zeros for RGB or grey captures, the photosite offsets for a Bayer mosaic split at half resolution."""
    from lensdesign.imaging.scenes import rgb_band

    if bayer is None:
        return np.zeros((len(wavelengths), 2))
    off = band_offsets(bayer)
    if len(wavelengths) == 1:
        return (_LUMINANCE[:, None] * off).sum(0, keepdims=True)
    return np.stack([off[rgb_band(w)] for w in wavelengths])


def frame_shape(caps: Captures, bayer: str | None) -> tuple[int, int]:
    """(H, W) of the channel images the frames give (half the raw size for a Bayer mosaic)."""
    h, w = caps.shape[:2]
    return (h // 2, w // 2) if bayer else (h, w)


def check_channels(caps: Captures, channels: int, bayer: str | None) -> None:
    """The capture layout must give the run's channels: RGB, a grey frame for one wavelength, or a raw mosaic."""
    rgb = len(caps.shape) == 3
    if bayer is not None and rgb:
        raise LensdesignError(f"--bayer: {caps.names[0]} has 3 colour channels, not a raw mosaic; drop --bayer for RGB "
                              "captures")
    if bayer is None and not rgb and channels != 1:
        raise LensdesignError(f"{caps.names[0]}: 1 channel, but the run has {channels} wavelengths; give RGB captures "
                              "or pass --bayer PATTERN for a raw mosaic")


def to_channels(frame: np.ndarray, wavelengths: list[float], bayer: str | None, full_scale: float | None,
                encoding: str = "linear") -> np.ndarray:
    """A frame → (C, H, W) float64 linear intensity (full scale 1), one channel per wavelength."""
    from lensdesign.imaging.scenes import channels_from_rgb, srgb_to_linear

    a = frame.astype(np.float64)
    if full_scale is not None:
        a = a / full_scale
    if encoding == "srgb":
        a = np.asarray(srgb_to_linear(np.clip(a, 0, 1)), dtype=np.float64)
    if bayer is not None:
        a = bayer_planes(a, bayer)
    if a.ndim == 2:
        return a[None]
    return channels_from_rgb(a.astype(np.float32), wavelengths).astype(np.float64)


def saturated(frame: np.ndarray, full_scale: float | None, bayer: str | None) -> np.ndarray:
    """(H, W) mask of pixels with any sample at full scale (any photosite of a Bayer quad); none for float data."""
    if full_scale is None:
        h, w = frame.shape[:2]
        return np.zeros((h // 2, w // 2) if bayer else (h, w), dtype=bool)
    s = frame >= full_scale
    if s.ndim == 3:
        s = s.any(-1)
    if bayer is not None:
        s = s[: s.shape[0] // 2 * 2, : s.shape[1] // 2 * 2]
        s = s[0::2, 0::2] | s[0::2, 1::2] | s[1::2, 0::2] | s[1::2, 1::2]
    return s

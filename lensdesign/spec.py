"""The design spec: pydantic models, unit strings, YAML loading, errors that name the field.

Every length is stored in metres. A length may be written with a unit ("5 mm", "2 um", "550 nm") or as a plain
number, which means metres. Depths may also be "inf".
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lensdesign.errors import LensdesignError, SpecError

_UNITS = {
    "m": 1.0,
    "cm": 1e-2,
    "mm": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,
    "μm": 1e-6,
    "micron": 1e-6,
    "microns": 1e-6,
    "nm": 1e-9,
    "pm": 1e-12,
}
_LENGTH_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Zµμ]*)\s*$")


def parse_length(value: Any, allow_inf: bool = False) -> float:
    """Parse a length ("5 mm", "550 nm", 0.002, "inf") to metres. Raises ValueError with the fix."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a length; write e.g. '5 mm', '2 um' or '550 nm'")
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str):
        s = value.strip().lower()
        if s in ("inf", "infinity", "∞", "+inf"):
            v = math.inf
        else:
            m = _LENGTH_RE.match(value)
            if not m or (m.group(2) and m.group(2) not in _UNITS and m.group(2).lower() not in _UNITS):
                raise ValueError(
                    f"{value!r} is not a length; write a number and a unit (m, mm, um, nm), e.g. '5 mm', '2 um'"
                )
            unit = m.group(2) or "m"
            v = float(m.group(1)) * _UNITS.get(unit, _UNITS.get(unit.lower(), 1.0))
    else:
        raise ValueError(f"{value!r} is not a length; write e.g. '5 mm', '2 um' or '550 nm'")
    if math.isnan(v):
        raise ValueError("a length cannot be NaN")
    if math.isinf(v) and not allow_inf:
        raise ValueError("must be finite here ('inf' is only allowed for depths)")
    if v <= 0:
        raise ValueError(f"{value!r} must be a positive length")
    return v


Length = Annotated[float, BeforeValidator(lambda v: parse_length(v))]
Depth = Annotated[float, AllowInfNan(True), BeforeValidator(lambda v: parse_length(v, allow_inf=True))]

# Largest element grid (samples per side, aperture / pitch) a spec may ask for: the padded FFT grid is up to 4× wider.
MAX_GRID = 32768
MAX_RESOLUTION = 16384


class _Model(BaseModel):
    # every float must be finite (inf / nan are refused; depths opt back in to 'inf')
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class CustomMaterial(_Model):
    """A material given by its refractive index at each spec wavelength, in order."""

    index: list[float]
    name: str = "custom"

    @field_validator("index")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(n <= 1.0 or n > 5.0 for n in v):
            raise ValueError("each refractive index must be in (1, 5]")
        return v


class Optics(_Model):
    """The element: clear aperture, distance to the sensor, material, sampling, parameterization."""

    aperture: Length
    sensor_distance: Length
    material: str | CustomMaterial = "fused_silica"
    pitch: Length = 2e-6
    element: Literal["diffractive", "refractive", "hybrid"] = Field(
        "diffractive", description="diffractive: relief wrapped at max_height (one wave for auto); refractive: an "
        "unwrapped sag up to max_height; hybrid: the spec's focusing lens as a refractive base plus a diffractive "
        "relief of one wave optimized on top")
    parameterization: Literal["pixel", "radial", "zernike", "fourier"] = "pixel"
    max_height: Length | Literal["auto"] = "auto"
    padding: float = Field(2.0, ge=1.0, le=4.0, description="padded grid width / aperture grid width")
    propagator: Literal["auto", "transfer", "impulse", "asm", "hankel"] = Field(
        "auto", description="auto: the 1-D (Hankel) path for a radial parameterization, else the 2-D propagator the "
        "sampling criterion picks; transfer / impulse / asm: that 2-D propagator; hankel: the 1-D path (radial only)")
    zernike_terms: Annotated[int, Field(ge=3, le=1000)] | Literal["auto"] = Field(
        "auto", description="Noll terms of parameterization zernike; auto: 36, or 136 (radial orders ≤ 15) for a "
        "refractive sag")
    fourier_fraction: float = Field(0.625, gt=0.0, le=1.0, description="kept fraction of the frequency band")

    @field_validator("material")
    @classmethod
    def _known_material(cls, v: str | CustomMaterial) -> str | CustomMaterial:
        from lensdesign.materials import MATERIALS

        if isinstance(v, str) and v not in MATERIALS:
            raise ValueError(f"unknown material {v!r}; use one of {sorted(MATERIALS)} or {{index: [n per wavelength]}}")
        return v


class DepthRange(_Model):
    min: Depth
    max: Depth = math.inf
    count: int = Field(5, ge=1, le=64)

    @model_validator(mode="after")
    def _ordered(self) -> DepthRange:
        if math.isinf(self.min):
            raise ValueError("min must be finite; use an explicit list [inf] for a single depth at infinity")
        if self.max < self.min:
            raise ValueError("max must be at least min")
        return self


class Scene(_Model):
    depths: DepthRange | Annotated[list[Depth], Field(max_length=64)]
    focus_depth: Depth | Literal["auto"] = "auto"

    @field_validator("depths")
    @classmethod
    def _nonempty(cls, v: DepthRange | list[float]) -> DepthRange | list[float]:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one depth, e.g. [1 m] or {min: 0.5 m, max: inf, count: 5}")
        return v


class Sensor(_Model):
    pixel_pitch: Length = 4e-6
    resolution: tuple[Annotated[int, Field(le=MAX_RESOLUTION)], Annotated[int, Field(le=MAX_RESOLUTION)]] = (256, 256)
    read_noise: float | tuple[float, float] = (0.001, 0.01)
    full_well: float | None = Field(None, gt=0, description="electrons at full scale; enables shot noise")
    bit_depth: int | None = Field(None, ge=1, le=16)
    psf_size: int | None = Field(None, ge=3, description="PSF window on the sensor, pixels (default: whole field)")
    superres_factor: int = Field(1, ge=1, le=8)
    mosaic: Literal["none", "rggb", "bggr", "grbg", "gbrg"] = Field(
        "none", description="Bayer colour filter array (2 × 2 tile from the top-left photosite); the reconstruction "
        "starts from a demosaic (sensor.demosaic)")
    demosaic: Literal["bilinear", "malvar"] = Field(
        "bilinear", description="demosaic of a Bayer mosaic: bilinear, or malvar (Malvar–He–Cutler 2004 "
        "gradient-corrected 5 × 5 filters); needs sensor.mosaic")

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 8 or v[1] < 8:
            raise ValueError("resolution must be at least [8, 8] pixels")
        return v

    @field_validator("read_noise")
    @classmethod
    def _noise(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        vals = v if isinstance(v, tuple) else (v,)
        if any(x < 0 or x > 1 for x in vals):
            raise ValueError("read noise is a fraction of full scale in [0, 1], e.g. 0.005 or [0.001, 0.01]")
        if isinstance(v, tuple) and v[1] < v[0]:
            raise ValueError("read noise range must be [low, high]")
        return v


class Spectrum(_Model):
    """Broadband channels: a camera's spectral sensitivities (or a CSV) × an illuminant, `samples` wavelengths
    per channel (see `lensdesign.spectral`). The channel wavelengths (`wavelengths`) are then derived."""

    camera: str | None = Field(None, description="a colour-science camera set, e.g. 'Nikon 5100 (NPL)'")
    csv: str | None = Field(None, description="CSV of wavelength nm, R, G, B sensitivities")
    illuminant: str = "D65"
    samples: int = Field(7, description="wavelengths per channel")

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: int) -> int:
        if v < 1 or v > 32:
            raise ValueError(f"{v} wavelengths per channel: give 1 … 32, e.g. 7")
        return v


class Reconstruction(_Model):
    kind: Literal["wiener", "unet"] = "wiener"
    gamma_init: float = Field(0.003, gt=0, le=1e6, description="initial Wiener γ in units of |H|² (H(0) = 1)")
    unet_channels: int = Field(16, ge=4, le=128)
    unet_depth: int = Field(3, ge=1, le=5)
    unet_sensor_input: bool = False


class Training(_Model):
    steps: int = Field(2000, ge=0, le=100_000_000)
    batch_size: int = Field(1, ge=1, le=4096)
    learning_rate: float = Field(0.1, gt=0, le=10, description="per step, in units of max_height")
    images: str = "builtin"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    patch_size: int | None = Field(None, ge=16, le=MAX_RESOLUTION)
    validation_images: int = Field(4, ge=1, le=10_000)
    checkpoint_minutes: float = Field(2.0, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop early after this wall time")


class Fabrication(_Model):
    process: Literal["multilevel", "grayscale", "two_photon"] = "multilevel"
    levels: int = Field(16, ge=2, le=65536)
    min_feature: Length | None = None
    height_tolerance: Length | None = None
    misalignment: Length | None = None
    sag_error: float | None = Field(None, ge=0.0, le=0.2, description="relative form error of a refractive sag "
                                    "(a continuous process scales the sag by 1 ± this fraction), e.g. 0.005")

    @model_validator(mode="after")
    def _levels(self) -> Fabrication:
        if self.process == "multilevel" and self.levels & (self.levels - 1):
            raise ValueError(f"levels must be a power of two for process multilevel (got {self.levels}); use 2, 4, 8, 16")
        return self


class Spec(_Model):
    """A whole lensdesign spec, all lengths in metres."""

    name: str = "design"
    task: Literal["edof", "superres", "focus"] = "edof"
    optics: Optics
    wavelengths: list[Length] = Field(max_length=32)
    scene: Scene
    spectrum: Spectrum | None = None
    sensor: Sensor = Sensor()
    reconstruction: Reconstruction = Reconstruction()
    training: Training = Training()
    fabrication: Fabrication = Fabrication()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("name may only hold letters, digits, '_', '-', '.' (it names the output files)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _derive_wavelengths(cls, data: Any) -> Any:
        """With `spectrum`, `wavelengths` are the channels' mean wavelengths (given ones must match them)."""
        if not isinstance(data, dict) or not isinstance(data.get("spectrum"), dict):
            return data
        try:
            sp = Spectrum.model_validate(data["spectrum"])
        except ValidationError as e:
            raise SpecError(validation_message(e, "spec").replace("spec: ", "spectrum.", 1)) from None
        from lensdesign.spectral import spectral_channels

        derived = list(spectral_channels(sp.camera, sp.csv, sp.illuminant, sp.samples).centroids_m)
        given = data.get("wavelengths")
        if given is not None:
            try:
                ok = len(given) == len(derived) and all(abs(parse_length(g) - d) < 1e-12
                                                        for g, d in zip(given, derived, strict=False))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError("wavelengths: with spectrum the channel wavelengths are derived; leave wavelengths out")
        return {**data, "wavelengths": derived}

    @field_validator("wavelengths")
    @classmethod
    def _wl(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one wavelength, e.g. [550 nm]")
        if any(w < 100e-9 or w > 20e-6 for w in v):
            raise ValueError("wavelengths must lie between 100 nm and 20 um; write e.g. '550 nm'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        samples = self.optics.aperture / self.optics.pitch
        if samples > MAX_GRID:
            raise ValueError(f"optics.pitch: aperture / pitch = {samples:.3g} samples per side, more than the {MAX_GRID} "
                             "lensdesign simulates; raise optics.pitch or reduce optics.aperture")
        if isinstance(self.optics.material, CustomMaterial) and len(self.optics.material.index) != len(self.wavelengths):
            raise ValueError(
                f"optics.material.index has {len(self.optics.material.index)} values but there are "
                f"{len(self.wavelengths)} wavelengths; give one index per wavelength"
            )
        if self.optics.element != "diffractive" and self.fabrication.process == "multilevel":
            raise ValueError(f"fabrication.process: multilevel (binary etch masks) cannot make the {self.optics.element} "
                             "sag of optics.element; use process grayscale or two_photon (levels = grey or print steps "
                             "over the sag, e.g. 1024)")
        if self.spectrum is not None and isinstance(self.optics.material, CustomMaterial):
            raise ValueError("optics.material: spectrum needs n(λ) at any wavelength; use a named material "
                             "(e.g. fused_silica) instead of an index list")
        if self.sensor.demosaic != "bilinear" and self.sensor.mosaic == "none":
            raise ValueError(f"sensor.demosaic: {self.sensor.demosaic} demosaics a Bayer mosaic but sensor.mosaic is none; "
                             "set sensor.mosaic (rggb, bggr, grbg or gbrg) or leave sensor.demosaic out")
        if self.sensor.mosaic != "none":
            from lensdesign.imaging.mosaic import channel_bands

            try:
                channel_bands(list(self.wavelengths))
            except LensdesignError as e:
                raise ValueError(str(e)) from None
        if self.task == "superres" and self.sensor.superres_factor < 2:
            raise ValueError("task superres needs sensor.superres_factor of 2 or more")
        if self.optics.propagator == "hankel" and (self.optics.parameterization != "radial" or self.optics.element == "hybrid"):
            what = (f"parameterization {self.optics.parameterization}" if self.optics.parameterization != "radial"
                    else "a hybrid element (its refractive base is not made of rings)")
            raise ValueError(f"optics.propagator: hankel (the 1-D path) needs a rotationally symmetric ring design, not "
                             f"{what}; use parameterization radial, or propagator auto, transfer, impulse or asm")
        return self

    # ---- derived quantities (SI) -------------------------------------------------------------------------
    @property
    def depths_m(self) -> list[float]:
        """Object depths in metres, nearest first; uniform in diopters for a range."""
        d = self.scene.depths
        if isinstance(d, list):
            return sorted(d)
        if d.count == 1:
            return [d.min]
        p0, p1 = 1.0 / d.min, (0.0 if math.isinf(d.max) else 1.0 / d.max)
        out = []
        for i in range(d.count):
            p = p0 + (p1 - p0) * i / (d.count - 1)
            out.append(math.inf if p <= 0 else float(f"{1.0 / p:.12g}"))  # no 0.10999999999999999
        return out

    @property
    def diopter_range(self) -> tuple[float, float]:
        """(nearest, farthest) object vergence in diopters (1/m)."""
        ds = self.depths_m
        return 1.0 / ds[0], (0.0 if math.isinf(ds[-1]) else 1.0 / ds[-1])

    @property
    def focus_depth_m(self) -> float:
        """Focus depth for reference lenses: given, or the middle of the depth range in diopters."""
        if self.scene.focus_depth != "auto":
            return float(self.scene.focus_depth)
        a, b = self.diopter_range
        p = 0.5 * (a + b)
        return math.inf if p <= 0 else 1.0 / p

    @property
    def design_wavelength_m(self) -> float:
        """The middle wavelength (by order in the list when sorted)."""
        w = sorted(self.wavelengths)
        return w[len(w) // 2]

    @property
    def spectral(self) -> Any:
        """The sampled broadband channels (`lensdesign.spectral.SpectralChannels`), or None for one line each."""
        if self.spectrum is None:
            return None
        from lensdesign.spectral import spectral_channels

        sp = self.spectrum
        return spectral_channels(sp.camera, sp.csv, sp.illuminant, sp.samples)

    @property
    def optical_spec(self) -> Spec:
        """The spec the optics simulates: itself, or with `spectrum` a copy whose wavelengths are all the sampled
        wavelengths (channel by channel), so the PSF stack has one plane per sampled wavelength."""
        ch = self.spectral
        if ch is None:
            return self
        return self.model_copy(update={"wavelengths": list(ch.wavelengths_m), "spectrum": None})

    @property
    def refractive_indices(self) -> list[float]:
        from lensdesign.materials import refractive_index

        return [refractive_index(self.optics.material, w, i) for i, w in enumerate(self.wavelengths)]

    @property
    def design_index(self) -> float:
        i = self.wavelengths.index(self.design_wavelength_m)
        return self.refractive_indices[i]

    @property
    def zernike_term_count(self) -> int:
        """Zernike terms of parameterization zernike: given, or 36 (136 for a refractive sag)."""
        if self.optics.zernike_terms != "auto":
            return int(self.optics.zernike_terms)
        return 136 if self.optics.element == "refractive" else 36

    @property
    def wave_height_m(self) -> float:
        """Height of one 2π wave at the design wavelength (m): λ / (n(λ) − 1)."""
        return self.design_wavelength_m / (self.design_index - 1.0)

    @property
    def max_height_m(self) -> float:
        """Largest height of the element (m). `auto`: diffractive, one 2π wave at the design wavelength;
        refractive, 1.25 × the sag of the spec's focusing lens; hybrid, that lens's sag plus one wave."""
        if self.optics.max_height != "auto":
            return float(self.optics.max_height)
        if self.optics.element == "diffractive":
            return self.design_wavelength_m / (self.design_index - 1.0)
        from lensdesign.optics.element import focus_lens_sag_m

        sag = focus_lens_sag_m(self)
        return 1.25 * sag if self.optics.element == "refractive" else sag + self.wave_height_m

    @property
    def material_name(self) -> str:
        m = self.optics.material
        return m if isinstance(m, str) else m.name

    def to_yaml(self) -> str:
        """The resolved spec as YAML with SI lengths written as unit strings where natural."""
        return yaml.safe_dump(_to_plain(self.model_dump(mode="json")), sort_keys=False)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("str", "float", "int", "list[float]", "DepthRange", "CustomMaterial", "tuple[float, float]",
                   "list[function-before[<lambda>(), float]]", "function-before[<lambda>(), float]", "literal['auto']",
                   "literal['auto','cpu','cuda']", "str-enum", "list[float]"):
            continue
        elif isinstance(p, str) and ("[" in p or "function-" in p or p.startswith(("literal", "constrained-"))):
            continue
        else:
            name = str(p)
            parts.append(("." if parts else "") + (name if name.isprintable() and name.strip() else repr(name)))
    return "".join(parts) or "spec"


def validation_message(err: ValidationError, source: str = "spec") -> str:
    """One line naming the field and the fix, from a pydantic error (the most specific one)."""
    errs = err.errors()
    # prefer the error with the longest location that is not a union branch mismatch
    best = max(errs, key=lambda e: (e["type"] not in ("dict_type", "list_type", "model_type", "literal_error"),
                                    len(e["loc"])))
    loc = _format_loc(tuple(best["loc"]))
    msg = best["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if best["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against the spec reference in README.md"
    elif best["type"] == "missing":
        msg = "required field is missing"
    elif best["type"] == "finite_number":
        msg = f"must be a finite number, not {best.get('input')!r}; write an ordinary number such as 0.5"
    if loc == "spec" and re.match(r"(name|task|optics|wavelengths|scene|sensor|reconstruction|training|fabrication)\b", msg):
        return f"{source}: {msg}"  # a whole-spec check whose message names its field
    return f"{source}: {loc}: {msg}"


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate a dict (from YAML) into a Spec, raising SpecError with one line on failure."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping with keys optics, wavelengths, scene, ...")
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(validation_message(e, source)) from None


def load_spec(path: str | Path) -> Spec:
    """Load and validate a YAML spec file. Raises SpecError (one line) on any problem."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{p}: no such spec file; check the path")
    if p.is_dir():
        raise SpecError(f"{p}: is a folder, not a spec file; give the path of a .yaml spec")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"{p}: broken YAML{where}: {problem}; fix the indentation or quoting there") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text file; give a YAML spec") from None
    return parse_spec(data, str(p))

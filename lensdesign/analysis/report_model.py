"""The report of a run as typed data: one dataclass per section, and `to_json` that turns a `Report` into the
report.json object.

Units are in the field names: lengths in metres (`_m`), frequencies in cycles/mm (`_cyc_per_mm`), PSNR in dB.
Depths are floats with `math.inf` for infinity; report.json writes infinity (and any NaN) as null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lensdesign.units import json_safe

OMIT_NONE = {"omit_none": True}  # field metadata: leave the key out of report.json when the value is None


def _plain(obj: Any) -> Any:
    """Dataclasses to dicts in field order, leaving out None-valued fields marked OMIT_NONE."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def to_json(obj: Any) -> Any:
    """The JSON object of a report section (or of the whole `Report`): strict JSON, no NaN or Infinity."""
    return json_safe(_plain(obj))


@dataclass
class AnalysisSettings:
    """How the analysis was sampled: the through-depth MTF frequency, the Monte Carlo, the PSF grid."""

    mtf_frequency_cyc_per_mm: float
    samples: int
    seed: int
    analysis_pitch_m: float  # PSF / MTF pitch: the simulation pitch / oversample
    simulation_pitch_m: float
    oversample: int
    propagator: str
    field_width_m: float
    spectrum: str | None = None  # broadband channels: polychromatic PSFs of the sampled wavelengths (None: one line each)


@dataclass
class DiffractionLimit:
    """A perfect lens of the same aperture at one wavelength."""

    wavelength_m: float
    cutoff_cyc_per_mm: float  # D / (λ z)
    airy_fwhm_m: float
    airy_ee80_radius_m: float


@dataclass
class PSFRow:
    """PSF measures at one (depth, wavelength)."""

    depth_m: float
    wavelength_m: float
    strehl: float
    ee80_radius_m: float
    fwhm_m: float
    energy_in_field: float


@dataclass
class MTFCurve:
    """Radially averaged MTF at one (depth, wavelength); the axis cuts only for a design that is not rotationally
    symmetric."""

    depth_m: float
    wavelength_m: float
    frequency_cyc_per_mm: list[float]
    mtf: list[float]
    diffraction_limited_mtf: list[float]
    axis_frequency_cyc_per_mm: list[float] | None = field(default=None, metadata=OMIT_NONE)
    mtf_sagittal: list[float] | None = field(default=None, metadata=OMIT_NONE)
    mtf_tangential: list[float] | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class ThroughDepthMTF:
    """MTF at one frequency against depth, for the design and the baselines: `mtf[name]` is (depth, wavelength)."""

    frequency_cyc_per_mm: float
    depths_m: list[float]
    wavelengths_m: list[float]
    mtf: dict[str, list[list[float]]]
    cubic_strength_waves: float
    cubic_strength_source: str
    focus_depth_m: float

    def mean_over_wavelengths(self, name: str, i: int) -> float:
        """Mean MTF of design `name` at depth index `i` over the wavelengths."""
        return float(np.mean(self.mtf[name][i]))


@dataclass
class FabricationErrorModel:
    """The as-built error model (lengths in metres)."""

    height_tolerance_m: float
    misalignment_m: float
    min_feature_m: float
    rounding_sigma_m: float
    description: str


@dataclass
class Efficiency:
    """First-order efficiency: the N-level staircase theory and the measured core energy ratio."""

    staircase_sinc2: float
    measured: float


@dataclass
class AsBuilt:
    """The as-built Monte Carlo; the spreads and samples are absent when no sample was drawn."""

    samples: int
    seed: int
    strehl_mean: float | None = None
    strehl_std: float | None = field(default=None, metadata=OMIT_NONE)
    strehl_p5: float | None = field(default=None, metadata=OMIT_NONE)
    efficiency_mean: float | None = field(default=None, metadata=OMIT_NONE)
    strehl_samples: list[float] | None = field(default=None, metadata=OMIT_NONE)
    psnr_db_mean: float | None = None
    psnr_db_std: float | None = field(default=None, metadata=OMIT_NONE)
    psnr_db_p5: float | None = None
    psnr_db_samples: list[float] | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class Fabrication:
    """Continuous against quantized against as-built element."""

    process: str
    levels: int
    max_height_m: float
    errors: FabricationErrorModel
    efficiency: Efficiency
    continuous_strehl_mean: float
    quantized_strehl_mean: float
    continuous_psnr_db: float | None
    quantized_psnr_db: float | None
    as_built: AsBuilt


@dataclass
class Report:
    """Everything report.json holds, in its order."""

    run: str
    name: str
    design_kind: str | None
    settings: AnalysisSettings
    sensor_nyquist_cyc_per_mm: float  # of the output grid: pixel_pitch / superres_factor
    diffraction_limit: list[DiffractionLimit]
    psf: list[PSFRow]
    mtf: list[MTFCurve]
    mtf_rotationally_symmetric: bool
    through_depth_mtf: ThroughDepthMTF
    image_quality: dict[str, Any]  # summary.json's design / design_quantized / baselines entries
    image_quality_source: str
    fabrication: Fabrication
    notes: list[str]
    timings_s: dict[str, float] = field(default_factory=dict)

"""The report page: a `Report` and its figures rendered by templates/report.html.j2 with jinja2 (autoescaped).

Python prepares data only (numbers, names, base64 strings of the PNG figures); all markup is in the template.
Frequencies in cycles/mm, lengths in metres (the template converts to mm / µm for display).
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2
import numpy as np

from lensdesign.analysis.figures import depth_label, diopters, mtf_plot_limit
from lensdesign.analysis.report_model import Report
from lensdesign.spec import Spec


def fmt(x: Any, spec: str = ".3f", none: str = "–") -> str:
    """`x` formatted with `spec`; `none` for None and non-finite numbers."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _depth(z: float | None) -> str:
    return depth_label(math.inf if z is None else z)


@cache
def environment() -> jinja2.Environment:
    """The template environment: autoescaping on, the report's number filters registered."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("lensdesign.analysis", "templates"), autoescape=True,
                             extensions=["jinja2.ext.do"], undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, depth=_depth, nm=lambda w: f"{w * 1e9:.0f}", suffix=lambda s, t: f"{s}{t}")
    return env


@dataclass
class ImageQualityRow:
    """One design's reconstruction quality: mean PSNR (dB) and (PSNR, SSIM) per depth (m, inf for infinity)."""

    name: str
    mean_psnr_db: float | None
    depths_m: list[float]
    per_depth: list[tuple[float | None, float | None]]

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any]) -> ImageQualityRow:
        """From a summary.json entry: {mean_psnr_db, per_depth: [{depth_m, psnr_db, ssim}, ...]}."""
        rows = [r for r in entry.get("per_depth") or [] if isinstance(r, dict)]
        return cls(name=name, mean_psnr_db=entry.get("mean_psnr_db"),
                   depths_m=[math.inf if r.get("depth_m") is None else r["depth_m"] for r in rows],
                   per_depth=[(r.get("psnr_db"), r.get("ssim")) for r in rows])


@dataclass
class Page:
    """What the page shows beyond report.json: figures (base64 PNG by file name) and display choices."""

    report: Report
    spec: Spec
    figures: dict[str, str]  # file name -> base64 of the PNG
    grid: tuple[int, int]  # element samples
    reconstruction: str  # the run's reconstruction in words
    asymmetry_limit: float
    image_quality: list[ImageQualityRow] = field(default_factory=list)
    baseline_reconstruction: str | None = None  # summary.json's note on how the baselines were reconstructed
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))

    @property
    def superres(self) -> int:
        return int(self.spec.sensor.superres_factor)

    @property
    def output_pitch_m(self) -> float:
        return self.spec.sensor.pixel_pitch / self.superres

    @property
    def wavelengths_m(self) -> list[float]:
        return [p.wavelength_m for p in self.report.diffraction_limit]

    @property
    def mtf_shown_to_cyc_per_mm(self) -> float:
        """Upper end of the MTF plot (cycles/mm), as figures.mtf_figure draws it."""
        fc = max(d.cutoff_cyc_per_mm for d in self.report.diffraction_limit)
        return mtf_plot_limit(fc, self.report.sensor_nyquist_cyc_per_mm)

    @property
    def through_depth_names(self) -> list[str]:
        return list(self.report.through_depth_mtf.mtf)

    @property
    def through_depth_rows(self) -> list[list[str]]:
        """Mean MTF over wavelengths at the spec's depths (a subset of the dense through-depth depths)."""
        td = self.report.through_depth_mtf
        spec_p = diopters(self.spec.depths_m)
        zd_p = diopters(td.depths_m)
        return [[depth_label(z)] + [f"{td.mean_over_wavelengths(k, i):.3f}" for k in td.mtf]
                for i, z in enumerate(td.depths_m) if np.min(np.abs(spec_p - zd_p[i])) <= 1e-6 * (1 + abs(zd_p[i]))]

    @property
    def image_quality_depths(self) -> list[float]:
        return self.image_quality[0].depths_m if self.image_quality else []


def encode_figures(figs: dict[str, bytes]) -> dict[str, str]:
    """PNG bytes to base64 text for data URIs."""
    return {name: base64.b64encode(data).decode("ascii") for name, data in figs.items()}


def render_page(page: Page) -> str:
    """The self-contained HTML page of a report."""
    return environment().get_template("report.html.j2").render(page=page, spec=page.spec, figures=page.figures) + "\n"

"""The report of a run: PSF, MTF, Strehl / encircled energy / FWHM, image quality against the baselines, and
the as-built fabrication tolerance; written as RUN/report/{index.html, *.png, report.json}.

`build_report(run, settings)` does the work and returns the report.json object. The stages: analysis (this
module: PSFs, through-depth MTF, image quality, fabrication), figures (`figures`), the typed report
(`report_model`, serialized to report.json) and the page (`report_page`, a jinja2 template). All lengths in
metres inside; frequencies in cycles/m inside and cycles/mm in report.json and on the page (names say so).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensdesign.analysis import figures
from lensdesign.analysis import metrics as M
from lensdesign.analysis.psfs import FieldAnalyzer
from lensdesign.analysis.radial import RadialFieldAnalyzer
from lensdesign.analysis.report_model import (
    AnalysisSettings,
    AsBuilt,
    DiffractionLimit,
    Efficiency,
    Fabrication,
    FabricationErrorModel,
    MTFCurve,
    PSFRow,
    Report,
    ThroughDepthMTF,
    to_json,
)
from lensdesign.analysis.report_page import ImageQualityRow, Page, encode_figures, render_page
from lensdesign.analysis.tolerance import FabricationErrors, monte_carlo
from lensdesign.baselines import cubic_height, default_cubic_strength, fresnel_height
from lensdesign.errors import LensdesignError
from lensdesign.evaluation import Evaluator
from lensdesign.fabrication.quantize import staircase_efficiency
from lensdesign.optics.hankel import choose_path
from lensdesign.rundir import RunDir, Summary, atomic_write_bytes, atomic_write_json, atomic_write_text
from lensdesign.spec import Spec

Analyzer = FieldAnalyzer | RadialFieldAnalyzer
"""The field analysis of a design: the 2-D grid, or the 1-D ring path for ring designs."""

Progress = Callable[[str, int, int], None]
"""progress(stage description, done, total): called as each long stage advances."""

ASYMMETRY_LIMIT = 0.05  # MTF spread over orientations above which sagittal / tangential MTFs are shown
CROP_HALF = 256  # fine samples kept either side of the axis for display and encircled energy


@dataclass
class ReportSettings:
    """Options of `lensdesign report`. `mtf_frequency` in cycles/m (None: half the Nyquist
    frequency of the output grid, pixel_pitch / superres_factor)."""

    out: Path | None = None
    mtf_frequency: float | None = None
    samples: int = 10
    seed: int = 0
    device: str = "cpu"
    through_depth_points: int = 13
    validation_images: int | None = None
    threads: int | None = 1  # CPU intra-op threads (None: torch's default); one is fastest beside other busy work


@dataclass
class PSFAnalysis:
    """Per (depth, wavelength) results for one height map at the spec's depths."""

    depths: list[float]
    wavelengths: list[float]
    pitch: float  # of `crops` and of the MTF analysis (m)
    oversample: int
    crops: np.ndarray  # (D, W, K, K) energy per fine sample, axis at the centre
    totals: np.ndarray  # (D, W) energy in the whole field
    strehl: np.ndarray  # (D, W)
    ee80: np.ndarray  # (D, W) m
    r95: np.ndarray  # (D, W) m, for choosing the display window
    fwhm: np.ndarray  # (D, W) m
    mtf_freq: np.ndarray  # (F,) cycles/m
    mtf: np.ndarray  # (D, W, F)
    mtf_lo: np.ndarray
    mtf_hi: np.ndarray
    cut_freq: np.ndarray  # (G,)
    sagittal: np.ndarray  # (D, W, G)
    tangential: np.ndarray
    asymmetry: float = 0.0


@dataclass
class ReportContext:
    """The run being reported on and the state the stages share (notes for the page, timings in seconds)."""

    run: RunDir
    spec: Spec
    height: np.ndarray  # (N, N) float32, m
    quantized: np.ndarray  # the height quantized to `levels` (N, N) float32, m
    levels: int
    max_height: float  # m
    meta: dict[str, Any]
    summary: Summary | None
    settings: ReportSettings
    progress: Progress
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    recon: Any = None  # the run's learned reconstruction with a U-Net, if any

    @property
    def nyquist(self) -> float:
        """Nyquist frequency (cycles/m) of the output grid: the sensor pixels, divided by the super-resolution factor."""
        s = self.spec.sensor
        return 1.0 / (2 * s.pixel_pitch / s.superres_factor)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record the wall time of a stage in `timings[stage]`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = time.perf_counter() - t0


# ---- helpers -------------------------------------------------------------------------------------------------


def _r(x: float, nd: int = 6) -> float:
    return float(f"{x:.{nd}g}") if math.isfinite(x) else x


def cubic_strength(ctx: ReportContext) -> tuple[float, str]:
    """Cubic baseline strength (waves): recorded in summary.json or the run's design, else the default."""
    s = ctx.summary.data if ctx.summary is not None else {}
    cub = (s.get("baselines") or {}).get("cubic") or {}
    for key in ("strength_waves", "cubic_strength_waves", "strength"):
        if isinstance(cub.get(key), (int, float)):
            return float(cub[key]), "summary.json"
    if ctx.meta.get("kind") == "baseline-cubic" and isinstance(ctx.meta.get("cubic_strength_waves"), (int, float)):
        return float(ctx.meta["cubic_strength_waves"]), "design.json"
    return default_cubic_strength(ctx.spec), "default from the depth range"


def dense_depths(spec: Spec, points: int) -> list[float]:
    """The spec's depths plus `points` depths uniform in diopters over the same range (m, nearest first)."""
    zs = spec.depths_m
    p0 = 1.0 / zs[0]
    p1 = 0.0 if math.isinf(zs[-1]) else 1.0 / zs[-1]
    ps = set(np.round(np.linspace(p0, p1, max(2, points)), 12).tolist()) if p0 != p1 else set()
    ps |= {round(0.0 if math.isinf(z) else 1.0 / z, 12) for z in zs}
    return [math.inf if p <= 0 else 1.0 / p for p in sorted(ps, reverse=True)]



# ---- PSF analysis --------------------------------------------------------------------------------------------


def analyse_psfs(fa: Analyzer, height: np.ndarray, depths: list[float], oversample: int,
                 progress: Callable[[int], None] | None = None) -> PSFAnalysis:
    """Finely sampled PSFs of `height` at `depths`: Strehl, EE80, FWHM, radial and axis MTF, display crops."""
    wl = fa.wavelengths
    pitch = fa.fine_pitch_for(oversample)
    fc_max = max(M.cutoff_frequency(fa.spec.optics.aperture, w, fa.spec.optics.sensor_distance)
                 for w in fa.system.wavelengths)  # the shortest simulated wavelength's cutoff
    d, w = len(depths), len(wl)
    crops: list[np.ndarray] = []
    totals = np.empty((d, w))
    strehl = np.empty((d, w))
    ee80 = np.empty((d, w))
    r95 = np.empty((d, w))
    fw = np.empty((d, w))
    mtfs, los, his, sags, tans = [], [], [], [], []
    freq = cut_f = np.zeros(0)
    asym = 0.0
    for i, dp in fa.depth_psfs(height, depths, oversample, 1.05 * fc_max, CROP_HALF):
        strehl[i] = dp.strehl
        rm = dp.mtf
        freq, cut_f = rm.freq, rm.cut_freq
        mtfs.append(rm.mean)
        los.append(rm.lo)
        his.append(rm.hi)
        sags.append(rm.sagittal)
        tans.append(rm.tangential)
        asym = max(asym, rm.asymmetry(0.9 * fc_max))
        totals[i] = dp.totals
        crops.append(dp.crops)
        hw = dp.crops.shape[-1] // 2
        for j in range(w):
            cr = dp.crops[j].astype(np.float64)
            cen = M.centroid(cr)
            ee80[i, j] = M.ee_radius(cr, pitch, 0.8, center=cen, total=totals[i, j])
            if math.isnan(ee80[i, j]):  # more than 20 % of the light outside the crop: use the whole field
                ee80[i, j] = dp.ee_whole(j, 0.8)
            r95[i, j] = M.ee_radius(cr, pitch, 0.95, center=(hw, hw), total=totals[i, j])
            if math.isnan(r95[i, j]) and dp.whole_is_cheap:
                r95[i, j] = dp.ee_whole(j, 0.95)
            fw[i, j] = M.fwhm(cr, pitch)
        del dp
        if progress is not None:
            progress(i + 1)
    return PSFAnalysis(depths=list(depths), wavelengths=list(wl), pitch=pitch, oversample=oversample,
                       crops=np.stack(crops), totals=totals, strehl=strehl, ee80=ee80, r95=r95, fwhm=fw, mtf_freq=freq,
                       mtf=np.stack(mtfs), mtf_lo=np.stack(los), mtf_hi=np.stack(his), cut_freq=cut_f,
                       sagittal=np.stack(sags), tangential=np.stack(tans), asymmetry=asym)


def through_depth(designs: dict[str, tuple[Analyzer, np.ndarray]], depths: list[float], f0: float,
                  progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """MTF (D, W) at f0 (cycles/m) against depth for each named (analyzer, height map)."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done)

    return {name: fa.mtf_at(h, depths, f0, step) for name, (fa, h) in designs.items()}


# ---- image quality ---------------------------------------------------------------------------------------------


def _per_depth_table(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(entry, dict):
        return []
    rows = entry.get("per_depth") or []
    return [r for r in rows if isinstance(r, dict)]


class ImageQuality:
    """PSNR / SSIM of the design and the baselines: from summary.json when optimize wrote one, else computed
    with lensdesign.evaluation (Wiener γ tuned per design)."""

    def __init__(self, ctx: ReportContext, heights: dict[str, np.ndarray]) -> None:
        self.ctx = ctx
        self.heights = heights
        self.ev = Evaluator(ctx.spec, ctx.settings.device)
        self.cpu_ev = self.ev if self.ev.device.type == "cpu" else Evaluator(ctx.spec, "cpu")  # example images
        self._grid: dict[bool, Evaluator] = {}
        self.source = "unavailable"
        self.result: dict[str, Any] = {}
        self.gammas: dict[str, Any] = {}
        self._images: torch.Tensor | None = None
        self._cache: dict[tuple[str, str, bool], dict[str, Any]] = {}

    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = self.ev.validation_set(count=self.ctx.settings.validation_images, seed=self.ctx.settings.seed)
        return self._images

    def evaluator(self, name: str, cpu: bool = False) -> Evaluator:
        """The evaluator for the design `name` (the report's device, or the CPU for example images): the 2-D grid
        for the cubic plate, which is not a ring design, when the spec's pipeline is on the 1-D ring path."""
        ev = self.cpu_ev if cpu else self.ev
        if name != "cubic":
            return ev
        if cpu not in self._grid:
            self._grid[cpu] = ev.on_grid()
        return self._grid[cpu]

    def evaluate(self, height: np.ndarray, gamma: Any = None, learned: bool = False, name: str = "design",
                 with_ssim: bool = True) -> dict[str, Any]:
        """evaluate_height on the report's validation images (cached: identical heights and γ are evaluated once).

        `learned`: reconstruct with the run's U-Net too (for the design and its fabricated variants); `name`: the
        design's name (picks the evaluator, see `evaluator`); `with_ssim` False: PSNR only."""
        h = np.ascontiguousarray(height, dtype=np.float32)
        recon = self.ctx.recon if learned else None
        key = (hashlib.sha1(h.tobytes()).hexdigest(), json.dumps(gamma), recon is not None, with_ssim)
        if key not in self._cache:
            kw = {"recon": recon} if recon is not None else {}
            self._cache[key] = self.evaluator(name).evaluate_height(h, gamma=gamma, seed=self.ctx.settings.seed,
                                                                    images=self.images(), with_ssim=with_ssim, **kw)
        return self._cache[key]

    def run(self) -> None:
        if self.ctx.summary is not None:
            s = self.ctx.summary.data
            self.source = "summary.json"
            self.result = {k: s[k] for k in ("design", "design_quantized", "baselines", "baseline_reconstruction")
                           if k in s}
            for name, e in self.by_name().items():
                if e.get("gamma") is not None:
                    self.gammas[name] = e["gamma"]
            return
        self.source = "computed with lensdesign.evaluation (Wiener γ tuned per design on the validation images)"
        names = ["design", "design (quantized)", "fresnel", "cubic"]
        out: dict[str, Any] = {}
        for k, name in enumerate(names):
            gamma = self.gammas.get("design") if name == "design (quantized)" else None
            r = self.evaluate(self.heights[name], gamma, learned=name.startswith("design"), name=name)
            self.gammas[name] = r.get("gamma")
            out[name] = r
            self.ctx.progress("image quality (PSNR / SSIM)", k + 1, len(names))
        self.result = {"design": out["design"], "design_quantized": out["design (quantized)"],
                       "baselines": {"fresnel": out["fresnel"], "cubic": out["cubic"]}}

    def by_name(self) -> dict[str, dict[str, Any]]:
        """{display name: summary entry} for design, quantized design and the baselines present."""
        r = self.result
        out: dict[str, dict[str, Any]] = {}
        if isinstance(r.get("design"), dict):
            out["design"] = r["design"]
        if isinstance(r.get("design_quantized"), dict):
            out["design (quantized)"] = r["design_quantized"]
        for k, v in (r.get("baselines") or {}).items():
            if isinstance(v, dict):
                out[k] = v
        return out

    def baseline_reconstruction(self) -> str | None:
        """How summary.json says the baselines were reconstructed (U-Net runs: with the Wiener filter), if it says."""
        note = self.ctx.summary.data.get("baseline_reconstruction") if self.ctx.summary is not None else None
        return note if isinstance(note, str) else None

    def rows(self) -> list[ImageQualityRow]:
        """The page's image-quality table: one row per design with per-depth PSNR / SSIM; baselines marked
        "(Wiener)" when summary.json says they were reconstructed with the Wiener filter only."""
        note = self.baseline_reconstruction() or ""
        mark = " (Wiener)" if note.startswith("wiener") else ""
        return [ImageQualityRow.from_entry(k if k.startswith("design") else k + mark, v)
                for k, v in self.by_name().items()]

    def gamma_of(self, name: str) -> Any:
        """The Wiener γ of `name` (tuned on one validation image when neither summary.json nor evaluation gave one)."""
        if self.gammas.get(name) is None:
            self.gammas[name] = self.evaluator(name).evaluate_height(self.heights[name], gamma=None,
                                                                     seed=self.ctx.settings.seed,
                                                                     images=self.images()[:1]).get("gamma")
        return self.gammas[name]

    def examples(self, names: list[str], depths: list[float]) -> tuple[np.ndarray, list[Any]]:
        """Sensor images and reconstructions of one validation image for `names` at `depths`."""
        ctx = self.ctx
        img = self.images()[:1]
        truth = img[0].permute(1, 2, 0).cpu().numpy()
        rows = []
        total = len(names) * len(depths)
        done = 0
        for name in names:
            gamma = self.gamma_of(name)
            kw = {"recon": ctx.recon} if name == "design" and ctx.recon is not None else {}
            sims = self.evaluator(name, cpu=True).simulate_examples_at(self.heights[name], gamma, depths, img[0],
                                                                       seed=ctx.settings.seed, **kw)
            rows.append((name, [(sensor, recon, f"{M.psnr_db(recon, truth):.1f} dB") for sensor, recon in sims]))
            done += len(depths)
            ctx.progress("example images", done, total)
        return truth, rows


# ---- fabrication -----------------------------------------------------------------------------------------------


def _as_built(settings: ReportSettings, samples: list[dict[str, Any]], cont: dict[str, np.ndarray]) -> AsBuilt:
    """Means, spreads and 5th percentiles of the Monte Carlo samples (Strehl, core efficiency, PSNR in dB)."""
    if not samples:
        return AsBuilt(samples=settings.samples, seed=settings.seed)
    st = np.array([x["strehl"].mean() for x in samples])
    ps = np.array([x["psnr_db"] for x in samples])
    eff = np.array([float(np.mean(x["core"] / np.maximum(cont["core"], 1e-30))) for x in samples])
    return AsBuilt(samples=settings.samples, seed=settings.seed,
                   strehl_mean=float(st.mean()), strehl_std=float(st.std()), strehl_p5=float(np.percentile(st, 5)),
                   efficiency_mean=float(eff.mean()), strehl_samples=st.tolist(),
                   psnr_db_mean=float(ps.mean()), psnr_db_std=float(ps.std()), psnr_db_p5=float(np.percentile(ps, 5)),
                   psnr_db_samples=ps.tolist())


def fabrication(ctx: ReportContext, fa: Analyzer, iq: ImageQuality) -> tuple[Fabrication, bytes | None]:
    """Continuous vs quantized vs as-built: Strehl, core-energy efficiency and PSNR; with the spread figure.

    Ring designs on the 1-D path: each as-built element is averaged over each ring (`ring_design`), its
    rotationally symmetric part; errors that break the symmetry (a decentred mask) are not modelled."""
    s = ctx.settings
    errors = FabricationErrors.from_spec(ctx.spec, max_height=ctx.max_height, levels=ctx.levels, pitch=fa.dx)
    meter = fa.core_meter(ctx.spec.depths_m, ctx.height)
    cont = meter(ctx.height)
    quant = meter(ctx.quantized)
    # one γ for continuous, quantized and as built: the design's (from summary.json or tuned on the continuous map)
    rc = iq.evaluate(ctx.height, iq.gammas.get("design"), learned=True)
    gamma = rc.get("gamma")
    psnr_c = rc["mean_psnr_db"]
    psnr_q = iq.evaluate(ctx.quantized, gamma, learned=True)["mean_psnr_db"]
    iq.gammas.setdefault("design", gamma)

    def evaluate(h: np.ndarray) -> dict[str, Any]:
        h = fa.ring_design(h)
        r: dict[str, Any] = dict(meter(h))
        r["psnr_db"] = float(iq.evaluate(h.astype(np.float32), gamma, learned=True, with_ssim=False)["mean_psnr_db"])
        return r

    samples = monte_carlo(ctx.height, errors, s.samples, s.seed, evaluate,
                          lambda i: ctx.progress("as-built Monte Carlo", i, s.samples))
    as_built = _as_built(s, samples, cont)
    fab = Fabrication(
        process=errors.process, levels=ctx.levels, max_height_m=ctx.max_height,
        errors=FabricationErrorModel(height_tolerance_m=errors.height_tolerance, misalignment_m=errors.misalignment,
                                     min_feature_m=errors.min_feature, rounding_sigma_m=errors.min_feature / 4,
                                     description=errors.describe()),
        efficiency=Efficiency(staircase_sinc2=staircase_efficiency(ctx.levels),
                              measured=float(np.mean(quant["core"] / np.maximum(cont["core"], 1e-30)))),
        continuous_strehl_mean=float(cont["strehl"].mean()), quantized_strehl_mean=float(quant["strehl"].mean()),
        continuous_psnr_db=psnr_c, quantized_psnr_db=psnr_q, as_built=as_built)
    fig = None
    if samples:
        fig = figures.fabrication_figure(np.array(as_built.strehl_samples), fab.continuous_strehl_mean,
                                         fab.quantized_strehl_mean, np.array(as_built.psnr_db_samples), psnr_c, psnr_q)
    return fab, fig


# ---- analysis stages -------------------------------------------------------------------------------------------


def _load(run_path: Path, settings: ReportSettings, progress: Progress | None) -> ReportContext:
    """The run's spec, validated design (on the spec's grid) and summary."""
    run = RunDir(run_path).require()
    spec = run.load_spec()
    design = run.load_design(spec)
    return ReportContext(run=run, spec=spec, height=np.asarray(design.height_m, dtype=np.float32),
                         quantized=design.quantized(), levels=design.levels, max_height=design.max_height_m,
                         meta=dict(design.meta), summary=run.load_summary(), settings=settings,
                         progress=progress or (lambda *_: None), recon=design.reconstruction())


def diffraction_limits(spec: Spec) -> list[DiffractionLimit]:
    """Cutoff D/(λz), Airy FWHM and 80 % encircled-energy radius per wavelength."""
    o = spec.optics
    f_num = o.sensor_distance / o.aperture
    return [DiffractionLimit(wavelength_m=w, cutoff_cyc_per_mm=M.cutoff_frequency(o.aperture, w, o.sensor_distance) * 1e-3,
                             airy_fwhm_m=M.airy_fwhm(w, f_num), airy_ee80_radius_m=M.airy_ee_radius(0.8, w, f_num))
            for w in spec.wavelengths]


@dataclass
class Analysis:
    """What the analysis stages found: the input of the figures and of the typed report. Frequencies in cycles/m."""

    fa: Analyzer
    f0: float  # through-depth MTF frequency
    limits: list[DiffractionLimit]
    psfa: PSFAnalysis
    heights: dict[str, np.ndarray]  # design, design (quantized), fresnel, cubic
    td_depths: list[float]  # m, nearest first
    td: dict[str, np.ndarray]  # name -> (depth, wavelength) MTF at f0
    strength: float  # cubic baseline, waves
    strength_source: str
    iq: ImageQuality
    fab: Fabrication
    fab_fig: bytes | None
    examples: tuple[np.ndarray, list[Any]]
    example_depths: list[float]

    @property
    def asymmetric(self) -> bool:
        return self.psfa.asymmetry > ASYMMETRY_LIMIT


def _through_depth_frequency(ctx: ReportContext, fa: Analyzer, limits: list[DiffractionLimit]) -> float:
    """The through-depth MTF frequency (cycles/m): the requested one, else half the output grid's Nyquist."""
    s = ctx.settings
    f0 = s.mtf_frequency if s.mtf_frequency is not None else ctx.nyquist / 2
    f_limit = 1.0 / (2 * fa.dx) * max(1, 4096 // fa.m)
    if not 0 < f0 < f_limit:
        raise LensdesignError(f"--mtf-frequency: {f0 * 1e-3:.4g} cycles/mm is outside (0, {f_limit * 1e-3:.4g}) "
                              "cycles/mm; give a frequency below the simulation's Nyquist limit")
    fc = max(d.cutoff_cyc_per_mm for d in limits) * 1e3
    if f0 >= fc:
        ctx.notes.append(f"the through-depth MTF frequency {f0 * 1e-3:.4g} cycles/mm is at or above the diffraction "
                         f"cutoff ({fc * 1e-3:.4g} cycles/mm): every MTF there is zero")
    return f0


def ring_analysis(ctx: ReportContext) -> bool:
    """Whether the run's design is a ring design on the 1-D path (a radial design of a spec that takes that path)."""
    return choose_path(ctx.spec).radial and ctx.meta.get("parameterization") == "radial"


def analyse(ctx: ReportContext) -> Analysis:
    """PSFs of the design, through-depth MTF against the baselines, image quality, fabrication, example images."""
    spec = ctx.spec
    rings = ring_analysis(ctx)
    fa: Analyzer = RadialFieldAnalyzer(spec, ctx.settings.device) if rings else FieldAnalyzer(spec, ctx.settings.device)
    if rings:
        ctx.notes.append(f"ring design: PSFs, MTF, Strehl and the as-built Monte Carlo on the 1-D path ({fa.label}); "
                         "the cubic plate on the 2-D grid; as-built elements averaged over each ring")
    depths = spec.depths_m
    limits = diffraction_limits(spec)
    f0 = _through_depth_frequency(ctx, fa, limits)
    with ctx.timed("psf"):
        psfa = analyse_psfs(fa, ctx.height, depths, fa.table_oversample(),
                            lambda i: ctx.progress("PSF, MTF, Strehl per depth", i, len(depths)))
    with ctx.timed("through_depth"):
        strength, strength_src = cubic_strength(ctx)
        fresnel = fa.system.lens_map() if isinstance(fa, RadialFieldAnalyzer) else fresnel_height(spec, fa.n)
        heights = {"design": ctx.height, "design (quantized)": ctx.quantized,
                   "fresnel": fresnel.numpy().astype(np.float32),
                   "cubic": cubic_height(spec, fa.n, strength).numpy().astype(np.float32)}
        zd = dense_depths(spec, ctx.settings.through_depth_points)
        # the cubic plate is not a ring design: the 2-D grid for it (freed with this call's arguments)
        cubic_fa = FieldAnalyzer(spec, ctx.settings.device) if rings else fa
        td_designs = {k: (cubic_fa if k == "cubic" else fa, heights[k]) for k in ("design", "fresnel", "cubic")}
        del cubic_fa
        n_td = len(zd) * len(td_designs)
        td = through_depth(td_designs, zd, f0, lambda i: ctx.progress("through-depth MTF", i, n_td))
        del td_designs
    with ctx.timed("image_quality"):
        iq = ImageQuality(ctx, heights)
        iq.run()
    with ctx.timed("fabrication"):
        fab, fab_fig = fabrication(ctx, fa, iq)
    with ctx.timed("examples"):
        ex_depths = sorted({depths[0], depths[len(depths) // 2], depths[-1]}, key=lambda z: -figures.diopters(z)[0])
        ex = iq.examples(["design", "fresnel"] + ([] if spec.task == "superres" else ["cubic"]), ex_depths)
    return Analysis(fa=fa, f0=f0, limits=limits, psfa=psfa, heights=heights, td_depths=zd, td=td, strength=strength,
                    strength_source=strength_src, iq=iq, fab=fab, fab_fig=fab_fig, examples=ex,
                    example_depths=ex_depths)


# ---- figures ---------------------------------------------------------------------------------------------------


def _psf_figures(ctx: ReportContext, an: Analysis) -> dict[str, bytes]:
    """Height map, PSF grid (and colour composite), MTF."""
    spec, fa, psfa = ctx.spec, an.fa, an.psfa
    depths, wls = spec.depths_m, list(spec.wavelengths)
    ref_peaks_fine = fa.reference_peaks_fine(psfa.oversample)
    airy_r = [M.airy_first_zero(w, fa.f_number) for w in wls]
    r95 = psfa.r95[np.isfinite(psfa.r95)]
    half = float(np.clip(1.25 * (r95.max() if r95.size else 0.0), 6 * max(airy_r), CROP_HALF * psfa.pitch))
    figs = {"height.png": figures.height_figure(ctx.height, ctx.quantized, fa.dx, ctx.levels, ctx.max_height),
            "psf.png": figures.psf_grid_figure(psfa.crops, psfa.pitch, depths, wls, ref_peaks_fine, half)}
    if len(wls) > 1:
        figs["psf-colour.png"] = figures.psf_rgb_figure(psfa.crops, psfa.pitch, depths, wls, half)
    asym = an.asymmetric
    figs["mtf.png"] = figures.mtf_figure(
        psfa.mtf_freq * 1e-3, psfa.mtf, depths, wls, [d.cutoff_cyc_per_mm for d in an.limits], ctx.nyquist * 1e-3,
        band=(psfa.mtf_lo, psfa.mtf_hi) if asym else None,
        cuts=(psfa.cut_freq * 1e-3, psfa.sagittal, psfa.tangential) if asym else None,
        nyquist_label="output Nyquist" if spec.sensor.superres_factor > 1 else "sensor Nyquist")
    return figs


def _comparison_figures(ctx: ReportContext, an: Analysis) -> dict[str, bytes]:
    """Through-depth MTF, PSF metrics, image quality, examples and the fabrication spread."""
    spec, psfa = ctx.spec, an.psfa
    depths, wls = spec.depths_m, list(spec.wavelengths)
    grid = "output grid's" if spec.sensor.superres_factor > 1 else "sensor"
    f0_note = f" (half the {grid} Nyquist frequency)" if ctx.settings.mtf_frequency is None else ""
    kind = str(ctx.meta.get("kind") or "")
    dname = f"design ({kind})" if kind.startswith("baseline") else "design"
    figs = {"through-depth-mtf.png": figures.through_depth_figure(
                an.td_depths, {(dname if k == "design" else k): v for k, v in an.td.items()}, an.f0 * 1e-3, depths,
                wls, f0_note),
            "psf-metrics.png": figures.psf_metrics_figure(
                depths, wls, psfa.strehl, psfa.ee80, psfa.fwhm, [d.airy_ee80_radius_m for d in an.limits],
                [d.airy_fwhm_m for d in an.limits])}
    iq_named = {k: _per_depth_table(v) for k, v in an.iq.by_name().items()}
    iq_named = {k: v for k, v in iq_named.items() if v}
    if iq_named:
        figs["image-quality.png"] = figures.image_quality_figure(iq_named, depths)
    figs["examples.png"] = figures.examples_figure(an.examples[0], an.examples[1],
                                                   [figures.depth_label(z) for z in an.example_depths], wls)
    if an.fab_fig is not None:
        figs["fabrication.png"] = an.fab_fig
    return figs


def _broadband_figures(ctx: ReportContext, an: Analysis) -> dict[str, bytes]:
    """Broadband channels: their spectra and sampling, and the channel PSFs of the design on the sensor grid (the
    weighted sums the pipeline images with) with their MTF at half the output Nyquist against depth."""
    from lensdesign.analysis.psfs import radial_mtf

    spec = ctx.spec
    pipe = an.iq.cpu_ev.pipe  # the CPU pipeline the example images were made with
    dense = dense_depths(spec, 9)
    with torch.no_grad():
        at_depths, at_dense = pipe.psfs(torch.from_numpy(np.asarray(ctx.height, dtype=np.float32)), dense)
    pitch = spec.sensor.pixel_pitch / spec.sensor.superres_factor
    f0 = ctx.nyquist / 2
    mtf = np.stack([np.array([np.interp(f0, m.freq, m.mean[j]) for j in range(m.mean.shape[0])])
                    for m in (radial_mtf(at_dense[i], pitch, ctx.nyquist) for i in range(len(dense)))])
    ch = spec.spectral
    return {"spectrum.png": figures.spectrum_figure(ch),
            "channel-psf.png": figures.channel_psf_figure(at_depths.numpy(), pitch, spec.depths_m, list(ch.labels),
                                                          dense, mtf, f0 * 1e-3)}


def make_figures(ctx: ReportContext, an: Analysis) -> dict[str, bytes]:
    """Every PNG of the report, by file name."""
    ctx.progress("figures", 0, 1)
    with ctx.timed("figures"):
        figs = {**_psf_figures(ctx, an), **_comparison_figures(ctx, an)}
        if ctx.spec.spectral is not None:
            figs.update(_broadband_figures(ctx, an))
    ctx.progress("figures", 1, 1)
    return figs


# ---- the typed report, the page, the files ---------------------------------------------------------------------


def _subsample(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), always including the first and the last."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def _mtf_curves(ctx: ReportContext, an: Analysis) -> list[MTFCurve]:
    """MTF curves per (depth, wavelength), subsampled to at most 128 frequencies, rounded to 5 digits."""
    psfa = an.psfa
    sel = _subsample(len(psfa.mtf_freq), 128)
    gsel = _subsample(len(psfa.cut_freq), 128)
    freq = [_r(f * 1e-3, 5) for f in psfa.mtf_freq[sel]]
    axis_freq = [_r(f * 1e-3, 5) for f in psfa.cut_freq[gsel]]

    def rounded(v: np.ndarray) -> list[float]:
        return [round(float(x), 5) for x in v]

    out = []
    for i, z in enumerate(ctx.spec.depths_m):
        for j, d in enumerate(an.limits):
            c = MTFCurve(depth_m=z, wavelength_m=d.wavelength_m, frequency_cyc_per_mm=freq, mtf=rounded(psfa.mtf[i, j, sel]),
                         diffraction_limited_mtf=rounded(M.diffraction_limited_mtf(psfa.mtf_freq[sel] * 1e-3
                                                                                   / d.cutoff_cyc_per_mm)))
            if an.asymmetric:
                c.axis_frequency_cyc_per_mm = axis_freq
                c.mtf_sagittal = rounded(psfa.sagittal[i, j, gsel])
                c.mtf_tangential = rounded(psfa.tangential[i, j, gsel])
            out.append(c)
    return out


def assemble(ctx: ReportContext, an: Analysis) -> Report:
    """The typed report (everything report.json holds except the timings)."""
    spec, s, fa, psfa = ctx.spec, ctx.settings, an.fa, an.psfa
    depths, wls = spec.depths_m, list(spec.wavelengths)
    return Report(
        run=str(ctx.run.path), name=spec.name, design_kind=ctx.meta.get("kind"),
        settings=AnalysisSettings(mtf_frequency_cyc_per_mm=an.f0 * 1e-3, samples=s.samples, seed=s.seed,
                                  analysis_pitch_m=psfa.pitch, simulation_pitch_m=fa.dx, oversample=psfa.oversample,
                                  propagator=fa.label, field_width_m=fa.m * fa.dx,
                                  spectrum=_spectrum_label(spec)),
        sensor_nyquist_cyc_per_mm=ctx.nyquist * 1e-3,
        diffraction_limit=an.limits,
        psf=[PSFRow(depth_m=z, wavelength_m=w, strehl=_r(float(psfa.strehl[i, j])), ee80_radius_m=_r(float(psfa.ee80[i, j])),
                    fwhm_m=_r(float(psfa.fwhm[i, j])), energy_in_field=_r(float(psfa.totals[i, j])))
             for i, z in enumerate(depths) for j, w in enumerate(wls)],
        mtf=_mtf_curves(ctx, an),
        mtf_rotationally_symmetric=not an.asymmetric,
        through_depth_mtf=ThroughDepthMTF(frequency_cyc_per_mm=an.f0 * 1e-3, depths_m=an.td_depths, wavelengths_m=wls,
                                          mtf={k: np.round(v, 5).tolist() for k, v in an.td.items()},
                                          cubic_strength_waves=an.strength, cubic_strength_source=an.strength_source,
                                          focus_depth_m=spec.focus_depth_m),
        image_quality=an.iq.result, image_quality_source=an.iq.source, fabrication=an.fab, notes=ctx.notes)


def _spectrum_label(spec: Spec) -> str | None:
    """The broadband channels the field analysis mixes, in words (None for one wavelength per channel)."""
    ch = spec.spectral
    if ch is None:
        return None
    n = len(ch.wavelengths_m) // len(ch.labels)
    return (f"polychromatic: {len(ch.labels)} channels × {n} wavelengths ({ch.source}); each channel's PSF is the "
            "weighted sum of its wavelengths' PSFs, its Strehl ratio against the same sum of diffraction-limited PSFs")


def _recon_label(meta: dict[str, Any]) -> str:
    """The run's reconstruction in words: Wiener, or Wiener + U-Net with its size."""
    arch = meta.get("reconstruction_arch")
    if isinstance(arch, dict) and arch.get("kind") == "unet":
        return (f"Wiener filter (learned γ) + U-Net ({arch.get('unet_channels')} channels, depth {arch.get('unet_depth')}"
                f"{', sensor image as a second input' if arch.get('unet_sensor_input') else ''}); baselines: Wiener, γ tuned")
    return "Wiener filter, γ tuned per design"


def _write(out: Path, figs: dict[str, bytes], data: dict[str, Any], page: str) -> None:
    """The figures, report.json and index.html, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for name, png in figs.items():
        atomic_write_bytes(out / name, png)
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "index.html", page)


def build_report(run_path: str | Path, settings: ReportSettings | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Analyse the run at `run_path` and write index.html, the PNG figures and report.json to the output folder
    (default RUN/report). Returns the report.json object.

    On the CPU the analysis runs with `settings.threads` intra-op threads (restored afterwards): its FFTs are
    small enough that one thread loses little on an idle machine, and extra threads stall badly when another
    process holds a core (measured 14 s with one thread against 39 s with two for the edof-demo report).
    """
    settings = settings or ReportSettings()
    n0 = torch.get_num_threads()
    if settings.threads is not None and torch.device(settings.device).type == "cpu":
        torch.set_num_threads(max(1, settings.threads))
    try:
        return _build_report(Path(run_path), settings, progress)
    finally:
        torch.set_num_threads(n0)


def _build_report(run_path: Path, settings: ReportSettings, progress: Progress | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if settings.samples < 0:
        raise LensdesignError("--samples: must be 0 or more (0 skips the as-built Monte Carlo)")
    ctx = _load(run_path, settings, progress)
    an = analyse(ctx)
    figs = make_figures(ctx, an)
    report = assemble(ctx, an)
    ctx.timings["total"] = time.perf_counter() - t_start
    report.timings_s = {k: round(v, 2) for k, v in ctx.timings.items()}
    page = Page(report=report, spec=ctx.spec, figures=encode_figures(figs), grid=ctx.height.shape,
                reconstruction=_recon_label(ctx.meta), asymmetry_limit=ASYMMETRY_LIMIT, image_quality=an.iq.rows(),
                baseline_reconstruction=an.iq.baseline_reconstruction())
    data = to_json(report)
    _write(Path(settings.out) if settings.out is not None else ctx.run.path / "report", figs, data, render_page(page))
    return data

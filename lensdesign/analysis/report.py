"""The report of a run: PSF, MTF, Strehl / encircled energy / FWHM, image quality against the baselines, and
the as-built fabrication tolerance; written as RUN/report/{index.html, *.png, report.json}.

`build_report(run, settings)` does the work and returns the report.json object. All lengths in metres inside;
frequencies in cycles/m inside and cycles/mm in report.json and on the page (names say so).
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensdesign.analysis import figures
from lensdesign.analysis import metrics as M
from lensdesign.analysis.psfs import FieldAnalyzer, mtf_at_frequency, oversample_for_frequency, radial_mtf
from lensdesign.analysis.tolerance import FabricationErrors, monte_carlo
from lensdesign.baselines import cubic_height, default_cubic_strength, fresnel_height
from lensdesign.errors import LensdesignError
from lensdesign.fabrication.quantize import quantize, staircase_efficiency
from lensdesign.rundir import SUMMARY, RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text
from lensdesign.spec import Spec

Progress = Callable[[str, int, int], None]
"""progress(stage description, done, total): called as each long stage advances."""

ASYMMETRY_LIMIT = 0.05  # MTF spread over orientations above which sagittal / tangential MTFs are shown
CROP_HALF = 256  # fine samples kept either side of the axis for display and encircled energy


@dataclass
class ReportSettings:
    """Options of `lensdesign report`. `mtf_frequency` in cycles/m (None: half the sensor Nyquist frequency)."""

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
    run: RunDir
    spec: Spec
    height: np.ndarray
    quantized: np.ndarray
    meta: dict[str, Any]
    summary: dict[str, Any] | None
    settings: ReportSettings
    progress: Progress
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    recon: Any = None  # the run's learned reconstruction with a U-Net (lensdesign.evaluate.load_reconstruction), if any


# ---- helpers -------------------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """Plain JSON: numpy scalars/arrays to Python, non-finite floats (inf depth, NaN) to null."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def depth_or_none(z: float) -> float | None:
    return None if math.isinf(z) else float(z)


def _r(x: float, nd: int = 6) -> float:
    return float(f"{x:.{nd}g}") if math.isfinite(x) else x


def _evaluate_module() -> Any | None:
    """lensdesign.evaluate when it is installed (the image-quality part degrades gracefully without it)."""
    try:
        return importlib.import_module("lensdesign.evaluate")
    except ModuleNotFoundError as e:
        if e.name != "lensdesign.evaluate":
            raise
        return None


def read_summary(run: RunDir) -> dict[str, Any] | None:
    p = run / SUMMARY
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LensdesignError(f"{p}: not valid JSON; delete it or re-run 'lensdesign optimize'") from None
    return data if isinstance(data, dict) else None


def cubic_strength(ctx: ReportContext) -> tuple[float, str]:
    """Cubic baseline strength (waves): recorded in summary.json or the run's design, else the default."""
    s = ctx.summary or {}
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


def analyse_psfs(fa: FieldAnalyzer, height: np.ndarray, depths: list[float], oversample: int,
                 progress: Callable[[int], None] | None = None) -> PSFAnalysis:
    """Finely sampled PSFs of `height` at `depths`: Strehl, EE80, FWHM, radial and axis MTF, display crops."""
    wl = fa.wavelengths
    pitch = fa.fine_pitch_for(oversample)
    fc_max = max(M.cutoff_frequency(fa.spec.optics.aperture, w, fa.spec.optics.sensor_distance) for w in wl)
    ref = fa.reference_peaks()
    d, w = len(depths), len(wl)
    k = fa.m * oversample
    c = k // 2
    hw = min(CROP_HALF, c - 1)
    crops = np.empty((d, w, 2 * hw + 1, 2 * hw + 1), dtype=np.float32)
    totals = np.empty((d, w))
    strehl = np.empty((d, w))
    ee80 = np.empty((d, w))
    r95 = np.empty((d, w))
    fw = np.empty((d, w))
    mtfs, los, his, sags, tans = [], [], [], [], []
    freq = cut_f = np.zeros(0)
    asym = 0.0
    for i, su in fa.iter_depths(height, depths):
        coarse = fa.coarse_intensity(su)
        peaks, _ = fa.refined_peaks(su, coarse)
        strehl[i] = peaks / ref
        fine = fa.fine_intensity(su, oversample)
        rm = radial_mtf(fine, pitch, 1.05 * fc_max)
        freq, cut_f = rm.freq, rm.cut_freq
        mtfs.append(rm.mean)
        los.append(rm.lo)
        his.append(rm.hi)
        sags.append(rm.sagittal)
        tans.append(rm.tangential)
        asym = max(asym, rm.asymmetry(0.9 * fc_max))
        crop_t = fine[:, c - hw:c + hw + 1, c - hw:c + hw + 1]
        totals[i] = fine.sum(dim=(-2, -1)).double().cpu().numpy()
        crops[i] = crop_t.cpu().numpy()
        for j in range(w):
            cr = crops[i, j].astype(np.float64)
            cen = M.centroid(cr)
            ee80[i, j] = M.ee_radius(cr, pitch, 0.8, center=cen, total=totals[i, j])
            if math.isnan(ee80[i, j]):  # more than 20 % of the light outside the crop: use the whole field
                full = fine[j].double().cpu().numpy()
                ee80[i, j] = M.ee_radius(full, pitch, 0.8)
            r95[i, j] = M.ee_radius(cr, pitch, 0.95, center=(hw, hw), total=totals[i, j])
            fw[i, j] = M.fwhm(cr, pitch)
        del fine
        if progress is not None:
            progress(i + 1)
    return PSFAnalysis(depths=list(depths), wavelengths=list(wl), pitch=pitch, oversample=oversample, crops=crops,
                       totals=totals, strehl=strehl, ee80=ee80, r95=r95, fwhm=fw, mtf_freq=freq,
                       mtf=np.stack(mtfs), mtf_lo=np.stack(los), mtf_hi=np.stack(his), cut_freq=cut_f,
                       sagittal=np.stack(sags), tangential=np.stack(tans), asymmetry=asym)


def through_depth(fa: FieldAnalyzer, heights: dict[str, np.ndarray], depths: list[float], f0: float,
                  progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """MTF (D, W) at f0 (cycles/m) against depth for each named height map."""
    u = oversample_for_frequency(fa.spec, fa.dx, fa.m, f0)
    pitch = fa.fine_pitch_for(u)
    out: dict[str, np.ndarray] = {}
    done = 0
    for name, h in heights.items():
        v = np.empty((len(depths), len(fa.wavelengths)))
        for i, su in fa.iter_depths(h, depths):
            v[i] = mtf_at_frequency(fa.fine_intensity(su, u), pitch, f0)
            done += 1
            if progress is not None:
                progress(done)
        out[name] = v
    return out


class CoreMeter:
    """Strehl ratio and energy in the central core (radius 1.22 λN, around the continuous design's peak) per
    (depth, wavelength), on the simulation grid: the quantities the fabrication Monte Carlo tracks."""

    def __init__(self, fa: FieldAnalyzer, depths: list[float], continuous: np.ndarray) -> None:
        self.fa = fa
        self.depths = depths
        m = fa.m
        self.masks: list[list[torch.Tensor]] = []
        idx = torch.arange(m, device=fa.device)
        for _, su in fa.iter_depths(continuous, depths):
            _, peaks_at = fa.refined_peaks(su, fa.coarse_intensity(su))
            row = []
            for j, (iy, ix) in enumerate(peaks_at):
                r = M.airy_first_zero(fa.wavelengths[j], fa.f_number) / fa.dx
                dy = (idx - iy + m // 2) % m - m // 2
                dx = (idx - ix + m // 2) % m - m // 2
                row.append((dy[:, None] ** 2 + dx[None, :] ** 2) <= r * r)
            self.masks.append(row)

    def __call__(self, height: np.ndarray) -> dict[str, np.ndarray]:
        fa = self.fa
        ref = fa.reference_peaks()
        d, w = len(self.depths), len(fa.wavelengths)
        strehl = np.empty((d, w))
        core = np.empty((d, w))
        for i, su in fa.iter_depths(height, self.depths):
            coarse = fa.coarse_intensity(su)
            peaks, _ = fa.refined_peaks(su, coarse)
            strehl[i] = peaks / ref
            for j in range(w):
                core[i, j] = float(coarse[j][self.masks[i][j]].sum())
        return {"strehl": strehl, "core": core}


# ---- image quality ---------------------------------------------------------------------------------------------


def _per_depth_table(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(entry, dict):
        return []
    rows = entry.get("per_depth") or []
    return [r for r in rows if isinstance(r, dict)]


class ImageQuality:
    """PSNR / SSIM of the design and the baselines: from summary.json when optimize wrote one, else computed
    with lensdesign.evaluate (Wiener γ tuned per design), else absent with a note."""

    def __init__(self, ctx: ReportContext, heights: dict[str, np.ndarray]) -> None:
        self.ctx = ctx
        self.heights = heights
        self.ev = _evaluate_module()
        self.source = "unavailable"
        self.result: dict[str, Any] = {}
        self.gammas: dict[str, Any] = {}
        self._images: torch.Tensor | None = None
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def images(self) -> torch.Tensor:
        if self._images is None:
            assert self.ev is not None
            self._images = self.ev.validation_set(self.ctx.spec, count=self.ctx.settings.validation_images,
                                                  seed=self.ctx.settings.seed)
        return self._images

    def evaluate(self, height: np.ndarray, gamma: Any = None, learned: bool = False) -> dict[str, Any]:
        """evaluate_height on the report's validation images (cached: identical heights and γ are evaluated once).

        `learned`: reconstruct with the run's U-Net too (for the design and its fabricated variants)."""
        assert self.ev is not None
        h = np.ascontiguousarray(height, dtype=np.float32)
        recon = self.ctx.recon if learned else None
        key = (hashlib.sha1(h.tobytes()).hexdigest(), json.dumps(gamma), recon is not None)
        if key not in self._cache:
            kw = {"recon": recon} if recon is not None else {}
            self._cache[key] = self.ev.evaluate_height(self.ctx.spec, h, gamma=gamma, device=self.ctx.settings.device,
                                                       seed=self.ctx.settings.seed, images=self.images(), **kw)
        return self._cache[key]

    def run(self) -> None:
        ctx = self.ctx
        s = ctx.summary
        if s is not None and isinstance(s.get("design"), dict):
            self.source = "summary.json"
            self.result = {k: s[k] for k in ("design", "design_quantized", "baselines") if k in s}
            for name, e in (("design", s.get("design")), ("design (quantized)", s.get("design_quantized")),
                            *(((k, v) for k, v in (s.get("baselines") or {}).items()))):
                if isinstance(e, dict) and e.get("gamma") is not None:
                    self.gammas[name] = e["gamma"]
            return
        if self.ev is None:
            ctx.notes.append("image quality: the run has no summary.json and lensdesign.evaluate is not available, "
                             "so PSNR / SSIM were not computed")
            return
        self.source = "computed with lensdesign.evaluate (Wiener γ tuned per design on the validation images)"
        names = ["design", "design (quantized)", "fresnel", "cubic"]
        out: dict[str, Any] = {}
        for k, name in enumerate(names):
            gamma = self.gammas.get("design") if name == "design (quantized)" else None
            r = self.evaluate(self.heights[name], gamma, learned=name.startswith("design"))
            self.gammas[name] = r.get("gamma")
            out[name] = r
            ctx.progress("image quality (PSNR / SSIM)", k + 1, len(names))
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

    def examples(self, names: list[str], depths: list[float]) -> tuple[np.ndarray, list[Any]] | None:
        """Sensor images and reconstructions of one validation image for `names` at `depths`."""
        if self.ev is None or not hasattr(self.ev, "simulate_examples"):
            return None
        img = self.images()[:1]
        truth = img[0].permute(1, 2, 0).cpu().numpy()
        rows = []
        total = len(names) * len(depths)
        done = 0
        for name in names:
            gamma = self.gammas.get(name)
            if gamma is None:
                gamma = self.ev.evaluate_height(self.ctx.spec, self.heights[name], gamma=None,
                                                device=self.ctx.settings.device, seed=self.ctx.settings.seed,
                                                images=img).get("gamma")
                self.gammas[name] = gamma
            cells = []
            kw = {"recon": self.ctx.recon} if name == "design" and self.ctx.recon is not None else {}
            for z in depths:
                sensor, recon = self.ev.simulate_examples(self.ctx.spec, self.heights[name], gamma, z, img[0],
                                                          seed=self.ctx.settings.seed, **kw)
                p = M.psnr_db(recon, truth)
                cells.append((np.asarray(sensor), np.asarray(recon), f"{p:.1f} dB"))
                done += 1
                self.ctx.progress("example images", done, total)
            rows.append((name, cells))
        return truth, rows


# ---- the report ----------------------------------------------------------------------------------------------


def _load(run_path: Path, settings: ReportSettings, progress: Progress | None) -> ReportContext:
    run = RunDir(run_path).require()
    spec = run.load_spec()
    design = run.load_design()
    h = np.asarray(design.height_m, dtype=np.float32)
    levels = int(design.meta.get("levels", spec.fabrication.levels))
    max_h = float(design.meta.get("max_height_m", spec.max_height_m))
    q = np.asarray(quantize(h.astype(np.float64), max_h, levels), dtype=np.float32)
    ev = _evaluate_module()
    recon = ev.load_reconstruction(design) if ev is not None and hasattr(ev, "load_reconstruction") else None
    return ReportContext(run=run, spec=spec, height=h, quantized=q, meta=dict(design.meta), summary=read_summary(run),
                         settings=settings, progress=progress or (lambda *_: None), recon=recon)


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
        return _build_report(run_path, settings, progress)
    finally:
        torch.set_num_threads(n0)


def _build_report(run_path: str | Path, settings: ReportSettings, progress: Progress | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if settings.samples < 0:
        raise LensdesignError("--samples: must be 0 or more (0 skips the as-built Monte Carlo)")
    ctx = _load(Path(run_path), settings, progress)
    spec = ctx.spec
    out = Path(settings.out) if settings.out is not None else ctx.run.path / "report"
    fa = FieldAnalyzer(spec, device=settings.device)
    if ctx.height.shape != (fa.n, fa.n):
        raise LensdesignError(f"{ctx.run.path}: height map {ctx.height.shape} does not match the spec grid {fa.n}; "
                              "the run's spec.yaml was changed, re-create the run")
    depths = spec.depths_m
    wls = list(spec.wavelengths)
    z_s = spec.optics.sensor_distance
    ap = spec.optics.aperture
    nyq = 1.0 / (2 * spec.sensor.pixel_pitch)
    f0 = settings.mtf_frequency if settings.mtf_frequency is not None else nyq / 2
    f_limit = 1.0 / (2 * fa.dx) * max(1, 4096 // fa.m)
    if not 0 < f0 < f_limit:
        raise LensdesignError(f"--mtf-frequency: {f0 * 1e-3:.4g} cycles/mm is outside (0, {f_limit * 1e-3:.4g}) "
                              "cycles/mm; give a frequency below the simulation's Nyquist limit")
    cutoffs = [M.cutoff_frequency(ap, w, z_s) for w in wls]
    if f0 >= max(cutoffs):
        ctx.notes.append(f"the through-depth MTF frequency {f0 * 1e-3:.4g} cycles/mm is at or above the diffraction "
                         f"cutoff ({max(cutoffs) * 1e-3:.4g} cycles/mm): every MTF there is zero")

    # 1. PSFs of the design at the spec's depths
    t0 = time.perf_counter()
    u_table = max(fa.oversample, 2) if fa.m * 2 <= 4096 else fa.oversample
    n_dw = len(depths)
    psfa = analyse_psfs(fa, ctx.height, depths, u_table,
                        lambda i: ctx.progress("PSF, MTF, Strehl per depth", i, n_dw))
    ctx.timings["psf"] = time.perf_counter() - t0

    # 2. through-depth MTF for the design and the baselines
    t0 = time.perf_counter()
    strength, strength_src = cubic_strength(ctx)
    fres = fresnel_height(spec, fa.n).numpy().astype(np.float32)
    cub = cubic_height(spec, fa.n, strength).numpy().astype(np.float32)
    heights = {"design": ctx.height, "design (quantized)": ctx.quantized, "fresnel": fres, "cubic": cub}
    zd = dense_depths(spec, settings.through_depth_points)
    td_designs = {k: heights[k] for k in ("design", "fresnel", "cubic")}
    n_td = len(zd) * len(td_designs)
    td = through_depth(fa, td_designs, zd, f0, lambda i: ctx.progress("through-depth MTF", i, n_td))
    ctx.timings["through_depth"] = time.perf_counter() - t0

    # 3. image quality
    t0 = time.perf_counter()
    iq = ImageQuality(ctx, heights)
    iq.run()
    ctx.timings["image_quality"] = time.perf_counter() - t0

    # 4. fabrication
    t0 = time.perf_counter()
    fab, fab_fig = fabrication(ctx, fa, iq)
    ctx.timings["fabrication"] = time.perf_counter() - t0

    # 5. examples
    t0 = time.perf_counter()
    ex = None
    if iq.ev is not None:
        ex_depths = sorted({depths[0], depths[len(depths) // 2], depths[-1]}, key=lambda z: -figures.diopters(z)[0])
        ex = iq.examples(["design", "fresnel"] + ([] if spec.task == "superres" else ["cubic"]), ex_depths)
        ex_titles = [figures.depth_label(z) for z in ex_depths]
    ctx.timings["examples"] = time.perf_counter() - t0

    # 6. figures
    t0 = time.perf_counter()
    ctx.progress("figures", 0, 1)
    ref_fine = fa.reference_psf(u_table)
    kf = ref_fine.shape[-1] // 2
    ref_peaks_fine = ref_fine[:, kf, kf].double().cpu().numpy()
    del ref_fine
    f_num = z_s / ap
    airy_r = [M.airy_first_zero(w, f_num) for w in wls]
    r95 = psfa.r95[np.isfinite(psfa.r95)]
    half = float(np.clip(1.25 * (r95.max() if r95.size else 0.0), 6 * max(airy_r), CROP_HALF * psfa.pitch))
    figs: dict[str, bytes] = {}
    levels = int(ctx.meta.get("levels", spec.fabrication.levels))
    max_h = float(ctx.meta.get("max_height_m", spec.max_height_m))
    figs["height.png"] = figures.height_figure(ctx.height, ctx.quantized, fa.dx, levels, max_h)
    figs["psf.png"] = figures.psf_grid_figure(psfa.crops, psfa.pitch, depths, wls, ref_peaks_fine, half)
    if len(wls) > 1:
        figs["psf-colour.png"] = figures.psf_rgb_figure(psfa.crops, psfa.pitch, depths, wls, half)
    asym = psfa.asymmetry > ASYMMETRY_LIMIT
    fcm = np.array(cutoffs) * 1e-3
    figs["mtf.png"] = figures.mtf_figure(psfa.mtf_freq * 1e-3, psfa.mtf, depths, wls, fcm, nyq * 1e-3,
                                         band=(psfa.mtf_lo, psfa.mtf_hi) if asym else None,
                                         cuts=(psfa.cut_freq * 1e-3, psfa.sagittal, psfa.tangential) if asym else None)
    f0_note = " (half the sensor Nyquist frequency)" if settings.mtf_frequency is None else ""
    kind = str(ctx.meta.get("kind") or "")
    dname = f"design ({kind})" if kind.startswith("baseline") else "design"
    figs["through-depth-mtf.png"] = figures.through_depth_figure(
        zd, {(dname if k == "design" else k): v for k, v in td.items()}, f0 * 1e-3, depths, wls, f0_note)
    airy_ee = [M.airy_ee_radius(0.8, w, f_num) for w in wls]
    airy_fw = [M.airy_fwhm(w, f_num) for w in wls]
    figs["psf-metrics.png"] = figures.psf_metrics_figure(depths, wls, psfa.strehl, psfa.ee80, psfa.fwhm, airy_ee, airy_fw)
    iq_named = {k: _per_depth_table(v) for k, v in iq.by_name().items()}
    iq_named = {k: v for k, v in iq_named.items() if v}
    if iq_named:
        figs["image-quality.png"] = figures.image_quality_figure(iq_named, depths)
    if ex is not None:
        figs["examples.png"] = figures.examples_figure(ex[0], ex[1], ex_titles, wls)
    if fab_fig is not None:
        figs["fabrication.png"] = fab_fig
    ctx.timings["figures"] = time.perf_counter() - t0
    ctx.progress("figures", 1, 1)

    # 7. report.json and the page
    mtf_entries = []
    sel = _subsample(len(psfa.mtf_freq), 128)
    for i, z in enumerate(depths):
        for j, w in enumerate(wls):
            e: dict[str, Any] = {"depth_m": depth_or_none(z), "wavelength_m": w,
                                 "frequency_cyc_per_mm": [_r(f * 1e-3, 5) for f in psfa.mtf_freq[sel]],
                                 "mtf": [round(float(v), 5) for v in psfa.mtf[i, j, sel]],
                                 "diffraction_limited_mtf": [round(float(v), 5) for v in
                                                             M.diffraction_limited_mtf(psfa.mtf_freq[sel] / cutoffs[j])]}
            if asym:
                gsel = _subsample(len(psfa.cut_freq), 128)
                e["axis_frequency_cyc_per_mm"] = [_r(f * 1e-3, 5) for f in psfa.cut_freq[gsel]]
                e["mtf_sagittal"] = [round(float(v), 5) for v in psfa.sagittal[i, j, gsel]]
                e["mtf_tangential"] = [round(float(v), 5) for v in psfa.tangential[i, j, gsel]]
            mtf_entries.append(e)
    report: dict[str, Any] = {
        "run": str(ctx.run.path),
        "name": spec.name,
        "design_kind": ctx.meta.get("kind"),
        "settings": {
            "mtf_frequency_cyc_per_mm": f0 * 1e-3,
            "samples": settings.samples,
            "seed": settings.seed,
            "analysis_pitch_m": psfa.pitch,
            "simulation_pitch_m": fa.dx,
            "oversample": psfa.oversample,
            "propagator": fa.propagator,
            "field_width_m": fa.m * fa.dx,
        },
        "sensor_nyquist_cyc_per_mm": nyq * 1e-3,
        "diffraction_limit": [{"wavelength_m": w, "cutoff_cyc_per_mm": fc * 1e-3, "airy_fwhm_m": fw,
                               "airy_ee80_radius_m": ee} for w, fc, fw, ee in zip(wls, cutoffs, airy_fw, airy_ee, strict=True)],
        "psf": [{"depth_m": depth_or_none(z), "wavelength_m": w, "strehl": _r(float(psfa.strehl[i, j])),
                 "ee80_radius_m": _r(float(psfa.ee80[i, j])), "fwhm_m": _r(float(psfa.fwhm[i, j])),
                 "energy_in_field": _r(float(psfa.totals[i, j]))}
                for i, z in enumerate(depths) for j, w in enumerate(wls)],
        "mtf": mtf_entries,
        "mtf_rotationally_symmetric": not asym,
        "through_depth_mtf": {
            "frequency_cyc_per_mm": f0 * 1e-3,
            "depths_m": [depth_or_none(z) for z in zd],
            "wavelengths_m": wls,
            "mtf": {k: np.round(v, 5).tolist() for k, v in td.items()},
            "cubic_strength_waves": strength,
            "cubic_strength_source": strength_src,
            "focus_depth_m": depth_or_none(spec.focus_depth_m),
        },
        "image_quality": iq.result,
        "image_quality_source": iq.source,
        "fabrication": fab,
        "notes": ctx.notes,
    }
    report = json_safe(report)
    ctx.timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 2) for k, v in ctx.timings.items()}
    page = render_html(ctx, report, figs, psfa, iq)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in figs.items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "index.html", page)
    return report


def _subsample(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), always including the first and the last."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


# ---- fabrication -----------------------------------------------------------------------------------------------


def fabrication(ctx: ReportContext, fa: FieldAnalyzer, iq: ImageQuality) -> tuple[dict[str, Any], bytes | None]:
    """Continuous vs quantized vs as-built: Strehl, core-energy efficiency and (with lensdesign.evaluate) PSNR."""
    spec = ctx.spec
    s = ctx.settings
    levels = int(ctx.meta.get("levels", spec.fabrication.levels))
    max_h = float(ctx.meta.get("max_height_m", spec.max_height_m))
    errors = FabricationErrors.from_spec(spec, max_height=max_h, levels=levels, pitch=fa.dx)
    depths = spec.depths_m
    meter = CoreMeter(fa, depths, ctx.height)
    cont = meter(ctx.height)
    quant = meter(ctx.quantized)
    use_psnr = iq.ev is not None
    gamma = None
    psnr_c = psnr_q = None
    if use_psnr:
        # one γ for continuous, quantized and as built: the design's (from summary.json or tuned on the continuous map)
        rc = iq.evaluate(ctx.height, iq.gammas.get("design"), learned=True)
        gamma = rc.get("gamma")
        psnr_c = rc["mean_psnr_db"]
        psnr_q = iq.evaluate(ctx.quantized, gamma, learned=True)["mean_psnr_db"]
        iq.gammas.setdefault("design", gamma)

    def evaluate(h: np.ndarray) -> dict[str, Any]:
        r: dict[str, Any] = dict(meter(h))
        if use_psnr:
            r["psnr_db"] = float(iq.evaluate(h.astype(np.float32), gamma, learned=True)["mean_psnr_db"])
        return r

    samples = monte_carlo(ctx.height, errors, s.samples, s.seed, evaluate,
                          lambda i: ctx.progress("as-built Monte Carlo", i, s.samples))
    sinc2 = staircase_efficiency(levels)
    measured = float(np.mean(quant["core"] / np.maximum(cont["core"], 1e-30)))
    as_built: dict[str, Any] = {"samples": s.samples, "seed": s.seed}
    st = np.array([x["strehl"].mean() for x in samples])
    ps = np.array([x["psnr_db"] for x in samples]) if use_psnr and samples else None
    if samples:
        eff = np.array([float(np.mean(x["core"] / np.maximum(cont["core"], 1e-30))) for x in samples])
        as_built.update({"strehl_mean": float(st.mean()), "strehl_std": float(st.std()),
                         "strehl_p5": float(np.percentile(st, 5)), "efficiency_mean": float(eff.mean()),
                         "strehl_samples": st.tolist()})
        if ps is not None:
            as_built.update({"psnr_db_mean": float(ps.mean()), "psnr_db_std": float(ps.std()),
                             "psnr_db_p5": float(np.percentile(ps, 5)), "psnr_db_samples": ps.tolist()})
        else:
            as_built.update({"psnr_db_mean": None, "psnr_db_p5": None})
    else:
        as_built.update({"strehl_mean": None, "psnr_db_mean": None, "psnr_db_p5": None})
    fab = {
        "process": errors.process,
        "levels": levels,
        "max_height_m": max_h,
        "errors": {"height_tolerance_m": errors.height_tolerance, "misalignment_m": errors.misalignment,
                   "min_feature_m": errors.min_feature, "rounding_sigma_m": errors.min_feature / 4,
                   "description": errors.describe()},
        "efficiency": {"staircase_sinc2": sinc2, "measured": measured},
        "continuous_strehl_mean": float(cont["strehl"].mean()),
        "quantized_strehl_mean": float(quant["strehl"].mean()),
        "continuous_psnr_db": psnr_c,
        "quantized_psnr_db": psnr_q,
        "as_built": as_built,
    }
    if not use_psnr:
        ctx.notes.append("fabrication: PSNR of the continuous, quantized and as-built elements needs "
                         "lensdesign.evaluate, which is not available; only optical measures are given")
    fig = None
    if samples:
        fig = figures.fabrication_figure(st, fab["continuous_strehl_mean"], fab["quantized_strehl_mean"], ps, psnr_c, psnr_q)
    return fab, fig


# ---- HTML ------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 60px; background: white; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; margin-top: 4px; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f0f0f0; }
td.l, th.l { text-align: left; } .note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; }
.muted { color: #666; font-size: 0.9em; } code { background: #f3f3f3; padding: 0 3px; }
"""


def _img(figs: dict[str, bytes], name: str, caption: str) -> str:
    if name not in figs:
        return ""
    b64 = base64.b64encode(figs[name]).decode()
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(name)}">'
            f"<figcaption>{caption} <span class=muted>({html.escape(name)})</span></figcaption></figure>")


def _fmt(x: Any, spec: str = ".3f", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _recon_label(ctx: ReportContext) -> str:
    """The run's reconstruction in words: Wiener, or Wiener + U-Net with its size."""
    arch = ctx.meta.get("reconstruction_arch")
    if isinstance(arch, dict) and arch.get("kind") == "unet":
        return (f"Wiener filter (learned γ) + U-Net ({arch.get('unet_channels')} channels, depth {arch.get('unet_depth')}"
                f"{', sensor image as a second input' if arch.get('unet_sensor_input') else ''}); baselines: Wiener, γ tuned")
    return "Wiener filter, γ tuned per design"


def render_html(ctx: ReportContext, rep: dict[str, Any], figs: dict[str, bytes], psfa: PSFAnalysis, iq: ImageQuality) -> str:
    """The self-contained page: every figure embedded as a base64 PNG."""
    spec = ctx.spec
    o = spec.optics
    e = html.escape
    dl = figures.depth_label
    wls = psfa.wavelengths
    st = rep["settings"]
    fab0 = rep["fabrication"]
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>lensdesign report: {e(spec.name)}</title>"
             f"<style>{CSS}</style></head><body><main>",
             f"<h1>lensdesign report: {e(spec.name)}</h1>",
             f"<p class=muted>run <code>{e(str(ctx.run.path))}</code> · design kind <b>{e(str(ctx.meta.get('kind')))}</b> · "
             f"generated {time.strftime('%Y-%m-%d %H:%M')} in {rep['timings_s'].get('total', 0):.1f} s</p>"]
    rows = [
        ["aperture / sensor distance", f"{o.aperture * 1e3:.4g} mm / {o.sensor_distance * 1e3:.4g} mm "
                                       f"(f/{o.sensor_distance / o.aperture:.2f})"],
        ["wavelengths", ", ".join(f"{w * 1e9:.0f} nm" for w in wls)],
        ["depths", ", ".join(dl(z) for z in spec.depths_m) + f" (reference lenses focused at {dl(spec.focus_depth_m)})"],
        ["material / max height / levels", f"{e(spec.material_name)} / {float(fab0['max_height_m']) * 1e6:.4g} µm / "
                                           f"{fab0['levels']} ({e(fab0['process'])})"],
        ["element grid", f"{ctx.height.shape[0]} × {ctx.height.shape[1]} at {o.pitch * 1e6:.4g} µm"],
        ["sensor", f"{spec.sensor.resolution[0]} × {spec.sensor.resolution[1]} px at {spec.sensor.pixel_pitch * 1e6:.4g} µm; "
                   f"Nyquist {rep['sensor_nyquist_cyc_per_mm']:.4g} cycles/mm" + (
                       f"; super-resolution ×{spec.sensor.superres_factor} (output grid "
                       f"{spec.sensor.pixel_pitch / spec.sensor.superres_factor * 1e6:.4g} µm)"
                       if spec.sensor.superres_factor > 1 else "")],
        ["reconstruction", _recon_label(ctx)],
        ["analysis sampling", f"whole simulated field ({st['field_width_m'] * 1e3:.3g} mm), PSF pitch "
                              f"{st['analysis_pitch_m'] * 1e6:.3g} µm (simulation pitch / {st['oversample']}, band-limited "
                              f"interpolation); propagator {e(st['propagator'])}"],
    ]
    parts.append(_table(["", ""], rows, left=2))
    for n in rep.get("notes", []):
        parts.append(f"<p class=note>{e(n)}</p>")

    parts.append("<h2>Height map</h2>")
    parts.append(_img(figs, "height.png", "Element height (µm) over the aperture (mm): continuous design and the map "
                      "quantized to the fabrication levels, with their profiles through the centre."))

    parts.append("<h2>Point spread functions</h2>")
    parts.append(_img(figs, "psf.png", "PSF per depth (rows) and wavelength (columns), log scale relative to the "
                      "diffraction-limited peak at that wavelength (0 = a perfect lens focused at that depth); "
                      "axes in µm on the sensor."))
    parts.append(_img(figs, "psf-colour.png", "PSF per depth as a colour composite of the wavelengths (µm axes)."))

    parts.append("<h2>MTF</h2>")
    sym = f"rotationally symmetric (spread over orientations below {ASYMMETRY_LIMIT})" if rep["mtf_rotationally_symmetric"] else \
        "not rotationally symmetric: the band shows the range over orientations, dotted / dash-dotted the sagittal " \
        "(along x) and tangential (along y) MTF"
    f_show = min(1.02 * max(d["cutoff_cyc_per_mm"] for d in rep["diffraction_limit"]),
                 max(3 * rep["sensor_nyquist_cyc_per_mm"], 0.3 * max(d["cutoff_cyc_per_mm"] for d in rep["diffraction_limit"])))
    parts.append(_img(figs, "mtf.png", f"Radially averaged MTF per depth and wavelength (solid), diffraction-limited "
                      f"MTF (dashed) and the sensor Nyquist frequency (dotted), shown up to {f_show:.4g} cycles/mm "
                      f"(report.json holds the curves up to the cutoff). The design is {sym}."))
    td = rep["through_depth_mtf"]
    parts.append(_img(figs, "through-depth-mtf.png",
                      f"MTF at {td['frequency_cyc_per_mm']:.4g} cycles/mm against depth for the design and the "
                      f"baselines: a Fresnel lens focused at {dl(spec.focus_depth_m)} and a cubic phase plate of "
                      f"{td['cubic_strength_waves']:.3g} waves ({e(td['cubic_strength_source'])}). A flat, high curve "
                      "is an extended depth of field. Optical MTF of the lens alone (before pixel integration and "
                      "reconstruction), over the whole simulated field."))
    zd = [math.inf if z is None else z for z in td["depths_m"]]
    names = list(td["mtf"])
    spec_p = figures.diopters(spec.depths_m)
    zd_p = figures.diopters(zd)
    trows = [[dl(z)] + [f"{np.mean(td['mtf'][k][i]):.3f}" for k in names] for i, z in enumerate(zd)
             if np.min(np.abs(spec_p - zd_p[i])) <= 1e-6 * (1 + abs(zd_p[i]))]
    parts.append(_table(["depth"] + [f"{e(k)} (mean over λ)" for k in names], trows))

    parts.append("<h2>Strehl ratio, encircled energy, FWHM</h2>")
    parts.append(_img(figs, "psf-metrics.png", "Strehl ratio (peak over the peak of a perfect lens focused at that depth, "
                      "same aperture and wavelength), 80 % encircled-energy radius around the centroid and FWHM, per "
                      "depth and wavelength; dashed: the Airy pattern's values."))
    prow = [[dl(math.inf if r["depth_m"] is None else r["depth_m"]), f"{r['wavelength_m'] * 1e9:.0f}",
             _fmt(r["strehl"]), _fmt(None if r["ee80_radius_m"] is None else r["ee80_radius_m"] * 1e6, ".2f"),
             _fmt(None if r["fwhm_m"] is None else r["fwhm_m"] * 1e6, ".2f"), _fmt(r["energy_in_field"], ".3f")]
            for r in rep["psf"]]
    parts.append(_table(["depth", "λ (nm)", "Strehl", "EE80 radius (µm)", "FWHM (µm)", "energy in field"], prow, left=2))
    dlr = [[f"{d['wavelength_m'] * 1e9:.0f}", f"{d['cutoff_cyc_per_mm']:.4g}", f"{d['airy_ee80_radius_m'] * 1e6:.2f}",
            f"{d['airy_fwhm_m'] * 1e6:.2f}"] for d in rep["diffraction_limit"]]
    parts.append(_table(["λ (nm)", "cutoff D/(λz) (cycles/mm)", "Airy EE80 (µm)", "Airy FWHM (µm)"], dlr))

    parts.append("<h2>Image quality</h2>")
    named = iq.by_name()
    if named:
        parts.append(f"<p class=muted>source: {e(rep['image_quality_source'])}</p>")
        parts.append(_img(figs, "image-quality.png", "Reconstruction PSNR (dB) and SSIM per depth, design against "
                          "the baselines."))
        rowsq = []
        for k, v in named.items():
            cells = [e(k), _fmt(v.get("mean_psnr_db"), ".2f")]
            for r in _per_depth_table(v):
                cells.append(f"{_fmt(r.get('psnr_db'), '.2f')} / {_fmt(r.get('ssim'), '.3f')}")
            rowsq.append(cells)
        first = _per_depth_table(next(iter(named.values())))
        head = ["design", "mean PSNR (dB)"] + [f"{dl(math.inf if r.get('depth_m') is None else r['depth_m'])}: PSNR / SSIM"
                                               for r in first]
        parts.append(_table(head, rowsq))
        parts.append(_img(figs, "examples.png", "One validation image: sensor image and reconstruction per design and "
                          "depth (in the title: PSNR of this reconstruction against the ground truth, whole image)."))
    else:
        parts.append("<p class=note>Image quality not available for this run (no summary.json and no "
                     "lensdesign.evaluate).</p>")

    parts.append("<h2>Fabrication</h2>")
    fab = rep["fabrication"]
    ab = fab["as_built"]
    parts.append(f"<p>Error model: {e(fab['errors']['description'])}. As-built: {ab['samples']} Monte Carlo samples, "
                 f"seed {ab['seed']}.</p>")
    frows = [
        ["first-order efficiency, N-level staircase theory sinc²(1/N)", "1", f"{fab['efficiency']['staircase_sinc2']:.4f}", ""],
        ["core energy relative to the continuous design (measured)", "1", f"{fab['efficiency']['measured']:.4f}",
         _fmt(ab.get("efficiency_mean"), ".4f") + " mean"],
        ["Strehl ratio (mean over depths, λ)", _fmt(fab["continuous_strehl_mean"], ".4g"),
         _fmt(fab["quantized_strehl_mean"], ".4g"),
         f"{_fmt(ab.get('strehl_mean'), '.4g')} mean, {_fmt(ab.get('strehl_p5'), '.4g')} 5th percentile"],
        ["mean PSNR (dB)", _fmt(fab["continuous_psnr_db"], ".2f"), _fmt(fab["quantized_psnr_db"], ".2f"),
         f"{_fmt(ab.get('psnr_db_mean'), '.2f')} mean, {_fmt(ab.get('psnr_db_p5'), '.2f')} 5th percentile"],
    ]
    parts.append(_table(["", "continuous", "quantized", "as built"], frows))
    parts.append("<p class=muted>Measured efficiency: energy within 1.22 λN of the continuous design's peak, quantized "
                 "(or as built) over continuous, averaged over depths and wavelengths. PSNR here: computed by the report "
                 "with lensdesign.evaluate on the same validation images and one Wiener γ (the design's, and its U-Net "
                 "if it has one) for the continuous, quantized and as-built elements, so the three are comparable; it "
                 "can differ slightly from the image-quality section when that comes from summary.json.</p>")
    parts.append(_img(figs, "fabrication.png", "Spread of the as-built Strehl ratio and PSNR over the Monte Carlo samples."))
    tim = ", ".join(f"{k} {v:.1f} s" for k, v in rep["timings_s"].items())
    parts.append(f"<p class=muted>timings: {e(tim)}. Numbers: report.json beside this page.</p>")
    parts.append("</main></body></html>\n")
    return "\n".join(p for p in parts if p)

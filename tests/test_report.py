"""`lensdesign report` end to end through the CLI: a baseline run (no summary.json) and an optimized-style run
(with summary.json), checked against the diffraction-limited formulas and for a self-contained page."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

SINGLE = {
    "name": "single",
    "task": "edof",
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um"},
    "wavelengths": ["550 nm"],
    "scene": {"depths": ["0.5 m", "1 m", "inf"], "focus_depth": "1 m"},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32], "read_noise": 0.005},
    "training": {"validation_images": 1},
    "fabrication": {"process": "multilevel", "levels": 8, "height_tolerance": "20 nm", "misalignment": "1 um"},
}

_RUNS: dict[str, Path] = {}


def strict_json(path: Path) -> dict:
    """Load JSON refusing NaN / Infinity (strict JSON)."""

    def bad(token: str) -> None:
        raise ValueError(f"non-strict JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def formula_mtf(nu: np.ndarray) -> np.ndarray:
    nu = np.clip(nu, 0, 1)
    return 2 / np.pi * (np.arccos(nu) - nu * np.sqrt(1 - nu * nu))


@pytest.fixture
def single_report(cli, tmp_path_factory) -> Path:
    """RUN of the Fresnel baseline of a single-wavelength spec focused at 1 m, with its report (built once)."""
    if "single" not in _RUNS:
        d = tmp_path_factory.mktemp("single")
        spec = d / "spec.yaml"
        spec.write_text(yaml.safe_dump(SINGLE, sort_keys=False))
        run = d / "run"
        r = cli("baseline", spec, "--kind", "fresnel", "--out", run)
        assert r.returncode == 0, r.stderr
        r = cli("report", run, "--samples", "2", "--seed", "3", "--device", "cpu")
        assert r.returncode == 0, r.stderr
        assert "index.html" in r.stderr + r.stdout
        _RUNS["single"] = run
    return _RUNS["single"]


def test_fresnel_in_focus_mtf_and_strehl_are_diffraction_limited(single_report):
    rep = strict_json(single_report / "report" / "report.json")
    fc_cyc_per_mm = 0.5e-3 / (550e-9 * 10e-3) * 1e-3  # D / (λ z), written out
    focus = [m for m in rep["mtf"] if m["depth_m"] == pytest.approx(1.0)]
    assert len(focus) == 1
    f = np.array(focus[0]["frequency_cyc_per_mm"])
    mtf = np.array(focus[0]["mtf"])
    sel = f <= 0.8 * fc_cyc_per_mm
    assert sel.sum() >= 40 and f[sel].max() > 0.75 * fc_cyc_per_mm
    err = np.abs(mtf[sel] - formula_mtf(f[sel] / fc_cyc_per_mm))
    assert err.max() < 0.02, f"max |MTF − diffraction limit| = {err.max():.4f}"
    psf = {p["depth_m"]: p for p in rep["psf"]}
    assert len(psf) == 3 and all(p["wavelength_m"] == pytest.approx(550e-9) for p in psf.values())
    p = psf[1.0]
    assert abs(p["strehl"] - 1.0) < 0.02
    n_f = 10e-3 / 0.5e-3
    assert p["fwhm_m"] == pytest.approx(1.029 * 550e-9 * n_f, rel=0.03)
    # 0.5 m and infinity are 1 diopter out of focus: W020 = (D/2)²·(1 D)/2, Strehl sinc²(W020/λ)
    w020 = (0.25e-3) ** 2 * 1.0 / 2 / 550e-9
    for z in (0.5, None):
        assert psf[z]["strehl"] == pytest.approx(float(np.sinc(w020) ** 2), abs=0.01)
    # a baseline run: no summary.json, so image quality was computed with lensdesign.evaluate
    assert rep["image_quality_source"].startswith("computed")
    iq = rep["image_quality"]
    assert set(iq["baselines"]) == {"fresnel", "cubic"}
    assert iq["design"]["mean_psnr_db"] == pytest.approx(iq["baselines"]["fresnel"]["mean_psnr_db"])  # same lens
    depths = [r["depth_m"] for r in iq["design"]["per_depth"]]
    assert None in depths and 0.5 in depths


def test_report_files_page_and_json_schema(single_report):
    out = single_report / "report"
    rep = strict_json(out / "report.json")
    pngs = sorted(p.name for p in out.glob("*.png"))
    for name in ("height.png", "psf.png", "mtf.png", "through-depth-mtf.png", "psf-metrics.png", "image-quality.png",
                 "examples.png", "fabrication.png"):
        assert name in pngs
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not reference external files"
    assert not list(out.glob(".*.tmp"))
    for p in rep["psf"]:
        assert set(p) >= {"depth_m", "wavelength_m", "strehl", "ee80_radius_m", "fwhm_m"}
    for m in rep["mtf"]:
        assert len(m["frequency_cyc_per_mm"]) == len(m["mtf"]) > 10
        assert m["mtf"][0] == pytest.approx(1.0, abs=1e-4)
    assert None in [m["depth_m"] for m in rep["mtf"]]  # infinity is null
    fab = rep["fabrication"]
    assert fab["levels"] == 8
    assert fab["efficiency"]["staircase_sinc2"] == pytest.approx((math.sin(math.pi / 8) / (math.pi / 8)) ** 2)
    # 8 levels: the measured core efficiency of the in-focus wavelength is near sinc²(1/8) = 0.95
    assert 0.85 < fab["efficiency"]["measured"] < 1.0
    ab = fab["as_built"]
    assert ab["samples"] == 2 and ab["seed"] == 3
    for k in ("psnr_db_mean", "psnr_db_p5", "strehl_mean"):
        assert isinstance(ab[k], float)
    assert isinstance(fab["continuous_psnr_db"], float) and isinstance(fab["quantized_psnr_db"], float)
    td = rep["through_depth_mtf"]
    assert td["frequency_cyc_per_mm"] == pytest.approx(1 / (4 * 8e-3))  # half the Nyquist of 8 µm pixels
    assert set(td["mtf"]) == {"design", "fresnel", "cubic"}
    assert len(td["mtf"]["design"]) == len(td["depths_m"]) >= 5


def _write_optimized_run(path: Path, strength: float, overrides: dict | None = None,
                         extra_baselines: tuple[str, ...] = (), summary_extra: dict | None = None) -> dict:
    """A run directory as `optimize` leaves it (design + summary.json), with a cubic-like design; `overrides`
    replace top-level spec entries, `extra_baselines` add summary.json baselines under those names,
    `summary_extra` adds top-level summary.json entries."""
    from lensdesign.baselines import cubic_height
    from lensdesign.optics.psf import plan_grid
    from lensdesign.rundir import RunDir, atomic_write_json, design_meta
    from lensdesign.spec import parse_spec

    data = {**SINGLE, "name": "opt", "wavelengths": ["460 nm", "550 nm", "640 nm"],
            "scene": {"depths": {"min": "0.2 m", "max": "inf", "count": 3}}, **(overrides or {})}
    spec = parse_spec(data)
    g = plan_grid(spec)
    import torch

    h = cubic_height(spec, g.n, 2.0).float()
    RunDir(path).write_design(spec, h, design_meta(spec, "optimized", g.n),
                              {"recon.log_gamma": torch.tensor([-4.0])})

    def entry(base: float) -> dict:
        per = [{"depth_m": z, "psnr_db": base + i, "ssim": 0.5 + 0.01 * i} for i, z in enumerate([0.2, 0.4, None])]
        return {"mean_psnr_db": base + 1, "mean_ssim": 0.51, "per_depth": per, "gamma": 0.003}

    summary = {"design": entry(25.0), "design_quantized": entry(24.5),
               "baselines": {"fresnel": entry(20.0), "cubic": {**entry(22.0), "strength_waves": strength},
                             **{name: entry(21.0) for name in extra_baselines}}, **(summary_extra or {})}
    atomic_write_json(path / "summary.json", summary)
    return summary


def test_report_on_an_optimized_run_uses_summary_json(cli, tmp_path):
    run = tmp_path / "run"
    summary = _write_optimized_run(run, strength=3.5)
    out = tmp_path / "elsewhere"
    r = cli("report", run, "--out", out, "--samples", "2", "--mtf-frequency", "20", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert not (run / "report").exists()
    rep = strict_json(out / "report.json")
    assert rep["image_quality_source"] == "summary.json"
    assert rep["image_quality"] == summary
    td = rep["through_depth_mtf"]
    assert td["cubic_strength_waves"] == 3.5 and td["cubic_strength_source"] == "summary.json"
    assert td["frequency_cyc_per_mm"] == pytest.approx(20.0)
    # three wavelengths × three depths, the cubic-like design is not rotationally symmetric
    assert len(rep["psf"]) == 9 and len(rep["mtf"]) == 9
    assert rep["mtf_rotationally_symmetric"] is False
    assert all("mtf_sagittal" in m and "mtf_tangential" in m for m in rep["mtf"])
    assert (out / "psf-colour.png").is_file() and (out / "examples.png").is_file()
    page = (out / "index.html").read_text()
    assert "summary.json" in page and "sagittal" in page


def test_report_errors_are_one_line(cli, tmp_path, single_report):
    r = cli("report", tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "not a run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("report", single_report, "--mtf-frequency", "-3")
    assert r.returncode == 2 and "--mtf-frequency" in r.stderr


def test_report_without_monte_carlo_leaves_the_as_built_column_empty(single_report, tmp_path):
    """--samples 0: continuous and quantized numbers only; the as-built entries are null and the spread figure absent."""
    from lensdesign.analysis import report as R

    rep = R.build_report(single_report, R.ReportSettings(out=tmp_path / "r", samples=0, device="cpu"))
    fab = rep["fabrication"]
    assert fab["as_built"] == {"samples": 0, "seed": 0, "strehl_mean": None, "psnr_db_mean": None, "psnr_db_p5": None}
    assert isinstance(fab["quantized_strehl_mean"], float) and isinstance(fab["quantized_psnr_db"], float)
    names = {p.name for p in (tmp_path / "r").glob("*.png")}
    assert "fabrication.png" not in names and {"mtf.png", "examples.png"} <= names
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(names)
    assert "– mean, – 5th percentile" in page
    strict_json(tmp_path / "r" / "report.json")


SUPERRES = {"task": "superres", "wavelengths": ["550 nm"],
            "sensor": {"pixel_pitch": "16 um", "superres_factor": 2, "resolution": [16, 16], "read_noise": 0.005}}
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def superres_report(tmp_path_factory) -> Path:
    """The report of a super-resolution run (16 µm pixels, ×2) whose summary.json names a baseline with HTML and
    says, as a U-Net run's does, that the baselines were reconstructed with the Wiener filter."""
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("superres")
    _write_optimized_run(d / "run", strength=2.0, overrides=SUPERRES, extra_baselines=(HOSTILE,),
                         summary_extra={"baseline_reconstruction": "wiener (tuned γ); no U-Net trained for baselines"})
    r = run_cli("report", d / "run", "--samples", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return d / "run" / "report"


def test_superres_report_takes_nyquist_from_the_output_grid(superres_report):
    rep = strict_json(superres_report / "report.json")
    nyquist = 1 / (2 * 16e-3 / 2)  # cycles/mm of the 8 µm output grid, not the 16 µm sensor pixels
    assert rep["sensor_nyquist_cyc_per_mm"] == pytest.approx(nyquist)
    assert rep["through_depth_mtf"]["frequency_cyc_per_mm"] == pytest.approx(nyquist / 2)
    assert rep["settings"]["mtf_frequency_cyc_per_mm"] == pytest.approx(nyquist / 2)
    page = (superres_report / "index.html").read_text()
    assert f"output grid 8 µm, Nyquist {nyquist:.4g} cycles/mm" in page


def test_report_page_escapes_text_from_the_run(superres_report):
    """A baseline name from summary.json lands in a table cell as text, never as markup."""
    rep = strict_json(superres_report / "report.json")
    assert HOSTILE in rep["image_quality"]["baselines"]
    page = (superres_report / "index.html").read_text()
    assert "<script" not in page
    assert '<td class="l">&lt;script&gt;alert(1)&lt;/script&gt; (Wiener)</td>' in page


def test_report_says_the_baselines_of_a_unet_run_use_the_wiener_filter(superres_report):
    page = (superres_report / "index.html").read_text()
    assert "baselines: wiener (tuned γ); no U-Net trained for baselines" in page
    rep = strict_json(superres_report / "report.json")
    assert rep["image_quality"]["baseline_reconstruction"].startswith("wiener")
    assert '<td class="l">fresnel (Wiener)</td>' in page and '<td class="l">design</td>' in page


def test_report_template_escapes_every_table_cell():
    """The page's table macro, rendered alone: cells and headings are escaped, markup comes from the template only."""
    from lensdesign.analysis.report_page import environment

    table = environment().get_template("macros.html.j2").module.table
    html = str(table([HOSTILE, "b"], [["x & y", HOSTILE]]))
    assert "<script" not in html and html.count("&lt;script&gt;") == 2 and "x &amp; y" in html
    assert html.count("<td") == 2 and html.count("<th") == 2

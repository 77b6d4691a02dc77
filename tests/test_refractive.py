"""Refractive and hybrid elements: dispersion of an unwrapped sag, the sag quantizer, the surfaces, the sag table,
and the refusals (a sag the pitch cannot sample, a multilevel mask set for a sag)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lensdesign.fabrication.quantize import level_index, quantize
from lensdesign.optics.element import make_element_surface, max_sag_sampled, thin_lens_sag
from lensdesign.optics.psf import OpticalSystem, aperture_mask
from lensdesign.optimize import init_surface
from lensdesign.rundir import RunDir, design_meta
from lensdesign.spec import parse_spec
from tests.conftest import TINY, run_cli, write_spec

REFRACTIVE_FAB = {"process": "grayscale", "levels": 1024, "min_feature": "4 um", "height_tolerance": "20 nm",
                  "sag_error": 0.005}


def refractive_dict(**optics: object) -> dict:
    d = copy.deepcopy(TINY)
    d["optics"].update({"element": "refractive", **optics})
    d["fabrication"] = dict(REFRACTIVE_FAB)
    return d


def test_refractive_lens_focuses_each_wavelength_where_the_lensmaker_formula_says() -> None:
    """A thin-lens sag of power P at 550 nm has power P·(n(λ) − 1)/(n(550) − 1) at λ: the object vergence in focus
    on the sensor is that minus 1/s. Found from the on-axis PSF peak over depths (parabolic interpolation)."""
    spec = parse_spec({"optics": {"aperture": "1 mm", "sensor_distance": "10 mm", "pitch": "4 um", "padding": 1.5,
                                  "element": "refractive", "max_height": "30 um"},
                       "wavelengths": ["460 nm", "550 nm", "640 nm"], "scene": {"depths": [0.5]},
                       "sensor": {"pixel_pitch": "4 um", "resolution": [16, 16], "psf_size": 9},
                       "fabrication": {"process": "grayscale", "levels": 1024}})
    s = spec.optics.sensor_distance
    power = 1 / 0.5 + 1 / s  # in focus at 0.5 m for 550 nm
    step = 0.2  # diopters between simulated depths
    vergence = np.arange(0.8, 3.61, step)
    system = OpticalSystem(spec, depths=[1 / v for v in vergence])
    h = thin_lens_sag(system.grid.n, spec.optics.pitch, spec.optics.aperture, 1 / power, spec.design_index)
    psf = system.psf(h.float())
    c = psf.shape[-1] // 2
    found, expected = [], []
    for j, n_w in enumerate(spec.refractive_indices):
        col = psf[:, j, c, c].double().numpy()
        i = int(col.argmax())
        assert 0 < i < len(col) - 1, "best focus at the end of the simulated depths"
        y0, y1, y2 = col[i - 1 : i + 2]
        found.append(vergence[i] + step * 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))
        expected.append(power * (n_w - 1) / (spec.design_index - 1) - 1 / s)
    found_a, expected_a = np.array(found), np.array(expected)
    # depth of focus (quarter wave of defocus): λ / (2 R²) = 1.1 D; the chromatic focal shifts are +1.09 / −0.69 D
    assert np.all(np.abs(found_a - expected_a) < 0.1), (found, expected)
    shifts, shifts_expected = found_a - found_a[1], expected_a - expected_a[1]
    assert np.all(np.abs(shifts - shifts_expected) < 0.02), (shifts, shifts_expected)
    assert shifts_expected[0] > 1.0 and shifts_expected[2] < -0.6  # dispersion, not a constant index


def test_sag_quantizer_does_not_wrap_and_keeps_the_top_level() -> None:
    mh, levels = 40e-6, 1024
    step = mh / (levels - 1)
    h = np.array([0.0, 0.4 * step, 0.6 * step, mh - 0.4 * step, mh, mh * 1.01, -step])
    q = np.asarray(quantize(h, mh, levels, wrap=False))
    assert np.allclose(q, [0.0, 0.0, step, mh, mh, mh, 0.0], rtol=0, atol=1e-15)
    assert level_index(h, mh, levels, wrap=False).max() == levels - 1
    # the diffractive quantizer wraps the top level to 0
    assert float(quantize(np.array([mh]), mh, 16)[0]) == 0.0


def test_refractive_surfaces_start_from_the_thin_lens_and_step_in_waves() -> None:
    spec = parse_spec(refractive_dict(parameterization="zernike"))
    n = 126
    s = make_element_surface(spec, n)
    init_surface(s, spec)
    inside = aperture_mask(n, spec.optics.pitch, spec.optics.aperture).bool()
    f = 1 / (1 / spec.focus_depth_m + 1 / spec.optics.sensor_distance)
    lens = thin_lens_sag(n, spec.optics.pitch, spec.optics.aperture, f, spec.design_index)
    h = s.height().detach().double()
    # unwrapped: the full sag, many waves deep, equal to the thin-lens sag up to the rim sample's offset
    assert float(h.max()) > 3 * spec.wave_height_m
    d = (h - lens)[inside]
    assert float(d.max() - d.min()) < 1e-3 * float(lens.max())
    assert s.unit == spec.wave_height_m and s.step_scale == 1.0
    pix = make_element_surface(parse_spec(refractive_dict(parameterization="pixel")), n)
    assert pix.step_scale == spec.wave_height_m and not pix.wrapped
    diff = make_element_surface(parse_spec(TINY), n)
    assert diff.wrapped and diff.step_scale == parse_spec(TINY).max_height_m


def test_hybrid_is_the_base_lens_plus_a_relief_of_one_wave() -> None:
    spec = parse_spec(refractive_dict(element="hybrid", parameterization="pixel"))
    n = 126
    s = make_element_surface(spec, n)
    init_surface(s, spec)
    base = s.base.double()
    assert torch.allclose(s.height().double(), base)  # flat relief at the start
    with torch.no_grad():
        s.inner.param.fill_(1.5 * spec.wave_height_m)  # wraps to half a wave
    rel = s.height().double() - base
    assert torch.allclose(rel, torch.full_like(rel, 0.5 * spec.wave_height_m), atol=1e-9)
    assert spec.max_height_m == pytest.approx(float(base.max()) + spec.wave_height_m, rel=1e-3)


def _refractive_run(tmp_path: Path) -> tuple[Path, np.ndarray]:
    spec = parse_spec(refractive_dict(parameterization="zernike"))
    n = 126
    lens = thin_lens_sag(n, spec.optics.pitch, spec.optics.aperture, 0.012, spec.design_index).float().numpy()
    lens += np.linspace(0, 1e-7, n, dtype=np.float32)[None, :] * (lens > 0)  # not rotationally symmetric
    run = tmp_path / "run"
    RunDir(run).write_design(spec, lens, design_meta(spec, "optimized", n))
    return run, lens


def test_sag_table_reads_back_exactly(tmp_path: Path) -> None:
    run, lens = _refractive_run(tmp_path)
    r = run_cli("export", run, "--sag", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    table = np.loadtxt(tmp_path / "out" / "tiny.sag.csv", delimiter=",", comments="#", skiprows=2)
    n, pitch = lens.shape[0], 4e-6
    j = np.rint(table[:, 0] / pitch).astype(int) + n // 2
    i = np.rint(table[:, 1] / pitch).astype(int) + n // 2
    inside = aperture_mask(n, pitch, 0.5e-3).numpy().astype(bool)
    assert len(table) == int(inside.sum()) and inside[i, j].all()
    assert np.array_equal(table[:, 2].astype(np.float32), lens[i, j])  # bit for bit
    assert np.allclose(table[:, 0], (j - n // 2) * pitch, rtol=0, atol=1e-15)


def test_bad_refractive_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = parse_spec(refractive_dict())
    limit = max_sag_sampled(spec)
    deep = write_spec(tmp_path, refractive_dict(max_height=f"{limit * 1.2e6:.3f} um"), "deep.yaml")
    r = run_cli("check", deep)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "optics.max_height" in r.stderr and f"{limit * 1e6:.4g} um" in r.stderr and "Traceback" not in r.stderr
    d = refractive_dict()
    d["fabrication"]["process"] = "multilevel"
    r = run_cli("check", write_spec(tmp_path, d, "multi.yaml"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "fabrication.process" in r.stderr and "grayscale" in r.stderr
    run, _ = _refractive_run(tmp_path)
    r = run_cli("export", run, "--process", "multilevel", "--out", tmp_path / "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--process" in r.stderr and "multilevel" in r.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("element", ["refractive", "hybrid"])
@pytest.mark.parametrize("kind", ["pixel", "radial", "zernike", "fourier"])
def test_sags_stay_within_zero_and_max_height_and_train(element: str, kind: str) -> None:
    spec = parse_spec(refractive_dict(element=element, parameterization=kind, zernike_terms=15))
    s = make_element_surface(spec, 64)
    init_surface(s, spec)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * s.step_scale * 3)
    h = s.height()
    lo, hi = float(h.detach().min()), float(h.detach().max())
    assert lo >= 0.0 and hi <= spec.max_height_m
    assert hi - lo > 2 * spec.wave_height_m  # unwrapped: deeper than a wrapped relief
    (h * torch.linspace(0, 1, 64)).sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in s.parameters())

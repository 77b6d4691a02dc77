"""`simulate` (a user's picture through a run's design) and the evaluation API the report uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lensdesign.baselines import cubic_height, fresnel_height
from lensdesign.evaluation import Evaluator, evaluate_height, simulate_examples, validation_set
from lensdesign.spec import parse_spec
from tests.conftest import TINY_SYSTEM


def _picture(path: Path, h: int = 60, w: int = 80) -> Path:
    import skimage.data

    a = skimage.data.astronaut()[100:100 + h * 2:2, 150:150 + w * 2:2]
    Image.fromarray(a).save(path)
    return path


TINY_RUN = {
    "name": "tiny",
    **TINY_SYSTEM,
    "reconstruction": {"gamma_init": 0.01},
    "training": {"steps": 1, "device": "cpu"},
    "fabrication": {"levels": 8, "min_feature": "4 um"},
}


@pytest.fixture(scope="module")
def optimized_run(tmp_path_factory) -> Path:
    """A run directory written by `optimize` (1 step, no evaluation): it carries a learned γ."""
    import subprocess
    import sys

    import yaml

    tmp = tmp_path_factory.mktemp("sim")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(TINY_RUN))
    r = subprocess.run([sys.executable, "-m", "lensdesign.cli", "optimize", str(tmp / "spec.yaml"), "--out", str(tmp / "run"),
                        "--no-eval"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def test_simulate_baseline_run_tunes_gamma(baseline_run, tmp_path, cli):
    r = cli("simulate", baseline_run, "--image", _picture(tmp_path / "pic.png"), "--depth-m", "0.1", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["gamma_from"] == "tuned on the validation set" and m["gamma"] > 0


def test_simulate_one_depth(optimized_run, tmp_path, cli):
    img = _picture(tmp_path / "pic.png")
    out = tmp_path / "sim"
    r = cli("simulate", optimized_run, "--image", img, "--depth-m", "0.1", "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["depth_m"] == 0.1 and m["depth_map"] is False
    assert "pic.png at 0.1 m:" in " ".join(r.stdout.split())
    assert m["gamma_from"] == "learned" and len(m["gamma"]) == 3 and m["quantized"] is False
    for name in ("sensor.png", "recon.png"):
        a = np.asarray(Image.open(out / name))
        assert a.shape == (60, 80, 3) and a.dtype == np.uint8
    assert 5 < m["sensor_psnr_db"] < 60 and 5 < m["psnr_db"] < 60 and 0 < m["ssim"] <= 1
    # at infinity (JSON null) and again: same seed, same numbers
    r = cli("simulate", optimized_run, "--image", img, "--depth-m", "inf", "--out", tmp_path / "a", "--quantized")
    assert r.returncode == 0, r.stderr
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert ma["depth_m"] is None and ma["quantized"] is True and ma["psnr_db"] != m["psnr_db"]
    assert "pic.png at inf:" in " ".join(r.stdout.split())


def test_simulate_depth_map_and_errors(optimized_run, tmp_path, cli):
    img = _picture(tmp_path / "pic.png")
    dm = np.full((60, 80), np.inf)
    dm[:, :40] = 0.1  # left half near, right half at infinity
    np.save(tmp_path / "depth.npy", dm)
    out = tmp_path / "sim"
    r = cli("simulate", optimized_run, "--image", img, "--depth-map", tmp_path / "depth.npy", "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["depth_map"] is True and m["layers_m"] == [0.1, 0.2, None]
    assert m["layer_fraction"] == [0.5, 0.0, 0.5]
    assert "pic.png at layers 0.1 m, 0.2 m, inf:" in " ".join(r.stdout.split())
    assert np.asarray(Image.open(out / "recon.png")).shape == (60, 80, 3)

    np.save(tmp_path / "small.npy", dm[:30])
    for args, expect in [
        (("--image", tmp_path / "missing.png", "--depth-m", "1"), "no such image file"),
        (("--image", img, "--depth-map", tmp_path / "small.npy"), "--depth-map: shape (30, 80) does not match"),
        (("--image", img, "--depth-map", tmp_path / "depth.npy", "--depth-m", "1"), "give one of them"),
        (("--image", img, "--depth-m", "far"), "--depth-m"),
    ]:
        r = cli("simulate", optimized_run, *args, "--out", tmp_path / "x")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("simulate", tmp_path / "nope", "--image", img, "--out", tmp_path / "x")
    assert r.returncode == 2 and "no such run directory" in r.stderr


# ---- the evaluation API ---------------------------------------------------------------------------------------

@pytest.fixture
def spec(tiny_spec_dict):
    return parse_spec(tiny_spec_dict)


def test_validation_set_has_the_psf_margin(spec):
    v = validation_set(spec)
    p = Evaluator(spec).pipe.psf_size
    assert v.shape == (spec.training.validation_images, 3, 32 + p - 1, 32 + p - 1)
    assert float(v.min()) >= 0 and float(v.max()) <= 1
    assert torch.equal(v, validation_set(spec)) and not torch.equal(validation_set(spec, seed=1), v)
    assert validation_set(spec, count=6).shape[0] == 6


def test_evaluate_height_tunes_gamma_and_reports_depths(spec):
    n = Evaluator(spec).pipe.optics.grid.n
    h = fresnel_height(spec, n)
    r = evaluate_height(spec, h)
    assert [d["depth_m"] for d in r["per_depth"]] == [0.1, 0.2, None]
    assert r["gamma_tuned"] and r["gamma"] > 0
    assert r["mean_psnr_db"] == pytest.approx(np.mean([d["psnr_db"] for d in r["per_depth"]]), abs=1e-3)
    # the tuned γ beats a poor fixed one, and a fixed γ is reported as given
    worse = evaluate_height(spec, h, gamma=1.0)
    assert not worse["gamma_tuned"] and worse["gamma"] == 1.0
    assert r["mean_psnr_db"] > worse["mean_psnr_db"] + 1
    # common random numbers: evaluating again gives the very same figures
    assert evaluate_height(spec, h, gamma=r["gamma"])["mean_psnr_db"] == r["mean_psnr_db"]
    # a different element changes them; per-channel γ is accepted
    c = evaluate_height(spec, cubic_height(spec, n, 3.0), gamma=[r["gamma"]] * 3)
    assert c["mean_psnr_db"] != r["mean_psnr_db"] and len(c["gamma"]) == 3
    assert all(math.isfinite(d["ssim"]) for d in c["per_depth"])


def test_simulate_examples_shapes(spec):
    n = Evaluator(spec).pipe.optics.grid.n
    img = validation_set(spec)[0]
    sensor, recon = simulate_examples(spec, fresnel_height(spec, n), 0.01, 0.2, img)
    assert sensor.shape == recon.shape == (img.shape[1], img.shape[2], 3)
    assert sensor.min() >= 0 and recon.max() <= 1 and sensor.dtype == np.float32
    s2, _ = simulate_examples(spec, fresnel_height(spec, n), 0.01, 0.2, img.permute(1, 2, 0).numpy())
    assert np.array_equal(s2, sensor)


def test_evaluator_matches_the_functions_and_restores_the_thread_count(spec):
    """An Evaluator held for many calls gives the numbers of one-off calls; torch's thread count is untouched."""
    ev = Evaluator(spec)
    n = ev.pipe.optics.grid.n
    h = fresnel_height(spec, n)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = ev.evaluate_height(h, gamma=0.01)
        assert torch.get_num_threads() == 2
        b = ev.evaluate_height(h, gamma=0.01)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert a == b == evaluate_height(spec, h, gamma=0.01)
    assert torch.equal(ev.validation_set(count=2), validation_set(spec, count=2))

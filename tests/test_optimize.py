"""`optimize`: gradients, schedules, both tasks end to end, refusals, and the run directory it writes."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lensdesign.errors import LensdesignError
from lensdesign.optimize import QuantSchedule, Trainer, lr_factor, step_generator
from lensdesign.spec import parse_spec
from lensdesign.system import EndToEnd, Pipeline, fabricate, make_task
from tests.conftest import HARD


def hard(**changes) -> dict:
    d = copy.deepcopy(HARD)
    for key, value in changes.items():
        sec, name = key.split("__")
        d[sec][name] = value
    return d


def write(tmp: Path, d: dict, name: str = "spec.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


# ---- gradients ------------------------------------------------------------------------------------------------

def _trainer_away_from_wraps() -> Trainer:
    """A trainer whose heights sit well inside (0, max_height), so small perturbations never cross a wrap."""
    torch.manual_seed(0)
    tr = Trainer(parse_spec(hard(training__batch_size=2)), "cpu")
    mh = tr.spec.max_height_m
    with torch.no_grad():
        tr.model.surface.param.copy_(mh * (0.2 + 0.6 * torch.rand_like(tr.model.surface.param)))
    return tr


def test_loss_gradient_reaches_height_and_gamma_finite_differences():
    tr = _trainer_away_from_wraps()
    param, log_gamma = tr.model.surface.param, tr.model.recon.log_gamma

    def loss() -> float:
        with torch.no_grad():
            return float(tr.forward(3, progress=0.0)[0].double())

    tr.model.zero_grad()
    tr.forward(3, progress=0.0)[0].backward()
    g_h, g_g = param.grad.clone(), log_gamma.grad.clone()
    assert float(g_h.abs().max()) > 0 and float(g_g.abs().max()) > 0

    # directional derivative along a random height perturbation (metres)
    v = torch.randn(param.shape, generator=torch.Generator().manual_seed(1))
    eps = 1e-9
    with torch.no_grad():
        param.add_(eps * v)
        lp = loss()
        param.sub_(2 * eps * v)
        lm = loss()
        param.add_(eps * v)
    fd, ad = (lp - lm) / (2 * eps), float((g_h * v).sum())
    assert fd == pytest.approx(ad, rel=0.01), (fd, ad)

    # each channel's log γ
    for c in range(log_gamma.numel()):
        e = 1e-2
        with torch.no_grad():
            log_gamma[c] += e
            lp = loss()
            log_gamma[c] -= 2 * e
            lm = loss()
            log_gamma[c] += e
        assert (lp - lm) / (2 * e) == pytest.approx(float(g_g[c]), rel=0.03, abs=1e-7)


def _autograd_psfs(pipe: Pipeline, height: torch.Tensor, extra: list[float] | None = None):
    """The PSF stack written with plain autograd (no hand-written adjoint), for a cross-check."""
    s = pipe.optics
    src = s.src if not extra else torch.cat([s.src, s.source_waves(extra)])
    i = s.psf_reference(height, src)
    r = s.src.shape[0]
    return i[:r], i[r:]


def test_loss_gradient_matches_plain_autograd(monkeypatch):
    tr = _trainer_away_from_wraps()
    tr.model.zero_grad()
    tr.forward(5, progress=0.0)[0].backward()
    ours = torch.cat([tr.model.surface.param.grad.flatten(), tr.model.recon.log_gamma.grad])
    tr.model.zero_grad()
    monkeypatch.setattr(tr.pipe, "psfs", lambda h, extra=None: _autograd_psfs(tr.pipe, h, extra))
    tr.forward(5, progress=0.0)[0].backward()
    ref = torch.cat([tr.model.surface.param.grad.flatten(), tr.model.recon.log_gamma.grad])
    assert float(torch.nn.functional.cosine_similarity(ours, ref, dim=0)) > 0.9999
    assert float((ours - ref).norm() / ref.norm()) < 1e-3


# ---- pieces ---------------------------------------------------------------------------------------------------

def test_step_randomness_is_a_function_of_seed_and_step():
    a = torch.rand(4, generator=step_generator(0, 7))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 7)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 8)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(1, 7)))


def test_schedules():
    steps = 1000
    f = [lr_factor(k, steps) for k in range(steps)]
    assert f[0] < 0.2 and max(f) == pytest.approx(1.0, abs=0.01) and f[-1] == pytest.approx(0.03, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(f[40:]))  # decays after the warm-up
    q = QuantSchedule()
    assert q.mode(0.1)[0] == "none" and q.mode(0.95)[0] == "ste"
    m1, t1 = q.mode(0.45)
    m2, t2 = q.mode(0.75)
    assert m1 == m2 == "soft" and t1 > t2 > 0


def test_fabrication_model_quantizes_and_perturbs():
    spec = parse_spec(hard())
    mh = spec.max_height_m
    h = torch.rand(16, 16) * mh
    step = mh / spec.fabrication.levels
    q = fabricate(h, spec, 0.99, None)  # straight-through quantizer, no noise
    assert torch.allclose(q / step, torch.round(q / step), atol=1e-4)
    n = fabricate(h, spec, 0.0, torch.Generator().manual_seed(0))  # continuous + ±20 nm noise
    d = n - h
    assert float(d.abs().max()) <= 20e-9 * (1 + 1e-5) and float(d.abs().max()) > 15e-9
    assert fabricate(h, spec, 0.0, None) is h


def test_tasks_sample_depths():
    spec = parse_spec(hard())
    t = make_task(spec)
    z = t.train_depths(torch.Generator().manual_seed(0), 2000)
    p = np.array([0.0 if math.isinf(v) else 1 / v for v in z])
    assert p.min() >= 0 and p.max() <= 25 + 1e-9
    assert abs(p.mean() - 12.5) < 0.5 and len({round(v, 6) for v in p}) > 1000  # uniform in diopters, not 3 depths
    assert t.eval_depths() == spec.depths_m
    f = make_task(parse_spec({**hard(), "task": "focus"}))
    assert set(f.train_depths(torch.Generator(), 5)) == {f.spec.focus_depth_m} and f.eval_depths() == [f.spec.focus_depth_m]


def test_unsupported_combinations_are_refused():
    with pytest.raises(LensdesignError, match=r"sensor\.superres_factor: 2 is only used by task: superres"):
        Trainer(parse_spec({**hard(), "sensor": {**HARD["sensor"], "superres_factor": 2}}))


@pytest.mark.parametrize("kind", ["pixel", "radial", "zernike", "fourier"])
def test_every_parameterization_starts_from_the_fresnel_lens(kind):
    from lensdesign.baselines import fresnel_height
    from lensdesign.evaluation import evaluate_height
    from lensdesign.optimize import init_surface

    spec = parse_spec(hard(optics__parameterization=kind))
    m = EndToEnd(spec)
    init_surface(m.surface, spec)
    ours = evaluate_height(spec, m.height().detach(), gamma=0.01)["mean_psnr_db"]
    fresnel = evaluate_height(spec, fresnel_height(spec, m.surface.n), gamma=0.01)["mean_psnr_db"]
    flat = evaluate_height(spec, torch.zeros(m.surface.n, m.surface.n), gamma=0.01)["mean_psnr_db"]
    assert abs(ours - fresnel) < 1.0 and ours > flat + 2  # rings and truncated bases approximate it


def test_radial_run_writes_the_ring_profile(tmp_path):
    from lensdesign.optimize import finish
    from lensdesign.rundir import RunDir

    spec = parse_spec(hard(optics__parameterization="radial"))
    tr = Trainer(spec)
    tr.train_step(0)
    finish(spec, RunDir(tmp_path), tr, 1, None, evaluate=False)
    d = RunDir(tmp_path).load_design()
    m = tr.model.surface
    assert d.tensors["radial_profile_m"].shape == (m.rings,) and "recon.log_gamma" in d.tensors
    assert d.meta["ring_width_m"] == pytest.approx(m.ring_width) and d.meta["parameterization"] == "radial"
    # the ring profile and the height map agree: every sample holds its ring's height
    prof = d.tensors["radial_profile_m"]
    assert torch.allclose(torch.from_numpy(d.height_m), prof[m.ring_index], rtol=1e-6, atol=0)


# ---- end to end through the command line ----------------------------------------------------------------------

def test_optimize_edof_end_to_end(tmp_path, cli):
    spec = write(tmp_path, hard())
    out = tmp_path / "run"
    r = cli("optimize", spec, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "vs cubic plate" in r.stdout
    # the run directory export and report read
    t = load_file(str(out / "design.safetensors"))
    meta = json.loads((out / "design.json").read_text())
    n = meta["grid"]
    assert t["height_m"].shape == (n, n) and t["height_m"].dtype == torch.float32
    assert float(t["height_m"].min()) >= 0 and float(t["height_m"].max()) < meta["max_height_m"]
    assert t["recon.log_gamma"].shape == (3,)
    assert meta["kind"] == "optimized" and len(meta["gamma"]) == 3 and meta["steps_done"] == 30
    assert (out / "spec.yaml").is_file() and (out / "checkpoint.safetensors").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records] == list(range(30))
    assert all(math.isfinite(x["loss"]) for x in records) and "val_psnr_db" in records[-1]
    text = (out / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    s = json.loads(text)
    assert [d["depth_m"] for d in s["design"]["per_depth"]] == [0.04, 0.08, None]
    for entry in (s["design"], s["design_quantized"], s["baselines"]["fresnel"], s["baselines"]["cubic"],
                  s["baselines"]["cubic"]["quantized"]):
        assert len(entry["per_depth"]) == 3 and entry["gamma"] > 0
        assert all(0 < d["ssim"] <= 1 and 10 < d["psnr_db"] < 60 for d in entry["per_depth"])
        assert entry["mean_psnr_db"] == pytest.approx(np.mean([d["psnr_db"] for d in entry["per_depth"]]), abs=1e-3)
    assert s["baselines"]["cubic"]["strength_waves"] > 0
    # 30 steps from the Fresnel lens already buy a clear gain on held-out images
    assert s["design"]["mean_psnr_db"] > s["baselines"]["fresnel"]["mean_psnr_db"] + 1.0
    assert abs(s["design"]["mean_psnr_db"] - s["design_quantized"]["mean_psnr_db"]) < 0.5
    # the public evaluation API repeats the summary exactly in another process (what the report relies on)
    from lensdesign.evaluation import evaluate_height
    from lensdesign.spec import load_spec

    threads = torch.get_num_threads()
    again = evaluate_height(load_spec(out / "spec.yaml"), t["height_m"])
    assert torch.get_num_threads() == threads
    assert again["mean_psnr_db"] == s["design"]["mean_psnr_db"] and again["gamma"] == s["design"]["gamma"]


def test_optimize_focus_end_to_end(tmp_path, cli):
    d = hard()
    d["task"] = "focus"
    d["scene"] = {"depths": ["0.3 m"]}
    out = tmp_path / "run"
    r = cli("optimize", write(tmp_path, d), "--out", out, "--steps", "15", "--seed", "3")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [x["depth_m"] for x in s["design"]["per_depth"]] == [0.3]
    assert s["steps_done"] == 15
    meta = json.loads((out / "design.json").read_text())
    assert meta["task"] == "focus" and meta["seed"] == 3
    # starting from the Fresnel lens focused there, optimization must not lose image quality
    assert s["design"]["mean_psnr_db"] > s["baselines"]["fresnel"]["mean_psnr_db"] - 0.2


def test_optimize_refuses_existing_run_and_bad_options(tmp_path, cli):
    import skimage.data
    from PIL import Image

    (tmp_path / "images").mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()[:80, :80]).save(tmp_path / "images" / f"{name}.jpg")
    spec = write(tmp_path, hard(training__images="images"))  # relative to the spec file
    out = tmp_path / "run"
    r = cli("optimize", spec, "--out", out, "--steps", "1", "--no-eval")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((out / "spec.yaml").read_text())["training"]["images"] == str((tmp_path / "images").resolve())
    r = cli("optimize", spec, "--out", out, "--steps", "1", "--no-eval")
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("optimize", spec, "--out", out, "--steps", "2", "--no-eval", "--force")
    assert r.returncode == 0, r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / "summary.json").exists()
    r = cli("optimize", spec, "--out", out, "--resume", "--steps", "5")
    assert r.returncode == 2 and "--steps" in r.stderr
    r = cli("optimize", spec, "--out", tmp_path / "fresh", "--resume")
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    refused = write(tmp_path, {**hard(), "sensor": {**HARD["sensor"], "superres_factor": 2}}, "refused.yaml")
    r = cli("optimize", refused, "--out", out, "--force")
    assert r.returncode == 2 and "sensor.superres_factor" in r.stderr and "task: superres" in r.stderr
    assert (out / "design.json").exists()  # a refused spec leaves the existing run alone
    r = cli("optimize", write(tmp_path, hard(training__images="nowhere"), "bad.yaml"), "--out", tmp_path / "b")
    assert r.returncode == 2 and "training.images" in r.stderr

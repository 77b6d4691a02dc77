"""Hardening: finite spec numbers, everything a run needs checked before it starts, self-healing training, one
writer per run directory, and the loose ends of `check`."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from lensdesign import heal
from lensdesign.errors import LensdesignError, SpecError
from lensdesign.lock import LOCK, ensure_unlocked, run_lock
from lensdesign.spec import Reconstruction, parse_spec
from tests.conftest import TINY, write_spec
from tests.inproc import run_main

ROOT = Path(__file__).resolve().parents[1]

# TINY, trained briefly with one validation image: a few seconds per run
QUICK = {**copy.deepcopy(TINY), "training": {**TINY["training"], "steps": 12, "validation_images": 1}}


def _one_line_error(r, *names: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in r.stdout + r.stderr
    for n in names:
        assert n in err, err
    return err


def _flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the spec ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,key,value", [
    ("training", "learning_rate", math.inf),
    ("training", "checkpoint_minutes", math.nan),
    ("optics", "padding", -math.inf),
    ("sensor", "read_noise", [0.001, math.inf]),
    ("sensor", "full_well", math.inf),
    ("reconstruction", "gamma_init", math.nan),
    ("optics", "material", {"index": [1.5, math.nan, 1.5]}),
    ("scene", "depths", [1.0, math.nan]),
])
def test_non_finite_numbers_never_pass(section: str, key: str, value: object) -> None:
    d = copy.deepcopy(TINY)
    d.setdefault(section, {})[key] = value
    with pytest.raises(SpecError) as e:
        parse_spec(d)
    msg = str(e.value)
    assert f"{section}.{key}" in msg and len(msg.splitlines()) == 1
    assert "finite" in msg or "NaN" in msg


def test_infinite_depths_stay_allowed() -> None:
    d = copy.deepcopy(TINY)
    d["scene"] = {"depths": [0.5, "inf"], "focus_depth": "inf"}
    s = parse_spec(d)
    assert math.isinf(s.depths_m[-1]) and math.isinf(s.focus_depth_m)


def test_yaml_inf_learning_rate_is_one_line_through_check(tmp_path: Path) -> None:
    text = yaml.safe_dump(TINY, sort_keys=False).replace("training:\n", "training:\n  learning_rate: .inf\n")
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    _one_line_error(run_main("check", p), "training.learning_rate", "finite")


def test_default_gamma_is_the_demos_wiener_regularizer() -> None:
    """The default γ is the one the demo specs use for X = H*Y/(|H|² + γ) with H(0) = 1, not the paper's 2.0."""
    for name in ("edof-demo", "focus-demo", "superres-demo", "sitzmann2018-edof", "sitzmann2018-superres"):
        spec = yaml.safe_load((ROOT / "specs" / f"{name}.yaml").read_text())
        assert spec["reconstruction"]["gamma_init"] == Reconstruction().gamma_init, name


def test_check_on_a_single_depth_prints_no_zero_defocus(tmp_path: Path) -> None:
    d = copy.deepcopy(TINY)
    d["scene"] = {"depths": ["0.5 m"], "focus_depth": "0.5 m"}
    r = run_main("check", write_spec(tmp_path, d))
    assert r.returncode == 0, r.stderr
    assert "single depth" in r.stdout and "W020 = 0" not in r.stdout
    r = run_main("check", write_spec(tmp_path, TINY))  # a depth range: W020 at the ends
    assert "W020 = " in r.stdout and "single depth" not in r.stdout


# ---- before a run starts -------------------------------------------------------------------------------------

def _pictures(folder: Path, size: int, count: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _refused_before_start(tmp_path: Path, spec: dict, *names: str, out: Path | None = None, extra: tuple = ()) -> None:
    out = out if out is not None else tmp_path / "run"
    r = run_main("optimize", write_spec(tmp_path, spec), "--out", out, *extra)
    _one_line_error(r, *names)
    assert "optimize " not in r.stdout  # no header
    assert not out.exists()  # nothing created


def test_missing_image_folder_refused_in_a_real_process(tmp_path: Path, cli) -> None:
    d = copy.deepcopy(QUICK)
    d["training"]["images"] = str(tmp_path / "no-such-folder")
    r = cli("optimize", write_spec(tmp_path, d), "--out", tmp_path / "run")
    _one_line_error(r, "training.images")
    assert "optimize " not in r.stdout and not (tmp_path / "run").exists()


def test_unreadable_picture_refused(tmp_path: Path) -> None:
    folder = _pictures(tmp_path / "pics", 64)
    (folder / "3.png").write_bytes(b"not a picture")
    d = copy.deepcopy(QUICK)
    d["training"]["images"] = str(folder)
    _refused_before_start(tmp_path, d, "3.png")


def test_too_small_pictures_refused(tmp_path: Path) -> None:
    d = copy.deepcopy(QUICK)
    d["training"]["images"] = str(_pictures(tmp_path / "pics", 10))  # patch 32: at least 16 px needed
    _refused_before_start(tmp_path, d, "training.images", "16 pixels")


def test_too_few_pictures_refused(tmp_path: Path) -> None:
    d = copy.deepcopy(QUICK)
    d["training"]["images"] = str(_pictures(tmp_path / "pics", 64, count=1))
    _refused_before_start(tmp_path, d, "training.images", "at least 2")


def test_output_under_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    _refused_before_start(tmp_path, QUICK, "--out", out=tmp_path / "a-file" / "run")


def test_diffractive_relief_below_one_wave_refused_by_check_and_before_start(tmp_path: Path) -> None:
    """A diffractive max_height under one wave at the design wavelength (λ/(n − 1), here 550 nm in fused silica)
    cannot hold the Fresnel start: `check` says so as `optimize` does, before anything is created; one wave passes."""
    from lensdesign.materials import refractive_index

    wave_um = 0.55 / (refractive_index("fused_silica", 550e-9) - 1)
    d = copy.deepcopy(QUICK)
    d["optics"] = {**d["optics"], "max_height": f"{wave_um * 0.99:.6f} um"}
    err = _one_line_error(run_main("check", write_spec(tmp_path, d)), "optics.max_height", "one wave", "'auto'")
    assert f"{wave_um:.6g} um" in err and "550 nm" in err, err
    _refused_before_start(tmp_path, d, "optics.max_height")
    d["optics"]["max_height"] = f"{wave_um:.7f} um"
    assert run_main("check", write_spec(tmp_path, d)).returncode == 0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_unwritable_output_refused(tmp_path: Path) -> None:
    _refused_before_start(tmp_path, QUICK, "--out", "cannot write", out=Path("/proc/lensdesign-run"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_cuda_refused(tmp_path: Path) -> None:
    _refused_before_start(tmp_path, QUICK, "cuda", extra=("--device", "cuda"))


def test_memory_beyond_the_machine_refused(tmp_path: Path) -> None:
    """A 16 mm element at 0.5 um, padded 4×: the PSF stack alone needs hundreds of GiB."""
    from lensdesign.commands.core import memory_estimate
    from lensdesign.preflight import available_memory

    d = copy.deepcopy(QUICK)
    d["optics"] = {"aperture": "16 mm", "sensor_distance": "80 mm", "pitch": "0.5 um", "padding": 4.0}
    d["scene"] = {"depths": ["inf"]}
    d["sensor"] = {**d["sensor"], "pixel_pitch": "1 um"}
    d.pop("fabrication")
    need = sum(memory_estimate(parse_spec(d)).values())
    free = available_memory(torch.device("cpu"))
    if free is None or free >= need:
        pytest.skip(f"this machine has {free} bytes free, more than the {need} the spec needs")
    _refused_before_start(tmp_path, d, "memory", "GiB")


# ---- self-healing training -----------------------------------------------------------------------------------

def test_injected_nan_is_rolled_back_and_the_run_finishes(tmp_path: Path) -> None:
    """LENSDESIGN_INJECT_NAN_STEP=4: step 4's loss is NaN once; the run goes back to its last copy (step 0),
    halves the learning rate, records the rollback and ends with every step logged once."""
    run = tmp_path / "run"
    env = {**os.environ, heal.INJECT_ENV: "4"}
    r = subprocess.run([sys.executable, "-m", "lensdesign.cli", "optimize", write_spec(tmp_path, QUICK), "--out", run,
                        "--steps", "8", "--no-eval"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "step 4: non-finite loss; rolled back to step 0" in _flat(r.stdout)
    recs = _records(run)
    events = [x for x in recs if "event" in x]
    assert events == [{"event": "rollback", "step": 4, "to_step": 0, "reason": "non-finite loss", "lr_scale": 0.5,
                       "rollbacks_in_row": 1}]
    steps = [x["step"] for x in recs if "event" not in x]
    assert steps == list(range(8))
    assert all(math.isfinite(x["loss"]) for x in recs if "event" not in x)
    # step 0 after the rollback: learning_rate × max_height × warm-up factor 0.1 × the cut 0.5
    s = parse_spec(QUICK)
    assert recs[1]["lr"] == pytest.approx(s.training.learning_rate * s.max_height_m * 0.1 * 0.5, rel=1e-9)
    assert (run / "design.safetensors").is_file()


def _quick_trainer_run(tmp_path: Path, monkeypatch, spec: dict, **kw):
    from lensdesign.optimize import run_optimization

    monkeypatch.setattr(heal, "SNAPSHOT_EVERY", 2)
    torch.set_num_threads(1)
    log: list[str] = []
    s = parse_spec(spec)
    res = run_optimization(s, tmp_path / "run", torch.device("cpu"), evaluate=False, log=log.append, **kw)
    return res, log


def test_non_finite_gradient_is_rolled_back(tmp_path: Path, monkeypatch) -> None:
    """A finite loss whose gradient is NaN (√|p − p₀| at p = p₀) at step 3 rolls back to the copy of step 2."""
    from lensdesign.optimize import Trainer

    forward = Trainer.forward
    hit: list[int] = []

    def poisoned(self, step, progress=None):
        loss, x, target, depths = forward(self, step, progress)
        if step == 3 and not hit:
            hit.append(step)
            p = self.model.surface.param
            loss = loss + torch.sqrt(torch.abs(p - p.detach())).sum()
        return loss, x, target, depths

    monkeypatch.setattr(Trainer, "forward", poisoned)
    spec = {**QUICK, "training": {**QUICK["training"], "steps": 6}}
    res, log = _quick_trainer_run(tmp_path, monkeypatch, spec)
    assert res.steps_done == 6 and hit == [3]
    events = [x for x in _records(tmp_path / "run") if "event" in x]
    assert [(e["step"], e["to_step"], e["reason"]) for e in events] == [(3, 2, "non-finite gradient")]
    assert any("non-finite gradient" in m for m in log)
    before = _records(tmp_path / "run")
    res, _ = _quick_trainer_run(tmp_path, monkeypatch, spec, resume=True)  # from the final checkpoint (lr ×0.5)
    assert res.steps_done == 6 and _records(tmp_path / "run") == before  # the rollback record stays


def test_repeated_nan_stops_with_one_line_and_keeps_the_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(heal.INJECT_ENV, "5:100")
    spec = {**QUICK, "training": {**QUICK["training"], "steps": 8}}
    with pytest.raises(LensdesignError) as e:
        _quick_trainer_run(tmp_path, monkeypatch, spec, checkpoint_every=4)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "step 5" in msg and "training.learning_rate" in msg
    assert "3 rollbacks" in msg
    run = tmp_path / "run"
    assert [x["rollbacks_in_row"] for x in _records(run) if "event" in x] == [1, 2, 3]
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == "4"
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())
    assert not (run / "design.safetensors").exists()


def test_learning_rate_cut_survives_a_checkpoint() -> None:
    from lensdesign.optimize import Trainer

    s = parse_spec(QUICK)
    a = Trainer(s)
    assert "train.lr_scale" not in a.state_tensors()  # an undisturbed run's checkpoint is unchanged
    a.lr_scale = 0.25
    b = Trainer(s)
    b.load_state_tensors(a.state_tensors())
    assert b.lr_scale == 0.25


# ---- one writer per run directory ----------------------------------------------------------------------------

def test_run_lock_in_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run, "optimize"):
        assert (run / LOCK).read_text().split() == [str(os.getpid()), "optimize"]
        with pytest.raises(LensdesignError, match=f"pid {os.getpid()}, optimize"):
            ensure_unlocked(run, "export")
        with pytest.raises(LensdesignError, match=f"pid {os.getpid()}"), run_lock(run, "export"):
            pass
    assert not (run / LOCK).exists()  # released and removed
    ensure_unlocked(run, "export")
    (run / LOCK).write_text("999999999 optimize\n")  # left by a killed process: nobody holds the flock
    said: list[str] = []
    with run_lock(run, "optimize", log=said.append):
        pass
    assert said and "999999999" in said[0]
    with run_lock(tmp_path / "absent", "export", create=False):
        pass
    assert not (tmp_path / "absent").exists()


def test_second_writer_refused_and_a_killed_writers_lock_taken_over(tmp_path: Path, cli) -> None:
    spec = write_spec(tmp_path, {**QUICK, "training": {**QUICK["training"], "steps": 100000}})
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "lensdesign.cli", "optimize", spec, "--out", run, "--no-eval"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ((run / LOCK).is_file() and (run / LOCK).read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() - t0 < 120, "the first run never took the lock"
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)  # paused while holding the lock: it keeps the lock and spares the CPU
        second = cli("optimize", spec, "--out", run, "--force")
        _one_line_error(second, f"pid {first.pid}, optimize", str(run))
        export = cli("export", run, "--force")
        _one_line_error(export, f"pid {first.pid}")
        assert first.poll() is None  # the refusals did not wait for the first run
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / LOCK).is_file()  # left behind by kill -9
    third = cli("optimize", spec, "--out", run, "--force", "--steps", "1", "--no-eval")
    assert third.returncode == 0, third.stderr
    assert f"left by pid {first.pid}" in _flat(third.stdout)
    assert not (run / LOCK).exists() and (run / "design.safetensors").is_file()
    with run_lock(run, "optimize"):  # a report of a run that is being rewritten is refused too
        _one_line_error(cli("report", run, "--samples", "0"), f"pid {os.getpid()}, optimize")
        before = (run / "design.safetensors").read_bytes()  # and a baseline written over it
        _one_line_error(cli("baseline", spec, "--kind", "fresnel", "--out", run, "--force"), f"pid {os.getpid()}")
        assert (run / "design.safetensors").read_bytes() == before
    assert not (run / "report").exists()


# ---- summaries of U-Net runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["wiener", "unet"])
def test_unet_summary_says_the_baselines_use_the_wiener_filter(tmp_path: Path, monkeypatch, kind: str) -> None:
    """`finish` marks a U-Net run's summary: its baselines are scored with the Wiener filter only (the scoring
    itself, `summarize`, is replaced by a stub here)."""
    from lensdesign import optimize
    from lensdesign.rundir import RunDir

    monkeypatch.setattr(optimize, "summarize", lambda *a, **k: {"design": {}, "baselines": {}})
    d = copy.deepcopy(QUICK)
    d["reconstruction"] = {"kind": kind, "unet_channels": 4, "unet_depth": 1}
    s = parse_spec(d)
    summary = optimize.finish(s, RunDir(tmp_path / "run"), optimize.Trainer(s), 0, None, log=lambda m: None)
    assert summary is not None
    if kind == "unet":
        assert summary["baseline_reconstruction"].startswith("wiener")
    else:
        assert "baseline_reconstruction" not in summary

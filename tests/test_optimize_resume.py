"""Resume: a run killed mid-way (SIGKILL) or stopped (SIGTERM) and resumed ends exactly where an uninterrupted
run with the same seed ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import HARD

STEPS = 40
SPEC = {
    **HARD,
    "name": "resume",
    "training": {"steps": STEPS, "batch_size": 1, "patch_size": 32, "learning_rate": 0.05, "images": "builtin",
                 "seed": 5, "device": "cpu", "validation_images": 2},
}


def image_folder(path: Path) -> Path:
    """Five small photographs (crops of scikit-image's samples) as PNG files: a fast `training.images` folder."""
    import skimage.data
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")):
        Image.fromarray(getattr(skimage.data, name)()[:96, :96]).save(path / f"{i}-{name}.png")
    return path


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lensdesign.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _checkpoint_step(path: Path) -> int | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {})["step"])
    except Exception:
        return None


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, after: int = -1, timeout: float = 60.0) -> int:
    """Poll until the checkpoint at `path` records a step beyond `after`; the process must still be running."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        step = _checkpoint_step(path) if path.exists() else None
        if step is not None and step > after:
            return step
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def test_killed_and_stopped_run_resumes_to_the_same_design(tmp_path, cli):
    d = json.loads(json.dumps(SPEC))
    d["training"]["images"] = str(image_folder(tmp_path / "images"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d, sort_keys=False))
    r = cli("optimize", spec, "--out", tmp_path / "ref", "--no-eval")
    assert r.returncode == 0, r.stderr
    h_ref = load_file(str(tmp_path / "ref" / "design.safetensors"))["height_m"]

    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"
    # 1. SIGKILL: no chance to clean up; the last periodic checkpoint is all there is
    proc = _start("optimize", spec, "--out", out, "--no-eval", "--checkpoint-every", "3")
    first = _wait_for_checkpoint(proc, ckpt)
    proc.kill()
    proc.communicate(timeout=60)
    killed_at = _checkpoint_step(ckpt)
    assert killed_at is not None and first <= killed_at < STEPS
    assert not (out / "design.safetensors").exists()
    # 2. resume, then SIGTERM: the run checkpoints at the next step boundary and stops with exit code 130
    proc = _start("optimize", spec, "--out", out, "--no-eval", "--checkpoint-every", "3", "--resume")
    _wait_for_checkpoint(proc, ckpt, after=killed_at)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=60)
    assert f"resuming {out} at step {killed_at} of {STEPS}" in stdout
    assert proc.returncode == 130 and "--resume" in err, err
    stopped_at = _checkpoint_step(ckpt)
    assert stopped_at is not None and killed_at < stopped_at < STEPS
    # 3. resume to the end
    r = cli("optimize", spec, "--out", out, "--no-eval", "--resume")
    assert r.returncode == 0, r.stderr
    h = load_file(str(out / "design.safetensors"))["height_m"]
    rel = float((h - h_ref).abs().max() / h_ref.abs().max())
    assert rel <= 1e-6, rel
    assert torch.equal(h, h_ref)  # bit-identical on CPU
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS))  # no duplicated or missing records across the interruptions

"""torchrun: two processes (gloo on the CPU) train the design one process trains, resume after the launcher is
killed or stopped, and end together, with one line naming the rank, when one of them is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lensdesign.distributed import split
from tests.conftest import TINY, run_cli
from tests.test_optimize_resume import _checkpoint_step

STEPS = 20
SPEC = {**TINY, "name": "dist", "optics": {**TINY["optics"], "parameterization": "radial"},
        "training": {"steps": STEPS, "batch_size": 2, "patch_size": 32, "images": "builtin", "seed": 0, "device": "cpu",
                     "validation_images": 1}}


def torchrun(*args: object) -> list[str]:
    """`torchrun --standalone --nproc_per_node 2 -m lensdesign optimize ARGS --no-eval --threads 1` (a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lensdesign",
            "optimize", *map(str, args), "--no-eval", "--threads", "1"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start `args` with stdout and stderr in files (a pipe nobody reads could block the workers)."""
    return subprocess.Popen(args, stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"))


def workers(launcher: int) -> dict[int, int]:
    """{pid: rank} of the launcher's child processes (the ranks)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and "RANK" in env:
            out[int(d.name)] = int(env["RANK"])
    return out


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the launcher ended (exit {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def height(run: Path) -> torch.Tensor:
    return load_file(str(run / "design.safetensors"))["height_m"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("dist") / "spec.yaml"
    p.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def runs(spec: Path) -> tuple[Path, Path]:
    """(the 1-process run, the 2-process run) of `spec`."""
    one, two = spec.parent / "one", spec.parent / "two"
    r = run_cli("optimize", spec, "--out", one, "--no-eval", "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = subprocess.run(torchrun(spec, "--out", two), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return one, two


@pytest.mark.parametrize("count, parts", [(4, 2), (3, 2), (2, 3), (15, 4)])
def test_split_covers_everything_once_in_balanced_blocks(count: int, parts: int) -> None:
    blocks = [split(count, parts, i) for i in range(parts)]
    assert [i for lo, hi in blocks for i in range(lo, hi)] == list(range(count))
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_two_processes_train_the_one_process_design(runs: tuple[Path, Path]) -> None:
    one, two = runs
    h1, h2 = height(one), height(two)
    assert float((h1 - h2).abs().max() / h1.abs().max()) < 1e-4
    m1, m2 = metrics(one), metrics(two)
    assert [r["step"] for r in m2] == list(range(STEPS))  # once per step: rank 0 alone writes
    for a, b in zip(m1, m2, strict=True):
        assert a["depths_m"] == b["depths_m"]  # the same samples
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["psnr_db"] == pytest.approx(a["psnr_db"], abs=1e-3)
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith("."))


def test_resume_after_the_launcher_is_killed_or_stopped(runs: tuple[Path, Path], spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"

    def ckpt_step() -> int:
        return (_checkpoint_step(ckpt) if ckpt.exists() else None) or -1

    # 1. SIGKILL of the launcher: the ranks die with it (after a checkpoint, like a stop)
    proc = start(torchrun(spec, "--out", out, "--checkpoint-every", "3"), tmp_path / "kill")
    wait_for(lambda: ckpt_step() >= 3, "a checkpoint", proc)
    ranks = workers(proc.pid)
    assert sorted(ranks.values()) == [0, 1]
    proc.kill()
    proc.wait()
    wait_for(lambda: all(gone(p) for p in ranks), "the ranks to end with the launcher", timeout=60)
    first = ckpt_step()
    assert 3 <= first < STEPS and not (out / "design.safetensors").exists()

    # 2. resumed, then SIGTERM to the launcher: one checkpoint, a clean stop
    proc = start(torchrun(spec, "--out", out, "--resume", "--checkpoint-every", "3"), tmp_path / "term")
    wait_for(lambda: ckpt_step() > first, "a later checkpoint", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    err = (tmp_path / "term.err").read_text()
    assert err.count("interrupted: checkpoint saved") == 1, err[-3000:]
    second = ckpt_step()
    assert first < second < STEPS and not (out / "design.safetensors").exists()

    # 3. resumed to the end: the design of the uninterrupted 2-process run
    r = subprocess.run(torchrun(spec, "--out", out, "--resume"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {out} at step {second}" in " ".join(r.stdout.split())
    assert torch.equal(height(out), height(runs[1]))
    assert [m["step"] for m in metrics(out)] == list(range(STEPS))


def test_a_killed_rank_ends_the_job_with_one_line_naming_it(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(torchrun(spec, "--out", out, "--steps", "400"), tmp_path / "job")
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics(out)) >= 2, "two steps", proc)
    rank1 = [pid for pid, rank in workers(proc.pid).items() if rank == 1]
    assert len(rank1) == 1
    t0 = time.monotonic()
    os.kill(rank1[0], signal.SIGKILL)
    rc = proc.wait(timeout=60)
    assert time.monotonic() - t0 < 60
    assert rc != 0
    err = (tmp_path / "job.err").read_text()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rank 1 of 2" in lines[0], err[-3000:]
    assert not (out / "design.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu-check runs the GPU checks")
def test_gpu_check_without_cuda_says_so_and_succeeds() -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no CUDA device") and len(r.stdout.splitlines()) == 1

"""Training-step time under torchrun: 2 processes × 1 thread against 1 process × 1 thread and 1 process × 2
threads, on a spec whose step is dominated by its PSFs (512² element, 1024² padded grid, 3 wavelengths × 6
depths: 5 reference depths and the step's training depth; a 32² patch, batch 2).

`python -m benchmarks.bench_distributed` prints the table; `make bench` puts it in BENCHMARKS.md. Each
configuration runs in its own process(es) (`--worker`), times `STEPS` training steps after one warm-up step
(`Trainer.train_step`: PSFs forward and backward, images, reconstruction, gradient all-reduce, Adam; no
validation) and reports the mean seconds per step; the configurations take turns for `ROUNDS` rounds and the
best round of each is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEPS = 4
ROUNDS = 2
N = 512

CONFIGS = [  # (label, processes, threads per process)
    ("1 process × 1 thread", 1, 1),
    ("1 process × 2 threads", 1, 2),
    ("2 processes × 1 thread (torchrun, gloo)", 2, 1),
]


def bench_spec_dict(n: int = N) -> dict:
    """A PSF-heavy training problem: an n × n element at 2 um, padding 2, 5 depths × 3 wavelengths."""
    ap = n * 2e-6 - 1e-9
    return {
        "name": f"dist-bench-{n}",
        "optics": {"aperture": ap, "sensor_distance": ap * 7.1, "pitch": "2 um", "padding": 2.0},
        "wavelengths": ["460 nm", "550 nm", "640 nm"],
        "scene": {"depths": {"min": ap * 100, "max": "inf", "count": 5}},
        "sensor": {"pixel_pitch": "4 um", "resolution": [64, 64], "psf_size": 31},
        "training": {"steps": 1000, "batch_size": 2, "patch_size": 32, "images": "builtin", "seed": 0, "device": "cpu"},
    }


def worker(threads: int, steps: int) -> None:
    """Time `steps` training steps (after one warm-up) in this process (one rank under torchrun); rank 0 prints
    {"s_per_step": ...} as JSON."""
    import torch

    from lensdesign import distributed
    from lensdesign.optimize import Trainer
    from lensdesign.spec import parse_spec

    torch.set_num_threads(threads)
    dist = distributed.init() if distributed.launched() else None
    trainer = Trainer(parse_spec(bench_spec_dict()), "cpu", dist)
    trainer.train_step(0)
    if dist is not None:
        dist.barrier()
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        trainer.train_step(k)
    dt = (time.perf_counter() - t0) / steps
    if distributed.is_rank0():
        print(json.dumps({"s_per_step": dt}), flush=True)
    if dist is not None:
        dist.close()


def _measure(procs: int, threads: int, steps: int) -> float:
    args = ["-m", "benchmarks.bench_distributed", "--worker", "--threads", str(threads), "--steps", str(steps)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
    return float(json.loads(line)["s_per_step"])


def measure(steps: int = STEPS, rounds: int = ROUNDS) -> dict[str, float]:
    """{label: best seconds per step over `rounds` interleaved rounds}."""
    best: dict[str, float] = {}
    for i in range(rounds):
        for label, procs, threads in CONFIGS:
            t = _measure(procs, threads, steps)
            best[label] = min(best.get(label, t), t)
            print(f"round {i + 1}: {label}: {t:.3f} s/step", flush=True)
    return best


def run() -> str:
    """Markdown section with the step times."""
    import torch

    from lensdesign.optics.psf import plan_grid
    from lensdesign.spec import parse_spec

    g = plan_grid(parse_spec(bench_spec_dict()))
    best = measure()
    base = best[CONFIGS[0][0]]
    lines = [
        "## Training step under torchrun (PSF-dominated spec)",
        "",
        f"torch {torch.__version__}, CPU, {os.cpu_count()} cores. Element {g.n}², padded grid {g.m}², 3 wavelengths × "
        "6 depths (5 reference + the step's training depth), batch 2 of 32² patches, PSF window 31². Seconds per "
        f"`Trainer.train_step` (mean of {STEPS} steps after a warm-up step, best of {ROUNDS} interleaved rounds; no "
        "validation). Two processes split the depths 3 / 3 and the batch 1 / 1. Re-run: "
        "`python -m benchmarks.bench_distributed`.",
        "",
        "| configuration | s / step | speed-up vs 1 × 1 |",
        "|---|---|---|",
    ]
    for label, _, _ in CONFIGS:
        lines.append(f"| {label} | {best[label]:.3f} | {base / best[label]:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="time steps in this process (internal)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    if a.worker:
        worker(a.threads, a.steps)
    else:
        print(run())


if __name__ == "__main__":
    main()

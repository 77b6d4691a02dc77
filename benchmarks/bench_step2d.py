"""Paper-scale 2-D training step on the CPU with and without the warm-allocator settings (`lensdesign.memory`).

`specs/sitzmann2018-edof.yaml` (2500² element, 3750² padded grid, 3 wavelengths × 5 depths + the training depth),
one thread. Each configuration runs in its own process (`--worker`): one warm-up step, then `STEPS` timed
`Trainer.train_step` calls (PSFs forward and backward, images, Wiener, Adam; no validation), with the process's
system time and minor page faults over the timed steps from `getrusage`. `python -m benchmarks.bench_step2d`
prints the table; `make bench` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEPS = 2
SPEC = "specs/sitzmann2018-edof.yaml"
CONFIGS = [  # (label, LENSDESIGN_WARM_ALLOCATOR, threads)
    ("system allocators (LENSDESIGN_WARM_ALLOCATOR=0), 1 thread", "0", 1),
    ("warm allocators (default), 1 thread", "1", 1),
    ("warm allocators, 2 threads (`--threads 2`)", "1", 2),
]


def worker(steps: int, threads: int) -> None:
    """Time `steps` steps after a warm-up in this process; print {"s_per_step", "sys_frac", "minflt_per_step"}."""
    import resource
    import time

    from lensdesign import memory

    memory.configure()  # before torch is imported
    import torch

    from lensdesign.optimize import Trainer
    from lensdesign.spec import load_spec

    torch.set_num_threads(threads)
    spec = load_spec(SPEC)
    trainer = Trainer(spec.model_copy(update={"training": spec.training.model_copy(update={"device": "cpu"})}), "cpu")
    trainer.train_step(0)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for k in range(1, steps + 1):
        trainer.train_step(k)
    r1, dt = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    print(json.dumps({"s_per_step": dt / steps, "sys_frac": (r1.ru_stime - r0.ru_stime) / dt,
                      "minflt_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                      "max_rss_gb": r1.ru_maxrss / 1e6}), flush=True)


def measure(steps: int = STEPS) -> dict[str, dict[str, float]]:
    """{label: worker result} for each configuration, each in a fresh process."""
    out = {}
    for label, warm, threads in CONFIGS:
        env = {**os.environ, "LENSDESIGN_WARM_ALLOCATOR": warm, "OMP_NUM_THREADS": str(threads)}
        env.pop("THP_MEM_ALLOC_ENABLE", None)
        cmd = [sys.executable, "-m", "benchmarks.bench_step2d", "--worker", "--steps", str(steps), "--threads", str(threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
        out[label] = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
        print(f"{label}: {out[label]}", flush=True)
    return out


def run() -> str:
    """Markdown section with the step times, system-time fractions and page faults."""
    import torch

    res = measure()
    base = res[CONFIGS[0][0]]["s_per_step"]
    lines = [
        "## Paper-scale 2-D training step: page faults",
        "",
        f"torch {torch.__version__}, CPU. `{SPEC}`: 2500² element, 3750² padded grid, 3 wavelengths × 6 "
        f"depths, batch and patch as in the spec. Mean of {STEPS} `Trainer.train_step` calls after a warm-up step "
        "(no validation); system time as a fraction of their wall time, minor page faults per step and peak RSS "
        "from `getrusage`. The warm settings (`lensdesign.memory`): glibc keeps freed large blocks mapped "
        "(no mmap, no heap trimming) and torch backs blocks ≥ 2 MB with transparent huge pages. Re-run: "
        "`python -m benchmarks.bench_step2d`.",
        "",
        "| allocators | s / step | system time | minor faults / step | peak RSS (GB) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, _ in CONFIGS:
        r = res[label]
        lines.append(f"| {label} | {r['s_per_step']:.1f} | {100 * r['sys_frac']:.0f} % | {r['minflt_per_step']:,.0f} | "
                     f"{r['max_rss_gb']:.1f} | {base / r['s_per_step']:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="time steps in this process (internal)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        worker(a.steps, a.threads)
    else:
        print(run())


if __name__ == "__main__":
    main()

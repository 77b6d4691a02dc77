"""Paper-scale 2-D training step on the CPU: this code, with and without its warm allocators (`lensdesign.memory`)
and pruned transforms (`optics.forward.PRUNE_MIN`), against the code before either (commit `BEFORE`, checked out
into a temporary git worktree), all in the same run.

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
import tempfile
from pathlib import Path

STEPS = 2
SPEC = "specs/sitzmann2018-edof.yaml"
BEFORE = "1bfd333"  # the code before the paper-scale work: system allocators, full 2-D transforms
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [  # (label, source tree ("before" or "this"), LENSDESIGN_WARM_ALLOCATOR, pruned transforms, threads)
    (f"before (commit {BEFORE}), 1 thread", "before", "0", False, 1),
    ("this code, system allocators (LENSDESIGN_WARM_ALLOCATOR=0), full transforms, 1 thread", "this", "0", False, 1),
    ("this code, warm allocators, full transforms, 1 thread", "this", "1", False, 1),
    ("this code (warm allocators, pruned transforms), 1 thread", "this", "1", True, 1),
    ("this code, 2 threads (`--threads 2`)", "this", "1", True, 2),
]


def worker(steps: int, threads: int, pruned: bool) -> None:
    """Time `steps` steps after a warm-up in this process (lensdesign from the working directory's tree); print
    {"s_per_step", "sys_frac", "minflt_per_step", "max_rss_gb"}."""
    import resource
    import time

    sys.path.insert(0, os.getcwd())
    try:
        from lensdesign import memory
    except ImportError:  # the code before lensdesign.memory
        memory = None
    if memory is not None:
        memory.configure()  # before torch is imported
    import torch

    from lensdesign.optimize import Trainer
    from lensdesign.spec import load_spec

    if not pruned:
        try:
            from lensdesign.optics import forward
            forward.PRUNE_MIN = 1 << 30
        except (ImportError, AttributeError):
            pass
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


def _before_tree(tmp: str) -> Path | None:
    """A worktree of commit BEFORE in `tmp`, or None where git or the commit is not available."""
    path = Path(tmp) / "before"
    r = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), BEFORE],
                       capture_output=True, text=True)
    return path if r.returncode == 0 else None


def measure(steps: int = STEPS) -> dict[str, dict[str, float]]:
    """{label: worker result} for each configuration, each in a fresh process."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        before = _before_tree(tmp)
        try:
            for label, tree, warm, pruned, threads in CONFIGS:
                cwd = ROOT if tree == "this" else before
                if cwd is None:
                    print(f"{label}: skipped (no git worktree of {BEFORE})", flush=True)
                    continue
                env = {**os.environ, "LENSDESIGN_WARM_ALLOCATOR": warm, "OMP_NUM_THREADS": str(threads)}
                env.pop("THP_MEM_ALLOC_ENABLE", None)
                env.pop("PYTHONPATH", None)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--threads",
                       str(threads), *(["--pruned"] if pruned else [])]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, cwd=cwd)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
                out[label] = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
                print(f"{label}: {out[label]}", flush=True)
        finally:
            if before is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                               capture_output=True)
    return out


def run() -> str:
    """Markdown section with the step times, system-time fractions and page faults."""
    import torch

    res = measure()
    base_label = CONFIGS[0][0] if CONFIGS[0][0] in res else CONFIGS[1][0]
    base = res[base_label]["s_per_step"]
    lines = [
        "## Paper-scale 2-D training step: page faults and pruned transforms",
        "",
        f"torch {torch.__version__}, CPU. `{SPEC}`: 2500² element, 3750² padded grid, 3 wavelengths × 6 "
        f"depths, batch and patch as in the spec. Mean of {STEPS} `Trainer.train_step` calls after a warm-up step "
        "(no validation); system time as a fraction of their wall time, minor page faults per step and peak RSS "
        "from `getrusage`. The warm settings (`lensdesign.memory`): glibc keeps freed large blocks mapped "
        "(no mmap, no heap trimming) and torch backs blocks ≥ 2 MB with transparent huge pages. Pruned transforms "
        "(`optics.forward.PRUNE_MIN`, padded grids from 1536): the inverse transform to the PSF window and the "
        "adjoint's first transform run only over the window's columns. The first row is the code before both, "
        f"commit {BEFORE}, from a git worktree, with its own spec file. Re-run: `python -m benchmarks.bench_step2d`.",
        "",
        "| code and settings | s / step | system time | minor faults / step | peak RSS (GB) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for label, *_ in CONFIGS:
        if label not in res:
            continue
        r = res[label]
        lines.append(f"| {label} | {r['s_per_step']:.1f} | {100 * r['sys_frac']:.0f} % | {r['minflt_per_step']:,.0f} | "
                     f"{r['max_rss_gb']:.1f} | {base / r['s_per_step']:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="time steps in this process (internal)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pruned", action="store_true", help="pruned transforms (internal)")
    a = ap.parse_args()
    if a.worker:
        worker(a.steps, a.threads, a.pruned)
    else:
        print(run())


if __name__ == "__main__":
    main()

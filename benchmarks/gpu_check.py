"""`make gpu-check`: is the CUDA path right, and how fast is it?

On a machine with CUDA:
1. physics on the GPU: the PSF stack (3 wavelengths × 5 depths, 512² element) and its gradient on CUDA against
   the CPU (relative L2 < 1e-4 each), and the written-out adjoint on CUDA against plain autograd of the reference
   forward model in float64 (`OpticalSystem.psf_reference`, relative L2 < 1e-4);
2. a paper-scale training step (specs/sitzmann2018-edof.yaml: 2500² element, 3750² padded grid; and its radial
   variant): seconds per `Trainer.train_step` and peak GPU memory;
3. with several GPUs: the paper-scale step time for 1, 2, … GPUs under torchrun (one process per GPU, NCCL).
It prints each result, replaces its section in BENCHMARKS.md and exits 1 if a physics check fails.

Without CUDA it prints one line ("no CUDA device") and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HEADING = "## GPU readiness (`make gpu-check`)"
TOL = 1e-4
PAPER = Path("specs/sitzmann2018-edof.yaml")
STEPS = 3


def rel_l2(a, b) -> float:
    """‖a − b‖ / ‖b‖ (float64)."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def physics_checks(device: str = "cuda") -> list[tuple[str, float]]:
    """[(check, relative L2)] for the PSF stack and its gradient on `device` against the CPU and against autograd."""
    import torch

    from benchmarks.bench_psf import bench_spec
    from lensdesign.optics.psf import OpticalSystem

    spec = bench_spec(512)
    gen = torch.Generator().manual_seed(0)
    cpu = OpticalSystem(spec, "cpu")
    gpu = OpticalSystem(spec, device)
    h0 = torch.rand(cpu.grid.n, cpu.grid.n, generator=gen) * spec.max_height_m
    weights = torch.rand(cpu.shape, generator=gen)

    def psf_and_grad(system: OpticalSystem, device: str, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if reference else torch.float32
        h = h0.to(device, dtype).clone().requires_grad_(True)
        psf = system.psf_reference(h) if reference else system.psf(h)
        (psf * weights.to(device, psf.dtype)).sum().backward()
        assert h.grad is not None
        return psf.detach(), h.grad.detach()

    p_cpu, g_cpu = psf_and_grad(cpu, "cpu")
    p_gpu, g_gpu = psf_and_grad(gpu, device)
    p_ref, g_ref = psf_and_grad(gpu, device, reference=True)
    return [("PSF stack, CUDA vs CPU", rel_l2(p_gpu, p_cpu)),
            ("PSF gradient, CUDA vs CPU", rel_l2(g_gpu, g_cpu)),
            ("PSF stack, CUDA vs float64 autograd reference", rel_l2(p_gpu, p_ref)),
            ("PSF gradient (adjoint), CUDA vs float64 autograd", rel_l2(g_gpu, g_ref))]


def paper_spec(kind: str):
    """The paper-scale EDOF spec, with `optics.parameterization` = `kind`."""
    import yaml

    from lensdesign.spec import parse_spec

    d = yaml.safe_load(PAPER.read_text())
    d["optics"]["parameterization"] = kind
    d["training"]["device"] = "cuda"
    return parse_spec(d)


def worker(kind: str, steps: int) -> None:
    """Time `steps` paper-scale training steps after a warm-up step on this process's GPU (one rank under torchrun);
    rank 0 prints {"s_per_step", "peak_gib"} as JSON."""
    import torch

    from lensdesign import distributed
    from lensdesign.optimize import Trainer

    dist = distributed.init() if distributed.launched() else None
    dev = dist.settle_device(torch.device("cuda")) if dist is not None else torch.device("cuda")
    trainer = Trainer(paper_spec(kind), dev, dist)
    trainer.train_step(0)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    if dist is not None:
        dist.barrier()
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        trainer.train_step(k)
    torch.cuda.synchronize(dev)
    dt = (time.perf_counter() - t0) / steps
    if distributed.is_rank0():
        print(json.dumps({"s_per_step": dt, "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30}), flush=True)
    if dist is not None:
        dist.close()


def timed(kind: str, gpus: int) -> dict[str, float]:
    """{"s_per_step", "peak_gib"} of the paper-scale step on `gpus` GPUs (torchrun for more than one)."""
    args = ["-m", "benchmarks.gpu_check", "--worker", kind, "--steps", str(STEPS)]
    cmd = [sys.executable, *args] if gpus == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


def replace_section(path: Path, text: str) -> None:
    """Put `text` (starting with HEADING) into the markdown file `path`, replacing the previous GPU section."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(HEADING)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(HEADING))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    path.write_text(new)


def section(path: Path = Path("BENCHMARKS.md")) -> str | None:
    """The GPU section of `path` as it stands (so that `make bench` on a CPU machine keeps it), or None."""
    if not path.exists():
        return None
    old = path.read_text()
    start = old.find(HEADING)
    if start < 0:
        return None
    end = old.find("\n## ", start + len(HEADING))
    return old[start:end + 1 if end >= 0 else None].rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=("pixel", "radial"), help="time paper-scale steps in this process (internal)")
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    import torch

    if a.worker:
        worker(a.worker, a.steps)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check on this machine (gpu-check runs the CUDA path on a GPU machine)")
        return 0
    name = torch.cuda.get_device_name(0)
    count = torch.cuda.device_count()
    print(f"{count} × {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    checks = physics_checks()
    lines = [HEADING, "", f"Written by `make gpu-check` on {time.strftime('%Y-%m-%d')}: {count} × {name}, torch "
             f"{torch.__version__}, CUDA {torch.version.cuda}.", "", "| physics check | relative L2 | limit |",
             "|---|---|---|"]
    ok = True
    for what, err in checks:
        ok &= err < TOL
        print(f"{what}: {err:.2e} ({'ok' if err < TOL else 'FAILED'})", flush=True)
        lines.append(f"| {what} | {err:.2e} | {TOL:g} |")
    lines += ["", f"Paper-scale training step ({PAPER}: 2500² element, 3750² padded grid, 3 wavelengths × 6 depths, "
              f"batch 4; mean of {STEPS} steps after a warm-up step):", "",
              "| parameterization | GPUs | s / step | peak GPU memory (GiB, rank 0) |", "|---|---|---|---|"]
    for kind in ("pixel", "radial"):
        for gpus in range(1, count + 1 if kind == "pixel" else 2):
            r = timed(kind, gpus)
            print(f"{kind}, {gpus} GPU(s): {r['s_per_step']:.3f} s/step, peak {r['peak_gib']:.2f} GiB", flush=True)
            lines.append(f"| {kind} | {gpus} | {r['s_per_step']:.3f} | {r['peak_gib']:.2f} |")
    replace_section(Path("BENCHMARKS.md"), "\n".join(lines) + "\n")
    print("wrote the GPU section of BENCHMARKS.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

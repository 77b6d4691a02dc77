"""`make bench`: time the PSF stack against the FFT floor, and export; write BENCHMARKS.md."""

from __future__ import annotations

import importlib
import os
import platform
import time
from pathlib import Path

import torch

SECTIONS = ["benchmarks.bench_psf", "benchmarks.bench_export", "benchmarks.bench_distributed", "benchmarks.bench_hankel",
            "benchmarks.bench_step2d"]


def main() -> None:
    parts = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d')}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}. "
        "Timings are wall-clock seconds on an otherwise idle machine.",
        "",
    ]
    for name in SECTIONS:
        print(f"running {name} …", flush=True)
        parts.append(importlib.import_module(name).run())
    from benchmarks.gpu_check import section

    gpu = section()  # written by `make gpu-check` on a GPU machine: kept
    if gpu:
        parts.append(gpu)
    Path("BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()

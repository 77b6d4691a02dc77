"""PSF-stack timing against the FFT floor: the bare fft2+ifft2 pairs the computation cannot avoid.

Forward: one FFT pair per PSF; forward+backward: two. The floor is the faster of (a) all pairs batched and
(b) one pair at a time into a reused buffer, at the same padded size, timed in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from lensdesign.optics.psf import OpticalSystem
from lensdesign.spec import parse_spec

DEPTHS = 5
WAVELENGTHS = ("460 nm", "550 nm", "640 nm")


def bench_spec(n: int, pitch_um: float = 2.0):
    """A spec whose element grid is n × n at `pitch_um` (aperture n·pitch), 3 wavelengths × 5 depths."""
    ap = n * pitch_um * 1e-6 - 1e-9
    return parse_spec({
        "name": f"bench-{n}",
        "optics": {"aperture": ap, "sensor_distance": ap * 7.1, "pitch": f"{pitch_um} um", "padding": 1.5},
        "wavelengths": list(WAVELENGTHS),
        "scene": {"depths": {"min": ap * 100, "max": "inf", "count": DEPTHS}},
        "sensor": {"pixel_pitch": f"{2 * pitch_um} um", "resolution": [256, 256]},
    })


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Best wall-clock seconds of each function, timed in interleaved rounds so that all share the same
    machine conditions (on a shared host the speed drifts by 10-30 % between minutes)."""
    for fn in fns.values():
        fn()  # warm-up: FFT descriptors, allocator
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def floor_loops(m: int, count: int) -> dict[str, Callable[[], None]]:
    """Bare fft2+ifft2 loops over `count` m × m complex64 fields, for 1 and 2 pairs per field.

    batched: one call over all fields; reused: one field at a time into a reused output buffer (`out=`);
    alloc: one field at a time, each FFT returning a new tensor. On the CPU torch computes an `out=` FFT
    into a new tensor and copies it, so `alloc` is usually the fastest.
    """
    x = torch.randn(count, m, m, dtype=torch.complex64)
    buf = torch.empty(m, m, dtype=torch.complex64)

    def batched(pairs: int) -> Callable[[], None]:
        def f() -> None:
            for _ in range(pairs):
                torch.fft.ifft2(torch.fft.fft2(x))
        return f

    def reused(pairs: int) -> Callable[[], None]:
        def f() -> None:
            for _ in range(pairs):
                for i in range(count):
                    torch.fft.fft2(x[i], out=buf)
                    torch.fft.ifft2(buf, out=buf)
        return f

    def alloc(pairs: int) -> Callable[[], None]:
        def f() -> None:
            for _ in range(pairs):
                for i in range(count):
                    torch.fft.ifft2(torch.fft.fft2(x[i]))
        return f

    return {f"{name}{p}": make(p) for p in (1, 2) for name, make in
            (("batched", batched), ("reused", reused), ("alloc", alloc))}


def measure(n: int, rounds: int = 5) -> dict[str, float]:
    """Seconds for the PSF stack's forward and forward+backward, and for the floor loops, at grid n."""
    spec = bench_spec(n)
    system = OpticalSystem(spec)
    g = system.grid
    h = torch.rand(g.n, g.n) * spec.max_height_m
    count = DEPTHS * len(WAVELENGTHS)

    def fwd() -> None:
        with torch.no_grad():
            system.psf(h)

    hg = h.clone().requires_grad_()
    w = torch.randn(system.shape)

    def fwd_bwd() -> None:
        hg.grad = None
        (system.psf(hg) * w).sum().backward()

    r = _interleaved({"forward": fwd, "forward_backward": fwd_bwd, **floor_loops(g.m, count)}, rounds)
    r["n"], r["m"] = n, g.m
    for p in (1, 2):
        r[f"floor{p}"] = min(r[f"batched{p}"], r[f"reused{p}"])  # the floor as the benchmark defines it
        r[f"fastest{p}"] = min(r[f"floor{p}"], r[f"alloc{p}"])
    return r


def run(sizes: tuple[int, ...] = (512, 1024, 2048)) -> str:
    """Markdown section with the PSF-stack timings."""
    rows = []
    for n in sizes:
        r = measure(n, rounds=7 if n < 2048 else 2)
        print(f"N = {n}: fwd+bwd {r['forward_backward']:.3f} s, {r['forward_backward'] / r['floor2']:.2f}× the floor",
              flush=True)
        rows.append(r)
    lines = [
        "## PSF stack (3 wavelengths × 5 depths)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU. Padded grid M = fft_size(1.5 N). "
        "Floor = the bare fft2+ifft2 pairs at M that the computation cannot avoid (1 pair per PSF forward, 2 "
        "with backward), the faster of batched and one-at-a-time into a reused buffer. Every number is the best "
        "of interleaved rounds (7, or 2 at N = 2048) in which the PSF stack and the floor loops take turns.",
        "",
        "| N | M | forward (s) | floor fwd (s) | ratio | fwd+bwd (s) | floor fwd+bwd (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['m']} | {r['forward']:.3f} | {r['floor1']:.3f} | {r['forward'] / r['floor1']:.2f}× | "
            f"{r['forward_backward']:.3f} | {r['floor2']:.3f} | {r['forward_backward'] / r['floor2']:.2f}× |"
        )
    lines += [
        "",
        "The floor loops one by one (fwd+bwd, 2 pairs per PSF). On the CPU torch computes an FFT with `out=` into "
        "a new tensor and copies it, so a loop that lets every FFT allocate its output is faster than the reused "
        "buffer. Against that fastest loop:",
        "",
        "| N | batched (s) | reused buffer (s) | allocating (s) | fwd / fastest | fwd+bwd / fastest |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['batched2']:.3f} | {r['reused2']:.3f} | {r['alloc2']:.3f} | "
            f"{r['forward'] / r['fastest1']:.2f}× | {r['forward_backward'] / r['fastest2']:.2f}× |"
        )
    return "\n".join(lines) + "\n"

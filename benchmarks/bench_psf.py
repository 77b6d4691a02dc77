"""PSF-stack timing against the FFT floor: the bare fft2+ifft2 pairs the computation cannot avoid.

Forward: one FFT pair per PSF; forward+backward: two. The floor is the faster of (a) all pairs batched and
(b) one pair at a time into a reused buffer, at the same padded size, timed in the same run.
"""

from __future__ import annotations

import time

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


def _best(fn, repeat: int) -> float:
    fn()  # warm-up (plans, allocator)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def fft_floor(m: int, count: int, pairs: int, repeat: int) -> tuple[float, float]:
    """(batched, one-at-a-time) seconds for `pairs` × `count` fft2+ifft2 pairs of m × m complex64."""
    x = torch.randn(count, m, m, dtype=torch.complex64)

    def batched() -> None:
        for _ in range(pairs):
            y = torch.fft.fft2(x)
            torch.fft.ifft2(y)

    buf = torch.empty(m, m, dtype=torch.complex64)

    def single() -> None:
        for _ in range(pairs):
            for i in range(count):
                torch.fft.fft2(x[i], out=buf)
                torch.fft.ifft2(buf, out=buf)

    return _best(batched, repeat), _best(single, repeat)


def measure(n: int, repeat: int = 3) -> dict[str, float]:
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

    t_f = _best(fwd, repeat)
    t_fb = _best(fwd_bwd, repeat)
    f1 = min(fft_floor(g.m, count, 1, repeat))
    f2 = min(fft_floor(g.m, count, 2, repeat))
    return {"n": n, "m": g.m, "forward_s": t_f, "forward_backward_s": t_fb, "floor_forward_s": f1,
            "floor_forward_backward_s": f2}


def run(sizes: tuple[int, ...] = (512, 1024, 2048)) -> str:
    """Markdown section with the PSF-stack timings."""
    lines = [
        "## PSF stack (3 wavelengths × 5 depths)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU. Padded grid M = fft_size(1.5 N). "
        "Floor = bare fft2+ifft2 pairs at M (1 pair per PSF forward, 2 with backward), the faster of batched "
        "and one-at-a-time into a reused buffer. Best of 3.",
        "",
        "| N | M | forward (s) | floor fwd (s) | ratio | fwd+bwd (s) | floor fwd+bwd (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        r = measure(n, repeat=3 if n < 2048 else 2)
        lines.append(
            f"| {n} | {r['m']} | {r['forward_s']:.3f} | {r['floor_forward_s']:.3f} | "
            f"{r['forward_s'] / r['floor_forward_s']:.2f}× | {r['forward_backward_s']:.3f} | "
            f"{r['floor_forward_backward_s']:.3f} | {r['forward_backward_s'] / r['floor_forward_backward_s']:.2f}× |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"

"""The 1-D (Hankel) path against the 2-D path at the paper's geometry (specs/sitzmann2018-edof.yaml as a ring
design): PSF stack forward+backward timings in the same run, and the agreement of the two paths per PSF.

`python -m benchmarks.bench_hankel` prints the section; `--accuracy` adds the per-PSF comparison for the
Fresnel lens focused at 1 m, a random ring profile and a 16-level quantized one, with the 2-D path at its own 2 um
pitch and at 1 um (to show it has converged). The 2-D pass at paper scale takes tens of seconds and ~5 GB; the
comparison at 1 um a few minutes and ~8 GB, so `make bench` runs the timing only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lensdesign.fabrication.quantize import quantize
from lensdesign.imaging.reconstruct import WienerReconstruction, default_pad
from lensdesign.imaging.sensor import add_noise, convolve_valid, psf_margin
from lensdesign.optics.hankel import RadialSystem, lens_profile, render_rings
from lensdesign.optics.psf import OpticalSystem
from lensdesign.spec import Spec, load_spec, parse_spec

PAPER = Path(__file__).resolve().parents[1] / "specs" / "sitzmann2018-edof.yaml"


def paper_spec(pitch: float | None = None) -> Spec:
    """The paper's EDOF geometry with the radial parameterization (optionally at another simulation pitch)."""
    data = load_spec(PAPER).model_dump(mode="json")
    data["optics"]["parameterization"] = "radial"
    if pitch is not None:
        data["optics"]["pitch"] = pitch
        data["fabrication"]["min_feature"] = 2e-6  # the rings stay 2 um wide
    return parse_spec(data)


def _best(fn: Callable[[], None], rounds: int) -> float:
    """Best wall-clock seconds of `rounds` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timings(rounds_1d: int = 7) -> dict[str, float]:
    """Seconds: 1-D set-up, 1-D forward and forward+backward (best of rounds), 2-D set-up and one 2-D
    forward+backward (no warm-up: one pass costs tens of seconds), at the paper's geometry, on the calling
    thread count."""
    spec = paper_spec()
    out: dict[str, float] = {}
    t = time.perf_counter()
    radial = RadialSystem(spec)
    out["setup_1d"] = time.perf_counter() - t
    gen = torch.Generator().manual_seed(0)
    profile = torch.rand(radial.rings, generator=gen) * spec.max_height_m
    weight = torch.rand(radial.shape, generator=gen)

    def fwd_1d() -> None:
        with torch.no_grad():
            radial.psf(profile)

    p = profile.clone().requires_grad_()

    def fwd_bwd_1d() -> None:
        p.grad = None
        (radial.psf(p) * weight).sum().backward()

    out["forward_1d"] = _best(fwd_1d, rounds_1d)
    out["forward_backward_1d"] = _best(fwd_bwd_1d, rounds_1d)
    out["nodes"], out["radii"] = float(radial.quad.r.size), float(radial.rho.size)
    print(f"1-D: fwd {out['forward_1d']:.3f} s, fwd+bwd {out['forward_backward_1d']:.3f} s", flush=True)
    t = time.perf_counter()
    system = OpticalSystem(spec)
    out["setup_2d"] = time.perf_counter() - t
    h = render_rings(profile.double(), system.grid.n, system.grid.dx, radial.ring_width).float().requires_grad_()
    t = time.perf_counter()
    (system.psf(h) * weight).sum().backward()
    out["forward_backward_2d"] = time.perf_counter() - t
    out["n"], out["m"] = float(system.grid.n), float(system.grid.m)
    print(f"2-D: fwd+bwd {out['forward_backward_2d']:.1f} s", flush=True)
    return out


def step_breakdown(rounds: int = 3) -> dict[str, float]:
    """Seconds per part of one training step of the paper's spec on the 1-D path (best of rounds): the PSF stack
    at the 5 reference depths and one training depth, image formation of the batch (valid blur + noise), the
    Wiener reconstruction and loss, and the backward pass through all of it."""
    spec = paper_spec()
    radial = RadialSystem(spec)
    t_cfg = spec.training
    p = radial.grid.psf_size
    gen = torch.Generator().manual_seed(0)
    scenes = torch.rand(t_cfg.batch_size, 3, t_cfg.patch_size + 2 * psf_margin(p), t_cfg.patch_size + 2 * psf_margin(p),
                        generator=gen)
    recon = WienerReconstruction(3, spec.reconstruction.gamma_init)
    profile = (torch.rand(radial.rings, generator=gen) * spec.max_height_m).requires_grad_()
    depths = [*radial.depths, 0.8]
    sigma = torch.full((t_cfg.batch_size,), 0.0055)
    parts = {"psf": float("inf"), "image": float("inf"), "wiener": float("inf"), "backward": float("inf"),
             "step": float("inf")}
    for _ in range(rounds + 1):  # the first round warms up
        t0 = time.perf_counter()
        stack = radial.psf(profile, depths=depths)
        t1 = time.perf_counter()
        y = add_noise(convolve_valid(scenes, stack[-1:]), sigma, gen)
        t2 = time.perf_counter()
        x = recon(y, stack[:-1].mean(0), default_pad(p))
        m = psf_margin(p)
        loss = (x - scenes[..., m:-m, m:-m]).square().mean()
        t3 = time.perf_counter()
        profile.grad = None
        recon.zero_grad()
        loss.backward()
        t4 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            parts[k] = min(parts[k], v)
    return parts


def designs(spec: Spec, radial: RadialSystem) -> dict[str, torch.Tensor]:
    """Ring profiles (J,) float64 (m): the Fresnel lens focused at 1 m, a random profile, its 16-level quantization."""
    gen = torch.Generator().manual_seed(1)
    rand = torch.rand(radial.rings, generator=gen, dtype=torch.float64) * spec.max_height_m
    return {
        "Fresnel lens, 1 m": lens_profile(spec, radial.rings, radial.ring_width, 1.0),
        "random rings": rand,
        "16 levels": torch.as_tensor(quantize(rand.numpy(), spec.max_height_m, 16)),
    }


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.double().flatten(2), b.double().flatten(2)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).numpy()


def accuracy() -> list[dict[str, object]]:
    """Per-PSF relative L2 of the 1-D stack against the 2-D path at 2 um and 1 um, and of 2 um against 1 um."""
    spec = paper_spec()
    radial = RadialSystem(spec)
    rows: list[dict[str, object]] = []
    stacks: dict[str, dict[str, torch.Tensor]] = {}
    for name, prof in designs(spec, radial).items():
        with torch.no_grad():
            stacks[name] = {"1d": radial.psf(prof.float())}
    for pitch, key in ((2e-6, "2d_2um"), (1e-6, "2d_1um")):
        system = OpticalSystem(paper_spec(pitch))
        for name, prof in designs(spec, radial).items():
            t = time.perf_counter()
            with torch.no_grad():
                stacks[name][key] = system.psf(render_rings(prof, system.grid.n, system.grid.dx, radial.ring_width).float())
            print(f"2-D at {pitch * 1e6:.0f} um, {name}: {time.perf_counter() - t:.0f} s", flush=True)
        del system
    for name, s in stacks.items():
        rows.append({
            "design": name,
            "vs_2um": _rel_l2(s["1d"], s["2d_2um"]).max(),
            "vs_1um": _rel_l2(s["1d"], s["2d_1um"]).max(),
            "2um_vs_1um": _rel_l2(s["2d_2um"], s["2d_1um"]).max(),
            "energy_1d": s["1d"].sum((-1, -2)).mean().item(),
        })
    return rows


def run(with_accuracy: bool = False, threads: int = 1) -> str:
    """Markdown section: 1-D vs 2-D PSF stack at the paper's geometry and a training step's parts on the 1-D
    path, on `threads` threads (training's default is 1 on the CPU); the per-PSF agreement if asked."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _section(with_accuracy)
    finally:
        torch.set_num_threads(before)


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n > 1 else "")


def _section(with_accuracy: bool) -> str:
    r = timings()
    step = step_breakdown()
    ratio = r["forward_backward_2d"] / r["forward_backward_1d"]
    lines = [
        "## 1-D (Hankel) path at the paper's geometry",
        "",
        f"specs/sitzmann2018-edof.yaml as a ring design (5 mm, 35.5 mm, 2 um rings, 3 wavelengths × 5 depths, 201² "
        f"window of 6 um pixels), torch {torch.__version__}, {_threads()}, CPU. 1-D: "
        f"{int(r['nodes'])} quadrature nodes × {int(r['radii'])} sensor radii, best of 7; 2-D: N = {int(r['n'])}, "
        f"M = {int(r['m'])}, one pass.",
        "",
        "| path | set-up (s) | forward (s) | forward+backward (s) |",
        "|---|---|---|---|",
        f"| 1-D (Hankel) | {r['setup_1d']:.1f} | {r['forward_1d']:.3f} | {r['forward_backward_1d']:.3f} |",
        f"| 2-D (FFT) | {r['setup_2d']:.1f} | | {r['forward_backward_2d']:.1f} |",
        "",
        f"PSF stack forward+backward: the 1-D path is {ratio:.0f}× faster.",
        "",
        "One training step of the paper's spec on the 1-D path (batch 4 of 192² patches, PSFs at the 5 reference "
        "depths and one training depth, Wiener with the mean reference PSF; best of 3):",
        "",
        "| PSF stack (s) | image formation (s) | Wiener + loss (s) | backward, all (s) | step (s) |",
        "|---|---|---|---|---|",
        f"| {step['psf']:.3f} | {step['image']:.3f} | {step['wiener']:.3f} | {step['backward']:.3f} | "
        f"{step['step']:.3f} |",
    ]
    if with_accuracy:
        lines += [
            "",
            "Agreement per PSF (largest relative L2 over the 15 PSFs) with the 2-D path on the same rings:",
            "",
            "| design | 1-D vs 2-D at 2 um | 1-D vs 2-D at 1 um | 2-D: 2 um vs 1 um | 1-D power in window |",
            "|---|---|---|---|---|",
        ]
        for row in accuracy():
            lines.append(f"| {row['design']} | {row['vs_2um']:.4f} | {row['vs_1um']:.4f} | {row['2um_vs_1um']:.4f} | "
                         f"{row['energy_1d']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(with_accuracy="--accuracy" in sys.argv[1:]))

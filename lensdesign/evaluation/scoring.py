"""Held-out scoring of a height map: PSNR / SSIM per depth with a (tuned) Wiener filter, or a run's learned
reconstruction (Wiener + U-Net).

`Evaluator(spec, device)` is the scoring bench of one spec on one device: it builds the optical pipeline and the
validation scenes on first use and keeps them for its own lifetime (nothing is cached at module level), and runs
CPU evaluation single-threaded inside a context that restores torch's thread count.

* `Evaluator.validation_set(count=None, seed=0)` → (B, C, H + P − 1, W + P − 1) held-out scenes, linear in
  [0, 1], *with* the PSF margin: H × W is the sensor resolution (× `sensor.superres_factor` k for
  super-resolution: the scenes are on the fine grid) and P the PSF window, so a 'valid' blur gives H × W images
  whose ground truth is the centre crop. seed 0: fixed crops; other seeds: random crops.
* `Evaluator.evaluate_height(height_m, *, gamma=None, seed=0, images=None, recon=None)` → dict with
  `mean_psnr_db`, `mean_ssim`, `per_depth` [{depth_m, psnr_db, ssim}] (depth_m None for infinity) and `gamma`.
  With `gamma=None` the regularizer is tuned (golden-section search over log γ) to maximize the mean PSNR on
  the same scenes with an independent noise draw; the reported numbers use a fixed noise draw shared by every
  height map evaluated with the same seed (common random numbers: differences between designs are not noise).
  `recon`: a learned reconstruction (`lensdesign.imaging.reconstruct.UNetReconstruction`, e.g. from
  `Design.reconstruction()`); its learned γ is used unless `gamma` is given (never tuned: the U-Net was trained
  with that γ).
* `Evaluator.simulate_examples(height_m, gamma, depth_m, image, seed=0, recon=None)` → (sensor, recon), numpy
  (H, W, C) in [0, 1] (C = one channel per wavelength; `lensdesign.imaging.scenes.rgb_from_channels` makes RGB),
  for figures; for super-resolution the sensor image is shown on the fine grid (each pixel repeated k × k).

The module-level functions `validation_set`, `evaluate_height` and `simulate_examples` take the spec (and
device) first and use a fresh `Evaluator`: convenient for one call; hold an `Evaluator` for many.

Evaluation noise: the read noise σ is the spec's fixed value or the middle of its range; shot noise and bit
depth as in the spec. The reconstruction deconvolves with the mean PSF over the task's depths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import torch

from lensdesign.evaluation.tuning import LOG10_GAMMA_RANGE, golden_max
from lensdesign.imaging.reconstruct import WienerPlan, WienerReconstruction, upsample
from lensdesign.imaging.scenes import fixed_crops, load_images, random_crops
from lensdesign.imaging.sensor import convolve_same, eval_read_noise, integrate_pixels, psnr, ssim
from lensdesign.spec import Spec
from lensdesign.system import Pipeline

_NOISE_SEED = 7919  # eval noise: generator seeded from (seed, depth index); tuning noise adds this offset

Gamma = float | list[float] | torch.Tensor


@contextmanager
def single_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run CPU evaluation with one intra-op thread (restored afterwards).

    Evaluation is many small FFTs: extra threads gain little, a busy core stalls them badly, and one thread
    makes the figures bit-reproducible, so `evaluate_height` in another process repeats summary.json exactly.
    """
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def scene_shape(spec: Spec, psf_size: int) -> tuple[int, int]:
    """(H + P − 1, W + P − 1): a validation scene for the output resolution H × W (sensor pixels × superres
    factor) and PSF window P (pixels of the same grid)."""
    k = spec.sensor.superres_factor
    h, w = spec.sensor.resolution
    return h * k + psf_size - 1, w * k + psf_size - 1


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The evaluation noise generator of draw `seed` at depth index `index` (common random numbers)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1))


def as_height(height_m: Any, device: torch.device) -> torch.Tensor:
    """A height map (N, N) in metres as a float32 tensor on `device` (detached)."""
    if isinstance(height_m, torch.Tensor):
        return height_m.detach().to(device, torch.float32)
    return torch.as_tensor(np.asarray(height_m), dtype=torch.float32, device=device)


def learned_recon(recon: WienerReconstruction | None) -> WienerReconstruction | None:
    """A learned reconstruction worth running (one with a network after the Wiener filter), in eval mode."""
    if recon is None or not recon.network_parameters():
        return None
    return recon.eval()


def crop_to_factor(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Crop images (…, H, W) at the bottom / right to multiples of the super-resolution factor."""
    h, w = img.shape[-2:]
    return img[..., :h - h % factor, :w - w % factor]


def image_through(pipe: Pipeline, clean_fine: torch.Tensor, ref: torch.Tensor, gamma: Any,
                  recon: WienerReconstruction | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, WienerPlan]:
    """(sensor image, reconstruction, plan) of a blurred fine-grid image: pixel integration, evaluation noise,
    Wiener with `gamma` (+ the U-Net of `recon`)."""
    s = pipe.spec.sensor
    clean = integrate_pixels(clean_fine, pipe.factor)
    sigma = torch.full((1,), eval_read_noise(s.read_noise))
    y = pipe.noisy(clean, sigma, noise_generator(seed, 0), differentiable=False)
    g = torch.as_tensor(gamma, dtype=torch.float32)
    plan = WienerPlan(y, ref, factor=pipe.factor)
    gv: float | torch.Tensor = g if g.dim() else float(g)
    net = learned_recon(recon)
    x = plan.solve(gv) if net is None else net.finish(plan, gv)
    return y, x, plan


class Bench:
    """Sensor images of fixed scenes at the evaluation depths for one height map, ready to reconstruct with the
    Wiener filter (any γ) or, when `recon` is given, with that learned reconstruction (Wiener + U-Net)."""

    def __init__(self, evaluator: Evaluator, height_m: Any, seed: int = 0, images: torch.Tensor | None = None,
                 recon: WienerReconstruction | None = None) -> None:
        pipe = evaluator.pipe
        spec = evaluator.spec
        self.pipe = pipe
        self.spec = spec
        self.recon = recon
        dev = pipe.device
        scenes = (evaluator.validation_set(seed=seed) if images is None else images).to(dev, torch.float32)
        if scenes.dim() == 3:
            scenes = scenes[None]
        self.target = pipe.target(scenes)
        with torch.no_grad():
            stack, _ = pipe.psfs(as_height(height_m, dev))
            self.ref = stack.mean(0)
            self.sigma = torch.full((scenes.shape[0],), eval_read_noise(spec.sensor.read_noise))
            self.depths = pipe.task.eval_depths()
            self.seed = seed
            self.cleans = [pipe.irradiance(scenes, stack[i:i + 1]) for i in range(len(self.depths))]
            self.plans = self._plans(seed)
        self._tune_plans: list[WienerPlan] | None = None

    def _plans(self, seed: int) -> list[WienerPlan]:
        """Wiener plans of the sensor images with noise draw `seed` (one generator per depth)."""
        return [WienerPlan(self.pipe.noisy(c, self.sigma, noise_generator(seed, i), differentiable=False), self.ref,
                           factor=self.pipe.factor) for i, c in enumerate(self.cleans)]

    @property
    def tune_plans(self) -> list[WienerPlan]:
        """Plans of a second, independent noise draw for tuning γ (made when first needed)."""
        if self._tune_plans is None:
            with torch.no_grad():
                self._tune_plans = self._plans(self.seed + _NOISE_SEED)
        return self._tune_plans

    def reconstruct(self, plan: WienerPlan, gamma: float | torch.Tensor) -> torch.Tensor:
        """Reconstruction of one plan's images with γ: Wiener, then the U-Net of `recon` if any."""
        if self.recon is None:
            return plan.solve(gamma)
        return self.recon.finish(plan, gamma)

    def psnr_per_depth(self, gamma: float | torch.Tensor, tuning: bool = False) -> list[float]:
        """Mean PSNR (dB) over the scenes at each evaluation depth."""
        plans = self.tune_plans if tuning else self.plans
        with torch.no_grad():
            return [float(psnr(self.reconstruct(p, gamma), self.target).mean()) for p in plans]

    def tune_gamma(self, iters: int = 22) -> tuple[float, float]:
        """(γ, mean PSNR on the tuning draw): golden-section search of log10 γ over LOG10_GAMMA_RANGE."""
        return golden_max(lambda lg: float(np.mean(self.psnr_per_depth(10.0**lg, tuning=True))), *LOG10_GAMMA_RANGE,
                          iters=iters, grid=9, transform=lambda lg: 10.0**lg)

    def report(self, gamma: float | torch.Tensor | None, upsampled: bool = False,
               with_ssim: bool = True) -> dict[str, Any]:
        """Per-depth PSNR and SSIM on the evaluation draw for `gamma`; `upsampled`: of the sensor images
        upsampled to the output grid without any deconvolution (the bicubic baseline; `gamma` unused);
        `with_ssim` False leaves SSIM out (None)."""
        per = []
        with torch.no_grad():
            for z, p in zip(self.depths, self.plans, strict=True):
                x = p.upsampled if upsampled or gamma is None else self.reconstruct(p, gamma)
                per.append({"depth_m": None if math.isinf(z) else float(z),
                            "psnr_db": round(float(psnr(x, self.target).mean()), 4),
                            "ssim": round(float(np.mean(ssim(x, self.target))), 5) if with_ssim else None})
        g = gamma.detach().cpu().tolist() if isinstance(gamma, torch.Tensor) else gamma
        return {"mean_psnr_db": round(float(np.mean([d["psnr_db"] for d in per])), 4),
                "mean_ssim": round(float(np.mean([d["ssim"] for d in per])), 5) if with_ssim else None,
                "worst_psnr_db": round(float(min(d["psnr_db"] for d in per)), 4),
                "per_depth": per, "gamma": None if upsampled else g}


class Evaluator:
    """The scoring bench of one spec on one device (see the module docstring). The optical pipeline is built on
    first use (or taken from `pipe`) and the validation scenes are kept per (count, seed), for this object's
    lifetime only."""

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", pipe: Pipeline | None = None) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self._pipe = pipe
        self._scenes: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def pipe(self) -> Pipeline:
        """The optical pipeline (precomputed transfer functions and source waves) of the spec on this device."""
        if self._pipe is None:
            self._pipe = Pipeline(self.spec, self.device)
        return self._pipe

    def on_grid(self) -> Evaluator:
        """An evaluator of the same spec, device and scenes on the 2-D path: for elements that are not ring designs
        (the cubic plate) when this one's pipeline is on the 1-D ring path; this evaluator itself otherwise."""
        if not self.pipe.radial:
            return self
        ev = Evaluator(self.spec, self.device, Pipeline(self.spec, self.device, radial=False))
        ev._scenes = self._scenes
        return ev

    def threads(self) -> AbstractContextManager[None]:
        """Context: one CPU thread while evaluating (torch's thread count restored on exit)."""
        return single_thread(self.device)

    def validation_set(self, count: int | None = None, seed: int = 0) -> torch.Tensor:
        """Held-out scenes (B, C, H + P − 1, W + P − 1), linear intensity in [0, 1], margin included.

        `count` defaults to `training.validation_images`; seed 0 gives fixed crops, other seeds random crops.
        """
        from lensdesign.optics.psf import plan_grid

        spec = self.spec
        count = spec.training.validation_images if count is None else count
        if (count, seed) not in self._scenes:
            sh, sw = scene_shape(spec, plan_grid(spec).psf_size)
            imgs = load_images(spec.training.images, spec.wavelengths, max(sh, sw)).validation
            if seed == 0:
                out = fixed_crops(imgs, count, max(sh, sw))
            else:
                out = random_crops(imgs, count, max(sh, sw), torch.Generator().manual_seed(seed))
            self._scenes[(count, seed)] = out[..., :sh, :sw].contiguous()
        return self._scenes[(count, seed)].clone()

    def bench(self, height_m: Any, seed: int = 0, images: torch.Tensor | None = None,
              recon: WienerReconstruction | None = None) -> Bench:
        """Sensor images of the validation scenes (or `images`) through `height_m` (N, N, m), noise draw `seed`."""
        return Bench(self, height_m, seed, images, recon)

    def evaluate_height(self, height_m: Any, *, gamma: Gamma | None = None, seed: int = 0,
                        images: torch.Tensor | None = None, recon: WienerReconstruction | None = None,
                        with_ssim: bool = True) -> dict[str, Any]:
        """PSNR / SSIM of a height map (N, N) in metres at every evaluation depth (see the module docstring).

        `gamma`: the Wiener regularizer (scalar or one per channel); None tunes it (or, with a U-Net `recon`,
        takes its learned γ). `images`: scenes with the PSF margin (B, C, H + P − 1, W + P − 1) as from
        `validation_set`; default the held-out validation set. `recon`: a learned reconstruction with a U-Net
        (moved to this evaluator's device). `with_ssim` False: PSNR only (SSIM None, faster).
        """
        with self.threads():
            net = learned_recon(recon)
            if net is not None:
                net = net.to(self.device)
            bench = self.bench(height_m, seed, images, recon=net)
            tuned = gamma is None and net is None
            if tuned:
                g, _ = bench.tune_gamma()
                gamma_t: float | torch.Tensor = g
            else:
                src = net.gamma.detach() if gamma is None and net is not None else gamma
                gamma_t = torch.as_tensor(src, dtype=torch.float32, device=bench.pipe.device)
                if gamma_t.dim() == 0:
                    gamma_t = float(gamma_t)
            out = bench.report(gamma_t, with_ssim=with_ssim)
        out["gamma_tuned"] = tuned
        out["reconstruction"] = "wiener" if net is None else net.kind
        return out

    def simulate_examples(self, height_m: Any, gamma: Gamma, depth_m: float, image: Any, seed: int = 0,
                          recon: WienerReconstruction | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sensor image and reconstruction of one scene at one depth (m), numpy (H, W, C) in [0, 1].

        `image`: linear intensity, (C, H, W) tensor or (H, W, C) array, one channel per wavelength; the output
        has the same size (the scene is reflected at its borders for the blur; for super-resolution it is cropped
        to a multiple of the factor k, and the sensor image, k times coarser, is shown with each pixel repeated
        k × k). Noise: evaluation σ, seeded by `seed`. `recon`: a learned reconstruction with a U-Net (else
        Wiener with γ). Runs on this evaluator's pipeline, which must be on the CPU (as `simulate_examples`).
        """
        return self.simulate_examples_at(height_m, gamma, [depth_m], image, seed, recon)[0]

    def simulate_examples_at(self, height_m: Any, gamma: Gamma, depths_m: list[float], image: Any, seed: int = 0,
                             recon: WienerReconstruction | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """`simulate_examples` at several depths (m), the PSFs computed once: [(sensor, reconstruction)] per depth."""
        pipe = self.pipe
        img = image.detach().cpu().float() if isinstance(image, torch.Tensor) else torch.from_numpy(
            np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0).copy())
        if img.dim() == 3:
            img = img[None]
        img = crop_to_factor(img, pipe.factor)
        to_np = lambda t: np.moveaxis(t[0].clamp(0, 1).cpu().numpy(), 0, -1).astype(np.float32)  # noqa: E731
        out = []
        with self.threads(), torch.no_grad():
            ref, at = pipe.psfs(as_height(height_m, pipe.device), [float(z) for z in depths_m])
            for i in range(len(depths_m)):
                y, x, _ = image_through(pipe, convolve_same(img, at[i:i + 1]), ref.mean(0), gamma,
                                        None if recon is None else recon.cpu(), seed)
                out.append((to_np(upsample(y, pipe.factor, "nearest")), to_np(x)))
        return out


def validation_set(spec: Spec, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """`Evaluator(spec).validation_set(count, seed)`."""
    return Evaluator(spec).validation_set(count, seed)


def evaluate_height(spec: Spec, height_m: Any, *, gamma: Gamma | None = None, device: torch.device | str = "cpu",
                    seed: int = 0, images: torch.Tensor | None = None,
                    recon: WienerReconstruction | None = None) -> dict[str, Any]:
    """`Evaluator(spec, device).evaluate_height(height_m, ...)` (see the module docstring)."""
    return Evaluator(spec, device).evaluate_height(height_m, gamma=gamma, seed=seed, images=images, recon=recon)


def simulate_examples(spec: Spec, height_m: Any, gamma: Gamma, depth_m: float, image: Any, seed: int = 0,
                      recon: WienerReconstruction | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`Evaluator(spec, "cpu").simulate_examples(...)`: one scene at one depth through a height map, on the CPU."""
    return Evaluator(spec, "cpu").simulate_examples(height_m, gamma, depth_m, image, seed, recon)

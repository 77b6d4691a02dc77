"""Image quality of a height map on held-out images: PSNR / SSIM per depth with a (tuned) Wiener filter, or a
run's learned reconstruction (Wiener + U-Net).

Public API (stable; used by `optimize`, `simulate` and the report):

* `validation_set(spec, count=None, seed=0)` → (B, C, H + P − 1, W + P − 1) held-out scenes, linear in [0, 1],
  *with* the PSF margin: H × W is the sensor resolution (× `sensor.superres_factor` k for super-resolution: the
  scenes are on the fine grid) and P the PSF window, so a 'valid' blur gives H × W images whose ground truth is
  the centre crop. seed 0: fixed crops; other seeds: random crops.
* `evaluate_height(spec, height_m, *, gamma=None, device="cpu", seed=0, images=None, recon=None)` → dict with
  `mean_psnr_db`, `mean_ssim`, `per_depth` [{depth_m, psnr_db, ssim}] (depth_m None for infinity) and `gamma`.
  With `gamma=None` the regularizer is tuned (golden-section search over log γ) to maximize the mean PSNR on
  the same scenes with an independent noise draw; the reported numbers use a fixed noise draw shared by every
  height map evaluated with the same seed (common random numbers: differences between designs are not noise).
  `recon`: a learned reconstruction (`lensdesign.imaging.reconstruct.UNetReconstruction`, e.g. from
  `load_reconstruction(run)`); its learned γ is used unless `gamma` is given (never tuned: the U-Net was trained
  with that γ).
* `simulate_examples(spec, height_m, gamma, depth_m, image, seed=0, recon=None)` → (sensor, recon), numpy
  (H, W, C) in [0, 1] (C = one channel per wavelength; `lensdesign.imaging.scenes.rgb_from_channels` makes RGB),
  for figures; for super-resolution the sensor image is shown on the fine grid (each pixel repeated k × k).
* `summarize(...)`: the end-of-run comparison of the design against the Fresnel lens and, for edof / focus, a
  cubic phase plate whose strength is tuned, for superres bicubic upsampling of the Fresnel lens's sensor image;
  each lens continuous and quantized, each with its own tuned γ (`summary.json`).

Evaluation noise: the read noise σ is the spec's fixed value or the middle of its range; shot noise and bit
depth as in the spec. The reconstruction deconvolves with the mean PSF over the task's depths.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from lensdesign.imaging.reconstruct import WienerPlan, WienerReconstruction, upsample
from lensdesign.imaging.scenes import fixed_crops, load_images, random_crops
from lensdesign.imaging.sensor import add_noise, convolve_same, eval_read_noise, integrate_pixels, psnr, ssim
from lensdesign.spec import Spec
from lensdesign.system import Pipeline

LOG10_GAMMA_RANGE = (-7.0, 1.0)
_NOISE_SEED = 7919  # eval noise: generator seeded from (seed, depth index); tuning noise adds this offset

_PIPELINES: dict[tuple[str, str], Pipeline] = {}
_VALSETS: dict[tuple, torch.Tensor] = {}


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


def _single_threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread(kwargs.get("device", "cpu")):
            return fn(*args, **kwargs)

    return wrapper


def _key(spec: Spec) -> str:
    return spec.model_dump_json(exclude={"training": {"steps", "device", "max_minutes", "checkpoint_minutes",
                                                      "learning_rate", "batch_size", "seed"}})


def pipeline_for(spec: Spec, device: torch.device | str = "cpu") -> Pipeline:
    """A cached `Pipeline` (optical precomputation) for `spec` on `device`."""
    k = (_key(spec), str(torch.device(device)))
    if k not in _PIPELINES:
        if len(_PIPELINES) > 4:
            _PIPELINES.clear()
        _PIPELINES[k] = Pipeline(spec, device)
    return _PIPELINES[k]


def scene_shape(spec: Spec, psf_size: int) -> tuple[int, int]:
    """(H + P − 1, W + P − 1): a validation scene for the output resolution H × W (sensor pixels × superres
    factor) and PSF window P (pixels of the same grid)."""
    k = spec.sensor.superres_factor
    h, w = spec.sensor.resolution
    return h * k + psf_size - 1, w * k + psf_size - 1


def validation_set(spec: Spec, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """Held-out scenes (B, C, H + P − 1, W + P − 1), linear intensity in [0, 1], margin included (see module doc).

    `count` defaults to `training.validation_images`; seed 0 gives fixed crops, other seeds random crops.
    """
    from lensdesign.optics.psf import plan_grid

    count = spec.training.validation_images if count is None else count
    p = plan_grid(spec).psf_size
    sh, sw = scene_shape(spec, p)
    k = (spec.training.images, tuple(spec.wavelengths), sh, sw, count, seed)
    if k not in _VALSETS:
        imgs = load_images(spec.training.images, spec.wavelengths, max(sh, sw)).validation
        if seed == 0:
            out = fixed_crops(imgs, count, max(sh, sw))
        else:
            out = random_crops(imgs, count, max(sh, sw), torch.Generator().manual_seed(seed))
        _VALSETS[k] = out[..., :sh, :sw].contiguous()
    return _VALSETS[k].clone()


def _gen(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1))


def _as_height(height_m: Any, device: torch.device) -> torch.Tensor:
    if isinstance(height_m, torch.Tensor):
        return height_m.detach().to(device, torch.float32)
    return torch.as_tensor(np.asarray(height_m), dtype=torch.float32, device=device)


class Bench:
    """Sensor images of fixed scenes at the evaluation depths for one height map, ready to reconstruct with the
    Wiener filter (any γ) or, when `recon` is given, with that learned reconstruction (Wiener + U-Net)."""

    def __init__(self, spec: Spec, height_m: Any, device: torch.device | str = "cpu", seed: int = 0,
                 images: torch.Tensor | None = None, recon: WienerReconstruction | None = None) -> None:
        pipe = pipeline_for(spec, device)
        self.pipe = pipe
        self.spec = spec
        self.recon = recon
        dev = pipe.device
        scenes = (validation_set(spec, seed=seed) if images is None else images).to(dev, torch.float32)
        if scenes.dim() == 3:
            scenes = scenes[None]
        self.target = pipe.target(scenes)
        with torch.no_grad():
            stack, _ = pipe.psfs(_as_height(height_m, dev))
            self.ref = stack.mean(0)
            sigma = torch.full((scenes.shape[0],), eval_read_noise(spec.sensor.read_noise))
            s = spec.sensor
            self.depths = pipe.task.eval_depths()
            self.plans: list[WienerPlan] = []
            self.tune_plans: list[WienerPlan] = []
            k = pipe.factor
            for i in range(len(self.depths)):
                clean = pipe.irradiance(scenes, stack[i:i + 1])
                y = add_noise(clean, sigma, _gen(seed, i), s.full_well, s.bit_depth, differentiable=False)
                yt = add_noise(clean, sigma, _gen(seed + _NOISE_SEED, i), s.full_well, s.bit_depth, differentiable=False)
                self.plans.append(WienerPlan(y, self.ref, factor=k))
                self.tune_plans.append(WienerPlan(yt, self.ref, factor=k))

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

    def report(self, gamma: float | torch.Tensor | None, upsampled: bool = False) -> dict[str, Any]:
        """Per-depth PSNR and SSIM on the evaluation draw for `gamma`; `upsampled`: of the sensor images
        upsampled to the output grid without any deconvolution (the bicubic baseline; `gamma` unused)."""
        per = []
        with torch.no_grad():
            for z, p in zip(self.depths, self.plans, strict=True):
                x = p.upsampled if upsampled or gamma is None else self.reconstruct(p, gamma)
                per.append({"depth_m": None if math.isinf(z) else float(z),
                            "psnr_db": round(float(psnr(x, self.target).mean()), 4),
                            "ssim": round(float(np.mean(ssim(x, self.target))), 5)})
        g = gamma.detach().cpu().tolist() if isinstance(gamma, torch.Tensor) else gamma
        return {"mean_psnr_db": round(float(np.mean([d["psnr_db"] for d in per])), 4),
                "mean_ssim": round(float(np.mean([d["ssim"] for d in per])), 5),
                "worst_psnr_db": round(float(min(d["psnr_db"] for d in per)), 4),
                "per_depth": per, "gamma": None if upsampled else g}


def golden_max(f: Callable[[float], float], lo: float, hi: float, iters: int = 20, grid: int = 0,
               transform: Callable[[float], float] | None = None) -> tuple[float, float]:
    """Maximize a (roughly unimodal) f on [lo, hi]: optional coarse grid, then golden-section search.

    Returns (transform(x*), f(x*)).
    """
    tf = transform or (lambda v: v)
    if grid > 1:
        xs = np.linspace(lo, hi, grid)
        vals = [f(float(x)) for x in xs]
        i = int(np.argmax(vals))
        lo, hi = float(xs[max(0, i - 1)]), float(xs[min(grid - 1, i + 1)])
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    x, fx = (c, fc) if fc >= fd else (d, fd)
    return tf(x), fx


def _learned_recon(recon: WienerReconstruction | None) -> WienerReconstruction | None:
    """A learned reconstruction worth running (one with a network after the Wiener filter), in eval mode."""
    if recon is None or not recon.network_parameters():
        return None
    return recon.eval()


@_single_threaded
def evaluate_height(spec: Spec, height_m: Any, *, gamma: float | list[float] | torch.Tensor | None = None,
                    device: torch.device | str = "cpu", seed: int = 0, images: torch.Tensor | None = None,
                    recon: WienerReconstruction | None = None) -> dict[str, Any]:
    """PSNR / SSIM of a height map (N, N) in metres at every evaluation depth (see the module docstring).

    `gamma`: the Wiener regularizer (scalar or one per channel); None tunes it (or, with a U-Net `recon`, takes
    its learned γ). `images`: scenes with the PSF margin (B, C, H + P − 1, W + P − 1) as from `validation_set`;
    default the held-out validation set. `recon`: a learned reconstruction with a U-Net (moved to `device`).
    """
    net = _learned_recon(recon)
    if net is not None:
        net = net.to(device)
    bench = Bench(spec, height_m, device, seed, images, recon=net)
    tuned = gamma is None and net is None
    if tuned:
        g, _ = bench.tune_gamma()
        gamma_t: float | torch.Tensor = g
    else:
        src = net.gamma.detach() if gamma is None and net is not None else gamma
        gamma_t = torch.as_tensor(src, dtype=torch.float32, device=bench.pipe.device)
        if gamma_t.dim() == 0:
            gamma_t = float(gamma_t)
    out = bench.report(gamma_t)
    out["gamma_tuned"] = tuned
    out["reconstruction"] = "wiener" if net is None else net.kind
    return out


def crop_to_factor(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Crop images (…, H, W) at the bottom / right to multiples of the super-resolution factor."""
    h, w = img.shape[-2:]
    return img[..., :h - h % factor, :w - w % factor]


def _image_through(pipe: Pipeline, clean_fine: torch.Tensor, ref: torch.Tensor, gamma: Any,
                   recon: WienerReconstruction | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, WienerPlan]:
    """(sensor image, reconstruction, plan) of a blurred fine-grid image: pixel integration, evaluation noise,
    Wiener with `gamma` (+ the U-Net of `recon`)."""
    s = pipe.spec.sensor
    clean = integrate_pixels(clean_fine, pipe.factor)
    sigma = torch.full((1,), eval_read_noise(s.read_noise))
    y = add_noise(clean, sigma, _gen(seed, 0), s.full_well, s.bit_depth, differentiable=False)
    g = torch.as_tensor(gamma, dtype=torch.float32)
    plan = WienerPlan(y, ref, factor=pipe.factor)
    gv: float | torch.Tensor = g if g.dim() else float(g)
    net = _learned_recon(recon)
    x = plan.solve(gv) if net is None else net.finish(plan, gv)
    return y, x, plan


@_single_threaded
def simulate_examples(spec: Spec, height_m: Any, gamma: float | list[float] | torch.Tensor, depth_m: float,
                      image: Any, seed: int = 0, recon: WienerReconstruction | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sensor image and reconstruction of one scene at one depth, numpy (H, W, C) in [0, 1].

    `image`: linear intensity, (C, H, W) tensor or (H, W, C) array, one channel per wavelength; the output has
    the same size (the scene is reflected at its borders for the blur; for super-resolution it is cropped to a
    multiple of the factor k, and the sensor image, k times coarser, is shown with each pixel repeated k × k).
    Noise: evaluation σ, seeded by `seed`. `recon`: a learned reconstruction with a U-Net (else Wiener with γ).
    """
    pipe = pipeline_for(spec, "cpu")
    img = image.detach().cpu().float() if isinstance(image, torch.Tensor) else torch.from_numpy(
        np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0).copy())
    if img.dim() == 3:
        img = img[None]
    img = crop_to_factor(img, pipe.factor)
    with torch.no_grad():
        ref, at = pipe.psfs(_as_height(height_m, pipe.device), [float(depth_m)])
        y, x, _ = _image_through(pipe, convolve_same(img, at), ref.mean(0), gamma,
                                 None if recon is None else recon.cpu(), seed)
        y = upsample(y, pipe.factor, "nearest")
    to_np = lambda t: np.moveaxis(t[0].clamp(0, 1).cpu().numpy(), 0, -1).astype(np.float32)  # noqa: E731
    return to_np(y), to_np(x)


# ---- the end-of-run comparison ---------------------------------------------------------------------------------

def defocus_waves(spec: Spec) -> float:
    """Largest defocus W020 = (D/2)²·ΔΦ/2 over the depth range for a lens focused at the focus depth (waves)."""
    a, b = spec.diopter_range
    pf = 0.0 if math.isinf(spec.focus_depth_m) else 1.0 / spec.focus_depth_m
    return (spec.optics.aperture / 2) ** 2 * max(abs(a - pf), abs(b - pf)) / 2 / spec.design_wavelength_m


def tune_cubic(spec: Spec, n: int, device: torch.device | str = "cpu", seed: int = 0,
               log: Callable[[str], None] | None = None) -> tuple[float, float]:
    """Cubic strength α (waves) that maximizes the γ-tuned mean PSNR on the tuning noise draw.

    A coarse geometric grid of α around the largest defocus W020 (0.5 … 6 × W020, at least 0.5 … 12 waves),
    then a golden-section refinement of log α between the best point's neighbours. Returns (α, tuning PSNR).
    """
    from lensdesign.baselines import cubic_height

    w = max(defocus_waves(spec), 1.0)
    grid = np.geomspace(0.5 * w, 6.0 * w, 8)
    cache: dict[float, float] = {}

    def score(log_a: float) -> float:
        a = float(np.exp(log_a))
        key = round(log_a, 6)
        if key not in cache:
            bench = Bench(spec, cubic_height(spec, n, a).float(), device, seed)
            cache[key] = bench.tune_gamma(iters=14)[1]
            if log:
                log(f"  cubic α = {a:.3g} waves: {cache[key]:.3f} dB (tuning draw)")
        return cache[key]

    vals = [score(float(np.log(a))) for a in grid]
    i = int(np.argmax(vals))
    lo, hi = float(np.log(grid[max(0, i - 1)])), float(np.log(grid[min(len(grid) - 1, i + 1)]))
    a, v = golden_max(score, lo, hi, iters=5, transform=lambda x: float(np.exp(x)))
    if v < vals[i]:
        a, v = float(grid[i]), vals[i]
    return a, v


@_single_threaded
def summarize(spec: Spec, height_m: Any, learned_gamma: list[float] | None = None, device: torch.device | str = "cpu",
              seed: int = 0, log: Callable[[str], None] | None = None,
              recon: WienerReconstruction | None = None) -> dict[str, Any]:
    """Design vs baselines on held-out images at every evaluation depth, continuous and quantized to
    `fabrication.levels` — the content of RUN/summary.json.

    The design uses its Wiener filter with a tuned γ, or, with a U-Net `recon`, the learned reconstruction (its
    learned γ and U-Net; the Wiener-only figure with a tuned γ is kept under `wiener_only`). Baselines, each with
    its own tuned γ: the Fresnel lens (Wiener filter, no U-Net: a U-Net trained for the Fresnel lens would cost
    another training run); edof / focus: a cubic phase plate of tuned strength; superres: bicubic upsampling of
    the Fresnel lens's sensor image (no deconvolution).
    """
    from lensdesign.baselines import cubic_height, fresnel_height
    from lensdesign.fabrication.quantize import quantize

    pipe = pipeline_for(spec, device)
    n = pipe.optics.grid.n
    mh, levels = spec.max_height_m, spec.fabrication.levels
    h = _as_height(height_m, torch.device("cpu"))
    net = _learned_recon(recon)
    superres = spec.task == "superres"

    def q(x: torch.Tensor) -> torch.Tensor:
        return quantize(x.float(), mh, levels)  # type: ignore[return-value]

    design = evaluate_height(spec, h, device=device, seed=seed, recon=net)
    if net is not None:
        w = evaluate_height(spec, h, device=device, seed=seed)
        design["wiener_only"] = {k: w[k] for k in ("mean_psnr_db", "mean_ssim", "worst_psnr_db", "gamma")}
    elif learned_gamma is not None:
        design["learned_gamma"] = learned_gamma
        design["mean_psnr_db_learned_gamma"] = round(float(np.mean(
            Bench(spec, h, device, seed).psnr_per_depth(torch.as_tensor(learned_gamma, device=pipe.device)))), 4)
    design_q = evaluate_height(spec, q(h), device=device, seed=seed, recon=net)
    fz = spec.focus_depth_m
    fh = fresnel_height(spec, n).float()
    fresnel = evaluate_height(spec, fh, device=device, seed=seed)
    fresnel["quantized"] = evaluate_height(spec, q(fh), device=device, seed=seed)
    fresnel["focus_depth_m"] = None if math.isinf(fz) else fz
    fresnel["reconstruction"] = "wiener"
    baselines: dict[str, Any] = {"fresnel": fresnel}
    gains = {"vs_fresnel": round(design["mean_psnr_db"] - fresnel["mean_psnr_db"], 4)}
    if superres:
        bicubic = Bench(spec, fh, device, seed).report(None, upsampled=True)
        bicubic["reconstruction"] = "bicubic upsampling of the Fresnel lens's sensor image"
        bicubic["focus_depth_m"] = fresnel["focus_depth_m"]
        baselines["bicubic"] = bicubic
        gains["vs_bicubic"] = round(design["mean_psnr_db"] - bicubic["mean_psnr_db"], 4)
    else:
        alpha, _ = tune_cubic(spec, n, device, seed, log)
        ch = cubic_height(spec, n, alpha).float()
        cubic = evaluate_height(spec, ch, device=device, seed=seed)
        cubic["quantized"] = evaluate_height(spec, q(ch), device=device, seed=seed)
        cubic["strength_waves"] = round(alpha, 4)
        cubic["focus_depth_m"] = None if math.isinf(fz) else fz
        baselines["cubic"] = cubic
        gains["vs_cubic"] = round(design["mean_psnr_db"] - cubic["mean_psnr_db"], 4)
    gains["quantization_loss"] = round(design["mean_psnr_db"] - design_q["mean_psnr_db"], 4)
    images = validation_set(spec, seed=seed)
    k = spec.sensor.superres_factor
    how = ("Wiener (learned γ) + U-Net for the design; Wiener with γ tuned per lens for the baselines" if net is not None
           else "Wiener, γ tuned per design (golden section)")
    if superres:
        how += f"; sensor images upsampled ×{k} (bicubic) and deconvolved with the PSF ⊛ pixel box ⊛ upsampling kernel"
    return {
        "design": design,
        "design_quantized": design_q,
        "baselines": baselines,
        "gain_db": gains,
        "evaluation": {"images": int(images.shape[0]), "image_size": [r * k for r in spec.sensor.resolution],
                       "sensor_size": list(spec.sensor.resolution), "superres_factor": k,
                       "read_noise": eval_read_noise(spec.sensor.read_noise), "full_well": spec.sensor.full_well,
                       "bit_depth": spec.sensor.bit_depth, "levels": levels, "seed": seed,
                       "defocus_w020_waves": round(defocus_waves(spec), 4),
                       "depths_m": [None if math.isinf(z) else z for z in pipe.task.eval_depths()],
                       "reconstruction": how, "design_reconstruction": "wiener" if net is None else net.kind},
    }


# ---- `lensdesign simulate`: a user's picture through a run's design --------------------------------------------

def _png(path: Any, img_hwc: np.ndarray) -> None:
    """Write a linear (H, W, 3) image in [0, 1] as an 8-bit sRGB PNG, atomically."""
    import io

    from PIL import Image

    from lensdesign.imaging.scenes import linear_to_srgb
    from lensdesign.rundir import atomic_write_bytes

    a = np.clip(np.rint(linear_to_srgb(img_hwc) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def load_reconstruction(design: Any) -> WienerReconstruction | None:
    """A run's learned reconstruction with a U-Net, rebuilt from design.json (`reconstruction_arch`: plain numbers)
    and the `recon.*` tensors of design.safetensors; None for a Wiener-only design or a baseline run."""
    from lensdesign.imaging.reconstruct import reconstruction_from_design

    arch = design.meta.get("reconstruction_arch")
    if not isinstance(arch, dict) or arch.get("kind") == "wiener":
        return None
    return reconstruction_from_design(arch, design.tensors)


def run_gamma(spec: Spec, design: Any, height: torch.Tensor) -> tuple[float | list[float], str]:
    """The Wiener γ of a run: learned (`recon.log_gamma`), else design.json's `gamma`, else tuned now."""
    t = design.tensors.get("recon.log_gamma")
    if t is not None:
        return t.float().exp().tolist(), "learned"
    g = design.meta.get("gamma")
    if g is not None:
        return g, "design.json"
    return evaluate_height(spec, height)["gamma"], "tuned on the validation set"


@_single_threaded
def simulate_picture(run_path: Any, image_path: Any, out: Any, depth: str | None = None, depth_map: Any = None,
                     quantized: bool = False, seed: int = 0) -> dict[str, Any]:
    """Image a picture (sRGB file) through a run's design and reconstruct it; writes OUT/sensor.png, recon.png and
    metrics.json and returns the metrics.

    One depth (`depth`, metres or 'inf'; default the spec's focus depth) blurs the whole picture with that PSF;
    a depth map (.npy, metres, same H × W) is split into the spec depths' layers (nearest in diopters), each
    layer blurred with its PSF and composited far to near with occlusion. PSNR / SSIM compare the
    reconstruction with the sharp picture (linear intensity). A run with a U-Net reconstructs with it.

    Super-resolution: the picture is the scene on the fine grid (cropped to a multiple of the factor k);
    sensor.png is the k-times smaller sensor image, recon.png the fine reconstruction; `sensor_psnr_db` scores
    the sensor image upsampled bicubically.
    """
    from pathlib import Path

    from lensdesign.errors import LensdesignError
    from lensdesign.fabrication.quantize import quantize
    from lensdesign.imaging.scenes import channels_from_rgb, depth_layers, read_image, rgb_from_channels, srgb_to_linear
    from lensdesign.imaging.sensor import render_layers
    from lensdesign.rundir import RunDir, atomic_write_json
    from lensdesign.spec import parse_length

    run = RunDir(run_path).require()
    spec = run.load_spec()
    design = run.load_design()
    if depth is not None and depth_map is not None:
        raise LensdesignError("--depth-m and --depth-map: give one of them (one depth for the whole picture, or a map)")
    try:
        z = spec.focus_depth_m if depth is None else parse_length(depth, allow_inf=True)
    except ValueError as e:
        raise LensdesignError(f"--depth-m: {e}") from None
    rgb = read_image(image_path)
    img = torch.from_numpy(channels_from_rgb(srgb_to_linear(rgb), spec.wavelengths))[None]
    hh, ww = img.shape[-2:]
    if min(hh, ww) < 8:
        raise LensdesignError(f"--image: {Path(image_path).name} is {ww} × {hh} pixels; give a picture of at least 8 × 8")
    dm = None
    if depth_map is not None:
        p = Path(depth_map)
        if not p.is_file():
            raise LensdesignError(f"--depth-map: {p}: no such file; give a .npy array of depths in metres")
        try:
            dm = np.load(p, allow_pickle=False)
        except Exception as e:
            raise LensdesignError(f"--depth-map: {p}: not a .npy array ({e.__class__.__name__}); "
                                  "save it with numpy.save") from None
        dm = np.squeeze(np.asarray(dm, dtype=np.float64))
        if dm.shape != (hh, ww):
            raise LensdesignError(f"--depth-map: shape {dm.shape} does not match the image ({hh}, {ww}); give one depth "
                                  "in metres per pixel")
        if np.isnan(dm).any() or (dm <= 0).any():
            raise LensdesignError("--depth-map: depths must be positive metres (inf allowed), without NaN")
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise LensdesignError(f"--out: {outp} is a file; give a folder")
    pipe = pipeline_for(spec, "cpu")
    n = pipe.optics.grid.n
    h = torch.as_tensor(design.height_m, dtype=torch.float32)
    if tuple(h.shape) != (n, n):
        raise LensdesignError(f"{run.path}: height map {tuple(h.shape)} does not match the spec grid {n}; the run's "
                              "spec.yaml was changed, re-create the run")
    if quantized:
        h = quantize(h, design.max_height_m, int(design.meta.get("levels", spec.fabrication.levels)))  # type: ignore[assignment]
    gamma, gamma_from = run_gamma(spec, design, h)
    recon = load_reconstruction(design)
    k = pipe.factor
    img = crop_to_factor(img, k)
    if dm is not None:
        dm = dm[:img.shape[-2], :img.shape[-1]]
    with torch.no_grad():
        ref, _ = pipe.psfs(h)
        ref = ref.mean(0)
        if dm is not None:
            layer_depths = spec.depths_m
            _, lpsf = pipe.psfs(h, layer_depths)
            layers = torch.from_numpy(depth_layers(dm, layer_depths))[None]
            clean = render_layers(img, layers, lpsf)
            info: dict[str, Any] = {"depth_m": None, "depth_map": True,
                                    "layers_m": [None if math.isinf(v) else v for v in layer_depths],
                                    "layer_fraction": [round(float((layers == i).float().mean()), 4)
                                                       for i in range(len(layer_depths))]}
        else:
            _, at = pipe.psfs(h, [z])
            clean = convolve_same(img, at)
            info = {"depth_m": None if math.isinf(z) else z, "depth_map": False}
        y, x, plan = _image_through(pipe, clean, ref, gamma, recon, seed)
        yu = plan.upsampled
    metrics = {"image": Path(image_path).name, "size": list(img.shape[-2:]), "sensor_size": list(y.shape[-2:]),
               "superres_factor": k, **info,
               "psnr_db": round(float(psnr(x, img)), 4), "ssim": round(ssim(x, img)[0], 5),
               "sensor_psnr_db": round(float(psnr(yu, img)), 4), "sensor_ssim": round(ssim(yu, img)[0], 5),
               "reconstruction": "wiener" if recon is None else recon.kind,
               "gamma": gamma, "gamma_from": gamma_from, "read_noise": eval_read_noise(spec.sensor.read_noise),
               "quantized": quantized, "seed": seed}
    outp.mkdir(parents=True, exist_ok=True)
    _png(outp / "sensor.png", rgb_from_channels(y[0], spec.wavelengths))
    _png(outp / "recon.png", rgb_from_channels(x[0].clamp(0, 1), spec.wavelengths))
    atomic_write_json(outp / "metrics.json", metrics)
    return metrics

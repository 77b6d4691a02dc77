"""The end-to-end model: trainable parts (surface + reconstruction), the task, and the differentiable pipeline.

    height map ─► fabrication model (quantizer schedule, height noise) ─► PSF stack at the reference depths
    and the training depths ─► sensor images of scene crops ('valid' blur, pixel integration for
    super-resolution, noise) ─► reconstruction (Wiener with the reference PSF, optionally a U-Net) ─► task loss
    against the scene.

* `EndToEnd` (nn.Module) holds only what is trained: the surface parameters and the reconstruction (log γ,
  and the U-Net for `reconstruction.kind: unet`).
* A `Task` decides which depths a training step images, which depths are evaluated, which PSF the
  reconstruction assumes, and the loss. `edof`: depths drawn uniformly in diopters over the spec's range,
  reference PSF = mean PSF over the spec depths (the depth of a point is unknown to the reconstruction).
  `focus`: the focus depth only. `superres`: the spec's depths (usually one; a range is sampled like `edof`),
  scene and PSF on the fine grid (sensor pixel pitch / `sensor.superres_factor`), the reconstruction returns the
  fine image.
* `Pipeline` holds the height-independent precomputation (`OpticalSystem`) and runs the forward model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lensdesign.errors import LensdesignError
from lensdesign.fabrication.quantize import quantize_ste, soft_quantize
from lensdesign.imaging.mosaic import channel_bands, mosaic_demosaic
from lensdesign.imaging.reconstruct import WienerReconstruction, make_reconstruction
from lensdesign.imaging.sensor import add_noise, convolve_valid, integrate_pixels, psf_margin
from lensdesign.optics.element import check_max_height, is_wrapped, make_element_surface
from lensdesign.optics.psf import OpticalSystem, PSFStack, plan_grid
from lensdesign.optics.surfaces import Surface
from lensdesign.spec import Spec

# ---- tasks ---------------------------------------------------------------------------------------------------


class Task:
    """What is being designed for: depth sampling, evaluation depths, reference PSF depths and the loss."""

    name = "base"

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def eval_depths(self) -> list[float]:
        """Depths (m) at which designs are validated and reported."""
        raise NotImplementedError

    def reference_depths(self) -> list[float]:
        """Depths (m) whose mean PSF the reconstruction deconvolves with."""
        return self.eval_depths()

    def train_depths(self, gen: torch.Generator, count: int) -> list[float]:
        """`count` depths (m) for one training step, drawn from the CPU generator `gen`."""
        raise NotImplementedError

    def loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss: mean squared error in linear intensity."""
        return (recon - target).square().mean()


class EdofTask(Task):
    """Achromatic extended depth of field: one lens and one Wiener filter for every depth in the range."""

    name = "edof"

    def eval_depths(self) -> list[float]:
        return self.spec.depths_m

    def train_depths(self, gen: torch.Generator, count: int) -> list[float]:
        near, far = self.spec.diopter_range
        u = torch.rand(count, generator=gen, dtype=torch.float64).tolist()
        out = []
        for v in u:
            p = far + (near - far) * v
            out.append(math.inf if p <= 1e-12 else 1.0 / p)
        return out


class FocusTask(Task):
    """Sharp imaging of one depth (the spec's focus depth) over all wavelengths."""

    name = "focus"

    def eval_depths(self) -> list[float]:
        return [self.spec.focus_depth_m]

    def train_depths(self, gen: torch.Generator, count: int) -> list[float]:
        return [self.spec.focus_depth_m] * count


class SuperresTask(EdofTask):
    """Snapshot super-resolution: a sensor with pixels `sensor.superres_factor` times coarser than the output.

    Depths: the spec's (the paper's super-resolution is at one depth: give one, e.g. `depths: [1 m]`); a range
    is sampled uniformly in diopters like `edof`, with the mean PSF as reference."""

    name = "superres"

    def train_depths(self, gen: torch.Generator, count: int) -> list[float]:
        ds = self.spec.depths_m
        if len(ds) == 1:
            return [ds[0]] * count
        return super().train_depths(gen, count)


TASKS: dict[str, type[Task]] = {"edof": EdofTask, "focus": FocusTask, "superres": SuperresTask}


def make_task(spec: Spec) -> Task:
    """The task named by `spec.task`; refuses tasks that are not available with a one-line error."""
    if spec.task not in TASKS:
        raise LensdesignError(f"task: {spec.task!r} is not available; use one of {', '.join(TASKS)}")
    return TASKS[spec.task](spec)


def check_supported(spec: Spec) -> None:
    """Raise a one-line LensdesignError for spec combinations that `optimize` cannot do."""
    make_task(spec)
    check_max_height(spec)
    if spec.sensor.superres_factor != 1 and spec.task != "superres":
        raise LensdesignError(f"sensor.superres_factor: {spec.sensor.superres_factor} is only used by task: superres; "
                              "set task: superres or superres_factor: 1")


# ---- fabrication-aware training -------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantSchedule:
    """Quantization-aware training over the run (fractions of the steps): continuous heights until `soft_from`,
    then an annealed soft staircase (temperature `t_start` → `t_end`, in level steps), then straight-through
    quantization from `ste_from` to the end, so the element trains as it will be fabricated."""

    soft_from: float = 0.4
    ste_from: float = 0.8
    t_start: float = 0.5
    t_end: float = 0.02

    def mode(self, progress: float) -> tuple[str, float]:
        """('none' | 'soft' | 'ste', temperature) at `progress` ∈ [0, 1]."""
        if progress < self.soft_from:
            return "none", 0.0
        if progress < self.ste_from:
            f = (progress - self.soft_from) / (self.ste_from - self.soft_from)
            return "soft", self.t_start * (self.t_end / self.t_start) ** f
        return "ste", 0.0


def fabricate(height: torch.Tensor, spec: Spec, progress: float, gen: torch.Generator | None,
              schedule: QuantSchedule = QuantSchedule()) -> torch.Tensor:
    """Training-time fabrication model of a height map (N, N) in metres.

    Quantizes to `fabrication.levels` following `schedule` at `progress` (a diffractive relief wrapped at
    max_height; a refractive or hybrid sag in grey / print steps over [0, max_height], not wrapped, then scaled by
    1 + ε with ε uniform in ±`fabrication.sag_error`), then adds uniform height noise of
    ±`fabrication.height_tolerance` per sample (random numbers from the CPU generator `gen`; none when `gen` is None).
    """
    mh, levels = spec.max_height_m, spec.fabrication.levels
    wrap = is_wrapped(spec.optics.element)
    mode, temp = schedule.mode(progress)
    if mode == "soft":
        height = soft_quantize(height, mh, levels, temp, wrap)
    elif mode == "ste":
        height = quantize_ste(height, mh, levels, wrap)
    sag_error = spec.fabrication.sag_error
    if sag_error and not wrap and gen is not None:
        eps = (2.0 * torch.rand((), generator=gen, dtype=torch.float64).item() - 1.0) * sag_error
        height = height * (1.0 + eps)
    tol = spec.fabrication.height_tolerance
    if tol and gen is not None:
        noise = (2.0 * torch.rand(height.shape, generator=gen, dtype=torch.float32) - 1.0) * tol
        height = height + noise.to(height.device)
    return height


# ---- the trainable model -------------------------------------------------------------------------------------

class EndToEnd(nn.Module):
    """The trainable parts only: `surface` (height map parameters, m) and `recon` (log γ per channel, and the
    U-Net's weights for `reconstruction.kind: unet`)."""

    def __init__(self, spec: Spec, n: int | None = None) -> None:
        super().__init__()
        n = plan_grid(spec).n if n is None else n
        self.surface: Surface = make_element_surface(spec, n)
        self.recon: WienerReconstruction = make_reconstruction(spec)

    def height(self) -> torch.Tensor:
        """Continuous height map (N, N) in metres, in [0, max_height)."""
        return self.surface.height()

    def design_tensors(self) -> dict[str, torch.Tensor]:
        """Reconstruction tensors (`recon.*`) and, for a radial surface, `radial_profile_m` (rings,)."""
        out = dict(self.recon.tensors())
        if self.surface.kind == "radial":
            out["radial_profile_m"] = self.surface.ring_heights().float().cpu()  # type: ignore[attr-defined]
        return out


def mix_channels(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_w weights[c, w] · stack[…, w, :, :] → (…, C, P, P): polychromatic channel PSFs (weights sum to 1 per c)."""
    return torch.einsum("cw,...wyx->...cyx", weights, stack)


# ---- the forward model ---------------------------------------------------------------------------------------

class Pipeline:
    """Height-independent parts of the forward model for one spec: the optical system at the task's reference
    depths, the task, the PSF margin of a scene crop, the super-resolution factor and the sensor noise settings.

    Scenes, PSFs, reconstructions and targets are on the simulation's sensor grid: the fine grid (pixel pitch / k)
    for super-resolution; only the sensor images themselves are k times coarser."""

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", radial: bool | None = None) -> None:
        """`radial`: compute PSFs on the 1-D ring path (`optics.hankel`) or the 2-D grid; None: the spec's choice
        (`choose_path`). Height maps stay (N, N) on the element grid either way; the ring path reads the rings
        back from them, so it serves ring designs only (the 2-D path serves every element)."""
        from lensdesign.optics.hankel import RadialSystem, choose_path

        self.spec = spec
        self.task = make_task(spec)
        self.device = torch.device(device)
        self.radial = choose_path(spec).radial if radial is None else radial
        depths = self.task.reference_depths()
        sim = spec.optical_spec  # one plane per sampled wavelength (the spec itself for one line per channel)
        self.optics: OpticalSystem | RadialSystem = (
            RadialSystem(sim, self.device, depths=depths, nearest=min(spec.depths_m)) if self.radial
            else OpticalSystem(sim, self.device, depths=depths))
        ch = spec.spectral
        self.channel_weights = None if ch is None else torch.tensor(ch.weights, dtype=torch.float32, device=self.device)
        self.psf_size = self.optics.grid.psf_size
        self.margin = psf_margin(self.psf_size)
        self.channels = len(spec.wavelengths)
        self.factor = spec.sensor.superres_factor
        self.bands = None if spec.sensor.mosaic == "none" else channel_bands(list(spec.wavelengths))

    def psfs(self, height: torch.Tensor, extra_depths: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference PSFs (R, C, P, P) at the reference depths, PSFs (K, C, P, P) at `extra_depths`).

        One differentiable PSF computation for both; the source waves of the reference depths are precomputed.
        """
        src = self.optics.src
        if extra_depths:
            src = torch.cat([src, self.optics.source_waves(extra_depths)])
        stack = self.to_channels(self.stack(height, src))
        r = self.optics.src.shape[0]
        return stack[:r], stack[r:]

    def wavelength_psfs(self, height: torch.Tensor, depths: list[float]) -> torch.Tensor:
        """Monochromatic PSFs (D, W, P, P) at `depths` (m), one plane per simulated wavelength (before the channels
        are mixed): what a hyperspectral scene is blurred with."""
        return self.stack(height, self.optics.source_waves(depths))

    def stack(self, height: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """PSF stack (D, W, P, P) of a height map (N, N) in metres for source waves `src` from
        `optics.source_waves` (any block of depths), on the pipeline's path, one plane per simulated wavelength
        (`to_channels` makes the channels); differentiable."""
        h = height.to(self.device, torch.float32)
        if self.radial:
            return self.optics.stack(self.optics.profile_of(h), src)  # type: ignore[union-attr]
        return PSFStack.apply(h, self.optics, src)

    def to_channels(self, stack: torch.Tensor) -> torch.Tensor:
        """Channel PSFs (…, C, P, P) of monochromatic PSFs (…, W, P, P): the weighted sum over each channel's sampled
        wavelengths (`channel_weights` (C, W)); the stack itself when each channel is one wavelength."""
        return stack if self.channel_weights is None else mix_channels(stack, self.channel_weights)

    def irradiance(self, scenes: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        """Noise-free sensor images (B, C, H / k, W / k) of scene crops (B, C, H + P − 1, W + P − 1) blurred by
        `psf` (B or 1, C, P, P): 'valid' blur on the fine grid, then the mean over k × k blocks (k = `factor`)."""
        return integrate_pixels(convolve_valid(scenes, psf), self.factor)

    def noisy(self, clean: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
              differentiable: bool = True) -> torch.Tensor:
        """Sensor read-out of noise-free sensor images: read / shot noise, clipping, bit depth (see `add_noise`);
        with `sensor.mosaic` each photosite keeps its filter's channel (the noise of the others is dropped: the
        same statistics as noise on the raw mosaic) and the image is demosaicked by `sensor.demosaic`."""
        s = self.spec.sensor
        y = add_noise(clean, sigma, gen, s.full_well, s.bit_depth, differentiable)
        return y if self.bands is None else mosaic_demosaic(y, s.mosaic, self.bands, s.demosaic)

    def sensor(self, scenes: torch.Tensor, psf: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
               differentiable: bool = True) -> torch.Tensor:
        """Sensor images (B, C, H / k, W / k) of scene crops (B, C, H + P − 1, W + P − 1) blurred by `psf`
        (B or 1, C, P, P), integrated over pixels and read out with noise."""
        return self.noisy(self.irradiance(scenes, psf), sigma, gen, differentiable)

    def target(self, scenes: torch.Tensor) -> torch.Tensor:
        """The ground truth for scene crops: their centre, the part the sensor sees (B, C, H, W), on the fine
        grid for super-resolution."""
        m = self.margin
        return scenes[..., m:scenes.shape[-2] - m, m:scenes.shape[-1] - m]

"""The training loop: end-to-end optimization of the height map and the reconstruction.

One step: random scene crops (flips) from the training images, depths drawn by the task (edof: uniform in
diopters over the range), per-image read noise, the fabrication model (quantizer schedule + height noise), PSFs
at the reference and training depths, 'valid' blur (+ pixel integration for super-resolution) + noise, Wiener
reconstruction with the mean reference PSF (+ the U-Net for `reconstruction.kind: unet`), MSE against the
scene, Adam.

Learning rate: `training.learning_rate` is in waves of phase at the design wavelength per step for the element
(a diffractive relief: in units of its wrap height max_height, one wave for `auto`; refractive and hybrid: one
wave = λ/(n − 1)); pixel and radial surfaces hold metres, zernike and fourier coefficients are already in those
units (`Surface.step_scale`); log γ uses
`GAMMA_LR` (nats per step), the U-Net weights `UNET_LR`. The element and γ follow a short linear warm-up, then
a cosine decay to `LR_FLOOR` of the peak.

With a U-Net (`reconstruction.kind: unet`) the run has two phases. The joint phase, the first `JOINT_FRACTION`
of the steps, trains the element, γ and the U-Net together; the element's schedules (learning rate, quantizer)
run their whole course within it. The rest of the steps train γ and the U-Net alone on the finished element
(quantized, with the fabrication height noise; no PSF gradient, so these steps are cheaper): a network chasing a
still-moving PSF learns less than one trained on the final optics (edof-demo with a 24-channel U-Net, 500 steps:
+0.5 dB over the Wiener-only design when trained jointly throughout, +0.8 dB with the split). γ and the U-Net use
`net_lr_factor`: the peak held until `UNET_DECAY_FROM` of the run, then a cosine decay.

Patches: `training.patch_size` is in sensor pixels; for super-resolution the scene crop is k times larger (plus
the PSF margin) on the fine grid.

Determinism: every random number of step k comes from a CPU generator seeded with hash(seed, k), the schedules
are functions of k, and the checkpoint holds the parameters and the Adam state (plain tensors in safetensors),
so a run resumed from a checkpoint is bit-identical to an uninterrupted one on the same machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensdesign.baselines import focal_length, fresnel_height
from lensdesign.distributed import Dist, Local
from lensdesign.errors import LensdesignError
from lensdesign.evaluation import Evaluator, summarize
from lensdesign.heal import Healer, nan_injections
from lensdesign.imaging.reconstruct import default_pad
from lensdesign.imaging.scenes import load_images, random_crops
from lensdesign.imaging.sensor import psnr, sample_read_noise
from lensdesign.optics.element import base_sag
from lensdesign.optics.psf import coords
from lensdesign.optics.surfaces import FourierSurface, Surface, ZernikeSurface
from lensdesign.rundir import CHECKPOINT, METRICS, SUMMARY, RunDir, atomic_save_tensors, atomic_write_json, design_meta
from lensdesign.spec import Spec
from lensdesign.system import EndToEnd, Pipeline, QuantSchedule, check_supported, fabricate

GAMMA_LR = 0.05
UNET_LR = 2e-3
UNET_DECAY_FROM = 0.5
JOINT_FRACTION = 0.6
LR_FLOOR = 0.03
WARMUP = 0.03
DEFAULT_PATCH = 96
CHECKPOINT_FORMAT = "1"


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for step `step` of a run with `seed`: a hash of both, independent of any history."""
    h = hashlib.blake2b(f"lensdesign:{seed}:{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


def lr_factor(step: int, steps: int) -> float:
    """Schedule multiplier at `step` of `steps`: linear warm-up over WARMUP of the run, cosine to LR_FLOOR."""
    if steps <= 1:
        return 1.0
    return lr_at(step / (steps - 1))


def lr_at(p: float) -> float:
    """`lr_factor` at the fraction `p` ∈ [0, 1] of a schedule."""
    if p < WARMUP:
        return 0.1 + 0.9 * p / WARMUP
    q = (p - WARMUP) / (1 - WARMUP)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * q))


def net_lr_factor(step: int, steps: int, decay_from: float = UNET_DECAY_FROM) -> float:
    """Schedule multiplier of the U-Net weights: linear warm-up over WARMUP of the run, the peak until
    `decay_from` of the run, then a cosine to LR_FLOOR (the network keeps learning while the optics settle)."""
    if steps <= 1:
        return 1.0
    p = step / (steps - 1)
    if p < WARMUP:
        return 0.1 + 0.9 * p / WARMUP
    if p < decay_from:
        return 1.0
    q = (p - decay_from) / (1 - decay_from)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * q))


def patch_size(spec: Spec) -> int:
    """Training patch (sensor pixels): `training.patch_size`, or min(resolution, DEFAULT_PATCH); the target is
    `superres_factor` times larger on the fine grid."""
    return spec.training.patch_size or min(*spec.sensor.resolution, DEFAULT_PATCH)


def initial_height(spec: Spec, n: int) -> torch.Tensor:
    """Starting height map (N, N) in metres: the Fresnel lens focused at the spec's focus depth (a refractive
    element: the unwrapped thin-lens sag of the same focal length)."""
    if spec.optics.element == "refractive":
        return base_sag(spec, n).to(torch.float32)
    return fresnel_height(spec, n).to(torch.float32)


def init_surface(surface: Surface, spec: Spec) -> None:
    """Start every parameterization from the Fresnel lens focused at the spec's focus depth.

    pixel / radial: the wrapped lens heights. zernike: the defocus term Z4 = √3(2ρ² − 1) carrying the unwrapped
    thin-lens profile −r²/(2f(n − 1)) (wrapping happens in `height()`). fourier: the low-frequency block of the
    unwrapped profile's spectrum (its periodic extension is smooth enough that the wrapped result matches the
    Fresnel lens). Coefficients of zernike / fourier are in units of `surface.unit`. A refractive zernike sag gets
    the same defocus term unwrapped (the thin-lens sag); a hybrid starts with a flat relief on its base lens.
    """
    n, mh = surface.n, surface.unit
    ng = spec.design_index
    f = focal_length(spec)
    with torch.no_grad():
        if isinstance(surface, ZernikeSurface):
            surface.param.zero_()
            r = spec.optics.aperture / 2
            surface.param[3] = -(r**2) / (2 * f * (ng - 1)) / (2 * math.sqrt(3) * mh)
        elif isinstance(surface, FourierSurface):
            y, x = coords(n, spec.optics.pitch)
            unwrapped = -(x**2 + y**2) / (2 * f * (ng - 1)) / mh
            c = torch.fft.fftshift(torch.fft.fft2(unwrapped, norm="ortho"))
            k, a = surface.k, n // 2 - surface.k // 2
            block = c[a:a + k, a:a + k]
            surface.param[0].copy_(block.real.to(surface.param.dtype))
            surface.param[1].copy_(block.imag.to(surface.param.dtype))
        else:
            surface.init_from_height(initial_height(spec, n).to(next(surface.parameters()).device))


@dataclass
class StepResult:
    step: int
    loss: float
    psnr_db: float
    lr: float
    gamma: list[float]
    depths_m: list[float | None] = field(default_factory=list)
    finite: bool = True  # the loss and every gradient were finite (else the optimizer step was skipped)


class Trainer:
    """Holds the model, the optimizer and the data of one run; `train_step(k)` runs step k."""

    def __init__(self, spec: Spec, device: torch.device | str = "cpu", dist: Dist | None = None) -> None:
        check_supported(spec)
        self.spec = spec
        self.device = torch.device(device)
        # under torchrun: this rank's share of each step's PSFs and batch items (see lensdesign.distributed)
        self.shard: Dist | Local = dist if dist is not None else Local()
        self.pipe = Pipeline(spec, self.device)
        self.evaluator = Evaluator(spec, self.device)  # its own pipeline, built at the first validation
        self.model = EndToEnd(spec, self.pipe.optics.grid.n).to(self.device)
        init_surface(self.model.surface, spec)
        self.patch = patch_size(spec)
        self.scene_size = self.patch * spec.sensor.superres_factor + 2 * self.pipe.margin
        self.images = load_images(spec.training.images, spec.wavelengths, self.scene_size).train
        self.pad = default_pad(self.pipe.psf_size)
        t = spec.training
        height_units = self.model.surface.step_scale
        recon = self.model.recon
        self.base_lr = [t.learning_rate * height_units, GAMMA_LR]
        groups = [{"params": list(self.model.surface.parameters()), "lr": self.base_lr[0]},
                  {"params": recon.wiener_parameters(), "lr": self.base_lr[1]}]
        if recon.network_parameters():
            self.base_lr.append(UNET_LR)
            groups.append({"params": recon.network_parameters(), "lr": UNET_LR})
        self.opt = torch.optim.Adam(groups)
        self.schedule = QuantSchedule()
        self.has_network = bool(recon.network_parameters())
        self.joint_fraction = JOINT_FRACTION if self.has_network else 1.0
        self.depths_per_step = 1
        ref = self.pipe.task.reference_depths()
        self._ref_index = {z: i for i, z in enumerate(ref)}
        self.lr_scale = 1.0  # cut by each rollback (lensdesign.heal)
        self._inject_nan = nan_injections()

    @property
    def steps(self) -> int:
        return self.spec.training.steps

    def forward(self, step: int, progress: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
        """The loss of step `step` (0-based) and what led to it: (loss, reconstruction, target, depths in m).

        Deterministic for a given step: every random number comes from `step_generator(seed, step)`.
        `progress` (fraction of the run; default step / steps) sets the quantizer schedule.
        """
        spec, pipe = self.spec, self.pipe
        gen = step_generator(spec.training.seed, step)
        b = spec.training.batch_size
        scenes = random_crops(self.images, b, self.scene_size, gen).to(self.device)
        depths = pipe.task.train_depths(gen, self.depths_per_step)
        sigma = sample_read_noise(spec.sensor.read_noise, b, gen)
        if progress is None:
            progress = step / max(1, self.steps - 1)
        po = self.optics_progress(progress)
        h = fabricate(self.model.height(), spec, po, gen, self.schedule)
        if progress > self.joint_fraction:
            h = h.detach()
        extra = [z for z in depths if z not in self._ref_index]
        ref_stack, extra_stack = self.shard.psfs(pipe, h, extra)
        per_depth = [ref_stack[self._ref_index[z]] if z in self._ref_index else extra_stack[extra.index(z)] for z in depths]
        which = torch.arange(b) % len(depths)
        lo, hi = self.shard.items(b)
        scenes = scenes[lo:hi]
        psf = torch.stack(per_depth)[which[lo:hi].to(self.device)]
        y = self.shard.sensor(pipe, scenes, psf, sigma, gen, lo, b)
        x = self.model.recon(y, ref_stack.mean(0), self.pad)
        target = pipe.target(scenes)
        return self.shard.batch_loss(pipe.task.loss(x, target), hi - lo, b, ref_stack), x, target, depths

    def optics_progress(self, progress: float) -> float:
        """Where the element's schedules (learning rate, quantizer) stand at `progress` of the run: they span the
        joint phase, the first `joint_fraction` of the steps, and stay at their end afterwards."""
        return min(1.0, progress / self.joint_fraction)

    def train_step(self, step: int) -> StepResult:
        """Run optimization step `step` (0-based): sample, simulate, reconstruct, backpropagate, update."""
        p = step / max(1, self.steps - 1)
        f = lr_at(self.optics_progress(p)) if self.steps > 1 else 1.0
        fn = net_lr_factor(step, self.steps)
        fs = [f, fn, fn] if self.has_network else [f, f]
        for g, base, fk in zip(self.opt.param_groups, self.base_lr, fs, strict=True):
            g["lr"] = base * fk * self.lr_scale
        self.opt.zero_grad(set_to_none=True)
        loss, x, target, depths = self.forward(step)
        if self._inject_nan.get(step, 0) > 0:  # testing hook (lensdesign.heal)
            self._inject_nan[step] -= 1
            loss = loss * float("nan")
        loss.backward()
        self.shard.reduce_grads([q for g in self.opt.param_groups for q in g["params"]])
        finite = self.grads_finite()
        if finite:
            self.opt.step()
        with torch.no_grad():
            total, p = self.shard.step_metrics(loss.detach(), psnr(x.detach(), target), self.spec.training.batch_size)
        return StepResult(step=step, loss=total, psnr_db=p, lr=self.base_lr[0] * f * self.lr_scale,
                          gamma=self.model.recon.gamma.detach().cpu().tolist(),
                          depths_m=[None if math.isinf(z) else z for z in depths], finite=finite)

    def grads_finite(self) -> bool:
        """Whether every parameter gradient is finite (the same answer on every rank: gradients are reduced)."""
        grads = [q.grad for g in self.opt.param_groups for q in g["params"] if q.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A copy of the model and optimizer state in memory (on the device), for `restore`."""
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return model, copy.deepcopy(self.opt.state_dict())

    def restore(self, snap: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        """Back to a `snapshot()` (which stays intact for another restore)."""
        model, opt = snap
        self.model.load_state_dict(model)
        self.opt.load_state_dict(copy.deepcopy(opt))
        self.opt.zero_grad(set_to_none=True)

    def validate(self) -> float:
        """Mean PSNR (dB) over the evaluation depths on the held-out set, continuous heights, learned
        reconstruction (γ and the U-Net)."""
        recon = self.model.recon
        was_training = recon.training
        recon.eval()
        try:
            with torch.no_grad():
                bench = self.evaluator.bench(self.model.height().detach(), recon=recon)
                return float(np.mean(bench.psnr_per_depth(recon.gamma.detach())))
        finally:
            recon.train(was_training)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything resume needs, as plain tensors: model parameters and the Adam state."""
        out = {f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        sd = self.opt.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                out[f"adam.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
        if self.lr_scale != 1.0:  # learning rates cut by rollbacks
            out["train.lr_scale"] = torch.tensor(self.lr_scale, dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from `state_tensors()` output (raises LensdesignError on a mismatch)."""
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_sd, strict=True)
        except RuntimeError as e:
            raise LensdesignError(f"checkpoint does not match the spec ({str(e).splitlines()[0]}); "
                                  "start a new run with --force") from None
        sd = self.opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("adam."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(self.device) if name != "step" else v
        sd["state"] = state
        self.opt.load_state_dict(sd)
        self.lr_scale = float(tensors["train.lr_scale"]) if "train.lr_scale" in tensors else 1.0


def spec_digest(spec: Spec) -> str:
    """Hash of everything in the spec that changes the optimization (not device / time budgets)."""
    d = spec.model_dump(mode="json")
    for k in ("device", "max_minutes", "checkpoint_minutes"):
        d["training"].pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(run: RunDir, trainer: Trainer, step: int) -> None:
    """Write RUN/checkpoint.safetensors (atomically): the state after `step` steps (rank 0 only under torchrun)."""
    if not trainer.shard.is_rank0:
        return
    atomic_save_tensors(run / CHECKPOINT, trainer.state_tensors(),
                        metadata={"format": CHECKPOINT_FORMAT, "step": str(step), "spec": spec_digest(trainer.spec)})


def load_checkpoint(run: RunDir, trainer: Trainer) -> int:
    """Restore the trainer from RUN/checkpoint.safetensors; returns the number of steps done."""
    p = run / CHECKPOINT
    tensors, meta = run.load_checkpoint()
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("spec") != spec_digest(trainer.spec):
        raise LensdesignError(f"{p}: the checkpoint was made with a different spec or version; resume with the "
                              "run's own spec, or start again with --force")
    trainer.load_state_tensors(tensors)
    return int(meta["step"])


def _load_checkpoint_shared(run: RunDir, trainer: Trainer, dist: Dist) -> int:
    """`load_checkpoint` on rank 0, its state sent to every rank; returns the number of steps done."""
    msg: tuple[dict[str, torch.Tensor] | None, int, str | None] = (None, 0, None)
    if dist.is_rank0:
        try:
            start = load_checkpoint(run, trainer)
            msg = (trainer.state_tensors(), start, None)
        except LensdesignError as e:
            msg = (None, 0, str(e))
    tensors, start, err = dist.broadcast(msg)
    if err is not None:
        raise LensdesignError(err)
    if not dist.is_rank0:
        trainer.load_state_tensors(tensors)
    return start


def _truncate_metrics(path: Path, upto: int, events: int | None = None) -> None:
    """Keep the metrics records of steps < `upto` (what the checkpoint has done) and the first `events` event
    records (rollbacks; None: all of them)."""
    if not path.is_file():
        return
    keep = []
    seen = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event" in rec:
            seen += 1
            if events is None or seen <= events:
                keep.append(line)
        elif rec.get("step", 0) < upto:
            keep.append(line)
    from lensdesign.rundir import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in keep))


class _Stop:
    """SIGTERM / SIGINT → a flag the loop checks between steps (so a checkpoint can be written)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


@dataclass
class RunResult:
    steps_done: int
    stopped: str | None
    summary: dict[str, Any] | None
    seconds: float


ProgressHook = Callable[[StepResult | None, float | None, int], None]


def _start(spec: Spec, run: RunDir, trainer: Trainer, resume: bool, writer: bool, log: Callable[[str], None],
           dist: Dist | None) -> int:
    """The first step to train: the checkpoint's for `resume` (metrics.jsonl cut back to it), else 0 with the
    spec written and old metrics removed (by the writing rank)."""
    if resume:
        start = load_checkpoint(run, trainer) if dist is None else _load_checkpoint_shared(run, trainer, dist)
        if writer:
            # the rollbacks the checkpoint has seen: each one halved its learning rates
            _truncate_metrics(run / METRICS, start, events=round(-math.log2(trainer.lr_scale)))
        log(f"resuming {run.path} at step {start} of {spec.training.steps}")
        return start
    if writer:
        from lensdesign.rundir import SPEC, atomic_write_text

        atomic_write_text(run / SPEC, spec.to_yaml())
        (run / METRICS).unlink(missing_ok=True)
    return 0


def _tb_scalars(tb: Any, step: int, rec: dict[str, Any]) -> None:
    """One step's TensorBoard points: loss, training PSNR, mean γ and, when validated, the validation PSNR."""
    tb.add_scalar("loss", rec["loss"], step)
    tb.add_scalar("psnr_db", rec["psnr_db"], step)
    tb.add_scalar("gamma", float(np.mean(rec["gamma"])), step)
    if "val_psnr_db" in rec:
        tb.add_scalar("val_psnr_db", rec["val_psnr_db"], step)


def run_optimization(spec: Spec, out: Path, device: torch.device, *, resume: bool = False, checkpoint_every: int | None = None,
                     progress: ProgressHook | None = None, evaluate: bool = True,
                     log: Callable[[str], None] = print, dist: Dist | None = None) -> RunResult:
    """Optimize `spec` into run directory `out` (created; existing files of a previous run are the caller's
    business), checkpointing every `training.checkpoint_minutes` / `checkpoint_every` steps and on SIGTERM /
    SIGINT; then write the design and, with `evaluate`, summary.json comparing it with the baselines.

    Under torchrun (`dist`): every rank trains its share of each step; rank 0 alone writes the run directory,
    validates and evaluates; a stop (signal, time budget) is agreed by all ranks after each step."""
    t0 = time.monotonic()
    run = RunDir(out)
    writer = dist is None or dist.is_rank0
    if writer:
        run.path.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(spec, device, dist)
    start = _start(spec, run, trainer, resume, writer, log, dist)
    tb = _tensorboard(run / "tensorboard") if writer else None
    steps = spec.training.steps
    val_every = max(1, steps // 8)
    ckpt_seconds = spec.training.checkpoint_minutes * 60
    budget = spec.training.max_minutes * 60 if spec.training.max_minutes else None
    last_ckpt = time.monotonic()
    stopped: str | None = None
    step = start
    val: float | None = None
    healer = Healer(trainer, run, step, writer, log)
    with _Stop() as stop:
        while step < steps:
            if dist is not None:
                dist.step = step
            r = trainer.train_step(step)
            if not (r.finite and math.isfinite(r.loss)):
                step = healer.rollback(r)  # raises after too many rollbacks in a row
                if progress is not None:
                    progress(None, val, step)
                continue
            step += 1
            healer.good(step)
            rec: dict[str, Any] = {"step": r.step, "loss": r.loss, "psnr_db": round(r.psnr_db, 4), "lr": r.lr,
                                   "gamma": r.gamma, "depths_m": r.depths_m, "time_s": round(time.monotonic() - t0, 3)}
            if (step % val_every == 0 or step == steps) and writer:
                val = trainer.validate()
                rec["val_psnr_db"] = round(val, 4)
            if writer:
                run.append_metrics(rec)
            if tb is not None:
                _tb_scalars(tb, r.step, rec)
            if progress is not None:
                progress(r, val, step)
            now = time.monotonic()
            due = (checkpoint_every is not None and step % checkpoint_every == 0) or now - last_ckpt >= ckpt_seconds
            halt, over = stop.signal is not None, budget is not None and now - t0 >= budget
            if dist is not None:  # every rank stops after the same step
                halt, over = dist.any([halt, over])
            if halt:
                save_checkpoint(run, trainer, step)
                raise KeyboardInterrupt
            if over and step < steps:
                stopped = f"training.max_minutes ({spec.training.max_minutes:g}) reached at step {step}"
                save_checkpoint(run, trainer, step)
                break
            if due and step < steps:
                save_checkpoint(run, trainer, step)
                last_ckpt = now
        if step >= steps:
            save_checkpoint(run, trainer, step)
    if tb is not None:
        tb.close()
    if not writer:
        return RunResult(steps_done=step, stopped=stopped, summary=None, seconds=time.monotonic() - t0)
    summary = finish(spec, run, trainer, step, stopped, evaluate=evaluate, log=log)
    return RunResult(steps_done=step, stopped=stopped, summary=summary, seconds=time.monotonic() - t0)


def finish(spec: Spec, run: RunDir, trainer: Trainer, steps_done: int, stopped: str | None, evaluate: bool = True,
           log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Write the design (design.safetensors + design.json) and, with `evaluate`, summary.json."""
    model = trainer.model
    with torch.no_grad():
        h = model.height().detach().float().cpu()
    recon = model.recon
    gamma = recon.gamma.detach().cpu().tolist()
    arch = recon.architecture()
    extra: dict[str, Any] = {"task": spec.task, "steps_done": steps_done, "seed": spec.training.seed,
                             "gamma": gamma, "reconstruction": arch["kind"], "reconstruction_arch": arch,
                             "superres_factor": spec.sensor.superres_factor, "stopped_early": stopped,
                             "focus_depth_m": None if math.isinf(spec.focus_depth_m) else spec.focus_depth_m,
                             "sensor_pitch_m": trainer.pipe.optics.grid.sensor_pitch,
                             "psf_size": trainer.pipe.psf_size}
    if model.surface.kind == "radial":
        extra["ring_width_m"] = float(model.surface.ring_width)  # type: ignore[attr-defined]
    meta = design_meta(spec, "optimized", int(h.shape[0]), **extra)
    run.write_design(spec, h, meta, model.design_tensors())
    if not evaluate:
        return None
    log("evaluating the design and the baselines on held-out images ...")
    summary = summarize(spec, h, learned_gamma=gamma, device=trainer.device,
                        recon=recon.eval() if recon.kind != "wiener" else None)
    summary["steps_done"] = steps_done
    summary["stopped_early"] = stopped
    if recon.kind != "wiener":  # the baselines are scored with the Wiener filter only
        summary["baseline_reconstruction"] = "wiener (tuned γ); no U-Net trained for baselines"
    atomic_write_json(run / SUMMARY, summary)
    return summary

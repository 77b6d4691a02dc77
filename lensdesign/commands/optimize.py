"""Command `optimize`: end-to-end design of the element and its reconstruction (Wiener filter, optionally a
U-Net)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec, load_spec

console = Console()

RUN_DIRS = ("export", "report", "tensorboard")


def _resolve_images(spec: Spec, spec_path: Path) -> Spec:
    """Make a relative `training.images` folder absolute (relative to the working folder, else to the spec file)."""
    src = spec.training.images
    if src == "builtin" or Path(src).expanduser().is_absolute():
        return spec
    for base in (Path.cwd(), spec_path.resolve().parent):
        p = (base / src).expanduser()
        if p.is_dir():
            spec.training.images = str(p.resolve())
            return spec
    raise LensdesignError(f"training.images: no folder {src!r} (looked in {Path.cwd()} and {spec_path.resolve().parent}); "
                          "give a folder of jpg/png/tiff images or 'builtin'")


def _is_run(path: Path) -> bool:
    from lensdesign.rundir import RUN_FILES

    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def _clear_run(path: Path) -> None:
    """Remove the files a previous run left (its design, logs, checkpoint, exports and report)."""
    from lensdesign.rundir import RUN_FILES

    for f in RUN_FILES:
        (path / f).unlink(missing_ok=True)
    for d in RUN_DIRS:
        if (path / d).is_dir():
            shutil.rmtree(path / d)


def spec_difference(a: Spec, b: Spec) -> str | None:
    """First differing field (dotted path) between two specs, ignoring device and time budgets; None if equal."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    for d in (da, db):
        for k in ("device", "max_minutes", "checkpoint_minutes"):
            d["training"].pop(k, None)

    def walk(x: Any, y: Any, path: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                r = walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
                if r:
                    return r
            return None
        return None if x == y else path

    return walk(da, db, "")


def _gamma(g: Any) -> str:
    """γ for the table: one value, or the mean of the per-channel values."""
    if g is None:
        return "–"
    if isinstance(g, list):
        return f"{sum(g) / len(g):.3g} (mean)"
    return f"{g:.3g}"


def _summary_table(summary: dict[str, Any]) -> Table:
    ev = summary["evaluation"]
    k = ev.get("superres_factor", 1)
    what = f"×{k} super-resolution, " if k > 1 else ""
    t = Table(title=f"held-out images ({what}{ev['image_size'][0]} × {ev['image_size'][1]}): mean PSNR over depths (dB) / "
                    "worst depth / SSIM")
    t.add_column("element")
    t.add_column("continuous", justify="right")
    t.add_column(f"quantized ({ev['levels']} levels)", justify="right")
    t.add_column("γ", justify="right")

    def cell(r: dict[str, Any] | None) -> str:
        if not r:
            return "–"
        return f"{r['mean_psnr_db']:.2f} / {r['worst_psnr_db']:.2f} / {r['mean_ssim']:.3f}"

    b = summary["baselines"]
    d = summary["design"]
    unet = d.get("reconstruction") == "unet"
    t.add_row("[bold]optimized design[/bold]" + (" + U-Net" if unet else ""), cell(d), cell(summary["design_quantized"]),
              _gamma(d["gamma"]) + (" learned" if unet else " tuned"))
    if unet and "wiener_only" in d:
        t.add_row("  same design, Wiener only", cell(d["wiener_only"]), "", _gamma(d["wiener_only"]["gamma"]) + " tuned")
    t.add_row("Fresnel lens (Wiener)", cell(b["fresnel"]), cell(b["fresnel"].get("quantized")),
              _gamma(b["fresnel"]["gamma"]) + " tuned")
    if "achromat" in b:
        t.add_row("diffractive achromat (rings)", cell(b["achromat"]), cell(b["achromat"].get("quantized")),
                  _gamma(b["achromat"]["gamma"]) + " tuned")
    if "cubic" in b:
        t.add_row(f"cubic plate (α = {b['cubic']['strength_waves']:.3g} waves)", cell(b["cubic"]),
                  cell(b["cubic"].get("quantized")), _gamma(b["cubic"]["gamma"]) + " tuned")
    if "bicubic" in b:
        t.add_row("Fresnel lens, bicubic upsampling", cell(b["bicubic"]), "", "–")
    return t


def _gain_line(summary: dict[str, Any]) -> str:
    gd = summary["gain_db"]
    names = {"vs_fresnel": "Fresnel lens", "vs_achromat": "diffractive achromat", "vs_cubic": "cubic plate",
             "vs_bicubic": "bicubic upsampling"}
    parts = [f"vs {names[k]} {gd[k]:+.2f} dB" for k in names if k in gd]
    return f"design {', '.join(parts)}; quantization costs {gd['quantization_loss']:.2f} dB"


def _run_spec(s: Spec, spec: Path, out: Path, steps: int | None, seed: int | None, resume: bool, force: bool) -> Spec:
    """The spec the run trains: the run's own spec.yaml for --resume (the given one must match it), else `s` with
    --steps / --seed applied; refuses an --out that is a file or already holds a run without --force."""
    if resume:
        from lensdesign.rundir import CHECKPOINT, RunDir

        prev = RunDir(out)
        if not (out / CHECKPOINT).is_file() or not prev.has_spec():
            raise LensdesignError(f"{out}: no checkpoint to resume from; run without --resume")
        run_spec = prev.load_spec()
        for name, given, have in (("--steps", steps, run_spec.training.steps), ("--seed", seed, run_spec.training.seed)):
            if given is not None and given != have:
                raise LensdesignError(f"{name}: the run in {out} was started with {have}; resume with the same value "
                                      "or start a new run with --force")
        s.training.steps, s.training.seed = run_spec.training.steps, run_spec.training.seed
        diff = spec_difference(s, run_spec)
        if diff:
            raise LensdesignError(f"{spec}: {diff} differs from the run's spec.yaml in {out}; resume with the same "
                                  "spec or start a new run with --force")
        s = run_spec
    else:
        if steps is not None:
            s.training.steps = steps
        if seed is not None:
            s.training.seed = seed
        if out.exists() and not out.is_dir():
            raise LensdesignError(f"--out: {out} is a file; give a folder for the run")
        if _is_run(out) and not force:
            raise LensdesignError(f"{out}: already holds a run; pass --force to overwrite it, --resume to "
                                  "continue it, or choose another --out")
    return s


def _header(s: Spec, g: Any, dev: Any) -> str:
    """The run's one-line description: task, element grid, depths × wavelengths, reconstruction, steps, device."""
    import torch

    nt = torch.get_num_threads()
    on = f"{dev} ({nt} thread{'s' if nt > 1 else ''})" if dev.type == "cpu" else str(dev)
    r = s.reconstruction
    rec = "Wiener" if r.kind == "wiener" else f"Wiener + U-Net ({r.unet_channels} channels, depth {r.unet_depth})"
    sr = f", ×{s.sensor.superres_factor} super-resolution" if s.sensor.superres_factor > 1 else ""
    wl = (f"{len(s.wavelengths)} wavelengths" if s.spectral is None else
          f"{len(s.wavelengths)} channels ({len(s.spectral.wavelengths_m)} wavelengths)")
    return (f"optimize [bold]{s.name}[/bold] ({s.task}{sr}): {g.n} × {g.n} element at {g.dx * 1e6:.3g} um, "
            f"{len(s.depths_m)} depths × {wl}, {rec}, {s.training.steps} steps on {on}")


def _train_with_progress(s: Spec, spec: Path, out: Path, dev: Any, resume: bool, checkpoint_every: int | None,
                         no_eval: bool, dist: Any) -> Any:
    """`run_optimization` under a progress bar (loss, validation PSNR, time left); on Ctrl-C, one line on how to
    resume, then the interrupt goes on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lensdesign.optimize import run_optimization

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("val PSNR {task.fields[val]} dB"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("optimizing", total=s.training.steps, loss="-", val="-")

        def hook(r: Any, val: float | None, done: int) -> None:
            bar.update(task, completed=done, loss=f"{r.loss:.3g}" if r else "-", val=f"{val:.2f}" if val is not None else "-")

        try:
            result = run_optimization(s, out, dev, resume=resume, checkpoint_every=checkpoint_every, progress=hook,
                                      evaluate=not no_eval, log=lambda m: bar.console.print(m, soft_wrap=True),
                                      dist=dist)
            if dist is not None:
                dist.close()  # the ranks' collectives are over (rank 0 still writes and evaluates)
        except KeyboardInterrupt:
            bar.stop()
            again = ("the same torchrun command with --resume" if dist is not None
                     else f"'lensdesign optimize {spec} --out {out} --resume'")
            Console(stderr=True, quiet=console.quiet).print(f"interrupted: checkpoint saved; continue with {again}",
                                                            soft_wrap=True)
            raise
    return result


def register(app: typer.Typer) -> None:
    @app.command()
    def optimize(
        ctx: typer.Context,
        spec: Annotated[Path, typer.Argument(help="spec YAML file")],
        out: Annotated[Path, typer.Option("--out", help="run directory to write")],
        steps: Annotated[int | None, typer.Option("--steps", min=0, help="optimization steps (default training.steps)")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="random seed (default training.seed)")] = None,
        device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda (default training.device)")] = None,
        force: Annotated[bool, typer.Option("--force", help="overwrite an existing run directory")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")] = False,
        checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=1,
                                                             help="also checkpoint every N steps")] = None,
        threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default 1 on CPU: bit-reproducible "
                                                    "runs and resumes; more threads are faster on big CPUs)")] = None,
        no_eval: Annotated[bool, typer.Option("--no-eval", help="skip the final comparison with the baselines")] = False,
    ) -> None:
        """Optimize the element and its reconstruction (Wiener filter, optionally a U-Net) end to end; compare with
        the Fresnel lens and a tuned cubic phase plate (task superres: bicubic upsampling) on held-out images
        (RUN/summary.json). Under torchrun (`torchrun --nproc_per_node K -m lensdesign optimize ...`) the K
        processes train one design together; rank 0 writes the run directory."""
        from lensdesign import distributed

        dist = distributed.init() if distributed.launched() else None
        console.quiet = not distributed.is_rank0()
        s = _resolve_images(load_spec(spec), spec)
        if resume and force:
            raise LensdesignError("--resume and --force: choose one (--force starts the run again, --resume continues it)")
        if device is not None and device not in ("auto", "cpu", "cuda"):
            raise LensdesignError(f"--device: {device!r} is not one of auto, cpu, cuda")
        from lensdesign.lock import ensure_unlocked, run_lock

        ensure_unlocked(out, "optimize")
        s = _run_spec(s, spec, out, steps, seed, resume, force)
        if device is not None:
            s.training.device = device  # type: ignore[assignment]

        import torch

        from lensdesign.device import pick_device
        from lensdesign.optics.psf import plan_grid
        from lensdesign.preflight import check_run
        from lensdesign.system import check_supported

        check_supported(s)
        dev = pick_device(s.training.device)
        if dist is not None:
            dev = dist.settle_device(dev)
        g = plan_grid(s)
        check_run(s, out, dev)  # images, memory, writable --out: nothing is created for a run that cannot start
        if dist is not None:
            dist.barrier()  # every rank has checked the run directory before rank 0 changes it
        # one writer per run directory, held until the command ends
        if distributed.is_rank0():
            ctx.with_resource(run_lock(out, "optimize", log=console.print))
        if not resume and _is_run(out) and distributed.is_rank0():
            _clear_run(out)
        if dev.type == "cpu":
            torch.set_num_threads(threads or 1)
        elif threads:
            torch.set_num_threads(threads)
        console.print(_header(s, g, dev))
        t0 = time.monotonic()
        result = _train_with_progress(s, spec, out, dev, resume, checkpoint_every, no_eval, dist)
        if result.stopped:
            console.print(f"[yellow]stopped early[/yellow]: {result.stopped}")
        if result.summary is not None:
            console.print(_summary_table(result.summary))
            console.print(_gain_line(result.summary))
        console.print(f"wrote {out} in {time.monotonic() - t0:.0f} s")

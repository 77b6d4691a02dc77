"""Command `report`: PSF, MTF, Strehl, encircled energy, image quality and fabrication tolerance of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        run: Annotated[Path, typer.Argument(help="run directory (from 'lensdesign optimize' or 'lensdesign baseline')")],
        out: Annotated[Path | None, typer.Option("--out", help="output folder (default RUN/report)")] = None,
        mtf_frequency: Annotated[float | None, typer.Option(
            "--mtf-frequency", help="frequency of the through-depth MTF, cycles/mm (default half the Nyquist frequency "
                                    "of the output grid: the sensor pixels, or the super-resolved grid)")] = None,
        samples: Annotated[int, typer.Option("--samples", help="as-built Monte Carlo samples (0 skips it)")] = 10,
        seed: Annotated[int, typer.Option("--seed", help="seed of the Monte Carlo and of the validation images")] = 0,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        threads: Annotated[int, typer.Option("--threads", help="CPU threads for the analysis (1 is fastest on a shared "
                                                             "machine; 0 keeps torch's default)")] = 1,
    ) -> None:
        """Write RUN/report/index.html (self-contained), the PNG figures and report.json for a run."""
        import math

        from lensdesign.analysis.report import ReportSettings, build_report
        from lensdesign.device import pick_device
        from lensdesign.errors import LensdesignError
        from lensdesign.lock import run_lock
        from lensdesign.rundir import RunDir

        RunDir(run).require().load_design()  # fail with one line before any progress output
        if samples < 0:
            raise LensdesignError("--samples: must be 0 or more (0 skips the as-built Monte Carlo)")
        if mtf_frequency is not None and not (math.isfinite(mtf_frequency) and mtf_frequency > 0):
            raise LensdesignError("--mtf-frequency: give a positive frequency in cycles/mm, e.g. 30")
        settings = ReportSettings(out=out, mtf_frequency=None if mtf_frequency is None else mtf_frequency * 1e3,
                                  samples=samples, seed=seed, device=str(pick_device(device)),
                                  threads=None if threads <= 0 else threads)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as prog:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = prog.add_task(stage, total=max(total, 1))
                prog.update(tasks[stage], completed=done, total=max(total, 1))

            with run_lock(run, "report", create=False):  # an optimize or export rewriting the run is refused
                rep = build_report(run, settings, progress)
        dest = out if out is not None else run / "report"
        fab = rep["fabrication"]
        ab = fab["as_built"]
        console.print(f"wrote {dest / 'index.html'} and report.json ({rep['timings_s']['total']:.1f} s)")
        strehl = [p["strehl"] for p in rep["psf"] if p["strehl"] is not None]
        line = (f"Strehl {min(strehl):.3f} … {max(strehl):.3f}; efficiency sinc² {fab['efficiency']['staircase_sinc2']:.3f}, "
                f"measured {fab['efficiency']['measured']:.3f}")
        if ab.get("psnr_db_mean") is not None:
            line += f"; as-built PSNR {ab['psnr_db_mean']:.2f} dB (5th percentile {ab['psnr_db_p5']:.2f})"
        console.print(line)
        for n in rep.get("notes", []):
            console.print(f"[yellow]note[/yellow]: {n}")

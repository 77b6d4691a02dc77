"""Commands `calibrate` (measured PSFs from point-source captures) and `reconstruct` (a run's reconstruction on
camera captures): from the fabricated element on a camera to images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def calibrate(
        run: Annotated[Path, typer.Argument(help="run directory")],
        psf: Annotated[list[Path], typer.Option("--psf", help="point-source capture (TIFF/PNG), one per depth in the "
                                                "order of the depths, or a multi-page TIFF stack; repeat the option")],
        out: Annotated[Path, typer.Option("--out", help="folder for psf.npz and the calibration report")],
        dark: Annotated[Path | None, typer.Option("--dark", help="dark frame, same size and bit depth")] = None,
        bayer: Annotated[str | None, typer.Option("--bayer", help="raw mosaic pattern rggb | bggr | grbg | gbrg: split "
                                                  "into colour planes at half resolution")] = None,
        depths: Annotated[str | None, typer.Option("--depths", help="depths of the captures, e.g. '0.5 m, 1 m, inf' "
                                                   "(default: the spec's depths)")] = None,
        bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="the camera's bit depth for integer data, "
                                                      "e.g. 12 (default 8 or 16 from the file)")] = None,
        average: Annotated[int, typer.Option("--average", help="consecutive frames per depth, averaged (several "
                                             "exposures of each depth lower the noise)")] = 1,
        force: Annotated[bool, typer.Option("--force", help="overwrite an existing psf.npz")] = False,
    ) -> None:
        """Calibrate the element's PSFs from point-source captures: dark / background subtraction, hot-pixel
        removal, sub-pixel centring, crop to the PSF window, unit sum per channel; writes psf.npz and a report
        (json, html, png) comparing them with the simulated PSFs of the design as built."""
        from lensdesign.camera.calibrate import calibrate as run_calibration

        r = run_calibration(run, list(psf), out, dark=dark, bayer=bayer, depths=depths, bit_depth=bit_depth,
                            average=average, force=force)
        d, c, p, _ = r["psf_shape"]
        console.print(f"calibrated {d} depths × {c} channels, {p} × {p} pixels; largest relative L2 against the "
                      f"simulated design: {100 * r['max_relative_l2']:.2f} %; wrote {out / 'psf.npz'} and "
                      f"{out / 'calibration.html'}")

    @app.command()
    def reconstruct(
        run: Annotated[Path, typer.Argument(help="run directory")],
        captures: Annotated[list[Path], typer.Argument(help="captures to reconstruct (TIFF/PNG, 8/16-bit or float)")],
        out: Annotated[Path, typer.Option("--out", help="folder for NAME.png, NAME.tiff and reconstruct.json")],
        psf: Annotated[Path | None, typer.Option("--psf", help="calibrated PSF folder (or psf.npz); default: the "
                                                 "simulated PSF of the design as built")] = None,
        input_encoding: Annotated[str, typer.Option("--input", help="linear (raw sensor values) | srgb "
                                                    "(sRGB-encoded files)")] = "linear",
        bayer: Annotated[str | None, typer.Option("--bayer", help="raw mosaic pattern rggb | bggr | grbg | gbrg")] = None,
        bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="the camera's bit depth for integer data")] = None,
        continuous: Annotated[bool, typer.Option("--continuous", help="simulate the continuous design instead of the "
                                                 "quantized one")] = False,
        gamma: Annotated[str | None, typer.Option("--gamma", help="Wiener regularizer γ instead of the run's: one "
                                                  "value or one per wavelength, e.g. '0.003' or '0.004,0.003,0.005'")] = None,
        force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
    ) -> None:
        """Reconstruct camera captures with the run's reconstruction (Wiener with the learned γ, U-Net) on whole
        frames (padded FFT with an edge taper); writes an 8-bit sRGB PNG and a 16-bit linear TIFF per capture."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from lensdesign.camera.reconstruct import reconstruct_captures
        from lensdesign.errors import LensdesignError

        try:
            gammas = None if gamma is None else [float(v) for v in gamma.split(",")]
        except ValueError:
            raise LensdesignError(f"--gamma: {gamma!r} is not a number or a comma-separated list of numbers") from None

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("reconstructing", total=None)

            def hook(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total, description=f"reconstructing {name}")

            r = reconstruct_captures(run, list(captures), out, psf=psf, bayer=bayer, bit_depth=bit_depth,
                                     encoding=input_encoding, quantized=not continuous, gamma=gammas, force=force,
                                     on_file=hook)
        console.print(f"reconstructed {len(r['files'])} capture(s) with {r['reconstruction']} (γ {r['gamma_from']}, PSF "
                      f"{r['psf']}); wrote {out}")

"""Command `simulate`: image a picture through a run's design and reconstruct it (lensdesign.simulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lensdesign.errors import LensdesignError

console = Console()


def where(metrics: dict[str, Any]) -> str:
    """Where the picture was placed, from its metrics.json: the depth map's layers (m), or the one depth."""
    if metrics.get("depth_map"):
        return "layers " + ", ".join("inf" if z is None else f"{z:g} m" for z in metrics["layers_m"])
    d = metrics["depth_m"]
    return "inf" if d is None else f"{d:g} m"


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        run: Annotated[Path, typer.Argument(help="run directory")],
        image: Annotated[Path, typer.Option("--image", help="picture to image (jpg, png, tiff; sRGB), a hyperspectral "
                                            "cube (.npz: cube (L, H, W) reflectance, wavelengths_nm (L,)) or "
                                            "colorchecker (the chart's measured reflectances)")],
        out: Annotated[Path, typer.Option("--out", help="folder for sensor.png, recon.png, metrics.json")],
        depth_m: Annotated[str | None, typer.Option("--depth-m", help="depth of the whole picture in metres or inf "
                                                    "(default: the spec's focus depth)")] = None,
        depth_map: Annotated[Path | None, typer.Option("--depth-map", help="depth per pixel in metres, .npy (H, W)")] = None,
        quantized: Annotated[bool, typer.Option("--quantized", help="use the height map quantized to the levels")] = False,
        seed: Annotated[int, typer.Option("--seed", help="noise seed")] = 0,
    ) -> None:
        """Image a picture through a run's design (one depth, or layers from a depth map), add sensor noise and
        reconstruct it with the run's Wiener filter (and U-Net); writes sensor.png, recon.png and metrics.json.
        A hyperspectral cube is blurred wavelength by wavelength and integrated by the channels (broadband runs:
        their sensitivity × illuminant weights). Super-resolution runs: the picture is the fine-grid scene,
        sensor.png the coarser sensor image."""
        if depth_m is not None and depth_map is not None:
            raise LensdesignError("--depth-m and --depth-map: give one of them (one depth for the whole picture, or a map)")
        from lensdesign.imaging.hyperspectral import COLORCHECKER

        if str(image) != COLORCHECKER and not image.is_file():
            raise LensdesignError(f"{image}: no such image file; check the path")
        from lensdesign.rundir import RunDir
        from lensdesign.simulate import simulate_picture

        RunDir(run).require()
        metrics = simulate_picture(run, image, out, depth=depth_m, depth_map=depth_map, quantized=quantized, seed=seed)
        console.print(f"simulated {image.name} at {where(metrics)}: sensor {metrics['sensor_psnr_db']:.2f} dB → "
                      f"reconstruction {metrics['psnr_db']:.2f} dB PSNR, SSIM {metrics['ssim']:.3f}; wrote {out}")

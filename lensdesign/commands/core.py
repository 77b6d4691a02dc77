"""Commands `check`, `baseline` and `psf`: the physics core on the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec, load_spec

console = Console()


def fmt_len(x: float) -> str:
    """Human length from metres."""
    if math.isinf(x):
        return "inf"
    for unit, f in (("m", 1.0), ("mm", 1e-3), ("um", 1e-6), ("nm", 1e-9)):
        if abs(x) >= f:
            return f"{x / f:.4g} {unit}"
    return f"{x:.3g} m"


def memory_estimate(spec: Spec) -> dict[str, float]:
    """Bytes held by one PSF-stack forward + backward (complex64), by part: on the 1-D path for ring designs
    (`RadialSystem.memory_estimate`), else on the 2-D grid."""
    from lensdesign.optics.hankel import RadialSystem, choose_path
    from lensdesign.optics.psf import plan_grid

    spec = spec.optical_spec
    if choose_path(spec).radial:
        return RadialSystem(spec, nearest=min(spec.depths_m), build=False).memory_estimate()
    g = plan_grid(spec)
    dw = len(spec.depths_m) * len(spec.wavelengths)
    k = g.window_fine
    return {
        "source waves": dw * g.n * g.n * 8,
        "transfer functions": len(spec.wavelengths) * g.m * g.m * 8,
        "FFT workspace": 4 * g.m * g.m * 8,  # padded inputs (forward, backward), spectrum, propagated field
        "saved fields (backward)": dw * k * k * 8,
    }


def channel_rows(spec: Spec) -> str:
    """One line per broadband channel: its mean wavelength and its sampled wavelengths (nm) × weights."""
    ch = spec.spectral
    n = len(ch.wavelengths_m) // len(ch.labels)
    lines = [f"{ch.source}, {n} wavelengths per channel (equal-area quantiles)"]
    for c, label in enumerate(ch.labels):
        pts = " ".join(f"{ch.wavelengths_m[i] * 1e9:.0f}×{ch.weights[c, i]:.3f}" for i in range(c * n, (c + 1) * n))
        lines.append(f"{label} (mean {ch.centroids_m[c] * 1e9:.1f} nm): {pts}")
    return "\n".join(lines)


def check_spec(spec: Spec) -> Table:
    """A table describing how `spec` will be simulated (raises SpecError when it cannot be)."""
    from lensdesign.optics.element import check_max_height, max_sag_sampled
    from lensdesign.optics.hankel import choose_path, choose_radial_propagator, ring_count, ring_width
    from lensdesign.optics.psf import plan_grid
    from lensdesign.units import channel_focus_spread, defocus_w020_m

    g = plan_grid(spec.optical_spec)  # every sampled wavelength of broadband channels
    check_max_height(spec)
    o = spec.optics
    t = Table(title=f"lensdesign check: {spec.name} ({spec.task})", show_header=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    t.add_row("aperture / sensor distance", f"{fmt_len(o.aperture)} / {fmt_len(o.sensor_distance)} "
              f"(f/{o.sensor_distance / o.aperture:.2f}, NA {math.sin(math.atan(o.aperture / 2 / o.sensor_distance)):.3f})")
    idx = spec.refractive_indices
    t.add_row("wavelengths (n)", ", ".join(f"{w * 1e9:.0f} nm ({n:.4f})" for w, n in zip(spec.wavelengths, idx, strict=True)))
    if spec.spectral is not None:
        t.add_row("channels (spectrum)", channel_rows(spec))
    t.add_row("material / max height", f"{spec.material_name} / {fmt_len(spec.max_height_m)}")
    if o.element != "diffractive":
        t.add_row("element", f"{o.element}: unwrapped sag, at most {fmt_len(max_sag_sampled(spec))} sampled at "
                  f"this pitch; one wave = {fmt_len(spec.wave_height_m)}")
    depths = ", ".join(fmt_len(z) for z in spec.depths_m)
    t.add_row("depths", f"{depths}  (focus of reference lenses: {fmt_len(spec.focus_depth_m)})")
    w020 = defocus_w020_m(spec)
    waves = f"{w020 / spec.design_wavelength_m:.2f} waves at {spec.design_wavelength_m * 1e9:.0f} nm"
    if len(spec.depths_m) > 1:
        t.add_row("defocus at range ends", f"W020 = {fmt_len(w020)} = {waves}")
    elif w020 > 0:
        t.add_row("defocus", f"single depth, W020 = {fmt_len(w020)} = {waves} from the reference focus")
    else:
        t.add_row("defocus", "single depth, in focus for the reference lenses")
    spread = channel_focus_spread(spec)
    if spread is not None:
        lo, hi = spec.diopter_range
        per = ", ".join(f"{lbl} ±{d:.2f} D" for lbl, d in zip(spec.spectral.labels, spread, strict=True))
        t.add_row("focus spread in a channel", f"{per} (RMS over the sampled wavelengths, {o.element}) against the "
                  f"depth range's {abs(hi - lo):.2f} D: broadband training matters more as they become comparable")
    t.add_row("element grid", f"{g.n} × {g.n} at {fmt_len(g.dx)} (parameterization {o.parameterization})")
    t.add_row("padded grid", f"{g.m} × {g.m} ({g.m * g.dx * 1e3:.3g} mm)")
    nf = ", ".join(f"{(o.aperture / 2) ** 2 / (w * o.sensor_distance):.0f}" for w in spec.wavelengths)
    t.add_row("Fresnel number", nf)
    path = choose_path(spec)
    if path.radial:
        form, w = choose_radial_propagator(g), ring_width(spec)
        t.add_row("PSF path", f"1-D (Hankel), {ring_count(g.n, g.dx, w)} rings of {fmt_len(w)}: {path.reason}")
        t.add_row("propagator", f"{form.kind}: {form.reason}")
    else:
        t.add_row("PSF path", f"2-D grid: {path.reason}")
        t.add_row("propagator", f"{g.choice.kind}: {g.choice.reason}")
    t.add_row("sensor", f"{spec.sensor.resolution[0]} × {spec.sensor.resolution[1]} px at {fmt_len(spec.sensor.pixel_pitch)}"
              + (f", super-resolution ×{spec.sensor.superres_factor}" if spec.sensor.superres_factor > 1 else ""))
    t.add_row("PSF window", f"{g.psf_size} × {g.psf_size} px at {fmt_len(g.sensor_pitch)} "
              f"({g.psf_size * g.sensor_pitch * 1e3:.3g} mm; {g.bin} × {g.bin} simulation pixels per sample)")
    mem = memory_estimate(spec)
    t.add_row("memory (PSF forward+backward)", f"{sum(mem.values()) / 2**20:.0f} MiB ("
              + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in mem.items()) + ")")
    for note in g.notes:
        t.add_row("note", note)
    return t


def register(app: typer.Typer) -> None:
    """Add `check`, `baseline` and `psf` to the app."""
    for add in (_check, _baseline, _psf):
        add(app)


def _check(app: typer.Typer) -> None:
    @app.command()
    def check(spec: Annotated[Path, typer.Argument(help="spec YAML file")]) -> None:
        """Validate a spec and show how it will be simulated: grid, Fresnel number, propagator and why, memory."""
        s = load_spec(spec)
        console.print(check_spec(s))
        console.print("[green]ok[/green]: the spec is valid and well sampled")


def _baseline(app: typer.Typer) -> None:
    @app.command()
    def baseline(
        spec: Annotated[Path, typer.Argument(help="spec YAML file")],
        out: Annotated[Path, typer.Option("--out", help="run directory to write")],
        kind: Annotated[str, typer.Option("--kind", help="fresnel | cubic | achromat (rings trained to focus every "
                                                          "wavelength at the focus depth)")] = "fresnel",
        strength: Annotated[float | None, typer.Option(help="cubic strength α in waves (default from the depth range)")] = None,
        focus_depth: Annotated[str | None, typer.Option("--focus-depth", help="focus depth, e.g. '1 m' or inf")] = None,
        force: Annotated[bool, typer.Option("--force", help="overwrite an existing run directory")] = False,
    ) -> None:
        """Write a run directory for a reference design: a Fresnel lens, a cubic phase plate or a diffractive
        achromat (Peng et al. 2016: a ring design trained with the focus task on the 1-D path)."""
        from lensdesign.baselines import cubic_height, default_cubic_strength, fresnel_height
        from lensdesign.lock import run_lock
        from lensdesign.optics.psf import plan_grid
        from lensdesign.rundir import RunDir, design_meta
        from lensdesign.spec import parse_length

        s = load_spec(spec)
        if kind not in ("fresnel", "cubic", "achromat"):
            raise LensdesignError(f"--kind: unknown baseline {kind!r}; use fresnel, cubic or achromat")
        if kind == "achromat" and (strength is not None or focus_depth is not None):
            raise LensdesignError("--kind achromat: it focuses at the spec's scene.focus_depth and has no strength; "
                                  "drop --strength / --focus-depth")
        fd = None
        if focus_depth is not None:
            try:
                fd = parse_length(focus_depth, allow_inf=True)
            except ValueError as e:
                raise LensdesignError(f"--focus-depth: {e}") from None
        g = plan_grid(s)
        run = RunDir(out)
        if run.has_design() and not force:
            raise LensdesignError(f"{out}: already holds a design; pass --force to overwrite or choose another --out")
        fdm = s.focus_depth_m if fd is None else fd
        tensors = None
        if kind == "fresnel":
            h = fresnel_height(s, g.n, fdm)
            extra = {"focus_depth_m": None if math.isinf(fdm) else fdm}
        elif kind == "achromat":
            from lensdesign.achromat import achromat_design

            h, prof, width = achromat_design(s, log=console.print)
            extra = {"focus_depth_m": None if math.isinf(fdm) else fdm, "ring_width_m": width}
            tensors = {"radial_profile_m": prof}
        else:
            a = default_cubic_strength(s) if strength is None else strength
            h = cubic_height(s, g.n, a, fdm)
            extra = {"focus_depth_m": None if math.isinf(fdm) else fdm, "cubic_strength_waves": a}
        meta = design_meta(s, f"baseline-{kind}", g.n, **extra)
        meta["parameterization"] = "radial" if kind == "achromat" else "pixel"
        meta["element"] = "diffractive"  # the reference lenses are diffractive reliefs whatever the spec's element
        if kind == "achromat" and s.optics.element != "diffractive":
            meta["max_height_m"] = s.wave_height_m  # as `achromat_spec`: a relief of one wave
        with run_lock(out, "baseline", create=False):  # an existing run (--force) has one writer at a time
            run.write_design(s, h.float(), meta, tensors)
        console.print(f"wrote {kind} baseline ({g.n} × {g.n} at {fmt_len(g.dx)}) to {out}")


def _psf(app: typer.Typer) -> None:
    @app.command()
    def psf(
        run: Annotated[Path, typer.Argument(help="run directory")],
        out: Annotated[Path, typer.Option("--out", help="output file: .npz or .tif/.tiff")],
        quantized: Annotated[bool, typer.Option(help="use the height map quantized to fabrication.levels")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    ) -> None:
        """Compute the PSF stack (depth, wavelength, y, x) of a run's design and save it as .npz or .tiff. With
        `spectrum`, one plane per channel: the weighted sum over its sampled wavelengths, the PSF the pipeline
        images with (`wavelengths_m` holds the channels' mean wavelengths)."""
        import torch

        from lensdesign.device import pick_device
        from lensdesign.optics.hankel import RadialSystem, choose_path
        from lensdesign.optics.psf import OpticalSystem
        from lensdesign.rundir import RunDir, atomic_write_bytes
        from lensdesign.system import mix_channels

        suffix = out.suffix.lower()
        if suffix not in (".npz", ".tif", ".tiff"):
            raise LensdesignError(f"--out: {out.name} has an unknown format; use a .npz or .tiff file name")
        r = RunDir(run).require()
        s = r.load_spec()
        d = r.load_design(s)
        h = d.quantized() if quantized else d.height_m
        ht = torch.as_tensor(np.asarray(h), dtype=torch.float32)
        sim = s.optical_spec  # one plane per sampled wavelength
        if choose_path(s).radial and d.parameterization == "radial":  # a ring design: the 1-D path
            system: OpticalSystem | RadialSystem = RadialSystem(sim, device=pick_device(device))
            element = system.profile_of(ht)
        else:
            system = OpticalSystem(sim, device=pick_device(device))
            element = ht
        ch = s.spectral
        with torch.no_grad():
            stack = system.psf(element)
            if ch is not None:  # the channel PSFs: weighted sums over each channel's sampled wavelengths
                stack = mix_channels(stack, torch.tensor(ch.weights, dtype=stack.dtype, device=stack.device))
            p = stack.cpu().numpy().astype(np.float32)
        pitch = system.grid.sensor_pitch
        depths = np.array(system.depths, dtype=np.float64)
        wls = np.array(s.wavelengths, dtype=np.float64)
        meta: dict = {}
        if ch is not None:
            meta = {"channels": list(ch.labels), "sampled_wavelengths_m": np.array(ch.wavelengths_m, dtype=np.float64),
                    "channel_weights": np.asarray(ch.weights, dtype=np.float64)}
        import io

        buf = io.BytesIO()
        if suffix == ".npz":
            np.savez(buf, psf=p, depths_m=depths, wavelengths_m=wls, pitch_m=np.float64(pitch), **meta)
        else:
            import tifffile

            desc = json.dumps({"axes": "depth,channel,y,x" if ch else "depth,wavelength,y,x",
                               "depths_m": [None if math.isinf(z) else z for z in depths],
                               "wavelengths_m": wls.tolist(), "pitch_m": pitch, "psf_shape": list(p.shape),
                               **{k: np.asarray(v).tolist() for k, v in meta.items()}})
            px_per_cm = 1e-2 / pitch
            tifffile.imwrite(buf, p.reshape(-1, *p.shape[2:]), description=desc, resolution=(px_per_cm, px_per_cm),
                             resolutionunit="CENTIMETER", metadata=None)
        atomic_write_bytes(out, buf.getvalue())
        what = "PSF stack" if ch is None else (f"channel PSF stack (weighted sums of {len(ch.wavelengths_m) // len(ch.labels)}"
                                               f" sampled wavelengths per channel, {ch.source})")
        console.print(f"wrote {what} {tuple(p.shape)} at {fmt_len(pitch)} to {out} "
                      f"(energy per PSF {p.sum(axis=(2, 3)).min():.4f} … {p.sum(axis=(2, 3)).max():.4f})")

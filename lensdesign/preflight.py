"""Checks made before a run starts, so that a run that cannot succeed creates nothing and prints no header:
the training images, the device, the memory the PSF stack needs against the memory available, and that the
run directory can be written."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def check_images(spec: Spec) -> None:
    """`training.images`: readable (each picture decodes; the decoded set is cached for the run), at least two,
    each at least half the training patch (patch_size × superres_factor pixels) on its shorter side."""
    from lensdesign.imaging.scenes import _raw_images
    from lensdesign.optimize import patch_size

    src = spec.training.images
    try:
        train, val = _raw_images(src)
    except MemoryError:
        raise LensdesignError(f"training.images: {src}: the pictures do not fit in memory; use smaller ones") from None
    if src == "builtin":
        return
    need = math.ceil(patch_size(spec) * spec.sensor.superres_factor / 2)
    for name, rgb in train + val:
        h, w = rgb.shape[:2]
        if min(h, w) < need:
            raise LensdesignError(f"training.images: {Path(src) / name} is {w} × {h} pixels; every picture needs at least "
                                  f"{need} pixels on its shorter side (half the training patch); use larger pictures or "
                                  "a smaller training.patch_size")


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a run on `device`: GPU memory on CUDA, else MemAvailable of /proc/meminfo (or psutil)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(spec: Spec, device: torch.device) -> None:
    """The PSF stack's memory estimate (see `lensdesign check`) must fit in the memory available on `device`."""
    from lensdesign.commands.core import memory_estimate

    need = sum(memory_estimate(spec).values())
    free = available_memory(device)
    if free is not None and need > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise LensdesignError(f"memory: the PSF stack needs about {_gib(need)} but only {_gib(free)} of {where} is free "
                              f"on {device}; reduce optics.aperture / optics.padding, raise optics.pitch, or use a machine "
                              "with more memory ('lensdesign check' shows the estimate)")


def check_writable(out: Path) -> None:
    """The run directory `out` (or its nearest existing parent) is a folder this process can write in."""
    p = out.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise LensdesignError(f"--out: {p} is a file, not a folder; give a folder for the run")
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise LensdesignError(f"--out: cannot write in {p} ({e.strerror or e.__class__.__name__}); choose a writable "
                              "folder") from None
    if out.exists() and not os.access(out, os.W_OK | os.X_OK):
        raise LensdesignError(f"--out: cannot write in {out}; choose a writable folder")


def check_run(spec: Spec, out: Path, device: torch.device) -> None:
    """Everything `optimize` needs before it creates `out`: writable output, memory, training images."""
    check_writable(out)
    check_memory(spec, device)
    check_images(spec)

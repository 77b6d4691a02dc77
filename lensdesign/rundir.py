"""The run directory: the contract between optimize / baseline, export and report.

RUN/spec.yaml (resolved spec), RUN/design.safetensors (tensors: `height_m` (N, N) float32 and any
reconstruction parameters, e.g. `recon.*`), RUN/design.json (metadata: pitch_m, max_height_m, kind, ...).
Every file is written atomically (temporary file in the same folder, then rename); loading never executes code.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec, load_spec

SPEC = "spec.yaml"
DESIGN = "design.safetensors"
META = "design.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def _umask_mode() -> int:
    """Permissions a plainly created file gets (0o666 less the umask); mkstemp would give 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Design:
    """A design read from a run directory. Heights in metres."""

    height_m: np.ndarray
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def pitch_m(self) -> float:
        return float(self.meta["pitch_m"])

    @property
    def max_height_m(self) -> float:
        return float(self.meta["max_height_m"])


class RunDir:
    """Paths and safe I/O for one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def require(self) -> RunDir:
        """Check this is a run directory; raise a one-line error naming the fix otherwise."""
        if not self.path.is_dir():
            raise LensdesignError(f"{self.path}: no such run directory; create one with 'lensdesign optimize' "
                                  "or 'lensdesign baseline'")
        for name in (SPEC, DESIGN, META):
            if not (self.path / name).is_file():
                raise LensdesignError(f"{self.path}: not a run directory ({name} missing); create one with "
                                      "'lensdesign optimize' or 'lensdesign baseline'")
        return self

    def load_spec(self) -> Spec:
        return load_spec(self.path / SPEC)

    def load_design(self) -> Design:
        self.require()
        try:
            tensors = load_file(str(self.path / DESIGN))
            meta = json.loads((self.path / META).read_text())
        except Exception as e:
            raise LensdesignError(f"{self.path}: design files are unreadable ({e.__class__.__name__}); re-run the "
                                  "command that made them") from None
        if "height_m" not in tensors:
            raise LensdesignError(f"{self.path / DESIGN}: no height_m tensor; re-run the command that made it")
        h = tensors.pop("height_m").to(torch.float32).numpy()
        return Design(height_m=h, meta=meta, tensors=tensors)

    def write_design(self, spec: Spec, height_m: np.ndarray | torch.Tensor, meta: dict[str, Any],
                     tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write spec.yaml, design.safetensors and design.json (each atomically; design.json last)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / SPEC, spec.to_yaml())
        h = torch.as_tensor(np.asarray(height_m.detach().cpu() if isinstance(height_m, torch.Tensor) else height_m),
                            dtype=torch.float32)
        all_t = {"height_m": h, **(tensors or {})}
        atomic_save_tensors(self.path / DESIGN, all_t)
        atomic_write_json(self.path / META, meta)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")


def design_meta(spec: Spec, kind: str, n: int, **extra: Any) -> dict[str, Any]:
    """The metadata every design carries: what a fab or a report needs without re-reading the spec."""
    return {
        "name": spec.name,
        "kind": kind,
        "pitch_m": spec.optics.pitch,
        "grid": n,
        "aperture_m": spec.optics.aperture,
        "max_height_m": spec.max_height_m,
        "design_wavelength_m": spec.design_wavelength_m,
        "material": spec.material_name,
        "parameterization": spec.optics.parameterization,
        "levels": spec.fabrication.levels,
        **extra,
    }

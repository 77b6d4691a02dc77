"""The run directory: the contract between optimize / baseline, export, psf, simulate and report.

RUN/spec.yaml (resolved spec), RUN/design.safetensors (tensors: `height_m` (N, N) float32 and any
reconstruction parameters, e.g. `recon.*`), RUN/design.json (metadata: pitch_m, max_height_m, kind, ...),
RUN/summary.json (held-out image quality of the design and the baselines), RUN/checkpoint.safetensors (resume
state), RUN/metrics.jsonl (one record per logged step). The file names are defined here and nowhere else.

Every file is written atomically (temporary file in the same folder, then rename); loading never executes code
and validates every number where it enters: `RunDir.load_design()` / `load_summary()` / `load_checkpoint()`
return typed objects (`Design`, `Summary`) or raise a one-line `LensdesignError` naming the file and the field
(non-finite values, heights outside [0, max_height], shapes or dtypes that do not fit the spec, truncated or
corrupt safetensors, malformed JSON).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec, load_spec

if TYPE_CHECKING:
    from lensdesign.imaging.reconstruct import WienerReconstruction

SPEC = "spec.yaml"
DESIGN = "design.safetensors"
META = "design.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.safetensors"
RUN_FILES = (SPEC, DESIGN, META, METRICS, SUMMARY, CHECKPOINT)
HEIGHT = "height_m"

HEIGHT_TOLERANCE = 1e-5  # heights may exceed [0, max_height] by this fraction of max_height (float32 wrap-around)
_REMAKE = "re-create the run with the command that made it"


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


# ---- validation where numbers enter ----------------------------------------------------------------------------

def bad_value(source: str | Path, name: str, problem: str, fix: str = _REMAKE) -> LensdesignError:
    """The one-line error for a bad value `name` read from `source` (a file)."""
    return LensdesignError(f"{source}: {name} {problem}; {fix}")


def first_nonfinite(obj: Any, prefix: str = "") -> str | None:
    """Dotted path (e.g. `design.gamma[1]`) of the first NaN / ±inf float inside nested dicts and lists."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (prefix or "value")
    if isinstance(obj, dict):
        items: Any = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for name, v in items:
        hit = first_nonfinite(v, name)
        if hit is not None:
            return hit
    return None


def read_json_object(path: Path, fix: str = _REMAKE) -> dict[str, Any]:
    """A JSON file holding an object with finite numbers only (raises a one-line LensdesignError otherwise)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise bad_value(path, "content", f"is not valid JSON (line {e.lineno}, column {e.colno})", fix) from None
    except (UnicodeDecodeError, OSError) as e:
        raise bad_value(path, "content", f"is unreadable ({e.__class__.__name__})", fix) from None
    if not isinstance(data, dict):
        raise bad_value(path, "content", f"is a JSON {type(data).__name__}, not an object", fix)
    bad = first_nonfinite(data)
    if bad is not None:
        raise bad_value(path, bad, "is not a finite number", fix)
    return data


def read_tensors(path: Path, fix: str = _REMAKE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; every floating-point tensor must be finite."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as e:
        raise bad_value(path, "content", f"is not a readable safetensors file ({e.__class__.__name__}: truncated "
                        "or corrupt)", fix) from None
    for k, v in tensors.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise bad_value(path, f"tensor {k}", "holds non-finite values (NaN or inf)", fix)
    return tensors, meta


def _number(meta: dict[str, Any], key: str, source: Path, default: float | None = None, *,
            positive: bool = False) -> float | None:
    """A finite real number field of a JSON object (None → `default`)."""
    v = meta.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad_value(source, key, f"= {v!r} is not a finite number")
    if positive and v <= 0:
        raise bad_value(source, key, f"= {v!r} must be positive")
    return float(v)


def _text(meta: dict[str, Any], key: str, source: Path, default: str) -> str:
    v = meta.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise bad_value(source, key, f"= {v!r} is not a string")
    return v


# ---- typed run contents ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class Design:
    """A design read from a run directory: the height map (N, N) float32 in metres, design.json as `meta` (kept
    whole for fields without a typed accessor) and the other tensors of design.safetensors (e.g. `recon.*`).

    The typed fields are read from `meta` (falling back to the spec's values for runs that predate a field):
    pitch_m, max_height_m and design_wavelength_m in metres; levels the fabrication levels. `source` names
    design.json in error messages."""

    height_m: np.ndarray
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    spec: Spec | None = None
    source: Path = Path(META)
    kind: str = field(init=False)
    name: str = field(init=False)
    pitch_m: float = field(init=False)
    max_height_m: float = field(init=False)
    levels: int = field(init=False)
    design_wavelength_m: float | None = field(init=False)
    parameterization: str = field(init=False)
    material: str | None = field(init=False)
    aperture_m: float | None = field(init=False)
    element: str = field(init=False)

    def __post_init__(self) -> None:
        m, s, src = self.meta, self.spec, self.source
        self.kind = _text(m, "kind", src, "unknown")
        self.name = _text(m, "name", src, s.name if s else "design")
        pitch = _number(m, "pitch_m", src, s.optics.pitch if s else None, positive=True)
        mh = _number(m, "max_height_m", src, s.max_height_m if s else None, positive=True)
        if pitch is None or mh is None:
            raise bad_value(src, "pitch_m" if pitch is None else "max_height_m", "is missing")
        self.pitch_m, self.max_height_m = pitch, mh
        lv = m.get("levels", s.fabrication.levels if s else None)
        if isinstance(lv, bool) or not isinstance(lv, int) or lv < 2:
            raise bad_value(src, "levels", f"= {lv!r} is not an integer ≥ 2")
        self.levels = lv
        self.design_wavelength_m = _number(m, "design_wavelength_m", src, s.design_wavelength_m if s else None,
                                           positive=True)
        self.parameterization = _text(m, "parameterization", src, s.optics.parameterization if s else "pixel")
        self.material = _text(m, "material", src, s.material_name if s else "") or None
        self.aperture_m = _number(m, "aperture_m", src, s.optics.aperture if s else None, positive=True)
        self.element = _text(m, "element", src, s.optics.element if s else "diffractive")

    def quantized(self, levels: int | None = None) -> np.ndarray:
        """The height map (m, float32) quantized to `levels` (default the design's fabrication levels) with the
        quantizer export and training share (lensdesign.fabrication.quantize); a refractive or hybrid sag is not
        wrapped."""
        from lensdesign.fabrication.quantize import quantize

        q = quantize(np.asarray(self.height_m, dtype=np.float64), self.max_height_m, levels or self.levels,
                     wrap=self.element == "diffractive")
        return np.asarray(q, dtype=np.float32)

    @property
    def gamma(self) -> float | list[float] | None:
        """The Wiener γ recorded in design.json (scalar or one per channel), if any."""
        return self.meta.get("gamma")

    def reconstruction(self) -> WienerReconstruction | None:
        """The run's learned reconstruction with a U-Net, rebuilt from design.json (`reconstruction_arch`: plain
        numbers) and the `recon.*` tensors; None for a Wiener-only design or a baseline run."""
        from lensdesign.imaging.reconstruct import reconstruction_from_design

        arch = self.meta.get("reconstruction_arch")
        if not isinstance(arch, dict) or arch.get("kind") == "wiener":
            return None
        return reconstruction_from_design(arch, self.tensors)


def load_reconstruction(design: Design) -> WienerReconstruction | None:
    """`design.reconstruction()` (a run's learned reconstruction with a U-Net, or None)."""
    return design.reconstruction()


@dataclass(frozen=True)
class Score:
    """Held-out image quality of one lens (a summary.json entry): PSNR in dB, SSIM, per depth."""

    mean_psnr_db: float
    mean_ssim: float
    per_depth: list[dict[str, Any]]
    data: dict[str, Any]

    @classmethod
    def parse(cls, data: Any, name: str, source: Path) -> Score:
        if not isinstance(data, dict):
            raise bad_value(source, name, "is not an object", _SUMMARY_FIX)
        for key in ("mean_psnr_db", "mean_ssim"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad_value(source, f"{name}.{key}", f"= {v!r} is not a number", _SUMMARY_FIX)
        per = data.get("per_depth", [])
        if not isinstance(per, list) or not all(isinstance(d, dict) for d in per):
            raise bad_value(source, f"{name}.per_depth", "is not a list of objects", _SUMMARY_FIX)
        return cls(float(data["mean_psnr_db"]), float(data["mean_ssim"]), per, data)


_SUMMARY_FIX = "delete it or re-run 'lensdesign optimize'"


@dataclass(frozen=True)
class Summary:
    """RUN/summary.json: the design (continuous, quantized) and the baselines on held-out images; `data` is the
    whole file as written by `lensdesign.evaluation.summary.summarize`."""

    design: Score
    design_quantized: Score | None
    baselines: dict[str, Score]
    data: dict[str, Any]

    @classmethod
    def parse(cls, data: dict[str, Any], source: Path) -> Summary:
        dq = data.get("design_quantized")
        base = data.get("baselines", {})
        if not isinstance(base, dict):
            raise bad_value(source, "baselines", "is not an object", _SUMMARY_FIX)
        return cls(design=Score.parse(data.get("design"), "design", source),
                   design_quantized=None if dq is None else Score.parse(dq, "design_quantized", source),
                   baselines={k: Score.parse(v, f"baselines.{k}", source) for k, v in base.items()}, data=data)


class RunDir:
    """Paths, safe I/O and validated loading for one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._spec: Spec | None = None

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

    def has_spec(self) -> bool:
        """Whether the folder holds a spec.yaml."""
        return (self.path / SPEC).is_file()

    def has_design(self) -> bool:
        """Whether the folder already holds a design (design.json)."""
        return (self.path / META).exists()

    def load_spec(self) -> Spec:
        """The run's spec.yaml (validated like any spec)."""
        if self._spec is None:
            self._spec = load_spec(self.path / SPEC)
        return self._spec

    def load_design(self, spec: Spec | None = None) -> Design:
        """The validated design: readable files, finite numbers, a float height map of the spec's grid
        (N × N at the spec's pitch) with heights within [0, max_height]."""
        from lensdesign.optics.psf import plan_grid

        self.require()
        spec = self.load_spec() if spec is None else spec
        tensors, _ = read_tensors(self.path / DESIGN)
        meta = read_json_object(self.path / META)
        try:
            h_t = tensors.pop(HEIGHT)
        except KeyError:
            raise bad_value(self.path / DESIGN, f"tensor {HEIGHT}", "is missing") from None
        if not h_t.is_floating_point():
            raise bad_value(self.path / DESIGN, f"tensor {HEIGHT}", f"has dtype {h_t.dtype}, not floating point")
        h = h_t.to(torch.float32).numpy()
        design = Design(height_m=h, meta=meta, tensors=tensors, spec=spec, source=self.path / META)
        n = plan_grid(spec).n
        if h.shape != (n, n):
            raise bad_value(self.path / DESIGN, f"tensor {HEIGHT}", f"has shape {tuple(h.shape)}, but the spec's grid "
                            f"is {n} × {n}", "the run's spec.yaml was changed; re-create the run")
        if not math.isclose(design.pitch_m, spec.optics.pitch, rel_tol=1e-6):
            raise bad_value(self.path / META, "pitch_m", f"= {design.pitch_m:.6g} m differs from the spec's optics.pitch "
                            f"{spec.optics.pitch:.6g} m", "the run's spec.yaml was changed; re-create the run")
        tol = HEIGHT_TOLERANCE * design.max_height_m
        lo, hi = float(h.min()), float(h.max())
        if lo < -tol or hi > design.max_height_m + tol:
            raise bad_value(self.path / DESIGN, f"tensor {HEIGHT}", f"spans {lo:.4g} … {hi:.4g} m, outside [0, "
                            f"max_height_m = {design.max_height_m:.4g} m]")
        return design

    def load_summary(self) -> Summary | None:
        """The validated summary.json, or None when the run has none (a baseline run)."""
        p = self.path / SUMMARY
        if not p.is_file():
            return None
        return Summary.parse(read_json_object(p, _SUMMARY_FIX), p)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) of checkpoint.safetensors; every floating tensor finite."""
        p = self.path / CHECKPOINT
        if not p.is_file():
            raise LensdesignError(f"{self.path}: no {CHECKPOINT} to resume from; run without --resume (add --force "
                                  "to overwrite the run)")
        return read_tensors(p, "start again with --force")

    def write_design(self, spec: Spec, height_m: np.ndarray | torch.Tensor, meta: dict[str, Any],
                     tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write spec.yaml, design.safetensors and design.json (each atomically; design.json last)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / SPEC, spec.to_yaml())
        h = torch.as_tensor(np.asarray(height_m.detach().cpu() if isinstance(height_m, torch.Tensor) else height_m),
                            dtype=torch.float32)
        all_t = {HEIGHT: h, **(tensors or {})}
        atomic_save_tensors(self.path / DESIGN, all_t)
        atomic_write_json(self.path / META, meta)
        self._spec = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json (atomically, strict JSON)."""
        atomic_write_json(self.path / SUMMARY, summary)

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
        "element": spec.optics.element,
        "levels": spec.fabrication.levels,
        **extra,
    }

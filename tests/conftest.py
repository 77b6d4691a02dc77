"""Shared fixtures: tiny specs that run in seconds, and a CLI runner that checks real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The optical system of the tiny specs: 0.5 mm at f/20, 126² element, 3 depths 0.1 m … ∞.
TINY_SYSTEM = {
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um"},
    "wavelengths": ["460 nm", "550 nm", "640 nm"],
    "scene": {"depths": {"min": "0.1 m", "max": "inf", "count": 3}},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32], "read_noise": 0.005},
}
TINY = {
    "name": "tiny",
    "task": "edof",
    **TINY_SYSTEM,
    "training": {"steps": 5, "images": "builtin", "seed": 0, "device": "cpu"},
    "fabrication": {"process": "multilevel", "levels": 8, "min_feature": "4 um"},
}

# A tiny but not trivial EDOF problem for optimization: 0.71 waves of defocus at the ends of 0.04 m … ∞.
HARD = {
    "name": "tinyhard",
    "task": "edof",
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um", "padding": 1.5},
    "wavelengths": ["460 nm", "550 nm", "640 nm"],
    "scene": {"depths": {"min": "0.04 m", "max": "inf", "count": 3}},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32], "read_noise": [0.002, 0.01], "psf_size": 21},
    "reconstruction": {"gamma_init": 0.01},
    "training": {"steps": 30, "batch_size": 2, "patch_size": 32, "learning_rate": 0.05, "images": "builtin",
                 "seed": 0, "device": "cpu", "validation_images": 3},
    "fabrication": {"process": "multilevel", "levels": 8, "min_feature": "4 um", "height_tolerance": "20 nm"},
}


def write_spec(tmp: Path, data: dict, name: str = "spec.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.fixture
def tiny_spec_dict() -> dict:
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_spec(tmp_path: Path, tiny_spec_dict: dict) -> Path:
    return write_spec(tmp_path, tiny_spec_dict)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `lensdesign ARGS` in a subprocess, as a user would; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "lensdesign.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def baseline_run(tmp_path: Path, tiny_spec: Path) -> Path:
    """A run directory holding the Fresnel baseline of the tiny spec."""
    out = tmp_path / "run-fresnel"
    r = run_cli("baseline", tiny_spec, "--kind", "fresnel", "--out", out)
    assert r.returncode == 0, r.stderr
    return out

"""Shared fixtures: tiny specs that run in seconds, and a CLI runner that checks real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny",
    "task": "edof",
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um"},
    "wavelengths": ["460 nm", "550 nm", "640 nm"],
    "scene": {"depths": {"min": "0.1 m", "max": "inf", "count": 3}},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32], "read_noise": 0.005},
    "training": {"steps": 5, "images": "builtin", "seed": 0, "device": "cpu"},
    "fabrication": {"process": "multilevel", "levels": 8, "min_feature": "4 um"},
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

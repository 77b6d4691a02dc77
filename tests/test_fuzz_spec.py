"""Property-based fuzzing of the spec boundary: whatever a spec file holds — valid values, extreme numbers,
wrong types, unicode, missing and unknown keys — `lensdesign check` ends with exit 0 (valid, "ok") or exit 2 and
one line, never a traceback, and within its time budget (absurd sizes are refused, never allocated).

The examples are generated from a fixed seed (derandomized); LENSDESIGN_FUZZ_EXAMPLES sets how many (default 200).
"""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY, write_spec
from tests.inproc import run_main

EXAMPLES = int(os.environ.get("LENSDESIGN_FUZZ_EXAMPLES", "200"))
BUDGET_S = 30  # one `check` (normally a few ms); a hang or a giant allocation trips it

# A spec with every section and most fields present, so that mutations reach them.
FULL: dict[str, Any] = {
    **copy.deepcopy(TINY),
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um", "material": "fused_silica",
               "parameterization": "pixel", "max_height": "auto", "padding": 2.0, "propagator": "auto",
               "zernike_terms": 36, "fourier_fraction": 0.625},
    "sensor": {"pixel_pitch": "8 um", "resolution": [32, 32], "read_noise": [0.001, 0.01], "full_well": None,
               "bit_depth": None, "psf_size": None, "superres_factor": 1},
    "reconstruction": {"kind": "wiener", "gamma_init": 0.003, "unet_channels": 16, "unet_depth": 3},
    "scene": {"depths": {"min": "0.1 m", "max": "inf", "count": 3}, "focus_depth": "auto"},
}
FULL["training"].update({"batch_size": 1, "learning_rate": 0.1, "patch_size": 32, "validation_images": 4,
                         "checkpoint_minutes": 2.0, "max_minutes": None})
FULL["fabrication"].update({"height_tolerance": "20 nm", "misalignment": None})


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out: list[tuple] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        out += [(*prefix, i) for i in range(len(d))]
    return out


PATHS = _paths(FULL)
SECTIONS = [(), *[(k,) for k, v in FULL.items() if isinstance(v, dict)], ("scene", "depths")]

UNITS = ["m", "mm", "um", "µm", "nm", "pm", "cm", "", "parsec", "MM", "μm"]
plausible = st.sampled_from(["2 um", "4 um", "8 um", "550 nm", "1 m", "inf", "auto", 0.5, 1, 2, 3, 16, 64, 0.01,
                             [0.001, 0.01], [1, 2], "pixel", "radial", "zernike", "fourier", "unet", "superres",
                             "focus", "transfer", "impulse", "asm", "grayscale", "two_photon", "cpu", "cuda"])
extreme_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e-300, 5e-324, 1e300, 1.7976931348623157e308, -1, 2**31, 2**63, 10**30, -(10**30)]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
unit_strings = st.builds(lambda x, u: f"{x} {u}".strip(), st.one_of(st.floats(allow_nan=True), st.integers()),
                         st.sampled_from(UNITS))
scalars = st.one_of(
    extreme_numbers,
    unit_strings,
    st.text(max_size=12),
    st.sampled_from([None, True, False, "", "inf", "-inf", "nan", ".inf", "∞", "１２ mm", "\u202e5 mm", "5 mm\x00"]),
)
values = st.one_of(
    plausible,
    scalars,
    st.lists(st.one_of(plausible, scalars), max_size=5),
    st.dictionaries(st.text(max_size=8), st.one_of(plausible, scalars), max_size=3),
)


def _set(doc: dict, path: tuple, value: Any) -> None:
    node: Any = doc
    for k in path[:-1]:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and isinstance(k, int) and k < len(node):
            node = node[k]
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value


def _delete(doc: dict, path: tuple) -> None:
    node: Any = doc
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            return
        node = node[k]
    if isinstance(node, dict):
        node.pop(path[-1], None)


mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), values),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("extra"), st.sampled_from(SECTIONS), st.tuples(st.text(min_size=1, max_size=10), scalars)),
)


@st.composite
def specs(draw: st.DrawFn) -> Any:
    """A spec document: mostly the full tiny spec with a few mutations; sometimes not a mapping at all."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.one_of(scalars, st.lists(scalars, max_size=3)))
    doc = copy.deepcopy(FULL)
    for kind, path, arg in draw(st.lists(mutation, max_size=4)):
        if kind == "set":
            _set(doc, path, arg)
        elif kind == "delete":
            _delete(doc, path)
        else:
            key, val = arg
            _set(doc, (*path, key), val) if path else doc.__setitem__(key, val)
    return doc


class _Overrun(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Overrun


def check_one(path: Path) -> tuple[int, str, str]:
    """`lensdesign check PATH` in-process under the time budget; asserts the exit contract."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BUDGET_S)
    try:
        r = run_main("check", path)
    except _Overrun:
        pytest.fail(f"check ran past its {BUDGET_S} s budget on:\n{path.read_text()}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = path.read_text(errors="replace")
    assert r.returncode in (0, 2), f"exit {r.returncode}\n{r.stderr}\n{text}"
    assert "Traceback" not in r.stdout + r.stderr, text
    if r.returncode == 0:
        assert "ok:" in r.stdout and not r.stderr.strip(), text
    else:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{r.stderr}\n{text}"
    return r.returncode, r.stdout, r.stderr


def test_check_survives_generated_specs(tmp_path: Path) -> None:
    outcomes: list[int] = []

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(specs())
    def one(doc: Any) -> None:
        p = tmp_path / "fuzz.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        outcomes.append(check_one(p)[0])

    one()
    assert len(outcomes) >= EXAMPLES  # every generated spec was checked
    assert 0 in outcomes and 2 in outcomes  # the generator reaches both valid and invalid specs


def test_absurd_sizes_are_refused_without_allocating(tmp_path: Path) -> None:
    doc = copy.deepcopy(FULL)
    doc["optics"].update(aperture="1 m", pitch="1 nm")
    code, _, err = check_one(write_spec(tmp_path, doc))
    assert code == 2 and "optics.pitch" in err
    doc = copy.deepcopy(FULL)
    doc["sensor"]["resolution"] = [10**9, 10**9]
    code, _, err = check_one(write_spec(tmp_path, doc))
    assert code == 2 and "sensor.resolution" in err


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["training"].__setitem__("learning_rate", float("inf")), "training.learning_rate"),
    (lambda d: d["optics"].__setitem__("ａperture", "5 mm"), "optics"),
    (None, None),
], ids=["inf", "unicode-key", "valid"])
def test_check_in_a_real_process(tmp_path: Path, cli, edit, field) -> None:
    """A few of the same contracts through a real subprocess (exit code, stderr as a user sees them)."""
    doc = copy.deepcopy(FULL)
    if edit is not None:
        edit(doc)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True))
    r = cli("check", p)
    assert "Traceback" not in r.stdout + r.stderr
    if field is None:
        assert r.returncode == 0 and "ok:" in r.stdout
    else:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and field in r.stderr, r.stderr

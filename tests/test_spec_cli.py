"""The spec boundary and the core commands, end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lensdesign.errors import SpecError
from lensdesign.spec import parse_length, parse_spec
from tests.conftest import write_spec

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))


def test_unit_strings() -> None:
    assert parse_length("5 mm") == pytest.approx(5e-3)
    assert parse_length("35.5mm") == pytest.approx(35.5e-3)
    assert parse_length("2 um") == pytest.approx(2e-6)
    assert parse_length("2 µm") == pytest.approx(2e-6)
    assert parse_length("550 nm") == pytest.approx(550e-9)
    assert parse_length(0.5) == 0.5
    assert parse_length("inf", allow_inf=True) == math.inf
    for bad in ("5 parsecs", "abc", "-3 mm", "0", True):
        with pytest.raises(ValueError):
            parse_length(bad)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_passes_check(path: Path) -> None:
    """What `lensdesign check` and `optimize` refuse before starting, no spec in specs/ runs into."""
    from lensdesign.commands.core import check_spec
    from lensdesign.spec import load_spec
    from lensdesign.system import check_supported

    spec = load_spec(path)
    check_supported(spec)
    check_spec(spec)
    assert spec.name == path.stem  # run directories and reports are titled by it


def test_defaults_and_derived(tiny_spec_dict: dict) -> None:
    s = parse_spec(tiny_spec_dict)
    assert s.sensor.pixel_pitch == pytest.approx(8e-6)
    assert s.depths_m[0] == pytest.approx(0.1) and math.isinf(s.depths_m[-1])
    assert s.depths_m[1] == pytest.approx(0.2)  # uniform in diopters: 10, 5, 0 D
    assert s.design_wavelength_m == pytest.approx(550e-9)
    assert s.max_height_m == pytest.approx(1.196e-6, rel=1e-3)
    assert s.focus_depth_m == pytest.approx(0.2)


def test_custom_material_needs_one_index_per_wavelength(tiny_spec_dict: dict) -> None:
    tiny_spec_dict["optics"]["material"] = {"index": [1.5, 1.5]}
    with pytest.raises(SpecError, match=r"optics\.material"):
        parse_spec(tiny_spec_dict)
    tiny_spec_dict["optics"]["material"] = {"index": [1.5, 1.49, 1.48]}
    assert parse_spec(tiny_spec_dict).refractive_indices == [1.5, 1.49, 1.48]


BAD = [
    ("bad unit", lambda d: d["optics"].__setitem__("aperture", "5 mmm"), "optics.aperture"),
    ("negative", lambda d: d["optics"].__setitem__("sensor_distance", "-35 mm"), "optics.sensor_distance"),
    ("unknown key", lambda d: d["optics"].__setitem__("apertur", "5 mm"), "optics.apertur"),
    ("unknown top key", lambda d: d.__setitem__("sensr", {}), "sensr"),
    ("missing", lambda d: d["optics"].pop("aperture"), "optics.aperture"),
    ("bad wavelength", lambda d: d.__setitem__("wavelengths", ["550 m"]), "wavelengths"),
    ("levels", lambda d: d["fabrication"].__setitem__("levels", 12), "fabrication"),
    ("material", lambda d: d["optics"].__setitem__("material", "unobtainium"), "optics.material"),
    ("task", lambda d: d.__setitem__("task", "zoom"), "task"),
]


@pytest.mark.parametrize("name,mutate,field", BAD, ids=[b[0] for b in BAD])
def test_malformed_spec_is_one_line_exit_2(tmp_path, cli, tiny_spec_dict, name, mutate, field) -> None:
    mutate(tiny_spec_dict)
    p = write_spec(tmp_path, tiny_spec_dict)
    r = cli("check", p)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in r.stderr + r.stdout
    assert field in err, err


def test_broken_yaml_and_missing_file(tmp_path, cli) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("optics:\n  aperture: 5 mm\n   sensor_distance: [\n")
    r = cli("check", p)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "line" in r.stderr and "Traceback" not in r.stderr
    r = cli("check", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "no such spec file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_undersampled_spec_refused_with_reason(tmp_path, cli, tiny_spec_dict) -> None:
    tiny_spec_dict["optics"]["pitch"] = "16 um"
    tiny_spec_dict["sensor"]["pixel_pitch"] = "16 um"
    r = cli("check", write_spec(tmp_path, tiny_spec_dict))
    assert r.returncode == 2
    assert "optics.pitch" in r.stderr and "under-samples" in r.stderr and "reduce optics.pitch" in r.stderr
    # an explicitly requested transfer function where it aliases is refused too
    tiny_spec_dict["optics"]["pitch"] = "4 um"
    tiny_spec_dict["sensor"]["pixel_pitch"] = "8 um"
    tiny_spec_dict["optics"]["propagator"] = "transfer"
    r = cli("check", write_spec(tmp_path, tiny_spec_dict))
    assert r.returncode == 2 and "under-sampled" in r.stderr and "λz/L" in r.stderr


def test_pitch_ratio_must_be_integer(tmp_path, cli, tiny_spec_dict) -> None:
    tiny_spec_dict["sensor"]["pixel_pitch"] = "6 um"
    r = cli("check", write_spec(tmp_path, tiny_spec_dict))
    assert r.returncode == 2 and "sensor.pixel_pitch" in r.stderr and "integer" in r.stderr


def test_check_reports_sampling(cli, tiny_spec) -> None:
    r = cli("check", tiny_spec)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for key in ("Fresnel number", "propagator", "impulse", "PSF window", "memory", "126 × 126"):
        assert key in out, key


def test_baseline_and_psf_files(tmp_path, cli, tiny_spec) -> None:
    run = tmp_path / "run"
    r = cli("baseline", tiny_spec, "--kind", "fresnel", "--out", run)
    assert r.returncode == 0, r.stderr
    meta = json.loads((run / "design.json").read_text())
    assert meta["kind"] == "baseline-fresnel" and meta["grid"] == 126
    # no silent overwrite
    r = cli("baseline", tiny_spec, "--kind", "cubic", "--out", run)
    assert r.returncode == 2 and "--force" in r.stderr
    r = cli("psf", run, "--out", tmp_path / "psf.npz")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "psf.npz")
    assert z["psf"].shape == (3, 3, 33, 33) and z["psf"].dtype == np.float32
    assert np.allclose(z["wavelengths_m"], [460e-9, 550e-9, 640e-9])
    assert math.isinf(z["depths_m"][-1]) and float(z["pitch_m"]) == pytest.approx(8e-6)
    e = z["psf"].sum(axis=(2, 3))
    assert np.all(e <= 1.0 + 1e-5) and np.all(e > 0.5)
    # in-focus depth (0.2 m) at the design wavelength is the sharpest
    peaks = z["psf"].max(axis=(2, 3))
    assert np.argmax(peaks[:, 1]) == 1
    r = cli("psf", run, "--out", tmp_path / "psf.tiff")
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "psf.tiff") as t:
        stack = t.asarray()
        page = t.pages[0]
        xres = page.tags["XResolution"].value
        unit = page.tags["ResolutionUnit"].value
        desc = json.loads(page.description)
    assert stack.shape == (9, 33, 33)
    assert np.allclose(stack.reshape(3, 3, 33, 33), z["psf"], rtol=1e-4, atol=1e-9)
    assert int(unit) == 3  # centimetre
    assert xres[0] / xres[1] == pytest.approx(1e-2 / 8e-6, rel=1e-6)
    assert desc["pitch_m"] == pytest.approx(8e-6)
    r = cli("psf", run, "--out", tmp_path / "psf.png")
    assert r.returncode == 2 and "--out" in r.stderr


def test_cubic_baseline_is_broader(tmp_path, cli, tiny_spec) -> None:
    for kind in ("fresnel", "cubic"):
        assert cli("baseline", tiny_spec, "--kind", kind, "--out", tmp_path / kind).returncode == 0
        assert cli("psf", tmp_path / kind, "--out", tmp_path / f"{kind}.npz").returncode == 0
    f = np.load(tmp_path / "fresnel.npz")["psf"]
    c = np.load(tmp_path / "cubic.npz")["psf"]
    # the cubic plate trades peak for depth invariance: lower peak, flatter peak across depths
    assert c[:, 1].max() < f[:, 1].max()
    pk_f, pk_c = f[:, 1].max(axis=(1, 2)), c[:, 1].max(axis=(1, 2))
    assert pk_c.max() / pk_c.min() < pk_f.max() / pk_f.min()


def test_missing_run_dir(tmp_path, cli) -> None:
    r = cli("psf", tmp_path / "nothing", "--out", tmp_path / "p.npz")
    assert r.returncode == 2 and "no such run directory" in r.stderr

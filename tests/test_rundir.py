"""The run directory: typed, validated loading (Design, Summary, checkpoint) and bad numbers refused where they
enter — through the CLI for every command that reads a run, and through the library for the typed API."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lensdesign.errors import LensdesignError
from lensdesign.fabrication.quantize import quantize
from lensdesign.rundir import CHECKPOINT, DESIGN, META, SUMMARY, RunDir, first_nonfinite
from tests.conftest import TINY, run_cli, write_spec
from tests.inproc import run_main


@pytest.fixture(scope="module")
def fresnel_run(tmp_path_factory) -> Path:
    """The Fresnel baseline of the tiny spec, made once for the module (copy it before damaging it)."""
    d = tmp_path_factory.mktemp("rundir")
    out = d / "run"
    r = run_cli("baseline", write_spec(d, TINY), "--kind", "fresnel", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def _set_height(run: Path, fn: Callable[[torch.Tensor], None]) -> None:
    t = load_file(str(run / DESIGN))
    fn(t["height_m"])
    save_file(t, str(run / DESIGN))


def _nan_height(run: Path) -> None:
    _set_height(run, lambda h: h.__setitem__((3, 4), float("nan")))


def _height_above_max(run: Path) -> None:
    mh = json.loads((run / META).read_text())["max_height_m"]
    _set_height(run, lambda h: h.__setitem__((60, 61), 1.5 * mh))


def _truncated_tensors(run: Path) -> None:
    data = (run / DESIGN).read_bytes()
    (run / DESIGN).write_bytes(data[: len(data) // 2])


def _garbage_meta(run: Path) -> None:
    (run / META).write_text('{"pitch_m": 4e-06, "kind": "baseline-fresnel", oops')


DAMAGE = {
    "nan height": (_nan_height, f"{DESIGN}: tensor height_m holds non-finite values"),
    "height above max": (_height_above_max, f"{DESIGN}: tensor height_m spans"),
    "truncated safetensors": (_truncated_tensors, f"{DESIGN}: content is not a readable safetensors file"),
    "garbage design.json": (_garbage_meta, f"{META}: content is not valid JSON"),
}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _picture(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


COMMANDS = {
    "export": lambda run, tmp: ("export", run, "--tiff", "--gds"),
    "psf": lambda run, tmp: ("psf", run, "--out", tmp / "psf.npz"),
    "report": lambda run, tmp: ("report", run, "--samples", "0", "--device", "cpu"),
    "simulate": lambda run, tmp: ("simulate", run, "--image", tmp / "pic.png", "--out", tmp / "sim"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_design_is_refused_by_every_command_with_one_line_and_no_files(fresnel_run, tmp_path, damage):
    """Every damage through every command: one pair per damage in a real process (each command once over the
    four damages), the others through the same entry point in-process (no interpreter start-up)."""
    run = tmp_path / "run"
    shutil.copytree(fresnel_run, run)
    _picture(tmp_path / "pic.png")
    corrupt, expect = DAMAGE[damage]
    corrupt(run)
    before = _listing(tmp_path)
    for i, (name, args) in enumerate(COMMANDS.items()):
        real = i == list(DAMAGE).index(damage)
        r = (run_cli if real else run_main)(*args(run, tmp_path))
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], (name, r.stderr)
        assert str(run) in lines[0] and "Traceback" not in r.stdout + r.stderr
        assert _listing(tmp_path) == before, name


def _nan_picture(tmp: Path) -> tuple[str, ...]:
    import tifffile

    a = np.full((16, 16, 3), 0.5, dtype=np.float32)
    a[2, 3, 1] = np.nan
    tifffile.imwrite(tmp / "nan.tiff", a, photometric="rgb")
    return ("--image", str(tmp / "nan.tiff"))


def _nan_depth_map(tmp: Path) -> tuple[str, ...]:
    dm = np.full((16, 16), 1.0)
    dm[5, 5] = np.nan
    np.save(tmp / "depth.npy", dm)
    return ("--image", str(_picture(tmp / "pic.png")), "--depth-map", str(tmp / "depth.npy"))


def _bad_summary(tmp: Path, run: Path) -> tuple[str, ...]:
    (run / SUMMARY).write_text('{"design": {"mean_psnr_db": NaN, "mean_ssim": 0.5, "per_depth": []}}')
    return ("report", str(run), "--samples", "0")


def _nan_checkpoint(tmp: Path, run: Path) -> tuple[str, ...]:
    save_file({"model.surface.param": torch.full((4,), float("nan"))}, str(run / CHECKPOINT))
    return ("optimize", str(run / "spec.yaml"), "--out", str(run), "--resume", "--no-eval")


@pytest.mark.parametrize("case", ["nan picture", "nan depth map", "nan in summary.json", "nan in checkpoint"])
def test_bad_numbers_in_pictures_depth_maps_summaries_and_checkpoints_are_refused(fresnel_run, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(fresnel_run, run)
    if case == "nan picture":
        args, expect = ("simulate", str(run), *_nan_picture(tmp_path), "--out", str(tmp_path / "sim")), "nan.tiff: pixel"
    elif case == "nan depth map":
        args, expect = ("simulate", str(run), *_nan_depth_map(tmp_path), "--out", str(tmp_path / "sim")), "--depth-map"
    elif case == "nan in summary.json":
        args, expect = _bad_summary(tmp_path, run), f"{SUMMARY}: design.mean_psnr_db is not a finite number"
    else:
        args, expect = _nan_checkpoint(tmp_path, run), f"{CHECKPOINT}: tensor model.surface.param holds non-finite"
    before = _listing(tmp_path)
    r = (run_cli if case == "nan in checkpoint" else run_main)(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert _listing(tmp_path) == before


# ---- the typed API ---------------------------------------------------------------------------------------------

def test_design_is_typed_and_quantized_with_the_shared_quantizer(fresnel_run):
    run = RunDir(fresnel_run)
    spec = run.load_spec()
    d = run.load_design()
    assert d.kind == "baseline-fresnel" and d.parameterization == "pixel" and d.levels == 8
    assert d.pitch_m == pytest.approx(4e-6) and d.max_height_m == pytest.approx(spec.max_height_m)
    assert d.design_wavelength_m == pytest.approx(spec.design_wavelength_m) and d.meta["grid"] == d.height_m.shape[0]
    q = d.quantized()
    ref = quantize(d.height_m.astype(np.float64), d.max_height_m, 8)
    assert q.dtype == np.float32 and np.array_equal(q, ref.astype(np.float32))
    assert len(np.unique(q)) <= 8 and len(np.unique(d.quantized(4))) <= 4
    step = d.max_height_m / 4
    assert np.allclose(np.remainder(d.quantized(4) / step + 1e-3, 1.0), 1e-3, atol=1e-3)
    assert run.load_summary() is None


def _copy(src: Path, dst: Path) -> RunDir:
    shutil.copytree(src, dst)
    return RunDir(dst)


def test_metadata_and_grid_are_checked_against_the_spec(fresnel_run, tmp_path):
    meta = json.loads((fresnel_run / META).read_text())
    cases = [
        ({**meta, "pitch_m": 2e-6}, "pitch_m = 2e-06 m differs from the spec's optics.pitch"),
        ({**meta, "max_height_m": "tall"}, "max_height_m = 'tall' is not a finite number"),
        ({**meta, "levels": 1.5}, "levels = 1.5 is not an integer"),
        ({**meta, "gamma": [0.1, float("nan")]}, "gamma[1] is not a finite number"),
        ([1, 2], "is a JSON list, not an object"),
    ]
    for i, (m, expect) in enumerate(cases):
        run = _copy(fresnel_run, tmp_path / f"r{i}")
        (run.path / META).write_text(json.dumps(m))
        with pytest.raises(LensdesignError) as e:
            run.load_design()
        assert expect in str(e.value) and META in str(e.value) and "\n" not in str(e.value)
    run = _copy(fresnel_run, tmp_path / "shape")
    t = load_file(str(run.path / DESIGN))
    save_file({"height_m": t["height_m"][:100, :100].contiguous()}, str(run.path / DESIGN))
    with pytest.raises(LensdesignError, match=r"shape \(100, 100\), but the spec's grid is 126 × 126"):
        run.load_design()
    save_file({"height_m": torch.zeros(126, 126, dtype=torch.int32)}, str(run.path / DESIGN))
    with pytest.raises(LensdesignError, match=r"dtype torch\.int32, not floating point"):
        run.load_design()


def test_summary_and_checkpoint_are_validated(fresnel_run, tmp_path):
    run = _copy(fresnel_run, tmp_path / "run")
    good = {"design": {"mean_psnr_db": 30.0, "mean_ssim": 0.9, "per_depth": []},
            "design_quantized": {"mean_psnr_db": 29.0, "mean_ssim": 0.8, "per_depth": []},
            "baselines": {"fresnel": {"mean_psnr_db": 25.0, "mean_ssim": 0.7, "per_depth": []}}}
    (run.path / SUMMARY).write_text(json.dumps(good))
    s = run.load_summary()
    assert s is not None and s.design.mean_psnr_db == 30.0 and s.baselines["fresnel"].mean_ssim == 0.7
    assert s.data == good
    for text, expect in [('{"design": {"mean_psnr_db": NaN, "mean_ssim": 1}}', "design.mean_psnr_db is not a finite"),
                         ('{"design": {"mean_ssim": 1}}', "design.mean_psnr_db = None is not a number"),
                         ("[garbage", "not valid JSON")]:
        (run.path / SUMMARY).write_text(text)
        with pytest.raises(LensdesignError) as e:
            run.load_summary()
        assert expect in str(e.value) and SUMMARY in str(e.value)
    save_file({"model.x": torch.tensor([1.0, float("inf")])}, str(run.path / CHECKPOINT))
    with pytest.raises(LensdesignError, match=r"tensor model\.x holds non-finite values"):
        run.load_checkpoint()


def test_first_nonfinite_names_the_field():
    assert first_nonfinite({"a": [1.0, {"b": float("inf")}]}) == "a[1].b"
    assert first_nonfinite({"a": [1, 2.5, None, "x"]}) is None

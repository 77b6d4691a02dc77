"""Ring designs take the 1-D (Hankel) path everywhere the pipeline computes PSFs: the choice, its refusal for
non-radial elements, the pipeline's PSFs and gradients against the radial system itself, and a radial run end to
end through the CLI (training, the comparison with the baselines, export as rings)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lensdesign.optics.hankel import RadialSystem, choose_path
from lensdesign.optics.surfaces import RadialSurface
from lensdesign.spec import parse_spec
from lensdesign.system import Pipeline
from tests.conftest import HARD, write_spec

RADIAL = {**copy.deepcopy(HARD), "name": "tinyradial",
          "optics": {**HARD["optics"], "parameterization": "radial"}}


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_path_choice() -> None:
    assert choose_path(parse_spec(RADIAL)).radial
    assert not choose_path(parse_spec(HARD)).radial  # pixel
    asm = parse_spec({**RADIAL, "optics": {**RADIAL["optics"], "propagator": "asm"}})
    assert not choose_path(asm).radial and "asm requested" in choose_path(asm).reason
    hyb = parse_spec({**RADIAL, "optics": {**RADIAL["optics"], "element": "hybrid"},
                      "fabrication": {**RADIAL["fabrication"], "process": "grayscale", "levels": 256}})
    assert not choose_path(hyb).radial


def test_pipeline_psfs_and_gradient_are_the_radial_systems() -> None:
    spec = parse_spec(RADIAL)
    pipe = Pipeline(spec)
    assert pipe.radial and isinstance(pipe.optics, RadialSystem)
    g = pipe.optics.grid
    surf = RadialSurface(g.n, g.dx, spec.max_height_m, pipe.optics.ring_width)
    assert surf.rings == pipe.optics.rings
    with torch.no_grad():
        surf.param.copy_(torch.rand(surf.rings, generator=torch.Generator().manual_seed(1)) * spec.max_height_m)
    weights = torch.rand(pipe.optics.shape, generator=torch.Generator().manual_seed(2))
    ref, extra = pipe.psfs(surf.height(), [0.07])
    (ref * weights[:, :, :, :]).sum().add((extra * weights[:1]).sum()).backward()
    grad_pipe = surf.param.grad.clone()

    prof = surf.ring_heights().clone().requires_grad_(True)
    sys_ref = pipe.optics.psf(prof)
    sys_extra = pipe.optics.psf(prof, [0.07])
    assert torch.allclose(ref, sys_ref, rtol=0, atol=1e-7) and torch.allclose(extra, sys_extra, rtol=0, atol=1e-7)
    (sys_ref * weights).sum().add((sys_extra * weights[:1]).sum()).backward()
    # the surface's parameters are clamped heights (`limit`): compare where the clamp passes the gradient through
    inside = (surf.param > 0) & (surf.param < spec.max_height_m)
    assert torch.allclose(grad_pipe[inside], prof.grad[inside], rtol=1e-4, atol=1e-6 * prof.grad.abs().max().item())


def test_check_names_the_path_and_hankel_is_refused_for_pixels(tmp_path: Path, cli) -> None:
    r = cli("check", write_spec(tmp_path, RADIAL, "radial.yaml"))
    assert r.returncode == 0, r.stderr
    out = _flat(r.stdout)
    assert "1-D (Hankel)" in out and "parameterization radial" in out and "Fresnel–Hankel" in out
    r = cli("check", write_spec(tmp_path, HARD, "pixel.yaml"))
    assert r.returncode == 0 and "2-D grid" in _flat(r.stdout)
    bad = {**HARD, "optics": {**HARD["optics"], "propagator": "hankel"}}
    r = cli("check", write_spec(tmp_path, bad, "bad.yaml"))
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in r.stdout + r.stderr
    assert "optics.propagator" in err and "parameterization radial" in err
    ok = {**RADIAL, "optics": {**RADIAL["optics"], "propagator": "hankel"}}
    r = cli("check", write_spec(tmp_path, ok, "ok.yaml"))
    assert r.returncode == 0 and "optics.propagator hankel" in _flat(r.stdout)


def test_radial_run_end_to_end(tmp_path: Path, cli) -> None:
    data = copy.deepcopy(RADIAL)
    data["training"]["steps"] = 40
    spec = write_spec(tmp_path, data)
    run = tmp_path / "run"
    r = cli("optimize", spec, "--out", run)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert set(s["baselines"]) == {"fresnel", "achromat", "cubic"}
    assert "diffractive achromat" in r.stdout and "vs diffractive achromat" in _flat(r.stdout)  # table and gains
    base = s["baselines"]
    assert s["design"]["mean_psnr_db"] > base["fresnel"]["mean_psnr_db"]
    # the achromat focuses all three wavelengths at the focus depth: better than the Fresnel lens there
    at_focus = {k: next(d["psnr_db"] for d in base[k]["per_depth"] if d["depth_m"] == pytest.approx(base[k]["focus_depth_m"]))
                for k in ("fresnel", "achromat")}
    assert at_focus["achromat"] > at_focus["fresnel"] + 0.5, at_focus
    assert s["gain_db"]["vs_achromat"] == pytest.approx(s["design"]["mean_psnr_db"] - base["achromat"]["mean_psnr_db"], abs=1e-3)
    r = cli("psf", run, "--out", tmp_path / "psf.npz")  # the 1-D path too: the design's own rings
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    prof = load_file(run / "design.safetensors")["radial_profile_m"]
    want = RadialSystem(parse_spec(data)).psf(prof).numpy()
    got = np.load(tmp_path / "psf.npz")["psf"]
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-6 * want.max()
    r = cli("export", run, "--gds")
    assert r.returncode == 0, r.stderr
    rules = json.loads((run / "export" / "tinyradial.rules.json").read_text())
    assert rules["parameterization"] == "radial" and rules["rings"] and "note" not in rules  # written as rings
    r = cli("report", run)
    assert r.returncode == 0, r.stderr
    page = (run / "report" / "index.html").read_text()
    assert "achromat" in page and "fresnel" in page  # the image-quality table holds summary.json's baselines
    rep = json.loads((run / "report" / "report.json").read_text())
    assert rep["settings"]["propagator"].startswith("hankel-")  # the field analysis on the 1-D path
    assert rep["mtf_rotationally_symmetric"] and len(rep["psf"]) == 9
    assert rep["fabrication"]["as_built"]["psnr_db_mean"] > 0 and set(rep["through_depth_mtf"]["mtf"]) == {
        "design", "fresnel", "cubic"}


def test_achromat_baseline_command(tmp_path: Path, cli) -> None:
    """`baseline --kind achromat` writes a ring design (exported as rings) trained to focus at the focus depth."""
    spec = write_spec(tmp_path, HARD)  # a pixel spec: the achromat is a ring design all the same
    run = tmp_path / "achromat"
    r = cli("baseline", spec, "--kind", "achromat", "--out", run)
    assert r.returncode == 0, r.stderr
    meta = json.loads((run / "design.json").read_text())
    assert meta["kind"] == "baseline-achromat" and meta["parameterization"] == "radial" and meta["ring_width_m"] > 0
    r = cli("baseline", spec, "--kind", "achromat", "--strength", "3", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--kind achromat" in r.stderr and not (tmp_path / "x").exists()


def test_memory_estimate_follows_the_path() -> None:
    """`check`'s memory estimate for a ring design is the 1-D path's: its kernel exactly as built, the pixel
    integration no more than built, and far below the 2-D estimate of the same geometry."""
    from lensdesign.commands.core import memory_estimate

    spec = parse_spec(RADIAL)
    est = memory_estimate(spec)
    built = RadialSystem(spec, nearest=min(spec.depths_m))
    assert est["kernels"] == built.kernel.numel() * 4
    nnz = built.pix.matrix.values().numel()
    assert 0 < est["pixel integration"] <= 2 * nnz * 8
    pixel = memory_estimate(parse_spec({**RADIAL, "optics": {**RADIAL["optics"], "parameterization": "pixel"}}))
    assert "transfer functions" in pixel and "kernels" not in pixel
    assert sum(est.values()) < 0.5 * sum(pixel.values())

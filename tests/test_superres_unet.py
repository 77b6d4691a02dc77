"""Super-resolution (task superres) and the U-Net reconstruction: the forward model's pixel integration, the
effective PSF of the reconstruction, U-Net weights in the run directory, resume, and both end to end."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lensdesign.errors import LensdesignError
from lensdesign.imaging.reconstruct import (
    UNet,
    UNetReconstruction,
    WienerPlan,
    reconstruction_from_design,
    upsample,
    upsampling_kernel,
)
from lensdesign.imaging.sensor import integrate_pixels
from lensdesign.spec import parse_spec

SR = {
    "name": "tinysr",
    "task": "superres",
    "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": "4 um", "padding": 1.5},
    "wavelengths": ["460 nm", "550 nm", "640 nm"],
    "scene": {"depths": ["1 m"]},
    "sensor": {"pixel_pitch": "16 um", "superres_factor": 2, "resolution": [24, 24], "read_noise": [0.001, 0.005],
               "psf_size": 21},
    "reconstruction": {"gamma_init": 0.01},
    "training": {"steps": 20, "batch_size": 2, "patch_size": 16, "learning_rate": 0.05, "images": "builtin",
                 "seed": 0, "device": "cpu", "validation_images": 2},
    "fabrication": {"process": "multilevel", "levels": 8, "min_feature": "4 um", "height_tolerance": "20 nm"},
}
UNET = {"kind": "unet", "gamma_init": 0.01, "unet_channels": 4, "unet_depth": 2}
EDOF = {**copy.deepcopy(SR), "name": "tinyunet", "task": "edof", "scene": {"depths": {"min": "0.05 m", "max": "inf", "count": 2}},
        "sensor": {"pixel_pitch": "8 um", "resolution": [24, 24], "read_noise": [0.001, 0.005], "psf_size": 21},
        "reconstruction": UNET}


def spec_dict(base: dict, **changes: dict) -> dict:
    d = copy.deepcopy(base)
    for sec, vals in changes.items():
        d[sec] = {**d[sec], **vals} if isinstance(d.get(sec), dict) else vals
    return d


def write(tmp: Path, d: dict, name: str = "spec.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


# ---- forward model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3])
def test_pixel_integration_conserves_energy_and_full_scale(k):
    fine = torch.rand(2, 3, 12 * k, 10 * k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    coarse = integrate_pixels(fine, k)
    assert coarse.shape == (2, 3, 12, 10)
    # a sensor pixel is k² fine pixels in area: irradiance × area is conserved per image and channel
    assert torch.allclose(coarse.sum(dim=(-2, -1)) * k * k, fine.sum(dim=(-2, -1)), rtol=1e-12)
    assert torch.allclose(coarse[0, 0, 1, 2], fine[0, 0, k:2 * k, 2 * k:3 * k].mean())
    assert torch.equal(integrate_pixels(torch.ones(1, 1, 4 * k, 4 * k), k), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="multiple"):
        integrate_pixels(torch.ones(1, 1, 4 * k + 1, 4 * k), k)


def test_superres_forward_model_conserves_the_energy_of_a_point():
    """A point on the fine grid, blurred by the fine PSF and integrated over sensor pixels: the sensor holds the
    PSF's energy (sum × k²), and a uniform scene reads the PSF's sum in every pixel."""
    from lensdesign.baselines import fresnel_height
    from lensdesign.system import Pipeline

    spec = parse_spec(SR)
    pipe = Pipeline(spec)
    k, p = pipe.factor, pipe.psf_size
    assert k == 2 and pipe.optics.grid.sensor_pitch == pytest.approx(8e-6)
    with torch.no_grad():
        psf, _ = pipe.psfs(fresnel_height(spec, pipe.optics.grid.n).float())
    psf = psf[:1].double()
    side = 16 * k + p - 1  # a 16 × 16-pixel sensor: 32 fine pixels hold the 21-pixel PSF
    scene = torch.zeros(1, 3, side, side, dtype=torch.float64)
    c = side // 2
    scene[..., c, c] = 1.0
    y = pipe.irradiance(scene, psf)
    assert y.shape == (1, 3, 16, 16)
    e_psf = psf.sum(dim=(-2, -1))[0]
    assert torch.allclose(y.sum(dim=(-2, -1))[0] * k * k, e_psf, rtol=1e-9)
    assert float(e_psf.min()) > 0.5  # most of the light is in the window: the test means something
    flat = pipe.irradiance(torch.ones(1, 3, side, side, dtype=torch.float64), psf)
    assert torch.allclose(flat, e_psf.view(1, 3, 1, 1).expand_as(flat), rtol=1e-9)
    # the noise is added at the sensor resolution
    gen = torch.Generator().manual_seed(0)
    noisy = pipe.sensor(scene.float(), psf.float(), torch.tensor([0.01]), gen)
    assert noisy.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("k", [2, 3])
def test_upsampling_kernel_is_centred_and_normalized(k):
    g = upsampling_kernel(k)
    assert g.shape == (6 * k + 1, 6 * k + 1)
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.T)
    assert float(g[0].abs().max()) == 0 and int(g.argmax()) == g.numel() // 2
    # it is the mean over sub-pixel positions of integrate → upsample: check one position directly
    d = torch.zeros(1, 1, 12 * k, 12 * k)
    d[..., 6 * k, 6 * k] = 1.0
    resp = upsample(integrate_pixels(d, k), k)[0, 0]
    assert float(resp.sum()) == pytest.approx(1.0, abs=1e-5)


def test_superres_wiener_beats_bicubic_without_noise():
    """Deconvolving the upsampled sensor image with PSF ⊛ upsampling kernel restores the detail that the PSF, the
    pixels and bicubic upsampling attenuate."""
    from lensdesign.imaging.sensor import convolve_valid, psnr

    k, p = 2, 5
    psf = torch.zeros(3, p, p)
    psf[:, 1:4, 1:4] = 1.0 / 9
    gen = torch.Generator().manual_seed(3)
    n = 2 * 32 + p - 1
    # a random scene band-limited below the sensor's Nyquist frequency (0.25 cycles per fine pixel): no aliasing
    f = torch.fft.fftfreq(n)
    band = ((f[:, None] ** 2 + f[None, :] ** 2).sqrt() < 0.2).to(torch.float32)
    noise = torch.randn(1, 3, n, n, generator=gen)
    scene = torch.fft.ifft2(torch.fft.fft2(noise) * band).real
    scene = 0.5 + 0.2 * scene / scene.std()
    truth = scene[..., p // 2:-(p // 2), p // 2:-(p // 2)]
    y = integrate_pixels(convolve_valid(scene, psf), k)
    plan = WienerPlan(y, psf, factor=k)
    assert plan.upsampled.shape == truth.shape
    m = 6  # the borders of a finite image are never exact
    crop = (..., slice(m, -m), slice(m, -m))
    gain = float(psnr(plan.solve(1e-3)[crop], truth[crop])) - float(psnr(plan.upsampled[crop], truth[crop]))
    assert gain > 2.0, gain


# ---- the U-Net and its weights ------------------------------------------------------------------------------

def test_unet_any_size_residual_start_and_seeded():
    net = UNet(3, 3, channels=4, depth=2, seed=1)
    x = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        assert net(x).shape == (2, 3, 19, 23)
        assert float(net(x).abs().max()) == 0  # zero output layer: training starts from the Wiener filter
    again = UNet(3, 3, channels=4, depth=2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True))
    other = UNet(3, 3, channels=4, depth=2, seed=2)
    assert not torch.equal(net.enc[0][0].weight, other.enc[0][0].weight)


def test_unet_weights_round_trip_through_the_run_directory(tmp_path):
    from lensdesign.evaluation import load_reconstruction
    from lensdesign.optimize import Trainer, finish
    from lensdesign.rundir import RunDir

    spec = parse_spec(spec_dict(SR, reconstruction={**UNET, "unet_sensor_input": True}, training={"steps": 4}))
    tr = Trainer(spec)
    for s in range(3):
        tr.train_step(s)
    assert float(tr.model.recon.unet.out.weight.detach().abs().max()) > 0  # the output layer has learned something
    finish(spec, RunDir(tmp_path), tr, 3, None, evaluate=False)

    # design.safetensors is plain safetensors: an 8-byte header length, a JSON header, raw tensor bytes
    raw = (tmp_path / "design.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    assert "recon.log_gamma" in names and any(k.startswith("recon.unet.") for k in names)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob("*.pkl"))
    meta = json.loads((tmp_path / "design.json").read_text())
    arch = meta["reconstruction_arch"]
    assert meta["reconstruction"] == "unet"
    assert arch == {"kind": "unet", "channels": 3, "superres_factor": 2, "upsampling": "bicubic", "unet_channels": 4,
                    "unet_depth": 2, "unet_sensor_input": True}

    # rebuilt from design.json's numbers and the tensors alone (the spec is not consulted): identical outputs
    tensors = load_file(str(tmp_path / "design.safetensors"))
    rebuilt = reconstruction_from_design(json.loads(json.dumps(arch)), tensors)
    assert isinstance(rebuilt, UNetReconstruction)
    design = RunDir(tmp_path).load_design()
    assert isinstance(load_reconstruction(design), UNetReconstruction)
    y = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    psf = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(y, psf), tr.model.recon.eval()(y, psf))

    # a mismatch between the numbers and the tensors is a one-line error, not a crash
    with pytest.raises(LensdesignError, match="do not match"):
        reconstruction_from_design({**arch, "unet_channels": 8}, tensors)
    with pytest.raises(LensdesignError, match="unet_depth"):
        reconstruction_from_design({**arch, "unet_depth": "3; import os"}, tensors)


def test_unet_resume_is_bit_identical_and_optics_rest_after_the_joint_phase():
    from lensdesign.optimize import Trainer

    spec = parse_spec(spec_dict(EDOF, training={"steps": 6}))
    a = Trainer(spec)
    for s in range(6):
        if s == 4:
            before = a.model.surface.param.detach().clone()
        a.train_step(s)
    # steps 4 and 5 lie past the joint phase (60 % of the run): only the reconstruction moves
    assert torch.equal(a.model.surface.param, before)
    b = Trainer(spec)
    for s in range(3):
        b.train_step(s)
    saved = b.state_tensors()
    assert any(k.startswith("model.recon.unet.") for k in saved) and any(k.startswith("adam.2.") for k in saved)
    c = Trainer(spec)
    c.load_state_tensors(saved)
    for s in range(3, 6):
        c.train_step(s)
    sa, sc = a.state_tensors(), c.state_tensors()
    assert sa.keys() == sc.keys()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_superres_factor_needs_task_superres():
    from lensdesign.optimize import Trainer

    with pytest.raises(LensdesignError, match=r"sensor\.superres_factor: 2 is only used by task: superres"):
        Trainer(parse_spec(spec_dict(EDOF, sensor={"superres_factor": 2})))


# ---- end to end ---------------------------------------------------------------------------------------------------

def _picture(path: Path) -> Path:
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()[100:161, 150:221]).save(path)
    return path


def test_superres_end_to_end_summary_simulate_report(tmp_path, cli):
    out = tmp_path / "run"
    r = cli("optimize", write(tmp_path, SR), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "bicubic upsampling" in r.stdout and "×2 super-resolution" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert set(s["baselines"]) == {"fresnel", "bicubic"} and s["evaluation"]["image_size"] == [48, 48]
    assert [d["depth_m"] for d in s["design"]["per_depth"]] == [1.0]
    for e in (s["design"], s["design_quantized"], s["baselines"]["fresnel"], s["baselines"]["bicubic"]):
        assert all(10 < d["psnr_db"] < 60 and 0 < d["ssim"] <= 1 for d in e["per_depth"])
    b = s["baselines"]
    # deconvolution on the fine grid beats plain upsampling, and 20 steps of joint design beat the Fresnel lens
    assert b["fresnel"]["mean_psnr_db"] > b["bicubic"]["mean_psnr_db"] + 1
    assert s["design"]["mean_psnr_db"] > b["fresnel"]["mean_psnr_db"]
    assert s["gain_db"]["vs_bicubic"] == pytest.approx(s["design"]["mean_psnr_db"] - b["bicubic"]["mean_psnr_db"], abs=1e-3)
    # the evaluation API repeats the summary (same fine-grid validation images and noise)
    from lensdesign.evaluation import evaluate_height
    from lensdesign.spec import load_spec

    h = load_file(str(out / "design.safetensors"))["height_m"]
    assert evaluate_height(load_spec(out / "spec.yaml"), h)["mean_psnr_db"] == s["design"]["mean_psnr_db"]

    r = cli("simulate", out, "--image", _picture(tmp_path / "pic.png"), "--out", tmp_path / "sim")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert m["size"] == [60, 70] and m["sensor_size"] == [30, 35] and m["superres_factor"] == 2
    assert m["psnr_db"] > m["sensor_psnr_db"]
    from PIL import Image

    assert Image.open(tmp_path / "sim" / "sensor.png").size == (35, 30)
    assert Image.open(tmp_path / "sim" / "recon.png").size == (70, 60)

    r = cli("report", out, "--samples", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report" / "report.json").read_text())
    assert set(rep["image_quality"]["baselines"]) == {"fresnel", "bicubic"}


def test_unet_end_to_end_summary_simulate_report(tmp_path, cli):
    out = tmp_path / "run"
    d = spec_dict(EDOF, training={"steps": 10})
    r = cli("optimize", write(tmp_path, d), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "U-Net" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    design = s["design"]
    assert design["reconstruction"] == "unet" and not design["gamma_tuned"] and len(design["gamma"]) == 3
    assert s["design_quantized"]["reconstruction"] == "unet"
    assert design["wiener_only"]["mean_psnr_db"] > 10 and s["baselines"]["fresnel"]["reconstruction"] == "wiener"
    assert "cubic" in s["baselines"] and len(design["per_depth"]) == 2
    # the evaluation API with the reloaded reconstruction repeats the summary
    from lensdesign.evaluation import evaluate_height, load_reconstruction
    from lensdesign.rundir import RunDir
    from lensdesign.spec import load_spec

    run = RunDir(out)
    dsg = run.load_design()
    again = evaluate_height(load_spec(out / "spec.yaml"), dsg.height_m, recon=load_reconstruction(dsg))
    assert again["mean_psnr_db"] == design["mean_psnr_db"]

    r = cli("simulate", out, "--image", _picture(tmp_path / "pic.png"), "--depth-m", "0.1", "--out", tmp_path / "sim")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert m["reconstruction"] == "unet" and m["gamma_from"] == "learned" and np.isfinite(m["psnr_db"])

    r = cli("report", out, "--samples", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report" / "report.json").read_text())
    assert rep["image_quality_source"] == "summary.json"
    # the report's own PSNR of the continuous design uses the U-Net as well: it matches summary.json
    assert rep["fabrication"]["continuous_psnr_db"] == pytest.approx(design["mean_psnr_db"], abs=0.05)

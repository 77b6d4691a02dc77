"""Bayer demosaics: bilinear and Malvar–He–Cutler (2004) against colour-demosaicing (border included), Malvar's
accuracy over bilinear, gradients through the mosaic, and `sensor.demosaic` in the spec and the CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lensdesign.imaging.mosaic import cfa_masks, mosaic_demosaic
from lensdesign.spec import parse_spec
from lensdesign.system import Pipeline
from tests.conftest import TINY, write_spec

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
BGR = [2, 1, 0]  # channels ordered by wavelength: blue, green, red


def _astronaut(size: int = 96) -> np.ndarray:
    """skimage's astronaut, downscaled to (size, size, 3) RGB floats in [0, 1]."""
    from skimage import data, transform

    return transform.resize(data.astronaut(), (size, size), anti_aliasing=True)


def _ours(rgb: np.ndarray, pattern: str, method: str) -> np.ndarray:
    """(H, W, 3) RGB → mosaicked and demosaicked by lensdesign (channels blue, green, red) → (H, W, 3) RGB."""
    bgr = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)[None]
    return mosaic_demosaic(bgr, pattern.lower(), BGR, method)[0].permute(1, 2, 0).numpy()[..., ::-1]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("method", ["malvar", "bilinear"])
def test_demosaic_matches_colour_demosaicing(pattern: str, method: str) -> None:
    from colour_demosaicing import (
        demosaicing_CFA_Bayer_bilinear,
        demosaicing_CFA_Bayer_Malvar2004,
        mosaicing_CFA_Bayer,
    )

    ref = demosaicing_CFA_Bayer_Malvar2004 if method == "malvar" else demosaicing_CFA_Bayer_bilinear
    rng = np.random.default_rng(3)
    for rgb in (rng.random((17, 22, 3)), rng.random((32, 32, 3)), _astronaut()):
        want = ref(mosaicing_CFA_Bayer(rgb, pattern), pattern)
        for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-4)):
            got = _ours(rgb.astype(dtype), pattern, method)
            assert np.abs(got - want).max() < tol, (pattern, dtype, rgb.shape)
    if method == "malvar":  # the last image's reference overshoots [0, 1], so the match above shows no clipping
        assert want.min() < 0 and want.max() > 1


def _interior_rms(a: np.ndarray, b: np.ndarray, border: int = 3) -> float:
    return float(np.sqrt(np.mean((a - b)[border:-border, border:-border] ** 2)))


def test_malvar_reproduces_ramps_and_beats_bilinear_on_smooth_and_natural_images() -> None:
    y, x = np.mgrid[0:64, 0:64].astype(float)
    ramp = np.stack([0.2 + 0.006 * y, 0.3 + 0.004 * x - 0.003 * y, 0.1 + 0.01 * x + 0.002 * y], -1)
    # smooth, correlated channels (a colour gradient under shading): Malvar's premise, edges shared by R, G, B
    f = 0.5 + 0.4 * np.sin(2 * np.pi * x / 23 + 1) * np.cos(2 * np.pi * y / 19)
    smooth = np.stack([0.2 + 0.6 * f, 0.05 + 0.9 * f, 0.1 + 0.8 * f], -1)
    natural = _astronaut(128)
    for p in PATTERNS:
        assert _interior_rms(_ours(ramp, p, "malvar"), ramp) < 1e-12, p  # a linear ramp is exact
        e_bil, e_mal = (_interior_rms(_ours(smooth, p, m), smooth) for m in ("bilinear", "malvar"))
        assert e_mal < 0.75 * e_bil, (p, e_mal, e_bil)  # measured 0.69
        gain_db = 20 * math.log10(_interior_rms(_ours(natural, p, "bilinear"), natural)
                                  / _interior_rms(_ours(natural, p, "malvar"), natural))
        assert gain_db > 3.0, (p, gain_db)  # measured 4.1–4.2 dB (the paper: 5.5 dB on the Kodak set)


def test_gradients_reach_exactly_the_sampled_photosites() -> None:
    for p in PATTERNS:
        x = torch.rand(2, 3, 12, 14, dtype=torch.float64, requires_grad=True)
        out = mosaic_demosaic(x, p.lower(), BGR, "malvar")
        (out * torch.rand_like(out)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        sampled = cfa_masks(p.lower(), BGR, 12, 14).bool().expand_as(x)
        assert (x.grad[sampled].abs() > 0).all() and (x.grad[~sampled] == 0).all(), p
    x = torch.rand(1, 3, 8, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mosaic_demosaic(t, "grbg", BGR, "malvar"), (x,))


def test_pipeline_demosaics_with_the_spec_method() -> None:
    d = copy.deepcopy(TINY)
    d["sensor"].update(mosaic="gbrg", demosaic="malvar")
    pipe = Pipeline(parse_spec(d))
    clean = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    y = pipe.noisy(clean, torch.zeros(1, dtype=torch.float64), torch.Generator().manual_seed(0))
    want = mosaic_demosaic(clean, "gbrg", pipe.bands, "malvar")
    assert torch.allclose(y, want, atol=1e-12)
    assert not torch.allclose(y, mosaic_demosaic(clean, "gbrg", pipe.bands), atol=1e-3)


def test_check_accepts_malvar_and_refuses_it_without_a_mosaic(tmp_path: Path, cli) -> None:
    d = copy.deepcopy(TINY)
    d["sensor"].update(mosaic="rggb", demosaic="malvar")
    r = cli("check", write_spec(tmp_path, d, "malvar.yaml"))
    assert r.returncode == 0, r.stderr
    d["sensor"]["mosaic"] = "none"
    r = cli("check", write_spec(tmp_path, d, "nomosaic.yaml"))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "sensor.demosaic" in err and "sensor.mosaic" in err and "\n" not in err and "Traceback" not in err

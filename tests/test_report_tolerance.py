"""As-built fabrication model: zero error is the quantized map exactly, the Monte Carlo is reproducible by seed,
and each error source does what it says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lensdesign.analysis.psfs import CoreMeter, FieldAnalyzer
from lensdesign.analysis.tolerance import FabricationErrors, as_built_height, binary_masks, monte_carlo, shift_mask
from lensdesign.baselines import cubic_height
from lensdesign.fabrication.quantize import level_index, quantize
from lensdesign.spec import parse_spec
from tests.conftest import TINY_SYSTEM

TINY = {"name": "tiny", **TINY_SYSTEM}


@pytest.fixture(scope="module")
def setup():
    data = {**TINY, "fabrication": {"process": "multilevel", "levels": 8, "min_feature": "8 um",
                                    "height_tolerance": "30 nm", "misalignment": "1 um"}}
    spec = parse_spec(data)
    fa = FieldAnalyzer(spec)
    h = cubic_height(spec, fa.n, 2.0).numpy().astype(np.float32)
    return spec, fa, h


def zero(errors: FabricationErrors) -> FabricationErrors:
    return dataclasses.replace(errors, height_tolerance=0.0, misalignment=0.0, min_feature=0.0)


@pytest.mark.parametrize("process", ["multilevel", "grayscale"])
def test_zero_error_is_the_quantized_map_exactly(setup, process):
    spec, fa, h = setup
    e = zero(dataclasses.replace(FabricationErrors.from_spec(spec, pitch=fa.dx), process=process))
    q = quantize(h.astype(np.float64), spec.max_height_m, 8)
    for seed in (0, 1):
        got = as_built_height(h, e, np.random.default_rng(seed))
        assert np.array_equal(got, q)


def test_monte_carlo_is_reproducible_and_zero_error_gives_the_quantized_numbers(setup):
    import torch

    from lensdesign.evaluation import evaluate_height, scene_shape
    from lensdesign.optics.psf import plan_grid

    spec, fa, h = setup
    depths = spec.depths_m
    meter = CoreMeter(fa, depths, h)
    sh, sw = scene_shape(spec, plan_grid(spec).psf_size)
    images = torch.rand(1, 3, sh, sw, generator=torch.Generator().manual_seed(0))
    q = quantize(h.astype(np.float64), spec.max_height_m, 8).astype(np.float32)
    gamma = 0.01

    def evaluate(x: np.ndarray) -> dict:
        r = meter(x)
        r["psnr_db"] = evaluate_height(spec, x.astype(np.float32), gamma=gamma, images=images)["mean_psnr_db"]
        return r

    e = FabricationErrors.from_spec(spec, pitch=fa.dx)
    assert e.height_tolerance == pytest.approx(30e-9) and e.misalignment == pytest.approx(1e-6)
    a = monte_carlo(h, e, 2, 5, evaluate)
    b = monte_carlo(h, e, 2, 5, evaluate)
    c = monte_carlo(h, e, 1, 6, evaluate)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["strehl"], y["strehl"]) and np.array_equal(x["core"], y["core"])
        assert x["psnr_db"] == y["psnr_db"]
    assert not np.array_equal(a[0]["strehl"], c[0]["strehl"])
    assert a[0]["psnr_db"] != c[0]["psnr_db"]
    # samples differ from one another (the errors are random)
    assert not np.array_equal(a[0]["strehl"], a[1]["strehl"])
    # zero error: every sample is the quantized element, number for number
    z = monte_carlo(h, zero(e), 1, 5, evaluate)
    ref = evaluate(q)
    for x in z:
        assert np.array_equal(x["strehl"], ref["strehl"]) and x["psnr_db"] == ref["psnr_db"]


def test_etch_depth_error_is_per_mask(setup):
    spec, fa, h = setup
    e = dataclasses.replace(zero(FabricationErrors.from_spec(spec, pitch=fa.dx)), height_tolerance=30e-9)
    rng = np.random.default_rng(3)
    got = as_built_height(h, e, rng)
    q = quantize(h.astype(np.float64), spec.max_height_m, 8)
    lev = level_index(h.astype(np.float64), spec.max_height_m, 8)
    eps = np.random.default_rng(3).uniform(-1, 1, size=3) * 30e-9  # the same draws, in the same order
    want = q + sum(eps[j] * ((lev >> j) & 1) for j in range(3))
    assert np.allclose(got, want, atol=1e-15, rtol=0)
    assert np.abs(got - q).max() <= 3 * 30e-9 + 1e-15
    # level 0 (no mask etched) is exact
    assert np.array_equal(got[lev == 0], q[lev == 0])


def test_misalignment_moves_masks_after_the_first(setup):
    spec, fa, h = setup
    e = dataclasses.replace(zero(FabricationErrors.from_spec(spec, pitch=fa.dx)), misalignment=fa.dx)
    got = as_built_height(h, e, np.random.default_rng(0))
    q = quantize(h.astype(np.float64), spec.max_height_m, 8)
    step = spec.max_height_m / 8
    lev = level_index(h.astype(np.float64), spec.max_height_m, 8)
    masks = binary_masks(lev, 8)
    # mask 0 is the frame: where masks 1 and 2 are flat over a 3×3 neighbourhood nothing changes
    from scipy import ndimage

    edge = np.zeros_like(q, dtype=bool)
    for mk in masks[1:]:
        edge |= ndimage.maximum_filter(mk, 3) != ndimage.minimum_filter(mk, 3)
    assert np.array_equal(got[~edge], q[~edge])
    assert np.abs(got - q)[edge].max() > 0.5 * step
    # an integer shift is a plain translation
    m = masks[1]
    s = shift_mask(m, (0.0, 1.0))
    assert np.array_equal(s[:, 1:], m[:, :-1])


def test_rounding_blurs_edges_and_keeps_the_mean(setup):
    spec, fa, h = setup
    e = dataclasses.replace(zero(FabricationErrors.from_spec(spec, pitch=fa.dx)), min_feature=8e-6)
    assert e.rounding_sigma_px == pytest.approx(0.5)
    got = as_built_height(h, e, np.random.default_rng(0))
    q = quantize(h.astype(np.float64), spec.max_height_m, 8)
    assert not np.array_equal(got, q)
    assert got.min() >= -1e-12 and got.max() <= q.max() + 1e-12
    assert got.mean() == pytest.approx(q.mean(), rel=0.02)

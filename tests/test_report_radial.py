"""The report's field analysis of ring designs on the 1-D path (`RadialFieldAnalyzer`): the diffraction-limited
reference against the Airy formulas, a ring design against the 2-D grid's `FieldAnalyzer`, energy conservation,
and the ring averaging of as-built elements."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import special

from lensdesign.analysis import metrics as M
from lensdesign.analysis.psfs import FieldAnalyzer
from lensdesign.analysis.radial import RadialFieldAnalyzer
from lensdesign.analysis.report import analyse_psfs
from lensdesign.optics.hankel import render_rings
from lensdesign.spec import parse_spec
from tests.conftest import HARD

RADIAL = {**copy.deepcopy(HARD), "name": "tinyradial", "optics": {**HARD["optics"], "parameterization": "radial"}}


@pytest.fixture(scope="module")
def analyzers() -> tuple[RadialFieldAnalyzer, FieldAnalyzer]:
    torch.set_num_threads(1)
    spec = parse_spec(RADIAL)
    return RadialFieldAnalyzer(spec), FieldAnalyzer(spec)


@pytest.mark.parametrize("form", ["fresnel", "asm"])
def test_reference_is_the_airy_pattern(analyzers, form: str) -> None:
    """The diffraction-limited PSF, through either radial propagator: MTF within 0.01 of the formula to 0.8 of
    cutoff, 80 % encircled energy at the Airy radius, and its first zero at 1.22 λN."""
    ra = analyzers[0] if form == analyzers[0].system.choice.kind else RadialFieldAnalyzer(analyzers[0].spec, form=form)
    assert ra.system.choice.kind == form
    spec = ra.spec
    n_f = ra.f_number
    for j, lam in enumerate(spec.wavelengths):
        fc = M.cutoff_frequency(spec.optics.aperture, lam, spec.optics.sensor_distance)
        f = np.linspace(0.0, 0.8 * fc, 41)
        got = ra._otf(ra._ref[j], j, f)
        assert np.abs(got - M.diffraction_limited_mtf(f / fc)).max() < 0.01
        assert ra._ee_radius(ra._ref[j], j, 0.8) == pytest.approx(M.airy_ee_radius(0.8, lam, n_f), rel=0.02)
        rho, i_ref = ra._rho[j], ra._ref[j]
        first_min = rho[np.argmax(np.diff(i_ref) > 0)]  # the intensity first rises again just past the zero
        assert abs(first_min - M.airy_first_zero(lam, n_f)) <= 0.5 * (rho[1] - rho[0]) + 0.01 * first_min


def test_energy_in_the_field_is_the_airy_encircled_energy(analyzers) -> None:
    """The diffraction-limited PSF holds 1 − J₀²(v) − J₁²(v) of the power inside the analysed radius R, v = πR/(λN)
    (Born & Wolf 8.5): the radial samples integrate the whole pattern, its far rings included."""
    ra, _ = analyzers
    for j, lam in enumerate(ra.wavelengths):
        v = math.pi * ra._rho[j][-1] / (lam * ra.f_number)
        want = 1 - special.j0(v) ** 2 - special.j1(v) ** 2
        assert float(ra._ref[j] @ ra._dA[j]) == pytest.approx(want, abs=1e-3)


def test_ring_design_agrees_with_the_converged_2d_grid(analyzers) -> None:
    """The Fresnel ring lens at the spec's depths: the 2-D grid's Strehl ratios converge to the 1-D ones as its pitch
    goes from 4 µm to 1 µm (the same rings rendered finer), and at 1 µm Strehl, core energy and MTF agree."""
    ra, coarse = analyzers
    spec = ra.spec
    h = ra.system.lens_map().numpy().astype(np.float32)
    fine_data = copy.deepcopy(RADIAL)
    fine_data["optics"]["pitch"] = "1 um"  # rings stay 4 µm (min_feature)
    fa = FieldAnalyzer(parse_spec(fine_data))
    h_fine = render_rings(ra.profile(h).double(), fa.n, fa.dx, ra.system.ring_width).numpy().astype(np.float32)
    depths = spec.depths_m
    one, two = analyse_psfs(ra, h, depths, 2), analyse_psfs(fa, h_fine, depths, 2)
    err_fine = np.abs(one.strehl - two.strehl).max()
    assert err_fine < 0.5 * np.abs(one.strehl - coarse.strehl(h, depths)).max()
    np.testing.assert_allclose(one.strehl, two.strehl, rtol=0.01, atol=0.002)
    # the OTF per unit input power (MTF × energy in the field): the square 2-D field holds a little more stray light
    # than the 1-D disk of the same area (0.5 % here), which only moves the MTF's normalization; away from the MTF's
    # zeros, which the 2-D ring average of |OTF| over rings of width 1/(field width) fills in, within 3 % (the 2-D
    # curve interpolated linearly between its rings)
    for j, lam in enumerate(spec.wavelengths):
        fc = M.cutoff_frequency(spec.optics.aperture, lam, spec.optics.sensor_distance)
        sel = (one.mtf_freq >= two.mtf_freq[1]) & (one.mtf_freq < 0.8 * fc)  # from the 2-D grid's first ring
        other = np.stack([np.interp(one.mtf_freq[sel], two.mtf_freq, two.mtf[i, j]) * two.totals[i, j]
                          for i in range(len(depths))])
        got = one.mtf[:, j, sel] * one.totals[:, j, None]
        assert np.abs(got - other).max() < 0.03
        clear = other > 0.1
        np.testing.assert_allclose(got[clear], other[clear], rtol=0.03, atol=0.005)
    np.testing.assert_allclose(one.totals, two.totals, atol=0.01)
    c1, c2 = ra.core_meter(depths, h)(h), fa.core_meter(depths, h_fine)(h_fine)
    on_axis = one.strehl > 0.1  # the 2-D meter centres the core on the peak, which a dim PSF may have off axis
    np.testing.assert_allclose(c1["core"][on_axis], c2["core"][on_axis], rtol=0.03, atol=0.005)
    np.testing.assert_allclose(ra.mtf_at(h, depths, 3e4), fa.mtf_at(h_fine, depths, 3e4), atol=0.01)


def test_as_built_elements_are_averaged_per_ring(analyzers) -> None:
    """`ring_design`: a ring map is returned unchanged; noise on it is replaced by each ring's mean."""
    ra, _ = analyzers
    h = ra.system.lens_map().numpy().astype(np.float32)
    np.testing.assert_array_equal(ra.ring_design(h), h)
    noisy = h + np.random.default_rng(0).normal(0, 20e-9, h.shape).astype(np.float32)
    back = ra.ring_design(noisy)
    np.testing.assert_array_equal(ra.ring_design(back), back)
    assert np.abs(back - h).max() < np.abs(noisy - h).max()

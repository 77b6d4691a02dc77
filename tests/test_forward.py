"""The forward model's pure functions: adjoint identities ⟨A x, y⟩ = ⟨x, Aᴴ y⟩ (complex128, `torch.vdot`), the
shift theorem behind the PSF window, the fused in-place kernels against their plain definitions, and the
sensor-grid convention (the axis at the centre of the central sensor pixel for any samples per pixel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensdesign.analysis.psfs import FieldAnalyzer
from lensdesign.baselines import fresnel_height
from lensdesign.fabrication.rules import FocusModel
from lensdesign.optics import forward as F
from lensdesign.optics.psf import OpticalSystem
from lensdesign.spec import Spec, parse_spec

N, M, B, P = 24, 40, 3, 9  # element, padded grid, samples per pixel, PSF window in pixels (window 27 > N)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _crandn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.complex128, generator=_gen(seed))


def _unitary_transfer(m: int, seed: int) -> torch.Tensor:
    phase = torch.rand(m, m, dtype=torch.float64, generator=_gen(seed)) * 2 * math.pi
    return torch.polar(torch.ones(m, m, dtype=torch.float64), phase)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(abs(a - b) / abs(b))


@pytest.mark.parametrize("k", [3 * B, P * B])  # window smaller and larger than the element
def test_propagation_adjoint_identity(k: int) -> None:
    hw = _unitary_transfer(M, 0)
    x, y = _crandn(N, N, seed=1), _crandn(k, k, seed=2)
    ax = F.propagate_to_window(x, hw, k)
    aty = F.propagate_to_window_adjoint(y, hw, N)
    assert ax.shape == (k, k) and aty.shape == (N, N)
    lhs, rhs = torch.vdot(ax.flatten(), y.flatten()), torch.vdot(x.flatten(), aty.flatten())
    assert _rel(lhs, rhs) < 1e-12
    # the identity discriminates: the adjoint with an unconjugated transfer function fails it
    wrong = F.propagate_to_window_adjoint(y, hw.conj(), N)
    assert _rel(lhs, torch.vdot(x.flatten(), wrong.flatten())) > 1e-2


def test_propagation_of_a_zero_padded_field_equals_that_of_the_element_field() -> None:
    hw = _unitary_transfer(M, 3)
    x = _crandn(N, N, seed=4)
    padded = torch.nn.functional.pad(x, (0, M - N, 0, M - N))
    assert torch.allclose(F.propagate_to_window(padded, hw, 20), F.propagate_to_window(x, hw, 20), atol=1e-14)


@pytest.mark.parametrize("k", [3 * B, P * B])  # window smaller and larger than the element
def test_pruned_transforms_equal_the_full_ones(k: int) -> None:
    """The pruned forward and adjoint (used from `PRUNE_MIN`) compute the same fields as the full 2-D transforms."""
    hw = _unitary_transfer(M, 20)
    x = torch.nn.functional.pad(_crandn(N, N, seed=21), (0, M - N, 0, M - N))
    full = F.propagate_to_window(x, hw, k)
    assert torch.allclose(F.propagate_to_window_pruned(x, hw, k), full, rtol=0, atol=1e-12 * float(full.abs().max()))
    y = _crandn(k, k, seed=22)
    padded = torch.nn.functional.pad(y, (0, M - k, 0, M - k))
    want = F.propagate_conj_adjoint(padded, hw, N)
    got = F.propagate_conj_adjoint_pruned(y, hw, N)
    assert got.shape == (N, N) and torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_psf_stack_with_pruned_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PSF stack and its gradient are the same with the pruned transforms forced on a small grid."""
    spec = _f20_spec(2e-6)
    system = OpticalSystem(spec)
    h0 = (fresnel_height(spec, system.grid.n).float() + 1e-7 * torch.rand(system.grid.n, system.grid.n,
                                                                           generator=_gen(23)))
    weights = torch.rand(system.shape, generator=_gen(24))
    out = {}
    for prune_min in (10**9, 0):
        monkeypatch.setattr(F, "PRUNE_MIN", prune_min)
        h = h0.clone().requires_grad_(True)
        stack = system.psf(h)
        (stack * weights).sum().backward()
        out[prune_min] = (stack.detach(), h.grad)
    (s_full, g_full), (s_pruned, g_pruned) = out[10**9], out[0]
    assert torch.allclose(s_pruned, s_full, rtol=1e-4, atol=1e-6 * float(s_full.max()))
    assert torch.allclose(g_pruned, g_full, rtol=1e-3, atol=1e-4 * float(g_full.abs().max()))


def test_binning_adjoint_identity() -> None:
    x, y = _crandn(P * B, P * B, seed=5), _crandn(P, P, seed=6)
    bx, bty = F.bin_pixels(x, B), F.spread_pixels(y, B)
    assert bx.shape == (P, P) and bty.shape == (P * B, P * B)
    assert _rel(torch.vdot(bx.flatten(), y.flatten()), torch.vdot(x.flatten(), bty.flatten())) < 1e-12
    # binning is the sum over each pixel's block
    assert torch.allclose(bx[2, 4], x[2 * B:3 * B, 4 * B:5 * B].sum())


def test_transmission_linearization_adjoint_identity() -> None:
    """J dh = i a t dh maps real heights to complex fields; Jᴴ is its adjoint for the real inner product."""
    a = torch.tensor([9.1e6, 7.6e6, 6.5e6], dtype=torch.float64)  # rad/m, about 2π(n − 1)/λ
    h = torch.rand(N, N, dtype=torch.float64, generator=_gen(7)) * 1.2e-6
    t = F.transmission(h, a)
    dh = torch.randn(N, N, dtype=torch.float64, generator=_gen(8)) * 1e-9
    g = _crandn(3, N, N, seed=9)
    jx = F.transmission_jvp(t, a, dh)
    lhs = torch.vdot(jx.flatten(), g.flatten()).real
    rhs = torch.vdot(dh.flatten(), F.transmission_vjp(t, a, g).flatten())
    assert _rel(lhs, rhs) < 1e-12
    # J is the derivative of the transmission (central differences)
    eps = 1e-2
    fd = (F.transmission(h + eps * dh, a) - F.transmission(h - eps * dh, a)) / (2 * eps)
    assert float((fd - jx).abs().max() / jx.abs().max()) < 1e-6


def test_fused_kernels_equal_their_definitions() -> None:
    u = _crandn(P * B, P * B, seed=10).to(torch.complex64)
    saved = torch.empty_like(u)
    out = torch.empty(P, P)
    F.binned_intensity_into(u, saved, out, B)
    assert torch.equal(saved, u.conj())
    assert torch.allclose(out, F.binned_intensity(u, B), rtol=1e-6)
    g = _crandn(P, P, seed=11).to(torch.complex64)
    dest = torch.empty_like(u)
    F.spread_times_into(g, saved, dest, B)
    assert torch.allclose(dest, F.spread_pixels(g, B) * saved, rtol=1e-6)


@pytest.mark.parametrize("start", [5, -7])
def test_window_transfer_shifts_the_field(start: int) -> None:
    """Shift theorem: the window-shifted transfer function reads the field from sample `start` on (circularly)."""
    h = _unitary_transfer(M, 12)
    x = _crandn(N, N, seed=13)
    full = torch.fft.ifft2(torch.fft.fft2(x, s=(M, M)) * h)
    moved = F.propagate_to_window(x, F.window_transfer(h, start), M)
    assert torch.allclose(moved, torch.roll(full, (-start, -start), (0, 1)), atol=1e-12)


def test_reference_equals_the_pupil_psf() -> None:
    """`psf_reference` (plain autograd) and `pupil_psf` (the no-grad path) compute the same stack."""
    a = torch.tensor([9.1e6, 6.5e6], dtype=torch.float64)
    h = torch.rand(N, N, dtype=torch.float64, generator=_gen(14)) * 1.2e-6
    src = _crandn(2, 2, N, N, seed=15) / N
    hw = torch.stack([_unitary_transfer(M, 16), _unitary_transfer(M, 17)])
    ref = F.psf_reference(h, src, a, hw, P, B)
    assert ref.shape == (2, 2, P, P) and ref.dtype == torch.float64
    assert torch.allclose(ref, F.pupil_psf(src * F.transmission(h, a)[None], hw, P, B), rtol=1e-10, atol=0)


# ---- sensor-grid convention ----------------------------------------------------------------------------------


def _f20_spec(pitch: float) -> Spec:
    """An f/20 lens (0.5 mm, 10 mm) with 6 µm pixels, 3 wavelengths × 3 depths, simulated at `pitch` (m)."""
    return parse_spec({
        "optics": {"aperture": "0.5 mm", "sensor_distance": "10 mm", "pitch": pitch, "padding": 1.5},
        "wavelengths": ["460 nm", "550 nm", "640 nm"],
        "scene": {"depths": {"min": "0.5 m", "max": "inf", "count": 3}},
        "sensor": {"pixel_pitch": "6 um", "psf_size": 21},
    })


def _centroid(p: torch.Tensor) -> torch.Tensor:
    """(y, x) intensity centroids (…, 2) of images (…, K, K), in samples from index K // 2."""
    k = p.shape[-1]
    c = torch.arange(k, dtype=p.dtype) - k // 2
    tot = p.sum(dim=(-2, -1))
    return torch.stack([(p.sum(-1) * c).sum(-1) / tot, (p.sum(-2) * c).sum(-1) / tot], dim=-1)


def test_psf_stack_is_independent_of_the_parity_of_samples_per_pixel() -> None:
    """The same Fresnel lens at 2 µm (3 samples per pixel) and 1 µm (6): PSF stacks within 1 % relative L2 per PSF
    (a half-sample offset of the axis with an even count made them differ by up to 10 %), axis centred in both."""
    stacks = {}
    for pitch, b in ((2e-6, 3), (1e-6, 6)):
        spec = _f20_spec(pitch)
        system = OpticalSystem(spec)
        assert system.grid.bin == b
        with torch.no_grad():
            stacks[b] = system.psf(fresnel_height(spec, system.grid.n).float()).double()
        assert float(_centroid(stacks[b]).abs().max()) < 0.005  # pixels; 0.08 with the axis half a sample off
    a, b6 = stacks[3], stacks[6]
    rel = (a - b6).flatten(2).norm(dim=-1) / a.flatten(2).norm(dim=-1)
    assert float(rel.max()) < 0.01, np.round(rel.numpy(), 4)


def test_analysis_and_focus_model_centre_the_axis_like_the_psf_stack() -> None:
    """FieldAnalyzer (whole field, axis at M // 2) and FocusModel (window at the element pitch) put the in-focus
    Airy pattern of the design wavelength on their central sample."""
    spec = _f20_spec(2e-6)
    fm = FocusModel(spec)
    n = fm.system.grid.n
    h = fresnel_height(spec, n).double().numpy()
    p = torch.from_numpy(fm.psf(np.exp(1j * fm.phase_per_m * h)))
    assert int(p.argmax()) == p.numel() // 2 and float(_centroid(p).abs().max()) < 0.005
    fa = FieldAnalyzer(spec, oversample=1)
    coarse = fa.coarse_intensity(fa.spectrum(torch.from_numpy(h).float(), spec.focus_depth_m)).double()
    j = spec.wavelengths.index(spec.design_wavelength_m)
    c, r = fa.m // 2, 40
    assert int(coarse[j].argmax()) == c * fa.m + c
    assert float(_centroid(coarse[j, c - r:c + r + 1, c - r:c + r + 1]).abs().max()) < 0.005

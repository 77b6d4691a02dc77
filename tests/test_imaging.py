"""Scenes, sensor and reconstruction: colour, dead leaves, crops, 'valid' blur, noise, Wiener edges, layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensdesign.imaging.reconstruct import WienerPlan, psf_to_otf, taper_pad, wiener_deconvolve
from lensdesign.imaging.scenes import (
    BUILTIN_VALIDATION,
    channels_from_rgb,
    dead_leaves,
    depth_layers,
    fixed_crops,
    linear_to_srgb,
    load_images,
    random_crops,
    rgb_band,
    rgb_from_channels,
    srgb_to_linear,
)
from lensdesign.imaging.sensor import add_noise, convolve_same, convolve_valid, psnr, render_layers, sample_read_noise


def gaussian_psf(size: int, sigma: float, channels: int = 3) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).expand(channels, size, size).clone()


def test_srgb_roundtrip_and_known_values():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    # mid-grey sRGB 0.5 is 21.4 % linear; the curve is linear below 0.04045
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.2140, abs=1e-3)
    assert float(srgb_to_linear(torch.tensor(0.02))) == pytest.approx(0.02 / 12.92, rel=1e-6)


def test_channels_follow_wavelengths():
    assert [rgb_band(w) for w in (460e-9, 550e-9, 640e-9)] == [2, 1, 0]
    rgb = np.zeros((4, 5, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.9, 0.5, 0.1
    ch = channels_from_rgb(rgb, [460e-9, 550e-9, 640e-9])
    assert ch.shape == (3, 4, 5)
    assert np.allclose(ch[:, 0, 0], [0.1, 0.5, 0.9])
    back = rgb_from_channels(torch.from_numpy(ch), [460e-9, 550e-9, 640e-9])
    assert np.allclose(back, rgb)
    mono = channels_from_rgb(rgb, [550e-9])
    assert mono.shape == (1, 4, 5) and np.allclose(mono, 0.2126 * 0.9 + 0.7152 * 0.5 + 0.0722 * 0.1)


def test_dead_leaves_is_deterministic_covered_and_varied():
    a = dead_leaves(96, seed=3)
    b = dead_leaves(96, seed=3)
    c = dead_leaves(96, seed=4)
    assert a.shape == (96, 96, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # many leaves of many sizes: lots of distinct colours, strong edges
    assert len(np.unique(a.reshape(-1, 3).round(3), axis=0)) > 200
    assert np.abs(np.diff(a, axis=1)).max() > 0.5


def test_builtin_images_split_and_linear():
    s = load_images("builtin", [460e-9, 550e-9, 640e-9], 64)
    assert set(s.train_names).isdisjoint(s.validation_names)
    assert set(BUILTIN_VALIDATION) <= set(s.validation_names)
    assert len(s.train) >= 10 and len(s.validation) == 4
    for im in s.train + s.validation:
        assert im.shape[0] == 3 and min(im.shape[1:]) >= 64
        assert float(im.min()) >= 0 and float(im.max()) <= 1
    # linear intensity: a photograph's mean is well below its sRGB-encoded mean
    im = s.validation[0]
    assert float(im.mean()) < float(linear_to_srgb(im).mean()) - 0.1


def test_image_folder_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    s = load_images(str(tmp_path), [550e-9], 64)
    assert s.validation_names == ["im4.png"] and len(s.train) == 5
    assert s.train[0].shape == (1, 64, 80)  # upscaled to the crop size, aspect kept


def test_random_crops_depend_only_on_the_generator():
    ims = [torch.rand(3, 50, 60), torch.rand(3, 70, 40)]
    a = random_crops(ims, 5, 32, torch.Generator().manual_seed(1))
    b = random_crops(ims, 5, 32, torch.Generator().manual_seed(1))
    c = random_crops(ims, 5, 32, torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    f = fixed_crops(ims, 3, 32)
    assert f.shape == (3, 3, 32, 32) and torch.equal(f[0], ims[0][:, 9:41, 14:46])


def test_convolve_valid_matches_direct_convolution():
    g = torch.Generator().manual_seed(0)
    scene = torch.rand(2, 3, 40, 44, generator=g)
    psf = torch.rand(1, 3, 9, 9, generator=g)
    out = convolve_valid(scene, psf)
    assert out.shape == (2, 3, 32, 36)
    # conv2d is a correlation: flip the kernel for a convolution
    ref = torch.nn.functional.conv2d(scene, psf[0].flip(-1, -2)[:, None], groups=3)
    assert torch.allclose(out, ref, atol=1e-5)


def test_convolve_valid_does_not_wrap():
    scene = torch.zeros(1, 1, 30, 30)
    scene[..., 0, 0] = 1.0  # a point in the corner of the margin
    psf = torch.zeros(1, 1, 7, 7)
    psf[..., 3, 3] = 0.5
    psf[..., 0, 6] = 0.5
    out = convolve_valid(scene, psf)
    # the corner point reaches the valid region only through the PSF's own extent, never from the far side
    assert float(out[..., -8:, :].abs().max()) < 1e-6 and float(out[..., :, -8:].abs().max()) < 1e-6


def test_psf_to_otf_of_a_centred_delta_is_flat():
    d = torch.zeros(3, 11, 11)
    d[:, 5, 5] = 1
    otf = psf_to_otf(d, (32, 40))
    assert otf.shape == (3, 32, 21)
    assert torch.allclose(otf, torch.ones_like(otf))


def test_wiener_inverts_a_blur_without_noise():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 96, 96, generator=g), 3, 1, 1)  # smooth-ish scene
    psf = gaussian_psf(9, 0.8)
    y = convolve_same(img, psf[None])
    x = wiener_deconvolve(y, psf, 1e-6)
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    assert float(psnr(x[inner], img[inner])) > 40
    assert float(psnr(y[inner], img[inner])) < float(psnr(x[inner], img[inner])) - 10


def test_wiener_padding_removes_border_ringing():
    """A 'valid' sensor image is not periodic: the padded, tapered Wiener filter must beat a plain circular one."""
    s = load_images("builtin", [460e-9, 550e-9, 640e-9], 160).validation[0]
    psf = gaussian_psf(21, 3.0)
    scene = s[None, :, :148, :148]
    y = convolve_valid(scene, psf[None])  # 128 × 128, blurred by light from outside the field
    truth = scene[..., 10:-10, 10:-10]
    gamma = 1e-3
    ours = wiener_deconvolve(y, psf, gamma)
    naive = WienerPlan(y, psf, pad=0).solve(gamma)
    border = torch.ones(128, 128, dtype=torch.bool)
    border[16:-16, 16:-16] = False
    err = lambda x: float((x - truth).square()[..., border].mean())  # noqa: E731
    assert err(ours) < 0.25 * err(naive)
    assert float(psnr(ours, truth)) > float(psnr(naive, truth)) + 3


def test_taper_pad_is_periodic_and_keeps_the_image():
    y = torch.rand(2, 3, 20, 24)
    p = taper_pad(y, 8)
    assert p.shape == (2, 3, 36, 40)
    assert torch.allclose(p[..., 8:-8, 8:-8], y, atol=1e-6)
    # the two ends meet near the mean (a smooth periodic continuation)
    mean = y.mean(dim=(-2, -1))
    assert torch.allclose(p[..., 0, 10], mean, atol=0.05) and torch.allclose(p[..., -1, 10], mean, atol=0.05)


def test_noise_statistics_and_bit_depth():
    g = torch.Generator().manual_seed(0)
    clean = torch.full((4, 1, 128, 128), 0.5)
    sig = torch.tensor([0.0, 0.01, 0.02, 0.04])
    y = add_noise(clean, sig, g)
    est = (y - clean).std(dim=(1, 2, 3))
    assert torch.allclose(est, sig, rtol=0.05, atol=1e-6)
    # shot noise: variance x / full_well on top of read noise
    y = add_noise(torch.full((1, 1, 256, 256), 0.25), torch.zeros(1), g, full_well=1000.0, differentiable=False)
    assert float(y.var()) == pytest.approx(0.25 / 1000, rel=0.1)
    # bit depth: values on the 2^b − 1 grid, clipped to [0, 1]
    y = add_noise(torch.rand(1, 1, 32, 32, generator=g) * 1.2 - 0.1, torch.full((1,), 0.01), g, bit_depth=4,
                  differentiable=False)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.allclose(y * 15, torch.round(y * 15), atol=1e-5)
    r = sample_read_noise((0.001, 0.01), 1000, g)
    assert 0.001 <= float(r.min()) and float(r.max()) <= 0.01 and abs(float(r.mean()) - 0.0055) < 5e-4


def test_depth_layers_nearest_in_diopters():
    layers = [0.5, 1.0, math.inf]
    d = np.array([[0.4, 0.6, 0.9], [1.9, 5.0, np.inf]])
    # 1/1.9 = 0.53 D is nearer to 1 D than to 0 D; 1/5 = 0.2 D is nearer to 0 D (inf)
    assert depth_layers(d, layers).tolist() == [[0, 0, 1], [1, 2, 2]]


def test_render_layers_occludes_far_by_near():
    img = torch.rand(1, 3, 32, 32)
    delta = torch.zeros(2, 3, 5, 5)
    delta[:, :, 2, 2] = 1.0
    layers = torch.zeros(1, 32, 32, dtype=torch.long)
    layers[..., 16:] = 1
    # sharp PSFs: the composite is the image itself
    assert torch.allclose(render_layers(img, layers, delta), img, atol=1e-6)
    # one layer: plain 'same' blur
    blur = gaussian_psf(5, 1.0)[None].expand(2, 3, 5, 5).clone()
    one = render_layers(img, torch.zeros(1, 32, 32, dtype=torch.long), blur)
    assert torch.allclose(one, convolve_same(img, blur[:1]), atol=1e-5)
    # near layer (index 0) blurred, far layer sharp: deep inside the near half the far layer does not leak in
    mixed = render_layers(img, layers, torch.cat([blur[:1], delta[:1]]))
    assert torch.allclose(mixed[..., :, :12], convolve_same(img, blur[:1])[..., :, :12], atol=1e-5)
    assert torch.allclose(mixed[..., :, 20:], img[..., :, 20:], atol=1e-5)

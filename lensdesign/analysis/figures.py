"""Report figures (matplotlib, Agg backend): each function returns one PNG as bytes.

Inputs are plain numpy arrays in SI units; axes are labelled in the units a reader expects (µm on the sensor,
mm on the element, cycles/mm, diopters with the depth in metres on the top axis).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lensdesign.imaging.scenes import diopters as scene_diopters

DPI = 100
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.facecolor": "white",
    "axes.grid": False,
}
DESIGN_COLORS = {"design": "#d62728", "design (quantized)": "#ff9896", "fresnel": "#1f77b4", "cubic": "#2ca02c"}


def depth_label(z: float) -> str:
    """'∞', '0.5 m', '250 mm' for a depth in metres."""
    if math.isinf(z):
        return "∞"
    if z >= 1:
        return f"{z:.3g} m"
    if z >= 0.1:
        return f"{z:.2g} m"
    return f"{z * 1e3:.3g} mm"


def diopters(z: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Object vergence 1/z (1/m) as an array of at least one dimension; 0 for infinity."""
    return np.atleast_1d(scene_diopters(np.asarray(z, dtype=np.float64)))


def wavelength_rgb(wavelength: float) -> tuple[float, float, float]:
    """An sRGB colour (0..1) for a wavelength in metres (visible band; grey outside 380–780 nm)."""
    w = wavelength * 1e9
    if w < 380 or w > 780:
        return (0.4, 0.4, 0.4)
    if w < 440:
        r, g, b = -(w - 440) / 60, 0.0, 1.0
    elif w < 490:
        r, g, b = 0.0, (w - 440) / 50, 1.0
    elif w < 510:
        r, g, b = 0.0, 1.0, -(w - 510) / 20
    elif w < 580:
        r, g, b = (w - 510) / 70, 1.0, 0.0
    elif w < 645:
        r, g, b = 1.0, -(w - 645) / 65, 0.0
    else:
        r, g, b = 1.0, 0.0, 0.0
    return (r, g, b)


def line_colors(wavelengths: Sequence[float]) -> list[tuple[float, float, float]]:
    """Plot colours per wavelength: spectral hues, darkened a little so thin lines stay visible on white."""
    out = []
    for w in wavelengths:
        r, g, b = wavelength_rgb(w)
        out.append((0.85 * r, 0.75 * g, 0.9 * b))
    return out


def composite_channels(wavelengths: Sequence[float]) -> np.ndarray:
    """(W, 3) weights mapping wavelengths to RGB for a colour composite: blue/green/red for three sorted
    wavelengths, spectral colours otherwise."""
    order = np.argsort(wavelengths)
    w = np.zeros((len(wavelengths), 3))
    if len(wavelengths) == 3:
        for c, i in enumerate(order[::-1]):
            w[i, c] = 1.0
        return w
    for i, lam in enumerate(wavelengths):
        w[i] = wavelength_rgb(lam)
    return w / np.maximum(w.sum(0, keepdims=True), 1e-9)


def to_png(fig: Figure) -> bytes:
    """Render and close a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _depth_axes(ax: plt.Axes, depths: Sequence[float]) -> None:
    """Bottom axis in diopters; top axis labelled with the depths (m) at the given depths."""
    ax.set_xlabel("object vergence 1/z (diopters, 1/m)")
    top = ax.secondary_xaxis("top")
    d = diopters(depths)
    top.set_xticks(d)
    top.set_xticklabels([depth_label(z) for z in depths], fontsize=8)
    top.set_xlabel("object depth z", fontsize=9)


def height_figure(height: np.ndarray, quantized: np.ndarray, pitch: float, levels: int, max_height: float) -> bytes:
    """Continuous and quantized height maps (µm over mm) and their profiles through the centre row."""
    with plt.rc_context(STYLE):
        n = height.shape[0]
        half = n * pitch / 2 * 1e3
        ext = (-half, half, -half, half)
        fig = plt.figure(figsize=(11, 8.2), layout="constrained")
        gs = fig.add_gridspec(2, 2, height_ratios=[1.35, 1])
        vmax = max_height * 1e6
        im = None
        maps = []
        for k, (h, title) in enumerate(((height, "continuous"), (quantized, f"quantized to {levels} levels"))):
            ax = fig.add_subplot(gs[0, k])
            im = ax.imshow(h * 1e6, extent=ext, origin="lower", cmap="viridis", vmin=0, vmax=vmax,
                           interpolation="antialiased")
            ax.set_title(f"height map, {title}")
            ax.set_xlabel("x (mm)")
            ax.set_ylabel("y (mm)")
            maps.append(ax)
        cb = fig.colorbar(im, ax=maps, shrink=0.9)
        cb.set_label("height (µm)")
        ax = fig.add_subplot(gs[1, :])
        x = (np.arange(n) - n // 2) * pitch * 1e3
        ax.plot(x, height[n // 2] * 1e6, color="#1f77b4", lw=1.0, label="continuous")
        ax.step(x, quantized[n // 2] * 1e6, where="mid", color="#d62728", lw=0.8, alpha=0.8, label=f"quantized ({levels} levels)")
        ax.set_xlabel("x (mm), through the centre (y = 0)")
        ax.set_ylabel("height (µm)")
        ax.set_title("profile through the centre")
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(-0.03 * vmax, 1.08 * vmax)
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        return to_png(fig)


def _psf_window(k: int, pitch: float, half_width: float) -> tuple[int, int, tuple[float, float, float, float]]:
    """Centre index, shown half-width (samples) and imshow extent (µm) of a k-sample PSF window at `pitch` (m)."""
    c = k // 2
    hw = max(1, min(c, round(half_width / pitch)))
    ext_um = (hw + 0.5) * pitch * 1e6
    return c, hw, (-ext_um, ext_um, -ext_um, ext_um)


def psf_grid_figure(psfs: np.ndarray, pitch: float, depths: Sequence[float], wavelengths: Sequence[float],
                    ref_peaks: np.ndarray, half_width: float, floor: float = 1e-4) -> bytes:
    """PSFs per depth (rows) × wavelength (columns), log10 of intensity over the diffraction-limited peak.

    `psfs` (D, W, K, K) energy per sample at `pitch` (m), axis at the centre; `ref_peaks` (W,) the
    diffraction-limited peak per wavelength on the same sampling; `half_width` (m) of the shown window.
    """
    with plt.rc_context(STYLE):
        d, w, k, _ = psfs.shape
        c, hw, ext = _psf_window(k, pitch, half_width)
        fig, axes = plt.subplots(d, w, figsize=(max(6.5, 2.9 * w + 1.2), 2.75 * d + 0.8), squeeze=False,
                                 layout="constrained")
        im = None
        for i in range(d):
            for j in range(w):
                ax = axes[i, j]
                crop = psfs[i, j, c - hw:c + hw + 1, c - hw:c + hw + 1] / ref_peaks[j]
                im = ax.imshow(np.log10(np.maximum(crop, floor)), extent=ext, origin="lower", cmap="inferno",
                               vmin=math.log10(floor), vmax=0, interpolation="nearest")
                if i == 0:
                    ax.set_title(f"λ = {wavelengths[j] * 1e9:.0f} nm")
                if j == 0:
                    ax.set_ylabel(f"z = {depth_label(depths[i])}\ny (µm)")
                if i == d - 1:
                    ax.set_xlabel("x (µm)")
                ax.tick_params(labelsize=8)
        assert im is not None
        cb = fig.colorbar(im, ax=axes, shrink=min(0.9, 0.35 + 0.1 * d), pad=0.02)
        cb.set_label("log10(intensity / diffraction-limited peak)")
        fig.suptitle("PSF per depth and wavelength\n(log scale; 0 = diffraction-limited peak)" if w < 3 else
                     "PSF per depth and wavelength (log scale; 0 = diffraction-limited peak)")
        return to_png(fig)


def psf_rgb_figure(psfs: np.ndarray, pitch: float, depths: Sequence[float], wavelengths: Sequence[float],
                   half_width: float) -> bytes:
    """Colour composite of the PSF per depth (square-root stretch, each panel scaled to its own maximum)."""
    with plt.rc_context(STYLE):
        d, _w, k, _ = psfs.shape
        c, hw, ext = _psf_window(k, pitch, half_width)
        wts = composite_channels(wavelengths)
        ncol = min(d, 5)
        nrow = math.ceil(d / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(2.9 * ncol, 3.0 * nrow + 0.4), squeeze=False, layout="constrained")
        for i in range(nrow * ncol):
            ax = axes[i // ncol, i % ncol]
            if i >= d:
                ax.axis("off")
                continue
            crop = psfs[i, :, c - hw:c + hw + 1, c - hw:c + hw + 1]
            rgb = np.einsum("wyx,wc->yxc", crop, wts)
            rgb = np.sqrt(np.clip(rgb / max(float(rgb.max()), 1e-30), 0, 1))
            ax.imshow(rgb, extent=ext, origin="lower", interpolation="nearest")
            ax.set_title(f"z = {depth_label(depths[i])}")
            ax.set_xlabel("x (µm)")
            if i % ncol == 0:
                ax.set_ylabel("y (µm)")
            ax.tick_params(labelsize=8)
        names = ", ".join(f"{lam * 1e9:.0f} nm" for lam in wavelengths)
        fig.suptitle(f"PSF in colour ({names}; √ stretch, each panel scaled to its maximum)")
        return to_png(fig)


def mtf_plot_limit(cutoff_cyc_per_mm: float, nyquist_cyc_per_mm: float) -> float:
    """Upper end of the MTF plots (cycles/mm): three Nyquist frequencies, kept within 30 % … 102 % of the cutoff."""
    return min(1.02 * cutoff_cyc_per_mm, max(3.0 * nyquist_cyc_per_mm, 0.3 * cutoff_cyc_per_mm))


def mtf_figure(freq_cyc_per_mm: np.ndarray, mtf: np.ndarray, depths: Sequence[float], wavelengths: Sequence[float],
               cutoffs_cyc_per_mm: Sequence[float], sensor_nyquist_cyc_per_mm: float,
               band: tuple[np.ndarray, np.ndarray] | None = None,
               cuts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, nyquist_label: str = "sensor Nyquist") -> bytes:
    """Radially averaged MTF per depth (panels) and wavelength (colours) with the diffraction limit (dashed) and
    the Nyquist frequency (of the sensor, or of the output grid: `nyquist_label`). `mtf` (D, W, F) on
    `freq_cyc_per_mm` (F,); `band` optional (lo, hi) (D, W, F) range over orientations; `cuts` optional
    (f (G,), sagittal (D, W, G), tangential (D, W, G))."""
    from lensdesign.analysis.metrics import diffraction_limited_mtf

    with plt.rc_context(STYLE):
        d = len(depths)
        ncol = min(d, 3)
        nrow = math.ceil(d / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.5 * nrow + 0.9), squeeze=False, layout="constrained")
        cols = line_colors(wavelengths)
        fc_max = float(max(cutoffs_cyc_per_mm))
        fmax = mtf_plot_limit(fc_max, sensor_nyquist_cyc_per_mm)
        for i in range(nrow * ncol):
            ax = axes[i // ncol, i % ncol]
            if i >= d:
                ax.axis("off")
                continue
            for j, lam in enumerate(wavelengths):
                fc = cutoffs_cyc_per_mm[j]
                fd = np.linspace(0, fc, 200)
                ax.plot(fd, diffraction_limited_mtf(fd / fc), ls="--", lw=0.9, color=cols[j], alpha=0.7)
                if band is not None:
                    ax.fill_between(freq_cyc_per_mm, band[0][i, j], band[1][i, j], color=cols[j], alpha=0.12, lw=0)
                ax.plot(freq_cyc_per_mm, mtf[i, j], color=cols[j], lw=1.5, label=f"{lam * 1e9:.0f} nm")
                if cuts is not None:
                    ax.plot(cuts[0], cuts[1][i, j], color=cols[j], lw=0.8, ls=":")
                    ax.plot(cuts[0], cuts[2][i, j], color=cols[j], lw=0.8, ls="-.")
            ax.axvline(sensor_nyquist_cyc_per_mm, color="k", lw=0.8, ls=":")
            ax.text(sensor_nyquist_cyc_per_mm, 1.06, f" {nyquist_label} {sensor_nyquist_cyc_per_mm:.3g}", fontsize=8,
                    va="top", ha="left")
            ax.set_xlim(0, fmax)
            ax.set_ylim(0, 1.08)
            ax.set_title(f"z = {depth_label(depths[i])}")
            ax.set_xlabel("spatial frequency (cycles/mm)")
            ax.set_ylabel("MTF")
            ax.grid(alpha=0.3)
            if i == 0:
                handles, labels = ax.get_legend_handles_labels()
                handles.append(plt.Line2D([], [], color="grey", ls="--", lw=0.9))
                labels.append("diffraction limit")
                if band is not None:
                    handles.append(plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.2))
                    labels.append("range over orientations")
                if cuts is not None:
                    handles += [plt.Line2D([], [], color="grey", ls=":"), plt.Line2D([], [], color="grey", ls="-.")]
                    labels += ["sagittal (along x)", "tangential (along y)"]
                fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=9)
        fig.suptitle("MTF, radially averaged, per depth")
        return to_png(fig)


def _design_color(name: str, k: int) -> str:
    palette = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    if name in DESIGN_COLORS:
        return DESIGN_COLORS[name]
    return DESIGN_COLORS.get(name.split(" (")[0], palette[k % len(palette)])


def through_depth_figure(depths: Sequence[float], curves: dict[str, np.ndarray], f0_cyc_per_mm: float,
                         spec_depths: Sequence[float], wavelengths: Sequence[float], f0_note: str = "") -> bytes:
    """MTF at one frequency against depth for several designs: the mean over wavelengths (top panel) and, for
    more than one wavelength, one small panel per wavelength. `curves[name]` is (D, W) on `depths` (m); the first
    entry is drawn on top."""
    with plt.rc_context(STYLE):
        nw = len(wavelengths)
        fig = plt.figure(figsize=(10, 7.6 if nw > 1 else 4.8), layout="constrained")
        gs = fig.add_gridspec(2 if nw > 1 else 1, max(nw, 1), height_ratios=[1.9, 1] if nw > 1 else [1])
        x = diopters(depths)
        items = list(curves.items())
        xlim = (x.min() - 0.02 * (np.ptp(x) + 1e-9), x.max() + 0.02 * (np.ptp(x) + 1e-9))
        ax = fig.add_subplot(gs[0, :])
        for k in reversed(range(len(items))):
            name, v = items[k]
            ax.plot(x, v.mean(axis=1), color=_design_color(name, k), lw=2.8 if k == 0 else 1.9, marker="o", ms=4,
                    label=name, zorder=3 + len(items) - k)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5))
        top = max(float(v.mean(axis=1).max()) for v in curves.values())
        ax.set_ylim(0, max(0.05, min(1.05, 1.25 * top)))
        ax.set_xlim(*xlim)
        ax.set_ylabel(f"MTF at {f0_cyc_per_mm:.3g} cycles/mm" + ("\n(mean over wavelengths)" if nw > 1 else ""))
        _depth_axes(ax, spec_depths)
        ax.grid(alpha=0.3)
        ax.set_title(f"through-depth MTF at {f0_cyc_per_mm:.3g} cycles/mm{f0_note}", pad=8)
        if nw > 1:
            vmax = max(float(v.max()) for v in curves.values())
            for j, lam in enumerate(wavelengths):
                a = fig.add_subplot(gs[1, j])
                for k in reversed(range(len(items))):
                    name, v = items[k]
                    a.plot(x, v[:, j], color=_design_color(name, k), lw=1.8 if k == 0 else 1.2, zorder=3 + len(items) - k)
                a.set_xlim(*xlim)
                a.set_ylim(0, max(0.05, min(1.05, 1.1 * vmax)))
                a.set_title(f"{lam * 1e9:.0f} nm", fontsize=10)
                a.set_xlabel("1/z (diopters)")
                if j == 0:
                    a.set_ylabel("MTF")
                a.grid(alpha=0.3)
        return to_png(fig)


def psf_metrics_figure(depths: Sequence[float], wavelengths: Sequence[float], strehl: np.ndarray, ee80: np.ndarray,
                       fwhm: np.ndarray, airy_ee80: Sequence[float], airy_fwhm: Sequence[float]) -> bytes:
    """Strehl ratio, 80 % encircled-energy radius (µm) and FWHM (µm) against depth per wavelength, with the
    diffraction-limited values (dashed)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
        x = diopters(depths)
        cols = line_colors(wavelengths)
        for j, lam in enumerate(wavelengths):
            lab = f"{lam * 1e9:.0f} nm"
            axes[0].plot(x, strehl[:, j], marker="o", color=cols[j], label=lab)
            axes[1].plot(x, ee80[:, j] * 1e6, marker="o", color=cols[j], label=lab)
            axes[1].axhline(airy_ee80[j] * 1e6, color=cols[j], ls="--", lw=0.8)
            axes[2].plot(x, fwhm[:, j] * 1e6, marker="o", color=cols[j], label=lab)
            axes[2].axhline(airy_fwhm[j] * 1e6, color=cols[j], ls="--", lw=0.8)
        axes[0].set_ylabel("Strehl ratio")
        axes[0].set_ylim(0, min(1.05, max(0.1, 1.15 * float(np.nanmax(strehl)))))
        axes[1].set_ylabel("80 % encircled-energy radius (µm)")
        axes[2].set_ylabel("FWHM (µm)")
        for ax, t in zip(axes, ("Strehl ratio", "80 % encircled energy (dashed: Airy)", "FWHM (dashed: Airy)"), strict=True):
            _depth_axes(ax, depths)
            ax.set_title(t, pad=8)
            ax.grid(alpha=0.3)
        for ax, v, ref in ((axes[1], ee80, airy_ee80), (axes[2], fwhm, airy_fwhm)):
            top = max(float(np.nanmax(v)) if np.isfinite(v).any() else 0.0, max(ref))
            ax.set_ylim(0, 1.15 * top * 1e6)
        axes[0].legend(loc="best")
        return to_png(fig)


def image_quality_figure(per_design: dict[str, list[dict]], depths: Sequence[float]) -> bytes:
    """PSNR (dB) and SSIM against depth for each design; `per_design[name]` is a summary.json `per_depth` list."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
        for k, (name, rows) in enumerate(per_design.items()):
            col = _design_color(name, k)
            z = [math.inf if r.get("depth_m") is None else float(r["depth_m"]) for r in rows]
            x = diopters(z)
            o = np.argsort(x)
            for ax, key in zip(axes, ("psnr_db", "ssim"), strict=True):
                y = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
                if np.all(np.isnan(y)):
                    continue
                ax.plot(x[o], y[o], marker="o", color=col, lw=2.0 if name == "design" else 1.4, label=name)
        axes[0].set_ylabel("PSNR (dB)")
        axes[1].set_ylabel("SSIM")
        for ax, t in zip(axes, ("reconstruction PSNR", "reconstruction SSIM"), strict=True):
            _depth_axes(ax, depths)
            ax.set_title(t, pad=8)
            ax.grid(alpha=0.3)
            ax.legend()
        return to_png(fig)


def display_rgb(img: np.ndarray, wavelengths: Sequence[float]) -> np.ndarray:
    """(H, W, C) linear channels (one per wavelength) → (H, W, 3) sRGB-like display image (gamma 1/2.2)."""
    a = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    if a.shape[-1] == 3 and len(wavelengths) == 3:
        rgb = a[..., np.argsort(wavelengths)[::-1]]  # longest wavelength → red
    elif a.shape[-1] == 1 or len(wavelengths) != a.shape[-1]:
        rgb = np.repeat(a.mean(-1, keepdims=True), 3, axis=-1)
    else:
        w = composite_channels(wavelengths)
        rgb = np.einsum("hwc,cr->hwr", a, w)
    return np.clip(rgb, 0, 1) ** (1 / 2.2)


def examples_figure(truth: np.ndarray, rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]],
                    depth_titles: Sequence[str], wavelengths: Sequence[float]) -> bytes:
    """Example images: the ground truth, then per design a row of (sensor image, reconstruction) per depth.

    `rows[k] = (name, [(sensor (H, W, C), recon (H, W, C), caption), ...])`, linear images in [0, 1], one
    channel per wavelength; shown with a display gamma of 2.2.
    """
    with plt.rc_context(STYLE):
        nd = len(depth_titles)
        ncol = 2 * nd
        nrow = len(rows)
        fig, axes = plt.subplots(nrow, ncol + 1, figsize=(2.05 * (ncol + 1), 2.3 * nrow + 0.4), squeeze=False,
                                 layout="constrained")

        def show(ax: plt.Axes, img: np.ndarray) -> None:
            ax.imshow(display_rgb(img, wavelengths), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])

        for r, (name, cells) in enumerate(rows):
            ax = axes[r, 0]
            if r == 0:
                show(ax, truth)
                ax.set_title("ground truth", fontsize=9)
            else:
                ax.axis("off")
            for k, (sensor, recon, caption) in enumerate(cells):
                a1, a2 = axes[r, 1 + 2 * k], axes[r, 2 + 2 * k]
                show(a1, sensor)
                show(a2, recon)
                a1.set_title(f"z = {depth_titles[k]}: sensor", fontsize=9)
                a2.set_title(f"reconstruction, {caption}", fontsize=9)
            axes[r, 1].set_ylabel(name, fontsize=10)
        fig.suptitle("sensor images and reconstructions (display gamma 2.2)")
        return to_png(fig)


def fabrication_figure(strehl_samples: np.ndarray, strehl_cont: float, strehl_quant: float,
                       psnr_samples: np.ndarray | None, psnr_cont: float | None, psnr_quant: float | None) -> bytes:
    """Spread of the as-built Strehl ratio (mean over depths and wavelengths) and PSNR over the Monte Carlo
    samples, with the continuous and quantized designs marked."""
    with plt.rc_context(STYLE):
        show_psnr = psnr_samples is not None and len(psnr_samples) > 0
        fig, axes = plt.subplots(1, 2 if show_psnr else 1, figsize=(12 if show_psnr else 6.5, 3.8), squeeze=False,
                                 layout="constrained")
        panels = [(axes[0, 0], strehl_samples, strehl_cont, strehl_quant, "Strehl ratio (mean over depths, wavelengths)")]
        if show_psnr:
            assert psnr_samples is not None
            panels.append((axes[0, 1], psnr_samples, psnr_cont, psnr_quant, "mean PSNR (dB)"))
        for ax, s, c, q, lab in panels:
            vals = [float(v) for v in (*s, c, q) if v is not None]
            lo, hi = min(vals), max(vals)
            pad = max(0.08 * (hi - lo), 1e-3 * max(abs(hi), 1e-9), 1e-6)
            s_lo, s_hi = float(np.min(s)), float(np.max(s))
            if s_hi - s_lo < 1e-12:
                s_lo, s_hi = s_lo - pad / 4, s_hi + pad / 4
            ax.hist(s, bins=max(4, min(12, len(s) // 2)), range=(s_lo, s_hi), color="#7f7f7f", alpha=0.7,
                    label=f"as built ({len(s)} samples)")
            ax.set_xlim(lo - pad, hi + pad)
            if c is not None:
                ax.axvline(c, color="#1f77b4", lw=2, label="continuous")
            if q is not None:
                ax.axvline(q, color="#d62728", lw=2, ls="--", label="quantized")
            ax.set_xlabel(lab)
            ax.set_ylabel("samples")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle("fabrication tolerance: Monte Carlo over etch depth, mask alignment and edge rounding")
        return to_png(fig)


def spectrum_figure(ch: object) -> bytes:
    """Broadband channels (`lensdesign.spectral.SpectralChannels`): each channel's sensitivity × illuminant curve
    (peak 1) against wavelength (nm), with its sampled wavelengths as stems of height weight × samples."""
    fig, ax = plt.subplots(figsize=(7.0, 3.2), layout="constrained")
    colours = {"red": "tab:red", "green": "tab:green", "blue": "tab:blue"}
    c_count = len(ch.labels)  # type: ignore[attr-defined]
    n = len(ch.wavelengths_m) // c_count  # type: ignore[attr-defined]
    for c, label in enumerate(ch.labels):  # type: ignore[attr-defined]
        col = colours.get(label, f"C{c}")
        ax.plot(ch.grid_nm, ch.curves[c], color=col, label=label)  # type: ignore[attr-defined]
        lam = np.asarray(ch.wavelengths_m[c * n:(c + 1) * n]) * 1e9  # type: ignore[attr-defined]
        w = ch.weights[c, c * n:(c + 1) * n] * n  # type: ignore[attr-defined]
        ax.vlines(lam, 0, w, colors=col, linestyles="dotted")
        ax.plot(lam, w, "o", color=col, ms=4)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("relative response / weight × samples")
    ax.set_title(f"{ch.source}: {n} wavelengths per channel", fontsize=9)  # type: ignore[attr-defined]
    ax.legend(fontsize=8)
    return to_png(fig)


def channel_psf_figure(psfs: np.ndarray, pitch: float, depths: Sequence[float], labels: Sequence[str],
                       mtf_depths: Sequence[float], mtf: np.ndarray, f0: float) -> bytes:
    """Broadband channel PSFs on the sensor grid per depth (rows) × channel (columns), square-root intensity over
    each panel's peak, and below the MTF at `f0` (cycles/mm) of each channel's PSF against depth.

    `psfs` (D, C, P, P) at `pitch` (m); `mtf` (len(mtf_depths), C)."""
    with plt.rc_context(STYLE):
        d, c, p, _ = psfs.shape
        ext = [-p / 2 * pitch * 1e6, p / 2 * pitch * 1e6] * 2
        fig, axes = plt.subplots(d + 1, c, figsize=(2.6 * c + 0.6, 2.3 * (d + 1)), squeeze=False, layout="constrained")
        for i in range(d):
            for j in range(c):
                ax = axes[i, j]
                ax.imshow(np.sqrt(psfs[i, j] / max(float(psfs[i, j].max()), 1e-30)), extent=ext, origin="lower",
                          cmap="inferno", interpolation="nearest")
                if i == 0:
                    ax.set_title(f"{labels[j]} channel")
                if j == 0:
                    ax.set_ylabel(f"z = {depth_label(depths[i])}\ny (µm)")
                ax.tick_params(labelsize=7)
        gs = axes[d, 0].get_gridspec()
        for ax in axes[d]:
            ax.remove()
        ax = fig.add_subplot(gs[d, :])
        x = [float(scene_diopters(z)) for z in mtf_depths]
        for j in range(c):
            ax.plot(x, mtf[:, j], "o-", ms=3, label=labels[j], color={"red": "tab:red", "green": "tab:green",
                                                                       "blue": "tab:blue"}.get(labels[j], f"C{j}"))
        ax.set_xlabel("object vergence (diopters)")
        ax.set_ylabel(f"MTF at {f0:.3g} cyc/mm")
        ax.legend(fontsize=8)
        fig.suptitle("Broadband channel PSFs (√ intensity / peak) and through-depth MTF per channel")
        return to_png(fig)

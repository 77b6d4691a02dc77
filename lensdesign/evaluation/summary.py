"""The end-of-run comparison (RUN/summary.json): the design against the Fresnel lens and, for edof / focus, a
cubic phase plate of tuned strength, for superres bicubic upsampling of the Fresnel lens's sensor image; each
lens continuous and quantized to `fabrication.levels`, each with its own tuned γ. A refractive or hybrid design
is quantized like its continuous process (grey / print steps over the sag, no wrap); the baselines keep their own
fabrication: diffractive reliefs of one wave in `BASELINE_LEVELS` levels (the spec's levels for a diffractive spec).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lensdesign.evaluation.scoring import Evaluator, as_height, learned_recon
from lensdesign.evaluation.tuning import tune_cubic
from lensdesign.imaging.reconstruct import WienerReconstruction
from lensdesign.imaging.sensor import eval_read_noise
from lensdesign.spec import Spec
from lensdesign.units import defocus_waves

BASELINE_LEVELS = 16  # levels of the baselines' multilevel relief when the spec's element is not diffractive


def _depth(z: float) -> float | None:
    return None if math.isinf(z) else z


def _baselines(ev: Evaluator, design: dict[str, Any], q: Callable[[torch.Tensor], torch.Tensor], seed: int,
               log: Callable[[str], None] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """(baselines, gains in dB) of summary.json: the Fresnel lens, the diffractive achromat (ring designs on the
    1-D path, edof / focus), then bicubic (superres) or a tuned cubic plate."""
    from lensdesign.baselines import cubic_height, fresnel_height

    spec = ev.spec
    n = ev.pipe.optics.grid.n
    fz = _depth(spec.focus_depth_m)
    # on the 1-D path the Fresnel lens is a ring design too (each ring at its centre's phase)
    fh = (ev.pipe.optics.lens_map() if ev.pipe.radial else fresnel_height(spec, n)).float()  # type: ignore[union-attr]
    fresnel = ev.evaluate_height(fh, seed=seed)
    fresnel["quantized"] = ev.evaluate_height(q(fh), seed=seed)
    fresnel["focus_depth_m"] = fz
    fresnel["reconstruction"] = "wiener"
    baselines: dict[str, Any] = {"fresnel": fresnel}
    gains = {"vs_fresnel": round(design["mean_psnr_db"] - fresnel["mean_psnr_db"], 4)}
    if ev.pipe.radial and spec.task in ("edof", "focus"):  # ring designs: the achromat costs little on the 1-D path
        from lensdesign.achromat import ACHROMAT_STEPS, achromat_design

        ah = achromat_design(spec, ev.device, log=log)[0]
        achromat = ev.evaluate_height(ah, seed=seed)
        achromat["quantized"] = ev.evaluate_height(q(ah), seed=seed)
        achromat.update(focus_depth_m=fz, reconstruction="wiener", steps=ACHROMAT_STEPS)
        baselines["achromat"] = achromat
        gains["vs_achromat"] = round(design["mean_psnr_db"] - achromat["mean_psnr_db"], 4)
    if spec.task == "superres":
        with ev.threads():
            bicubic = ev.bench(fh, seed).report(None, upsampled=True)
        bicubic["reconstruction"] = "bicubic upsampling of the Fresnel lens's sensor image"
        bicubic["focus_depth_m"] = fz
        baselines["bicubic"] = bicubic
        gains["vs_bicubic"] = round(design["mean_psnr_db"] - bicubic["mean_psnr_db"], 4)
    else:
        grid = ev.on_grid()  # a cubic plate is not a ring design: the 2-D path
        alpha, _ = tune_cubic(grid, n, seed, log)
        ch = cubic_height(spec, n, alpha).float()
        cubic = grid.evaluate_height(ch, seed=seed)
        cubic["quantized"] = grid.evaluate_height(q(ch), seed=seed)
        cubic["strength_waves"] = round(alpha, 4)
        cubic["focus_depth_m"] = fz
        baselines["cubic"] = cubic
        gains["vs_cubic"] = round(design["mean_psnr_db"] - cubic["mean_psnr_db"], 4)
    return baselines, gains


def _evaluation(ev: Evaluator, seed: int, net: WienerReconstruction | None) -> dict[str, Any]:
    """summary.json's `evaluation`: images, noise, levels, defocus, depths and how each lens was reconstructed."""
    spec = ev.spec
    k = spec.sensor.superres_factor
    how = ("Wiener (learned γ) + U-Net for the design; Wiener with γ tuned per lens for the baselines" if net is not None
           else "Wiener, γ tuned per design (golden section)")
    if spec.task == "superres":
        how += f"; sensor images upsampled ×{k} (bicubic) and deconvolved with the PSF ⊛ pixel box ⊛ upsampling kernel"
    return {"images": int(ev.validation_set(seed=seed).shape[0]), "image_size": [r * k for r in spec.sensor.resolution],
            "sensor_size": list(spec.sensor.resolution), "superres_factor": k,
            "read_noise": eval_read_noise(spec.sensor.read_noise), "full_well": spec.sensor.full_well,
            "bit_depth": spec.sensor.bit_depth, "levels": spec.fabrication.levels, "seed": seed,
            "defocus_w020_waves": round(defocus_waves(spec), 4),
            "depths_m": [_depth(z) for z in ev.pipe.task.eval_depths()],
            "reconstruction": how, "design_reconstruction": "wiener" if net is None else net.kind}


def summarize(spec: Spec, height_m: Any, learned_gamma: list[float] | None = None, device: torch.device | str = "cpu",
              seed: int = 0, log: Callable[[str], None] | None = None,
              recon: WienerReconstruction | None = None) -> dict[str, Any]:
    """Design vs baselines on held-out images at every evaluation depth, continuous and quantized to
    `fabrication.levels` — the content of RUN/summary.json (height map (N, N) in metres).

    The design uses its Wiener filter with a tuned γ, or, with a U-Net `recon`, the learned reconstruction (its
    learned γ and U-Net; the Wiener-only figure with a tuned γ is kept under `wiener_only`). Baselines, each with
    its own tuned γ: the Fresnel lens (Wiener filter, no U-Net: a U-Net trained for the Fresnel lens would cost
    another training run); edof / focus: a cubic phase plate of tuned strength; superres: bicubic upsampling of
    the Fresnel lens's sensor image (no deconvolution).
    """
    from lensdesign.fabrication.quantize import quantize

    ev = Evaluator(spec, device)
    mh, levels = spec.max_height_m, spec.fabrication.levels
    h = as_height(height_m, torch.device("cpu"))
    net = learned_recon(recon)
    wrap = spec.optics.element == "diffractive"
    bh, blevels = (mh, levels) if wrap else (spec.wave_height_m, BASELINE_LEVELS)

    def q(x: torch.Tensor) -> torch.Tensor:
        return quantize(x.float(), mh, levels, wrap)  # type: ignore[return-value]

    def qb(x: torch.Tensor) -> torch.Tensor:
        return quantize(x.float(), bh, blevels)  # type: ignore[return-value]

    design = ev.evaluate_height(h, seed=seed, recon=net)
    if net is not None:
        w = ev.evaluate_height(h, seed=seed)
        design["wiener_only"] = {k: w[k] for k in ("mean_psnr_db", "mean_ssim", "worst_psnr_db", "gamma")}
    elif learned_gamma is not None:
        design["learned_gamma"] = learned_gamma
        with ev.threads():
            per = ev.bench(h, seed).psnr_per_depth(torch.as_tensor(learned_gamma, device=ev.pipe.device))
        design["mean_psnr_db_learned_gamma"] = round(float(np.mean(per)), 4)
    design_q = ev.evaluate_height(q(h), seed=seed, recon=net)
    baselines, gains = _baselines(ev, design, qb, seed, log)
    gains["quantization_loss"] = round(design["mean_psnr_db"] - design_q["mean_psnr_db"], 4)
    return {"design": design, "design_quantized": design_q, "baselines": baselines, "gain_db": gains,
            "evaluation": _evaluation(ev, seed, net)}

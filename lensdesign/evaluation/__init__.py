"""Held-out evaluation of height maps, split by job:

* `scoring`: `Evaluator(spec, device)` — the scoring bench (validation scenes, PSNR / SSIM per depth, tuned or
  learned γ, example images); no module-level state.
* `tuning`: golden-section search (γ) and the cubic phase plate's strength.
* `summary`: `summarize`, the content of RUN/summary.json (design vs baselines, continuous and quantized).

The simulate command's picture I/O lives in `lensdesign.simulate`. The names below are the package's public API.
"""

from lensdesign.evaluation.scoring import (
    Bench,
    Evaluator,
    evaluate_height,
    scene_shape,
    simulate_examples,
    single_thread,
    validation_set,
)
from lensdesign.evaluation.summary import summarize
from lensdesign.evaluation.tuning import golden_max, tune_cubic
from lensdesign.rundir import load_reconstruction

__all__ = ["Bench", "Evaluator", "evaluate_height", "golden_max", "load_reconstruction", "scene_shape",
           "simulate_examples", "single_thread", "summarize", "tune_cubic", "validation_set"]

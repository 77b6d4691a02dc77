"""Self-healing training: a step whose loss or gradient is not finite is undone.

The trainer's state (parameters, Adam moments) is copied in memory every `SNAPSHOT_EVERY` good steps. A step with
a non-finite loss or gradient rolls the model and the optimizer back to that copy, multiplies the learning rates
by `LR_CUT` for the rest of the run, records `{"event": "rollback", ...}` in metrics.jsonl, prints a line and
continues from the copy's step. After `MAX_ROLLBACKS` rollbacks in a row (none of them got past the failing
step) the run stops with one line; the last checkpoint on disk, always written from a good state, is kept.

Testing hook: `LENSDESIGN_INJECT_NAN_STEP=K` makes the loss of step K NaN the first time step K runs
(`K:N`: the first N times; several entries separated by commas).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lensdesign.errors import LensdesignError
from lensdesign.rundir import METRICS, RunDir

if TYPE_CHECKING:
    from lensdesign.optimize import StepResult, Trainer

SNAPSHOT_EVERY = 10
MAX_ROLLBACKS = 3
LR_CUT = 0.5
INJECT_ENV = "LENSDESIGN_INJECT_NAN_STEP"


def nan_injections() -> dict[int, int]:
    """{step: how many times to make its loss NaN} from LENSDESIGN_INJECT_NAN_STEP (testing hook); {} when unset."""
    raw = os.environ.get(INJECT_ENV, "").strip()
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        step, _, times = part.partition(":")
        try:
            out[int(step)] = int(times or 1)
        except ValueError:
            raise LensdesignError(f"{INJECT_ENV}: {part!r} is not STEP or STEP:TIMES, e.g. 7 or 7:5") from None
    return out


class Healer:
    """Keeps the last good state of `trainer` and rolls back to it when a step goes non-finite."""

    def __init__(self, trainer: Trainer, run: RunDir, step: int, write: bool, log: Callable[[str], None]) -> None:
        self.trainer, self.run, self.write, self.log = trainer, run, write, log
        self.snap: Any = trainer.snapshot()
        self.snap_step = step
        self.in_row = 0
        self.failed_at = -1

    def good(self, done: int) -> None:
        """After a good step: `done` steps are done; every SNAPSHOT_EVERY steps keep a copy."""
        if done > self.failed_at:
            self.in_row = 0
        if done % SNAPSHOT_EVERY == 0:
            self.snap, self.snap_step = self.trainer.snapshot(), done

    def rollback(self, r: StepResult) -> int:
        """Undo the failed step `r`: restore the last good copy, cut the learning rate, record the event. Returns
        the step to continue from; raises LensdesignError after MAX_ROLLBACKS rollbacks in a row."""
        from lensdesign.optimize import _truncate_metrics

        t = self.trainer
        what = "gradient" if math.isfinite(r.loss) else "loss"
        self.in_row += 1
        self.failed_at = max(self.failed_at, r.step)
        t.restore(self.snap)
        if self.in_row > MAX_ROLLBACKS:
            lr = t.spec.training.learning_rate
            raise LensdesignError(
                f"step {r.step}: the {what} is still not finite after {MAX_ROLLBACKS} rollbacks to step {self.snap_step} "
                f"(each halving the learning rate); lower training.learning_rate (now {lr:g}, e.g. to {lr * LR_CUT:g}) "
                f"and start again with --force; the last good checkpoint is kept in {self.run.path}")
        t.lr_scale *= LR_CUT
        if self.write:
            _truncate_metrics(self.run / METRICS, self.snap_step)
            self.run.append_metrics({"event": "rollback", "step": r.step, "to_step": self.snap_step,
                                     "reason": f"non-finite {what}", "lr_scale": t.lr_scale,
                                     "rollbacks_in_row": self.in_row})
        self.log(f"step {r.step}: non-finite {what}; rolled back to step {self.snap_step}, learning rate ×{t.lr_scale:g} "
                 f"(rollback {self.in_row} of at most {MAX_ROLLBACKS} in a row)")
        return self.snap_step

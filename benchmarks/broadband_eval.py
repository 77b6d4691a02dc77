"""Evaluate designs broadband and on three lines: held-out PSNR / SSIM with a tuned Wiener γ per evaluation spec.

    .venv/bin/python -m benchmarks.broadband_eval RUN [RUN ...] --specs specs/edof-broadband-demo.yaml specs/edof-demo.yaml

Prints one row per (run, spec): mean PSNR (dB), mean SSIM, PSNR per depth. The designs are scored as trained
(continuous heights) with γ tuned for each evaluation spec, as the summary's baselines are.
"""

from __future__ import annotations

import argparse
import json

import torch

from lensdesign.evaluation.scoring import Evaluator
from lensdesign.rundir import RunDir
from lensdesign.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--specs", nargs="+", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for sp in a.specs:
        spec = load_spec(sp)
        ev = Evaluator(spec, "cpu")
        for r in a.runs:
            design = RunDir(r).require().load_design()
            out = ev.evaluate_height(torch.from_numpy(design.height_m))
            row = {"run": r, "spec": sp, "psnr_db": round(out["mean_psnr_db"], 2), "ssim": round(out["mean_ssim"], 3),
                   "per_depth_db": [round(d["psnr_db"], 2) for d in out["per_depth"]]}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

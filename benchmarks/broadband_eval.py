"""Evaluate designs broadband and on three lines: held-out PSNR / SSIM with a tuned Wiener γ per evaluation spec.

    .venv/bin/python -m benchmarks.broadband_eval RUN [RUN ...] --specs specs/edof-broadband-demo.yaml specs/edof-demo.yaml

Prints one row per (run, spec): mean PSNR (dB), mean SSIM, PSNR per depth. The designs are scored as trained
(continuous heights) with γ tuned for each evaluation spec, as the summary's baselines are.

A design trained from several seeds is one argument LABEL=RUN,RUN,...: its runs are scored one by one, then a
row per spec gives the mean over its runs (PSNR per run listed); with two or more labels, a last row per spec
gives the first label's mean minus each other label's:

    .venv/bin/python -m benchmarks.broadband_eval broadband=runs/bb-seed0,runs/bb-seed1 3line=runs/3l-seed0,runs/3l-seed1 \\
        --specs specs/edof-broadband-radial.yaml specs/edof-3line-radial.yaml
"""

from __future__ import annotations

import argparse
import json

import torch

from lensdesign.evaluation.scoring import Evaluator
from lensdesign.rundir import RunDir
from lensdesign.spec import load_spec


def parse_designs(args: list[str]) -> dict[str, list[str]]:
    """{label: runs}: LABEL=RUN,RUN,... or a plain RUN (its own label)."""
    out: dict[str, list[str]] = {}
    for a in args:
        label, _, runs = a.partition("=") if "=" in a else (a, "", a)
        out[label] = [r for r in runs.split(",") if r]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RUN, or LABEL=RUN,RUN,... for a design trained from several seeds")
    ap.add_argument("--specs", nargs="+", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    designs = parse_designs(a.runs)
    for sp in a.specs:
        spec = load_spec(sp)
        ev = Evaluator(spec, "cpu")
        means = {}
        for label, runs in designs.items():
            psnr = []
            for r in runs:
                design = RunDir(r).require().load_design()
                out = ev.evaluate_height(torch.from_numpy(design.height_m))
                row = {"run": r, "spec": sp, "psnr_db": round(out["mean_psnr_db"], 2), "ssim": round(out["mean_ssim"], 3),
                       "per_depth_db": [round(d["psnr_db"], 2) for d in out["per_depth"]]}
                psnr.append(out["mean_psnr_db"])
                print(json.dumps(row), flush=True)
            means[label] = sum(psnr) / len(psnr)
            if len(runs) > 1:
                print(json.dumps({"design": label, "spec": sp, "runs": len(runs), "mean_psnr_db": round(means[label], 3),
                                  "psnr_db": [round(p, 2) for p in psnr]}), flush=True)
        first, *others = means
        if others:
            print(json.dumps({"spec": sp, "margin_db": {f"{first} - {o}": round(means[first] - means[o], 3)
                                                         for o in others}}), flush=True)


if __name__ == "__main__":
    main()

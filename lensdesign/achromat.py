"""The diffractive achromat baseline (Peng et al., "The diffractive achromat", SIGGRAPH Asia 2016; the third row of
Sitzmann et al. 2018, Table 1): a ring design optimized to focus every spec wavelength at the focus depth.

It is the `focus` task trained on the 1-D (Hankel) path: the spec's optics, wavelengths, sensor, noise and
fabrication, a diffractive relief of radial rings (ring width from `fabrication.min_feature`), one depth (the focus
depth), `ACHROMAT_STEPS` steps from the spec's seed. Heights are metres on the spec's element grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import yaml

from lensdesign.errors import LensdesignError
from lensdesign.spec import Spec, parse_spec

ACHROMAT_STEPS = 300


def achromat_spec(spec: Spec, steps: int = ACHROMAT_STEPS) -> Spec:
    """The training spec of `spec`'s diffractive achromat: task focus at the focus depth, radial diffractive rings
    on the 1-D path, `steps` steps; the rest of `spec` unchanged."""
    if spec.sensor.superres_factor != 1:
        raise LensdesignError("baseline --kind achromat: a super-resolution spec has no focusing baseline; use fresnel")
    data = yaml.safe_load(spec.to_yaml())
    z = spec.focus_depth_m
    data["name"] = f"{spec.name}-achromat"
    data["task"] = "focus"
    o = data["optics"]
    o.update(parameterization="radial", propagator="auto", element="diffractive")
    if spec.optics.element != "diffractive":
        o["max_height"] = "auto"  # one wave: the achromat is a diffractive relief whatever the spec's element
    data["scene"]["depths"] = ["inf" if math.isinf(z) else z]
    data["scene"]["focus_depth"] = "inf" if math.isinf(z) else z
    data["training"]["steps"] = steps
    data["training"].pop("max_minutes", None)
    data["fabrication"].pop("sag_error", None)
    return parse_spec(data, source="achromat spec")


def achromat_design(spec: Spec, device: torch.device | str = "cpu", steps: int = ACHROMAT_STEPS,
                    log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(height map (N, N) float32, ring heights (J,) float32, ring width) in metres of the spec's achromat."""
    from lensdesign.optimize import Trainer

    s = achromat_spec(spec, steps)
    trainer = Trainer(s, device)
    if log:
        log(f"  diffractive achromat: {steps} steps of the focus task at {s.focus_depth_m:g} m on the 1-D path")
    for k in range(steps):
        trainer.train_step(k)
    with torch.no_grad():
        h = trainer.model.height().detach().float().cpu()
    surface: Any = trainer.model.surface
    return h, surface.ring_heights().float().cpu(), float(surface.ring_width)

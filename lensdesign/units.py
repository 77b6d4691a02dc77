"""Small shared conversions: the defocus W020 of a spec's depth range and plain-JSON values.

`defocus_w020_m` is the one place the defocus formula lives (used by `check`, the cubic baseline's default
strength, baseline tuning and summary.json); `json_safe` the one converter to strict JSON (used by the report,
export's rules.json and the simulate command's metrics).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lensdesign.spec import Spec


def defocus_w020_m(spec: Spec) -> float:
    """Largest defocus W020 = (D/2)²·ΔΦ/2 (m of optical path at the aperture edge) over the spec's depth range,
    for a lens focused at the focus depth; ΔΦ the vergence difference in diopters (1/m)."""
    a, b = spec.diopter_range
    pf = 0.0 if math.isinf(spec.focus_depth_m) else 1.0 / spec.focus_depth_m
    return (spec.optics.aperture / 2) ** 2 * max(abs(a - pf), abs(b - pf)) / 2


def defocus_waves(spec: Spec) -> float:
    """`defocus_w020_m` in waves of the design wavelength."""
    return defocus_w020_m(spec) / spec.design_wavelength_m


def channel_focus_spread(spec: Spec) -> list[float] | None:
    """RMS spread σ (D, 1/m) of the element's focal power over each broadband channel's sampled wavelengths (their
    weighted standard deviation), with P(λ) = P0·g(λ)/ḡ, g = λ for a diffractive element (first order) and n(λ) − 1
    for a refractive one, ḡ its weighted mean over the channel and P0 = 1/z_sensor + 1/z_focus: the object vergence
    over which a channel's light is in focus. None for one line per channel or a hybrid element."""
    ch = spec.spectral
    if ch is None or spec.optics.element == "hybrid":
        return None
    from lensdesign.materials import refractive_index

    pf = 0.0 if math.isinf(spec.focus_depth_m) else 1.0 / spec.focus_depth_m
    p0 = 1.0 / spec.optics.sensor_distance + pf
    lam = np.asarray(ch.wavelengths_m)
    power = lam if spec.optics.element == "diffractive" else np.array(
        [refractive_index(spec.optics.material, w) - 1.0 for w in lam])  # ∝ P(λ), up to the channel's scale
    mean = ch.weights @ power
    return [float(p0 * np.sqrt(ch.weights[c] @ (power - mean[c]) ** 2) / mean[c]) for c in range(len(mean))]


def json_safe(obj: Any) -> Any:
    """Plain JSON: numpy scalars / arrays to Python, tuples to lists, non-finite floats (inf depth, NaN) to null."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

"""Refractive-index dispersion of common DOE materials; n(λ) with λ in metres."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _sellmeier(b: tuple[float, ...], c_um2: tuple[float, ...]) -> Callable[[float], float]:
    """Sellmeier n(λ) with coefficients B_i and C_i in µm²."""

    def n(wavelength_m: float) -> float:
        l2 = (wavelength_m * 1e6) ** 2
        return math.sqrt(1.0 + sum(bi * l2 / (l2 - ci) for bi, ci in zip(b, c_um2, strict=True)))

    return n


def _cauchy(a: float, b_um2: float, c_um4: float) -> Callable[[float], float]:
    """Cauchy n(λ) = A + B/λ² + C/λ⁴ with λ in µm."""

    def n(wavelength_m: float) -> float:
        lu = wavelength_m * 1e6
        return a + b_um2 / lu**2 + c_um4 / lu**4

    return n


MATERIALS: dict[str, Callable[[float], float]] = {
    # Malitson, JOSA 55, 1205 (1965)
    "fused_silica": _sellmeier((0.6961663, 0.4079426, 0.8974794), (0.0684043**2, 0.1162414**2, 9.896161**2)),
    # Sultanova et al., Acta Phys. Pol. A 116, 585 (2009)
    "pmma": _sellmeier((1.1819,), (0.011313,)),
    "polycarbonate": _sellmeier((1.4182,), (0.021304,)),
    # Norland NOA61 UV-curable adhesive (manufacturer's Cauchy fit)
    "noa61": _cauchy(1.5375, 8290.45e-6, -2.11046e8 * 1e-12),
    # IP-Dip two-photon resist, polymerized (Gissibl et al., Opt. Mater. Express 7, 2293, 2017)
    "ip_dip": _cauchy(1.5273, 6.5456e-3, 2.5345e-4),
}


def refractive_index(material: Any, wavelength_m: float, index_in_list: int = 0) -> float:
    """n of `material` (a name from MATERIALS or an object with `.index` per wavelength) at `wavelength_m`."""
    if isinstance(material, str):
        return MATERIALS[material](wavelength_m)
    return float(material.index[index_in_list])

"""Hyperspectral scenes: a reflectance cube R(λ, y, x) imaged wavelength by wavelength.

A cube file is a NumPy `.npz` with `cube` (L, H, W) float, reflectance relative to the illuminant (0 … ~1, 1 = a
white that reflects the illuminant unchanged), and `wavelengths_nm` (L,) increasing. The scene at each simulated
wavelength λ_i is R interpolated linearly in λ (the cube must cover every simulated wavelength); each wavelength
is blurred by its own PSF and a channel's irradiance is Σ_i w_ci PSF_i ⊛ R(λ_i), with the channel weights w_ci
of `spec.spectrum` (they hold sensitivity × illuminant) or one line per channel (w = identity). The sharp image
a perfect lens would give, Σ_i w_ci R(λ_i), is the reference the reconstruction is scored against.

`colorchecker` is a bundled hyperspectral scene: the 24 patches of the ColorChecker with the reflectances
colour-science ships (`ColorChecker N Ohta`, 380–780 nm every 5 nm), 4 rows × 6 columns on a black surround.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensdesign.errors import LensdesignError

COLORCHECKER = "colorchecker"


def colorchecker_cube(patch: int = 24, gap: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(cube (L, H, W) float32 reflectance, wavelengths (L,) m) of the ColorChecker chart: `patch` × `patch`
    pixel patches, `gap` pixels of black (reflectance 0.03) between and around them."""
    import colour

    sds = colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"]
    names = list(sds.keys())
    wl = np.asarray(sds[names[0]].wavelengths, dtype=np.float64)
    h, w = 4 * patch + 5 * gap, 6 * patch + 7 * gap
    cube = np.full((len(wl), h, w), 0.03, dtype=np.float32)
    for k, name in enumerate(names):
        r, c = divmod(k, 6)
        y0, x0 = gap + r * (patch + gap), gap + c * (patch + gap)
        cube[:, y0:y0 + patch, x0:x0 + patch] = np.asarray(sds[name].values, dtype=np.float32)[:, None, None]
    return cube, wl * 1e-9


def is_cube(path: str | Path) -> bool:
    """Whether `--image` names a hyperspectral scene (`colorchecker` or an .npz cube) rather than a picture."""
    return str(path) == COLORCHECKER or Path(path).suffix.lower() == ".npz"


def read_cube(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(cube (L, H, W) float64, wavelengths (L,) m) of `colorchecker` or an .npz cube file. Raises
    LensdesignError (one line naming the problem and the fix)."""
    if str(path) == COLORCHECKER:
        cube, wl = colorchecker_cube()
        return cube.astype(np.float64), wl
    p = Path(path)
    where = f"--image: {p.name}"
    if not p.is_file():
        raise LensdesignError(f"--image: {p}: no such file; give an .npz with cube (L, H, W) and wavelengths_nm (L,)")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "cube" not in z or "wavelengths_nm" not in z:
                raise LensdesignError(f"{where}: needs arrays 'cube' (L, H, W) and 'wavelengths_nm' (L,); it holds "
                                      f"{sorted(z.keys())}")
            cube, wl = np.asarray(z["cube"]), np.asarray(z["wavelengths_nm"])
    except LensdesignError:
        raise
    except Exception as e:
        raise LensdesignError(f"{where}: not a readable .npz ({e.__class__.__name__}); save it with numpy.savez") from None
    for name, a in (("cube", cube), ("wavelengths_nm", wl)):
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise LensdesignError(f"{where}: {name} has dtype {a.dtype}; give real numbers")
    cube, wl = cube.astype(np.float64), wl.astype(np.float64)
    if cube.ndim != 3 or wl.ndim != 1 or wl.shape[0] != cube.shape[0] or wl.shape[0] < 2:
        raise LensdesignError(f"{where}: cube {cube.shape} and wavelengths_nm {wl.shape} must be (L, H, W) and (L,) "
                              "with L ≥ 2 bands")
    if min(cube.shape[1:]) < 8:
        raise LensdesignError(f"{where}: the cube is {cube.shape[2]} × {cube.shape[1]} pixels; give at least 8 × 8")
    if not (np.isfinite(cube).all() and np.isfinite(wl).all()):
        raise LensdesignError(f"{where}: holds non-finite values (NaN or inf); give finite numbers")
    if (cube < 0).any():
        raise LensdesignError(f"{where}: cube holds negative values; give reflectances ≥ 0")
    if (np.diff(wl) <= 0).any() or wl[0] < 100 or wl[-1] > 20000:
        raise LensdesignError(f"{where}: wavelengths_nm must increase and lie in 100 … 20000 nm")
    return cube, wl * 1e-9


def sample_cube(cube: np.ndarray, wl_m: np.ndarray, at_m: list[float], name: str = "cube") -> np.ndarray:
    """The cube (L, H, W) at wavelengths `at_m` (m), linear in λ → (W, H, W) float32; refuses wavelengths outside
    the cube's bands."""
    lo, hi = float(min(at_m)), float(max(at_m))
    tol = 1e-12
    if lo < wl_m[0] - tol or hi > wl_m[-1] + tol:
        raise LensdesignError(f"--image: {name} covers {wl_m[0] * 1e9:.1f}–{wl_m[-1] * 1e9:.1f} nm but the run "
                              f"simulates {lo * 1e9:.1f}–{hi * 1e9:.1f} nm; give bands that cover them")
    idx = np.clip(np.searchsorted(wl_m, at_m, side="right") - 1, 0, len(wl_m) - 2)
    t = (np.asarray(at_m) - wl_m[idx]) / (wl_m[idx + 1] - wl_m[idx])
    out = cube[idx] * (1 - t)[:, None, None] + cube[idx + 1] * t[:, None, None]
    return out.astype(np.float32)


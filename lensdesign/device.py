"""Device choice, made once: `auto` = CUDA when present, else CPU."""

from __future__ import annotations

import torch

from lensdesign.errors import LensdesignError


def pick_device(name: str = "auto") -> torch.device:
    """torch.device for 'auto' | 'cpu' | 'cuda' (error if CUDA is asked for and absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LensdesignError("training.device / --device: cuda requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)

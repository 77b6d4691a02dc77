"""lensdesign: end-to-end design of diffractive optical elements, from spec to fabrication files."""

__version__ = "0.1.0"

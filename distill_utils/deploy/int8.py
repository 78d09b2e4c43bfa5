"""The int8 arithmetic notebook 09 teaches by hand, as onnxruntime does it.

A tensor ``x`` is stored as ``q = clip(round(x / scale) + zero_point)`` with one ``scale``
(float) and ``zero_point`` (integer) per tensor, or per output channel for weights;
``x ~ (q - zero_point) * scale``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["int8_params", "quantize_tensor"]


def int8_params(lo: float, hi: float, signed: bool = False) -> tuple[float, int]:
    """``(scale, zero_point)`` mapping the float range [lo, hi] (widened to include 0) onto
    uint8 (0..255), as onnxruntime's MinMax calibration does for activations; or, ``signed``,
    symmetrically onto -127..127 with zero point 0, as it does for weights (scale = max|x| / 127)
    (notebook 09)."""
    qmin, qmax = (-127, 127) if signed else (0, 255)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if signed:  # symmetric: zero_point 0, the range +-max|x|
        hi = max(abs(lo), abs(hi))
        lo = -hi
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zero_point = 0 if signed else int(round(qmin - lo / scale))
    return float(np.float32(scale)), int(np.clip(zero_point, qmin, qmax))


def quantize_tensor(x, scale: float, zero_point: int, signed: bool = False) -> np.ndarray:
    """``clip(round(x / scale) + zero_point)`` as int8/uint8 (round half to even, as ONNX does) (notebook 09)."""
    qmin, qmax, dtype = (-128, 127, np.int8) if signed else (0, 255, np.uint8)
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax).astype(dtype)

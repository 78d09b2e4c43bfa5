"""Checks for notebook 09: the uint8 scale and zero point of a float range, and fake quantization.

``check_scale_zero_point`` compares with ``distill_utils.deploy.int8_params`` on ranges that
include 0, ranges entirely above or below 0 (the range is widened to include 0, so that 0.0 is
exact) and an all-zero tensor (lo = hi = 0). ``check_fake_quantize`` compares the round trip
float -> uint8 -> float with ``deploy.quantize_tensor`` on values inside the range (none of them on
a rounding tie), outside it (they saturate) and 0.0 itself.
"""
from __future__ import annotations

import torch

from distill_utils.deploy.int8 import int8_params, quantize_tensor
from distill_utils.exercises.core import Case, Exercise, Invalid, Mistake, as_float, call, check, close

__all__ = ["check_scale_zero_point", "check_fake_quantize"]


# ---------------------------------------------------------------- scale and zero point

def _pair(fn, args):
    out = call(fn, args)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return Invalid(f"it returned {type(out).__name__}: return two values, (scale, zero_point)")
    scale, zero_point = as_float(out[0]), as_float(out[1])
    return next((v for v in (scale, zero_point) if isinstance(v, Invalid)), (scale, zero_point))


def _compare_pairs(got, expected):
    (scale, zero_point), (want_scale, want_zero) = got, expected
    if abs(scale - want_scale) <= 1e-5 * abs(want_scale) and zero_point == want_zero:
        return None
    if scale != scale or abs(scale - want_scale) > 1e-5 * abs(want_scale):  # scale != scale: NaN
        return f"scale {scale:.6g}, expected {want_scale:.6g}"
    if not float(zero_point).is_integer():
        return f"zero point {zero_point:.6g} is not an integer: round it (zero point not rounded)"
    if not 0 <= zero_point <= 255:
        return f"zero point {zero_point:.0f} is outside 0..255 (zero point not clamped; widen the range to include 0)"
    return f"zero point {zero_point:.0f}, expected {want_zero:.0f}"


def _params(widen=True, levels=255, rounded=True, sign=-1):
    """Scale and zero point as the mistakes compute them."""
    def params(lo, hi):
        if widen:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / levels
        zero_point = sign * lo / scale
        return scale, round(zero_point) if rounded else zero_point
    return params


SCALE_ZERO_POINT = Exercise(
    "scale_zero_point", int8_params, _compare_pairs, run=_pair, against="distill_utils.deploy.int8_params",
    cases=lambda: (
        Case("the range [-1, 3]", (-1.0, 3.0)),
        Case("[-6.2, 0.5]", (-6.2, 0.5)),
        Case("[0.5, 4] (above 0: widen to [0, 4])", (0.5, 4.0)),
        Case("[-3, -0.5] (below 0: widen to [-3, 0])", (-3.0, -0.5)),
        Case("[-2.5, 2.5]", (-2.5, 2.5)),
        Case("an all-zero tensor, [0, 0]", (0.0, 0.0))),
    mistakes=(
        Mistake("no widening", "the range must include 0.0, so that zero (padding, ReLU outputs) is exact: widen "
                               "lo to min(lo, 0) and hi to max(hi, 0) first", _params(widen=False)),
        Mistake("256", "256 levels are 255 steps: scale = (hi - lo) / 255", _params(levels=256)),
        Mistake("not rounded", "zero point not rounded: it is an integer, round(-lo / scale)", _params(rounded=False)),
        Mistake("sign", "the zero point has the wrong sign: it is the integer that stands for 0.0, -lo / scale",
                _params(sign=1)),
        Mistake("zero range", "an all-zero tensor (lo = hi = 0) gives scale 0 and divides by zero: use scale 1.0 "
                              "and zero point 0 there (the package's choice)", _params()),
    ))


def check_scale_zero_point(fn):
    """Check ``fn(lo, hi)``: the uint8 ``(scale, zero_point)`` of the float range [lo, hi] (notebook 09)."""
    return check(SCALE_ZERO_POINT, fn)


# ---------------------------------------------------------------- fake quantization

def _values(lo: float, hi: float, seed: int) -> tuple:
    """Values across [lo, hi] and beyond, each 0.2 to 0.45 of a step away from a rounding tie, with 0.0."""
    scale, zero_point = int8_params(lo, hi)
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(-20, 276, (64,), generator=g).float()
    frac = torch.rand(64, generator=g) * 0.25 + 0.2
    frac = torch.where(torch.rand(64, generator=g) < 0.5, frac, 1 - frac)  # below or above the middle
    x = ((steps + frac - zero_point) * scale).float()
    return torch.cat([x, torch.zeros(1)]), scale, zero_point


def _package(x, scale, zero_point):
    return (torch.from_numpy(quantize_tensor(x, scale, zero_point)).float() - zero_point) * scale


def _fake(rounding=torch.round, low=0, high=255, zero_before_clamp=True, dequantize=True, subtract=True):
    """The round trip as the mistakes compute it."""
    def fake(x, scale, zero_point):
        q = rounding(x / scale) + (zero_point if zero_before_clamp else 0)
        q = q.clamp(low, high) + (0 if zero_before_clamp else zero_point)
        return ((q - zero_point) if subtract else q) * scale if dequantize else q
    return fake


FAKE_QUANTIZE = Exercise(
    "fake_quantize", _package, lambda g, e: close(g, e, rtol=1e-5, atol=1e-6),
    against="dequantized distill_utils.deploy.quantize_tensor",
    cases=lambda: (
        Case("values of [-1, 3] and beyond", _values(-1.0, 3.0, 0)),
        Case("ReLU outputs, [0, 6] (zero point 0)", _values(0.0, 6.0, 1)),
        Case("[-4, 0.5]", _values(-4.0, 0.5, 2))),
    mistakes=(
        Mistake("no clamp", "values outside the range must saturate: clamp q to 0..255 before dequantizing",
                _fake(low=-1e9, high=1e9)),
        Mistake("zero after clamp", "add the zero point before clamping: q = clamp(round(x / scale) + zero_point, "
                                    "0, 255)", _fake(zero_before_clamp=False)),
        Mistake("floor", "use rounding (torch.round), not floor", _fake(rounding=torch.floor)),
        Mistake("truncate", "use rounding (torch.round): converting to an integer type truncates towards zero",
                _fake(rounding=torch.trunc)),
        Mistake("int8 range", "uint8 runs from 0 to 255 (int8's -128..127 is for the symmetric weights)",
                _fake(low=-128, high=127)),
        Mistake("q returned", "return the dequantized floats, (q - zero_point) * scale, not q",
                _fake(dequantize=False)),
        Mistake("zero point kept", "dequantize by subtracting the zero point: (q - zero_point) * scale",
                _fake(subtract=False)),
    ))


def check_fake_quantize(fn):
    """Check ``fn(x, scale, zero_point)``: x quantized to uint8 and back to floats, as the runtime computes
    it (notebook 09)."""
    return check(FAKE_QUANTIZE, fn)

"""Checks for notebook 05: the global magnitude threshold and the cubic sparsity schedule.

``check_global_threshold`` turns the learner's threshold into masks (a weight survives when
|w| > threshold) and compares them with the masks ``prune_magnitude(..., scope="global")`` attaches,
on layers of very different scales (where global and per-layer pruning differ most) and at
amounts 0 and 1. ``check_cubic_sparsity`` compares with ``distill_utils.prune.cubic_sparsity``
before, along and after the ramp, with and without an initial sparsity.
"""
from __future__ import annotations

import torch
from torch import nn

from distill_utils.exercises.core import Case, Exercise, Invalid, Mistake, as_float, call, check
from distill_utils.prune import cubic_sparsity, prunable_layers, prune_magnitude

__all__ = ["check_global_threshold", "check_cubic_sparsity"]


# ---------------------------------------------------------------- the global threshold

PER_LAYER = ("you returned one threshold per layer (per-layer instead of global threshold): global pruning ranks "
             "every weight of every layer together, so concatenate all |w| first and return one number")

def _layers(seed: int = 0) -> list[torch.Tensor]:
    """Weights of a conv and two linear layers, 123 in all, of very different scales."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 1, 3, 3, generator=g) * 0.01, torch.randn(8, 6, generator=g),
            torch.randn(4, 12, generator=g) * 0.1]


def _model(weights) -> nn.Module:
    """Layers holding ``weights`` (a conv for 4-d tensors, a linear layer otherwise), for prune_magnitude."""
    layers = []
    for w in weights:
        layer = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False) if w.dim() == 4 else \
            nn.Linear(w.shape[1], w.shape[0], bias=False)
        layer.weight.data = w.clone()
        layers.append(layer)
    return nn.ModuleList(layers)


def _package_masks(weights, amount):
    model = prune_magnitude(_model(weights), amount, scope="global")
    return [m.weight_mask.bool() for _, m in prunable_layers(model)]


def _masks_of(fn, args):
    """The masks the learner's threshold gives: a weight is kept when |w| > threshold."""
    weights, _ = args
    threshold = call(fn, args)
    if isinstance(threshold, (list, tuple)) or (isinstance(threshold, torch.Tensor) and threshold.numel() > 1):
        return Invalid(PER_LAYER)
    threshold = as_float(threshold)
    return threshold if isinstance(threshold, Invalid) else [w.abs() > threshold for w in weights]


def _compare_masks(got, expected):
    removed, want = sum(int((~m).sum()) for m in got), sum(int((~m).sum()) for m in expected)
    if removed != want:
        return f"your threshold removes {removed} weights, prune_magnitude removes {want}"
    if not all(torch.equal(a, b) for a, b in zip(got, expected)):
        return "your threshold removes as many weights as prune_magnitude, but not the same ones"
    return None


def _scores(weights, signed: bool = False) -> torch.Tensor:
    return torch.cat([(w if signed else w.abs()).flatten() for w in weights])


def _kth(weights, k: int, signed: bool = False) -> float:
    """The k-th smallest score (k clipped to the count), or -1 for k = 0: how the mistakes pick it."""
    scores = _scores(weights, signed)
    return -1.0 if k <= 0 else torch.kthvalue(scores, min(k, len(scores))).values.item()


def _n(weights) -> int:
    return sum(w.numel() for w in weights)


GLOBAL_THRESHOLD = Exercise(
    "global_threshold", _package_masks, _compare_masks, run=_masks_of,
    against="the masks of prune_magnitude(..., scope='global')",
    cases=lambda: (
        Case("3 layers of different scales, amount 0.5", (_layers(), 0.5)),
        Case("amount 0.9", (_layers(1), 0.9)),
        Case("amount 0.3 (0.3 x 123 weights = 36.9)", (_layers(2), 0.3)),
        Case("amount 0 (nothing removed)", (_layers(3), 0.0)),
        Case("amount 1 (everything removed)", (_layers(4), 1.0))),
    mistakes=(
        Mistake("per layer", PER_LAYER, lambda ws, a: [_kth([w], round(a * w.numel())) for w in ws]),
        Mistake("kept amount", "you removed 1 - amount of the weights: amount is the fraction removed, so the "
                               "threshold is the k-th smallest |w| with k = round(amount * n)",
                lambda ws, a: _kth(ws, round((1 - a) * _n(ws)))),
        Mistake("signed", "your threshold ranks the signed weights: take |w| first (a large negative weight "
                          "matters as much as a large positive one)", lambda ws, a: _kth(ws, round(a * _n(ws)), True)),
        Mistake("k = 0", "amount = 0 must remove nothing: with k = 0 there is no k-th smallest |w|, so return a "
                         "threshold below every |w| (e.g. -1.0) instead of calling kthvalue",
                lambda ws, a: torch.kthvalue(_scores(ws), round(a * _n(ws))).values.item()),
        Mistake("k = 0 index", "amount = 0 must remove nothing, yours removes every weight: sorted(scores)[k - 1] "
                               "with k = 0 is the largest |w|; return a threshold below every |w| (e.g. -1.0) when "
                               "k = 0", lambda ws, a: _kth(ws, round(a * _n(ws)) or _n(ws))),
        Mistake("one too many", "your threshold removes one weight too many: torch.kthvalue is 1-based, the k-th "
                                "smallest |w| is kthvalue(scores, k) (sorted(scores)[k - 1])",
                lambda ws, a: _kth(ws, round(a * _n(ws)) + 1) if round(a * _n(ws)) else -1.0),
        Mistake("one too few", "your threshold removes one weight too few: the k-th smallest |w| is "
                               "kthvalue(scores, k), with k = round(amount * n)",
                lambda ws, a: _kth(ws, round(a * _n(ws)) - 1) if round(a * _n(ws)) > 1 else -1.0),
        Mistake("truncated", "k must be round(amount * n): int() truncates (0.3 x 123 = 36.9 removes 37 weights, "
                             "not 36)", lambda ws, a: _kth(ws, int(a * _n(ws)))),
        Mistake("first layer", "your threshold is the first layer's: global pruning ranks every weight of every "
                               "layer together (concatenate all |w| first)",
                lambda ws, a: _kth(ws[:1], round(a * ws[0].numel()))),
    ))


def check_global_threshold(fn):
    """Check ``fn(weights, amount)``: the one |w| at or below which the fraction ``amount`` of all the
    weights (a list of tensors) lies (notebook 05)."""
    return check(GLOBAL_THRESHOLD, fn)


# ---------------------------------------------------------------- the cubic schedule

def _compare_numbers(got, expected):
    return None if abs(got - expected) <= 1e-6 else f"it returned {got:.6g}, expected {expected:.6g}"


def _run_number(fn, args):
    return as_float(call(fn, args))


def _cubic(power=3, clamp=True, flipped=False, integer=False, keep_initial=True):
    """The schedule as the mistakes write it."""
    def schedule(step, total_steps, final, initial=0.0):
        progress = step // total_steps if integer else step / total_steps
        progress = min(max(progress, 0.0), 1.0) if clamp else progress
        start = initial if keep_initial else 0.0
        return final + (start - final) * (progress if flipped else 1 - progress) ** power
    return schedule


CUBIC = Exercise(
    "cubic_sparsity", cubic_sparsity, _compare_numbers, run=_run_number, against="distill_utils.prune.cubic_sparsity",
    cases=lambda: (
        Case("step 0 of 100, final 0.9", (0, 100, 0.9)),
        Case("step 25 of 100", (25, 100, 0.9)),
        Case("step 3 of 7, final 0.5", (3, 7, 0.5)),
        Case("step 100 of 100", (100, 100, 0.9)),
        Case("step 150 of 100 (after the ramp)", (150, 100, 0.9)),
        Case("step 20 of 40 from an initial 0.2 to 0.8", (20, 40, 0.8, 0.2))),
    mistakes=(
        Mistake("t^3", "the schedule starts at the final sparsity: use (1 - step / total_steps) ** 3, not "
                       "(step / total_steps) ** 3", _cubic(flipped=True)),
        Mistake("linear", "the schedule is linear: Zhu & Gupta's is cubic, (1 - step / total_steps) ** 3",
                _cubic(power=1)),
        Mistake("square", "the schedule is quadratic: the power is 3", _cubic(power=2)),
        Mistake("no clamp", "after total_steps the sparsity must stay at final: clamp step / total_steps to [0, 1]",
                _cubic(clamp=False)),
        Mistake("integer division", "step // total_steps is integer division (0 until the end): use "
                                    "step / total_steps", _cubic(integer=True)),
        Mistake("initial ignored", "the initial sparsity is ignored: s = final + (initial - final) * "
                                   "(1 - step / total_steps) ** 3", _cubic(keep_initial=False)),
    ))


def check_cubic_sparsity(fn):
    """Check ``fn(step, total_steps, final, initial=0.0)``, Zhu & Gupta's cubic schedule (notebook 05)."""
    return check(CUBIC, fn)


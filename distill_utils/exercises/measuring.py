"""Checks for notebooks 03 and 07: the expected calibration error and the Pareto front.

``check_ece`` compares with ``distill_utils.measure.calibration`` (equal-width confidence bins,
each weighted by its share of the examples), on random and very confident logits (a confidence of
exactly 1.0 belongs in the last bin). ``check_pareto_front`` compares with
``distill_utils.runs.search.pareto_mask`` on ties in cost, ties in accuracy and identical models.
"""
from __future__ import annotations

import torch

from distill_utils.exercises.core import Case, Exercise, Invalid, Mistake, as_float, call, check
from distill_utils.measure import calibration

__all__ = ["check_ece", "check_pareto_front"]


# ---------------------------------------------------------------- notebook 03: ECE

def _logits_and_labels(n: int, seed: int, scale: float, right: float):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * scale
    labels = torch.where(torch.rand(n, generator=g) < right, logits.argmax(1), torch.randint(0, 10, (n,), generator=g))
    return logits, labels


def _confident():
    logits, labels = _logits_and_labels(60, 3, 1.0, 0.8)
    logits[:30, 0] += 80.0  # softmax gives exactly 1.0 in float32 for these
    return logits, labels


def _ece(confidence, correct, bins, weighted=True, absolute=True, upper_open=False):
    """ECE from per-example confidence and correctness, written as the mistakes compute it."""
    total, gaps = torch.zeros(()), []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) if upper_open or b < bins - 1 else (confidence <= high))
        if inside.any():
            gap = correct[inside].float().mean() - confidence[inside].mean()
            gap = gap.abs() if absolute else gap
            gaps.append(gap)
            total = total + gap * inside.float().sum() / len(confidence)
    return total.item() if weighted else torch.stack(gaps).mean().item()


def _top(logits, labels):
    confidence, pred = logits.float().softmax(1).max(1)
    return confidence, pred == labels


def _run_number(fn, args):
    return as_float(call(fn, args))


def _compare_numbers(got, expected, atol: float = 1e-5):
    if abs(got - expected) <= atol + 1e-4 * abs(expected):
        return None
    return f"it returned {got:.6g}, expected {expected:.6g}"


ECE = Exercise(
    "ece", lambda logits, labels, bins: calibration(logits, labels, bins)["ece"], _compare_numbers,
    against="distill_utils.measure.calibration",
    cases=lambda: (
        Case("300 random predictions, 15 bins", (*_logits_and_labels(300, 0, 2.0, 0.7), 15)),
        Case("unsure predictions, 10 bins", (*_logits_and_labels(200, 1, 0.5, 0.5), 10)),
        Case("confidences of exactly 1.0", (*_confident(), 15)),
        Case("every prediction wrong, 5 bins", (_logits_and_labels(50, 2, 2.0, 0.0)[0],
                                                (_logits_and_labels(50, 2, 2.0, 0.0)[0].argmax(1) + 1) % 10, 5)),
        Case("one prediction, 15 bins", (torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), 15))),
    mistakes=(
        Mistake("drops 1.0", "predictions with a confidence of exactly 1.0 are left out: the last bin includes "
                             "its upper edge (or compute the bin as (confidence * bins).long().clamp(max=bins - 1))",
                lambda lo, y, b: _ece(*_top(lo, y), b, upper_open=True)),
        Mistake("unweighted", "each bin must count by its share of the examples: weight |accuracy - confidence| "
                              "by (examples in the bin) / (all examples), not equally",
                lambda lo, y, b: _ece(*_top(lo, y), b, weighted=False)),
        Mistake("no abs", "take |accuracy - confidence| in each bin: over- and under-confidence must not cancel",
                lambda lo, y, b: _ece(*_top(lo, y), b, absolute=False)),
        Mistake("true class", "the confidence is the top predicted probability, not the probability of the "
                              "true class", lambda lo, y, b: _ece(lo.softmax(1)[torch.arange(len(y)), y],
                                                                  lo.argmax(1) == y, b)),
        Mistake("no softmax", "the confidence is the top softmax probability, not the top logit",
                lambda lo, y, b: _ece(lo.max(1).values.clamp(0, 1), lo.argmax(1) == y, b)),
    ),
    run=_run_number)


def check_ece(fn):
    """Check ``fn(logits, labels, bins)``, the expected calibration error as a number (notebook 03)."""
    return check(ECE, fn)


# ---------------------------------------------------------------- notebook 07: the Pareto front

def _front(better):
    """A front function from a dominance rule ``better(a, b)`` on (accuracy, cost) pairs."""
    def front(acc, cost):
        points = list(zip(acc, cost))
        return [not any(better(q, p) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]
    return front


def _pareto_mask(acc, cost):
    from distill_utils.runs.search.results import pareto_mask  # imports the search only when checked
    return pareto_mask(acc, cost)


def _run_mask(fn, args):
    got, n = call(fn, args), len(args[0])
    try:
        values = [v.item() if hasattr(v, "item") else v for v in got]
    except TypeError:
        return Invalid(f"it returned a {type(got).__name__}: return one True/False per model, in the order given")
    if len(values) != n or any(v not in (True, False) for v in values):
        return Invalid(f"it returned {values!r}: return one True/False per model ({n} here), in the order given, "
                       "not the indices of the front")
    return [bool(v) for v in values]


def _compare_masks(got, expected):
    if got == expected:
        return None
    return f"your front is models {_on(got)}, the front is models {_on(expected)}"


def _on(mask) -> list[int]:
    return [i for i, keep in enumerate(mask) if keep]


PARETO = Exercise(
    "pareto_front", _pareto_mask, _compare_masks, against="distill_utils.runs.search.pareto_mask",
    cases=lambda: (
        Case("five models", ([0.90, 0.85, 0.92, 0.80, 0.88], [10, 5, 20, 6, 12])),
        Case("two models of equal cost", ([0.9, 0.8, 0.95], [10, 10, 30])),
        Case("two models of equal accuracy", ([0.9, 0.9, 0.7], [10, 15, 1])),
        Case("two identical models", ([0.9, 0.9, 0.8], [10, 10, 5])),
        Case("one model", ([0.5], [3]))),
    mistakes=(
        Mistake("max cost", "a lower cost is better: a model is dominated by one at least as accurate and at "
                            "most as costly", _front(lambda q, p: q[0] >= p[0] and q[1] >= p[1] and q != p)),
        Mistake("strict", "a model that another matches on one axis and beats on the other is dominated: "
                          "dominance is 'at least as good on both, better on one'",
                _front(lambda q, p: q[0] > p[0] and q[1] < p[1])),
        Mistake("twins removed", "two identical models are both on the front (neither is better on either axis); "
                                 "yours removes them: require 'better on one axis' too",
                _front(lambda q, p: q[0] >= p[0] and q[1] <= p[1])),
    ),
    run=_run_mask)


def check_pareto_front(fn):
    """Check ``fn(accuracy, cost)``: one bool per model, True when no other model is at least as accurate
    and at most as costly and better in one of the two (notebook 07)."""
    return check(PARETO, fn)

"""Resuming: one rule for every runner that continues earlier work (reference records, search studies).

A runner continues a record, a folder or a study only when the values that change results are the
ones it was started with; otherwise it refuses, saying what differs (``epochs: 10 there, 20 now``)
and what to do, rather than mixing results made with different values under one set of parameters.
Values are compared as JSON (a tuple equals the list it is stored as, ``4`` equals ``4.0``).
"""
from __future__ import annotations

import json

__all__ = ["ResumeRefused", "differences", "check_same"]

_NONE = "(none)"


class ResumeRefused(ValueError):
    """Earlier work was made with other values than a runner would continue it with; the message says which."""


def _normal(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: dict, new: dict, limit: int = 4) -> str:
    """What differs between two sets of values (nested dicts by dotted name), e.g. ``epochs: 10 there,
    20 now; seeds: (none) there, [0] now`` (at most ``limit``, then how many more); empty if none."""
    a, b = _flat(_normal(old)), _flat(_normal(new))
    diffs = [f"{k}: {a.get(k, _NONE)!r} there, {b.get(k, _NONE)!r} now" for k in sorted(set(a) | set(b))
             if a.get(k, _NONE) != b.get(k, _NONE)]
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def check_same(old: dict, new: dict, where: str, fix: str) -> None:
    """ResumeRefused unless ``old`` (what ``where`` was made with) and ``new`` (what would continue it) agree."""
    diff = differences(old, new)
    if diff:
        raise ResumeRefused(f"{where} was made with other values than now ({diff}); {fix}")

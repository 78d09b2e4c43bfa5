"""Checking a notebook's parameters before anything runs (every notebook's second code cell).

The ``parameters`` cell is the single source of truth: ``name: type = value  # comment``.
``validate(globals())`` reads those annotations, checks each value's type, then the rule
for its name (a range or a set of choices) from ``RULES``, and reports every problem in one
``ParameterError`` naming the parameter, its value and what is allowed. Names papermill
injected that the parameters cell does not declare are errors too (a typo would otherwise
be ignored silently).
"""
from __future__ import annotations

import types

__all__ = ["ParameterError", "RULES", "validate"]


class ParameterError(ValueError):
    """A notebook parameter has a wrong type, an out-of-range value or an unknown name."""


def _range(low=None, high=None, low_open=False, high_open=False, what=""):
    def check(v):
        ok = (low is None or (v > low if low_open else v >= low)) and (high is None or (v < high if high_open else v <= high))
        if ok:
            return None
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        return f"must be {' and '.join(x for x in (lo, hi) if x)}{f' ({what})' if what else ''}"
    return check


def _choice(names_of):
    def check(v):
        names = names_of()
        return None if v in names else f"must be one of {', '.join(sorted(names))}"
    return check


def _each(rule):
    def check(values):
        bad = [(i, v, msg) for i, v in enumerate(values) if (msg := rule(v))]
        return None if not bad else f"item {bad[0][0]} ({bad[0][1]!r}) {bad[0][2]}"
    return check


def _datasets():
    from .data import DATASETS
    return set(DATASETS)


def _models():
    from .models import MODELS
    return set(MODELS)


def _criteria():
    from .prune import CRITERIA
    return set(CRITERIA)


def _losses():
    from .distill import LOSSES
    return set(LOSSES)


positive, count, non_negative = _range(0, low_open=True), _range(1), _range(0)
fraction = _range(0, 1, what="a fraction")
prune_fraction = _range(0, 1, high_open=True, what="the fraction removed; 1 would remove everything")

# Rules by parameter name; a name without a rule is only type-checked.
RULES = {
    "dataset": _choice(_datasets), "model_name": _choice(_models), "student_name": _choice(_models),
    "criterion": _choice(_criteria), "loss": _choice(_losses),
    "epochs": count, "few_epochs": count, "finetune_epochs": count, "batch_size": count,
    "n_images": count, "few_labels": count, "labelled": count, "finetune_images": count,
    "train_subset": non_negative, "seed": non_negative, "layer": non_negative,
    "lr": positive, "width": positive, "student_width": positive,
    "T": _range(0, low_open=True, what="the temperature"), "similarity_T": positive,
    "alpha": _range(0, 1, what="the weight of the distillation term"),
    "hint_weight": non_negative, "attention_weight": non_negative, "dkd_nckd_weight": non_negative,
    "target": prune_fraction, "amount": prune_fraction,
    "sparsities": _each(prune_fraction), "ratios": _each(prune_fraction), "sensitivity_ratios": _each(prune_fraction),
    "temperatures": _each(positive), "grid_T": _each(positive), "grid_alpha": _each(fraction),
    "seeds": _each(non_negative), "few_seeds": _each(non_negative),
}

_IPYTHON = {"In", "Out", "get_ipython", "exit", "quit"}


def _type_error(value, kind) -> str | None:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return None  # 4 is a fine temperature
    if (kind in (int, float) and isinstance(value, bool)) or not isinstance(value, kind):
        return f"must be {kind.__name__}, got {type(value).__name__}"
    return None


def validate(namespace: dict) -> dict:
    """Check the parameters declared (annotated) in ``namespace``; return them as a dict.

    Call it as ``params = validate(globals())`` in the cell after ``parameters``.
    Raises ``ParameterError`` listing every bad parameter with its value and what is allowed.
    """
    declared = namespace.get("__annotations__", {})
    if not declared:
        raise ParameterError("no parameters found: the cell tagged 'parameters' must declare them with "
                             "types (name: type = value) and run before validate(globals())")
    problems = []
    for name, kind in declared.items():
        value = namespace.get(name)
        kind = kind if isinstance(kind, type) else {"int": int, "float": float, "str": str, "bool": bool,
                                                     "list": list, "dict": dict}.get(str(kind), object)
        msg = _type_error(value, kind) or (RULES[name](value) if name in RULES else None)
        if msg:
            problems.append(f"{name} = {value!r} {msg}")
    unknown = sorted(n for n, v in namespace.items() if n not in declared and not n.startswith("_")
                     and n not in _IPYTHON and not isinstance(v, (types.ModuleType, types.FunctionType, type)))
    for name in unknown:
        problems.append(f"{name} = {namespace[name]!r} is not a parameter of this notebook; "
                        f"its parameters are: {', '.join(declared)}")
    if problems:
        raise ParameterError("bad notebook parameter" + ("s" if len(problems) > 1 else "") + ":\n  "
                             + "\n  ".join(problems)
                             + "\nFix the value in the parameters cell, or the -p/-f values given to papermill.")
    return {name: float(namespace[name]) if declared[name] in (float, "float") else namespace[name] for name in declared}

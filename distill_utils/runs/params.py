"""Checking a notebook's parameters before anything runs (every notebook's second code cell).

The ``parameters`` cell is the single source of truth: ``name: type = value  # comment``.
``validate(globals())`` reads those annotations, checks each value's type, then the rule
for its name (a range or a set of choices) from ``RULES``, and reports every problem in one
``ParameterError`` naming the parameter, its value and what is allowed. Names papermill
injected that the parameters cell does not declare are errors too (a typo would otherwise
be ignored silently).
"""
from __future__ import annotations

import difflib
import math
import re
import types

import yaml

__all__ = ["ParameterError", "RULES", "validate", "parse_value", "read_parameter_file", "did_you_mean"]

MAX_INT = 2**63 - 1  # torch seeds and tensor sizes are 64-bit
MAX_PARAMETER_FILE = 1 << 20  # bytes


class ParameterError(ValueError):
    """A notebook parameter has a wrong type, an out-of-range value or an unknown name."""


def _number_error(v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number, got {type(v).__name__}"
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    if isinstance(v, int) and abs(v) > MAX_INT:
        return "must be below 2**63 (a 64-bit integer)"
    return None


def _range(low=None, high=None, low_open=False, high_open=False, what=""):
    def check(v):
        if (problem := _number_error(v)):
            return problem
        ok = ((low is None or (v > low if low_open else v >= low))
              and (high is None or (v < high if high_open else v <= high)))
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
        if not isinstance(values, (list, tuple)):
            return f"must be a list, got {type(values).__name__}"
        if not values:
            return "must not be empty"
        bad = [(i, v, msg) for i, v in enumerate(values) if (msg := rule(v))]
        return None if not bad else f"item {bad[0][0]} ({bad[0][1]!r}) {bad[0][2]}"
    return check


def _datasets():
    from distill_utils.data import DATASETS
    return set(DATASETS)


def _models():
    from distill_utils.models import MODELS
    return set(MODELS)


def _criteria():
    from distill_utils.prune import CRITERIA
    return set(CRITERIA)


def _losses():
    from distill_utils.distill import LOSSES
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
    "transfer_images": non_negative, "transfer_epochs": count,
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
        return _number_error(value)  # 4 is a fine temperature
    if (kind in (int, float) and isinstance(value, bool)) or not isinstance(value, kind):
        return f"must be {kind.__name__}, got {type(value).__name__}"
    return _number_error(value) if kind in (int, float) else None


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices`` to a mistyped ``name``, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-3`` is a float (YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
               r"|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse_value(text: str, name: str = "value"):
    """A ``-p NAME VALUE`` value as YAML (``3`` int, ``1e-3`` float, ``[1, 2]`` list, ``abc`` string);
    ValueError naming ``name`` when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ValueError(f"-p {name} {text!r} is not a valid value ({problem}); quote strings, "
                         "write lists as [1, 2]") from None


def read_parameter_file(path) -> dict:
    """A YAML parameter file (as papermill's ``-f``) as a dict; ValueError saying what is wrong."""
    from distill_utils.common.files import ReadRefused, read_limited
    try:
        text = read_limited(path, MAX_PARAMETER_FILE, "parameter file").decode()
        params = yaml.load(text, Loader=_Loader)
    except (OSError, ReadRefused, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read parameter file {path}: {getattr(err, 'strerror', None) or err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"parameter file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ValueError(f"parameter file {path} must map parameter names to values (name: value), "
                         f"not a {type(params).__name__}")
    return params


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
    return {name: float(namespace[name]) if declared[name] in (float, "float") else namespace[name]
            for name in declared}

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

import yaml

from distill_utils.common import rules
from distill_utils.common.files import ReadRefused, YamlLoader, read_yaml
from distill_utils.common.rules import did_you_mean
from distill_utils.distill import LOSSES
from distill_utils.folders import dataset_problem
from distill_utils.models import MODELS
from distill_utils.prune import CRITERIA

__all__ = ["ParameterError", "RULES", "validate", "parse_value", "read_parameter_file", "did_you_mean"]

MAX_PARAMETER_FILE = 1 << 20  # bytes


class ParameterError(ValueError):
    """A notebook parameter has a wrong type, an out-of-range value or an unknown name."""


# The common rules plus the choices that come from the package's registries; a dataset is a built-in
# name or folder:PATH (an existing folder of your own images).
RULES = {**rules.RULES, "dataset": dataset_problem, "model_name": rules.one_of(MODELS),
         "student_name": rules.one_of(MODELS), "criterion": rules.one_of(CRITERIA), "loss": rules.one_of(LOSSES)}

_IPYTHON = {"In", "Out", "get_ipython", "exit", "quit"}


def parse_value(text: str, name: str = "value"):
    """A ``-p NAME VALUE`` value as YAML (``3`` int, ``1e-3`` float, ``[1, 2]`` list, ``abc`` string);
    ValueError naming ``name`` when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader without aliases)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ValueError(f"-p {name} {text!r} is not a valid value ({problem}); quote strings, "
                         "write lists as [1, 2]") from None


def read_parameter_file(path) -> dict:
    """A YAML parameter file (as papermill's ``-f``) as a dict; ValueError saying what is wrong."""
    try:
        params = read_yaml(path, MAX_PARAMETER_FILE, "parameter file")
    except ReadRefused as err:  # not a regular file, too large, not UTF-8, not YAML, an alias, too deep
        raise ValueError(str(err)) from None
    except OSError as err:
        raise ValueError(f"cannot read parameter file {path}: {err.strerror or err}") from None
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
        msg = rules.type_error(value, kind) or (RULES[name](value) if name in RULES else None)
        if msg:
            problems.append(f"{name} = {value!r} {msg}")
    unknown = sorted(n for n, v in namespace.items() if n not in declared and not n.startswith("_")
                     and n not in _IPYTHON and not isinstance(v, (types.ModuleType, types.FunctionType, type)))
    for name in unknown:
        problems.append(f"{name} = {namespace[name]!r} is not a parameter of this notebook"
                        f"{did_you_mean(name, declared)}; its parameters are: {', '.join(declared)}")
    if problems:
        raise ParameterError("bad notebook parameter" + ("s" if len(problems) > 1 else "") + ":\n  "
                             + "\n  ".join(problems)
                             + "\nFix the value in the parameters cell, or the -p/-f values given to papermill.")
    return {name: float(namespace[name]) if declared[name] in (float, "float") else namespace[name]
            for name in declared}

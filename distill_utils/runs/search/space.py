"""The search space: its fixed settings and what varies, checked by the project's one rule set (notebook 10).

``params/search.yaml`` holds settings (the dataset, sizes, the cost, the seed, ...) and a
``space:`` section. A space entry is a fixed value (``T: 4.0``), a list of choices
(``loss: [kd, dkd]``) or a range (``T: {low: 1.0, high: 8.0, log: true}``). Every value is
checked by the rule its name has everywhere else (``runs.params.RULES``): a temperature here is
a temperature in notebook 03, a prune ratio a fraction of channels as in notebook 06.
"""
from __future__ import annotations

import hashlib
import json

from distill_utils.common import rules
from distill_utils.common.files import ReadRefused, read_yaml
from distill_utils.common.resume import differences
from distill_utils.common.rules import did_you_mean
from distill_utils.runs.params import RULES

__all__ = ["SpaceError", "SETTINGS", "SPACE", "COSTS", "MODELS", "load_space", "fingerprint", "difference"]

COSTS = ("params", "flops", "latency_ms")
MODELS = ("student_cnn", "student_mlp", "pruned_teacher")
RANGE_KEYS = ("low", "high", "log", "step")


class SpaceError(ValueError):
    """A search space file has an unknown name, a bad type or an empty range."""


# Fixed settings: name -> (type, default, rule or None, what it is)
SETTINGS = {
    "dataset": (str, "fashion_mnist", RULES["dataset"], "the teacher's dataset"),
    "data_root": (str, "", None, "dataset folder; empty: the project's data/ (Debian's copy is found too)"),
    "teacher": (str, "", None, "teacher .safetensors; empty: the shipped teacher"),
    "train_images": (int, 10000, RULES["train_images"], "training images per trial (0: all left after validation)"),
    "val_images": (int, 5000, RULES["val_images"], "held out from the training images; trials are scored on them"),
    "batch_size": (int, 128, RULES["batch_size"], "training batch size"),
    "cost": (str, "params", rules.one_of(COSTS), "the objective minimised beside validation accuracy"),
    "seed": (int, 0, RULES["seed"], "seeds the sampler, the validation split and every trial"),
    "population": (int, 8, RULES["population"], "NSGA-II population size (its first generation is random)"),
    "prune_margin": (float, 0.02, rules.fraction, "accuracy (0-1) by which finished trials must lead to stop one"),
    "prune_when_beaten_by": (int, 2, rules.in_range(0, integer=True),
                             "finished trials that must lead to stop one early (0: never)"),
    "latency_batch": (int, 256, RULES["latency_batch"], "batch size of the latency measurement"),
    "latency_repeats": (int, 10, RULES["latency_repeats"], "timed forward passes (median)"),
}

# Searchable names -> (type of one value, its rule, default when the space leaves it out).
# str names are choices; prune_ratio(s) are fractions of each conv's channels (notebook 06).
SPACE = {
    "model": (str, rules.one_of(MODELS), "student_cnn"),
    "student_width": (float, RULES["student_width"], 1.0),
    "prune_ratio": (float, rules.channel_fraction, 0.5),
    "prune_ratios": (float, rules.channel_fraction, None),
    "criterion": (str, RULES["criterion"], "l1"),
    "T": (float, RULES["T"], 4.0),
    "alpha": (float, RULES["alpha"], 0.9),
    "loss": (str, RULES["loss"], "kd"),
    "dkd_nckd_weight": (float, RULES["dkd_nckd_weight"], 1.0),
    "epochs": (int, RULES["epochs"], 2),
    "lr": (float, RULES["lr"], 0.003),
}


def _value_problem(value, kind, rule) -> str | None:
    return rules.type_error(value, kind) or rule(value)


def _range_problems(where: str, entry: dict, kind, rule) -> list[str]:
    unknown = sorted(set(entry) - set(RANGE_KEYS))
    if unknown:
        return [f"{where}.{unknown[0]}: unknown key{did_you_mean(unknown[0], RANGE_KEYS)}; "
                "a range has low, high and optionally log (true/false) or step"]
    if "low" not in entry or "high" not in entry:
        return [f"{where}: a range needs both low and high, e.g. {{low: 1.0, high: 8.0}}"]
    problems = [f"{where}.{k} = {entry[k]!r} {msg}" for k in ("low", "high")
                if (msg := _value_problem(entry[k], kind, rule))]
    if not problems and entry["low"] > entry["high"]:
        problems.append(f"{where}: low = {entry['low']} is greater than high = {entry['high']}; swap them")
    if not isinstance(entry.get("log", False), bool):
        problems.append(f"{where}.log = {entry['log']!r} must be true or false")
    elif entry.get("log") and not problems and entry["low"] <= 0:
        problems.append(f"{where}: a log range needs low > 0, got {entry['low']}")
    if "step" in entry and (rules.type_error(entry["step"], kind) or entry["step"] <= 0):
        problems.append(f"{where}.step = {entry['step']!r} must be a positive {kind.__name__}")
    elif "step" in entry and entry.get("log") is True:
        problems.append(f"{where}: log and step together are not possible (a log range is sampled on a log scale, "
                        "a step on an even grid); drop one")
    return problems


def _entry_problems(name: str, entry) -> list[str]:
    kind, rule, _ = SPACE[name]
    where = f"space.{name}"
    if isinstance(entry, dict):
        if kind is str:
            return [f"{where}: a range makes no sense for names; give one value or a list, e.g. [kd, dkd]"]
        return _range_problems(where, entry, kind, rule)
    values = entry if isinstance(entry, list) else [entry]
    if not values:
        return [f"{where}: an empty list; give at least one value"]
    return [f"{where} = {v!r} {msg}" for v in values if (msg := _value_problem(v, kind, rule))][:1]


MAX_SPACE = 1 << 20  # bytes of a search space file


def _read(source) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, "the search space"
    try:  # bounded, regular files only, no YAML aliases (one rule for every file a user gives)
        raw = read_yaml(source, MAX_SPACE, "search space") or {}
    except ReadRefused as err:
        raise SpaceError(f"cannot read the search space: {err}") from None
    except OSError as err:
        raise SpaceError(f"cannot read the search space {source}: {err.strerror or err}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{source} must be a mapping of settings plus a 'space:' section, got {type(raw).__name__}")
    return raw, str(source)


def _names_problems(raw: dict) -> list[str]:
    """Every name (a setting, a space entry, a range key) must be text: ``1:`` or ``yes:`` is a typo."""
    space = raw.get("space") if isinstance(raw.get("space"), dict) else {}
    maps = [("", raw), ("space.", space)] + [(f"space.{k}.", v) for k, v in space.items() if isinstance(v, dict)]
    return [f"{where}{k!r}: a name must be text (quote it, or fix the typo)" for where, m in maps for k in m
            if not isinstance(k, str)][:3]


def _settings(raw: dict, problems: list) -> dict:
    config = {}
    for name, value in raw.items():
        if name == "space":
            continue
        if name not in SETTINGS:
            problems.append(f"{name}: unknown setting{did_you_mean(name, [*SETTINGS, 'space'])}; "
                            f"settings are: {', '.join(SETTINGS)}, and the 'space' section")
            continue
        kind, _, rule, _ = SETTINGS[name]
        msg = rules.type_error(value, kind) or (rule(value) if rule else None)
        if msg:
            problems.append(f"{name} = {value!r} {msg}")
        config[name] = float(value) if kind is float and not msg else value
    return config


def load_space(source, **overrides) -> dict:
    """The validated search space: ``{**settings, "space": {name: entry}}`` (notebook 10).

    ``source`` is a YAML file or a dict; ``overrides`` replace settings (the notebook's sizes).
    A space entry is a fixed value (``T: 4.0``), a list of choices (``loss: [kd, dkd]``) or a
    range (``T: {low: 1.0, high: 8.0, log: true}``; ``epochs: {low: 1, high: 3}``). Raises
    ``SpaceError`` naming every problem (unknown names with a close match, bad types, low > high).
    """
    raw, where = _read(source)
    raw = {**raw, **overrides}
    if problems := _names_problems(raw):  # before anything sorts or compares names
        raise SpaceError(f"bad search space ({where}): " + "; ".join(problems))
    problems = []
    config = _settings(raw, problems)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        problems.append("space: missing or empty; list what varies, e.g. space: {T: {low: 1.0, high: 8.0}}")
        space = {}
    for name, entry in space.items():
        if name not in SPACE:
            problems.append(f"space.{name}: unknown name{did_you_mean(name, SPACE)}; "
                            f"searchable names are: {', '.join(SPACE)}")
        else:
            problems += _entry_problems(name, entry)
    if "prune_ratio" in space and "prune_ratios" in space:
        problems.append("space: give prune_ratio (one ratio for every layer) or prune_ratios (one per layer), not both")
    if problems:
        raise SpaceError(f"bad search space ({where}):\n  " + "\n  ".join(problems)
                         + "\nFix the file (params/search.yaml shows every name), then run again.")
    config = {name: config.get(name, default) for name, (_, default, _, _) in SETTINGS.items()}
    config["space"] = {name: space[name] for name in SPACE if name in space}  # a fixed order: a stable fingerprint
    return config


def fingerprint(config: dict) -> str:
    """SHA-256 of the validated space: a study folder belongs to exactly one space (notebook 10)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def difference(old: dict, new: dict) -> str:
    """What differs between two spaces, e.g. ``space.T.high: 4.0 there, 8.0 now`` (at most four): the rule
    every resumable runner follows (``common.resume``)."""
    return differences(old, new)

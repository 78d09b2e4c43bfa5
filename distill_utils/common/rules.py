"""The one rule set for parameter values (notebook 08 teaches it).

A rule is a function ``value -> None | "what is wrong"``. ``RULES`` maps each parameter name the
project uses to its rule; notebooks (``runs.params.validate``), ``TrainConfig``, the pruning
functions and the search space (``runs.search``) all check values here, so one quantity has one
rule everywhere. Choices that come from the package's registries (datasets, models, losses,
criteria) are added by ``runs.params``, which may import them; this module imports nothing.
"""
from __future__ import annotations

import difflib
import math

__all__ = ["RuleError", "RULES", "RENAMED", "check", "problem", "in_range", "one_of", "each", "number_error",
           "type_error", "did_you_mean", "weight_fraction", "channel_fraction"]

MAX_INT = 2**63 - 1  # torch seeds and tensor sizes are 64-bit


class RuleError(ValueError):
    """A value breaks its parameter's rule; the message names the parameter, the value and what is allowed."""


def number_error(v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number, got {type(v).__name__}"
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    if isinstance(v, int) and abs(v) > MAX_INT:
        return "must be below 2**63 (a 64-bit integer)"
    return None


def in_range(low=None, high=None, low_open=False, high_open=False, what="", integer=False):
    """A rule: a number (an integer with ``integer``) between ``low`` and ``high``."""
    def rule(v):
        if integer and (isinstance(v, bool) or not isinstance(v, int)):
            return f"must be an integer, got {type(v).__name__}"
        if (problem_ := number_error(v)):
            return problem_
        if ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high))):
            return None
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        return f"must be {' and '.join(x for x in (lo, hi) if x)}{f' ({what})' if what else ''}"
    return rule


def one_of(names):
    """A rule: one of ``names`` (a collection, or a function returning one, read when checking)."""
    def rule(v):
        allowed = names() if callable(names) else names
        return None if v in allowed else f"must be one of {', '.join(sorted(map(str, allowed)))}"
    return rule


def each(rule):
    """A rule for a non-empty list whose every item follows ``rule``."""
    def check_list(values):
        if not isinstance(values, (list, tuple)):
            return f"must be a list, got {type(values).__name__}"
        if not values:
            return "must not be empty"
        bad = [(i, v, msg) for i, v in enumerate(values) if (msg := rule(v))]
        return None if not bad else f"item {bad[0][0]} ({bad[0][1]!r}) {bad[0][2]}"
    return check_list


def type_error(value, kind) -> str | None:
    """What is wrong when ``value`` is not of ``kind`` (an int is a fine float; a bool is not a number)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return number_error(value)  # 4 is a fine temperature
    if (kind in (int, float) and isinstance(value, bool)) or not isinstance(value, kind):
        return f"must be {kind.__name__}, got {type(value).__name__}"
    return number_error(value) if kind in (int, float) else None


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices`` to a mistyped ``name``, else ''."""
    if name in RENAMED and RENAMED[name] in choices:
        return f" (renamed: it is now {RENAMED[name]!r})"
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


positive = in_range(0, low_open=True)
non_negative = in_range(0)
count = in_range(1, integer=True)
size = in_range(0, integer=True)  # a number of images where 0 means "all" or "none"
fraction = in_range(0, 1, what="a fraction")
# pruning amounts: a fraction of what the function names
weight_fraction = in_range(0, 1, what="the fraction of weights removed")
channel_fraction = in_range(0, 1, high_open=True, what="the fraction of channels removed; a layer keeps one")

# Rules by parameter name; a name without a rule is only type-checked.
RULES = {
    "epochs": count, "few_epochs": count, "finetune_epochs": count, "recover_epochs": count,
    "transfer_epochs": count, "sweep_epochs": count, "max_epochs": count, "batch_size": count,
    "n_images": count, "labelled_images": count, "calibration_images": count, "trials": count,
    "population": in_range(2, integer=True), "workers": count, "latency_rounds": count,
    "latency_repeats": count, "latency_batch": count, "val_images": count, "test_images": count,
    "train_images": size, "unlabelled_images": size, "transfer_images": size,
    "seed": size, "layer": size,
    "lr": positive, "width": positive, "student_width": positive, "weight_decay": non_negative,
    "label_smoothing": in_range(0, 1, high_open=True),
    "T": in_range(0, low_open=True, what="the temperature"), "similarity_T": positive,
    "alpha": in_range(0, 1, what="the weight of the distillation term"),
    "hint_weight": non_negative, "attention_weight": non_negative, "dkd_nckd_weight": non_negative,
    "feature_weight": non_negative,
    "tolerance": non_negative,
    "target": weight_fraction, "sparsities": each(weight_fraction),
    "amount": channel_fraction, "ratio": channel_fraction, "ratios": each(channel_fraction),
    "sensitivity_ratios": each(channel_fraction), "prune_ratios": each(channel_fraction),
    "heads_removed": in_range(0, 1, high_open=True, what="the fraction of heads removed per block; a block keeps one"),
    "mlp_removed": in_range(0, 1, high_open=True, what="the fraction of MLP neurons removed per block; one stays"),
    "embed_removed": in_range(0, 1, high_open=True, what="the fraction of embedding channels removed; one stays"),
    "blocks_removed": size, "recover_images": count, "vit_epochs": count,
    "train_scenes": count, "test_scenes": count, "teacher_epochs": count, "kd_weight": non_negative,
    "kd_weights": each(non_negative),
    "mask_threshold": in_range(0, 1, high_open=True, what="the ground-truth heatmap value imitation starts at"),
    "mask_thresholds": each(in_range(0, 1, high_open=True, what="a ground-truth heatmap value")),
    "student_widths": each(positive), "temperatures": each(positive), "alphas": each(fraction),
    "seeds": each(size),
    "optimizer": one_of(("adamw", "sgd")), "schedule": one_of(("onecycle", "cosine", "constant")),
}

# Names an older version used, and what they are called now (a parameter file with one is told).
RENAMED = {"train_subset": "train_images", "few_labels": "labelled_images", "labelled": "labelled_images",
           "finetune_images": "train_images", "sweep_images": "train_images", "grid_T": "temperatures",
           "sweep_T": "temperatures", "grid_alpha": "alphas", "sweep_alpha": "alphas", "few_seeds": "seeds"}


def problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for the parameter ``name`` (None when it follows its rule or has none)."""
    rule = RULES.get(name)
    return rule(value) if rule else None


def check(name: str, value) -> None:
    """Raise ``RuleError`` (one line: name, value, what is allowed) unless ``value`` follows ``name``'s rule."""
    if (msg := problem(name, value)):
        raise RuleError(f"{name} = {value!r} {msg}")

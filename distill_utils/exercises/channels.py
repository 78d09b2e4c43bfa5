"""Checks for notebooks 06 and 07: L1 filter ranking, slicing conv -> BatchNorm -> next conv by hand,
and how many channels each layer keeps.

All three compare with ``distill_utils.prune``: the ranking with its L1 criterion (on filters where
L1 and L2 norms, or signed sums, disagree), the slicing with what ``prune_channels`` builds when told
to keep exactly those channels (same outputs on a random input, BatchNorm statistics included), and
the keep counts with the channel counts of ``prune_channels``' model (rounding, per-layer ratios, and
never an empty layer).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from distill_utils.exercises.core import Case, Exercise, Invalid, Mistake, call, check, close
from distill_utils.models import build_model
from distill_utils.prune import CRITERIA, prune_channels

__all__ = ["check_l1_filter_ranking", "check_slice_conv_bn_conv", "check_keep_counts"]


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _ints(value, what: str):
    """A returned ranking or count list as a list of ints, or ``Invalid``."""
    try:
        values = [v.item() if hasattr(v, "item") else v for v in value]
    except TypeError:
        return Invalid(f"it returned a {type(value).__name__}: return a list (or tensor) of {what}")
    if not all(float(v).is_integer() for v in values):
        return Invalid(f"it returned {values[:4]}...: return {what}, not the norms or fractions")
    return [int(v) for v in values]


# ---------------------------------------------------------------- notebook 06: ranking filters by L1 norm

def _disagreeing_conv() -> nn.Conv2d:
    """Four 3x3 filters ranked differently by L1 norm (1, 2, 0, 3), L2 norm and signed sum."""
    conv = nn.Conv2d(1, 4, 3, bias=False)
    w = torch.zeros(4, 1, 3, 3)
    w[0, 0, 1, 1] = 3.0             # L1 3.0, L2 3.0
    w[1] = 0.5                      # L1 4.5, L2 1.5
    w[2, 0, 0, :3], w[2, 0, 1, 0] = -1.0, -1.0  # L1 4.0, L2 2.0, signed sum -4
    w[3] = 0.1                      # L1 0.9
    conv.weight.data = w
    return conv


def _package_ranking(conv):
    return CRITERIA["l1"]()(conv, None).argsort(descending=True).tolist()


def _ranking_of(fn, args):
    return _ints(call(fn, args), "channel indices, most important first")


def _compare_rankings(got, expected):
    if len(got) != len(expected):
        return f"you ranked {len(got)} channels; the conv has {len(expected)} output channels (one filter each)"
    if sorted(got) != sorted(expected):
        return f"{got} is not an ordering of the channels 0..{len(expected) - 1}"
    return None if got == expected else f"your ranking is {got}, the package's {expected}"


def _by(score):
    return lambda conv: score(conv.weight.detach()).argsort(descending=True).tolist()


RANKING = Exercise(
    "l1_filter_ranking", _package_ranking, _compare_rankings, run=_ranking_of,
    against="distill_utils.prune's L1 criterion",
    cases=lambda: (
        Case("a conv 3 -> 8 channels", (_seeded(nn.Conv2d(3, 8, 3), 0),)),
        Case("filters whose L1 and L2 norms disagree", (_disagreeing_conv(),)),
        Case("a 1x1 conv 16 -> 6 channels", (_seeded(nn.Conv2d(16, 6, 1), 1),))),
    mistakes=(
        Mistake("ascending", "your ranking is least important first: sort the norms in descending order",
                lambda conv: CRITERIA["l1"]()(conv, None).argsort().tolist()),
        Mistake("L2", "you ranked by the L2 norm: the L1 norm is the sum of |w| over the filter",
                _by(lambda w: w.pow(2).sum((1, 2, 3)))),
        Mistake("signed", "you summed the signed weights: the L1 norm sums |w|", _by(lambda w: w.sum((1, 2, 3)))),
        Mistake("max", "you ranked by the largest |w|: the L1 norm is the sum of |w| over the filter",
                _by(lambda w: w.abs().amax((1, 2, 3)))),
        Mistake("input channels", "you ranked the input channels: a filter is conv.weight[c] (one per output "
                                  "channel), so sum |w| over dims 1, 2, 3", _by(lambda w: w.abs().sum((0, 2, 3)))),
    ))


def check_l1_filter_ranking(fn):
    """Check ``fn(conv)``: the output channels of ``conv``, most important first by L1 norm (notebook 06)."""
    return check(RANKING, fn)


# ---------------------------------------------------------------- notebook 06: slicing by hand

def _modules(bias: bool, seed: int = 0):
    conv, nxt = nn.Conv2d(2, 6, 3, padding=1, bias=bias), nn.Conv2d(6, 8, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(6)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # statistics that are not the identity, so that slicing them matters
        bn.running_mean.copy_(torch.randn(6, generator=g)), bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    return _seeded(conv, seed), _seeded(bn, seed + 1), _seeded(nxt, seed + 2)


def _forward(conv, bn, nxt) -> torch.Tensor:
    """The three modules' output on a fixed random input (both versions run on the same)."""
    x = torch.randn(2, 2, 7, 7, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return nxt.eval()(torch.relu(bn.eval()(conv.eval()(x))))


class _Keep:
    """A criterion for prune_channels that keeps exactly ``keep`` of the first conv (all of the others)."""
    def __init__(self, first: torch.Tensor, keep: torch.Tensor):
        self.first, self.keep = first, keep

    def __call__(self, conv, bn):
        if conv.weight.shape != self.first.shape or not torch.equal(conv.weight.detach(), self.first):
            return torch.ones(conv.out_channels)
        return torch.zeros(conv.out_channels).index_fill_(0, self.keep, 1.0)


def _package_slice(conv, bn, nxt, keep):
    model = build_model("student_cnn", channels=(6, 8, 4), in_channels=2, image_size=8)
    model.features[0][0], model.features[0][1], model.features[1][0] = conv, bn, nxt
    n = conv.out_channels
    pruned = prune_channels(model, [(n - len(keep)) / n, 0.0, 0.0], criterion=_Keep(conv.weight.detach(), keep))
    return _forward(pruned.features[0][0], pruned.features[0][1], pruned.features[1][0])


def _order(new: torch.Tensor, old: torch.Tensor) -> list:
    """For each slice of ``new`` (along dim 0), the index of the equal slice of ``old`` (None if none)."""
    return [next((j for j in range(len(old)) if old[j].shape == row.shape and torch.equal(old[j], row)), None)
            for row in new]


def _structure(old, new, k: int) -> str | None:
    """What is wrong with the shapes of the three new modules, if anything."""
    (conv, _, nxt), (new_conv, new_bn, new_next) = old, new
    if new_conv.weight.shape[0] != k:
        return f"the new conv has {new_conv.weight.shape[0]} filters; keep the {k} named in keep (weight[keep])"
    if conv.bias is not None and new_conv.bias is None:
        return "the conv's bias was dropped: keep bias[keep] too"
    if new_bn.weight.shape[0] != k or new_bn.running_mean.shape[0] != k:
        return f"the BatchNorm still has {new_bn.weight.shape[0]} channels: slice its weight, bias, running_mean " \
               "and running_var with keep"
    if torch.equal(new_bn.running_mean, torch.zeros(k)) and torch.equal(new_bn.running_var, torch.ones(k)):
        return ("the BatchNorm's running_mean and running_var were not copied (they are buffers, not "
                "parameters): slice them with keep too")
    if new_next.weight.shape[1] != k:
        return (f"the next conv still reads {new_next.weight.shape[1]} input channels: slice its weight on dim 1 "
                "(weight[:, keep], its inputs), not dim 0 (its outputs)")
    if nxt.bias is not None and new_next.bias is None:
        return "the next conv's bias was dropped: keep all of it (its outputs are unchanged)"
    rows = _order(new_conv.weight.detach(), conv.weight.detach())
    cols = _order(new_next.weight.detach().transpose(0, 1), nxt.weight.detach().transpose(0, 1))
    if None not in rows and None not in cols and rows != cols:
        return ("the next conv's input channels are in another order than the conv's output channels: slice both "
                "(and the BatchNorm) with the same, sorted keep")
    return None


def _sliced(fn, args):
    conv, bn, nxt, keep = copy.deepcopy(args)
    before = [copy.deepcopy(m.state_dict()) for m in (conv, bn, nxt)]
    out = fn(conv, bn, nxt, keep.clone())
    if any(any(not torch.equal(v, m.state_dict()[k]) for k, v in s.items()) for s, m in zip(before, (conv, bn, nxt))):
        return Invalid("your function changed the original conv, BatchNorm or next conv in place: build new modules "
                       "from sliced copies (.clone()) and leave the originals as they were")
    if not (isinstance(out, (tuple, list)) and len(out) == 3 and all(isinstance(m, nn.Module) for m in out)):
        return Invalid(f"it returned {type(out).__name__}: return three new modules, (conv, bn, next_conv)")
    problem = _structure((conv, bn, nxt), out, len(keep))
    return Invalid(problem) if problem else _forward(*out)


SLICE = Exercise(
    "slice_conv_bn_conv", _package_slice, lambda g, e: close(g, e, rtol=1e-4, atol=1e-5), run=_sliced,
    against="prune_channels keeping the same channels",
    cases=lambda: (
        Case("keep channels [0, 2, 5] of 6", (*_modules(True), torch.tensor([0, 2, 5]))),
        Case("keep [4, 1, 3] (not sorted)", (*_modules(True, 1), torch.tensor([4, 1, 3]))),
        Case("keep one channel", (*_modules(True, 2), torch.tensor([2]))),
        Case("keep all six", (*_modules(True, 3), torch.arange(6))),
        Case("convs without bias, as in the package's models", (*_modules(False, 4), torch.tensor([1, 3, 4])))))


def check_slice_conv_bn_conv(fn):
    """Check ``fn(conv, bn, next_conv, keep)``: new (conv, bn, next_conv) keeping only output channels ``keep``
    of ``conv``; the three together must compute what ``prune_channels`` builds (notebook 06)."""
    return check(SLICE, fn)


# ---------------------------------------------------------------- notebook 07: channels kept per layer

def _package_counts(channels, amount):
    model = build_model("student_cnn", channels=tuple(channels))
    return [block[0].out_channels for block in prune_channels(model, amount).features]


def _counts_of(fn, args):
    return _ints(call(fn, args), "one channel count per layer")


def _compare_counts(got, expected):
    return None if got == expected else f"it keeps {got} channels, prune_channels keeps {expected}"


def _per_layer(amount, n_layers):
    return list(amount) if isinstance(amount, (list, tuple)) else [amount] * n_layers


def _counts(rule):
    return lambda channels, amount: [rule(n, a) for n, a in zip(channels, _per_layer(amount, len(channels)))]


KEEP_COUNTS = Exercise(
    "keep_counts", _package_counts, _compare_counts, run=_counts_of, against="prune_channels",
    cases=lambda: (
        Case("channels [8, 16, 32], amount 0.5", ([8, 16, 32], 0.5)),
        Case("[10, 20, 30], amount 0.37", ([10, 20, 30], 0.37)),
        Case("per-layer amounts [0.5, 0.25, 0.75]", ([8, 16, 32], [0.5, 0.25, 0.75])),
        Case("[4, 8, 16], amount 0.9 (the first layer would be emptied)", ([4, 8, 16], 0.9)),
        Case("amount 0", ([6, 6, 6], 0.0))),
    mistakes=(
        Mistake("kept amount", "you kept the fraction amount: amount is the fraction of channels removed, so a "
                               "layer keeps n - round(amount * n)", _counts(lambda n, a: max(1, round(a * n)))),
        Mistake("truncated", "round the number removed: n - round(amount * n); int() truncates (0.37 x 10 = 3.7 "
                             "removes 4 channels, not 3)", _counts(lambda n, a: max(1, n - int(a * n)))),
        Mistake("truncated kept", "round the number removed: n - round(amount * n); int((1 - amount) * n) "
                                  "truncates the number kept", _counts(lambda n, a: max(1, int((1 - a) * n)))),
        Mistake("emptied", "a layer was emptied: every layer keeps at least one channel, max(1, n - round(amount * n))",
                _counts(lambda n, a: n - round(a * n))),
        Mistake("first ratio", "a list gives one ratio per layer: layer i removes amount[i] of its channels",
                lambda channels, amount: [max(1, n - round(_per_layer(amount, 1)[0] * n)) for n in channels]),
    ))


def check_keep_counts(fn):
    """Check ``fn(channels, amount)``: how many output channels each conv keeps when ``amount`` (one ratio or
    one per layer) of them is removed, as ``prune_channels`` does (notebook 07)."""
    return check(KEEP_COUNTS, fn)

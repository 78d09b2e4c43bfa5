"""The self-checking exercises: every check says "not attempted" for its stub, names each common wrong
answer's mistake, and passes the package's own function and the worked solution; a check that
cannot fail would be a bug. Also: tools/add_exercises.py inserts the cells once, however often it runs.
"""
import ast
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_utils import exercises
from distill_utils.deploy.int8 import int8_params, quantize_tensor
from distill_utils.distill import attention_loss, attention_map, kd_loss, soft_kl
from distill_utils.exercises import channels, distillation, features, magnitude, measuring, quantization
from distill_utils.exercises.core import Exercise, check
from distill_utils.measure import calibration
from distill_utils.models import build_model
from distill_utils.prune import CRITERIA, cubic_sparsity, prunable_layers, prune_channels, prune_magnitude
from distill_utils.runs.search.results import pareto_mask

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


CELLS = _tool("exercise_cells").EXERCISES
ALL = [ex for notebook in CELLS.values() for ex in notebook]


def _define(source: str, name: str):
    """The function ``name`` defined by a cell's source, run with what the notebooks import."""
    namespace = {"torch": torch, "F": F, "nn": nn}
    exec(compile(source, name, "exec"), namespace)
    return namespace[name]


def _stub(ex):
    return _define(f"{ex.imports}\n{ex.signature}\n    raise NotImplementedError", ex.function)


def _solution(ex):
    namespace_needs = {"my_attention_loss": next(e for e in ALL if e.function == "my_attention_map")}
    source = f"{ex.imports}\n{ex.signature}\n{ex.body}"
    if ex.function in namespace_needs:  # this solution calls the previous exercise's function
        dep = namespace_needs[ex.function]
        source = f"{dep.imports}\n{dep.signature}\n{dep.body}\n\n{source}"
    return _define(source, ex.function)


def _check(ex):
    return getattr(exercises, ex.check)


# ---------------------------------------------------------------- stubs, solutions, coverage

def test_every_notebook_from_02_has_at_least_two_exercises_each_with_its_own_check():
    assert [name[:2] for name in CELLS] == ["02", "03", "04", "05", "06", "07", "09"]
    assert all((ROOT / "notebooks" / f"{name}.ipynb").is_file() for name in CELLS)
    assert all(len(notebook) >= 2 for notebook in CELLS.values())
    assert sorted(ex.check for ex in ALL) == sorted(c for checks in exercises.CHECKS.values() for c in checks)
    assert len({ex.key for ex in ALL}) == len(ALL)


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.key)
def test_the_stub_is_not_attempted_yet_and_never_passes(ex):
    verdict = _check(ex)(_stub(ex))
    assert verdict.status == "not attempted" and not verdict.passed
    assert str(verdict).startswith("not attempted yet: my_") and "NotImplementedError" in str(verdict)


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.key)
def test_the_worked_solution_passes_its_check(ex):
    verdict = _check(ex)(_solution(ex))
    assert verdict.passed, str(verdict)
    assert str(verdict).startswith("correct: ")


def _threshold_from_package(weights, amount):
    """The largest |w| prune_magnitude removes (or -1 when it removes none)."""
    model = nn.ModuleList()
    for w in weights:
        layer = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False) if w.dim() == 4 else \
            nn.Linear(w.shape[1], w.shape[0], bias=False)
        layer.weight.data = w.clone()
        model.append(layer)
    prune_magnitude(model, amount, scope="global")
    removed = [m.weight_orig.detach().abs()[m.weight_mask == 0] for _, m in prunable_layers(model)]
    removed = torch.cat(removed)
    return removed.max().item() if len(removed) else -1.0


class _ForceKeep:
    def __init__(self, first, keep):
        self.first, self.keep = first, keep

    def __call__(self, conv, bn):
        if conv.weight.shape == self.first.shape and torch.equal(conv.weight.detach(), self.first):
            return torch.zeros(conv.out_channels).index_fill_(0, self.keep, 1.0)
        return torch.ones(conv.out_channels)


def _slice_with_package(conv, bn, next_conv, keep):
    model = build_model("student_cnn", channels=(conv.out_channels, next_conv.out_channels, 4),
                        in_channels=conv.in_channels, image_size=8)
    model.features[0][0], model.features[0][1], model.features[1][0] = conv, bn, next_conv
    n = conv.out_channels
    pruned = prune_channels(model, [(n - len(keep)) / n, 0.0, 0.0], criterion=_ForceKeep(conv.weight.detach(), keep))
    return pruned.features[0][0], pruned.features[0][1], pruned.features[1][0]


PACKAGE = {
    "check_soft_targets": lambda logits, T: F.softmax(logits / T, -1),
    "check_kd_soft_term": soft_kl,
    "check_kd_loss": lambda s, t, y, T, alpha: kd_loss(s, t, y, T=T, alpha=alpha),
    "check_ece": lambda logits, labels, bins: calibration(logits, labels, bins)["ece"],
    "check_attention_map": attention_map,
    "check_attention_loss": attention_loss,
    "check_global_threshold": _threshold_from_package,
    "check_cubic_sparsity": cubic_sparsity,
    "check_l1_filter_ranking": lambda conv: CRITERIA["l1"]()(conv, None).argsort(descending=True),
    "check_slice_conv_bn_conv": _slice_with_package,
    "check_keep_counts": lambda ch, a: [b[0].out_channels for b in
                                        prune_channels(build_model("student_cnn", channels=tuple(ch)), a).features],
    "check_pareto_front": pareto_mask,
    "check_scale_zero_point": int8_params,
    "check_fake_quantize": lambda x, s, z: (torch.from_numpy(quantize_tensor(x, s, z)).float() - z) * s,
}


@pytest.mark.parametrize("name", sorted(PACKAGE))
def test_the_package_own_function_passes_its_check(name):
    verdict = getattr(exercises, name)(PACKAGE[name])
    assert verdict.passed, str(verdict)


def _exercises():
    for module in (distillation, features, measuring, magnitude, channels, quantization):
        for name, value in inspect.getmembers(module, lambda v: isinstance(v, Exercise)):
            yield f"{module.__name__.rsplit('.', 1)[-1]}.{name}", value


@pytest.mark.parametrize("name, exercise", list(_exercises()), ids=[n for n, _ in _exercises()])
def test_each_catalogued_mistake_is_recognised_by_name(name, exercise):
    for mistake in exercise.mistakes:  # the wrong answer as the catalogue writes it: the check must name it
        verdict = check(exercise, mistake.answer)
        assert verdict.status == "wrong" and verdict.mistake == mistake.key, (mistake.key, str(verdict))


# ---------------------------------------------------------------- wrong answers as a learner writes them

def _kl_div(s, t, T, reduction="batchmean"):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction=reduction)


pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # a wrong answer below uses it


def _naive_softmax(logits, T):
    e = torch.exp(logits / T)
    return e / e.sum(dim=1, keepdim=True)


def _ece_loop(logits, labels, bins, weighted=True, absolute=True, upper_open=False, true_class=False):
    p = logits.softmax(1)
    confidence, predicted = p.max(1)
    if true_class:
        confidence = p[torch.arange(len(labels)), labels]
    correct = (predicted == labels).float()
    total, gaps = 0.0, []
    for b in range(bins):
        high = (confidence < (b + 1) / bins) if upper_open or b < bins - 1 else (confidence <= 1.0)
        inside = (confidence >= b / bins) & high
        if inside.any():
            gap = correct[inside].mean() - confidence[inside].mean()
            gap = gap.abs() if absolute else gap
            gaps.append(gap.item())
            total += inside.float().mean().item() * gap.item()
    return total if weighted else sum(gaps) / len(gaps)


def _att(feat, norm=True, power=2, dims=1):
    a = feat.abs().pow(power).mean(dims)
    a = a.flatten(1) if a.dim() > 2 else a
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12) if norm else a


def _att_loss(s, t, resize="student", mode="bilinear", reduce="mean"):
    if s.shape[-2:] != t.shape[-2:] and resize == "student":
        s = F.interpolate(s, size=t.shape[-2:], mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    elif s.shape[-2:] != t.shape[-2:] and resize == "teacher":
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    d = attention_map(s) - attention_map(t)
    return {"mean": d.pow(2).mean(), "sum": d.pow(2).sum(), "rows": d.pow(2).sum(1).mean(),
            "norm": d.norm(dim=1).mean()}[reduce]


def _threshold(weights, amount, k_of=round, signed=False, guard=True, offset=0):
    scores = torch.cat([(w if signed else w.abs()).flatten() for w in weights])
    k = k_of(amount * scores.numel())
    if guard and k == 0:
        return -1.0
    return scores.sort().values[min(k - 1 + offset, len(scores) - 1)].item()


def _schedule(power=3, clamp=True, flip=False, use_initial=True, floor_div=False):
    def cubic(step, total_steps, final, initial=0.0):
        progress = (step // total_steps) if floor_div else step / total_steps
        progress = min(1.0, progress) if clamp else progress
        base = (progress if flip else 1 - progress) ** power
        return final + ((initial if use_initial else 0.0) - final) * base
    return cubic


def _rank(score):
    return lambda conv: torch.argsort(score(conv.weight.detach()), descending=True).tolist()


def _slicer(bn_stats=True, next_dim=1, sort=(True, True), conv_bias=True, next_bias=True, in_place=False,
            slice_bn=True):
    """The worked slicing with one thing done wrong (each keyword names the part)."""
    def slice_(conv, bn, next_conv, keep):
        keep_conv = keep.sort().values if sort[0] else keep
        keep_next = keep.sort().values if sort[1] else keep
        new_conv = nn.Conv2d(conv.in_channels, len(keep), 3, padding=1, bias=conv.bias is not None and conv_bias)
        new_conv.weight.data = conv.weight.detach()[keep_conv].clone()
        if conv.bias is not None and conv_bias:
            new_conv.bias.data = conv.bias.detach()[keep_conv].clone()
        new_bn = nn.BatchNorm2d(len(keep) if slice_bn else bn.num_features)
        for name in ("weight", "bias") + (("running_mean", "running_var") if bn_stats else ()):
            getattr(new_bn, name).data = getattr(bn, name).detach()[keep_conv if slice_bn else slice(None)].clone()
        w = next_conv.weight.detach()
        w = w[:, keep_next] if next_dim == 1 else w[keep_next]
        new_next = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=next_conv.bias is not None and next_bias)
        new_next.weight.data = w.clone()
        if next_conv.bias is not None and next_bias:
            new_next.bias.data = next_conv.bias.detach()[:w.shape[0]].clone()
        if in_place:
            conv.weight.data[keep] = 0.0
        return new_conv, new_bn, new_next
    return slice_


def _front(strict=False, twins=False, max_cost=False):
    def front(acc, cost):
        out = []
        for i, (a, c) in enumerate(zip(acc, cost)):
            beaten = False
            for j, (a2, c2) in enumerate(zip(acc, cost)):
                cheaper = c2 >= c if max_cost else c2 <= c
                if j != i and (a2 > a and (c2 > c if max_cost else c2 < c) if strict else
                               a2 >= a and cheaper and (twins or a2 > a or c2 != c)):
                    beaten = True
            out.append(not beaten)
        return out
    return front


def _params(widen=True, steps=255, rounded=True, sign=-1.0, guard=False):
    def params(lo, hi):
        if widen:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if guard and hi == lo:
            return 1.0, 0
        scale = (hi - lo) / steps
        zero_point = sign * lo / scale
        return scale, (int(round(zero_point)) if rounded else zero_point)
    return params


def _fq(rounding=torch.round, lo=0, hi=255, zp_first=True, dequantize=True, subtract=True):
    def fake(x, scale, zero_point):
        q = rounding(x / scale)
        q = torch.clamp(q + zero_point, lo, hi) if zp_first else torch.clamp(q, lo, hi) + zero_point
        if not dequantize:
            return q.to(torch.uint8)
        return (q - zero_point) * scale if subtract else q * scale
    return fake


def _keep(rule):
    return lambda ch, a: [rule(n, r) for n, r in zip(ch, a if isinstance(a, list) else [a] * len(ch))]


WRONG = {  # check -> [(what the learner wrote, the mistake key or a fragment of the message)]
    "check_soft_targets": [
        (_naive_softmax, "overflow"), (lambda z, T: torch.softmax(z * T, 1), "times T"),
        (lambda z, T: torch.softmax(z, 1), "no T"), (lambda z, T: torch.softmax(z, 1) / T, "T after softmax"),
        (lambda z, T: torch.log_softmax(z / T, 1), "log"), (lambda z, T: torch.softmax(z / T, 0), "dim 0"),
        (lambda z, T: None, "it returned None")],
    "check_kd_soft_term": [
        (lambda s, t, T: _kl_div(s, t, T), "no T^2"), (lambda s, t, T: _kl_div(s, t, T) * T, "T once"),
        (lambda s, t, T: _kl_div(t, s, T) * T ** 2, "reversed KL"),
        (lambda s, t, T: _kl_div(s, t, T, "sum") * T ** 2, "batch sum"),
        (lambda s, t, T: _kl_div(s, t, T, "mean") * T ** 2, "mean"),
        (lambda s, t, T: -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1).mean() * T * T, "cross-entropy"),
        (lambda s, t, T: F.kl_div(F.log_softmax(s, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T,
         "student at T=1"),
        (lambda s, t, T: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t, 1), reduction="batchmean") * T * T,
         "teacher at T=1"),
        (lambda s, t, T: (_kl_div(s, t, T) * T ** 2).item(), "return the loss as a tensor"),
        (lambda s, t, T: _kl_div(s.detach(), t, T) * T ** 2, "no gradient reaches the student's logits"),
        (lambda s, t, T: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1) * T * T,
         "return one number")],
    "check_kd_loss": [
        (lambda s, t, y, T, a: (1 - a) * soft_kl(s, t, T) + a * F.cross_entropy(s, y), "alpha swapped"),
        (lambda s, t, y, T, a: a * _kl_div(s, t, T) + (1 - a) * F.cross_entropy(s, y), "no T^2"),
        (lambda s, t, y, T, a: a * soft_kl(s, t, T) + (1 - a) * F.cross_entropy(s / T, y), "hard at T"),
        (lambda s, t, y, T, a: a * _kl_div(t, s, T) * T * T + (1 - a) * F.cross_entropy(s, y), "reversed KL"),
        (lambda s, t, y, T, a: a * soft_kl(s, t, T), "no hard term"),
        (lambda s, t, y, T, a: soft_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y), "soft unweighted")],
    "check_ece": [
        (lambda lo, y, b: _ece_loop(lo, y, b, upper_open=True), "drops 1.0"),
        (lambda lo, y, b: _ece_loop(lo, y, b, weighted=False), "unweighted"),
        (lambda lo, y, b: _ece_loop(lo, y, b, absolute=False), "no abs"),
        (lambda lo, y, b: _ece_loop(lo, y, b, true_class=True), "true class"),
        (lambda lo, y, b: calibration(lo, y, b)["ece"] + 0.5, "expected"),
        (lambda lo, y, b: _ece_from_logits(lo, y, b), "no softmax")],
    "check_attention_map": [
        (lambda f: (lambda a: a / a.norm(dim=1, keepdim=True))(f.pow(2).mean(1).flatten(1)), "zero norm"),
        (lambda f: _att(f, power=1), "not squared"),
        (lambda f: F.normalize(f.mean(1).flatten(1), dim=1), "signed"),
        (lambda f: _att(f, norm=False), "not normalised"),
        (lambda f: (lambda a: a / a.norm())(f.pow(2).mean(1).flatten(1)), "batch norm"),
        (lambda f: (lambda a: a / a.sum(1, keepdim=True).clamp_min(1e-12))(f.pow(2).mean(1).flatten(1)), "L1"),
        (lambda f: F.normalize(f.pow(2).mean(1).flatten(1), dim=1).reshape(f.shape[0], *f.shape[2:]), "not flattened"),
        (lambda f: _att(f, dims=(2, 3)), "mean over positions")],
    "check_attention_loss": [
        (lambda s, t: _att_loss(s, t, resize="none"), "no resize"),
        (lambda s, t: _att_loss(s, t, resize="teacher"), "resized teacher"),
        (lambda s, t: (attention_map(F.adaptive_avg_pool2d(s, t.shape[-2:])) - attention_map(t)).pow(2).mean(),
         "pooled"),
        (lambda s, t: _att_loss(s, t, reduce="norm"), "norm of difference"),
        (lambda s, t: _att_loss(s, t, reduce="sum"), "sum"),
        (lambda s, t: _att_loss(s, t, reduce="rows"), "sum over positions"),
        (lambda s, t: ((F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
                        if s.shape[-2:] != t.shape[-2:] else s).pow(2).mean(1).flatten(1)
                       - t.pow(2).mean(1).flatten(1)).pow(2).mean(), "raw maps")],
    "check_global_threshold": [
        (lambda ws, a: [_threshold([w], a) for w in ws], "per layer"),
        (lambda ws, a: _threshold(ws, 1 - a), "kept amount"),
        (lambda ws, a: _threshold(ws, a, signed=True), "signed"),
        (lambda ws, a: torch.kthvalue(torch.cat([w.abs().flatten() for w in ws]), round(a * 123)).values.item(),
         "k = 0"),
        (lambda ws, a: _threshold(ws, a, guard=False), "k = 0 index"),
        (lambda ws, a: _threshold(ws, a, offset=1), "one too many"),
        (lambda ws, a: _threshold(ws, a, offset=-1) if round(a * 123) > 1 else -1.0, "one too few"),
        (lambda ws, a: _threshold(ws, a, k_of=int), "truncated"),
        (lambda ws, a: _threshold(ws[:1], a), "first layer")],
    "check_cubic_sparsity": [
        (_schedule(flip=True), "t^3"), (_schedule(power=1), "linear"), (_schedule(power=2), "square"),
        (_schedule(clamp=False), "no clamp"), (_schedule(floor_div=True), "integer division"),
        (_schedule(use_initial=False), "initial ignored")],
    "check_l1_filter_ranking": [
        (lambda conv: torch.argsort(conv.weight.abs().sum((1, 2, 3))), "ascending"),
        (_rank(lambda w: w.flatten(1).norm(dim=1)), "L2"), (_rank(lambda w: w.sum((1, 2, 3))), "signed"),
        (_rank(lambda w: w.abs().flatten(1).max(1).values), "max"),
        (_rank(lambda w: w.abs().sum((0, 2, 3))), "input channels"),
        (lambda conv: conv.weight.abs().sum((1, 2, 3)).tolist(), "return channel indices")],
    "check_slice_conv_bn_conv": [
        (_slicer(bn_stats=False), "running_mean and running_var were not copied"),
        (_slicer(next_dim=0), "the next conv still reads 6 input channels"),
        (_slicer(sort=(False, True)), "another order than the conv's output channels"),
        (_slicer(conv_bias=False), "the conv's bias was dropped"),
        (_slicer(next_bias=False), "the next conv's bias was dropped"),
        (_slicer(slice_bn=False), "the BatchNorm still has 6 channels"),
        (_slicer(in_place=True), "changed the original conv, BatchNorm or next conv in place"),
        (lambda conv, bn, nxt, keep: _slicer()(conv, bn, nxt, keep)[:2], "return three new modules")],
    "check_keep_counts": [
        (_keep(lambda n, a: max(1, round(a * n))), "kept amount"),
        (_keep(lambda n, a: max(1, n - int(a * n))), "truncated"),
        (_keep(lambda n, a: max(1, int((1 - a) * n))), "truncated kept"),
        (_keep(lambda n, a: n - round(a * n)), "emptied"),
        (lambda ch, a: [max(1, n - round((a[0] if isinstance(a, list) else a) * n)) for n in ch], "first ratio")],
    "check_pareto_front": [
        (_front(max_cost=True), "max cost"), (_front(strict=True), "strict"), (_front(twins=True), "twins removed"),
        (lambda acc, cost: [i for i, keep in enumerate(pareto_mask(acc, cost)) if keep], "not the indices")],
    "check_scale_zero_point": [
        (_params(widen=False, guard=True), "no widening"), (_params(steps=256, guard=True), "256"),
        (_params(rounded=False, guard=True), "not rounded"), (_params(sign=1.0, guard=True), "sign"),
        (_params(), "zero range"),
        (lambda lo, hi: np.float32(1.0), "return two values")],
    "check_fake_quantize": [
        (_fq(lo=-10 ** 6, hi=10 ** 6), "no clamp"), (_fq(zp_first=False), "zero after clamp"),
        (_fq(rounding=torch.floor), "floor"), (_fq(rounding=torch.trunc), "truncate"),
        (_fq(lo=-128, hi=127), "int8 range"), (_fq(dequantize=False), "q returned"),
        (_fq(subtract=False), "zero point kept")],
}


def _ece_from_logits(logits, labels, bins):
    """ECE with the top logit (clipped to [0, 1]) as the confidence: no softmax."""
    confidence = logits.max(1).values.clamp(0, 1)
    correct = (logits.argmax(1) == labels).float()
    total = 0.0
    for b in range(bins):
        inside = (confidence >= b / bins) & ((confidence < (b + 1) / bins) if b < bins - 1 else (confidence <= 1))
        if inside.any():
            total += inside.float().mean().item() * (correct[inside].mean() - confidence[inside].mean()).abs().item()
    return total


@pytest.mark.parametrize("name, wrong, expected", [(n, w, e) for n, cases in WRONG.items() for w, e in cases],
                         ids=[f"{n}-{e}" for n, cases in WRONG.items() for _, e in cases])
def test_a_common_wrong_answer_gets_its_message(name, wrong, expected):
    verdict = getattr(exercises, name)(wrong)
    assert verdict.status == "wrong" and not verdict.passed, str(verdict)
    assert verdict.mistake == expected or expected in str(verdict), str(verdict)


def test_every_catalogued_mistake_has_a_learner_written_wrong_answer():
    checks = {ex.check: ex for ex in ALL}
    modules = dict(_exercises())
    for check_name, cases in WRONG.items():
        function = checks[check_name].function.removeprefix("my_")
        exercise = next(e for e in modules.values() if e.function == function)
        named = {e for _, e in cases}
        assert {m.key for m in exercise.mistakes} <= named, (check_name, {m.key for m in exercise.mistakes} - named)


def test_a_learner_function_that_raises_is_reported_not_raised():
    verdict = exercises.check_soft_targets(lambda logits, T: logits.nonexistent)
    assert verdict.status == "wrong" and "your function raised AttributeError" in str(verdict)


def test_passing_something_that_is_not_a_function_is_a_wrong_answer():
    verdict = exercises.check_cubic_sparsity(0.5)
    assert verdict.status == "wrong" and "pass the function itself" in str(verdict)


def test_a_check_leaves_the_callers_random_stream_and_thread_count_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seen = []
    exercises.check_slice_conv_bn_conv(lambda *args: seen.append(args) or _slicer()(*args))
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads
    assert len(seen) == 5 and isinstance(seen[0][0], nn.Conv2d)  # the learner's function ran on every case


def test_the_verdict_shows_as_its_one_line_message():
    verdict = exercises.check_cubic_sparsity(_schedule())
    assert repr(verdict) == str(verdict) == verdict.message and "\n" not in verdict.message


# ---------------------------------------------------------------- tools/add_exercises.py

def _copy_notebooks(tmp_path):
    """Copies of two notebooks and their solutions as they were before the tool inserted its cells."""
    nb = tmp_path / "notebooks"
    (nb / "solutions").mkdir(parents=True)
    for name in ("02_soft_targets_and_temperature", "05_magnitude_pruning"):
        for source, target in ((ROOT / "notebooks" / f"{name}.ipynb", nb / f"{name}.ipynb"),
                               (ROOT / "notebooks" / "solutions" / f"{name}_solutions.ipynb",
                                nb / "solutions" / f"{name}_solutions.ipynb")):
            notebook = json.loads(source.read_text())
            notebook["cells"] = [c for c in notebook["cells"] if not c["id"].startswith(("ex-", "challenge-"))]
            target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return nb


def test_the_shipped_notebooks_hold_every_exercise_cell():
    assert _tool("add_exercises").main(["--check"]) == 0


def test_add_exercises_inserts_the_cells_once_after_the_exercises_section(tmp_path, monkeypatch):
    tool = _tool("add_exercises")
    nb = _copy_notebooks(tmp_path)
    monkeypatch.setattr(tool, "EXERCISES", {k: v for k, v in CELLS.items() if k[:2] in ("02", "05")})
    before = json.loads((nb / "02_soft_targets_and_temperature.ipynb").read_text())["cells"]
    assert tool.main(["--notebooks", str(nb), "--check"]) == 1  # missing: says so, writes nothing
    assert json.loads((nb / "02_soft_targets_and_temperature.ipynb").read_text())["cells"] == before
    assert tool.main(["--notebooks", str(nb)]) == 0
    first = {p.name: p.read_text() for p in nb.rglob("*.ipynb")}
    assert tool.main(["--notebooks", str(nb)]) == 0 and tool.main(["--notebooks", str(nb), "--check"]) == 0
    assert {p.name: p.read_text() for p in nb.rglob("*.ipynb")} == first  # idempotent
    cells = json.loads(first["02_soft_targets_and_temperature.ipynb"])["cells"]
    ids = [c["id"] for c in cells]
    assert len(ids) == len(set(ids)) and cells[:len(before)] == before  # only additions, at the end here
    assert ids[len(before):] == ["ex-02-header", "ex-02-soft-targets-task", "ex-02-soft-targets-stub",
                                 "ex-02-soft-targets-check", "ex-02-kd-soft-term-task", "ex-02-kd-soft-term-stub",
                                 "ex-02-kd-soft-term-check"]
    solutions = json.loads(first["05_magnitude_pruning_solutions.ipynb"])["cells"]
    assert [c["id"] for c in solutions][-3:] == ["ex-05-cubic-sparsity-solution-task", "ex-05-cubic-sparsity-solution",
                                                 "ex-05-cubic-sparsity-solution-check"]


def _run_like_a_notebook(sources):
    """Execute cell sources in one namespace; what each cell's last expression shows (as IPython would)."""
    namespace, shown = {"torch": torch}, []
    for source in sources:
        tree = ast.parse(source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "cell", "exec"), namespace)
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), "cell", "eval"), namespace))
    return shown


def test_the_inserted_stub_and_check_cells_run_and_say_not_attempted(tmp_path, monkeypatch):
    tool = _tool("add_exercises")
    nb = _copy_notebooks(tmp_path)
    monkeypatch.setattr(tool, "EXERCISES", {k: v for k, v in CELLS.items() if k[:2] == "05"})
    tool.main(["--notebooks", str(nb)])
    for path, status in ((nb / "05_magnitude_pruning.ipynb", "not attempted"),
                         (nb / "solutions" / "05_magnitude_pruning_solutions.ipynb", "correct")):
        cells = json.loads(path.read_text())["cells"]
        shown = _run_like_a_notebook("".join(c["source"]) for c in cells
                                     if c["id"].startswith("ex-") and c["cell_type"] == "code")
        assert [v.status for v in shown] == [status, status], [str(v) for v in shown]

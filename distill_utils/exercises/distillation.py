"""Checks for notebooks 02 and 03: soft targets at temperature T, the KD soft term, the KD loss.

Each compares the learner's function with ``distill_utils.distill`` (``soft_kl``, ``kd_loss``) and
torch's softmax, on random logits and on edge cases: logits of 1000 (``exp`` overflows), T below 1,
identical student and teacher (the loss is 0), alpha = 0 and 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_utils.distill import kd_loss, soft_kl
from distill_utils.exercises.core import Case, Exercise, Invalid, Mistake, check, close

__all__ = ["check_soft_targets", "check_kd_soft_term", "check_kd_loss"]


def _logits(*shape, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------- notebook 02: soft targets

def _naive_softmax(logits, T):
    z = (logits / T).exp()  # no max subtracted: exp(1000) is inf
    return z / z.sum(-1, keepdim=True)


SOFT_TARGETS = Exercise(
    "soft_targets", lambda logits, T: F.softmax(logits / T, -1), close, against="F.softmax(logits / T, dim=-1)",
    cases=lambda: (
        Case("random logits (8, 10) at T = 1", (_logits(8, 10), 1.0)),
        Case("T = 4", (_logits(8, 10, seed=1), 4.0)),
        Case("T = 0.5 (sharper than T = 1)", (_logits(8, 10, seed=2), 0.5)),
        Case("T = 20", (_logits(4, 10, seed=3), 20.0)),
        Case("logits of +-1000 at T = 1", (torch.tensor([[1000.0, 999.0, 0.0, -1000.0]]), 1.0)),
        Case("one example, 3 classes, T = 2", (torch.tensor([[2.0, -1.0, 0.5]]), 2.0))),
    mistakes=(
        Mistake("overflow", "logits of 1000 overflow exp() (inf / inf = NaN): subtract each row's maximum "
                            "from the logits before exp(); it changes nothing else", _naive_softmax),
        Mistake("times T", "you multiplied the logits by T: divide them by T (a larger T must flatten the "
                           "distribution)", lambda z, T: F.softmax(z * T, -1)),
        Mistake("no T", "the temperature is missing: softmax(logits / T), not softmax(logits)",
                lambda z, T: F.softmax(z, -1)),
        Mistake("T after softmax", "you divided the probabilities by T: divide the logits by T, then take the "
                                   "softmax", lambda z, T: F.softmax(z, -1) / T),
        Mistake("log", "these are log-probabilities: return probabilities (softmax, not log_softmax)",
                lambda z, T: F.log_softmax(z / T, -1)),
        Mistake("dim 0", "the softmax runs over the batch (dim 0): it must run over the classes (the last "
                         "dimension), so that each row sums to 1", lambda z, T: F.softmax(z / T, 0)),
    ))


def check_soft_targets(fn):
    """Check ``fn(logits, T)``, softmax of (batch, classes) logits at temperature T (notebook 02)."""
    return check(SOFT_TARGETS, fn)


# ---------------------------------------------------------------- notebook 02: the KD soft term

def _loss_and_grad(fn, args):
    """(loss, gradient w.r.t. the student's logits or None): the T^2 is about gradients."""
    student, teacher, T = (a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    student.requires_grad_(True)
    loss = fn(student, teacher, T)
    if not isinstance(loss, torch.Tensor):
        return Invalid(f"it returned a {type(loss).__name__}; return the loss as a tensor (no .item()), so "
                       "that it can be differentiated")
    grad = None
    if loss.requires_grad and loss.dim() == 0:
        grad = torch.autograd.grad(loss, student)[0]
    return loss.detach(), grad


def _compare_loss_and_grad(got, expected):
    (loss, grad), (ref_loss, ref_grad) = got, expected
    if loss.dim() != 0:
        return f"it returned shape {tuple(loss.shape)}: return one number, the mean over the batch"
    if (problem := close(loss, ref_loss)) is not None:
        return problem
    if grad is None:
        return ("no gradient reaches the student's logits (a .detach(), .item() or torch.no_grad() inside?): "
                "the loss must be differentiable")
    if (problem := close(grad, ref_grad, rtol=1e-3)) is not None:
        return f"the gradient with respect to the student's logits differs: {problem}"
    return None


def _kl(log_p, log_q):
    """KL(p || q) per example, from log-probabilities: (batch, classes) -> (batch,)."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _kd(s, t, T, T_student=None, T_teacher=None, reverse=False):
    """KL(teacher_T || student_T) per example (reversed: KL(student || teacher)), without T^2."""
    log_p, log_q = F.log_softmax(t / (T_teacher or T), 1), F.log_softmax(s / (T_student or T), 1)
    return _kl(log_q, log_p) if reverse else _kl(log_p, log_q)


def _cross_entropy(s, t, T):
    return -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1)


KD_SOFT_TERM = Exercise(
    "kd_soft_term", lambda s, t, T: _loss_and_grad(soft_kl, (s, t, T)), _compare_loss_and_grad,
    cases=lambda: (
        Case("random logits (8, 10) at T = 1", (_logits(8, 10), _logits(8, 10, seed=1), 1.0)),
        Case("T = 4", (_logits(8, 10, seed=2), _logits(8, 10, seed=3), 4.0)),
        Case("T = 8, logits ten times larger", (_logits(6, 10, seed=4, scale=30), _logits(6, 10, seed=5, scale=30),
                                                8.0)),
        Case("identical student and teacher (the loss is 0)", (_logits(4, 10, seed=6), _logits(4, 10, seed=6),
                                                                2.0)),
        Case("one example, T = 2", (_logits(1, 5, seed=7), _logits(1, 5, seed=8), 2.0))),
    run=_loss_and_grad, against="distill_utils.distill.soft_kl",
    mistakes=(
        Mistake("no T^2", "your loss is T^2 times too small: the gradient scaling is missing (multiply the KL "
                          "by T**2)", lambda s, t, T: _kd(s, t, T).mean()),
        Mistake("T once", "your loss is T times too small: the scaling is T**2, not T",
                lambda s, t, T: _kd(s, t, T).mean() * T),
        Mistake("reversed KL", "KL in the wrong direction: the soft term is KL(teacher || student) = "
                               "sum p_teacher * (log p_teacher - log p_student)",
                lambda s, t, T: _kd(s, t, T, reverse=True).mean() * T * T),
        Mistake("batch sum", "summed over the batch instead of averaged: divide by the batch size "
                             "(reduction='batchmean')", lambda s, t, T: _kd(s, t, T).sum() * T * T),
        Mistake("mean", "averaged over the classes too (reduction='mean'): sum the KL over the classes and "
                        "average over the batch (reduction='batchmean')",
                lambda s, t, T: _kd(s, t, T).mean() / s.shape[1] * T * T),
        Mistake("cross-entropy", "this is the cross-entropy -sum p log q, the KL plus the teacher's entropy "
                                 "(same gradient, but not 0 when student and teacher agree): subtract "
                                 "sum p log p", lambda s, t, T: _cross_entropy(s, t, T).mean() * T * T),
        Mistake("student at T=1", "the student's logits are not divided by T: soften both distributions",
                lambda s, t, T: _kd(s, t, T, T_student=1.0).mean() * T * T),
        Mistake("teacher at T=1", "the teacher's logits are not divided by T: soften both distributions",
                lambda s, t, T: _kd(s, t, T, T_teacher=1.0).mean() * T * T),
    ))


def check_kd_soft_term(fn):
    """Check ``fn(student_logits, teacher_logits, T)``, ``T^2 * KL(softmax(t/T) || softmax(s/T))`` with
    batch-mean reduction, and its gradient (notebook 02)."""
    return check(KD_SOFT_TERM, fn)


# ---------------------------------------------------------------- notebook 03: the KD loss

def _labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


KD_LOSS = Exercise(
    "kd_loss", lambda s, t, y, T, a: kd_loss(s, t, y, T=T, alpha=a), lambda g, e: close(g, e),
    cases=lambda: (
        Case("random logits, T = 4, alpha = 0.9", (_logits(8, 10), _logits(8, 10, seed=1), _labels(8), 4.0, 0.9)),
        Case("T = 2, alpha = 0.3", (_logits(8, 10, seed=2), _logits(8, 10, seed=3), _labels(8, 1), 2.0, 0.3)),
        Case("alpha = 1 (the teacher only)", (_logits(6, 10, seed=4), _logits(6, 10, seed=5), _labels(6, 2), 4.0,
                                              1.0)),
        Case("alpha = 0 (the labels only)", (_logits(6, 10, seed=6), _logits(6, 10, seed=7), _labels(6, 3), 4.0,
                                             0.0)),
        Case("T = 1, alpha = 0.7", (_logits(5, 10, seed=8), _logits(5, 10, seed=9), _labels(5, 4), 1.0, 0.7))),
    against="distill_utils.distill.kd_loss",
    mistakes=(
        Mistake("alpha swapped", "alpha weights the wrong term: alpha * soft term + (1 - alpha) * cross-entropy",
                lambda s, t, y, T, a: (1 - a) * soft_kl(s, t, T) + a * F.cross_entropy(s, y)),
        Mistake("no T^2", "your loss is T^2 times too small in its soft term: the gradient scaling is missing "
                          "(the soft term is KL * T**2)",
                lambda s, t, y, T, a: a * _kd(s, t, T).mean() + (1 - a) * F.cross_entropy(s, y)),
        Mistake("hard at T", "the cross-entropy uses the softened logits: compute it on the student's logits "
                             "at T = 1",
                lambda s, t, y, T, a: a * soft_kl(s, t, T) + (1 - a) * F.cross_entropy(s / T, y)),
        Mistake("reversed KL", "KL in the wrong direction: the soft term is KL(teacher || student)",
                lambda s, t, y, T, a: a * soft_kl(t, s, T) + (1 - a) * F.cross_entropy(s, y)),
        Mistake("no hard term", "the cross-entropy term is missing: add (1 - alpha) * cross_entropy(student, labels)",
                lambda s, t, y, T, a: a * soft_kl(s, t, T)),
        Mistake("soft unweighted", "the soft term is not weighted by alpha: alpha * soft + (1 - alpha) * hard",
                lambda s, t, y, T, a: soft_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y)),
    ))


def check_kd_loss(fn):
    """Check ``fn(student_logits, teacher_logits, labels, T, alpha)``, Hinton et al.'s KD loss (notebook 03)."""
    return check(KD_LOSS, fn)

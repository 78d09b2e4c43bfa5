"""Checks for notebook 04: the attention map and the attention-transfer loss (Zagoruyko & Komodakis 2017).

Each compares the learner's function with ``distill_utils.distill.attention_map`` and
``attention_loss`` on random and ReLU-like feature maps, an all-zero map (its norm is 0), maps on
different grids (the student's is resized to the teacher's) and identical maps (the loss is 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_utils.distill import attention_loss, attention_map
from distill_utils.exercises.core import Case, Exercise, Mistake, check, close

__all__ = ["check_attention_map", "check_attention_loss"]


def _features(*shape, seed: int = 0, relu: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.clamp_min(0) if relu else x


def _one_map_zero() -> torch.Tensor:
    x = _features(2, 3, 4, 4, seed=3)
    x[1] = 0.0  # the second image's block is silent: its map has norm 0
    return x


def _raw(feat):
    return feat.pow(2).mean(1).flatten(1)  # (N, H*W), not normalised


ATTENTION_MAP = Exercise(
    "attention_map", attention_map, close, against="distill_utils.distill.attention_map",
    cases=lambda: (
        Case("random features (2, 4, 6, 6)", (_features(2, 4, 6, 6),)),
        Case("ReLU outputs (3, 8, 5, 5)", (_features(3, 8, 5, 5, seed=1, relu=True),)),
        Case("one image, one channel (1, 1, 4, 4)", (_features(1, 1, 4, 4, seed=2),)),
        Case("an all-zero map (its norm is 0)", (_one_map_zero(),))),
    mistakes=(
        Mistake("zero norm", "an all-zero feature map divides by zero (NaN): clamp the norm, e.g. "
                             "a / a.norm(dim=1, keepdim=True).clamp_min(1e-12), or use F.normalize(a, dim=1)",
                lambda f: _raw(f) / _raw(f).norm(dim=1, keepdim=True)),
        Mistake("not squared", "the map must use squared activations, feat.pow(2).mean(1), not |feat|",
                lambda f: F.normalize(f.abs().mean(1).flatten(1), dim=1)),
        Mistake("signed", "the map must use squared activations, feat.pow(2).mean(1): the plain mean lets "
                          "positive and negative activations cancel",
                lambda f: F.normalize(f.mean(1).flatten(1), dim=1)),
        Mistake("not normalised", "the map is not L2-normalised: divide each image's map by its L2 norm, so that "
                                  "only its shape counts", _raw),
        Mistake("batch norm", "normalised by the norm of the whole batch: normalise each image's map on its own "
                              "(norm over dim 1)", lambda f: _raw(f) / _raw(f).norm()),
        Mistake("L1", "normalised to sum 1 (L1): the attention map has unit L2 norm",
                lambda f: _raw(f) / _raw(f).sum(1, keepdim=True).clamp_min(1e-12)),
        Mistake("not flattened", "flatten the map to (N, H*W) with .flatten(1)",
                lambda f: F.normalize(f.pow(2).mean(1).flatten(1), dim=1).view(f.shape[0], *f.shape[2:])),
        Mistake("mean over positions", "the mean runs over the positions (dims 2, 3): average over the channels "
                                       "(dim 1), leaving one number per position",
                lambda f: F.normalize(f.pow(2).mean((2, 3)), dim=1)),
    ))


def check_attention_map(fn):
    """Check ``fn(feat)``: (N, C, H, W) -> (N, H*W), channel-mean of squared activations, unit L2 norm (notebook 04)."""
    return check(ATTENTION_MAP, fn)


def _resized(s, size):
    return F.interpolate(s, size=size, mode="bilinear", align_corners=False)


def _difference(s, t):
    if s.shape[-2:] != t.shape[-2:]:
        s = _resized(s, t.shape[-2:])
    return attention_map(s) - attention_map(t)


ATTENTION_LOSS = Exercise(
    "attention_loss", attention_loss, close, against="distill_utils.distill.attention_loss",
    cases=lambda: (
        Case("student (2, 3, 6, 6), teacher (2, 5, 6, 6)", (_features(2, 3, 6, 6), _features(2, 5, 6, 6, seed=1))),
        Case("ReLU outputs", (_features(4, 8, 7, 7, seed=2, relu=True), _features(4, 16, 7, 7, seed=3, relu=True))),
        Case("student on an 8x8 grid, teacher on 4x4",
             (_features(2, 3, 8, 8, seed=4), _features(2, 6, 4, 4, seed=5))),
        Case("student on 3x3, teacher on 6x6", (_features(2, 3, 3, 3, seed=6), _features(2, 6, 6, 6, seed=7))),
        Case("identical features (the loss is 0)", (_features(2, 4, 5, 5, seed=8), _features(2, 4, 5, 5, seed=8)))),
    mistakes=(
        Mistake("no resize", "the student's map is on another grid than the teacher's: resize the student's "
                             "features to the teacher's H x W first (F.interpolate(s, size=t.shape[-2:], "
                             "mode='bilinear', align_corners=False))",
                lambda s, t: (attention_map(s) - attention_map(t)).pow(2).mean()),
        Mistake("resized teacher", "you resized the teacher's features: resize the student's to the teacher's grid",
                lambda s, t: (attention_map(s) - attention_map(_resized(t, s.shape[-2:]) if s.shape[-2:] != t.shape[-2:]
                                                                 else t)).pow(2).mean()),
        Mistake("pooled", "the student's features are resized by pooling: the package resizes with bilinear "
                          "interpolation (mode='bilinear', align_corners=False)",
                lambda s, t: (attention_map(F.adaptive_avg_pool2d(s, t.shape[-2:])) - attention_map(t)).pow(2).mean()),
        Mistake("norm of difference", "you took the L2 norm of the difference per image (the paper's form); the "
                                      "package uses the mean squared difference, (a_s - a_t).pow(2).mean()",
                lambda s, t: _difference(s, t).norm(dim=1).mean()),
        Mistake("sum", "the squared difference is summed: take its mean over images and positions",
                lambda s, t: _difference(s, t).pow(2).sum()),
        Mistake("sum over positions", "the squared difference is summed over the positions: take its mean over "
                                      "images and positions alike",
                lambda s, t: _difference(s, t).pow(2).sum(1).mean()),
        Mistake("raw maps", "compare normalised attention maps (attention_map of each), not raw squared activations",
                lambda s, t: (_raw(_resized(s, t.shape[-2:]) if s.shape[-2:] != t.shape[-2:] else s) - _raw(t))
                .pow(2).mean()),
    ))


def check_attention_loss(fn):
    """Check ``fn(student_feat, teacher_feat)``: mean squared difference of the attention maps, the
    student's features resized to the teacher's grid when they differ (notebook 04)."""
    return check(ATTENTION_LOSS, fn)

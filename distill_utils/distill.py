"""Distillation losses and ``distill(...)``, a student trained by ``fit`` from a teacher.

Taught in notebooks 02 (soft targets, temperature), 03 (KD) and 04 (feature distillation, DKD).

Every logit loss has one calling convention, so notebooks and sweeps swap them by name::

    loss(student_logits, teacher_logits, labels, T=..., alpha=..., **its own weights)

``alpha`` weights the distillation (soft) term and ``1 - alpha`` the hard-label
cross-entropy. The soft term of KD is ``KL(softmax(t/T) || softmax(s/T)) * T**2``, averaged
over the batch; the ``T**2`` keeps its gradients the same size whatever ``T`` is.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from distill_utils.common import rules
from distill_utils.train import (
    autocast,
    choose_device,
    fingerprint,
    fit,
    for_inference,
    resolve_precision,
    uses_channels_last,
)

__all__ = ["kd_loss", "dkd_loss", "HintLoss", "attention_loss", "LOSSES", "DistillConfig", "distill",
           "teacher_outputs"]


def _check(student_logits, teacher_logits, labels, T, alpha):
    rules.check("T", T)
    rules.check("alpha", alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (batch, classes); "
                         "are both models built with the same num_classes?")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")


def soft_kl(student_logits, teacher_logits, T: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T**2``, batch mean (notebook 02)."""
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.log_softmax(teacher_logits / T, 1),
                    reduction="batchmean", log_target=True) * T * T


def kd_loss(student_logits, teacher_logits, labels, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al. 2015: ``alpha * soft_kl(T) + (1 - alpha) * cross_entropy`` (notebook 03)."""
    _check(student_logits, teacher_logits, labels, T, alpha)
    soft = soft_kl(student_logits, teacher_logits, T) if alpha > 0 else 0.0
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else 0.0
    return alpha * soft + (1 - alpha) * hard


def dkd_loss(student_logits, teacher_logits, labels, T: float = 4.0, alpha: float = 0.5,
             tckd_weight: float = 1.0, nckd_weight: float = 8.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022), notebook 04.

    KD's KL splits into a target-class term (TCKD: KL between the binary distributions
    [p_target, 1 - p_target]) and a non-target term (NCKD: KL between the distributions over
    the other classes, renormalised), weighted ``(1 - p_t_target)`` inside KD. DKD drops that
    weight and gives each term its own: the paper's alpha (``tckd_weight``) and beta
    (``nckd_weight``). Both are times ``T**2``; ``alpha`` mixes with cross-entropy as in KD.
    """
    _check(student_logits, teacher_logits, labels, T, alpha)
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    log_ps, log_pt = F.log_softmax(student_logits / T, 1), F.log_softmax(teacher_logits / T, 1)

    def binary(log_p):  # log [p_target, 1 - p_target]  (batch, 2)
        log_target = log_p[target]
        return torch.stack([log_target, torch.log1p(-log_target.exp().clamp(max=1 - 1e-7))], 1)

    tckd = F.kl_div(binary(log_ps), binary(log_pt), reduction="batchmean", log_target=True)
    masked = lambda z: (z / T).masked_fill(target, float("-inf"))  # noqa: E731 (drop the target class)
    log_qs, log_qt = F.log_softmax(masked(student_logits), 1), F.log_softmax(masked(teacher_logits), 1)
    nckd = (log_qt.exp() * (log_qt - log_qs)).masked_fill(target, 0).sum(1).mean()
    soft = (tckd_weight * tckd + nckd_weight * nckd) * T * T
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


class HintLoss(nn.Module):
    """FitNets (Romero et al. 2015): MSE between a learned regressor of a student feature map
    and the teacher's (notebook 04). A 1x1 conv for maps (N, C, H, W), a linear layer for
    vectors and for tokens (N, T, D: notebook 11's ViT, on the last axis); the student map is
    average-pooled to the teacher's size when they differ."""

    def __init__(self, student_channels: int, teacher_channels: int, spatial: bool = True):
        super().__init__()
        self.regressor = (nn.Conv2d(student_channels, teacher_channels, 1, bias=False) if spatial
                          else nn.Linear(student_channels, teacher_channels, bias=False))

    def forward(self, student_feat, teacher_feat):
        if student_feat.dim() == 4 and student_feat.shape[-2:] != teacher_feat.shape[-2:]:
            student_feat = F.adaptive_avg_pool2d(student_feat, teacher_feat.shape[-2:])
        return F.mse_loss(self.regressor(student_feat), teacher_feat)


def attention_map(feat: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: mean of squared activations over channels, flattened and
    L2-normalised: (N, C, H, W) -> (N, H*W)."""
    return F.normalize(feat.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_feat, teacher_feat) -> torch.Tensor:
    """Attention transfer: mean squared difference of the normalised attention maps (notebook 04)."""
    if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
        student_feat = F.interpolate(student_feat, size=teacher_feat.shape[-2:], mode="bilinear",
                                     align_corners=False)
    return (attention_map(student_feat) - attention_map(teacher_feat)).pow(2).mean()


LOSSES = {"kd": kd_loss, "dkd": dkd_loss}
FEATURE_LOSSES = ("hint", "attention")


@torch.no_grad()  # not inference_mode: these tensors become loss targets that autograd saves
def teacher_outputs(teacher, split, layer: int | None = None, batch_size: int = 512, device=None,
                    precision: str = "auto"):
    """The teacher's logits (N, classes) for every example of ``split`` in order, and, when
    ``layer`` is given, its feature map of that block; both float32 on ``device`` (notebook 03).
    ``precision`` as in ``fit``: the teacher runs under bf16 autocast where the hardware has it."""
    device = choose_device(device)
    precision = resolve_precision(precision, device)
    logits, feats = [], []
    with for_inference(teacher, device):  # the caller's teacher keeps its layout and mode
        channels_last = uses_channels_last(teacher)
        for x, _ in split.batches(batch_size):
            x = x.to(device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
            with autocast(precision, device):
                out, maps = teacher(x, return_features=True)
            logits.append(out.float())
            if layer is not None:
                feats.append(maps[layer].float().contiguous())
    return torch.cat(logits), (torch.cat(feats) if layer is not None else None)


def _identity(teacher) -> dict:
    """Which teacher this is, for a resumed run to match: a fingerprint of its weights (a moved or
    renamed teacher file is the same teacher)."""
    return {"weights": fingerprint(*teacher.state_dict().values())}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Every setting of ``distill`` beyond ``fit``'s (notebook 03).

    ``loss`` names a logit loss in ``LOSSES`` (``"kd"``, ``"dkd"``) called with ``T``, ``alpha``
    and ``loss_kwargs``. ``feature`` adds ``feature_weight`` times a feature loss between block
    ``student_layer`` and ``teacher_layer``: ``"hint"`` (FitNets, its regressor is trained
    with the student) or ``"attention"`` (attention transfer). ``cache``: compute the teacher's
    outputs once and reuse them every epoch (without augmentation)."""
    loss: str = "kd"
    T: float = 4.0
    alpha: float = 0.9
    feature: str | None = None
    feature_weight: float = 1.0
    student_layer: int = -1
    teacher_layer: int = -1
    cache: bool = True
    loss_kwargs: dict | None = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {self.loss!r}; choose one of {sorted(LOSSES)}")
        if self.feature not in (None, *FEATURE_LOSSES):
            raise ValueError(f"unknown feature loss {self.feature!r}; choose None or one of {FEATURE_LOSSES}")
        for name in ("T", "alpha", "feature_weight"):
            rules.check(name, getattr(self, name))


def distill(student, teacher, data, config: DistillConfig | None = None, **settings) -> list[dict]:
    """Train ``student`` on ``data`` to match ``teacher``; returns ``fit``'s history (notebook 03).

    ``config`` and/or keywords set the distillation (``loss``, ``T``, ``alpha``, ``feature``, ...:
    see ``DistillConfig``); every other keyword (``epochs``, ``lr``, ``augment``, ``precision``,
    ``device``, ...) goes to ``fit``. Without ``augment`` the teacher's outputs are computed once
    and reused every epoch (``cache``); with it the teacher sees each augmented batch, exactly
    like the student. A cached feature map is kept for every training image (teacher block 1 on
    60k images: 750 MB), logits are small. The distillation settings and the teacher's weights
    fingerprint go into what a resumed run must match.
    """
    own = {f.name for f in dataclasses.fields(DistillConfig)}
    cfg = dataclasses.replace(config or DistillConfig(), **{k: v for k, v in settings.items() if k in own})
    fit_kwargs = {k: v for k, v in settings.items() if k not in own}
    loss, T, alpha, feature, feature_weight = cfg.loss, cfg.T, cfg.alpha, cfg.feature, cfg.feature_weight
    student_layer, teacher_layer, kwargs = cfg.student_layer, cfg.teacher_layer, dict(cfg.loss_kwargs or {})
    device = choose_device(fit_kwargs.pop("device", None))
    precision = resolve_precision(fit_kwargs.pop("precision", "auto"), device)
    augment = fit_kwargs.get("augment", False)
    with for_inference(teacher, device):  # the caller's teacher is left as it was afterwards
        logit_loss = LOSSES[loss]
        train_split = getattr(data, "train", data)
        layer = teacher_layer if feature else None
        params, feat_loss = list(student.parameters()), None
        if feature:
            x, was_training = train_split.x[:2].to(device), student.training
            with torch.no_grad():  # eval mode: probing shapes must not touch BatchNorm statistics
                s_feat = student.to(device).eval()(x, return_features=True)[1][student_layer]
                t_feat = teacher(x, return_features=True)[1][teacher_layer]
            student.train(was_training)
            if feature == "hint":
                width = [f.shape[1] if f.dim() == 4 else f.shape[-1] for f in (s_feat, t_feat)]  # channels / token
                feat_loss = HintLoss(*width, spatial=s_feat.dim() == 4).to(device)
                params += list(feat_loss.parameters())
            else:
                if s_feat.dim() != 4 or t_feat.dim() != 4:
                    raise ValueError("attention transfer needs feature maps (N, C, H, W) from both models; "
                                     "choose conv blocks with student_layer / teacher_layer")
                feat_loss = attention_loss
        cached = (teacher_outputs(teacher, train_split, layer, device=device, precision=precision)
                  if cfg.cache and not augment else None)

        def step(model, x, y, index):  # runs under fit's autocast; the losses are computed in float32
            if cached is not None:
                t_logits = cached[0][index]
                t_feat = cached[1][index] if feature else None
            else:
                with torch.no_grad():
                    t_logits, t_maps = teacher(x, return_features=True)
                t_logits, t_feat = t_logits.float(), (t_maps[teacher_layer].float() if feature else None)
            s_logits, s_maps = model(x, return_features=True)
            s_logits = s_logits.float()
            with torch.autocast(device.type, enabled=False):
                total = logit_loss(s_logits, t_logits, y, T=T, alpha=alpha, **kwargs)
                if feature:
                    total = total + feature_weight * feat_loss(s_maps[student_layer].float(), t_feat)
            return total, s_logits

        details = dict(op="distill", loss=loss, T=T, alpha=alpha, feature=feature, teacher=_identity(teacher),
                       feature_weight=feature_weight if feature else None,
                       layers=[student_layer, teacher_layer] if feature else None, loss_kwargs=kwargs or None)
        return fit(student, data, step=step, params=params, device=device, precision=precision,
                   details={k: v for k, v in details.items() if v is not None}, **fit_kwargs)

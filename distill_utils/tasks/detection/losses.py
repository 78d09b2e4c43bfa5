"""The detector's training loss and distillation for detection (notebook 12).

Each loss is short enough to be written out in a notebook cell (a test checks the notebook's
copies agree); they use only ``torch``, ``torch.nn.functional as F`` and ``nn``.

- ``detection_loss``: CenterNet's penalty-reduced focal loss on the heatmap (``focal_loss``) plus
  L1 on size and offset at the object centres.
- ``heatmap_kd``: the teacher's heatmap probabilities as soft targets for the student's.
- ``FeatureImitation``: Wang et al., CVPR 2019, "Distilling Object Detectors with Fine-grained
  Feature Imitation": the student's last feature map through a 1x1 conv adapter, compared with
  the teacher's only near objects (``imitation_mask``), or everywhere with ``mask=None``.
- ``distill_detection_loss``: the three together, with weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["focal_loss", "detection_loss", "heatmap_kd", "imitation_mask", "FeatureImitation",
           "distill_detection_loss"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of
    object centres (cells where ``target`` is 1): ``-(1 - p)^2 log p`` at a centre,
    ``-(1 - y)^4 p^2 log(1 - p)`` elsewhere, ``p = sigmoid(logits)``, ``y`` the Gaussian target
    (notebook 12)."""
    pos = (target == 1).float()
    p = torch.sigmoid(logits)
    pos_loss = (1 - p).pow(2) * F.logsigmoid(logits) * pos
    neg_loss = (1 - target).pow(4) * p.pow(2) * F.logsigmoid(-logits) * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def detection_loss(heads: dict, targets: dict, size_weight: float = 0.1, offset_weight: float = 1.0) -> dict:
    """CenterNet's loss (notebook 12): ``focal_loss`` on the heatmap + ``size_weight`` * L1 of (w, h)
    + ``offset_weight`` * L1 of the centre offset, both L1 terms averaged over the object
    centres and the two coordinates (the paper's weights 0.1 and 1). ``heads``: ``split_heads(out)``;
    ``targets``: ``encode(...)``. Returns ``{"loss", "heatmap", "size", "offset"}``."""
    mask = targets["mask"]  # (N, 1, h, w): 1 at object centres
    n = 2 * mask.sum().clamp(min=1)
    heat = focal_loss(heads["heatmap"], targets["heatmap"])
    size = ((heads["size"] - targets["size"]).abs() * mask).sum() / n
    offset = ((heads["offset"] - targets["offset"]).abs() * mask).sum() / n
    return {"loss": heat + size_weight * size + offset_weight * offset, "heatmap": heat, "size": size, "offset": offset}


def heatmap_kd(student_heat: torch.Tensor, teacher_heat: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Heatmap distillation (notebook 12): at every location and class, binary cross-entropy between
    the teacher's probability ``sigmoid(t / T)`` (the soft target) and the student's ``sigmoid(s / T)``,
    averaged over all locations and classes, times ``T**2`` (as in KD, so gradients keep their size
    whatever ``T`` is). Per location this is ``KL(Bernoulli(t) || Bernoulli(s))`` plus the teacher's
    own entropy, which the student cannot change: the same gradients as the KL, but the value is not
    0 when the student matches the teacher. Inputs: heatmap logits (N, classes, h, w)."""
    if student_heat.shape != teacher_heat.shape:
        raise ValueError(f"student heatmap {tuple(student_heat.shape)} and teacher heatmap "
                         f"{tuple(teacher_heat.shape)} must have the same shape; are both detectors built for "
                         "the same classes and image size?")
    return F.binary_cross_entropy_with_logits(student_heat / T, torch.sigmoid(teacher_heat / T)) * T * T


def imitation_mask(heatmap: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Where feature imitation looks (notebook 12): the locations whose ground-truth Gaussian
    (``encode(...)["heatmap"]``, any class) exceeds ``threshold``, as a float mask (N, 1, h, w).

    This is the CenterNet form of Wang et al.'s near-object anchor locations: the neighbourhood of
    each object's centre. A Gaussian of radius r (``gaussian_radius``) exceeds 0.1 within about
    0.36 * (2r + 1) cells of the centre: the centre and its 4 neighbours for r = 1, a 3x3 square
    for r = 2; a lower threshold widens it, up to the square of side 2r + 1 where it is cut off."""
    return (heatmap.amax(1, keepdim=True) > threshold).float()


class FeatureImitation(nn.Module):
    """Fine-grained feature imitation (Wang et al. 2019; notebook 12): a 1x1 conv adapter maps the
    student's feature map (N, Cs, h, w) to the teacher's channels (N, Ct, h, w); the loss is the
    squared difference summed over channels and over the masked locations, divided by twice the
    number of masked locations: ``sum(I * (adapter(s) - t)^2) / (2 * sum(I))``. ``mask=None``
    imitates everywhere (every location counts)."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_feat, teacher_feat, mask=None):
        diff = (self.adapter(student_feat) - teacher_feat).pow(2).sum(1, keepdim=True)  # (N, 1, h, w)
        if mask is None:
            mask = torch.ones_like(diff)
        return (diff * mask).sum() / (2 * mask.sum().clamp(min=1))


def distill_detection_loss(student, teacher, targets: dict, imitation=None, T: float = 1.0, kd: float = 1.0,
                           feature: float = 0.0, mask_threshold: float | None = 0.1) -> dict:
    """Detection distillation (notebook 12): ``detection_loss`` of the student + ``kd`` * ``heatmap_kd``
    + ``feature`` * ``imitation`` (a ``FeatureImitation``) of the last feature maps, masked by
    ``imitation_mask(targets["heatmap"], mask_threshold)`` (``mask_threshold=None``: unmasked).
    ``student`` and ``teacher``: ``model(x, return_features=True)``, i.e. ``(out, feats)``.
    Returns ``{"loss", "heatmap", "size", "offset", "kd", "feature"}``."""
    (s_out, s_feats), (t_out, t_feats) = student, teacher
    c = targets["heatmap"].shape[1]
    heads = {"heatmap": s_out[:, :c], "size": s_out[:, c:c + 2], "offset": s_out[:, c + 2:c + 4]}
    parts = detection_loss(heads, targets)
    parts["kd"] = heatmap_kd(s_out[:, :c], t_out[:, :c], T) if kd else s_out.new_zeros(())
    if feature:
        mask = None if mask_threshold is None else imitation_mask(targets["heatmap"], mask_threshold)
        parts["feature"] = imitation(s_feats[-1], t_feats[-1], mask)
    else:
        parts["feature"] = s_out.new_zeros(())
    parts["loss"] = parts["loss"] + kd * parts["kd"] + feature * parts["feature"]
    return parts

"""A small CenterNet (Zhou et al. 2019, "Objects as Points"): the detector of notebook 12.

An object is the peak of a per-class heatmap at its box centre, plus the box size (w, h) and
the sub-cell offset of the centre, all predicted on one map at stride 4. ``CenterNet`` is a
plain conv backbone to stride 4 (two dilated blocks widen what each cell sees, to about 67
pixels) with three small heads; ``width`` scales every layer, so a teacher and a student are
one family. The forward pass returns ONE tensor, the heads stacked on the channel axis::

    out = model(x)                  # (N, classes + 4, S/4, S/4)
    heads = split_heads(out)        # {"heatmap": (N, classes, ...) logits, "size": (N, 2, ...), "offset": (N, 2, ...)}

so ``distill_utils.deploy.export.export_onnx`` exports it unchanged. ``encode`` turns boxes into
the training targets (Gaussian peaks with CenterNet's radius rule) and ``decode`` turns outputs
back into boxes (3x3 max-pool peaks, top-k, ``torchvision.ops.batched_nms``). Sizes and offsets
are in cells of the output map (pixels / 4); boxes are ``(x1, y1, x2, y2)`` in pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image, remove_small_boxes

from distill_utils.models import build_from, data_kwargs
from distill_utils.train import for_inference

__all__ = ["STRIDE", "CenterNet", "centernet", "MODELS", "build_detector", "split_heads", "gaussian_radius",
           "encode", "decode", "detect"]

STRIDE = 4          # input pixels per cell of the output map
HEAT_PRIOR = 0.1    # the heatmap starts near this probability everywhere (CenterNet's bias -2.19)


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c_out, 1))


class CenterNet(nn.Module):
    """Backbone ``features`` (an ``nn.Sequential`` of conv-BN-ReLU blocks: stride 2, 1, 2, then
    dilation 2 and 4 at stride 4) and heads ``heatmap`` (one logit per class), ``size`` and
    ``offset`` (notebook 12). ``model(x, return_features=True)`` returns ``(out, [one map per
    block])``; the last map (stride 4) is what feature imitation compares."""

    def __init__(self, channels=(16, 32, 64, 64, 64), head_channels=32, num_classes=10, in_channels=1):
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels needs 5 counts (one per backbone block), got {tuple(channels)}")
        strides, dilations = (2, 1, 2, 1, 1), (1, 1, 1, 2, 4)
        c_in, blocks = in_channels, []
        for c_out, s, d in zip(channels, strides, dilations):
            blocks.append(_block(c_in, c_out, s, d))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.heatmap = _head(c_in, head_channels, num_classes)
        self.size = _head(c_in, head_channels, 2)
        self.offset = _head(c_in, head_channels, 2)
        nn.init.constant_(self.heatmap[-1].bias, math.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))

    def forward(self, x, return_features: bool = False):
        feats = []
        for block in self.features:
            x = block(x)
            feats.append(x)
        out = torch.cat([self.heatmap(x), self.size(x), self.offset(x)], 1)  # (N, classes + 4, S/4, S/4)
        return (out, feats) if return_features else out


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def centernet(num_classes=10, in_channels=1, image_size=64, width=1.0, channels=None, head_channels=None):
    """A CenterNet for square images of ``image_size`` (a multiple of 4): ``width`` 1 has backbone
    channels 16-32-64-64-64 and heads of 32 channels; ``width`` scales them all (notebook 12).
    ``channels`` (5 counts) and ``head_channels`` override the scaled ones (a pruned network
    records its counts this way)."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        _positive_int(name, value)
    if image_size % STRIDE:
        raise ValueError(f"image_size must be a multiple of the output stride {STRIDE}, got {image_size}; "
                         "make scenes with such a canvas (e.g. 64 or 96)")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number (1.0: the default network), got {width!r}")
    channels = tuple(channels or (max(1, round(c * width)) for c in (16, 32, 64, 64, 64)))
    head = head_channels or max(1, round(32 * width))
    return CenterNet(channels, head, num_classes, in_channels)


MODELS = {"centernet": centernet}


def build_detector(name: str = "centernet", data=None, **kwargs) -> nn.Module:
    """Build a detector by name (``MODELS``) with ``distill_utils.models.build_from``, so
    ``model.spec`` records how to rebuild it (notebook 12). ``data`` (a ``SceneDataset``) fills in
    ``num_classes``, ``in_channels`` and ``image_size``: ``build_detector(data=scenes, width=0.5)``.
    (The classification stem stride that ``data_kwargs`` also returns does not apply: the output
    stride is always ``STRIDE``.)"""
    filled = {}
    if data is not None:
        filled = {k: v for k, v in data_kwargs(data).items() if k != "stem_stride"}
    return build_from(MODELS, name, None, **{**filled, **kwargs})


def split_heads(out: torch.Tensor) -> dict:
    """The detector's stacked output (N, classes + 4, h, w) as ``{"heatmap", "size", "offset"}`` (notebook 12)."""
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] < 5:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"expected a detector's output (N, classes + 4, h, w), got {shape}: is this a classifier? "
                         "Build a detector with build_detector('centernet', data=scenes)")
    c = out.shape[1] - 4
    return {"heatmap": out[:, :c], "size": out[:, c:c + 2], "offset": out[:, c + 2:]}


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius rule (from CornerNet's code, kept as CenterNet uses it): the smallest of
    three radii within which a corner may move while the box keeps ``min_overlap`` IoU with the
    original; ``height``/``width`` in cells. Its second and third roots divide by 2, not 2a,
    as the original code does (notebook 12)."""
    h, w, mo = height.float(), width.float(), min_overlap
    b1, c1 = h + w, w * h * (1 - mo) / (1 + mo)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - mo) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * mo, -2 * mo * (h + w), (mo - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def encode(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, image_size: int) -> dict:
    """Training targets for a batch (notebook 12): ``boxes`` (B, M, 4) xyxy pixels and ``labels``
    (B, M), with label -1 for unused slots (``Scenes.batches`` gives both).

    Returns ``heatmap`` (B, classes, h, w): at each object's centre cell a Gaussian of peak 1,
    radius ``max(0, int(gaussian_radius(ceil(h), ceil(w))))`` and sigma ``(2 r + 1) / 6``, cut off
    outside the radius, the maximum where objects meet; ``size`` and ``offset`` (B, 2, h, w) at
    the centre cells (w, h in cells; centre minus its cell's corner); ``mask`` (B, 1, h, w), 1 at
    the centre cells. Two objects with one centre cell keep one size: the later one."""
    _positive_int("num_classes", num_classes)
    if image_size % STRIDE:
        raise ValueError(f"image_size must be a multiple of {STRIDE}, got {image_size}")
    b, side = len(labels), image_size // STRIDE
    heat = torch.zeros(b * num_classes, side * side)
    size, offset, mask = torch.zeros(b, 2, side, side), torch.zeros(b, 2, side, side), torch.zeros(b, 1, side, side)
    scene, slot = (labels >= 0).nonzero(as_tuple=True)
    if len(scene) == 0:
        return {"heatmap": heat.view(b, num_classes, side, side), "size": size, "offset": offset, "mask": mask}
    box, label = boxes[scene, slot].float().cpu() / STRIDE, labels[scene, slot].cpu()
    if label.max() >= num_classes:
        raise ValueError(f"a label is {int(label.max())}, but the detector has {num_classes} classes")
    centre = (box[:, :2] + box[:, 2:]) / 2  # (K, 2): x, y in cells
    cell = centre.floor().long().clamp(0, side - 1)
    wh = box[:, 2:] - box[:, :2]
    radius = gaussian_radius(wh[:, 1].ceil(), wh[:, 0].ceil()).long().clamp(min=0)  # int() truncates
    sigma = (2 * radius + 1).float() / 6
    grid = torch.arange(side)
    dx, dy = grid - cell[:, :1], grid - cell[:, 1:]  # (K, side) each
    inside = (dx.abs() <= radius[:, None])[:, None, :] & (dy.abs() <= radius[:, None])[:, :, None]
    g = torch.exp(-(dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / (2 * sigma[:, None, None] ** 2)) * inside
    rows = (scene.cpu() * num_classes + label)[:, None].expand(-1, side * side)
    heat.scatter_reduce_(0, rows, g.flatten(1), "amax")
    ys, xs = cell[:, 1], cell[:, 0]
    size[scene.cpu(), :, ys, xs] = wh
    offset[scene.cpu(), :, ys, xs] = centre - cell
    mask[scene.cpu(), 0, ys, xs] = 1.0
    device = boxes.device
    return {"heatmap": heat.view(b, num_classes, side, side).to(device), "size": size.to(device),
            "offset": offset.to(device), "mask": mask.to(device)}


def _gather(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Values of ``maps`` (B, 2, h, w) at flat ``cells`` (B, k): (B, k, 2)."""
    return maps.flatten(2).gather(2, cells[:, None, :].expand(-1, maps.shape[1], -1)).transpose(1, 2)


@torch.no_grad()
def decode(out: torch.Tensor, k: int = 100, threshold: float = 0.1, nms_iou: float = 0.5) -> list[dict]:
    """Boxes from the detector's output (notebook 12): one ``{"boxes" (n, 4) xyxy pixels, "scores"
    (n,), "labels" (n,)}`` per image.

    A peak is a cell whose heatmap probability equals the maximum of its 3x3 neighbourhood
    (``max_pool2d``); the ``k`` highest peaks over all classes are kept if their score is at least
    ``threshold``, turned into boxes (``box_convert`` from centre and size), clipped to the image,
    stripped of empty boxes and passed through per-class ``batched_nms`` at ``nms_iou``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the most detections per image) must be a positive integer, got {k!r}")
    for name, value in (("threshold", threshold), ("nms_iou", nms_iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    heads = split_heads(out)
    heat = heads["heatmap"].float().sigmoid()
    b, c, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.flatten(1).topk(min(k, c * h * w))  # (B, k)
    labels, cells = index // (h * w), index % (h * w)
    size, offset = _gather(heads["size"].float(), cells), _gather(heads["offset"].float(), cells)
    centre = torch.stack([cells % w, cells // w], 2) + offset  # (B, k, 2): x, y in cells
    boxes = box_convert(torch.cat([centre, size.clamp(min=0)], 2) * STRIDE, "cxcywh", "xyxy")
    results = []
    for i in range(b):
        keep = scores[i] >= threshold
        bx, sc, lb = clip_boxes_to_image(boxes[i][keep], (h * STRIDE, w * STRIDE)), scores[i][keep], labels[i][keep]
        keep = remove_small_boxes(bx, 1e-2)
        bx, sc, lb = bx[keep], sc[keep], lb[keep]
        keep = batched_nms(bx, sc, lb, nms_iou)
        results.append({"boxes": bx[keep].cpu(), "scores": sc[keep].cpu(), "labels": lb[keep].cpu()})
    return results


def detect(model, images: torch.Tensor, k: int = 100, threshold: float = 0.1, batch_size: int = 256) -> list[dict]:
    """``decode`` of ``model`` on normalised ``images`` (N, C, S, S), in eval mode, batch by batch;
    the model is left as it was (notebook 12)."""
    results = []
    with for_inference(model) as net, torch.inference_mode():
        device = next(net.parameters()).device
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            results += decode(net(x), k, threshold)
    return results

"""COCO-style mean average precision through pycocotools, built in memory (notebook 12).

``coco_map(predictions, targets, image_size, classes)`` builds a ``COCO`` ground truth and its
detections from tensors (no files), runs ``COCOeval`` and returns ``{"map", "map50",
"per_class"}``: mAP averaged over IoU thresholds 0.50:0.05:0.95, mAP at IoU 0.5, and each
class's AP over the ten thresholds (NaN for a class with no object in the targets). A
prediction matches a ground-truth box of its class when their IoU is at least the threshold;
AP is COCO's 101-point interpolated precision. ``evaluate_detector(model, scenes)`` does it for
a detector on a ``Scenes`` split.
"""
from __future__ import annotations

import contextlib
import io
import math

import torch
from torch import nn

from distill_utils.tasks.detection.detector import detect, split_heads
from distill_utils.train import for_inference

__all__ = ["coco_map", "evaluate_detector", "check_boxes"]


def check_boxes(boxes, image_size: int, what: str) -> None:
    """ValueError unless ``boxes`` (k, 4) are finite xyxy boxes with x2 > x1, y2 > y1, inside the
    image (notebook 12)."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{what}: boxes must be a tensor (k, 4) of (x1, y1, x2, y2), got {shape}")
    if len(boxes) == 0:
        return
    b = boxes.detach().float()
    if not torch.isfinite(b).all():
        raise ValueError(f"{what}: a box has a NaN or infinite coordinate")
    if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        i = int(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).nonzero()[0])
        raise ValueError(f"{what}: box {b[i].tolist()} is degenerate (x2 <= x1 or y2 <= y1); "
                         "boxes are (x1, y1, x2, y2) with x2 > x1 and y2 > y1")
    if (b < 0).any() or (b > image_size).any():
        i = int(((b < 0) | (b > image_size)).any(1).nonzero()[0])
        raise ValueError(f"{what}: box {b[i].tolist()} lies outside the {image_size}x{image_size} image; "
                         "clip boxes to the image (torchvision.ops.clip_boxes_to_image)")


def _check_item(item, keys, image_size, num_classes, what) -> int:
    if not isinstance(item, dict) or not all(k in item for k in keys):
        raise ValueError(f"{what} must be a dict with {', '.join(keys)}, got {type(item).__name__}")
    check_boxes(item["boxes"], image_size, what)
    n = len(item["boxes"])
    for key in keys[1:]:
        if not isinstance(item[key], torch.Tensor) or item[key].shape != (n,):
            raise ValueError(f"{what}: {key} must be a tensor of shape ({n},), one per box")
    labels = item["labels"]
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels must be class indices 0..{num_classes - 1}, got {labels.tolist()}")
    return n


def _coco_inputs(predictions, targets, image_size, classes):
    """The ground-truth dataset dict and the detection list pycocotools takes (ids from 1: 0 means unmatched)."""
    gt = {"images": [{"id": i + 1, "width": image_size, "height": image_size} for i in range(len(targets))],
          "categories": [{"id": c + 1, "name": str(name)} for c, name in enumerate(classes)], "annotations": []}
    for i, t in enumerate(targets):
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            x1, y1, x2, y2 = box
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": label + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
    dets = [{"image_id": i + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for i, p in enumerate(predictions)
            for (x1, y1, x2, y2), score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist())]
    return gt, dets


def coco_map(predictions, targets, image_size: int, classes) -> dict:
    """mAP of ``predictions`` against ``targets`` with pycocotools (notebook 12).

    ``predictions``: one dict per image, ``{"boxes" (n, 4) xyxy pixels, "scores" (n,), "labels"
    (n,)}`` (what ``decode`` returns; an image with no detection has empty tensors).
    ``targets``: one ``{"boxes", "labels"}`` per image (``scenes.targets(i)``). Every box must lie
    in the ``image_size`` square with x2 > x1 and y2 > y1. A detector that found nothing
    anywhere scores 0.0 (pycocotools cannot load an empty result list, so it is not asked to)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not isinstance(predictions, (list, tuple)) or not isinstance(targets, (list, tuple)):
        raise TypeError("predictions and targets must be lists with one dict per image")
    if len(predictions) != len(targets):
        raise ValueError(f"got predictions for {len(predictions)} images but targets for {len(targets)}; pass one "
                         "dict per image, in the same order (an image with no detection gets empty tensors)")
    n_classes = len(classes)
    n_dets = sum(_check_item(p, ("boxes", "scores", "labels"), image_size, n_classes, f"prediction {i}")
                 for i, p in enumerate(predictions))
    n_objects = sum(_check_item(t, ("boxes", "labels"), image_size, n_classes, f"target {i}")
                    for i, t in enumerate(targets))
    if n_objects == 0:
        raise ValueError("the targets hold no object, so average precision is undefined; evaluate on scenes with items")
    gt_dict, dets = _coco_inputs(predictions, targets, image_size, classes)
    present = {label for t in targets for label in t["labels"].tolist()}
    if n_dets == 0:  # COCO.loadRes fails on an empty list; AP is 0 for every class that has objects
        return {"map": 0.0, "map50": 0.0,
                "per_class": {str(c): 0.0 if k in present else math.nan for k, c in enumerate(classes)}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (IoU thresholds, recall points, classes, areas, max detections)
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[str(name)] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class": per_class}


def evaluate_detector(model, scenes, k: int = 20, threshold: float = 0.05, batch_size: int = 256) -> dict:
    """``coco_map`` of ``model``'s detections (``detect``: top ``k`` peaks per image with a score of
    at least ``threshold``) on every scene of ``scenes`` (notebook 12). The model must be a detector
    for the scenes' classes: a classifier (or a checkpoint of one) is refused with a ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a detector (torch.nn.Module from build_detector), got {type(model).__name__}")
    if not hasattr(scenes, "targets") or not hasattr(scenes, "inputs"):
        raise TypeError(f"scenes must be a Scenes split (e.g. make_scenes(ds, 'test', 500)), "
                        f"got {type(scenes).__name__}")
    mixup = (f"{type(model).__name__} has no detection heads (a classifier, or a classifier's checkpoint?); "
             "evaluate a detector built with build_detector('centernet', data=scenes)")
    try:
        with for_inference(model) as net, torch.inference_mode():
            out = net(scenes.inputs(slice(0, 1)).to(next(net.parameters()).device))
    except RuntimeError as err:  # e.g. a classifier's Linear layer sized for other images
        raise ValueError(f"{mixup}. It cannot run on {scenes.image_size}x{scenes.image_size} scenes "
                         f"(torch said: {str(err).splitlines()[0][:200]})") from None
    try:
        heads = split_heads(out)
    except ValueError:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{mixup}: it returns {shape}, not heatmap, size and offset maps") from None
    if heads["heatmap"].shape[1] != len(scenes.classes):
        raise ValueError(f"the detector has {heads['heatmap'].shape[1]} classes, the scenes {len(scenes.classes)}; "
                         "build it with build_detector('centernet', data=scenes)")
    predictions = []
    for start in range(0, len(scenes), batch_size):
        predictions += detect(model, scenes.inputs(slice(start, start + batch_size)), k, threshold, batch_size)
    targets = [scenes.targets(i) for i in range(len(scenes))]
    return coco_map(predictions, targets, scenes.image_size, scenes.classes)

"""Training a detector on scenes, alone or distilled from a teacher detector (notebook 12).

``distill_utils.train.fit`` batches ``(x, y)`` with one label per image and reports accuracy, so
detection has its own short loop: batches of scenes, ``encode`` to targets, the loss of
``losses.distill_detection_loss`` (the plain detection loss when there is no teacher), AdamW
with a cosine schedule, and one history row per epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from distill_utils.common import rules
from distill_utils.tasks.detection.detector import encode
from distill_utils.tasks.detection.evaluate import evaluate_detector
from distill_utils.tasks.detection.losses import FeatureImitation, detection_loss, distill_detection_loss
from distill_utils.train import choose_device, for_inference, set_seed

__all__ = ["DetectorTrainConfig", "train_detector"]

PARTS = ("loss", "heatmap", "size", "offset", "kd", "feature")


@dataclasses.dataclass(frozen=True)
class DetectorTrainConfig:
    """Every setting of ``train_detector`` (notebook 12). ``kd``: weight of ``heatmap_kd`` at
    temperature ``T``; ``feature``: weight of feature imitation, masked near objects by
    ``mask_threshold`` (None: everywhere). Both need a teacher; both 0 trains without one."""
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 1e-4
    T: float = 1.0
    kd: float = 0.0
    feature: float = 0.0
    mask_threshold: float | None = 0.1

    def __post_init__(self):
        for name in ("epochs", "lr", "batch_size", "seed", "weight_decay", "T"):
            rules.check(name, getattr(self, name))
        for name in ("kd", "feature"):
            if (msg := rules.in_range(0)(getattr(self, name))):
                raise ValueError(f"{name} = {getattr(self, name)!r} {msg} (a loss weight; 0 turns it off)")
        if self.mask_threshold is not None and (msg := rules.in_range(0, 1, high_open=True)(self.mask_threshold)):
            raise ValueError(f"mask_threshold = {self.mask_threshold!r} {msg} (None imitates everywhere)")


def _config(config, settings) -> DetectorTrainConfig:
    names = [f.name for f in dataclasses.fields(DetectorTrainConfig)]
    if (unknown := sorted(set(settings) - set(names))):
        raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; train_detector accepts {', '.join(names)}")
    return dataclasses.replace(config or DetectorTrainConfig(), **settings)


def _check_teacher(cfg, teacher):
    distils = cfg.kd > 0 or cfg.feature > 0
    if distils and teacher is None:
        raise ValueError(f"kd = {cfg.kd} and feature = {cfg.feature} need a teacher detector: pass teacher=..., "
                         "or set both to 0 to train without one")
    if teacher is not None and not distils:
        raise ValueError("a teacher was given but kd and feature are both 0, so it would not be used; "
                         "set kd (e.g. 1.0) and/or feature (e.g. 1.0)")


def _imitation(model, teacher, x, device):
    """A ``FeatureImitation`` from the student's last feature channels to the teacher's."""
    with for_inference(model) as net, torch.no_grad():
        (_, s_feats), (_, t_feats) = net(x, return_features=True), teacher(x, return_features=True)
    if s_feats[-1].shape[-2:] != t_feats[-1].shape[-2:]:
        raise ValueError(f"student and teacher feature maps differ in size ({tuple(s_feats[-1].shape[-2:])} vs "
                         f"{tuple(t_feats[-1].shape[-2:])}); both must be detectors of the same family and input size")
    return FeatureImitation(s_feats[-1].shape[1], t_feats[-1].shape[1]).to(device)


@dataclasses.dataclass
class _Run:
    """What one training run holds besides its settings."""
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    imitation: FeatureImitation | None
    opt: torch.optim.Optimizer
    sched: object
    device: torch.device


def _epoch(run: _Run, scenes, cfg: DetectorTrainConfig, epoch: int) -> dict:
    model, teacher, imitation, opt, sched = run.model, run.teacher, run.imitation, run.opt, run.sched
    model.train()
    sums, seen = dict.fromkeys(PARTS, 0.0), 0
    batches = scenes.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch)
    for i, (x, boxes, labels) in enumerate(batches):
        x = x.to(run.device)
        targets = encode(boxes, labels, len(scenes.classes), scenes.image_size)
        targets = {k: v.to(run.device) for k, v in targets.items()}
        if teacher is None:
            c = len(scenes.classes)
            out = model(x)
            heads = {"heatmap": out[:, :c], "size": out[:, c:c + 2], "offset": out[:, c + 2:]}
            parts = {**detection_loss(heads, targets), "kd": out.new_zeros(()), "feature": out.new_zeros(())}
        else:
            with torch.no_grad():
                taught = teacher(x, return_features=True)
            parts = distill_detection_loss(model(x, return_features=True), taught, targets, imitation, cfg.T,
                                           cfg.kd, cfg.feature, cfg.mask_threshold)
        if not math.isfinite(loss := parts["loss"].item()):
            raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}, batch {i + 1}; training stopped. "
                                     f"Try a lower learning rate (lr={cfg.lr}) or a smaller temperature T.")
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        for k in PARTS:
            sums[k] += parts[k].item() * len(x)
        seen += len(x)
    return {k: v / seen for k, v in sums.items()}


def train_detector(model, scenes, config: DetectorTrainConfig | None = None, *, teacher=None, val=None, device=None,
                   progress: bool = True, **settings) -> list[dict]:
    """Train ``model`` (a detector from ``build_detector``) on ``scenes`` (a ``Scenes`` split) and
    return its history: one dict per epoch with the mean ``loss`` and its parts (``heatmap``,
    ``size``, ``offset``, ``kd``, ``feature``), ``lr``, ``seconds``, and with ``val`` (a
    ``Scenes`` split) its ``val_map`` and ``val_map50`` (notebook 12).

    Settings (``epochs``, ``lr``, ``batch_size``, ``seed``, ``kd``, ``feature``, ``T``,
    ``mask_threshold``: see ``DetectorTrainConfig``) come as ``config`` and/or keywords, e.g.
    ``train_detector(student, scenes.train, epochs=3, teacher=teacher, kd=1.0, feature=1.0)``.
    With a teacher (kept in eval mode, not trained) the loss is ``distill_detection_loss``; a
    feature-imitation adapter is made and trained with the student (it is not kept).
    """
    cfg = _config(config, settings)
    _check_teacher(cfg, teacher)
    if not hasattr(scenes, "batches") or not hasattr(scenes, "image_size"):
        raise TypeError(f"scenes must be a Scenes split (e.g. scene_data.train), got {type(scenes).__name__}")
    set_seed(cfg.seed)
    device = choose_device(device)
    model.to(device)
    with contextlib.ExitStack() as stack:  # the teacher is used in eval mode and left as it was
        if teacher is not None:
            teacher = stack.enter_context(for_inference(teacher, device))
        return _train(model, teacher, scenes, cfg, val, device, progress)


def _train(model, teacher, scenes, cfg, val, device, progress) -> list[dict]:
    imitation, params = None, list(model.parameters())
    if cfg.feature:
        imitation = _imitation(model, teacher, scenes.inputs(slice(0, 1)).to(device), device)
        params += list(imitation.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(scenes) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    run, history = _Run(model, teacher, imitation, opt, sched, device), []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        row = {"epoch": epoch + 1, **_epoch(run, scenes, cfg, epoch),
               "lr": opt.param_groups[0]["lr"]}
        if val is not None:
            result = evaluate_detector(model, val)
            row["val_map"], row["val_map50"] = result["map"], result["map50"]
        row["seconds"] = time.perf_counter() - start
        if progress:
            scores = f", val mAP {row['val_map']:.3f} (@.5 {row['val_map50']:.3f})" if val is not None else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}{scores}, {row['seconds']:.1f} s")
        history.append(row)
    return history

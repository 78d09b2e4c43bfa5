"""Seeds, device and precision choice, and a plain training loop with progress bars.

Taught in notebook 01. ``fit`` trains any model on a ``Dataset`` (or a single ``Split``)
and returns a history: one dict per epoch with loss, accuracy, learning rate and time.
Its settings are one ``TrainConfig``; distillation (notebook 03) reuses ``fit`` by passing
its own ``step`` function and the ``details`` of what it does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distill_utils.common import rules
from distill_utils.common.files import atomic_write_bytes

__all__ = ["set_seed", "choose_device", "bf16_native", "resolve_precision", "autocast", "TrainConfig", "fit",
           "evaluate", "predict", "cross_entropy_step", "fast_layout", "for_inference", "uses_channels_last",
           "fingerprint"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else ``$DISTILL_DEVICE``, else cuda > mps > cpu."""
    device = device or os.environ.get("DISTILL_DEVICE")
    if device:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu' "
                             "or leave device unset to pick the best available one")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_native(device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: on CPU, oneDNN's check
    (AVX512-BF16 or AMX); on CUDA, compute capability 8.0 or newer (notebook 00)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_precision(precision: str, device) -> str:
    """``"auto"`` -> ``"bf16"`` where ``bf16_native``, else ``"fp16"`` on CUDA (with a gradient
    scaler), else ``"fp32"``; ``"fp32"``, ``"bf16"`` and ``"fp16"`` force one (notebook 00)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose 'auto' (bf16 where the hardware computes it), "
                         "'fp32', 'bf16' or 'fp16' (CUDA only)")
    if precision == "auto":
        return "bf16" if bf16_native(device) else ("fp16" if device.type == "cuda" else "fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA GPU, not {device.type}; use 'bf16' or 'fp32' there")
    return precision


def autocast(precision: str, device):
    """The autocast context of a resolved precision: matrix products and convolutions run in
    bf16/fp16, reductions and losses stay in fp32; ``"fp32"`` changes nothing."""
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def fast_layout(model, device=None, channels_last: bool = True):
    """Move ``model`` to ``device`` in channels-last layout (``channels_last=False``: NCHW), in
    place, and return it.

    Convolutions on CPU (oneDNN) and GPU run 2-3x faster channels-last than in the default
    NCHW layout (measured on the teacher), and bf16 convolutions on the CPU need it (NCHW bf16
    trained the student several times slower in a quick measurement here). MPS keeps NCHW. Values do not change."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if device.type == "mps" or not channels_last:
        return model.to(memory_format=torch.contiguous_format)
    return model.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def for_inference(model, device=None):
    """Use ``model`` for inference inside the ``with`` block: on ``device`` (default: its own), in the
    fast layout, in eval mode. Afterwards its device, layout and training flags are what they were,
    so the caller's model is left as it was (notebook 01). Yields the model."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_device, was_channels_last = next(model.parameters()).device, uses_channels_last(model)
    flags = [(m, m.training) for m in model.modules()]
    fast_layout(model, device).eval()
    try:
        yield model
    finally:
        model.to(was_device)
        model.to(memory_format=torch.channels_last if was_channels_last else torch.contiguous_format)
        for m, flag in flags:
            m.training = flag


def uses_channels_last(model) -> bool:
    """Whether ``model``'s convolution weights are stored channels-last (so inputs should be too)."""
    # a 1-channel weight is contiguous in both layouts: look at the widest input
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    w = max(convs, key=lambda m: m.in_channels).weight if convs else None
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def _inputs(x, device, channels_last):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def predict(model, split, batch_size: int = 512, device=None, precision: str = "auto") -> torch.Tensor:
    """Logits for every example of ``split``, in order, as a float32 CPU tensor (N, classes).

    ``precision`` as in ``fit``: bf16 inference where the hardware has it (notebook 01)."""
    device = choose_device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
    with for_inference(model, device) as net:  # outside inference_mode: the parameters stay trainable
        channels_last = uses_channels_last(net)
        with torch.inference_mode(), autocast(precision, device):
            out = [net(_inputs(x, device, channels_last)).float().cpu() for x, _ in split.batches(batch_size)]
    return torch.cat(out)


def evaluate(model, split, batch_size: int = 512, device=None, precision: str = "auto") -> float:
    """Accuracy of ``model`` on ``split``, in [0, 1] (notebook 01)."""
    logits = predict(model, split, batch_size, device, precision)
    return (logits.argmax(1) == split.y.cpu()).float().mean().item()


def cross_entropy_step(label_smoothing: float = 0.0):
    """The default training step: ``step(model, x, y, index) -> (loss, logits)``."""
    def step(model, x, y, index):
        logits = model(x).float()
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return step


def fingerprint(*tensors) -> str:
    """SHA-256 (first 16 hex digits) of tensors' shapes, dtypes and values: which data or
    weights a run used, for refusing to resume a different run."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``fit`` that changes its result (notebook 01).

    ``lr`` is the peak of the schedule; ``precision`` is ``"auto"``, ``"fp32"``, ``"bf16"`` or
    ``"fp16"`` (see ``resolve_precision``); ``channels_last`` chooses the memory layout."""
    epochs: int = 3
    lr: float = 3e-3
    batch_size: int = 128
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "seed", "lr", "weight_decay", "label_smoothing", "optimizer", "schedule"):
            rules.check(name, getattr(self, name))  # the notebooks' rules (common/rules.py)
        if self.precision not in PRECISIONS:
            resolve_precision(self.precision, "cpu")  # raises the one message for a bad precision

    @classmethod
    def make(cls, config: "TrainConfig | None" = None, **settings) -> "TrainConfig":
        """``config`` (or the defaults) with ``settings`` replaced; an unknown name is an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; fit accepts {', '.join(names)}")
        return dataclasses.replace(config or cls(), **settings)


def _optimizer(cfg: TrainConfig, params, device):
    # fused: one kernel for the whole update instead of several per tensor (small models are
    # bound by per-step overhead); deterministic like the plain loop
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay, **fused)


def _schedule(cfg: TrainConfig, opt, total_steps):
    if cfg.schedule == "onecycle" and total_steps >= 8:  # shorter runs have no room for warm-up and decay
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class _Loop:
    """What one training run holds: model, data, optimizer, schedule, precision and step."""

    def __init__(self, model, train_split, cfg, device, step, params, callback, progress):
        self.model, self.split, self.cfg, self.device = model, train_split, cfg, device
        self.step, self.params, self.callback, self.progress = step, params, callback, progress
        self.precision = resolve_precision(cfg.precision, device)
        self.channels_last = uses_channels_last(model)
        self.n_batches = math.ceil(len(train_split) / cfg.batch_size)
        self.opt = _optimizer(cfg, params, device)
        self.sched = _schedule(cfg, self.opt, cfg.epochs * self.n_batches)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    def epoch(self, epoch: int, state_note: str) -> dict:
        """Train one epoch; returns its history row (loss, accuracy, lr, seconds)."""
        cfg, model = self.cfg, self.model
        model.train()
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(total=self.n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=True)
        batches = self.split.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch,
                                     augment=cfg.augment, with_index=True)
        for i, (x, y, index) in enumerate(batches):
            x, y = _inputs(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)
            with autocast(self.precision, self.device):
                loss, logits = self.step(model, x, y, index)
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                bar.close()
                raise FloatingPointError(
                    f"loss became {loss_val} at epoch {epoch + 1}, batch {i + 1}; training stopped. Try a lower "
                    f"learning rate (lr={cfg.lr}) or, when distilling, a smaller temperature T.{state_note}")
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.opt.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            self.sched.step()
            if self.callback is not None:
                self.callback(epoch * self.n_batches + i + 1)
            loss_sum += loss_val * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if i % 20 == 0 or i == self.n_batches - 1:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            bar.update()
        bar.close()
        return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}


def _summary_line(row: dict, epochs: int) -> str:
    """One readable line per epoch: what a saved notebook shows where a widget bar cannot render."""
    scores = " ".join(f"{k.removesuffix('_acc')} {v:.4f}" for k, v in row.items() if k in ("val_acc", "test_acc"))
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, train acc {row['train_acc']:.4f}"
            + (f", {scores}" if scores else "") + f", {row['seconds']:.1f} s")


def fit(  # noqa: PLR0913 (the settings are the TrainConfig dataclass; the keywords are hooks)
        model, data, config: TrainConfig | None = None, *, device=None, step=None, params=None, callback=None,
        state_file=None, resume: bool = False, progress: bool = True, details: dict | None = None,
        **settings) -> list[dict]:
    """Train ``model`` on ``data`` and return the per-epoch history (notebook 01).

    Settings (``epochs``, ``lr``, ``batch_size``, ``precision``, ...: see ``TrainConfig``) come
    as ``config`` and/or keywords. ``data`` is a ``Dataset`` (trains on ``train``, evaluates on
    ``val`` if it has one, else ``test``) or a single ``Split`` (no evaluation).
    ``step(model, x, y, index) -> (loss, logits)`` replaces the cross-entropy step; ``params``
    replaces ``model.parameters()`` (e.g. to add a distillation regressor); ``callback(step)``
    runs after every optimizer step (1, 2, ...), e.g. to prune gradually. ``details`` names
    what the training is (``{"op": "distill", "T": 4.0, ...}``): it goes into the identity a
    resumed run must match.

    ``precision="auto"`` trains under bf16 autocast where the hardware computes bf16 natively
    (``bf16_native``), else fp32 (fp16 with a gradient scaler on older CUDA GPUs).

    ``state_file``: after every epoch, write the whole training state there atomically (model,
    optimizer, schedule, RNG states, history). With ``resume=True`` an existing state file is
    continued from its last finished epoch if it is the same run (every setting, the data's
    fingerprint, the details): it then ends with the same weights as an uninterrupted run. A
    NaN/inf loss stops training with the epoch and batch and leaves the last good state file.
    """
    cfg = TrainConfig.make(config, **settings)
    train_split = getattr(data, "train", data)
    eval_name = "val" if getattr(data, "val", None) is not None else ("test" if hasattr(data, "test") else None)
    eval_split = getattr(data, eval_name) if eval_name else None
    device = choose_device(device)
    fast_layout(model, device, cfg.channels_last)
    params = list(params) if params is not None else list(model.parameters())
    loop = _Loop(model, train_split, cfg, device, step or cross_entropy_step(cfg.label_smoothing), params,
                 callback, progress)
    details = dict(details or {})
    op = details.pop("op", "fit")
    identity = {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "channels_last"}, "op": op,
                **details, "precision": loop.precision,
                "images": len(train_split),
                "tensors": [list(p.shape) for p in params]}
    if state_file:
        identity["data"] = fingerprint(train_split.x, train_split.y)
    history = _resume(state_file, identity, loop) if resume and state_file else []
    for epoch in range(len(history), cfg.epochs):
        kept = f" The last good state (end of epoch {epoch}) is in {state_file}" if state_file and epoch else ""
        start = time.perf_counter()
        row = loop.epoch(epoch, kept and f"{kept}; resume from it with resume=True after the change.")
        if eval_split is not None:
            row[f"{eval_name}_acc"] = evaluate(model, eval_split, device=device, precision=loop.precision)
        row["seconds"] = time.perf_counter() - start
        if progress:
            print(_summary_line(row, cfg.epochs))
        # the last update can break the weights after the last loss check
        if not all(torch.isfinite(p).all() for p in params):
            raise FloatingPointError(f"weights became NaN/inf during epoch {epoch + 1}; training stopped. Try a lower "
                                     f"learning rate (lr={cfg.lr}) or, when distilling, a smaller temperature T."
                                     + (kept and f"{kept}."))
        history.append(row)
        if state_file:
            _save_state(state_file, identity, loop, history)
    return history


STATE_FORMAT = "distill-lab-train-state"


def _save_state(path, identity, loop, history):
    state = {"format": STATE_FORMAT, "config": identity, "history": history, "model": loop.model.state_dict(),
             "params": [p.detach() for p in loop.params], "optimizer": loop.opt.state_dict(),
             "scheduler": loop.sched.state_dict(),
             "scaler": loop.scaler.state_dict() if loop.scaler is not None else {},
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path, identity, loop) -> list[dict]:
    """Load a state file written by ``_save_state`` into the live objects; return its history."""
    if not os.path.exists(path):
        return []
    try:  # weights_only: tensors, numbers, strings and containers only, never arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message suggests weights_only=False: never do that here
        raise ValueError(f"cannot resume from {path}: it is not a readable training state ({type(err).__name__}: "
                         "truncated, corrupted or not written by fit). Delete it to start over, or pass "
                         "resume=False") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"cannot resume from {path}: not a training state written by fit(state_file=...)")
    saved = state["config"]
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in identity.items() if saved.get(k) != v]
    diff += [f"{k}: {saved[k]!r} there, not set now" for k in saved.keys() - identity.keys()]
    if diff:
        raise ValueError(f"cannot resume from {path}: it was written by a different training run ("
                         + "; ".join(diff) + "). Use the same arguments, another state_file, or delete it")
    loop.model.load_state_dict(state["model"])
    with torch.no_grad():
        for p, saved_p in zip(loop.params, state["params"]):  # also trains extra parameters (a hint regressor)
            p.copy_(saved_p)
    loop.opt.load_state_dict(state["optimizer"])
    loop.sched.load_state_dict(state["scheduler"])
    if loop.scaler is not None and state.get("scaler"):
        loop.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["rng"]["python"]))
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["history"]

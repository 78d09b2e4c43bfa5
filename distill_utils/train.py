"""Seeds, device choice, and a plain training loop with progress bars.

Taught in notebook 01. ``fit`` trains any model on a ``Dataset`` (or a single ``Split``)
and returns a history: one dict per epoch with loss, accuracy, learning rate and time.
Distillation (notebook 03) reuses ``fit`` by passing its own ``step`` function.
"""
from __future__ import annotations

import math
import os
import random
import time

import io

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import lineage
from ._io import atomic_write_bytes

__all__ = ["set_seed", "choose_device", "fit", "evaluate", "predict", "cross_entropy_step", "fast_layout"]


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


def _inputs(x, device, channels_last):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def fast_layout(model, device=None):
    """Move ``model`` to ``device`` in channels-last layout, in place, and return it.

    Convolutions on CPU (oneDNN) and GPU run 2-3x faster channels-last than in the default
    NCHW layout (measured on the teacher); MPS keeps NCHW. Values do not change."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    return model if device.type == "mps" else model.to(memory_format=torch.channels_last)


def predict(model, split, batch_size: int = 256, device=None) -> torch.Tensor:
    """Logits for every example of ``split``, in order, as a CPU tensor (N, classes).

    Batches of 256 measured fastest on a 2-core CPU: larger ones spill activations out of cache."""
    device = choose_device(device) if device is not None else next(model.parameters()).device
    fast_layout(model, device)  # outside inference_mode: the parameters must stay trainable
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = [model(_inputs(x, device, device.type != "mps")).float().cpu() for x, _ in split.batches(batch_size)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model, split, batch_size: int = 256, device=None) -> float:
    """Accuracy of ``model`` on ``split``, in [0, 1] (notebook 01)."""
    logits = predict(model, split, batch_size, device)
    return (logits.argmax(1) == split.y.cpu()).float().mean().item()


def cross_entropy_step(label_smoothing: float = 0.0):
    """The default training step: ``step(model, x, y, index) -> (loss, logits)``."""
    def step(model, x, y, index):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return step


def _optimizer(name, params, lr, weight_decay):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


def _schedule(name, opt, lr, total_steps):
    if name == "onecycle" and total_steps >= 8:  # shorter runs have no room for warm-up and decay
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.25)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if name in ("constant", "onecycle"):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"unknown schedule {name!r}; choose 'onecycle', 'cosine' or 'constant'")


def fit(model, data, epochs: int = 3, lr: float = 3e-3, batch_size: int = 128,
        optimizer: str = "adamw", weight_decay: float = 5e-4, schedule: str = "onecycle",
        augment: bool = False, label_smoothing: float = 0.0, seed: int = 0, device=None,
        progress: bool = True, step=None, params=None, channels_last: bool = True, callback=None,
        state_file=None, resume: bool = False) -> list[dict]:
    """Train ``model`` on ``data`` and return the per-epoch history (notebook 01).

    ``data`` is a ``Dataset`` (trains on ``train``, evaluates on ``val`` if it has one, else
    ``test``) or a single ``Split`` (no evaluation). ``lr`` is the peak learning rate of the
    schedule. ``step(model, x, y, index) -> (loss, logits)`` replaces the cross-entropy step;
    ``params`` replaces ``model.parameters()`` (e.g. to add a distillation regressor);
    ``callback(step)`` runs after every optimizer step (1, 2, ...), e.g. to prune gradually.

    ``state_file``: after every epoch, write the whole training state there atomically (model,
    optimizer, schedule, RNG states, history). With ``resume=True`` an existing state file is
    continued from its last finished epoch: an interrupted run, resumed, ends with the same
    weights as an uninterrupted one. A NaN/inf loss stops training with the epoch and batch
    and leaves the last good state file untouched.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0; got epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}")
    train_split = getattr(data, "train", data)
    eval_name = "val" if getattr(data, "val", None) is not None else ("test" if hasattr(data, "test") else None)
    eval_split = getattr(data, eval_name) if eval_name else None
    device = choose_device(device)
    channels_last = channels_last and device.type != "mps"
    model.to(device)
    if channels_last:
        fast_layout(model, device)
    step = step or cross_entropy_step(label_smoothing)
    n_batches = math.ceil(len(train_split) / batch_size)
    params = list(params) if params is not None else list(model.parameters())
    opt = _optimizer(optimizer, params, lr, weight_decay)
    sched = _schedule(schedule, opt, lr, epochs * n_batches)
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer, "schedule": schedule,
              "seed": seed, "augment": augment, "images": len(train_split), "tensors": [list(p.shape) for p in params]}
    history = _resume(state_file, config, model, params, opt, sched) if resume and state_file else []
    for epoch in range(len(history), epochs):
        model.train()
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=True)
        batches = train_split.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch,
                                      augment=augment, with_index=True)
        for i, (x, y, index) in enumerate(batches):
            x, y = _inputs(x, device, channels_last), y.to(device, non_blocking=True)
            loss, logits = step(model, x, y, index)
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                bar.close()
                kept = (f" The last good state (end of epoch {epoch}) is in {state_file}; resume from it "
                        "with resume=True after the change." if state_file and epoch else "")
                raise FloatingPointError(
                    f"loss became {loss_val} at epoch {epoch + 1}, batch {i + 1}; training stopped. "
                    f"Try a lower learning rate (lr={lr}) or, when distilling, a smaller temperature T.{kept}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if callback is not None:
                callback(epoch * n_batches + i + 1)
            loss_sum += loss_val * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if i % 20 == 0 or i == n_batches - 1:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            bar.update()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        if eval_split is not None:
            row[f"{eval_name}_acc"] = evaluate(model, eval_split, device=device)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_acc']:.4f}",
                            **{eval_name: f"{row[f'{eval_name}_acc']:.4f}"})
        row["seconds"] = time.perf_counter() - start
        bar.close()
        if not all(torch.isfinite(p).all() for p in params):  # the last update can break weights after the last loss check
            kept = f" The last good state (end of epoch {epoch}) is in {state_file}." if state_file and epoch else ""
            raise FloatingPointError(f"weights became NaN/inf during epoch {epoch + 1}; training stopped. Try a lower "
                                     f"learning rate (lr={lr}) or, when distilling, a smaller temperature T.{kept}")
        history.append(row)
        if state_file:
            _save_state(state_file, config, model, params, opt, sched, history)
    lineage.note(model, "fit", epochs=epochs, lr=lr, batch_size=batch_size, images=len(train_split),
                 seed=seed, augment=augment or None)
    return history


STATE_FORMAT = "distill-lab-train-state"


def _save_state(path, config, model, params, opt, sched, history):
    state = {"format": STATE_FORMAT, "config": config, "history": history, "model": model.state_dict(),
             "params": [p.detach() for p in params], "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path, config, model, params, opt, sched) -> list[dict]:
    """Load a state file written by ``_save_state`` into the live objects; return its history."""
    if not os.path.exists(path):
        return []
    try:  # weights_only: tensors, numbers, strings and containers only, never arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message suggests weights_only=False: never do that here
        raise ValueError(f"cannot resume from {path}: it is not a readable training state ({type(err).__name__}: "
                         f"truncated, corrupted or not written by fit). Delete it to start over, or pass resume=False") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"cannot resume from {path}: not a training state written by fit(state_file=...)")
    diff = [f"{k}: {state['config'].get(k)!r} there, {v!r} now" for k, v in config.items() if state["config"].get(k) != v]
    if diff:
        raise ValueError(f"cannot resume from {path}: it was written by a different training run ("
                         + "; ".join(diff) + "). Use the same arguments, another state_file, or delete it")
    model.load_state_dict(state["model"])
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):  # also trains extra parameters (a hint regressor)
            p.copy_(saved)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["rng"]["python"]))
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["history"]

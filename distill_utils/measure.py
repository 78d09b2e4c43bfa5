"""How big and how fast a model is: parameters, non-zeros, FLOPs, latency, size on disk.

Taught in notebook 01; latency and size are revisited in notebooks 05 and 06 (masks alone
shrink neither compute nor the dense file; channel pruning shrinks both). For a model pruned
with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``), every function measures the
effective weight ``weight_orig * weight_mask`` under its plain name and never the mask itself.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
import zlib

import torch
from safetensors.torch import save as _safetensors_save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill_utils.sparse import pack, resolve_masks
from distill_utils.train import for_inference

__all__ = ["count_params", "count_nonzero", "count_flops", "latency_ms", "size_on_disk", "summary"]


def count_params(model: nn.Module) -> int:
    """Number of parameters; a shared (tied) parameter counts once; pruning changes nothing (notebook 01)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameter entries, counting a pruned weight as ``orig * mask`` (notebook 01, 05)."""
    with torch.no_grad():
        params = resolve_masks(dict(model.named_parameters()), dict(model.named_buffers()))
        return sum(int(torch.count_nonzero(p)) for p in params.values())


def _forward(model: nn.Module, x):
    """``model(x)``, turning a bad example input into an error that says what to pass instead."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("example_input must be a torch.Tensor batch like torch.zeros(1, 1, 28, 28); "
                        f"got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("example_input needs a batch dimension, e.g. torch.zeros(1, 1, 28, 28); got a scalar tensor")
    try:
        return model(x)
    except RuntimeError as err:
        hint = next((f" Its first layer is {m}." for m in model.modules()
                     if isinstance(m, (nn.Conv2d, nn.Linear))), "")
        raise ValueError(
            f"example_input of shape {tuple(x.shape)} ({x.dtype}, {x.device}) does not fit "
            f"{type(model).__name__}.{hint} Pass a batch shaped like the training data, e.g. "
            f"(1, 1, 28, 28) for Fashion-MNIST, on the model's device. (torch said: {err})") from None


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode + inference_mode; restores every submodule's training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _attention_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V: the two products, (..., Tq, d) x (..., d, Tk) and (..., Tq, Tk) x (..., Tk, dv)."""
    batch = math.prod(q_shape[:-2])
    return 2 * batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


# torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (notebook 11's ViT)
_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
              torch.ops.aten.scaled_dot_product_attention: _attention_flops}


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs for ``example_input`` (the whole batch) via ``FlopCounterMode`` (notebook 01).

    A multiply-add counts as 2 FLOPs; only matmul/conv-like ops are counted (biases,
    activations, pooling and batch norm are not), and attention's two products (notebook 11).
    Masked weights still cost dense FLOPs.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_ATTENTION)
    with _inference(model), counter:
        _forward(model, example_input)
    return int(counter.get_total_flops())


def latency_ms(model: nn.Module, example_input: torch.Tensor, repeats: int = 30,
               warmup: int = 5, threads: int | None = None) -> dict:
    """Median wall time of one forward pass of the batch, in ms (notebooks 01, 05, 06).

    The model (for the measurement only) and the input are put in channels-last layout first, the fast one for
    convolutions, so models are compared on equal terms (the caller's model is left as it was).
    Eval mode, ``inference_mode``, ``threads`` CPU threads (default: the current
    ``torch.get_num_threads()``, restored afterwards), ``warmup`` untimed runs first. Returns
    ``latency_ms`` (median), ``latency_iqr_ms`` (75th - 25th percentile), threads, batch_size.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    previous = torch.get_num_threads()
    if (threads := previous if threads is None else threads) < 1:
        raise ValueError(f"threads must be >= 1 (or None for the current {previous}); got {threads}")
    if isinstance(example_input, torch.Tensor) and example_input.dim() == 4 and example_input.device.type != "mps":
        example_input = example_input.contiguous(memory_format=torch.channels_last)
    sync, times = torch.cuda.synchronize if getattr(example_input, "is_cuda", False) else (lambda: None), []
    torch.set_num_threads(threads)
    try:
        with for_inference(model), torch.inference_mode():  # fast layout; afterwards as it was
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                _forward(model, example_input)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": q3 - q1,
            "threads": threads, "batch_size": example_input.shape[0]}


def size_on_disk(model: nn.Module) -> dict:
    """Bytes of the state dict as safetensors: raw, zlib-compressed (level 9), and with
    mostly-zero tensors stored sparsely (``save_checkpoint(..., sparse=True)``) (notebooks 01, 05, 06).

    Pruning masks are resolved first, so a masked model stores exactly as many raw bytes
    as the dense one; only the compressed and sparse sizes show the zeros. Tied tensors are stored once.
    """
    state, tensors, seen = model.state_dict(), {}, set()
    for name, t in resolve_masks(state, state).items():
        # tied weights appear under two names, and safetensors refuses shared memory: keep one
        if isinstance(t, torch.Tensor) and (key := (t.data_ptr() or id(t), t.dtype, t.shape, t.stride())) not in seen:
            seen.add(key)
            tensors[name] = t.detach().to("cpu").contiguous().clone()
    raw = _safetensors_save(tensors)
    return {"bytes": len(raw), "compressed_bytes": len(zlib.compress(raw, 9)),
            "sparse_bytes": len(_safetensors_save(pack(tensors)[0]))}


def summary(model: nn.Module, example_input: torch.Tensor, repeats: int = 30,
            threads: int | None = None) -> dict:
    """One table row: params, nonzero, flops, latency, size on disk; plain Python numbers (notebook 01)."""
    row = {"params": count_params(model), "nonzero": count_nonzero(model),
           "flops": count_flops(model, example_input),
           **latency_ms(model, example_input, repeats=repeats, threads=threads), **size_on_disk(model)}
    return {k: float(f"{v:.4g}") if isinstance(v, float) else int(v) for k, v in row.items()}


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Share of examples where two models predict the same class, in [0, 1] (notebook 03)."""
    return (logits_a.argmax(1) == logits_b.argmax(1)).float().mean().item()


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """Expected calibration error (Guo et al. 2017) and the reliability curve (notebook 03).

    Predictions are grouped into ``bins`` equal-width confidence bins; ECE is the
    example-weighted mean of |accuracy - confidence| over the bins. Returns ``ece`` and,
    per non-empty bin, ``confidence``, ``accuracy`` and ``count`` lists.
    """
    confidence, pred = logits.float().softmax(1).max(1)
    correct = (pred == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)  # bin index of each example
    count = torch.bincount(which, minlength=bins).float()
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    used = count > 0
    ece = ((acc_sum - conf_sum).abs().sum() / len(labels)).item()
    return {"ece": ece, "confidence": (conf_sum[used] / count[used]).tolist(),
            "accuracy": (acc_sum[used] / count[used]).tolist(), "count": count[used].long().tolist()}

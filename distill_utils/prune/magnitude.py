"""Magnitude (unstructured) pruning on top of ``torch.nn.utils.prune`` masks (notebook 05).

``amount`` is always the fraction of the chosen layers' weights that are zero afterwards,
counted over all of them (already pruned ones included): per layer with ``scope="layer"``,
over all chosen layers together with ``scope="global"``. Pruning to 0.5 and then to 0.8
leaves 80% zeros, not 90%. Masks make weights zero; they make nothing smaller or faster.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from distill_utils.prune.amount import check_amount

LAYER_TYPES = {"conv": nn.Conv2d, "linear": nn.Linear}


def prunable_layers(model: nn.Module, layer_types=("conv", "linear")) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer of the chosen types (``"conv"``, ``"linear"``)."""
    unknown = set(layer_types) - set(LAYER_TYPES)
    if unknown or not layer_types:
        raise ValueError(f"unknown layer types {sorted(unknown)}; choose from {sorted(LAYER_TYPES)}")
    kinds = tuple(LAYER_TYPES[t] for t in layer_types)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def _masked(module) -> int:
    """Weights already removed by a mask."""
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def _scores(module):
    """|weight|, computed from ``weight_orig * weight_mask`` when masked (``module.weight`` is
    only refreshed by the next forward pass); masked entries score -1 so they stay pruned."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).abs().masked_fill(module.weight_mask == 0, -1)
    return module.weight.abs()


def _l1_mask(scores, k: int):
    """Masks zeroing the ``k`` lowest scores over all tensors together; the same selection as
    ``torch.nn.utils.prune``'s L1 methods (topk of the flattened scores)."""
    flat_scores = torch.cat([s.reshape(-1) for s in scores])  # reshape: works for channels-last too
    flat = torch.ones_like(flat_scores)
    if k:
        flat[torch.topk(flat_scores, k, largest=False).indices] = 0
    return [m.view_as(s) for m, s in zip(flat.split([s.numel() for s in scores]), scores)]


def _apply(module, mask):
    """Re-mask ``module.weight`` through ``torch.nn.utils.prune``. Already pruned weights are
    zero, so they are selected again; the parameter object stays the same for the optimizer."""
    if prune.is_pruned(module) and hasattr(module, "weight_mask"):
        prune.remove(module, "weight")
    prune.custom_from_mask(module, "weight", mask)


def prune_magnitude(model: nn.Module, amount: float, scope: str = "layer", layer_types=("conv", "linear")) -> nn.Module:
    """Zero the smallest-magnitude (L1) weights, in place, with ``torch.nn.utils.prune`` masks.

    ``amount``: fraction of the weights of each chosen layer (``scope="layer"``) or of all
    chosen layers together (``scope="global"``) that are zero afterwards. Returns ``model``.
    """
    check_amount(amount, "weights")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}")
    modules = [m for _, m in prunable_layers(model, layer_types)]
    groups = [[m] for m in modules] if scope == "layer" else [modules]
    with torch.no_grad():
        for group in groups:
            scores = [_scores(m) for m in group]
            # never unmask: a lower amount than already pruned keeps the existing masks
            k = max(round(amount * sum(s.numel() for s in scores)), sum(_masked(m) for m in group))
            for m, mask in zip(group, _l1_mask(scores, k)):
                _apply(m, mask)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the masks' re-parametrisation (``weight_orig``, ``weight_mask``), keeping the zeros."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model


def sparsity(model: nn.Module, layer_types=("conv", "linear")) -> dict:
    """Fraction of zero weights per chosen layer and over all of them (key ``"global"``)."""
    out, zeros, total = {}, 0, 0
    for name, m in prunable_layers(model, layer_types):
        w = _scores(m)
        z = int((w <= 0).sum())  # masked (-1) or exactly zero
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["global"] = zeros / total if total else 0.0
    return out


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): ``final + (initial - final) * (1 - step / total_steps) ** 3``.

    Prunes fast at first, while many redundant weights remain, then slowly."""
    check_amount(final, "weights")
    progress = min(max(step / total_steps, 0.0), 1.0) if total_steps > 0 else 1.0
    return final + (initial - final) * (1 - progress) ** 3


def _train(model, data, teacher, epochs, **kwargs):
    from distill_utils.distill import distill  # fine-tuning with a teacher is distillation
    from distill_utils.train import fit
    if teacher is None:
        return fit(model, data, epochs=epochs, **kwargs)
    return distill(model, teacher, data, epochs=epochs, **kwargs)


def prune_iteratively(model, data, amount: float, rounds: int = 3, epochs_per_round: int = 1,
                      scope: str = "global", layer_types=("conv", "linear"), teacher=None,
                      **train_kwargs) -> list[dict]:
    """Prune a step, fine-tune, repeat (Han et al. 2015) up to ``amount`` along the cubic
    schedule; fine-tune with cross-entropy, or distil from ``teacher`` when given (its
    arguments, e.g. ``T``, ``alpha``, go in ``train_kwargs``). One history row per round."""
    check_amount(amount, "weights")
    rows = []
    for r in range(1, rounds + 1):
        target = cubic_sparsity(r, rounds, amount)
        prune_magnitude(model, target, scope, layer_types)
        history = _train(model, data, teacher, epochs_per_round, **train_kwargs)
        rows.append({"round": r, "sparsity": sparsity(model, layer_types)["global"], **history[-1]})
    return rows


def prune_gradually(model, data, amount: float, epochs: int, prune_every: int = 50,
                    scope: str = "global", layer_types=("conv", "linear"), teacher=None, **train_kwargs) -> list[dict]:
    """Raise sparsity during training along the cubic schedule (Zhu & Gupta 2017), every
    ``prune_every`` optimizer steps, reaching ``amount`` after three quarters of the steps
    and training on at that sparsity. Returns the training history."""
    check_amount(amount, "weights")
    split = getattr(data, "train", data)
    batch_size = train_kwargs.get("batch_size", 128)
    total = epochs * -(-len(split) // batch_size)
    ramp = max(1, int(0.75 * total))

    def callback(step):
        if step % prune_every == 0 or step == ramp:
            prune_magnitude(model, cubic_sparsity(step, ramp, amount), scope, layer_types)

    prune_magnitude(model, 0.0, scope, layer_types)  # attach the masks before the optimizer starts
    return _train(model, data, teacher, epochs, callback=callback, **train_kwargs)

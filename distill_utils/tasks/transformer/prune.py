"""Physically smaller ViTs: width pruning (heads, MLP neurons, embedding channels) and depth pruning
(whole blocks), Minitron-style (notebook 11, ``11_transformer_compression.ipynb``).

Both take the scores of ``importance`` (higher = keep), build a NEW model with ``build_vit`` from the
input's kwargs with the new sizes (so its ``spec`` rebuilds it), copy the kept weights, and leave
the input model untouched. Removing a head or a neuron removes exactly its contribution: the pruned
model computes what the full one computes with those units zeroed. Removing embedding channels
changes every LayerNorm's statistics (it normalises over the kept channels only), so there the
pruned model is an approximation to recover by distillation.
"""
from __future__ import annotations

import torch

from distill_utils.common import rules
from distill_utils.models import model_spec
from distill_utils.tasks.transformer import build_vit
from distill_utils.tasks.transformer.vit import EMBED_AXES, HEAD_AXES, MLP_AXES, ViT

__all__ = ["keep_best", "prune_width", "prune_depth"]

UNITS = {"heads": "heads removed per block", "mlp": "hidden neurons removed per block",
         "embed": "embedding channels removed"}


def keep_best(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Indices of the ``len - round(amount * len)`` highest ``scores`` (at least one), in their original
    order (notebook 11)."""
    k = max(1, len(scores) - round(amount * len(scores)))
    return scores.detach().cpu().argsort(descending=True, stable=True)[:k].sort().values


def _check_fraction(name: str, value) -> None:
    rule = rules.in_range(0, 1, high_open=True, what=f"the fraction of {UNITS[name]}; at least one is kept")
    if (msg := rule(value)):
        raise rules.RuleError(f"{name} = {value!r} {msg}")


def _check_scores(model, scores, kinds) -> None:
    if not isinstance(model, ViT):
        raise TypeError(f"model must be a ViT (distill_utils.tasks.transformer.build_vit), got {type(model).__name__}")
    model_spec(model)  # a model without a spec cannot be rebuilt smaller: say so before anything is built
    sizes = {"heads": [b.attn.heads for b in model.blocks], "mlp": [b.mlp[0].out_features for b in model.blocks],
             "embed": model.head.in_features, "blocks": len(model.blocks)}
    if not isinstance(scores, dict) or not all(k in scores for k in kinds):
        raise TypeError(f"scores must be the dict of importance.activation_scores / magnitude_scores / "
                        f"random_scores (keys {', '.join(kinds)}), got {type(scores).__name__}")
    for kind in kinds:
        got = scores[kind]
        got = [len(s) for s in got] if isinstance(got, (list, tuple)) else len(got)
        if got != sizes[kind]:
            raise ValueError(f"scores[{kind!r}] has sizes {got}, this model has {sizes[kind]}: "
                             "compute the scores on this model")


def _head_units(keep: torch.Tensor, heads: int, head_dim: int, qkv: bool) -> torch.Tensor:
    """Rows of qkv (q, k and v of each kept head) or columns of proj (``qkv=False``) of the ``keep`` heads."""
    units = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
    return (torch.arange(3)[:, None] * heads * head_dim + units).flatten() if qkv else units


def _copy(model, new, keep_embed=None, keep_heads=None, keep_mlp=None, blocks=None) -> ViT:
    """Load ``new`` with ``model``'s weights: the kept embedding channels, heads and neurons of the kept
    ``blocks`` (old block indices, in order); None keeps everything of that kind."""
    old = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # scores' indices are CPU tensors
    blocks = list(range(len(model.blocks))) if blocks is None else blocks
    state = {}
    for name in new.state_dict():
        parts = name.split(".", 2)
        block = blocks[int(parts[1])] if parts[0] == "blocks" else None
        suffix = parts[2] if block is not None else name
        t = old[name if block is None else f"blocks.{block}.{suffix}"]
        if keep_embed is not None and suffix in EMBED_AXES:
            t = t.index_select(EMBED_AXES[suffix], keep_embed)
        if block is not None and keep_heads is not None and suffix in HEAD_AXES:
            attn = model.blocks[block].attn
            rows = _head_units(keep_heads[block], attn.heads, attn.head_dim, qkv=suffix.startswith("attn.qkv"))
            t = t.index_select(HEAD_AXES[suffix], rows)
        if block is not None and keep_mlp is not None and suffix in MLP_AXES:
            t = t.index_select(MLP_AXES[suffix], keep_mlp[block])
        state[name] = t.detach().clone()
    new.load_state_dict(state)
    return new.to(next(model.parameters()).device).train(model.training)


def prune_width(model, scores: dict, heads: float = 0.5, mlp: float = 0.5, embed: float = 0.0) -> ViT:
    """A new, physically smaller ViT keeping the highest-scoring units of ``model`` (notebook 11).

    ``heads``: the fraction of attention heads removed in each block; ``mlp``: of hidden neurons in
    each block; ``embed``: of embedding channels (all in [0, 1); each keeps at least one, and
    ``round(fraction * count)`` are removed). ``scores``: ``importance.activation_scores(model, ...)``,
    ``magnitude_scores(model)`` or ``random_scores(model)``. The head width (``head_dim``) is kept.
    """
    for name, value in (("heads", heads), ("mlp", mlp), ("embed", embed)):
        _check_fraction(name, value)
    _check_scores(model, scores, ("heads", "mlp", "embed"))
    keep_heads = [keep_best(s, heads) for s in scores["heads"]]
    keep_mlp = [keep_best(s, mlp) for s in scores["mlp"]]
    keep_embed = keep_best(scores["embed"], embed)
    kwargs = {**model.spec["kwargs"], "patch": model.patch.kernel_size[0], "dim": len(keep_embed),
              "head_dim": model.blocks[0].attn.head_dim,
              "heads": [len(k) for k in keep_heads], "mlp": [len(k) for k in keep_mlp]}
    return _copy(model, build_vit(**kwargs), keep_embed, keep_heads, keep_mlp)


def prune_depth(model, scores: dict, drop: int = 1) -> ViT:
    """A new ViT without the ``drop`` blocks of ``model`` with the lowest ``scores["blocks"]`` (e.g.
    Block Influence from ``importance.activation_scores``); every other weight is copied (notebook 11).
    ``drop``: a number of blocks, from 0 to depth - 1 (the model keeps one)."""
    depth = len(getattr(model, "blocks", ()))
    rule = rules.in_range(0, depth, high_open=True, integer=True, what=f"blocks removed of {depth}; one is kept")
    if (msg := rule(drop)):
        raise rules.RuleError(f"drop = {drop!r} {msg}")
    _check_scores(model, scores, ("blocks",))
    kept = sorted(scores["blocks"].detach().cpu().argsort(descending=True, stable=True)[:depth - drop].tolist())
    kwargs = {**model.spec["kwargs"], "patch": model.patch.kernel_size[0], "depth": len(kept),
              "head_dim": model.blocks[0].attn.head_dim,
              "heads": [model.blocks[i].attn.heads for i in kept],
              "mlp": [model.blocks[i].mlp[0].out_features for i in kept]}
    return _copy(model, build_vit(**kwargs), blocks=kept)

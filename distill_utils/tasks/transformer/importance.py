"""Which parts of a ViT matter: scores for attention heads, MLP neurons, embedding channels and
whole blocks (notebook 11, ``11_transformer_compression.ipynb``).

Three families, all returning the same dict (higher = more important, keep it):
``{"heads": [(heads,) per block], "mlp": [(hidden,) per block], "embed": (dim,), "blocks": (depth,)}``.

- ``activation_scores``: Minitron's (Muralidharan et al. 2024, "Compact Language Models via Pruning
  and Knowledge Distillation"): what each unit puts out on a small calibration batch, read by
  forward hooks, no gradients. The four rules are ``head_score``, ``neuron_score``,
  ``channel_score`` and ``block_influence`` (ShortGPT's "Block Influence", Men et al. 2024).
- ``magnitude_scores``: the L2 norm of the weights each unit owns.
- ``random_scores``: seeded uniform noise, the baseline every criterion must beat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_utils.tasks.transformer.vit import EMBED_AXES, ViT
from distill_utils.train import for_inference

__all__ = ["head_score", "neuron_score", "channel_score", "block_influence", "activation_scores",
           "magnitude_scores", "random_scores"]


# ---------------------------------------------------------------- the four rules, one line each

def head_score(attn_out: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, T, heads * head_dim) attention output before the projection -> (heads,): the L2 norm of
    each head's output vector, averaged over images and tokens (notebook 11)."""
    return attn_out.unflatten(-1, (heads, -1)).norm(dim=-1).mean((0, 1))


def neuron_score(hidden: torch.Tensor) -> torch.Tensor:
    """(N, T, hidden) GELU output -> (hidden,): the mean absolute activation of each MLP neuron
    over images and tokens (notebook 11)."""
    return hidden.abs().mean((0, 1))


def channel_score(normed: torch.Tensor) -> torch.Tensor:
    """(N, T, dim) LayerNorm output -> (dim,): the mean absolute value of each embedding channel
    over images and tokens (notebook 11); ``activation_scores`` sums it over every LayerNorm."""
    return normed.abs().mean((0, 1))


def block_influence(block_in: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
    """(N, T, dim) tokens into and out of a block -> a scalar: 1 - their cosine similarity, averaged
    over images and tokens (ShortGPT's Block Influence; 0: the block changes nothing) (notebook 11)."""
    return 1 - F.cosine_similarity(block_in, block_out, dim=-1).mean()


# ---------------------------------------------------------------- activations on a calibration batch

def _check_model(model) -> None:
    if not isinstance(model, ViT):
        raise TypeError(f"model must be a ViT (distill_utils.tasks.transformer.build_vit), got {type(model).__name__}")


def _calibration(images) -> torch.Tensor:
    x = getattr(images, "x", images)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0:
        raise TypeError("images must be a non-empty image batch (N, C, H, W), e.g. ds.train.x[:256], or a Split; "
                        f"got {type(images).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
    return x


def _hooks(model: ViT, add) -> list:
    """Forward hooks that pass every rule's value for one batch to ``add(kind, index, value, batch)``."""
    hooks = []
    for i, block in enumerate(model.blocks):
        heads = block.attn.heads
        hooks += [
            block.attn.proj.register_forward_pre_hook(
                lambda _m, args, i=i, h=heads: add("heads", i, head_score(args[0], h), len(args[0]))),
            block.mlp[1].register_forward_hook(lambda _m, _a, out, i=i: add("mlp", i, neuron_score(out), len(out))),
            block.register_forward_hook(
                lambda _m, args, out, i=i: add("blocks", i, block_influence(args[0], out), len(out)))]
    for norm in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):  # norm1, norm2 of each block, norm
        hooks.append(norm.register_forward_hook(lambda _m, _a, out: add("embed", 0, channel_score(out), len(out))))
    return hooks


def activation_scores(model, images, batch_size: int = 256) -> dict:
    """Minitron-style importance of every head, MLP neuron, embedding channel and block of ``model``
    from its activations on ``images`` (a batch (N, C, H, W) or a Split; a few hundred images are
    enough), in batches of ``batch_size``, without gradients (notebook 11). Each score is the rule's
    mean over all images (``head_score``, ``neuron_score``, ``block_influence``); ``embed`` is
    ``channel_score`` summed over every LayerNorm. CPU tensors; the model is left as it was."""
    _check_model(model)
    x = _calibration(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} must be an integer >= 1")
    sums = {}

    def add(kind, index, value, n):  # image-weighted sums of the per-batch means
        sums[kind, index] = sums.get((kind, index), 0) + value.detach().float().cpu() * n

    hooks = _hooks(model, add)
    try:
        with for_inference(model), torch.no_grad():
            device = next(model.parameters()).device
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size].to(device))
    finally:
        for hook in hooks:
            hook.remove()
    depth = len(model.blocks)
    return {"heads": [sums["heads", i] / len(x) for i in range(depth)],
            "mlp": [sums["mlp", i] / len(x) for i in range(depth)],
            "embed": sums["embed", 0] / len(x),
            "blocks": torch.stack([sums["blocks", i] / len(x) for i in range(depth)])}


# ---------------------------------------------------------------- weights alone, and chance

def _embed_norms(model: ViT) -> torch.Tensor:
    """Per embedding channel: the L2 norm of every parameter entry on that channel (``EMBED_AXES``)."""
    total = 0
    for name, p in model.named_parameters():
        suffix = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if suffix in EMBED_AXES:
            axis = EMBED_AXES[suffix]
            total = total + p.detach().float().pow(2).movedim(axis, 0).reshape(p.shape[axis], -1).sum(1)
    return total.sqrt()


def magnitude_scores(model) -> dict:
    """The L2 norm of the weights each unit owns (notebook 11): a head its q, k and v rows (weights
    and biases) and its columns of the output projection; an MLP neuron its fc1 row and bias and
    its fc2 column; an embedding channel every entry on it (patch conv, class token, positions,
    LayerNorms, the Linears that read or write it, the head); a block all its parameters. CPU tensors."""
    _check_model(model)
    heads, mlp, blocks = [], [], []
    with torch.no_grad():
        for block in model.blocks:
            attn, fc1, fc2 = block.attn, block.mlp[0], block.mlp[2]
            qkv = torch.cat([attn.qkv.weight, attn.qkv.bias[:, None]], 1).unflatten(0, (3, attn.heads, -1))
            proj = attn.proj.weight.unflatten(1, (attn.heads, -1))  # (dim, heads, head_dim)
            heads.append((qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))).sqrt())
            mlp.append((fc1.weight.pow(2).sum(1) + fc1.bias.pow(2) + fc2.weight.pow(2).sum(0)).sqrt())
            blocks.append(sum(p.pow(2).sum() for p in block.parameters()).sqrt())
        return {"heads": [h.cpu() for h in heads], "mlp": [m.cpu() for m in mlp], "embed": _embed_norms(model).cpu(),
                "blocks": torch.stack(blocks).cpu()}


def random_scores(model, seed: int = 0) -> dict:
    """Uniform random scores in [0, 1) shaped like ``magnitude_scores``, from ``seed`` (notebook 11):
    what pruning without any criterion does."""
    _check_model(model)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} must be an integer >= 0")
    g = torch.Generator().manual_seed(seed)
    return {"heads": [torch.rand(b.attn.heads, generator=g) for b in model.blocks],
            "mlp": [torch.rand(b.mlp[0].out_features, generator=g) for b in model.blocks],
            "embed": torch.rand(model.head.in_features, generator=g),
            "blocks": torch.rand(len(model.blocks), generator=g)}

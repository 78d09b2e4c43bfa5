"""A small Vision Transformer in plain PyTorch (notebook 11, ``11_transformer_compression.ipynb``).

Patches -> tokens by one Conv2d (kernel = stride = ``patch``), a class token (``pool="cls"``) or
mean pooling (``pool="mean"``), a learned positional embedding, ``depth`` pre-norm blocks
(LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual), a final LayerNorm and a
Linear head. Attention has its own qkv Linear (dim -> 3 * heads * head_dim) and output projection
(heads * head_dim -> dim), so heads can be removed without touching the embedding width; each
block's ``heads`` and ``mlp`` (hidden width) may differ, so a pruned model rebuilds from its kwargs.

``model(x, return_features=True)`` returns ``(logits, [one (N, tokens, dim) tensor per block])``,
like the CNNs of ``distill_utils.models``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "ViT", "vit", "default_patch", "EMBED_AXES", "HEAD_AXES", "MLP_AXES"]

# Which axis of each parameter runs over a unit (names inside a block drop the "blocks.<i>." prefix):
# the embedding channels, the heads (qkv rows: q heads, then k, then v; proj columns), the MLP neurons.
EMBED_AXES = {"patch.weight": 0, "patch.bias": 0, "cls": 2, "pos": 2, "norm.weight": 0, "norm.bias": 0,
              "head.weight": 1, "norm1.weight": 0, "norm1.bias": 0, "attn.qkv.weight": 1,
              "attn.proj.weight": 0, "attn.proj.bias": 0, "norm2.weight": 0, "norm2.bias": 0,
              "mlp.0.weight": 1, "mlp.2.weight": 0, "mlp.2.bias": 0}
HEAD_AXES = {"attn.qkv.weight": 0, "attn.qkv.bias": 0, "attn.proj.weight": 1}
MLP_AXES = {"mlp.0.weight": 0, "mlp.0.bias": 0, "mlp.2.weight": 1}


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear, ``scaled_dot_product_attention``, output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)   # rows: all q heads, then all k, then all v
        self.proj = nn.Linear(heads * head_dim, dim)       # columns: head 0, head 1, ...

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3x (N, heads, T, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, t, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))  # fc1, GELU, fc2

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, optional class token, positional embedding, blocks, LayerNorm, Linear head.

    ``blocks``: one ``(heads, head_dim, mlp)`` per block; ``vit`` builds it from its keywords."""

    def __init__(self, num_classes, in_channels, image_size, patch, dim, blocks, pool="cls"):
        super().__init__()
        tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.pool = pool
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, h, hd, m) for h, hd, m in blocks])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x):
        """Images (N, C, H, W) -> tokens (N, tokens, dim), class token first, positions added."""
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos

    def forward(self, x, return_features: bool = False):
        x, feats = self.embed(x), []
        for block in self.blocks:
            x = block(x)
            feats.append(x)  # (N, tokens, dim)
        x = self.norm(x)
        logits = self.head(x[:, 0] if self.cls is not None else x.mean(1))  # (batch, classes)
        return (logits, feats) if return_features else logits


def default_patch(image_size: int, stem_stride: int = 1) -> int:
    """The patch side when none is given: ``stem_stride`` times 7 where the strided side divides
    by 7 (28x28 -> 7: 16 patches), else times 4 (32x32 -> 4: 64 patches; 96x96 with stride 3 -> 12:
    64 patches). So, like the CNNs' stem, the blocks see about 32x32 pixels at most (notebook 11)."""
    side = image_size // stem_stride
    return stem_stride * (7 if side % 7 == 0 else 4)


def _per_block(value, depth: int, name: str) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * depth
    if len(values) != depth:
        raise ValueError(f"{name} has {len(values)} entries but depth is {depth}: give one number or one per block")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} = {value!r}: every entry must be an integer >= 1 (a block keeps one)")
    return values


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} = {value!r} must be an integer >= 1")
    return value


def vit(num_classes=10, in_channels=1, image_size=28, stem_stride=1, patch=None, dim=128, depth=4,  # noqa: PLR0913
        heads=4, head_dim=None, mlp=None, pool="cls"):
    """The notebook-11 ViT. The defaults on 28x28 inputs: 540,170 parameters and 18.6 MFLOPs per image
    (0.6 of them the attention products), about the teacher CNN's size (16 tokens of 7x7 pixels and a
    class token, width 128, 4 blocks of 4 heads, MLP 256).

    ``patch`` (default ``default_patch(image_size, stem_stride)``: 7 for Fashion-MNIST, 16 tokens
    and a class token); pixels beyond a whole number of patches are dropped (as by the conv).
    ``dim`` embedding width, ``depth`` blocks, ``heads`` per block and ``mlp`` hidden width per
    block (one int, or a list with one per block; ``mlp`` default 2 * ``dim``), ``head_dim``
    (default ``dim // heads`` of the first block), ``pool`` "cls" or "mean". ``stem_stride``
    (from ``models.data_kwargs``) only chooses the default patch (notebook 11)."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size),
                        ("stem_stride", stem_stride), ("dim", dim), ("depth", depth)):
        _positive_int(name, value)
    patch = default_patch(image_size, stem_stride) if patch is None else _positive_int("patch", patch)
    if patch > image_size:
        raise ValueError(f"patch = {patch} is larger than the image ({image_size}x{image_size}); use a smaller one")
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool = {pool!r}: use 'cls' (a class token) or 'mean' (the mean of the tokens)")
    heads = _per_block(heads, depth, "heads")
    mlp = _per_block(2 * dim if mlp is None else mlp, depth, "mlp")
    head_dim = max(1, dim // heads[0]) if head_dim is None else _positive_int("head_dim", head_dim)
    return ViT(num_classes, in_channels, image_size, patch, dim, [(h, head_dim, m) for h, m in zip(heads, mlp)], pool)

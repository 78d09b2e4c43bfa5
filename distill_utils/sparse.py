"""Sparse storage for pruned weights: the non-zero values plus a bitmask (notebook 05).

A tensor with at least ``min_sparsity`` zeros is stored as ``<name>.__values`` (the
non-zeros, in order) and ``<name>.__mask`` (one bit per entry, packed into uint8). At 90%
zeros that is 0.1 * 4 + 1/8 = 0.525 bytes per float32 weight instead of 4.
"""
from __future__ import annotations

import torch

def resolve_masks(tensors: dict, masks: dict) -> dict:
    """Map ``x_orig`` (with a ``x_mask`` in ``masks``) to ``x = x_orig * x_mask``; drop masks."""
    out = {}
    for name, t in tensors.items():
        base = name[:-5]
        if name.endswith("_orig") and base + "_mask" in masks:
            out[base] = t * masks[base + "_mask"]
        elif not (name.endswith("_mask") and base + "_orig" in tensors):
            out[name] = t
    return out


_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor, flattened, as uint8 bytes (most significant bit first)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % 8)])
    return (flat.view(-1, 8) * _BITS).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``pack_bits``: the first ``n`` bits as a flat bool tensor."""
    return ((packed[:, None] & _BITS) > 0).reshape(-1)[:n]


def pack(tensors: dict, min_sparsity: float = 0.5) -> tuple[dict, dict]:
    """``(stored tensors, {name: shape} of the tensors stored sparsely})``."""
    out, shapes = {}, {}
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() >= 64 and (t == 0).float().mean().item() >= min_sparsity:
            nonzero = t != 0
            out[f"{name}.__values"], out[f"{name}.__mask"] = t[nonzero].contiguous(), pack_bits(nonzero)
            shapes[name] = list(t.shape)
        else:
            out[name] = t
    return out, shapes


def unpack(stored: dict, shapes: dict) -> dict:
    """The dense tensors back from ``pack``'s output."""
    out = {k: v for k, v in stored.items() if not k.endswith((".__values", ".__mask"))}
    for name, shape in shapes.items():
        values, n = stored[f"{name}.__values"], 1
        for d in shape:
            n *= d
        dense = values.new_zeros(n)
        dense[unpack_bits(stored[f"{name}.__mask"], n)] = values
        out[name] = dense.view(shape)
    return out

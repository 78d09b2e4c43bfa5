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


def logical_shapes(stored: dict, shapes: dict) -> dict:
    """``{name: shape}`` of the dense tensors ``unpack`` would build from tensors of shapes ``stored``
    (``{name: shape}``, e.g. a safetensors header) and the manifest's ``shapes``, without building
    them. ValueError when ``shapes`` is malformed or does not fit what is stored: a manifest can
    never make ``unpack`` allocate more than one value per stored mask bit."""
    if not isinstance(shapes, dict):
        raise ValueError("the sparse shapes are not a {name: shape} dict")
    out = {k: v for k, v in stored.items() if not k.endswith((".__values", ".__mask"))}
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ValueError(f"sparse tensor {name!r} has a malformed shape {shape!r}")
        values, mask = stored.get(f"{name}.__values"), stored.get(f"{name}.__mask")
        if values is None or mask is None or len(mask) != 1 or len(values) != 1:
            raise ValueError(f"sparse tensor {name!r} lacks its one-dimensional values or mask")
        n = 1
        for d in shape:
            n *= d
        if -(-n // 8) != mask[0] or values[0] > n:
            raise ValueError(f"sparse tensor {name!r}: shape {shape} ({n} entries) does not fit its mask of "
                             f"{mask[0]} bytes and {values[0]} values")
        out[name] = list(shape)
    return out


def unpack(stored: dict, shapes: dict) -> dict:
    """The dense tensors back from ``pack``'s output (checked with ``logical_shapes`` first)."""
    logical_shapes({k: list(v.shape) for k, v in stored.items()}, shapes)
    out = {k: v for k, v in stored.items() if not k.endswith((".__values", ".__mask"))}
    for name, shape in shapes.items():
        values, n = stored[f"{name}.__values"], 1
        for d in shape:
            n *= d
        bits = unpack_bits(stored[f"{name}.__mask"], n)
        if int(bits.sum()) != len(values):
            raise ValueError(f"sparse tensor {name!r}: its mask marks {int(bits.sum())} entries but it has "
                             f"{len(values)} values")
        dense = values.new_zeros(n)
        dense[bits] = values
        out[name] = dense.view(shape)
    return out

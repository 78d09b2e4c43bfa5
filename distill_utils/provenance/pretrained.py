"""The shipped pretrained weights and their pins (notebook 01).

``data/pretrained`` holds a teacher trained with ``params/full.yaml`` (``python -m distill_utils
pretrained`` makes it again), notebook 11's ViT teacher (``pretrained --vit``) and notebook 12's
detector teacher (``pretrained --detector``). The SHA-256 of
each weights file and of its ``.json`` manifest are pinned here, in the code: no signing key ships
with the project, so these pins stand in for a signature. ``checkpoints.load_pretrained`` loads
them; reading a checkpoint reports a pinned file
as ``verified == "pinned"``; the lineage walker finds it by its hash wherever it was made.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED_DIR", "PRETRAINED", "PRETRAINED_MANIFESTS", "is_pinned", "shipped_files"]

PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "data" / "pretrained"
# name -> expected SHA-256 of the .safetensors file, and of its .json manifest (format 1 keeps the
# architecture there, so the pin covers both files)
PRETRAINED = {"teacher_fashion_mnist": "42e3a747f6318f23c8d609e852d6a486d3cce6961d585902c917eeefce4836ca",
              "vit_fashion_mnist": "df2d5db4be462175282539e97bc6be6f09632a00c9a24622f51f0b7d90833c65",
              "detector_fashion_mnist": "9c1f1cc7fa207535c7345af4b30027e04cfa19faef1636eef61cb69ed4584899"}
PRETRAINED_MANIFESTS = {"teacher_fashion_mnist": "4f762eed94552e051e1bd434285be5a87c4595203f4dca8ad2a88da6d476bdbe",
                        "vit_fashion_mnist": "d410a7f026c8c0b5f1d2711e0c7850cc29ec495891d5f44ff1677989fc2b37b7",
                        "detector_fashion_mnist": "e736fc60fcfb918df919b83c1b50017165f4fe9ac601acbf31dae123dbc520f2"}


def is_pinned(weights_sha256: str, manifest_sha256: str | None) -> bool:
    """Whether a weights file and its ``.json`` manifest are both a shipped model's pinned files."""
    return weights_sha256 in PRETRAINED.values() and manifest_sha256 in PRETRAINED_MANIFESTS.values()


def shipped_files(sha256) -> list[Path]:
    """This project's copy of the shipped model whose weights have this SHA-256 (none, or one)."""
    return [PRETRAINED_DIR / f"{name}.safetensors" for name, sha in PRETRAINED.items() if sha == sha256]

"""A small Vision Transformer and its compression (notebook 11, ``11_transformer_compression.ipynb``):
``vit`` (the model), ``importance`` (which heads, neurons, channels and blocks matter: activations,
magnitudes, random) and ``prune`` (physically smaller ViTs: width and depth)."""
from distill_utils.models import build_from
from distill_utils.tasks.transformer.vit import ViT, vit

__all__ = ["MODELS", "ViT", "build_vit", "vit"]

MODELS = {"vit": vit}


def build_vit(data=None, **kwargs):
    """A ViT built by name through ``models.build_from`` (notebook 11): ``data`` (a ``Dataset``) fills in
    ``num_classes``, ``in_channels``, ``image_size`` and ``stem_stride``; ``kwargs`` are ``vit``'s. The model's
    ``spec`` records every kwarg, so ``build_vit(**model.spec["kwargs"])`` rebuilds the architecture."""
    return build_from(MODELS, "vit", data, **kwargs)

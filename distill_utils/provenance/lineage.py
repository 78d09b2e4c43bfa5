"""Where a model came from: the checkpoints it descends from and what was done to it since.

Every model carries ``model.lineage = {"parents": [...], "steps": [...]}``: ``load_checkpoint``
sets the checkpoint it came from as its parent; ``fit``, ``distill``, ``prune_magnitude`` and
``prune_channels`` append a step with their parameters (a distillation step names its
teacher's checkpoint too); ``save_checkpoint`` writes the lineage into the manifest, then
makes the saved file the model's new parent. ``python -m distill_utils lineage FILE`` follows
the chain back through the manifests (taught in notebook 07; see the README, "Trust and
reproducibility").
"""
from __future__ import annotations

import copy

__all__ = ["get", "note", "origin", "reset", "inherit"]


def get(model) -> dict:
    """The model's lineage, created empty for a freshly built model."""
    lineage = getattr(model, "lineage", None)
    if not isinstance(lineage, dict):
        lineage = {"parents": [], "steps": []}
        object.__setattr__(model, "lineage", lineage)  # a plain attribute: deepcopy and pickling keep it
    return lineage


def note(model, op: str, **params) -> None:
    """Append one step (``op`` and its JSON-friendly parameters) to the model's lineage."""
    get(model)["steps"].append({"op": op, **{k: v for k, v in params.items() if v is not None}})


def origin(model) -> dict | None:
    """The checkpoint the model is, if it was loaded or saved and not changed since; else None."""
    lineage = get(model)
    if lineage["steps"] or len(lineage["parents"]) != 1:
        return None
    return lineage["parents"][0]


def reset(model, sha256: str, path: str) -> None:
    """After saving: the model now *is* that checkpoint."""
    object.__setattr__(model, "lineage", {"parents": [{"sha256": sha256, "path": path}], "steps": []})


def inherit(new_model, old_model) -> None:
    """Give a rebuilt model (e.g. channel-pruned) a copy of the original's lineage."""
    object.__setattr__(new_model, "lineage", copy.deepcopy(get(old_model)))

"""Making the shipped pretrained models again: ``python -m distill_utils pretrained [--vit|--detector]``.

The CNN teacher is notebook 01 run with ``params/full.yaml``; the Vision Transformer teacher of
notebook 11 is ``vit_teacher`` below (the ViT's defaults, trained on all of Fashion-MNIST with
``VIT_RECIPE``); the detector teacher of notebook 12 is ``detector_teacher`` (a width-1 CenterNet
trained on scenes of Fashion-MNIST training items with ``DETECTOR_RECIPE``). Each is checked, then
written over the shipped pair in ``data/pretrained/`` in one step (``replace_shipped``); the
command prints the SHA-256 pins to put in ``provenance/pretrained.py``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["VIT_RECIPE", "DETECTOR_RECIPE", "cnn_teacher", "vit_teacher", "detector_teacher", "replace_shipped"]

# epochs, learning rate, ... of the shipped ViT teacher (notebook 11): AdamW, one-cycle, crops and flips
VIT_RECIPE = {"epochs": 8, "lr": 0.002, "batch_size": 128, "weight_decay": 0.05, "augment": True, "seed": 0}
# the shipped detector teacher (notebook 12): its width, its scenes (default SceneConfig: 64x64, 1-4
# items) and its training (AdamW, cosine); test scenes come from the test split with seed + 1
DETECTOR_RECIPE = {"width": 1.0, "train_scenes": 20_000, "test_scenes": 2_000, "seed": 0, "epochs": 8, "lr": 0.002,
                   "batch_size": 64, "weight_decay": 1e-4}


def cnn_teacher(repo: Path) -> Path:
    """Notebook 01 at full size (``params/full.yaml``); the teacher it saved."""
    from distill_utils.runs import experiments
    from distill_utils.runs.params import read_parameter_file
    out = experiments.run_sequence(["01"], repo / "runs" / "pretrained",
                                   read_parameter_file(repo / "params" / "full.yaml"))
    return out / "teacher.safetensors"


def vit_teacher(repo: Path, data_root="data", recipe: dict | None = None) -> Path:
    """The ViT of notebook 11 (its defaults) trained on all 60,000 Fashion-MNIST images with ``recipe``
    (default ``VIT_RECIPE``), tested on all 10,000, saved with its recipe and test accuracy."""
    from distill_utils import train
    from distill_utils.data import load_dataset
    from distill_utils.provenance.checkpoints import save_checkpoint
    from distill_utils.tasks.transformer import build_vit
    recipe = {**VIT_RECIPE, **(recipe or {})}
    ds = load_dataset("fashion_mnist", root=data_root)
    train.set_seed(recipe["seed"])
    model = build_vit(data=ds)
    history = train.fit(model, ds, **recipe)
    accuracy = train.evaluate(model, ds.test)
    print(f"ViT teacher: test accuracy {accuracy:.4f} after {recipe['epochs']} epochs", flush=True)
    metadata = {"dataset": "fashion_mnist", "recipe": recipe, "metrics": {"test_acc": round(accuracy, 4)},
                "train_seconds": round(sum(row["seconds"] for row in history), 1)}
    return save_checkpoint(model, repo / "runs" / "pretrained-vit" / "vit_teacher.safetensors", metadata=metadata)


def detector_teacher(repo: Path, data_root="data", recipe: dict | None = None) -> Path:
    """The CenterNet teacher of notebook 12: ``build_detector(width=recipe["width"])`` trained with
    ``train_detector`` on ``train_scenes`` scenes of Fashion-MNIST training items (``recipe``, default
    ``DETECTOR_RECIPE``), tested on ``test_scenes`` scenes of test items, saved with its recipe, its
    scene settings and its test mAP."""
    import dataclasses

    from distill_utils.data import load_dataset
    from distill_utils.provenance.checkpoints import save_checkpoint
    from distill_utils.tasks.detection import (
        SceneConfig,
        build_detector,
        evaluate_detector,
        scene_dataset,
        train_detector,
    )
    from distill_utils.train import set_seed
    recipe = {**DETECTOR_RECIPE, **(recipe or {})}
    unknown = sorted(set(recipe) - set(DETECTOR_RECIPE))
    if unknown:
        raise ValueError(f"unknown detector recipe setting(s) {unknown}; the recipe has {sorted(DETECTOR_RECIPE)}")
    scenes = scene_dataset(load_dataset("fashion_mnist", root=data_root), recipe["train_scenes"],
                           recipe["test_scenes"], recipe["seed"])
    set_seed(recipe["seed"])
    model = build_detector(data=scenes, width=recipe["width"])
    training = {k: recipe[k] for k in ("epochs", "lr", "batch_size", "weight_decay", "seed")}
    history = train_detector(model, scenes.train, **training)
    scores = evaluate_detector(model, scenes.test)
    print(f"detector teacher: test mAP {scores['map']:.4f} (@.5 {scores['map50']:.4f}) after {recipe['epochs']} "
          "epochs", flush=True)
    metadata = {"dataset": "fashion_mnist", "task": "detection", "recipe": recipe,
                "scenes": dataclasses.asdict(SceneConfig()),
                "metrics": {"test_map": round(scores["map"], 4), "test_map50": round(scores["map50"], 4)},
                "train_seconds": round(sum(row["seconds"] for row in history), 1)}
    return save_checkpoint(model, repo / "runs" / "pretrained-detector" / "detector_teacher.safetensors",
                           metadata=metadata)


def replace_shipped(made: Path, name: str, folder: Path) -> tuple[dict, str]:
    """Check the checkpoint ``made`` and write it over ``folder/name`` (.safetensors and .json) in one
    step; ``(its manifest, the SHA-256 of the new .json)``. OSError leaves the shipped pair as it was."""
    from distill_utils.common.files import atomic_write_files
    from distill_utils.provenance.checkpoints import verify_checkpoint
    verify_checkpoint(made)  # checked before it replaces anything
    atomic_write_files({folder / f"{name}{s}": made.with_suffix(s).read_bytes() for s in (".safetensors", ".json")})
    manifest = verify_checkpoint(folder / f"{name}.safetensors")
    return manifest, hashlib.sha256((folder / f"{name}.json").read_bytes()).hexdigest()

"""Safe checkpoints: safetensors weights plus a JSON manifest (hash, architecture, metadata).

Taught in notebook 01. A checkpoint is two files side by side::

    teacher.safetensors   the weights (no pickle, so loading never runs code)
    teacher.json          the manifest: how to rebuild the model, SHA-256 of the weights, metadata

``load_checkpoint`` checks the manifest and hash before it parses any weights.
"""
from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save

from . import __version__
from ._io import atomic_write_bytes, atomic_write_json
from .models import MODELS, build_model, model_spec
from .sparse import pack, resolve_masks, unpack

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint",
           "load_pretrained", "PRETRAINED"]

FORMAT, FORMAT_VERSION = "distill-lab-checkpoint", 1
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "data" / "pretrained"
# Shipped pretrained weights: name -> expected SHA-256 of the .safetensors file (None: not pinned).
# Every checkpoint this process read or wrote, in order: run records list the hashes (experiments.py).
ACCESS_LOG: list[dict] = []
PRETRAINED = {"teacher_fashion_mnist": "42e3a747f6318f23c8d609e852d6a486d3cce6961d585902c917eeefce4836ca"}


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message says why and what to do (notebook 01)."""


def _paths(path) -> tuple[Path, Path]:
    """(weights, manifest) for either file of a checkpoint."""
    path = Path(path)
    weights = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    return weights, weights.with_suffix(".json")


def _versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "distill_utils": __version__}
    try:
        import torchvision
        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return versions


def save_checkpoint(model, path, metadata=None, sparse: bool = False) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file) and a manifest beside it (notebook 01).

    ``metadata`` is your own JSON-serialisable dict (dataset, metrics, seed, ...). The model
    must come from ``build_model`` so the manifest can record how to rebuild it. Both files
    are written atomically, weights first. Pruning masks are folded into the weights;
    ``sparse=True`` stores mostly-zero tensors as values + bitmask (notebook 05). Returns the
    weights path.
    """
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"{path}: a checkpoint path must end in .safetensors (e.g. 'teacher.safetensors')")
    weights, manifest_path = _paths(path)
    try:
        spec = model_spec(model)
    except ValueError as err:
        raise CheckpointError(f"cannot save {weights}: {err}") from None
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        try:
            json.dumps({key: value}, allow_nan=True)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot save {weights}: metadata[{key!r}] is not JSON-serialisable "
                                  f"({err}); convert it first, e.g. float(x) or x.tolist()") from None
    # clone() gives each tensor its own storage, so shared (tied) tensors save without error
    state = resolve_masks(model.state_dict(), model.state_dict())
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tensors, sparse_shapes = pack(tensors) if sparse else (tensors, {})
    data = st_save(tensors)
    atomic_write_bytes(weights, data)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": weights.name,
                "architecture": {"name": spec["name"], "kwargs": spec["kwargs"]},
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(), "sparse": sparse_shapes, "metadata": metadata}
    atomic_write_json(manifest_path, manifest)
    ACCESS_LOG.append({"op": "write", "path": str(weights.resolve()), "sha256": manifest["sha256"]})
    return weights


def _read_verified(path, expected_sha256=None) -> tuple[bytes, dict, Path]:
    """Read the weights once and check them against the manifest (and against
    ``expected_sha256`` when given): (bytes, manifest, weights path)."""
    weights, manifest_path = _paths(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} not found; check the path "
                              "(save one with save_checkpoint(model, path))")
    if not manifest_path.is_file():
        raise CheckpointError(
            f"manifest {manifest_path} for {weights.name} not found; it is needed to know the "
            "architecture and to verify the weights' SHA-256. Keep the .json beside the .safetensors, "
            "or recreate both with save_checkpoint(build_model(...) with these weights, path)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"manifest {manifest_path} is not valid JSON ({err}); "
                              "restore it or re-save the checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path} is not a distill-lab checkpoint manifest "
                              f"(expected format {FORMAT!r}); re-save with save_checkpoint")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path} has format_version {manifest.get('format_version')!r}; "
                              f"this distill_utils {__version__} reads version {FORMAT_VERSION}: "
                              "upgrade distill_utils or re-save the checkpoint")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise CheckpointError(
            f"SHA-256 of {weights} ({digest[:12]}..., {len(data)} bytes) does not match its manifest "
            f"({str(manifest.get('sha256'))[:12]}..., {manifest.get('bytes')} bytes): the file was "
            "modified, truncated or corrupted. Re-download it or re-save the checkpoint")
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{weights} is not the expected file (SHA-256 {digest[:12]}..., expected "
                              f"{expected_sha256[:12]}...); restore it with `git checkout` or `make pretrained`")
    return data, manifest, weights


def verify_checkpoint(path) -> dict:
    """Check a checkpoint's weights against its manifest's SHA-256 without building the model;
    return the manifest (notebook 01)."""
    return _read_verified(path)[1]


def _state_dict_diff(expected: dict, loaded: dict, limit: int = 3) -> str:
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in loaded and loaded[k].shape != v.shape]
    parts = [f"{label} ({len(items)}): {', '.join(items[:limit])}{', ...' if len(items) > limit else ''}"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts)


def load_checkpoint(path, map_location="cpu", *, expected_sha256=None):
    """Load a checkpoint saved by ``save_checkpoint``: returns ``(model, manifest)``, model in eval mode.

    ``path`` may be the ``.safetensors`` or the ``.json`` file. The hash is checked before the
    weights are parsed, and nothing is ever unpickled (notebook 01). ``expected_sha256``
    optionally pins the exact weights file.
    """
    data, manifest, weights = _read_verified(path, expected_sha256)
    try:
        state = unpack(st_load(data), manifest.get("sparse") or {})
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{weights} is not a valid safetensors file ({err}); it may be a pickle "
                              "(torch.save) file renamed, which is never unpickled here. Re-save it "
                              "with save_checkpoint") from None
    arch = manifest.get("architecture") or {}
    name, kwargs = arch.get("name"), arch.get("kwargs") or {}
    if name not in MODELS:
        raise CheckpointError(f"{weights}: unknown architecture {name!r} in the manifest; "
                              f"known models are {sorted(MODELS)} (is distill_utils up to date?)")
    try:
        model = build_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{weights}: cannot rebuild {name!r} from the manifest: {err}") from None
    diff = _state_dict_diff(model.state_dict(), state)
    if diff:
        raise CheckpointError(f"{weights}: the weights do not fit {name}({kwargs}): {diff}. "
                              "The manifest's architecture does not match the weights; re-save the checkpoint")
    model.load_state_dict(state, strict=True)
    ACCESS_LOG.append({"op": "read", "path": str(weights.resolve()), "sha256": manifest["sha256"]})
    return model.to(map_location).eval(), manifest


def load_pretrained(name: str = "teacher_fashion_mnist", root=None):
    """Load a shipped pretrained model, ``(model, manifest)``, from ``data/pretrained`` (notebook 01).

    ``root`` overrides the folder. When ``PRETRAINED[name]`` pins a SHA-256, the manifest
    must record that hash, so a swapped pair of files is caught.
    """
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}")
    path = Path(root if root is not None else PRETRAINED_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} not found; run `make pretrained` to create them, "
                              f"or `git checkout -- data/pretrained/{name}.safetensors "
                              f"data/pretrained/{name}.json`")
    return load_checkpoint(path, expected_sha256=PRETRAINED[name])

"""Safe checkpoints: safetensors weights with their manifest inside (hash, architecture, metadata).

Taught in notebook 01. A checkpoint is one file, plus a readable copy of its manifest::

    teacher.safetensors   the weights (no pickle, so loading never runs code) and, in the
                          header's metadata, the manifest: how to rebuild the model, the
                          SHA-256 of the tensor table and tensor bytes, metadata, lineage, signature
    teacher.json          a copy of the manifest for people and tools, with the file's SHA-256

Saving writes the ``.safetensors`` file with one atomic rename, under a lock, so a crash, a
full disk or two processes saving at once never leave a checkpoint that does not load: the
file alone is the checkpoint, and a stale or missing ``.json`` beside it is ignored. Files of
the first format (format_version 1: the manifest only in the ``.json``, like the shipped
teacher) still load, and so do those of the second without a key (``format.py`` says why a
key refuses them, and ``sign_checkpoint`` re-saves them). ``load_checkpoint`` checks sizes and
hashes before it parses any tensors (``format.py``), and builds the model on PyTorch's ``meta``
device to compare shapes before it allocates anything. With a signing key configured (``$DISTILL_SIGNING_KEY``, or a
file named by ``$DISTILL_SIGNING_KEY_FILE``; ``signing.py``) manifests are signed with
HMAC-SHA256 on save and the signature is checked on load: unsigned or wrongly signed
checkpoints are refused unless ``allow_unverified=True``. The manifest also records the
model's lineage, passed as a value (``lineage.py``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import platform
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distill_utils import __version__
from distill_utils.common.files import atomic_write_bytes, atomic_write_json, locked
from distill_utils.models import MODELS, build_from, model_spec
from distill_utils.provenance.format import (
    DERIVED,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_key,
    checkpoint_paths,
    content_sha256,
    manifest_signature,
    read_json_manifest,
    read_verified,
    split_header,
    with_manifest,
)
from distill_utils.provenance.lineage import Lineage
from distill_utils.provenance.pretrained import PRETRAINED, PRETRAINED_DIR, PRETRAINED_MANIFESTS
from distill_utils.sparse import logical_shapes, pack, resolve_masks, unpack
from distill_utils.tasks import task_models

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "sign_checkpoint",
           "load_pretrained", "library_versions"]


def library_versions() -> dict:
    """Versions of Python, torch, torchvision (if installed) and distill_utils: checkpoints and run records."""
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "distill_utils": __version__}
    try:
        import torchvision
        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return versions


def _checked_metadata(metadata, weights: Path) -> dict:
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        try:
            json.dumps({name: value}, allow_nan=True)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot save {weights}: metadata[{name!r}] is not JSON-serialisable "
                                  f"({err}); convert it first, e.g. float(x) or x.tolist()") from None
    return metadata


def save_checkpoint(model, path, metadata=None, sparse: bool = False, key=None, lineage: Lineage | None = None) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file holding its manifest) and a readable copy of
    the manifest beside it (``.json``) (notebook 01).

    ``metadata`` is your own JSON-serialisable dict (dataset, metrics, seed, ...). The model must come
    from ``build_model`` (or a task's builder, e.g. ``tasks.transformer.build_vit``) so the manifest can
    record how to rebuild it. The file is replaced with one atomic rename under a lock: a crash or a
    full disk leaves the previous checkpoint as it was. Pruning masks are folded into the weights;
    ``sparse=True`` stores mostly-zero tensors as values + bitmask (notebook 05). ``lineage`` (a
    ``Lineage``: the files the model came from and the steps since, notebook 07) goes into the manifest;
    with a signing key (``key`` or the environment) so does an HMAC-SHA256 signature. Returns the
    weights path; ``verify_checkpoint(path)`` gives its manifest (for ``Lineage.of`` or
    ``run.checkpoint``).
    """
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"{path}: a checkpoint path must end in .safetensors (e.g. 'teacher.safetensors')")
    weights = checkpoint_paths(path)[0]
    if lineage is not None and not isinstance(lineage, Lineage):
        raise CheckpointError(f"cannot save {weights}: lineage must be a Lineage (e.g. Lineage.of(manifest).then("
                              f"'prune_channels', amount=0.5)), got {type(lineage).__name__}")
    try:
        spec = model_spec(model)
    except ValueError as err:
        raise CheckpointError(f"cannot save {weights}: {err}") from None
    metadata = _checked_metadata(metadata, weights)
    # clone() gives each tensor its own storage, so shared (tied) tensors save without error
    state = resolve_masks(model.state_dict(), model.state_dict())
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tensors, sparse_shapes = pack(tensors) if sparse else (tensors, {})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": weights.name,
                "architecture": {"name": spec["name"], "kwargs": spec["kwargs"]},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": library_versions(), "sparse": sparse_shapes, "metadata": metadata,
                "lineage": (lineage or Lineage()).record()}
    return _write(weights, st_save(tensors), manifest, checkpoint_key(key))


def _write(weights: Path, blob: bytes, manifest: dict, key: bytes | None) -> Path:
    """Write the safetensors file ``blob`` at ``weights`` in the current format with ``manifest`` (its
    content hash and, with ``key``, its signature added) inside, and the readable copy beside it."""
    header, start = split_header(blob)
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    manifest = {**manifest, "format_version": FORMAT_VERSION, "content_sha256": content_sha256(table, blob[start:]),
                "tensor_bytes": len(blob) - start}
    if key is not None:
        manifest["signature"] = manifest_signature(manifest, key, weights.name)
    data = with_manifest(blob, manifest)
    copy_ = {**manifest, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        with locked(weights):  # two processes saving here take turns; each file is whole
            atomic_write_bytes(weights, data)
            _write_copy(weights.with_suffix(".json"), copy_, weights)
    except OSError as err:  # disk full, read-only folder, ...: the rename never happened
        raise CheckpointError(f"cannot save {weights}: {err.strerror or err}. Free some space or choose a "
                              "writable folder; nothing was replaced, so a checkpoint already at that path "
                              "is as it was") from None
    return weights


def _write_copy(manifest_path: Path, manifest: dict, weights: Path) -> None:
    """Write the readable manifest copy; if that fails the checkpoint is already saved whole, so say so."""
    try:
        atomic_write_json(manifest_path, manifest)
    except OSError as err:
        try:
            manifest_path.unlink(missing_ok=True)  # a stale copy would only mislead a reader
        except OSError:
            pass
        why = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror or err
        warnings.warn(f"{weights} was saved and loads on its own (its manifest is inside it), but the readable "
                      f"copy {manifest_path.name} could not be written: {why}", stacklevel=4)


def verify_checkpoint(path, key=None, allow_unverified=False) -> dict:
    """Check a checkpoint's weights against its manifest's SHA-256 (and its signature when a key
    is configured) without building the model; return the manifest, whose ``verified`` says
    how far it was checked, with the file's ``sha256``, ``bytes`` and absolute ``path`` (notebook 01)."""
    return read_verified(path, key=key, allow_unverified=allow_unverified)[1]


def sign_checkpoint(path, key=None) -> dict:
    """Sign an existing checkpoint's manifest with the configured key, after checking its hash.

    The signature goes into the ``.json`` manifest; the weights file is not changed. A format-2
    file, whose hash leaves out its tensor table, is first re-saved in format 3 (same tensors and
    manifest, so its SHA-256 changes) with the signature inside."""
    if (key := checkpoint_key(key)) is None:
        raise CheckpointError("no signing key: set DISTILL_SIGNING_KEY (or DISTILL_SIGNING_KEY_FILE) first")
    data, manifest, weights = read_verified(path, allow_unverified=True)
    if manifest.get("format_version") == 2:
        kept = {k: v for k, v in manifest.items()
                if k not in (*DERIVED, "sha256", "bytes", "tensors_sha256", "tensor_bytes")}
        _write(weights, data, kept, key)
        return read_verified(weights, key=key)[1]
    derived = {k: manifest[k] for k in ("sha256", "bytes")}
    # the signed body is the manifest as stored: format 1's .json holds the hash; format 3's header its content hash
    body = {k: v for k, v in manifest.items()
            if k not in DERIVED and (manifest.get("format_version") == 1 or k not in derived)}
    manifest = {**body, **derived, "signature": manifest_signature(body, key, weights.name)}
    try:
        with locked(weights):
            atomic_write_json(weights.with_suffix(".json"), manifest)
    except OSError as err:
        raise CheckpointError(f"cannot write the signed manifest {weights.with_suffix('.json')}: "
                              f"{err.strerror or err}; the checkpoint is unchanged") from None
    return manifest


def _state_dict_diff(expected: dict, loaded: dict, limit: int = 3) -> str:
    """Differences between two ``{name: shape}`` dicts, as text (empty if they agree)."""
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(loaded[k])} vs model {tuple(v)}"
              for k, v in expected.items() if k in loaded and tuple(loaded[k]) != tuple(v)]
    parts = [f"{label} ({len(items)}): {', '.join(items[:limit])}{', ...' if len(items) > limit else ''}"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts)


def _build(weights: Path, manifest: dict, stored_shapes: dict):
    """The model the manifest describes, after its shapes were compared, on the meta device (no
    memory), with those of the file: a manifest cannot make this allocate more than the file holds."""
    arch = manifest.get("architecture")
    name, kwargs = (arch.get("name"), arch.get("kwargs") or {}) if isinstance(arch, dict) else (None, {})
    known = {**MODELS, **task_models()}
    if name not in known:
        raise CheckpointError(f"{weights}: unknown architecture {name!r} in the manifest; "
                              f"known models are {sorted(known)} (is distill_utils up to date?)")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{weights}: the manifest's architecture kwargs are not a dict; re-save the checkpoint")
    try:
        shapes = logical_shapes(stored_shapes, manifest.get("sparse") or {})
        with torch.device("meta"):
            ghost = build_from(known, name, **kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{weights}: cannot rebuild {name!r} from the manifest: {err}") from None
    diff = _state_dict_diff({k: v.shape for k, v in ghost.state_dict().items()}, shapes)
    if diff:
        raise CheckpointError(f"{weights}: the weights do not fit {name}({kwargs}): {diff}. "
                              "The manifest's architecture does not match the weights; re-save the checkpoint")
    return build_from(known, name, **kwargs)


def load_checkpoint(path, map_location="cpu", *, expected_sha256=None, key=None, allow_unverified=False):
    """Load a checkpoint saved by ``save_checkpoint``: returns ``(model, manifest)``, model in eval mode.

    ``path`` may be the ``.safetensors`` or the ``.json`` file. Sizes and hashes are checked before
    the weights are parsed, and nothing is ever unpickled (notebook 01). ``expected_sha256``
    optionally pins the exact weights file. With a signing key configured the signature must
    match (``allow_unverified=True`` accepts an unsigned or wrongly signed file anyway). The
    manifest has the file's ``sha256`` and absolute ``path``: ``Lineage.of(manifest)`` starts the
    lineage of work on this model, ``run.checkpoint("read", manifest)`` lists it in a run's record.
    """
    data, manifest, weights = read_verified(path, expected_sha256, key, allow_unverified)
    not_safetensors = (f"{weights} is not a valid safetensors file ({{}}); it may be a pickle (torch.save) file "
                       "renamed, which is never unpickled here. Re-save it with save_checkpoint")
    try:
        header, _ = split_header(data)
        stored = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(not_safetensors.format(err)) from None
    model = _build(weights, manifest, stored)
    try:
        state = unpack(st_load(data), manifest.get("sparse") or {})
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise CheckpointError(not_safetensors.format(err)) from None
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval(), manifest


def load_pretrained(name: str = "teacher_fashion_mnist", root=None):
    """Load a shipped pretrained model, ``(model, manifest)``, from ``data/pretrained`` (notebook 01).

    ``root`` overrides the folder. The SHA-256 of the weights and of the manifest pinned in
    ``pretrained.PRETRAINED`` and ``PRETRAINED_MANIFESTS`` are checked on every load, so a swapped
    or modified file is caught; those pins, in the code, stand in for a signature (no signing key
    ships with the project), so a configured key does not refuse it.
    """
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}")
    path = Path(root if root is not None else PRETRAINED_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} not found; run `make pretrained` to create them, "
                              f"or `git checkout -- data/pretrained/{name}.safetensors "
                              f"data/pretrained/{name}.json`")
    manifest_path = path.with_suffix(".json")
    if manifest_path.exists() and name in PRETRAINED_MANIFESTS:
        digest = read_json_manifest(manifest_path)[1]
        if digest != PRETRAINED_MANIFESTS[name]:
            raise CheckpointError(f"{manifest_path} is not the shipped manifest (SHA-256 {digest[:12]}..., expected "
                                  f"{PRETRAINED_MANIFESTS[name][:12]}...): its architecture or metadata were edited. "
                                  f"Restore it with `git checkout -- data/pretrained/{name}.json`")
    return load_checkpoint(path, expected_sha256=PRETRAINED[name], allow_unverified=True)

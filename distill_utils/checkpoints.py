"""Safe checkpoints: safetensors weights plus a JSON manifest (hash, architecture, metadata).

Taught in notebook 01. A checkpoint is two files side by side::

    teacher.safetensors   the weights (no pickle, so loading never runs code)
    teacher.json          the manifest: how to rebuild the model, SHA-256 of the weights, metadata

``load_checkpoint`` checks the manifest and hash before it parses any weights. With a signing
key configured (``$DISTILL_SIGNING_KEY``, or a file named by ``$DISTILL_SIGNING_KEY_FILE``)
manifests are signed with HMAC-SHA256 on save and the signature is checked on load: unsigned
or wrongly signed checkpoints are refused unless ``allow_unverified=True``. The manifest also
records the model's lineage (``lineage.py``): the checkpoints it came from and the steps since.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save

from . import __version__, lineage
from ._io import atomic_write_bytes, atomic_write_json
from .models import MODELS, build_model, model_spec
from .sparse import pack, resolve_masks, unpack

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "sign_checkpoint",
           "signing_key", "lineage_chain", "format_lineage", "load_pretrained", "PRETRAINED"]

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


def signing_key(key=None) -> bytes | None:
    """The HMAC key: ``key`` if given, else ``$DISTILL_SIGNING_KEY``, else the contents of the file
    named by ``$DISTILL_SIGNING_KEY_FILE``; None when none is configured."""
    if key is None and os.environ.get("DISTILL_SIGNING_KEY"):
        key = os.environ["DISTILL_SIGNING_KEY"]
    elif key is None and os.environ.get("DISTILL_SIGNING_KEY_FILE"):
        path = Path(os.environ["DISTILL_SIGNING_KEY_FILE"])
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise CheckpointError(f"cannot read the signing key file {path} (DISTILL_SIGNING_KEY_FILE): "
                                  f"{err.strerror}; fix the path or unset the variable") from None
    if key is None:
        return None
    key = key.encode() if isinstance(key, str) else bytes(key)
    if len(key) < 16:
        raise CheckpointError(f"the signing key is {len(key)} bytes; use at least 16 random bytes, e.g. "
                              "python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


def _signature(manifest: dict, key: bytes) -> dict:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True, separators=(",", ":"))
    return {"alg": "HMAC-SHA256", "key_id": hashlib.sha256(key).hexdigest()[:16],
            "value": hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}


def _check_signature(manifest: dict, name: str, key, allow_unverified: bool) -> str:
    """'signed' (valid signature), 'pinned' (a shipped file whose SHA-256 the code pins), 'no key'
    (none configured), or 'unverified' (allowed by the caller); else raise."""
    key = signing_key(key)
    if key is None:
        return "no key"
    given = manifest.get("signature")
    if not given and manifest.get("sha256") in PRETRAINED.values():
        return "pinned"
    if not given:
        problem = (f"{name} is not signed, and a signing key is configured. If you trust where it came from, "
                   "sign it (python -m distill_utils sign PATH); else do not use it")
    elif not hmac.compare_digest(str(given.get("value")), (expected := _signature(manifest, key))["value"]):
        problem = (f"the signature of {name} does not match: its manifest or weights changed after signing, or it "
                   f"was signed with another key (key id {given.get('key_id')}, yours {expected['key_id']}). "
                   "Do not use it unless you can re-check where it came from")
    else:
        return "signed"
    if allow_unverified:
        return "unverified"
    raise CheckpointError(problem + " (or load it with allow_unverified=True)")


def _versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "distill_utils": __version__}
    try:
        import torchvision
        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return versions


def save_checkpoint(model, path, metadata=None, sparse: bool = False, key=None) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file) and a manifest beside it (notebook 01).

    ``metadata`` is your own JSON-serialisable dict (dataset, metrics, seed, ...). The model
    must come from ``build_model`` so the manifest can record how to rebuild it. Both files
    are written atomically, weights first. Pruning masks are folded into the weights;
    ``sparse=True`` stores mostly-zero tensors as values + bitmask (notebook 05). The manifest
    records the model's lineage and, with a signing key (``key`` or the environment), an
    HMAC-SHA256 signature. Returns the weights path.
    """
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"{path}: a checkpoint path must end in .safetensors (e.g. 'teacher.safetensors')")
    weights, manifest_path = _paths(path)
    try:
        spec = model_spec(model)
    except ValueError as err:
        raise CheckpointError(f"cannot save {weights}: {err}") from None
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        try:
            json.dumps({name: value}, allow_nan=True)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot save {weights}: metadata[{name!r}] is not JSON-serialisable "
                                  f"({err}); convert it first, e.g. float(x) or x.tolist()") from None
    # clone() gives each tensor its own storage, so shared (tied) tensors save without error
    state = resolve_masks(model.state_dict(), model.state_dict())
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tensors, sparse_shapes = pack(tensors) if sparse else (tensors, {})
    data = st_save(tensors)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": weights.name,
                "architecture": {"name": spec["name"], "kwargs": spec["kwargs"]},
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(), "sparse": sparse_shapes, "metadata": metadata,
                "lineage": copy.deepcopy(lineage.get(model))}
    if (key := signing_key(key)) is not None:
        manifest["signature"] = _signature(manifest, key)
    try:
        atomic_write_bytes(weights, data)
        atomic_write_json(manifest_path, manifest)
    except OSError as err:  # disk full, read-only folder, ...: any earlier file of that name is untouched
        raise CheckpointError(f"cannot save {weights}: {err.strerror or err}. Free some space or choose a "
                              "writable folder; an existing checkpoint at that path was left as it was") from None
    lineage.reset(model, manifest["sha256"], str(weights.resolve()))
    ACCESS_LOG.append({"op": "write", "path": str(weights.resolve()), "sha256": manifest["sha256"]})
    return weights


def _read_verified(path, expected_sha256=None, key=None, allow_unverified=False) -> tuple[bytes, dict, Path]:
    """Read the weights once and check them against the manifest (and against
    ``expected_sha256`` when given), then the signature: (bytes, manifest, weights path)."""
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
    manifest["verified"] = _check_signature(manifest, weights.name, key, allow_unverified)
    return data, manifest, weights


def verify_checkpoint(path, key=None, allow_unverified=False) -> dict:
    """Check a checkpoint's weights against its manifest's SHA-256 (and its signature when a key
    is configured) without building the model; return the manifest, whose ``verified`` says
    how far it was checked (notebook 01)."""
    return _read_verified(path, key=key, allow_unverified=allow_unverified)[1]


def sign_checkpoint(path, key=None) -> dict:
    """Sign an existing checkpoint's manifest with the configured key, after checking its hash."""
    if (key := signing_key(key)) is None:
        raise CheckpointError("no signing key: set DISTILL_SIGNING_KEY (or DISTILL_SIGNING_KEY_FILE) first")
    _, manifest, weights = _read_verified(path, allow_unverified=True)
    manifest.pop("verified")
    manifest["signature"] = _signature(manifest, key)
    atomic_write_json(weights.with_suffix(".json"), manifest)
    return manifest


def _state_dict_diff(expected: dict, loaded: dict, limit: int = 3) -> str:
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in loaded and loaded[k].shape != v.shape]
    parts = [f"{label} ({len(items)}): {', '.join(items[:limit])}{', ...' if len(items) > limit else ''}"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts)


def load_checkpoint(path, map_location="cpu", *, expected_sha256=None, key=None, allow_unverified=False):
    """Load a checkpoint saved by ``save_checkpoint``: returns ``(model, manifest)``, model in eval mode.

    ``path`` may be the ``.safetensors`` or the ``.json`` file. The hash is checked before the
    weights are parsed, and nothing is ever unpickled (notebook 01). ``expected_sha256``
    optionally pins the exact weights file. With a signing key configured the signature must
    match (``allow_unverified=True`` accepts an unsigned or wrongly signed file anyway).
    """
    data, manifest, weights = _read_verified(path, expected_sha256, key, allow_unverified)
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
    lineage.reset(model, manifest["sha256"], str(weights.resolve()))
    ACCESS_LOG.append({"op": "read", "path": str(weights.resolve()), "sha256": manifest["sha256"]})
    return model.to(map_location).eval(), manifest


def load_pretrained(name: str = "teacher_fashion_mnist", root=None):
    """Load a shipped pretrained model, ``(model, manifest)``, from ``data/pretrained`` (notebook 01).

    ``root`` overrides the folder. The SHA-256 pinned in ``PRETRAINED`` is checked on every
    load, so a swapped or modified file is caught; that pin, in the code, stands in for a
    signature (no signing key ships with the project), so a configured key does not refuse it.
    """
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}")
    path = Path(root if root is not None else PRETRAINED_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} not found; run `make pretrained` to create them, "
                              f"or `git checkout -- data/pretrained/{name}.safetensors "
                              f"data/pretrained/{name}.json`")
    return load_checkpoint(path, expected_sha256=PRETRAINED[name], allow_unverified=True)


def _find_parent(ref: dict, near: Path) -> Path | None:
    """The file a lineage reference points to: its recorded path, else the same name beside
    ``near``, else, for a shipped model (its SHA-256 pinned), this project's copy."""
    recorded = Path(ref.get("path", ""))
    pinned = [PRETRAINED_DIR / f"{name}.safetensors" for name, sha in PRETRAINED.items() if sha == ref.get("sha256")]
    for candidate in (recorded, near.parent / recorded.name, *pinned):
        if candidate.is_file():
            return candidate
    return None


def lineage_chain(path, key=None) -> list[dict]:
    """The checkpoint at ``path`` and every ancestor its manifests name, depth first: each entry has
    ``depth``, ``path``, ``sha256``, ``role``, ``created``, ``steps``, ``verified`` and ``problem``."""
    chain, seen = [], set()

    def visit(file: Path | None, ref: dict, depth: int, role: str):
        entry = {"depth": depth, "role": role, "path": str(file or ref.get("path")), "sha256": ref.get("sha256"),
                 "created": None, "steps": [], "verified": None, "problem": None}
        chain.append(entry)
        if file is None:
            entry["problem"] = "file not found"
            return
        try:
            manifest = verify_checkpoint(file, key=key, allow_unverified=True)
        except CheckpointError as err:
            entry["problem"] = str(err)
            return
        if ref.get("sha256") and manifest["sha256"] != ref["sha256"]:
            entry["problem"] = f"this file's SHA-256 is {manifest['sha256'][:12]}..., not the recorded one"
        entry.update(sha256=manifest["sha256"], created=manifest.get("created"), verified=manifest["verified"])
        record = manifest.get("lineage") or {}
        entry["steps"] = record.get("steps", [])
        if manifest["sha256"] in seen:
            return
        seen.add(manifest["sha256"])
        parents = {}  # sha256 -> (reference, roles): a model pruned from its own teacher lists it once
        refs = [(p, "from") for p in record.get("parents", [])]
        refs += [(s["teacher"], "teacher") for s in entry["steps"] if isinstance(s.get("teacher"), dict)]
        for ref_, role_ in refs:
            parents.setdefault(ref_.get("sha256"), (ref_, []))[1].append(role_)
        for parent, roles in parents.values():
            visit(_find_parent(parent, file), parent, depth + 1, " and ".join(dict.fromkeys(roles)))

    visit(Path(path), {}, 0, "checkpoint")
    return chain


def _step_text(step: dict) -> str:
    params = ", ".join(f"{k}={(v['sha256'][:12] if isinstance(v, dict) else v)}" for k, v in step.items() if k != "op")
    return f"{step['op']}({params})"


def format_lineage(chain: list[dict]) -> str:
    """``lineage_chain``'s result as indented text (``python -m distill_utils lineage``)."""
    lines = []
    for e in chain:
        pad = "  " * e["depth"]
        head = "" if e["role"] == "checkpoint" else f"{e['role']}: "
        sha = (e["sha256"] or "?")[:12]
        lines.append(f"{pad}{head}{e['path']}  sha256 {sha}  {e['created'] or ''}  "
                     f"{ {'signed': '[signature ok]', 'pinned': '[pinned in code]', 'unverified': '[unsigned or bad signature]'}.get(e['verified'], '') }".rstrip())
        if e["problem"]:
            lines.append(f"{pad}  ! {e['problem']}")
        steps = " -> ".join(_step_text(s) for s in e["steps"])
        lines.append(f"{pad}  steps: {steps or '(none recorded)'}")
    return "\n".join(lines)

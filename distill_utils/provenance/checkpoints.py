"""Safe checkpoints: safetensors weights with their manifest inside (hash, architecture, metadata).

Taught in notebook 01. A checkpoint is one file, plus a readable copy of its manifest::

    teacher.safetensors   the weights (no pickle, so loading never runs code) and, in the
                          header's metadata, the manifest: how to rebuild the model, the
                          SHA-256 of the tensor bytes, metadata, lineage, signature
    teacher.json          a copy of the manifest for people and tools, with the file's SHA-256

Saving writes the ``.safetensors`` file with one atomic rename, under a lock, so a crash, a
full disk or two processes saving at once never leave a checkpoint that does not load: the
file alone is the checkpoint, and a stale or missing ``.json`` beside it is ignored. Files of
the first format (format_version 1: the manifest only in the ``.json``, like the shipped
teacher) still load. ``load_checkpoint`` checks sizes and hashes before it parses any
tensors, and builds the model on PyTorch's ``meta`` device to compare shapes before it
allocates anything. With a signing key configured (``$DISTILL_SIGNING_KEY``, or a file named
by ``$DISTILL_SIGNING_KEY_FILE``) manifests are signed with HMAC-SHA256 on save and the
signature is checked on load: unsigned or wrongly signed checkpoints are refused unless
``allow_unverified=True``. The manifest also records the model's lineage (``lineage.py``).
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import platform
import struct
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distill_utils import __version__
from distill_utils.common.files import (
    ReadRefused,
    atomic_write_bytes,
    atomic_write_json,
    locked,
    open_regular,
    read_limited,
)
from distill_utils.models import MODELS, build_model, model_spec
from distill_utils.provenance import lineage
from distill_utils.sparse import logical_shapes, pack, resolve_masks, unpack

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "sign_checkpoint",
           "signing_key", "lineage_chain", "format_lineage", "broken_links", "load_pretrained", "library_versions",
           "PRETRAINED", "PRETRAINED_MANIFESTS"]

FORMAT, FORMAT_VERSION = "distill-lab-checkpoint", 2
READABLE_VERSIONS = (1, 2)          # 1: manifest only in the .json beside the weights
META_KEY = "distill_lab_manifest"   # the safetensors header metadata entry holding the manifest
MAX_HEADER = 16 << 20               # bytes: a safetensors header (and so a manifest) is never larger
MAX_MANIFEST = 16 << 20             # bytes of a .json manifest
MAX_KEY_FILE = 4096                 # bytes of a signing key file
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "data" / "pretrained"
# Shipped pretrained weights: name -> expected SHA-256 of the .safetensors file, and of its .json
# manifest (format 1 keeps the architecture there, so the pin covers both files).
PRETRAINED = {"teacher_fashion_mnist": "42e3a747f6318f23c8d609e852d6a486d3cce6961d585902c917eeefce4836ca"}
PRETRAINED_MANIFESTS = {"teacher_fashion_mnist": "4f762eed94552e051e1bd434285be5a87c4595203f4dca8ad2a88da6d476bdbe"}
_DERIVED = ("verified", "signature")  # manifest fields that the signature does not cover


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message says why and what to do (notebook 01)."""


def _paths(path) -> tuple[Path, Path]:
    """(weights, manifest) for either file of a checkpoint."""
    path = Path(path)
    weights = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    return weights, weights.with_suffix(".json")


def signing_key(key=None) -> bytes | None:
    """The HMAC key: ``key`` if given, else ``$DISTILL_SIGNING_KEY``, else the contents of the file
    named by ``$DISTILL_SIGNING_KEY_FILE``; None when none is configured. A key that is set but
    empty or only whitespace is an error, not "no key"."""
    source = "the key given"
    if key is None and "DISTILL_SIGNING_KEY" in os.environ:
        key, source = os.environ["DISTILL_SIGNING_KEY"], "DISTILL_SIGNING_KEY"
    elif key is None and "DISTILL_SIGNING_KEY_FILE" in os.environ:
        path, source = Path(os.environ["DISTILL_SIGNING_KEY_FILE"]), "the key file named by DISTILL_SIGNING_KEY_FILE"
        if not os.environ["DISTILL_SIGNING_KEY_FILE"].strip():
            raise CheckpointError("DISTILL_SIGNING_KEY_FILE is set but empty; name a key file or unset the variable")
        try:
            key = read_limited(path, MAX_KEY_FILE, "signing key file").strip()
        except (OSError, ReadRefused) as err:
            why = getattr(err, "strerror", None) or err
            raise CheckpointError(f"cannot read the signing key file {path} (DISTILL_SIGNING_KEY_FILE): "
                                  f"{why}; fix the path or unset the variable") from None
    if key is None:
        return None
    key = key.encode() if isinstance(key, str) else bytes(key)
    if not key.strip():
        raise CheckpointError(f"the signing key ({source}) is empty or only whitespace; set a real key "
                              "(python -c 'import secrets; print(secrets.token_hex(32))') or unset it")
    if len(key) < 16:
        raise CheckpointError(f"the signing key is {len(key)} bytes; use at least 16 random bytes, e.g. "
                              "python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


def _signature(manifest: dict, key: bytes, file_name: str) -> dict:
    """HMAC-SHA256 over the manifest (which holds the weights' hash) and the weights file's name."""
    body = json.dumps({"manifest": {k: v for k, v in manifest.items() if k not in _DERIVED}, "file": file_name},
                      sort_keys=True, separators=(",", ":"))
    return {"alg": "HMAC-SHA256", "key_id": hashlib.sha256(key).hexdigest()[:16], "file": file_name,
            "value": hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}


def _check_signature(manifest: dict, weights: Path, key, allow_unverified: bool, pinned: bool) -> str:
    """'signed' (valid signature for this file and name), 'pinned' (a shipped file whose weights and
    manifest the code pins), 'no key' (none configured), or 'unverified' (allowed by the caller);
    else raise."""
    key, name = signing_key(key), weights.name
    if key is None:
        return "no key"
    given = manifest.get("signature")
    if not given and pinned:
        return "pinned"
    ok = lambda file: isinstance(given, dict) and hmac.compare_digest(  # noqa: E731
        str(given.get("value")), _signature(manifest, key, file)["value"])
    if not given:
        problem = (f"{name} is not signed, and a signing key is configured. If you trust where it came from, "
                   "sign it (python -m distill_utils sign PATH); else do not use it")
    elif ok(name):
        return "signed"
    elif isinstance(given, dict) and isinstance(given.get("file"), str) and given["file"] != name and ok(given["file"]):
        problem = (f"{name} carries a valid signature for a file named {given['file']!r}: a signature binds the "
                   "file's name as well as its contents. If this copy is meant, sign it again under this name "
                   "(python -m distill_utils sign PATH)")
    else:
        key_id = given.get("key_id") if isinstance(given, dict) else None
        problem = (f"the signature of {name} does not match: its manifest or weights changed after signing, or it "
                   f"was signed with another key (key id {key_id}, yours {hashlib.sha256(key).hexdigest()[:16]}) "
                   "or by an older distill_utils. Do not use it unless you can re-check where it came from")
    if allow_unverified:
        return "unverified"
    raise CheckpointError(problem + " (or load it with allow_unverified=True)")


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


def _split_header(blob: bytes) -> tuple[dict, int]:
    """A safetensors file's header (a dict) and where its tensor bytes start; ValueError if malformed."""
    if len(blob) < 8:
        raise ValueError("shorter than a safetensors header")
    n = struct.unpack("<Q", blob[:8])[0]
    if n > MAX_HEADER or 8 + n > len(blob):
        raise ValueError(f"header length {n} does not fit the file")
    header = json.loads(blob[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def _with_manifest(blob: bytes, manifest: dict) -> bytes:
    """``blob`` (from ``safetensors.save``) with ``manifest`` in its header metadata."""
    header, start = _split_header(blob)
    header["__metadata__"] = {META_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor bytes to 8
    return struct.pack("<Q", len(text)) + text + blob[start:]


def save_checkpoint(model, path, metadata=None, sparse: bool = False, key=None, run=None) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file holding its manifest) and a readable copy of
    the manifest beside it (``.json``) (notebook 01).

    ``metadata`` is your own JSON-serialisable dict (dataset, metrics, seed, ...). The model
    must come from ``build_model`` so the manifest can record how to rebuild it. The file is
    replaced with one atomic rename under a lock: a crash or a full disk leaves the previous
    checkpoint as it was. Pruning masks are folded into the weights; ``sparse=True`` stores
    mostly-zero tensors as values + bitmask (notebook 05). The manifest records the model's
    lineage and, with a signing key (``key`` or the environment), an HMAC-SHA256 signature.
    ``run`` (a ``experiments.Run``) records the file in the run's record. Returns the weights path.
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
    plain = st_save(tensors)
    body = plain[_split_header(plain)[1]:]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": weights.name,
                "architecture": {"name": spec["name"], "kwargs": spec["kwargs"]},
                "tensors_sha256": hashlib.sha256(body).hexdigest(), "tensor_bytes": len(body),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": library_versions(), "sparse": sparse_shapes, "metadata": metadata,
                "lineage": copy.deepcopy(lineage.get(model))}
    if (key := signing_key(key)) is not None:
        manifest["signature"] = _signature(manifest, key, weights.name)
    data = _with_manifest(plain, manifest)
    copy_ = {**manifest, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        with locked(weights):  # two processes saving here take turns; each file is whole
            atomic_write_bytes(weights, data)
            _write_copy(manifest_path, copy_, weights)
    except OSError as err:  # disk full, read-only folder, ...: the rename never happened
        raise CheckpointError(f"cannot save {weights}: {err.strerror or err}. Free some space or choose a "
                              "writable folder; nothing was replaced, so a checkpoint already at that path "
                              "is as it was") from None
    lineage.reset(model, copy_["sha256"], str(weights.resolve()))
    if run is not None:
        run.checkpoint("written", weights, copy_["sha256"])
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
        warnings.warn(f"{weights} was saved and loads on its own (its manifest is inside it), but the readable "
                      f"copy {manifest_path.name} could not be written: {err.strerror or err}", stacklevel=3)


def _read_json_manifest(manifest_path: Path) -> tuple[dict, str]:
    """A ``.json`` manifest and the SHA-256 of its bytes; CheckpointError if unreadable or malformed."""
    try:
        raw = read_limited(manifest_path, MAX_MANIFEST, "checkpoint manifest")
        manifest = json.loads(raw)
    except ReadRefused as err:
        raise CheckpointError(f"manifest {err}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read manifest {manifest_path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"manifest {manifest_path} is not valid JSON ({err}); "
                              "restore it or re-save the checkpoint") from None
    return manifest, hashlib.sha256(raw).hexdigest()


def _check_format(manifest, where) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a distill-lab checkpoint manifest "
                              f"(expected format {FORMAT!r}); re-save with save_checkpoint")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{where} has format_version {manifest.get('format_version')!r}; "
                              f"this distill_utils {__version__} reads versions {READABLE_VERSIONS}: "
                              "upgrade distill_utils or re-save the checkpoint")


def _embedded_manifest(f, size: int) -> tuple[dict, bytes] | None:
    """The manifest inside a format-2 file's header and the header's bytes, or None if it has none."""
    head = f.read(8)
    if len(head) < 8 or (n := struct.unpack("<Q", head)[0]) > MAX_HEADER or 8 + n > size:
        return None
    text = head + f.read(n)
    try:
        header = json.loads(text[8:])
        manifest = json.loads(header["__metadata__"][META_KEY])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    return (manifest, text) if isinstance(manifest, dict) else None


def _read_verified(path, expected_sha256=None, key=None, allow_unverified=False) -> tuple[bytes, dict, Path]:
    """Read the weights once, after checking their size, and check them against the manifest (and
    against ``expected_sha256`` when given), then the signature: (bytes, manifest, weights path)."""
    weights, manifest_path = _paths(path)
    if not weights.exists():
        raise CheckpointError(f"checkpoint weights {weights} not found; check the path "
                              "(save one with save_checkpoint(model, path))")
    try:
        with open_regular(weights) as f:
            size = os.fstat(f.fileno()).st_size
            found = _embedded_manifest(f, size)
            if found is not None:  # format 2: the file describes itself; a .json beside it is only a copy
                manifest, header = found
                _check_format(manifest, f"the manifest inside {weights}")
                data, manifest_sha = header + _read_body(f, weights, size - len(header), manifest), None
            else:  # format 1 (or a damaged file): the .json beside it is the manifest
                if not manifest_path.exists():
                    raise CheckpointError(
                        f"manifest {manifest_path} for {weights.name} not found, and the file holds none itself; it "
                        "is needed to know the architecture and to verify the weights' SHA-256. Keep the .json "
                        "beside the .safetensors, or recreate both with save_checkpoint(build_model(...) with "
                        "these weights, path)")
                manifest, manifest_sha = _read_json_manifest(manifest_path)
                _check_format(manifest, manifest_path)
                if manifest.get("bytes") != size:
                    raise CheckpointError(
                        f"{weights} is {size:,} bytes but its manifest says {manifest.get('bytes')!r} bytes (SHA-256 "
                        f"does not match its manifest): the file was modified, truncated or corrupted. "
                        "Re-download it or re-save the checkpoint")
                f.seek(0)
                data = f.read(size)
    except ReadRefused as err:
        raise CheckpointError(f"checkpoint weights {err}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {weights}: {err.strerror or err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if manifest_sha is not None and digest != manifest.get("sha256"):
        raise CheckpointError(
            f"SHA-256 of {weights} ({digest[:12]}..., {len(data)} bytes) does not match its manifest "
            f"({str(manifest.get('sha256'))[:12]}..., {manifest.get('bytes')} bytes): the file was "
            "modified, truncated or corrupted. Re-download it or re-save the checkpoint")
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{weights} is not the expected file (SHA-256 {digest[:12]}..., expected "
                              f"{expected_sha256[:12]}...); restore it with `git checkout` or `make pretrained`")
    if manifest_sha is None and not manifest.get("signature"):
        manifest = _detached_signature(manifest, manifest_path)
    pinned = digest in PRETRAINED.values() and manifest_sha in PRETRAINED_MANIFESTS.values()
    verified = _check_signature(manifest, weights, key, allow_unverified, pinned)
    manifest = {**manifest, "sha256": digest, "bytes": len(data), "verified": verified}
    return data, manifest, weights


def _read_body(f, weights: Path, n: int, manifest: dict) -> bytes:
    """A format-2 file's tensor bytes, checked against the manifest's size (before reading) and hash."""
    if manifest.get("tensor_bytes") != n:
        raise CheckpointError(
            f"{weights} holds {n:,} bytes of tensors but its manifest says {manifest.get('tensor_bytes')!r} "
            "(SHA-256 does not match its manifest): the file was modified, truncated or corrupted. "
            "Re-download it or re-save the checkpoint")
    body = f.read(n)
    digest = hashlib.sha256(body).hexdigest()
    if digest != manifest.get("tensors_sha256"):
        raise CheckpointError(
            f"SHA-256 of the tensors in {weights} ({digest[:12]}...) does not match its manifest "
            f"({str(manifest.get('tensors_sha256'))[:12]}...): the file was modified, truncated or corrupted. "
            "Re-download it or re-save the checkpoint")
    return body


def _detached_signature(manifest: dict, manifest_path: Path) -> dict:
    """A format-2 file signed after saving keeps its signature in the .json copy (signing does not
    change the weights file, so its SHA-256, which children's lineage records, stays the same)."""
    try:
        copy_, _ = _read_json_manifest(manifest_path)
    except CheckpointError:
        return manifest
    same = isinstance(copy_, dict) and copy_.get("tensors_sha256") == manifest.get("tensors_sha256")
    if same and copy_.get("signature"):
        return {**manifest, "signature": copy_["signature"]}
    return manifest


def verify_checkpoint(path, key=None, allow_unverified=False) -> dict:
    """Check a checkpoint's weights against its manifest's SHA-256 (and its signature when a key
    is configured) without building the model; return the manifest, whose ``verified`` says
    how far it was checked (notebook 01)."""
    return _read_verified(path, key=key, allow_unverified=allow_unverified)[1]


def sign_checkpoint(path, key=None) -> dict:
    """Sign an existing checkpoint's manifest with the configured key, after checking its hash.

    The signature goes into the ``.json`` manifest; the weights file is not changed."""
    if (key := signing_key(key)) is None:
        raise CheckpointError("no signing key: set DISTILL_SIGNING_KEY (or DISTILL_SIGNING_KEY_FILE) first")
    _, manifest, weights = _read_verified(path, allow_unverified=True)
    derived = {k: manifest[k] for k in ("sha256", "bytes")}
    # the signed body is the manifest as stored: format 1's .json holds the hash; format 2's header the tensors' hash
    body = {k: v for k, v in manifest.items()
            if k not in ("verified", "signature") and (manifest.get("format_version") == 1 or k not in derived)}
    manifest = {**body, **derived, "signature": _signature(body, key, weights.name)}
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
    if name not in MODELS:
        raise CheckpointError(f"{weights}: unknown architecture {name!r} in the manifest; "
                              f"known models are {sorted(MODELS)} (is distill_utils up to date?)")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{weights}: the manifest's architecture kwargs are not a dict; re-save the checkpoint")
    try:
        shapes = logical_shapes(stored_shapes, manifest.get("sparse") or {})
        with torch.device("meta"):
            ghost = build_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{weights}: cannot rebuild {name!r} from the manifest: {err}") from None
    diff = _state_dict_diff({k: v.shape for k, v in ghost.state_dict().items()}, shapes)
    if diff:
        raise CheckpointError(f"{weights}: the weights do not fit {name}({kwargs}): {diff}. "
                              "The manifest's architecture does not match the weights; re-save the checkpoint")
    return build_model(name, **kwargs)


def load_checkpoint(path, map_location="cpu", *, expected_sha256=None, key=None, allow_unverified=False, run=None):
    """Load a checkpoint saved by ``save_checkpoint``: returns ``(model, manifest)``, model in eval mode.

    ``path`` may be the ``.safetensors`` or the ``.json`` file. Sizes and hashes are checked before
    the weights are parsed, and nothing is ever unpickled (notebook 01). ``expected_sha256``
    optionally pins the exact weights file. With a signing key configured the signature must
    match (``allow_unverified=True`` accepts an unsigned or wrongly signed file anyway).
    ``run`` (a ``experiments.Run``) records the file in the run's record.
    """
    data, manifest, weights = _read_verified(path, expected_sha256, key, allow_unverified)
    not_safetensors = (f"{weights} is not a valid safetensors file ({{}}); it may be a pickle (torch.save) file "
                       "renamed, which is never unpickled here. Re-save it with save_checkpoint")
    try:
        header, _ = _split_header(data)
        stored = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(not_safetensors.format(err)) from None
    model = _build(weights, manifest, stored)
    try:
        state = unpack(st_load(data), manifest.get("sparse") or {})
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise CheckpointError(not_safetensors.format(err)) from None
    model.load_state_dict(state, strict=True)
    lineage.reset(model, manifest["sha256"], str(weights.resolve()))
    if run is not None:
        run.checkpoint("read", weights, manifest["sha256"])
    return model.to(map_location).eval(), manifest


def load_pretrained(name: str = "teacher_fashion_mnist", root=None, run=None):
    """Load a shipped pretrained model, ``(model, manifest)``, from ``data/pretrained`` (notebook 01).

    ``root`` overrides the folder. The SHA-256 of the weights and of the manifest pinned in
    ``PRETRAINED`` and ``PRETRAINED_MANIFESTS`` are checked on every load, so a swapped or
    modified file is caught; those pins, in the code, stand in for a signature (no signing key
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
        digest = _read_json_manifest(manifest_path)[1]
        if digest != PRETRAINED_MANIFESTS[name]:
            raise CheckpointError(f"{manifest_path} is not the shipped manifest (SHA-256 {digest[:12]}..., expected "
                                  f"{PRETRAINED_MANIFESTS[name][:12]}...): its architecture or metadata were edited. "
                                  f"Restore it with `git checkout -- data/pretrained/{name}.json`")
    return load_checkpoint(path, expected_sha256=PRETRAINED[name], allow_unverified=True, run=run)


def _find_parent(ref: dict, near: Path) -> Path | None:
    """The file a lineage reference points to: its recorded path, else the same name beside
    ``near``, else, for a shipped model (its SHA-256 pinned), this project's copy."""
    recorded = Path(str(ref.get("path") or ""))
    pinned = [PRETRAINED_DIR / f"{name}.safetensors" for name, sha in PRETRAINED.items() if sha == ref.get("sha256")]
    for candidate in (recorded, near.parent / recorded.name, *pinned):
        if str(candidate) not in ("", ".") and candidate.is_file():
            return candidate
    return None


def _refs(record) -> list[tuple[dict, str]]:
    """``(reference, role)`` of a manifest's lineage record; ValueError when it is malformed."""
    if not isinstance(record, dict) or not isinstance(record.get("parents", []), list) \
            or not isinstance(record.get("steps", []), list):
        raise ValueError("its lineage record is malformed (expected parents and steps lists)")
    steps = record.get("steps", [])
    if not all(isinstance(s, dict) for s in steps) or not all(isinstance(p, dict) for p in record.get("parents", [])):
        raise ValueError("its lineage record is malformed (a parent or step is not an object)")
    refs = [(p, "from") for p in record.get("parents", [])]
    return refs + [(s["teacher"], "teacher") for s in steps if isinstance(s.get("teacher"), dict)]


def lineage_chain(path, key=None) -> list[dict]:
    """The checkpoint at ``path`` and every ancestor its manifests name, depth first: each entry has
    ``depth``, ``path``, ``sha256``, ``role``, ``created``, ``steps``, ``verified`` and ``problem``
    (None, or why this link is broken). Never raises for a damaged or missing file."""
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
        try:
            refs = _refs(manifest.get("lineage") or {})
        except ValueError as err:
            entry["problem"] = f"{file}: {err}"
            return
        entry["steps"] = (manifest.get("lineage") or {}).get("steps", [])
        if manifest["sha256"] in seen:
            return
        seen.add(manifest["sha256"])
        parents = {}  # sha256 -> (reference, roles): a model pruned from its own teacher lists it once
        for ref_, role_ in refs:
            parents.setdefault(str(ref_.get("sha256")), (ref_, []))[1].append(role_)
        for parent, roles in parents.values():
            visit(_find_parent(parent, file), parent, depth + 1, " and ".join(dict.fromkeys(roles)))

    visit(Path(path), {}, 0, "checkpoint")
    return chain


def _printable(text) -> str:
    """``text`` with control characters (terminal escapes, newlines, ...) shown as escapes."""
    import unicodedata
    return "".join(c if unicodedata.category(c)[0] != "C" else ascii(c)[1:-1] for c in str(text))


def _step_text(step: dict) -> str:
    params = ", ".join(f"{k}={(v.get('sha256', '?')[:12] if isinstance(v, dict) else v)}"
                       for k, v in step.items() if k != "op")
    return f"{step.get('op', '?')}({params})"


def format_lineage(chain: list[dict]) -> str:
    """``lineage_chain``'s result as indented text (``python -m distill_utils lineage``); everything read
    from manifests is printed with control characters escaped."""
    marks = {"signed": "[signature ok]", "pinned": "[pinned in code]", "unverified": "[unsigned or bad signature]"}
    lines = []
    for e in chain:
        pad = "  " * e["depth"]
        head = "" if e["role"] == "checkpoint" else f"{e['role']}: "
        sha = str(e["sha256"] or "?")[:12]
        lines.append(pad + _printable(f"{head}{e['path']}  sha256 {sha}  {e['created'] or ''}  "
                                      f"{marks.get(e['verified'], '')}".rstrip()))
        if e["problem"]:
            lines.append(f"{pad}  ! {_printable(e['problem'])}")
        steps = " -> ".join(_step_text(s) for s in e["steps"])
        lines.append(f"{pad}  steps: {_printable(steps) or '(none recorded)'}")
    return "\n".join(lines)


def broken_links(chain: list[dict]) -> list[dict]:
    """The entries of ``lineage_chain`` whose link is broken (missing, damaged, or another file)."""
    return [e for e in chain if e["problem"]]

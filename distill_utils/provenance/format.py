"""The checkpoint file format: where the manifest lives, reading a file safely, and its signature.

Taught in notebook 01. Format 2 (written today) is one safetensors file whose header metadata
holds the manifest (``META_KEY``); format 1 (the shipped teacher) is plain safetensors with the
manifest only in the ``.json`` beside it. ``read_verified`` reads either: it checks sizes before
reading (a header is never over ``MAX_HEADER`` bytes), hashes the bytes against the manifest,
then checks the signature (``signing.py``) over the canonical manifest and the file's name.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from distill_utils import __version__
from distill_utils.common.files import ReadRefused, open_regular, read_limited
from distill_utils.provenance.pretrained import is_pinned
from distill_utils.provenance.signing import SigningKeyError, key_id, matches, sign, signing_key

__all__ = ["CheckpointError", "checkpoint_paths", "split_header", "with_manifest", "read_json_manifest",
           "read_verified", "checkpoint_key", "manifest_signature", "FORMAT", "FORMAT_VERSION", "META_KEY"]

FORMAT, FORMAT_VERSION = "distill-lab-checkpoint", 2
READABLE_VERSIONS = (1, 2)          # 1: manifest only in the .json beside the weights
META_KEY = "distill_lab_manifest"   # the safetensors header metadata entry holding the manifest
MAX_HEADER = 16 << 20               # bytes: a safetensors header (and so a manifest) is never larger
MAX_MANIFEST = 16 << 20             # bytes of a .json manifest
DERIVED = ("verified", "signature", "path")  # manifest fields that the signature does not cover


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message says why and what to do (notebook 01)."""


def checkpoint_paths(path) -> tuple[Path, Path]:
    """(weights, manifest) for either file of a checkpoint."""
    path = Path(path)
    weights = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    return weights, weights.with_suffix(".json")


# ---------------------------------------------------------------- the header

def split_header(blob: bytes) -> tuple[dict, int]:
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


def with_manifest(blob: bytes, manifest: dict) -> bytes:
    """``blob`` (from ``safetensors.save``) with ``manifest`` in its header metadata."""
    header, start = split_header(blob)
    header["__metadata__"] = {META_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor bytes to 8
    return struct.pack("<Q", len(text)) + text + blob[start:]


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


# ---------------------------------------------------------------- reading

def read_json_manifest(manifest_path: Path) -> tuple[dict, str]:
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


def _read_file(weights: Path, manifest_path: Path) -> tuple[bytes, dict, str | None]:
    """The file's bytes and manifest, sizes checked before reading, and the SHA-256 of the ``.json``
    when that is the manifest (format 1)."""
    with open_regular(weights) as f:
        size = os.fstat(f.fileno()).st_size
        found = _embedded_manifest(f, size)
        if found is not None:  # format 2: the file describes itself; a .json beside it is only a copy
            manifest, header = found
            _check_format(manifest, f"the manifest inside {weights}")
            return header + _read_body(f, weights, size - len(header), manifest), manifest, None
        # format 1 (or a damaged file): the .json beside it is the manifest
        if not manifest_path.exists():
            raise CheckpointError(
                f"manifest {manifest_path} for {weights.name} not found, and the file holds none itself; it "
                "is needed to know the architecture and to verify the weights' SHA-256. Keep the .json "
                "beside the .safetensors, or recreate both with save_checkpoint(build_model(...) with "
                "these weights, path)")
        manifest, manifest_sha = read_json_manifest(manifest_path)
        _check_format(manifest, manifest_path)
        if manifest.get("bytes") != size:
            raise CheckpointError(
                f"{weights} is {size:,} bytes but its manifest says {manifest.get('bytes')!r} bytes (SHA-256 "
                f"does not match its manifest): the file was modified, truncated or corrupted. "
                "Re-download it or re-save the checkpoint")
        f.seek(0)
        return f.read(size), manifest, manifest_sha


def read_verified(path, expected_sha256=None, key=None, allow_unverified=False) -> tuple[bytes, dict, Path]:
    """Read the weights once, after checking their size, and check them against the manifest (and
    against ``expected_sha256`` when given), then the signature: (bytes, manifest, weights path).
    The manifest gains ``sha256`` and ``bytes`` (of the file), ``path`` (absolute) and ``verified``."""
    weights, manifest_path = checkpoint_paths(path)
    if not weights.exists():
        raise CheckpointError(f"checkpoint weights {weights} not found; check the path "
                              "(save one with save_checkpoint(model, path))")
    try:
        data, manifest, manifest_sha = _read_file(weights, manifest_path)
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
    verified = _check_signature(manifest, weights, key, allow_unverified, is_pinned(digest, manifest_sha))
    manifest = {**manifest, "sha256": digest, "bytes": len(data), "path": str(weights.resolve()), "verified": verified}
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
        copy_, _ = read_json_manifest(manifest_path)
    except CheckpointError:
        return manifest
    same = isinstance(copy_, dict) and copy_.get("tensors_sha256") == manifest.get("tensors_sha256")
    if same and copy_.get("signature"):
        return {**manifest, "signature": copy_["signature"]}
    return manifest


# ---------------------------------------------------------------- signature

def checkpoint_key(key=None) -> bytes | None:
    """``signing.signing_key`` for checkpoints: a key problem is a CheckpointError like any other."""
    try:
        return signing_key(key)
    except SigningKeyError as err:
        raise CheckpointError(str(err)) from None


def _signed_body(manifest: dict, file_name: str) -> bytes:
    """The bytes a checkpoint signature covers: the manifest (which holds the weights' hash) and the
    weights file's name, as canonical JSON."""
    return json.dumps({"manifest": {k: v for k, v in manifest.items() if k not in DERIVED}, "file": file_name},
                      sort_keys=True, separators=(",", ":")).encode()


def manifest_signature(manifest: dict, key: bytes, file_name: str) -> dict:
    """The signature entry of a manifest: ``signing.sign`` of its canonical body, and the file's name."""
    signature = sign(_signed_body(manifest, file_name), key)
    return {"alg": signature["alg"], "key_id": signature["key_id"], "file": file_name, "value": signature["value"]}


def _check_signature(manifest: dict, weights: Path, key, allow_unverified: bool, pinned: bool) -> str:
    """'signed' (valid signature for this file and name), 'pinned' (a shipped file whose weights and
    manifest the code pins), 'no key' (none configured), or 'unverified' (allowed by the caller);
    else raise."""
    key, name = checkpoint_key(key), weights.name
    if key is None:
        return "no key"
    given = manifest.get("signature")
    if not given and pinned:
        return "pinned"
    ok = lambda file: matches(given, _signed_body(manifest, file), key)  # noqa: E731
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
        given_id = given.get("key_id") if isinstance(given, dict) else None
        problem = (f"the signature of {name} does not match: its manifest or weights changed after signing, or it "
                   f"was signed with another key (key id {given_id}, yours {key_id(key)}) "
                   "or by an older distill_utils. Do not use it unless you can re-check where it came from")
    if allow_unverified:
        return "unverified"
    raise CheckpointError(problem + " (or load it with allow_unverified=True)")

"""The checkpoint file format: where the manifest lives, reading a file safely, and its signature.

Taught in notebook 01. One integrity rule: the hash a manifest records (and so the signature, which
covers the manifest) covers every byte the loader interprets.

* Format 3 (written today): one safetensors file whose header metadata holds the manifest
  (``META_KEY``). ``content_sha256`` covers the tensor table (every tensor's name, dtype, shape and
  byte range) and the tensor bytes; the manifest itself is covered by the signature; and the header
  must be exactly the bytes ``save_checkpoint`` writes for that table and manifest, so no byte of
  the file is left uncovered.
* Format 2: the same layout, but its ``tensors_sha256`` covers only the tensor bytes, not the tensor
  table, so a format-2 file is never reported as signed: with a key configured it is refused (or
  ``unverified``), and ``python -m distill_utils sign PATH`` re-saves it in format 3 and signs it.
  Without a key it loads as before.
* Format 1 (the shipped teacher): plain safetensors with the manifest only in the ``.json`` beside it,
  whose ``sha256`` covers the whole file.

``read_verified`` reads any of them: it checks sizes before reading (a header is never over
``MAX_HEADER`` bytes), hashes the bytes against the manifest, then checks the signature
(``signing.py``) over the canonical manifest and the file's name.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from distill_utils import __version__
from distill_utils.common.files import ReadRefused, loads_json, open_regular, read_limited
from distill_utils.provenance.pretrained import is_pinned
from distill_utils.provenance.signing import SigningKeyError, key_id, matches, sign, signing_key

__all__ = ["CheckpointError", "checkpoint_paths", "split_header", "with_manifest", "content_sha256",
           "read_json_manifest", "read_verified", "checkpoint_key", "manifest_signature", "FORMAT", "FORMAT_VERSION",
           "META_KEY"]

FORMAT, FORMAT_VERSION = "distill-lab-checkpoint", 3
READABLE_VERSIONS = (1, 2, 3)       # 1: manifest only in the .json; 2: its hash leaves out the tensor table
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
    header = loads_json(blob[8:8 + n], "its header")
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def _header_bytes(table: dict, manifest: dict) -> bytes:
    """The header ``save_checkpoint`` writes for a tensor table and a manifest: its length, then compact
    JSON (the table in its order, then the manifest as canonical JSON), padded to 8 bytes."""
    header = {**table, "__metadata__": {META_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor bytes to 8
    return struct.pack("<Q", len(text)) + text


def content_sha256(table: dict, body: bytes) -> str:
    """The hash format 3 records: SHA-256 of the tensor table (compact JSON, length first) and the tensor bytes."""
    text = json.dumps(table, separators=(",", ":")).encode()
    return hashlib.sha256(struct.pack("<Q", len(text)) + text + body).hexdigest()


def _table(header: dict) -> dict:
    return {k: v for k, v in header.items() if k != "__metadata__"}


def with_manifest(blob: bytes, manifest: dict) -> bytes:
    """``blob`` (a safetensors file) with ``manifest`` in its header metadata, replacing any there."""
    header, start = split_header(blob)
    return _header_bytes(_table(header), manifest) + blob[start:]


def _embedded_manifest(f, size: int) -> tuple[dict, bytes, dict] | None:
    """The manifest inside a format-2 or 3 file's header, the header's bytes and the tensor table, or
    None if it has none."""
    head = f.read(8)
    if len(head) < 8 or (n := struct.unpack("<Q", head)[0]) > MAX_HEADER or 8 + n > size:
        return None
    text = head + f.read(n)
    try:
        header = loads_json(text[8:], "its header")
        manifest = loads_json(header["__metadata__"][META_KEY], "its manifest")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    return (manifest, text, _table(header)) if isinstance(manifest, dict) else None


# ---------------------------------------------------------------- reading

def read_json_manifest(manifest_path: Path) -> tuple[dict, str]:
    """A ``.json`` manifest and the SHA-256 of its bytes; CheckpointError if unreadable or malformed."""
    try:
        raw = read_limited(manifest_path, MAX_MANIFEST, "checkpoint manifest")
    except ReadRefused as err:
        raise CheckpointError(str(err)) from None
    except OSError as err:
        raise CheckpointError(f"cannot read manifest {manifest_path}: {err.strerror or err}") from None
    try:
        manifest = loads_json(raw, f"manifest {manifest_path}")
    except ReadRefused as err:
        raise CheckpointError(f"{err}; restore it or re-save the checkpoint") from None
    return manifest, hashlib.sha256(raw).hexdigest()


def _check_format(manifest, where) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a distill-lab checkpoint manifest "
                              f"(expected format {FORMAT!r}); re-save with save_checkpoint")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{where} has format_version {manifest.get('format_version')!r}; "
                              f"this distill_utils {__version__} reads versions {READABLE_VERSIONS}: "
                              "upgrade distill_utils or re-save the checkpoint")


def _read_file(weights: Path, manifest_path: Path) -> tuple[bytes, dict, str | None]:
    """The file's bytes and manifest, sizes checked before reading, and the SHA-256 of the ``.json``
    when that is the manifest (format 1)."""
    with open_regular(weights) as f:
        size = os.fstat(f.fileno()).st_size
        found = _embedded_manifest(f, size)
        if found is not None:  # formats 2 and 3: the file describes itself; a .json beside it is only a copy
            manifest, header, table = found
            _check_format(manifest, f"the manifest inside {weights}")
            if manifest["format_version"] == 1:
                raise CheckpointError(f"{weights} holds a manifest of format 1, which is never inside the file: "
                                      "the file was modified. Re-save the checkpoint")
            if manifest["format_version"] >= 3 and header != _header_bytes(table, manifest):
                raise CheckpointError(
                    f"the header of {weights} is not the one save_checkpoint writes for its tensor table and manifest "
                    "(extra bytes, keys or spacing): the file was modified or corrupted. Re-download it or re-save "
                    "the checkpoint")
            return header + _read_body(f, weights, size - len(header), manifest, table), manifest, None
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
    if weights.suffix.lower() == ".onnx":
        raise CheckpointError(f"{weights} is an ONNX file, not a checkpoint: it is signed when written (export_onnx, "
                              "quantize_int8 with a key set) and read with distill_utils.deploy")
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


def _read_body(f, weights: Path, n: int, manifest: dict, table: dict) -> bytes:
    """A format-2 or 3 file's tensor bytes, checked against the manifest's size (before reading) and hash:
    format 3's covers the tensor table too, format 2's the tensor bytes only."""
    if manifest.get("tensor_bytes") != n:
        raise CheckpointError(
            f"{weights} holds {n:,} bytes of tensors but its manifest says {manifest.get('tensor_bytes')!r} "
            "(SHA-256 does not match its manifest): the file was modified, truncated or corrupted. "
            "Re-download it or re-save the checkpoint")
    body = f.read(n)
    field = _hash_field(manifest)
    digest = content_sha256(table, body) if field == "content_sha256" else hashlib.sha256(body).hexdigest()
    if digest != manifest.get(field):
        what = "tensor table and tensors" if field == "content_sha256" else "tensors"
        raise CheckpointError(
            f"SHA-256 of the {what} in {weights} ({digest[:12]}...) does not match its manifest "
            f"({str(manifest.get(field))[:12]}...): the file was modified, truncated or corrupted. "
            "Re-download it or re-save the checkpoint")
    return body


def _hash_field(manifest: dict) -> str:
    return "tensors_sha256" if manifest.get("format_version") == 2 else "content_sha256"


def _detached_signature(manifest: dict, manifest_path: Path) -> dict:
    """A format-2 file signed after saving keeps its signature in the .json copy (signing does not
    change the weights file, so its SHA-256, which children's lineage records, stays the same)."""
    try:
        copy_, _ = read_json_manifest(manifest_path)
    except CheckpointError:
        return manifest
    field = _hash_field(manifest)
    same = isinstance(copy_, dict) and copy_.get(field) is not None and copy_.get(field) == manifest.get(field)
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
    if manifest.get("format_version") == 2:
        problem = (f"{name} is a format-2 checkpoint, whose hash and signature leave out the tensor table in its "
                   "header (tensor names, dtypes, shapes, offsets), so it cannot be verified. If you trust where it "
                   "came from, re-save it in format 3 and sign it: python -m distill_utils sign PATH")
    elif not given:
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

"""ONNX files' provenance: reading one safely, its ``distill_lab.*`` metadata, its signature (notebook 09).

Every ONNX file ``distill_utils.deploy`` writes carries, in ``metadata_props``, its lineage (the
file it was made from, ``parent``, by SHA-256 and path, and the ``steps`` since) and, with a
signing key configured, a signature: ``signing.sign`` of the serialized model without its
signature entry. Reading is bounded like every other file (a size limit before reading, regular
files only, JSON metadata depth-limited), and ``check_trust`` is the checkpoints' rule for ONNX
files: with a key configured, an unsigned or wrongly signed file is refused before it is used.
``onnx`` is imported only when a file is read or written.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from distill_utils.common.files import ReadRefused, atomic_write_bytes, loads_json, read_limited
from distill_utils.provenance.signing import SigningKeyError, key_id, matches, sign, signing_key

__all__ = ["OnnxFileError", "PREFIX", "MAX_ONNX", "load_onnx", "read_metadata", "write_onnx", "signature_status",
           "check_trust", "verify_onnx", "lineage_metadata", "read_onnx_lineage"]

PREFIX = "distill_lab."
SIGNATURE = PREFIX + "signature"
MAX_ONNX = 2 << 30  # bytes: protobuf cannot hold a larger model in one file


class OnnxFileError(ValueError):
    """An ONNX file cannot be read or written; the message says what and what to do (notebook 09)."""


def load_onnx(path):
    """``(model proto, file bytes)`` of a checked ONNX file; every failure is one OnnxFileError naming it."""
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    if not path.exists():
        raise OnnxFileError(f"ONNX file {path} not found; write one with export_onnx(model, path)")
    try:
        data = read_limited(path, MAX_ONNX, "ONNX file")  # its size is checked before anything is read
    except ReadRefused as err:
        raise OnnxFileError(str(err)) from None
    except OSError as err:
        raise OnnxFileError(f"cannot read ONNX file {path}: {err.strerror or err}") from None
    hint = (f"{path} is not a readable ONNX model ({{why}}): it may be truncated, corrupted or another kind "
            "of file. Export it again with export_onnx(model, path)")
    if not data:
        raise OnnxFileError(hint.format(why="the file is empty"))
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, RecursionError) as err:
        raise OnnxFileError(hint.format(why=f"protobuf: {err}")) from None
    if not model.graph.node or not model.opset_import:
        raise OnnxFileError(hint.format(why="no graph or no opset"))
    if not all(isinstance(p.key, str) and isinstance(p.value, str) for p in model.metadata_props):
        raise OnnxFileError(hint.format(why="its metadata is not UTF-8 text"))  # protobuf hands back bytes
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:  # also names that are not UTF-8
        raise OnnxFileError(hint.format(why=f"onnx.checker: {(str(err).splitlines() or [''])[0][:300]}")) from None
    return model, data


def read_metadata(model) -> dict:
    """The ``distill_lab.*`` metadata of a model proto, JSON values decoded."""
    out = {}
    for p in model.metadata_props:
        if p.key.startswith(PREFIX):
            key = p.key[len(PREFIX):]
            try:
                out[key] = loads_json(p.value, f"metadata {p.key}")
            except ValueError:  # not JSON, or nested too deeply: kept as text
                out[key] = p.value
    return out


def _unsigned_bytes(model) -> bytes:
    """The bytes a signature covers: the serialized model without its signature entry."""
    unsigned = copy.deepcopy(model)
    del unsigned.metadata_props[:]
    for p in model.metadata_props:
        if p.key != SIGNATURE:
            unsigned.metadata_props.add(key=p.key, value=p.value)
    return unsigned.SerializeToString(deterministic=True)


def write_onnx(model, path, meta: dict, key=None) -> Path:
    """Set ``meta`` as the model's metadata (replacing earlier ``distill_lab.*`` entries), sign it with
    ``key`` or the configured key, write it atomically (in place on ``model``'s metadata)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    for k, v in meta.items():
        if k != "signature":
            model.metadata_props.add(key=PREFIX + k, value=json.dumps(v))
    if (key := signing_key(key)) is not None:
        model.metadata_props.add(key=SIGNATURE, value=json.dumps(sign(_unsigned_bytes(model), key)))
    try:
        return atomic_write_bytes(path, model.SerializeToString(deterministic=True))
    except OSError as err:
        raise OnnxFileError(f"cannot write {path}: {err.strerror or err}. Free some space or choose a writable "
                            "folder; an existing file at that path was left as it was") from None


def _signature(model):
    """The stored signature entry, decoded (None when there is none; the raw text when it is not JSON)."""
    given = next((p.value for p in model.metadata_props if p.key == SIGNATURE), None)
    try:
        return given if given is None else loads_json(given, "its signature")
    except ValueError:
        return given


def signature_status(model, key=None) -> str:
    """'signed', 'no key' or 'unverified' (unsigned or a wrong signature)."""
    if (key := signing_key(key)) is None:
        return "no key"
    given = _signature(model)
    return "signed" if given is not None and matches(given, _unsigned_bytes(model), key) else "unverified"


def check_trust(model, path, key=None, allow_unverified: bool = False) -> str:
    """Before an ONNX file is used: 'signed', 'no key', or 'unverified' when ``allow_unverified``;
    else OnnxFileError, the checkpoints' rule (notebook 09): with a key configured, an unsigned file
    or a wrong signature is refused. A key that cannot be used raises ``signing.SigningKeyError``."""
    if (key := signing_key(key)) is None:
        return "no key"
    if signature_status(model, key) == "signed":
        return "signed"
    if allow_unverified:
        return "unverified"
    given, name = _signature(model), Path(path).name
    if given is None:
        raise OnnxFileError(f"{name} is not signed, and a signing key is configured: export it again with the key "
                            "set (export_onnx and quantize_int8 sign what they write), or pass allow_unverified=True "
                            "if you trust where it came from")
    given_id = given.get("key_id") if isinstance(given, dict) else None
    raise OnnxFileError(f"the signature of {name} does not match: the file changed after signing, or it was signed "
                        f"with another key (key id {given_id}, yours {key_id(key)}). Do not use it; export it again "
                        "from a checkpoint you trust")


def verify_onnx(path, key=None) -> str:
    """``check_trust`` of the ONNX file at ``path``: 'signed' or 'no key', else OnnxFileError
    (``python -m distill_utils verify model.onnx``); a key that cannot be used is an OnnxFileError too."""
    try:
        return check_trust(load_onnx(path)[0], path, key)
    except SigningKeyError as err:
        raise OnnxFileError(str(err)) from None


def lineage_metadata(record: dict) -> dict:
    """A lineage record ``{"parents", "steps"}`` as an ONNX file stores it: ``parent`` (one file, or
    None) and ``steps``."""
    parents = record.get("parents", [])
    if len(parents) > 1:
        raise ValueError(f"an ONNX file records one parent file; this lineage names {len(parents)}")
    return {"parent": parents[0] if parents else None, "steps": record.get("steps", [])}


def read_onnx_lineage(path, key=None) -> dict:
    """``sha256`` (of the file), ``created``, ``verified`` and the lineage ``record`` (``{"parents",
    "steps"}``; None when the file has no ``distill_lab`` lineage) of an ONNX file."""
    model, data = load_onnx(path)
    meta = read_metadata(model)
    record = None
    if "parent" in meta:
        parent = meta["parent"]
        record = {"parents": [] if parent is None else [parent], "steps": meta.get("steps", [])}
    return {"sha256": hashlib.sha256(data).hexdigest(), "created": meta.get("created"),
            "verified": signature_status(model, key), "record": record}

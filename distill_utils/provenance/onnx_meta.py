"""ONNX files' provenance: reading one safely, its ``distill_lab.*`` metadata, its signature (notebook 09).

Every ONNX file ``distill_utils.deploy`` writes carries, in ``metadata_props``, its lineage (the
file it was made from, ``parent``, by SHA-256 and path, and the ``steps`` since) and, with a
signing key configured, a signature: ``signing.sign`` of the serialized model without its
signature entry. ``onnx`` is imported only when a file is read or written.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from distill_utils.common.files import atomic_write_bytes
from distill_utils.provenance.signing import matches, sign, signing_key

__all__ = ["OnnxFileError", "PREFIX", "load_onnx", "read_metadata", "write_onnx", "signature_status",
           "lineage_metadata", "read_onnx_lineage"]

PREFIX = "distill_lab."
SIGNATURE = PREFIX + "signature"


class OnnxFileError(ValueError):
    """An ONNX file cannot be read or written; the message says what and what to do (notebook 09)."""


def load_onnx(path):
    """``(model proto, file bytes)`` of a checked ONNX file; every failure is one OnnxFileError naming it."""
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"ONNX file {path} not found; write one with export_onnx(model, path)")
    data = path.read_bytes()  # the file's own size, nothing read from its contents, sizes this
    hint = (f"{path} is not a readable ONNX model ({{why}}): it may be truncated, corrupted or another kind "
            "of file. Export it again with export_onnx(model, path)")
    if not data:
        raise OnnxFileError(hint.format(why="the file is empty"))
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise OnnxFileError(hint.format(why=f"protobuf: {err}")) from None
    if not model.graph.node or not model.opset_import:
        raise OnnxFileError(hint.format(why="no graph or no opset"))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise OnnxFileError(hint.format(why=f"onnx.checker: {str(err).splitlines()[0]}")) from None
    return model, data


def read_metadata(model) -> dict:
    """The ``distill_lab.*`` metadata of a model proto, JSON values decoded."""
    out = {}
    for p in model.metadata_props:
        if p.key.startswith(PREFIX):
            key = p.key[len(PREFIX):]
            try:
                out[key] = json.loads(p.value)
            except ValueError:
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


def signature_status(model, key=None) -> str:
    """'signed', 'no key' or 'unverified' (unsigned or a wrong signature)."""
    if (key := signing_key(key)) is None:
        return "no key"
    given = next((p.value for p in model.metadata_props if p.key == SIGNATURE), None)
    if given is None:
        return "unverified"
    try:
        given = json.loads(given)
    except ValueError:
        return "unverified"
    return "signed" if matches(given, _unsigned_bytes(model), key) else "unverified"


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

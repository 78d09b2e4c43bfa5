"""Which files of a grading folder can be trusted: signature, hash, lineage; nothing is unpickled.

Every file below the folder is a submission, except hidden ones and the readable ``.json`` copies
beside checkpoints (and the leaderboards). A ``.safetensors`` checkpoint or an ``.onnx`` file is
verified with ``distill_utils.provenance`` and the room's key: its bytes against its hash, its
signature, and its lineage (every link found, unchanged and signed with the room's key or pinned as
the shipped teacher). Anything else is refused with the reason: a pickle (whatever its name), a link,
an unsigned or modified file, a broken lineage, or the same weights as an earlier submission.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from distill_utils.common.files import ReadRefused, open_regular
from distill_utils.provenance.format import CheckpointError, read_verified
from distill_utils.provenance.lineage import broken_links, lineage_chain
from distill_utils.provenance.onnx_meta import OnnxFileError, load_onnx, read_metadata, signature_status

__all__ = ["Submission", "Refusal", "submissions", "verify", "refuse_duplicates", "OUTPUTS"]

OUTPUTS = ("leaderboard.md", "leaderboard.html")  # what grading writes into the folder: never submissions
PICKLES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar", ".zip")
SAVE = ("save it with save_checkpoint(model, path, lineage=...) (or deploy.export_onnx) with "
        "DISTILL_SIGNING_KEY_FILE set to the room's key")


@dataclasses.dataclass(frozen=True)
class Submission:
    """A verified file: ``name`` is its path below the folder; ``identity`` is what a duplicate shares
    (the hash of a checkpoint's tensors, or of an ONNX file's graph)."""
    name: str
    path: Path
    kind: str
    sha256: str
    identity: str
    created: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class Refusal:
    name: str
    reason: str


def submissions(folder) -> list[Path]:
    """Every file below ``folder`` that is a submission, in name order (see the module docstring)."""
    folder = Path(folder)
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts) or path.is_dir() or path.name in OUTPUTS:
            continue
        if path.suffix == ".json" and path.with_suffix(".safetensors").exists():
            continue  # the readable copy of a checkpoint's manifest
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _pickled(path: Path) -> bool:
    """Whether the file starts like torch.save's zip or a pickle (protocol 2-5). Asked only of a file that
    did not read as a checkpoint or ONNX file: a safetensors header length can start with 0x80 too."""
    try:
        with open_regular(path) as f:
            head = f.read(2)
    except (OSError, ReadRefused):
        return False
    return head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def verify(path, folder, key: bytes) -> Submission | Refusal:
    """A ``Submission`` if the file at ``path`` is a checkpoint or ONNX file signed with ``key`` whose
    lineage holds, else a ``Refusal`` saying why."""
    path, name = Path(path), Path(path).relative_to(folder).as_posix()
    if path.suffix.lower() not in (".safetensors", ".onnx"):
        if path.suffix.lower() in PICKLES:
            return Refusal(name, f"a {path.suffix} file is a pickle: never loaded (it could run code); {SAVE}")
        return Refusal(name, "not a model file the grader reads: submit a .safetensors checkpoint or an .onnx file")
    if path.is_symlink():
        return Refusal(name, "a link: copy the file itself into the folder")
    try:
        found = _checkpoint(path, key) if path.suffix.lower() == ".safetensors" else _onnx(path, key)
    except (CheckpointError, OnnxFileError) as err:
        if _pickled(path):
            return Refusal(name, f"a pickle (torch.save) file, whatever its name: never unpickled (it could run "
                                 f"code); {SAVE}")
        return Refusal(name, f"damaged or modified: {err}")
    if isinstance(found, str):
        return Refusal(name, found)
    if (why := _lineage(path, key)) is not None:
        return Refusal(name, why)
    return Submission(name, path.resolve(), *found, bytes=os.stat(path).st_size)


def _checkpoint(path: Path, key: bytes):
    """(kind, sha256, identity, created) of a checkpoint verified with ``key``, or why it is refused."""
    manifest = read_verified(path, key=key, allow_unverified=True)[1]  # hashes checked; the signature below
    if manifest["verified"] not in ("signed", "pinned"):
        if not manifest.get("signature"):
            return f"not signed with the room's key: {SAVE}"
        if manifest.get("format_version") == 2:
            return "a format-2 checkpoint cannot be verified: save it again (format 3) with the room's key"
        return ("its signature does not match the room's key: the file was changed after it was signed, or "
                "signed with another key")
    identity = manifest.get("content_sha256") or manifest["sha256"]
    return "checkpoint", manifest["sha256"], identity, str(manifest.get("created") or "")


def _onnx(path: Path, key: bytes):
    model, data = load_onnx(path)
    if signature_status(model, key) != "signed":
        signed = any(p.key.endswith("signature") for p in model.metadata_props)
        return ("its signature does not match the room's key: the file was changed after it was signed, or signed "
                "with another key" if signed else f"not signed with the room's key: {SAVE}")
    identity = hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()
    return "onnx", hashlib.sha256(data).hexdigest(), identity, str(read_metadata(model).get("created") or "")


def _lineage(path: Path, key: bytes) -> str | None:
    """Why the file's lineage cannot be trusted, or None: every link found, unchanged, and signed with
    the room's key (or pinned: the shipped teacher); and at least one parent or step recorded."""
    chain = lineage_chain(path, key)
    if not chain[0]["steps"] and len(chain) == 1:
        return ("no lineage recorded: save it with lineage=Lineage.of(teacher manifest).then(...) (or "
                "Lineage().then('fit', ...) for a model you trained yourself)")
    for entry in broken_links(chain):
        return f"broken lineage: {Path(entry['path']).name}: {entry['problem']}"
    for entry in chain[1:]:
        if entry["verified"] not in ("signed", "pinned"):
            return (f"broken lineage: its ancestor {Path(entry['path']).name} is not signed with the room's key; "
                    "sign or save it again with the key and copy it beside this file")
    return None


def refuse_duplicates(found: list) -> list:
    """``found`` with every submission whose weights an earlier one has (first saved, then first by name)
    replaced by a ``Refusal`` naming that one."""
    first = {}
    for item in sorted((s for s in found if isinstance(s, Submission)), key=lambda s: (s.created, s.name)):
        first.setdefault(item.identity, item)
    return [Refusal(s.name, f"duplicate of {first[s.identity].name} (the same weights): one entry per model")
            if isinstance(s, Submission) and first[s.identity] is not s else s for s in found]

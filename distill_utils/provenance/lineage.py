"""Where a model came from: a ``Lineage`` value, and the one walker that follows it back through files.

Taught in notebook 07 (see also the README, "Trust and reproducibility"). A ``Lineage`` names
the files a model descends from (``parents``: SHA-256 and path) and every step done since
(``steps``: ``{"op": ..., parameters}``). It is a value: the notebook builds it next to the
work it describes and passes it on::

    teacher, manifest = load_checkpoint("teacher.safetensors")
    pruned = prune_channels(teacher, 0.7)
    distill(pruned, teacher, data, T=4.0)
    lineage = Lineage.of(manifest).then("prune_channels", amount=0.7).then(
        "distill", teacher=file_ref(manifest), T=4.0)
    save_checkpoint(pruned, "pruned_kd.safetensors", lineage=lineage)

``save_checkpoint`` writes it into the manifest and ``deploy.export_onnx`` into the ONNX file's
metadata; ``deploy.quantize_int8`` names its fp32 file as parent. ``lineage_chain`` reads any of
these files (``.safetensors`` or ``.onnx``) and follows every parent and every teacher back;
``python -m distill_utils lineage FILE`` prints it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import unicodedata
from pathlib import Path

from distill_utils.provenance.format import CheckpointError, read_verified
from distill_utils.provenance.onnx_meta import OnnxFileError, read_onnx_lineage
from distill_utils.provenance.pretrained import shipped_files
from distill_utils.provenance.signing import signing_key

__all__ = ["Lineage", "file_ref", "lineage_chain", "format_lineage", "broken_links"]


def file_ref(manifest: dict) -> dict:
    """``{"sha256", "path"}`` of the file a manifest describes (from ``load_checkpoint``,
    ``load_pretrained`` or ``verify_checkpoint``): how a lineage names a parent or a teacher."""
    if not isinstance(manifest, dict) or not manifest.get("sha256") or not manifest.get("path"):
        raise ValueError("a lineage names a file by the manifest that load_checkpoint, load_pretrained or "
                         "verify_checkpoint return (it has 'sha256' and 'path'); got "
                         f"{type(manifest).__name__}")
    return {"sha256": manifest["sha256"], "path": manifest["path"]}


@dataclasses.dataclass(frozen=True)
class Lineage:
    """The files a model descends from and the steps done since (notebook 07). Immutable:
    ``then`` returns a new value."""
    parents: tuple = ()
    steps: tuple = ()

    @classmethod
    def of(cls, manifest: dict) -> Lineage:
        """The lineage of a model that *is* the file ``manifest`` describes: that file, no steps."""
        return cls(parents=(file_ref(manifest),))

    @classmethod
    def from_record(cls, record) -> Lineage:
        """The value of a stored record ``{"parents": [...], "steps": [...]}``; ValueError if malformed."""
        if not isinstance(record, dict) or not isinstance(record.get("parents", []), list) \
                or not isinstance(record.get("steps", []), list):
            raise ValueError("its lineage record is malformed (expected parents and steps lists)")
        parents, steps = record.get("parents", []), record.get("steps", [])
        if not all(isinstance(s, dict) for s in steps) or not all(isinstance(p, dict) for p in parents):
            raise ValueError("its lineage record is malformed (a parent or step is not an object)")
        return cls(tuple(copy.deepcopy(parents)), tuple(copy.deepcopy(steps)))

    def then(self, op: str, **params) -> Lineage:
        """This lineage and one more step: ``op`` with its JSON-friendly ``params`` (None values left out).
        A step that used a teacher names it with ``teacher=file_ref(its manifest)``."""
        step = {"op": op, **{k: v for k, v in params.items() if v is not None}}
        try:
            json.dumps(step, allow_nan=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"lineage step {op!r}: a parameter is not JSON-serialisable ({err}); pass numbers, "
                             "strings, lists or dicts (e.g. float(x), a criterion's name)") from None
        return dataclasses.replace(self, steps=(*self.steps, copy.deepcopy(step)))

    def training(self) -> str:
        """What the model was trained on since its parents, e.g. ``"6,000 x 2 (labels) + 10,000 x 1 (teacher
        only)"``: images x epochs of each step that trained, and whether it read labels (KD with ``alpha = 1``
        reads none); ``""`` when no step trained (notebooks 07 and 09 print it beside each model)."""
        def images(step) -> str:
            return f"{step['images']:,}" if isinstance(step.get("images"), int) else str(step.get("images", "?"))

        def reads(step) -> str:
            return "teacher only" if step["op"] == "distill" and step.get("alpha") == 1.0 else "labels"
        return " + ".join(f"{images(s)} x {s['epochs']} ({reads(s)})" for s in self.steps if "epochs" in s)

    def record(self) -> dict:
        """The JSON record stored in a manifest or an ONNX file: ``{"parents": [...], "steps": [...]}``."""
        return {"parents": copy.deepcopy(list(self.parents)), "steps": copy.deepcopy(list(self.steps))}

    def references(self) -> list[tuple[dict, str]]:
        """``(reference, role)`` of every file this lineage names: its parents ("from") and the
        teachers of its steps ("teacher")."""
        refs = [(p, "from") for p in self.parents]
        return refs + [(s["teacher"], "teacher") for s in self.steps if isinstance(s.get("teacher"), dict)]


# ---------------------------------------------------------------- the walker

def _entry(depth: int, role: str, path, sha256) -> dict:
    """One link of a chain (the only place it is built)."""
    return {"depth": depth, "role": role, "path": str(path), "sha256": sha256, "created": None, "steps": [],
            "verified": None, "problem": None}


def _read(file: Path, key) -> dict:
    """``sha256``, ``created``, ``verified`` and the lineage ``record`` (None: the file has none) of a
    checkpoint or an ONNX file; CheckpointError or OnnxFileError when it cannot be read."""
    if file.suffix.lower() == ".onnx":
        return read_onnx_lineage(file, key)
    manifest = read_verified(file, key=key, allow_unverified=True)[1]
    return {"sha256": manifest["sha256"], "created": manifest.get("created"), "verified": manifest["verified"],
            "record": manifest.get("lineage") or {}}


def _find(ref: dict, near: Path) -> Path | None:
    """The file a reference points to: its recorded path, else the same name beside ``near``, else,
    for a shipped model (its SHA-256 pinned), this project's copy."""
    recorded = Path(str(ref.get("path") or ""))
    for candidate in (recorded, near.parent / recorded.name, *shipped_files(ref.get("sha256"))):
        if str(candidate) not in ("", ".") and candidate.is_file():
            return candidate
    return None


def lineage_chain(path, key=None) -> list[dict]:
    """The file at ``path`` (a checkpoint or an ``.onnx`` file) and every ancestor its lineage names,
    depth first: each entry has ``depth``, ``path``, ``sha256``, ``role``, ``created``, ``steps``,
    ``verified`` and ``problem`` (None, or why this link is broken) (notebook 07). Never raises for a
    damaged or missing file; a file seen before is listed but not followed again (a loop ends).
    Only an unusable signing key raises (``signing.SigningKeyError``)."""
    key = signing_key(key)
    chain, seen = [], set()

    def visit(file: Path | None, ref: dict, depth: int, role: str):
        entry = _entry(depth, role, file or ref.get("path"), ref.get("sha256"))
        chain.append(entry)
        if file is None:
            entry["problem"] = "file not found"
            return
        try:
            found = _read(file, key)
        except (CheckpointError, OnnxFileError) as err:
            entry["problem"] = str(err)
            return
        if ref.get("sha256") and found["sha256"] != ref["sha256"]:
            entry["problem"] = f"this file's SHA-256 is {found['sha256'][:12]}..., not the recorded one"
        entry.update(sha256=found["sha256"], created=found["created"], verified=found["verified"])
        if found["record"] is None:
            entry["problem"] = "no distill_lab lineage in this file's metadata (not written by distill_utils.deploy)"
            return
        try:
            lineage = Lineage.from_record(found["record"])
        except ValueError as err:
            entry["problem"] = f"{file}: {err}"
            return
        entry["steps"] = list(lineage.steps)
        if found["sha256"] in seen:
            return
        seen.add(found["sha256"])
        parents = {}  # sha256 -> (reference, roles): a model pruned from its own teacher lists it once
        for ref_, role_ in lineage.references():
            parents.setdefault(str(ref_.get("sha256")), (ref_, []))[1].append(role_)
        for parent, roles in parents.values():
            visit(_find(parent, file), parent, depth + 1, " and ".join(dict.fromkeys(roles)))

    visit(Path(path), {}, 0, "checkpoint")
    return chain


# ---------------------------------------------------------------- printing

def _printable(text) -> str:
    """``text`` with control characters (terminal escapes, newlines, ...) shown as escapes."""
    return "".join(c if unicodedata.category(c)[0] != "C" else ascii(c)[1:-1] for c in str(text))


def _step_text(step: dict) -> str:
    params = ", ".join(f"{k}={(v.get('sha256', '?')[:12] if isinstance(v, dict) else v)}"
                       for k, v in step.items() if k != "op")
    return f"{step.get('op', '?')}({params})"


def format_lineage(chain: list[dict]) -> str:
    """``lineage_chain``'s result as indented text (``python -m distill_utils lineage``, notebook 07);
    everything read from files is printed with control characters escaped."""
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

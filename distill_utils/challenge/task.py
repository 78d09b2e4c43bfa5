"""The challenge file: the task the workshop leader sets, and the room's signing key.

``new_challenge`` writes ``challenge.json`` (the data split models are measured on, the targets, the
ranking rule, how latency is timed) and, beside it unless another is named, ``room.key``: the HMAC key
the room signs its checkpoints with (``DISTILL_SIGNING_KEY_FILE``). The file records the key's public
id, not the key. ``load_challenge`` reads both back and checks every value with the project's rules.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from distill_utils.common import rules
from distill_utils.common.files import ReadRefused, atomic_write_bytes, atomic_write_json, read_json, read_limited
from distill_utils.provenance.pretrained import PRETRAINED
from distill_utils.provenance.signing import SigningKeyError, key_id, signing_key

__all__ = ["ChallengeError", "Task", "RANKS", "new_challenge", "load_challenge", "describe", "fingerprint"]

FORMAT, VERSION = "distill-lab-challenge", 1
# what a leaderboard can rank by: (column, what it means, lower is better)
RANKS = {"bytes": ("bytes", "bytes on disk", True), "params": ("params", "parameters", True),
         "latency_ms": ("latency_ms", "latency", True), "accuracy": ("accuracy", "accuracy", False)}
MEASURED = ("dataset", "split", "images", "seed", "latency_batch", "latency_rounds", "latency_repeats", "reference")


class ChallengeError(ValueError):
    """The challenge file, its key or a grading folder cannot be used; one line says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What a challenge asks (notebook 09's last section shows a learner submitting). ``images`` 0: the
    whole ``split``; a target left at None does not apply; ``reference``: a shipped model timed in the same
    rounds as every submission (its speed-up column), empty for none."""
    title: str = "workshop challenge"
    dataset: str = "fashion_mnist"
    data_root: str = "data"
    split: str = "test"
    images: int = 0
    seed: int = 0
    min_accuracy: float = 0.0
    max_bytes: int | None = None
    max_params: int | None = None
    max_latency_ms: float | None = None
    rank_by: str = "bytes"
    latency_batch: int = 1
    latency_rounds: int = 3
    latency_repeats: int = 20
    reference: str = "teacher_fashion_mnist"
    key_file: str = "room.key"
    key_id: str = ""


_OPTIONAL = rules.in_range(0, low_open=True)
RULES = {"title": str, "dataset": str, "data_root": str, "key_file": str, "key_id": str,
         "reference": rules.one_of(("", *PRETRAINED)),
         "split": rules.one_of(("test", "train")), "images": rules.size, "seed": rules.size,
         "min_accuracy": rules.in_range(0, 1, what="a fraction of the images"), "max_bytes": _OPTIONAL,
         "max_params": _OPTIONAL, "max_latency_ms": _OPTIONAL, "rank_by": rules.one_of(RANKS),
         "latency_batch": rules.count, "latency_rounds": rules.count, "latency_repeats": rules.count}


def _checked(values: dict, where: str) -> Task:
    unknown = sorted(set(values) - set(RULES))
    if unknown:
        raise ChallengeError(f"{where}: unknown setting {unknown[0]!r}{rules.did_you_mean(unknown[0], RULES)}; "
                             f"the settings are {', '.join(RULES)}")
    for name, value in values.items():
        rule = RULES[name]
        wrong = rules.type_error(value, rule) if isinstance(rule, type) else (
            None if value is None and name.startswith("max_") else rule(value))
        if wrong:
            raise ChallengeError(f"{where}: {name} = {value!r} {wrong}")
    return Task(**values)


def new_challenge(path, task: Task) -> tuple[Path, Path]:
    """Write the challenge file at ``path`` and, if it does not exist yet, the room's key file (a new random
    key, readable by its owner only); return both paths. The file records the key's id, never the key."""
    path = Path(path)
    task = _checked(dataclasses.asdict(task), "the challenge")
    key_path = (path.parent / task.key_file) if not Path(task.key_file).is_absolute() else Path(task.key_file)
    if not key_path.exists():
        atomic_write_bytes(key_path, (secrets.token_hex(32) + "\n").encode())
        os.chmod(key_path, 0o600)
    task = dataclasses.replace(task, key_id=key_id(_read_key(key_path)))
    record = {"format": FORMAT, "version": VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **dataclasses.asdict(task)}
    atomic_write_json(path, record)
    return path, key_path


def _read_key(key_path: Path) -> bytes:
    try:
        key = signing_key(read_limited(key_path, 4096, "room key file").strip())
    except (OSError, ReadRefused) as err:
        raise ChallengeError(f"cannot read the room's key file {key_path}: {getattr(err, 'strerror', None) or err}; "
                             "copy it from the workshop leader or fix key_file in the challenge") from None
    except SigningKeyError as err:
        raise ChallengeError(f"the room's key file {key_path}: {err}") from None
    return key


def load_challenge(path) -> tuple[Task, bytes]:
    """The task of the challenge file at ``path`` and the room's key (its id checked against the file's)."""
    path = Path(path)
    try:
        record = read_json(path, 1 << 20, "challenge file")
    except FileNotFoundError:
        raise ChallengeError(f"challenge file {path} not found; write one with `python -m distill_utils challenge "
                             "new` or name it with --challenge") from None
    except (OSError, ReadRefused) as err:
        why = getattr(err, "strerror", None) or err
        raise ChallengeError(f"cannot read the challenge file {path}: {why}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ChallengeError(f"{path} is not a challenge file of this distill_utils (format {FORMAT!r}, version "
                             f"{VERSION}); write one with `python -m distill_utils challenge new`")
    task = _checked({k: v for k, v in record.items() if k not in ("format", "version", "created")}, str(path))
    key_path = Path(task.key_file) if Path(task.key_file).is_absolute() else path.parent / task.key_file
    key = _read_key(key_path)
    if key_id(key) != task.key_id:
        raise ChallengeError(f"the key file {key_path} is not the room's key (key id {key_id(key)}, the challenge "
                             f"names {task.key_id}); use the key file written with the challenge")
    return task, key


def fingerprint(task: Task) -> str:
    """What the measurements depend on: results cached under another fingerprint are measured again."""
    settings = {name: getattr(task, name) for name in MEASURED}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def describe(task: Task) -> str:
    """The task in one sentence, for the leaderboards."""
    images = f"{task.images:,} {task.split} images" if task.images else f"the {task.split} split"
    targets = [f"accuracy >= {100 * task.min_accuracy:.1f}%" if task.min_accuracy else ""]
    targets += [f"{what} <= {getattr(task, f'max_{name}'):,}" for name, what in
                (("bytes", "bytes on disk"), ("params", "parameters"), ("latency_ms", "latency (ms)"))
                if getattr(task, f"max_{name}") is not None]
    _, what, lower = RANKS[task.rank_by]
    order = "smallest first" if lower else "highest first"
    return (f"{task.dataset}, {images}; targets: {', '.join(t for t in targets if t) or 'none'}; "
            f"ranked by {what} ({order}) among the models that meet every target")

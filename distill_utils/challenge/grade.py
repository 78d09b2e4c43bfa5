"""Grading a folder of submissions: verify every file, measure the new ones, write the leaderboard.

``grade(GradeOptions(folder, challenge))`` is what ``python -m distill_utils challenge grade FOLDER``
runs. It never unpickles anything and never trusts a number a learner wrote: accuracy, parameters and
latency are measured here, bytes are the file's own size.
"""
from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import torch

from distill_utils.challenge.board import html_page, markdown, rank
from distill_utils.challenge.measure import measure_new, read_cache, test_split, write_cache
from distill_utils.challenge.task import ChallengeError, fingerprint, load_challenge
from distill_utils.challenge.verify import Refusal, Submission, refuse_duplicates, submissions, verify
from distill_utils.common.files import atomic_write_files

__all__ = ["GradeOptions", "Grading", "grade", "machine"]


@dataclasses.dataclass(frozen=True)
class GradeOptions:
    """``folder``: the submissions; ``challenge``: the challenge file; ``out``: where the leaderboards and
    the cache go (default: ``folder``); ``data``: a ``Dataset`` to measure on instead of loading the task's."""
    folder: Path
    challenge: Path = Path("challenge.json")
    out: Path | None = None
    data: object = None


@dataclasses.dataclass(frozen=True)
class Grading:
    """What grading found: the leaderboard rows in order, the refused files, which submissions were
    measured now and which came from the cache, and the files written."""
    rows: list
    refused: list
    measured: list
    cached: list
    written: list


def machine() -> str:
    """This machine in a few words, for the leaderboard."""
    cpu = platform.processor() or platform.machine()
    return f"{platform.node() or 'this machine'} ({cpu}, {torch.get_num_threads()} threads, torch {torch.__version__})"


def grade(options: GradeOptions) -> Grading:
    """Verify, measure (new files only) and rank the submissions in ``options.folder`` (see the module)."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise ChallengeError(f"{folder} is not a folder; name the shared folder the submissions were copied into")
    task, key = load_challenge(options.challenge)
    out = Path(options.out or folder)
    found = refuse_duplicates([verify(p, folder, key) for p in submissions(folder)])
    subs = [s for s in found if isinstance(s, Submission)]
    stamp = fingerprint(task)
    cache = read_cache(out, stamp)
    new = [s for s in subs if s.sha256 not in cache]
    if new:
        cache.update(measure_new(new, task, key, test_split(task, options.data)))
    rows, refused = [], [s for s in found if isinstance(s, Refusal)]
    for s in subs:
        result = cache[s.sha256]
        if "refused" in result:
            refused.append(Refusal(s.name, result["refused"]))
        else:
            rows.append({"name": s.name, "kind": s.kind, "bytes": s.bytes, "sha256": s.sha256, **result})
    write_cache(out, stamp, {s.sha256: cache[s.sha256] for s in subs})  # only what is in the folder now
    ranked, here = rank(rows, task), machine()
    refused.sort(key=lambda r: r.name)
    written = atomic_write_files({out / "leaderboard.md": markdown(task, ranked, refused, here).encode(),
                                  out / "leaderboard.html": html_page(task, ranked, refused, here).encode()})
    return Grading(ranked, refused, [s.name for s in new], [s.name for s in subs if s not in new], written)

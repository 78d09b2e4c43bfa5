"""Measuring verified submissions on the grader's machine, and the cache that spares measuring them twice.

Accuracy on the task's split, bytes on disk (the submitted file), parameters, and latency at the task's
batch size: every new submission and the reference model are timed in interleaved rounds
(``deploy.interleaved_ms``, notebook 09's timer), so a busy moment slows all of them alike; the
speed-up against the reference is paired by round, which keeps results measured on another day
comparable. Results are cached by the file's SHA-256 under the task's fingerprint: a changed file has
another hash and is measured again, an unchanged one is not.
"""
from __future__ import annotations

import hashlib
import math
import statistics
from pathlib import Path

from distill_utils import deploy
from distill_utils.challenge.task import ChallengeError
from distill_utils.common.files import ReadRefused, atomic_write_json, read_json
from distill_utils.deploy.export import session_of
from distill_utils.measure import count_params
from distill_utils.provenance.checkpoints import CheckpointError, load_checkpoint, load_pretrained
from distill_utils.provenance.onnx_meta import OnnxFileError, load_onnx
from distill_utils.train import evaluate

__all__ = ["CACHE", "read_cache", "write_cache", "measure_new", "test_split"]

CACHE = ".challenge-cache.json"
CACHE_FORMAT = "distill-lab-challenge-cache"


def test_split(task, data=None):
    """The images the task measures accuracy on: its split of ``data`` (loaded when None), or a fixed
    random subset of ``task.images`` of them."""
    if data is None:
        from distill_utils.data import load_dataset
        data = load_dataset(task.dataset, root=task.data_root)
    split = getattr(data, task.split)
    if task.images > len(split):
        raise ChallengeError(f"the challenge measures on {task.images:,} {task.split} images but {task.dataset}'s "
                             f"{task.split} split has {len(split):,}; write the challenge again with --images "
                             f"{len(split)} or fewer (0: all)")
    return split.subset(task.images, seed=task.seed) if task.images else split


def read_cache(folder, fingerprint: str) -> dict:
    """``{sha256: result}`` measured earlier for this task, or {} (none yet, another task, or unreadable)."""
    try:
        cache = read_json(Path(folder) / CACHE, 64 << 20, "challenge cache")
    except (OSError, ReadRefused):
        return {}
    ok = isinstance(cache, dict) and cache.get("format") == CACHE_FORMAT and cache.get("fingerprint") == fingerprint
    return dict(cache["results"]) if ok and isinstance(cache.get("results"), dict) else {}


def write_cache(folder, fingerprint: str, results: dict) -> None:
    atomic_write_json(Path(folder) / CACHE, {"format": CACHE_FORMAT, "fingerprint": fingerprint, "results": results})


def _open(sub, key: bytes, example):
    """(accuracy function, parameter count, runner) of a submission, read again and checked against the
    hash it was verified with; CheckpointError/OnnxFileError/DeployError when it cannot be used."""
    if sub.kind == "checkpoint":
        model, manifest = load_checkpoint(sub.path, key=key)
        if manifest["sha256"] != sub.sha256:
            raise CheckpointError("the file changed while it was being graded; grade again")
        return (lambda split: evaluate(model, split, precision="fp32")), count_params(model), \
            deploy.torch_runner(model, example)
    model, data = load_onnx(sub.path)
    if hashlib.sha256(data).hexdigest() != sub.sha256:
        raise OnnxFileError("the file changed while it was being graded; grade again")
    sess = session_of(data, sub.path)
    params = sum(math.prod(init.dims) for init in model.graph.initializer)
    return (lambda split: deploy.evaluate_onnx(sub.path, split, sess=sess)), params, \
        deploy.onnx_runner(sub.path, example, sess=sess)


def _reference_runner(task, example):
    if not task.reference:
        return None
    model, _ = load_pretrained(task.reference)
    return deploy.torch_runner(model, example)


def measure_new(subs: list, task, key: bytes, split) -> dict:
    """``{sha256: result}`` for ``subs``: accuracy, params, latency_ms and speedup (None without a
    reference), or ``{"refused": why}`` for a file that cannot run on the task's images."""
    example = split.x[:task.latency_batch]
    results, runners = {}, {}
    for sub in subs:
        try:
            accuracy, params, runner = _open(sub, key, example)
            results[sub.sha256] = {"accuracy": accuracy(split), "params": int(params)}
            runners[sub.sha256] = runner
        except (CheckpointError, OnnxFileError, deploy.DeployError, RuntimeError, ValueError) as err:
            results[sub.sha256] = {"refused": f"cannot run on the task's images: {' '.join(str(err).split())[:300]}"}
    if not runners:
        return results
    reference = _reference_runner(task, example)
    contenders = {**runners, **({"reference": reference} if reference else {})}
    times = deploy.interleaved_ms(contenders, task.latency_rounds, task.latency_repeats)
    for sha, rounds in times.items():
        if sha != "reference":
            results[sha]["latency_ms"] = statistics.median(rounds)
            results[sha]["speedup"] = deploy.paired_speedup(times["reference"], rounds) if reference else None
    return results

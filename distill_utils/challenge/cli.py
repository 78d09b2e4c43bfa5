"""``python -m distill_utils challenge new | grade FOLDER``: the arguments and what each verb prints."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

__all__ = ["add_parser", "cmd_challenge"]


def add_parser(sub, fail) -> None:
    """The ``challenge`` command among ``sub`` (the CLI's subparsers); ``fail(message, code)`` prints an error.
    (It lives here, not in ``__main__``, which is at its 400 lines.)"""
    parser = sub.add_parser("challenge", help="a workshop challenge: new (the task, the room's key) | grade FOLDER")
    _add_verbs(parser)
    parser.set_defaults(func=lambda args: cmd_challenge(args, fail))


def _add_verbs(parser: argparse.ArgumentParser) -> None:
    """The ``new`` and ``grade`` verbs (the defaults are ``task.Task``'s)."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("new", help="write the challenge file and, if missing, the room's signing key beside it")
    p.add_argument("--out", default="challenge.json", help="the challenge file (default challenge.json)")
    p.add_argument("--title", default="workshop challenge")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default="data", help="where the grader finds the dataset (default data)")
    p.add_argument("--split", default="test", help="the held-out split accuracy is measured on (default test)")
    p.add_argument("--images", type=int, default=0, help="measure on a fixed random subset of this many (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of that subset")
    p.add_argument("--min-accuracy", type=float, default=0.0, help="target: accuracy >= this fraction, e.g. 0.9")
    p.add_argument("--max-bytes", type=int, help="target: the submitted file is at most this many bytes")
    p.add_argument("--max-params", type=int, help="target: at most this many parameters")
    p.add_argument("--max-latency-ms", type=float, help="target: latency budget in ms on the grader's machine")
    p.add_argument("--rank-by", default="bytes", help="bytes (default), params, latency_ms or accuracy")
    p.add_argument("--latency-batch", type=int, default=1, help="batch size of the latency measurement")
    p.add_argument("--latency-rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed runs per round")
    p.add_argument("--reference", default="teacher_fashion_mnist",
                   help="shipped model timed with every submission, for the speed-up column ('' for none)")
    p.add_argument("--key-file", default="room.key", help="the room's key file, beside the challenge file unless "
                                                          "absolute; a new random key is written if it is missing")
    p = verbs.add_parser("grade", help="verify every file in FOLDER, measure the new ones, write the leaderboard")
    p.add_argument("folder", help="the shared folder the learners copied their files into")
    p.add_argument("--challenge", default="challenge.json", help="the challenge file (default challenge.json)")
    p.add_argument("--out", help="where leaderboard.md, leaderboard.html and the cache go (default: FOLDER)")


def cmd_challenge(args, fail) -> int:
    """``new`` writes the task and the room's key; ``grade FOLDER`` verifies, measures and ranks. A user's error
    is one line (``fail``), exit code 2."""
    from distill_utils.challenge.task import ChallengeError, Task
    from distill_utils.data import DataError
    try:
        return _new(args, Task) if args.verb == "new" else _grade(args)
    except (ChallengeError, DataError) as err:
        return fail(err, 2)
    except OSError as err:
        return fail(f"cannot write {getattr(err, 'filename', '') or 'a file'}: {err.strerror or err}; choose a "
                    "writable folder with --out", 2)


def _new(args, Task) -> int:
    from distill_utils.challenge.task import describe, new_challenge
    fields = {f.name for f in dataclasses.fields(Task)}
    task = Task(**{k: v for k, v in vars(args).items() if k in fields})
    path, key_path = new_challenge(args.out, task)
    key_path = key_path.resolve()
    print(f"wrote {path} ({describe(task)})\nthe room's signing key: {key_path} (share it with the room only)\n"
          f"learners: export DISTILL_SIGNING_KEY_FILE={key_path}; save with save_checkpoint(model, NAME.safetensors, "
          "lineage=...) or deploy.export_onnx; copy the file (keep its name) into the shared folder\n"
          f"grade: python -m distill_utils challenge grade FOLDER --challenge {path}")
    return 0


def _grade(args) -> int:
    from distill_utils.challenge.grade import GradeOptions, grade
    result = grade(GradeOptions(Path(args.folder), Path(args.challenge), Path(args.out) if args.out else None))
    print(result.written[0].read_text(), end="")
    print(f"\n{len(result.measured)} measured now, {len(result.cached)} from the cache, {len(result.refused)} "
          f"refused; wrote {', '.join(str(p) for p in result.written)}")
    return 0

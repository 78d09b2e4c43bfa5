"""One interleaved timer for every speed comparison (notebook 09, ``bench/deploy_speed.py``).

Timing one model, then the next, lets a busy moment of the machine land on one of them only.
``interleaved_ms`` runs every contender once per round, in turn, and keeps each one's median
per round; ``paired_speedup`` compares two contenders round by round (a slow round slows both)
and takes the median over rounds. A contender is a callable that runs once (``runtime.py``
builds them for PyTorch models and ONNX files).
"""
from __future__ import annotations

import statistics
import time

__all__ = ["run_times", "median_ms", "interleaved_ms", "paired_speedup"]


def run_times(run, repeats: int, warmup: int = 3) -> list[float]:
    """Wall time in ms of each of ``repeats`` calls of ``run()``, after ``warmup`` untimed calls (notebook 09)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def median_ms(run, repeats: int, warmup: int = 3) -> float:
    """Median wall time of one call of ``run()``, in ms (``run_times``)."""
    return statistics.median(run_times(run, repeats, warmup))


def interleaved_ms(runners: dict, rounds: int, repeats, warmup: int = 3) -> dict:
    """``{key: [median ms of each round]}`` for ``runners`` (``{key: callable that runs once}``):
    in each of ``rounds`` rounds every runner, in turn, is called ``warmup`` times untimed and
    ``repeats`` times timed. ``repeats`` is one number or ``{key: number}`` (e.g. more runs for a
    batch of 1) (notebook 09)."""
    if rounds < 1:
        raise ValueError(f"need rounds >= 1; got {rounds}")
    counts = repeats if isinstance(repeats, dict) else dict.fromkeys(runners, repeats)
    missing = [k for k in runners if k not in counts]
    if missing:
        raise ValueError(f"repeats has no count for {missing}; give one number or one per runner")
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            times[key].append(median_ms(run, counts[key], warmup))
    return times


def paired_speedup(reference: list[float], times: list[float]) -> float:
    """Median over rounds of ``reference[round] / times[round]``: how many times faster than the
    reference, each round compared with itself (notebook 09)."""
    if len(reference) != len(times) or not times:
        raise ValueError(f"need the same rounds for both; got {len(reference)} and {len(times)}")
    return statistics.median(r / t for r, t in zip(reference, times))

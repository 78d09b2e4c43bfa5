"""The engine every check uses: run the learner's function on a few cases, compare each answer with
the package's, and say what is wrong (notebooks 02-07 and 09, "Write it yourself").

An ``Exercise`` holds the cases (random and edge-case inputs), the package's answer to each, how to
compare two answers (a tolerance, never exact floats) and the known mistakes: each a wrong answer
written out. ``check`` returns a ``Verdict``; when every wrong answer of the learner's is a known
mistake's answer, the verdict names that mistake. Nothing here raises on the learner's behalf: a stub
gives "not attempted yet", an exception inside the learner's function is reported, so a notebook
runs top to bottom with the stubs in place.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch

__all__ = ["Verdict", "Case", "Mistake", "Exercise", "Raised", "Invalid", "call", "check", "close", "as_float"]


@dataclasses.dataclass(frozen=True, repr=False)
class Verdict:
    """The result of a check: ``status`` is "correct", "not attempted" or "wrong"; ``message`` is the
    line a notebook shows (the verdict is displayed as that line); ``mistake`` names a known mistake."""
    function: str
    status: str
    message: str
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message

    __repr__ = __str__


@dataclasses.dataclass(frozen=True)
class Case:
    """One input: ``args`` for the function, described by ``label`` in messages."""
    label: str
    args: tuple


@dataclasses.dataclass(frozen=True)
class Mistake:
    """A known wrong answer: ``answer`` computes it (same signature as the learner's function)."""
    key: str
    message: str
    answer: Callable


@dataclasses.dataclass(frozen=True)
class Raised:
    """The function raised ``error`` on a case (an answer like any other: a mistake may raise too)."""
    error: BaseException

    def text(self) -> str:
        return f"{type(self.error).__name__}: {' '.join(str(self.error).split())[:200]}"


@dataclasses.dataclass(frozen=True)
class Invalid:
    """An answer that cannot be compared, and why (e.g. one threshold per layer instead of one)."""
    why: str


def call(fn, args):
    """``fn(*args)`` on a deep copy: the learner's function never sees (or changes) our tensors."""
    return fn(*copy.deepcopy(args))


@dataclasses.dataclass(frozen=True)
class Exercise:
    """What ``check`` needs. ``reference(*args)`` is the package's answer; ``run(fn, args)`` turns a
    function's return value into a comparable answer (default: call it on a copy of the arguments);
    ``compare(got, expected)`` is None when they agree, else what differs (one phrase); ``cases()``
    builds the cases afresh for every check (nothing is kept between checks)."""
    function: str
    reference: Callable
    compare: Callable
    cases: Callable
    mistakes: tuple = ()
    run: Callable = call
    against: str = "the package"


def _answer(run, fn, args):
    """``run(fn, args)``, an exception as ``Raised`` (a NotImplementedError propagates)."""
    try:
        return run(fn, args)
    except NotImplementedError:
        raise
    except Exception as err:  # the learner's code may raise anything; it is reported, not raised
        return Raised(err)


def _agree(compare, got, other) -> bool:
    """Whether two answers are the same: both raised, both the same complaint, or compare() is None."""
    if isinstance(got, Raised) or isinstance(other, Raised):
        return isinstance(got, Raised) and isinstance(other, Raised)
    if isinstance(got, Invalid) or isinstance(other, Invalid):
        return isinstance(got, Invalid) and isinstance(other, Invalid) and got.why == other.why
    return compare(got, other) is None


def _problem(exercise: Exercise, got, expected) -> str | None:
    if isinstance(got, Raised):
        return f"your function raised {got.text()}"
    if isinstance(got, Invalid):
        return got.why
    return exercise.compare(got, expected)


def _likely_mistake(exercise: Exercise, cases, expected, answers, wrong: set) -> Mistake | None:
    """The known mistake that explains the learner's wrong answers: each of them is the mistake's answer
    (the right ones may be fixed already). One that is wrong on exactly the same cases comes first."""
    explaining = []
    for mistake in exercise.mistakes:
        theirs = [_answer(exercise.run, mistake.answer, c.args) for c in cases]
        if all(_agree(exercise.compare, answers[i], theirs[i]) for i in wrong):
            if {i for i, (t, e) in enumerate(zip(theirs, expected)) if _problem(exercise, t, e)} == wrong:
                return mistake
            explaining.append(mistake)
    return explaining[0] if explaining else None


def check(exercise: Exercise, learner) -> Verdict:
    """Run ``learner`` on every case of ``exercise`` and judge its answers (see the module docstring)."""
    name = getattr(learner, "__name__", exercise.function)
    if not callable(learner):
        return Verdict(name, "wrong", f"wrong: pass the function itself, e.g. check(my_function), not "
                                      f"{type(learner).__name__}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waiting (restored below)
    try:
        with torch.random.fork_rng(devices=[]):  # building modules draws random numbers: the caller's stream is kept
            return _judge(exercise, learner, name)
    finally:
        torch.set_num_threads(threads)


def _judge(exercise: Exercise, learner, name: str) -> Verdict:
    cases = exercise.cases()
    expected = [exercise.reference(*copy.deepcopy(c.args)) for c in cases]
    answers = []
    for case in cases:
        try:
            answers.append(_answer(exercise.run, learner, case.args))
        except NotImplementedError:
            where = "" if not answers else f" for {case.label}"
            return Verdict(name, "not attempted", f"not attempted yet: {name} (or a function it calls) still raises "
                                                  f"NotImplementedError{where}; write it in the cell above, run that "
                                                  "cell, then this one")
    problems = {i: p for i, (g, e) in enumerate(zip(answers, expected)) if (p := _problem(exercise, g, e))}
    if not problems:
        labels = "; ".join(c.label for c in cases)
        return Verdict(name, "correct", f"correct: {name} agrees with {exercise.against} on all "
                                        f"{len(cases)} cases ({labels})")
    if (mistake := _likely_mistake(exercise, cases, expected, answers, set(problems))) is not None:
        return Verdict(name, "wrong", f"wrong: {mistake.message}", mistake.key)
    first = min(problems)
    case, problem = cases[first], problems[first]
    more = f" (and {len(problems) - 1} more case{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
    return Verdict(name, "wrong", f"wrong on {case.label}: {problem}{more}")


# ---------------------------------------------------------------- comparing answers

def _tensor(value, like: torch.Tensor):
    """``value`` as a float tensor, or the reason it is not one."""
    if value is None:
        return "it returned None (is a `return` missing?)"
    try:
        t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        return f"it returned a {type(value).__name__}, not a tensor"
    return t.to(like.dtype if like.is_floating_point() else torch.float64)


def close(got, expected, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    """None when the tensor (or number) ``got`` has ``expected``'s shape and values within the tolerance
    (NaN counts as equal to NaN: a known mistake may overflow too); else what differs."""
    expected = torch.as_tensor(expected)
    t = _tensor(got, expected)
    if isinstance(t, str):
        return t
    if t.shape != expected.shape:
        return f"it returned shape {tuple(t.shape)}, expected {tuple(expected.shape)}"
    expected = expected.to(t.dtype)
    if torch.allclose(t, expected, rtol=rtol, atol=atol, equal_nan=True):
        return None
    if (~torch.isfinite(t) & torch.isfinite(expected)).any():
        return "it returned NaN or inf where the answer is a finite number"
    diff = (t - expected).abs().nan_to_num(float("inf")).max().item()
    return f"values differ by up to {diff:.3g} (e.g. {_short(t)} instead of {_short(expected)})"


def _short(t: torch.Tensor) -> str:
    values = t.flatten()[:3].tolist()
    return ("[" + ", ".join(f"{v:.4g}" for v in values) + (", ...]" if t.numel() > 3 else "]")) if t.dim() else \
        f"{t.item():.6g}"


def as_float(value):
    """A returned number (float, 0-d tensor, numpy scalar) as a float, or ``Invalid``."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return Invalid(f"it returned {type(value).__name__}, not one number")

"""Per-seed comparisons -> mean, spread and one plain verdict sentence (every notebook from 03 on).

A notebook that states an outcome of its own run ("KD helps here") computes the sentence::

    from distill_utils.runs.evidence import compare
    compare({0: 0.861, 1: 0.858, 2: 0.866}, {0: 0.850, 1: 0.851, 2: 0.853}, "KD", "scratch")
    # KD beats scratch by 1.0 points (95% CI +0.3 to +1.8, paired over 3 seeds; every seed)

The two sides are paired by seed (same initial weights, same batch order), so the verdict
looks at the per-seed differences ``d_i = a_i - b_i`` over the seeds both sides have:

* fewer than 3 shared seeds: "too few seeds" (the numbers are still reported);
* otherwise the 95% confidence interval of the mean difference (Student t with n - 1 degrees
  of freedom) decides: "better" or "worse" when it excludes 0, else
  "no measurable difference";
* values so large that their differences or spread overflow: "cannot compare" (never a verdict
  drawn from a NaN interval).

A sentence shows the mean difference and the interval that decided it ("95% CI +0.3 to +1.7,
paired over 3 seeds": the interval of the mean of ``a - b``, which always reads ``a`` minus ``b``).
Results are multiplied by ``scale`` (accuracy in [0, 1] -> percentage points).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Comparison", "compare", "compare_latency", "summary", "t_quantile", "MIN_SEEDS"]

MIN_SEEDS = 3  # fewer paired seeds than this never give a verdict

# Two-sided 95% critical values of Student's t (the 0.975 quantile) for 1..30 degrees of freedom.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (a 95% two-sided
    interval is ``mean ± t_quantile(n - 1) * std / sqrt(n)``). Tabulated up to 30, then the
    Cornish-Fisher expansion around the normal quantile (error < 1e-4)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _std(xs) -> float:
    """Sample standard deviation (n - 1); nan for one value."""
    if len(xs) < 2:
        return math.nan
    m = _mean(xs)
    return math.sqrt(sum((x - m) * (x - m) for x in xs) / (len(xs) - 1))  # inf, not OverflowError, when huge


def _per_seed(values, name: str, scale: float) -> dict[int, float]:
    """Check one side's {seed: metric} and return it scaled, seeds as ints."""
    if not isinstance(values, Mapping):
        raise ValueError(f"results of {name!r} must be a mapping seed -> metric (e.g. {{0: 0.91, 1: 0.90}}), "
                         f"got {type(values).__name__}")
    if not values:
        raise ValueError(f"results of {name!r} are empty: run at least one seed")
    out, given = {}, {}
    for seed, value in values.items():
        try:
            key = int(seed)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"results of {name!r}: seed {seed!r} is not an integer") from None
        if isinstance(seed, bool) or key != seed and str(key) != str(seed).strip():
            raise ValueError(f"results of {name!r}: seed {seed!r} is not an integer")
        if key in given:  # {0: ..., "0": ...}: one run counted twice, or two runs under one seed
            raise ValueError(f"results of {name!r}: seed {key} is given twice (as {given[key]!r} and {seed!r}); "
                             "give each seed once")
        given[key] = seed
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise ValueError(f"results of {name!r}: seed {key} has {value!r}, not a number")
        try:
            number = float(value) * scale
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"results of {name!r}: seed {key} has {value!r}, not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"results of {name!r}: seed {key} has the non-finite value {number}; "
                             "that run diverged or failed (or it overflows once scaled), so rerun or drop it")
        out[key] = number
    return dict(sorted(out.items()))


def _decimals(*values: float) -> int:
    """Decimals (1 to 3) that show each non-zero value with at least one significant digit."""
    small = [round(abs(v), 9) for v in values if math.isfinite(v) and round(abs(v), 9) > 0]  # 0.8999999 -> 0.9
    return min(3, max([1] + [-math.floor(math.log10(v)) for v in small]))


@dataclass(frozen=True)
class Comparison:
    """``name_a`` against ``name_b`` over the seeds both have (see ``compare``).

    ``a``, ``b``: {seed: scaled metric} on the shared seeds; ``diff`` and ``diff_std``: mean and
    standard deviation of ``a - b`` per seed; ``ci``: its 95% interval (nan below 2 seeds);
    ``wins``: seeds on which ``a`` is strictly better than ``b`` (higher, or lower when
    ``higher_is_better`` is False); ``unpaired``: {name: seeds only that side has}, left out.
    """

    name_a: str
    name_b: str
    a: dict
    b: dict
    unit: str = "points"
    higher_is_better: bool = True
    unpaired: dict = field(default_factory=dict)
    over: str = "seed"  # what the repeats are, in the sentence: seeds, or timing rounds

    @property
    def seeds(self) -> list[int]:
        return list(self.a)

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def differences(self) -> list[float]:
        return [self.a[s] - self.b[s] for s in self.a]

    mean_a = property(lambda self: _mean(list(self.a.values())))
    std_a = property(lambda self: _std(list(self.a.values())))
    mean_b = property(lambda self: _mean(list(self.b.values())))
    std_b = property(lambda self: _std(list(self.b.values())))
    diff = property(lambda self: _mean(self.differences))
    diff_std = property(lambda self: _std(self.differences))

    @property
    def ci(self) -> tuple[float, float]:
        if self.n < 2:
            return (math.nan, math.nan)
        half = t_quantile(self.n - 1) * self.diff_std / math.sqrt(self.n)
        return (self.diff - half, self.diff + half)

    @property
    def wins(self) -> int:
        sign = 1 if self.higher_is_better else -1
        return sum(sign * d > 0 for d in self.differences)

    @property
    def losses(self) -> int:
        sign = 1 if self.higher_is_better else -1
        return sum(sign * d < 0 for d in self.differences)

    def __post_init__(self):
        if not isinstance(self.higher_is_better, bool):
            raise ValueError(f"higher_is_better must be True or False, got {self.higher_is_better!r}")

    @property
    def comparable(self) -> bool:
        """Whether the differences, their spread and interval are finite numbers (they overflow for
        values near the largest float)."""
        numbers = [self.diff, *(self.ci if self.n >= 2 else ()), *((self.diff_std,) if self.n >= 2 else ())]
        return all(math.isfinite(v) for v in numbers)

    @property
    def verdict(self) -> str:
        if not self.comparable:
            return "cannot compare"
        if self.n < MIN_SEEDS:
            return "too few seeds"
        low, high = self.ci
        if low <= 0 <= high:
            return "no measurable difference"
        a_higher = low > 0
        return "better" if a_higher == self.higher_is_better else "worse"

    def _amount(self, value: float, with_sign: bool = False) -> str:
        d = self._decimals()
        text = f"{value:+.{d}f}" if with_sign else f"{abs(value):.{d}f}"
        return f"{text} {self.unit}".rstrip()

    def _decimals(self) -> int:
        """Enough decimals for the difference, the interval's half-width and both its ends (an end close to
        zero is shown as -0.04, not -0.0)."""
        return _decimals(self.diff, *(((self.ci[1] - self.ci[0]) / 2, *self.ci) if self.n >= 2 else ()))

    def _interval(self) -> str:
        """'95% CI +0.9 to +1.3, paired over 3 seeds': the interval of the mean of a - b that decides."""
        d, (low, high) = self._decimals(), self.ci
        return f"95% CI {low:+.{d}f} to {high:+.{d}f}, paired over {self.n} {self.over}s"

    def sentence(self) -> str:
        seeds = f"{self.n} {self.over}" + ("s" if self.n != 1 else "")
        lower = "" if self.higher_is_better else "lower is better; "
        verdict = self.verdict
        if verdict == "cannot compare":
            text = (f"cannot compare {self.name_a} with {self.name_b}: their {self.over} differences overflow "
                    "(values near the largest float); check the metric and the scale")
        elif verdict in ("better", "worse"):
            count = self.wins if verdict == "better" else self.losses
            how = f"every {self.over}" if count == self.n else f"{count} of {self.n}"
            verb = "beats" if verdict == "better" else "is worse than"
            text = f"{self.name_a} {verb} {self.name_b} by {self._amount(self.diff)} ({lower}{self._interval()}; {how})"
        elif verdict == "no measurable difference":
            text = (f"no measurable difference between {self.name_a} and {self.name_b} "
                    f"({self._amount(self.diff, True)}, {lower}{self._interval()})")
        else:
            text = (f"too few {self.over}s to conclude: {self.name_a} vs {self.name_b} "
                    f"{self._amount(self.diff, True)} ({lower}{seeds}; a verdict needs {MIN_SEEDS})")
        if self.unpaired:
            left = "; ".join(f"{name} {', '.join(map(str, seeds))}" for name, seeds in self.unpaired.items())
            text += f" [left out, no partner {self.over}: {left}]"
        return text

    def __str__(self) -> str:
        return self.sentence()

    def _repr_markdown_(self) -> str:
        return self.sentence()

    def as_dict(self) -> dict:
        """Plain numbers for records and tables."""
        return dict(name_a=self.name_a, name_b=self.name_b, seeds=self.seeds, n=self.n,
                    mean_a=self.mean_a, std_a=self.std_a, mean_b=self.mean_b, std_b=self.std_b,
                    diff=self.diff, diff_std=self.diff_std, ci=list(self.ci), wins=self.wins,
                    verdict=self.verdict, sentence=self.sentence(), unit=self.unit, over=self.over)


def compare(a: Mapping, b: Mapping, name_a: str, name_b: str, *, higher_is_better: bool = True,
            unit: str = "points", scale: float = 100.0, over: str = "seed") -> Comparison:
    """Compare two methods' per-seed results ``{seed: metric}``, paired by seed (notebook 03).

    Values are multiplied by ``scale`` (default 100: accuracy in [0, 1] -> percentage points;
    use ``scale=1.0, unit="ms", higher_is_better=False, over="round"`` for latency measured in
    interleaved timing rounds: ``over`` names the repeats in the sentence). Seeds only one side has
    are left out (and named in the sentence). Raises ``ValueError`` for empty results, values
    that are not finite numbers, or no seed in common.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be a finite non-zero number, got {scale!r}")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    sa, sb = _per_seed(a, name_a, scale), _per_seed(b, name_b, scale)
    shared = [s for s in sa if s in sb]
    if not shared:
        raise ValueError(f"{name_a!r} (seeds {list(sa)}) and {name_b!r} (seeds {list(sb)}) share no seed; "
                         "run both methods with the same seeds so they can be paired")
    unpaired = {name: [s for s in side if s not in shared]
                for name, side in ((name_a, sa), (name_b, sb))}
    return Comparison(name_a, name_b, {s: sa[s] for s in shared}, {s: sb[s] for s in shared},
                      unit=unit, higher_is_better=higher_is_better,
                      unpaired={k: v for k, v in unpaired.items() if v}, over=over)


def compare_latency(rounds_a, rounds_b, name_a: str, name_b: str) -> Comparison:
    """``compare`` of two models' latencies (ms) measured in the same interleaved timing rounds
    (``deploy.time_models``: one median per round), paired by round; lower is better."""
    return compare(dict(enumerate(rounds_a)), dict(enumerate(rounds_b)), name_a, name_b,
                   higher_is_better=False, unit="ms", scale=1.0, over="round")


def summary(results: Mapping[str, Mapping], scale: float = 100.0):
    """A DataFrame with one row per method: ``method, mean, std, n`` over its seeds (scaled)."""
    import pandas as pd
    if not isinstance(results, Mapping) or not results:
        raise ValueError("summary needs a non-empty mapping method -> {seed: metric}")
    rows = []
    for method, values in results.items():
        per_seed = list(_per_seed(values, method, scale).values())
        rows.append(dict(method=method, mean=_mean(per_seed), std=_std(per_seed), n=len(per_seed)))
    return pd.DataFrame(rows, columns=["method", "mean", "std", "n"])

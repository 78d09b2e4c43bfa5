"""Verdicts from per-seed results: numbers against hand computations, every branch, bad input."""
import math
import statistics

import numpy as np
import pytest

from distill_utils.runs.evidence import Comparison, compare, summary, t_quantile


def test_numbers_match_a_hand_computation():
    # differences 1.0, 1.2, 1.1 points: mean 1.1, std 0.1, 95% CI 1.1 ± 4.3027 * 0.1 / sqrt(3)
    c = compare({0: 0.86, 1: 0.87, 2: 0.85}, {0: 0.85, 1: 0.858, 2: 0.839}, "KD", "scratch")
    assert isinstance(c, Comparison)
    assert c.seeds == [0, 1, 2] and c.n == 3
    assert c.a == pytest.approx({0: 86.0, 1: 87.0, 2: 85.0})
    assert c.mean_a == pytest.approx(86.0) and c.std_a == pytest.approx(1.0)
    assert c.mean_b == pytest.approx((85 + 85.8 + 83.9) / 3)
    assert c.std_b == pytest.approx(statistics.stdev([85, 85.8, 83.9]))
    assert c.diff == pytest.approx(1.1) and c.diff_std == pytest.approx(0.1)
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert c.ci == pytest.approx((1.1 - half, 1.1 + half), abs=1e-4)
    assert c.wins == 3 and c.verdict == "better"
    assert c.sentence() == "KD beats scratch by 1.1 points (95% CI +0.9 to +1.3, paired over 3 seeds; every seed)"
    assert c._repr_markdown_() == c.sentence() == str(c)


def test_better_on_most_seeds_says_how_many():
    d = [2.0, 2.5, 3.0, 2.2, -0.1]   # mean 1.92, std 1.20: the 95% CI (0.43, 3.41) excludes 0
    c = compare({s: 0.8 + x / 100 for s, x in enumerate(d)}, {s: 0.8 for s in range(5)}, "A", "B")
    assert c.diff == pytest.approx(statistics.mean(d)) and c.diff_std == pytest.approx(statistics.stdev(d))
    assert c.verdict == "better" and c.wins == 4
    assert c.sentence() == "A beats B by 1.9 points (95% CI +0.4 to +3.4, paired over 5 seeds; 4 of 5)"


def test_worse():
    c = compare({0: 0.80, 1: 0.81, 2: 0.79}, {0: 0.82, 1: 0.835, 2: 0.81}, "KD", "scratch")
    assert c.verdict == "worse" and c.wins == 0 and c.losses == 3
    assert c.sentence() == ("KD is worse than scratch by 2.2 points (95% CI -2.9 to -1.4, paired over 3 seeds; "
                            "every seed)")


def test_no_measurable_difference_when_the_interval_holds_zero():
    # differences +1, -0.5, +0.2: mean 0.233, the interval straddles 0
    c = compare({0: 0.81, 1: 0.795, 2: 0.802}, {0: 0.80, 1: 0.80, 2: 0.80}, "KD", "scratch")
    low, high = c.ci
    assert low < 0 < high
    assert c.verdict == "no measurable difference"
    assert c.sentence() == ("no measurable difference between KD and scratch (+0.2 points, 95% CI -1.6 to +2.1, "
                            "paired over 3 seeds)")


def test_an_interval_end_close_to_zero_keeps_its_digits():
    # differences -0.3, -0.55, -0.65 points: the interval ends at -0.05
    c = compare({0: 0.800, 1: 0.800, 2: 0.800}, {0: 0.803, 1: 0.8055, 2: 0.8065}, "masked", "unmasked")
    low, high = c.ci
    assert c.verdict == "worse" and -0.1 < high < 0  # the interval ends just below zero
    assert f"95% CI {low:+.2f} to {high:+.2f}" in c.sentence() and "-0.0," not in c.sentence()


def test_consistent_but_noisy_differences_are_not_enough():
    # a positive difference on every seed, yet too spread for 3 seeds to rule out zero
    c = compare({0: 0.81, 1: 0.82, 2: 0.81}, {0: 0.80, 1: 0.80, 2: 0.80}, "A", "B")
    assert c.wins == 3 and c.verdict == "no measurable difference"


def test_too_few_seeds_still_reports_numbers():
    one = compare({0: 0.862}, {0: 0.853}, "KD", "scratch")
    assert one.verdict == "too few seeds" and one.diff == pytest.approx(0.9)
    assert math.isnan(one.diff_std) and all(math.isnan(x) for x in one.ci)
    assert one.sentence() == "too few seeds to conclude: KD vs scratch +0.9 points (1 seed; a verdict needs 3)"
    # two seeds with a huge, consistent gain: still no verdict
    two = compare({0: 0.9, 1: 0.91}, {0: 0.8, 1: 0.8}, "KD", "scratch")
    assert two.verdict == "too few seeds"
    assert two.sentence() == "too few seeds to conclude: KD vs scratch +10.5 points (2 seeds; a verdict needs 3)"


def test_lower_is_better_flips_the_wording():
    fast = {0: 1.0, 1: 1.1, 2: 1.05}
    slow = {0: 2.0, 1: 2.2, 2: 2.1}
    c = compare(fast, slow, "int8", "fp32", higher_is_better=False, unit="ms", scale=1.0)
    assert c.diff == pytest.approx(-1.05) and c.wins == 3 and c.verdict == "better"
    assert c.sentence() == ("int8 beats fp32 by 1.1 ms (lower is better; 95% CI -1.2 to -0.9, paired over 3 seeds; "
                            "every seed)")
    r = compare(slow, fast, "fp32", "int8", higher_is_better=False, unit="ms", scale=1.0)
    assert r.verdict == "worse" and r.sentence().startswith(
        "fp32 is worse than int8 by 1.1 ms (lower is better; 95% CI +0.9 to +1.2")


def test_timing_rounds_are_named_as_rounds():
    c = compare({0: 9.0, 1: 9.2, 2: 9.1}, {0: 12.0, 1: 12.1, 2: 12.3}, "int8", "fp32",
                higher_is_better=False, unit="ms", scale=1.0, over="round")
    assert c.sentence() == ("int8 beats fp32 by 3.0 ms (lower is better; 95% CI -3.4 to -2.7, paired over 3 rounds; "
                            "every round)")
    assert c.verdict == "better" and c.as_dict()["over"] == "round"
    few = compare({0: 9.0}, {0: 12.0}, "int8", "fp32", higher_is_better=False, unit="ms", scale=1.0, over="round")
    assert few.sentence().startswith("too few rounds to conclude: int8 vs fp32 -3.0 ms (lower is better; 1 round;")


def test_latency_rounds_are_compared_paired_by_round():
    from distill_utils.runs.evidence import compare_latency
    c = compare_latency([9.0, 9.2, 9.1], [12.0, 12.1, 12.3], "int8", "fp32")  # deploy.time_models' lists
    assert c.sentence() == ("int8 beats fp32 by 3.0 ms (lower is better; 95% CI -3.4 to -2.7, paired over 3 rounds; "
                            "every round)")
    assert compare_latency([9.0, 9.1, 9.3], [9.2, 8.9, 9.2], "a", "b").verdict == "no measurable difference"


def test_seeds_are_paired_and_unpaired_ones_left_out():
    # seed 3 only in a, seed 9 only in b; string seeds (from JSON) count as the same seeds
    a = {"0": 0.86, "1": 0.87, "2": 0.85, "3": 0.10}
    b = {0: 0.85, 1: 0.858, 2: 0.839, 9: 0.99}
    c = compare(a, b, "KD", "scratch")
    assert c.seeds == [0, 1, 2] and c.diff == pytest.approx(1.1)
    assert c.unpaired == {"KD": [3], "scratch": [9]}
    assert c.sentence().endswith("[left out, no partner seed: KD 3; scratch 9]")
    # pairing matters: the same numbers unpaired would give a different mean
    assert c.mean_a == pytest.approx(86.0)


def test_order_of_seeds_does_not_matter_and_numpy_values_work():
    a = {2: np.float32(0.85), 0: np.float64(0.86), 1: 0.87}
    b = {1: 0.858, 2: 0.839, 0: 0.85}
    c = compare(a, b, "KD", "scratch")
    assert c.seeds == [0, 1, 2] and c.diff == pytest.approx(1.1, abs=1e-5)


@pytest.mark.parametrize("a, b, message", [
    ({}, {0: 0.8}, "results of 'A' are empty"),
    ([0.8, 0.9], {0: 0.8}, "must be a mapping seed -> metric"),
    ({0: float("nan")}, {0: 0.8}, "seed 0 has the non-finite value nan"),
    ({0: 0.8}, {0: float("inf")}, "results of 'B': seed 0 has the non-finite value inf"),
    ({0: "0.8"}, {0: 0.8}, "not a number"),
    ({0: None}, {0: 0.8}, "not a number"),
    ({"x": 0.8}, {0: 0.8}, "seed 'x' is not an integer"),
    ({1.5: 0.8}, {0: 0.8}, "seed 1.5 is not an integer"),
    ({0: 0.8, 1: 0.8}, {2: 0.8, 3: 0.8}, "share no seed"),
])
def test_bad_input_is_one_clear_error(a, b, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare(a, b, "A", "B")


def test_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        compare({0: 1}, {0: 1}, "A", "B", scale=float("nan"))


def test_t_quantile_against_known_values():
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    # beyond the table: 40, 60 and 120 degrees of freedom (printed tables) and the normal limit
    assert t_quantile(40) == pytest.approx(2.0211, abs=2e-4)
    assert t_quantile(60) == pytest.approx(2.0003, abs=2e-4)
    assert t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    assert t_quantile(10**6) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0)


def test_summary_table():
    df = summary({"scratch": {0: 0.85, 1: 0.86, 2: 0.84}, "KD": {0: 0.87}})
    assert list(df.columns) == ["method", "mean", "std", "n"]
    assert list(df.method) == ["scratch", "KD"] and list(df.n) == [3, 1]
    assert df["mean"].tolist() == pytest.approx([85.0, 87.0])
    assert df["std"].iloc[0] == pytest.approx(1.0) and math.isnan(df["std"].iloc[1])
    with pytest.raises(ValueError, match="non-empty mapping"):
        summary({})
    with pytest.raises(ValueError, match="non-finite"):
        summary({"KD": {0: float("nan")}})

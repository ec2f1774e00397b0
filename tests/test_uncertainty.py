"""Bootstrap intervals, McNemar's test, the run's comparison (changes, memorisation gap, verdict) and
the ``ci_low:`` / ``ci_high:`` / ``p_value:`` target checks, on numbers whose answer is known."""

import math

import numpy as np
import pytest

from tuneforge.evaluation import uncertainty as u
from tuneforge.evaluation.comparison import summarize, verdict_text
from tuneforge.plugins import targets


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_bootstrap_interval_of_a_proportion_matches_the_wilson_interval():
    values = [1.0] * 120 + [0.0] * 280  # 30% of 400
    low, high = u.bootstrap_interval(values, seed=0)
    wl, wh = wilson(120, 400)
    assert low == pytest.approx(wl, abs=0.012) and high == pytest.approx(wh, abs=0.012)
    assert low < 0.3 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.3 * 0.7 / 400), abs=0.015)
    narrow = u.bootstrap_interval(values * 4, seed=0)  # four times the examples: half the width
    assert narrow[1] - narrow[0] == pytest.approx((high - low) / 2, rel=0.15)


def test_bootstrap_is_reproducible_with_the_seed():
    values = np.random.default_rng(5).random(50)
    assert u.bootstrap_interval(values, seed=3) == u.bootstrap_interval(values, seed=3)
    assert u.bootstrap_interval(values, seed=3) != u.bootstrap_interval(values, seed=4)
    assert u.bootstrap_interval(values, seed=3, resamples=200) != u.bootstrap_interval(values, seed=3)
    with pytest.raises(ValueError, match="no per-example values"):
        u.bootstrap_interval([])


def test_weighted_scores_and_paired_differences():
    losses, tokens = [2.0, 1.0, 4.0], [10, 30, 5]  # per-example mean loss, token counts
    assert u.weighted_mean(losses, tokens) == pytest.approx((20 + 30 + 20) / 45)
    low, high = u.bootstrap_interval(losses, tokens, seed=0)
    assert min(losses) <= low <= u.weighted_mean(losses, tokens) <= high <= max(losses)
    base = np.random.default_rng(1).random(40)
    assert u.paired_bootstrap_interval(base, base) == (0.0, 0.0)
    assert u.paired_bootstrap_interval(base + 0.1, base) == pytest.approx((0.1, 0.1))
    # pairing removes what two columns share: much narrower than treating them as independent
    shifted = base + 0.05 + np.random.default_rng(2).normal(0, 0.01, 40)
    paired = u.paired_bootstrap_interval(shifted, base, seed=0)
    unpaired = u.unpaired_bootstrap_interval(shifted, base, seed=0)
    assert paired[0] > 0 and paired[1] - paired[0] < (unpaired[1] - unpaired[0]) / 3
    with pytest.raises(ValueError, match="same examples"):
        u.paired_bootstrap_interval([1, 0], [1, 0, 1])


def test_mcnemar_against_a_hand_computed_case():
    # 10 examples: 7 only the first gets right, 1 only the second, 2 both -> discordant 7 vs 1
    a = [1] * 7 + [0] + [1, 1]
    b = [0] * 7 + [1] + [1, 1]
    result = u.mcnemar_exact(a, b)
    # p = 2 * P(X <= 1), X ~ Binomial(8, 1/2) = 2 * (1 + 8) / 256
    assert result == {"gained": 7, "lost": 1, "p_value": pytest.approx(18 / 256)}
    assert u.mcnemar_exact(b, a)["p_value"] == pytest.approx(18 / 256)  # two-sided: symmetric
    assert u.mcnemar_exact([1, 0, 1], [1, 0, 1]) == {"gained": 0, "lost": 0, "p_value": 1.0}
    assert u.binomial_two_sided(1, 10) == pytest.approx(2 * (1 + 10) / 1024)
    assert u.binomial_two_sided(5, 10) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        u.mcnemar_exact([0.5, 1], [1, 0])


def _run(tuned, base, retrieval, few_shot=None, train=None):
    """Metrics and per-example exact-match scores of a run with these columns (lists of 0/1)."""
    columns = {"base": base, "retrieval": retrieval, "tuned": tuned, **({"few_shot": few_shot} if few_shot else {})}
    metrics = {"base": {"exact_match": float(np.mean(base))}, "tuned": {"exact_match": float(np.mean(tuned))},
               "baselines": {k: {"exact_match": float(np.mean(v))} for k, v in columns.items()
                             if k not in ("base", "tuned")},
               "baseline_info": {"retrieval": {"label": "retrieval, k=4"}, "few_shot": {"label": "few_shot, k=4"}},
               "metric_info": {"exact_match": {"higher_is_better": True, "section": "held-out"}},
               "cost": {"base": {"prompt_tokens_per_query": 100.0}, "retrieval": {"prompt_tokens_per_query": 400.0},
                        "few_shot": {"prompt_tokens_per_query": 420.0},
                        "tuned": {"prompt_tokens_per_query": 100.0, "training_s": 120.0}}}
    scores = {k: {"exact_match": {"values": [float(x) for x in v], "weights": None}} for k, v in columns.items()}
    memorisation = None
    if train is not None:
        memorisation = {"sample": len(train), "metrics": {"exact_match": float(np.mean(train))},
                        "scores": {"exact_match": {"values": [float(x) for x in train], "weights": None}}}
    return summarize(metrics, scores, seed=0, memorisation=memorisation)


def test_the_verdict_when_tuning_wins():
    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 19 + [0] * 11, few_shot=[1] * 3 + [0] * 27)
    verdict = metrics["verdict"]
    assert verdict["baseline"] == "retrieval" and verdict["outcome"] == "tuning_better"
    assert verdict["change"] == pytest.approx(11 / 30) and verdict["low"] > 0.15 and verdict["high"] <= 11 / 30 + 0.25
    change = metrics["changes"]["tuned-retrieval"]["exact_match"]
    assert change["gained"] == 11 and change["lost"] == 0 and change["p_value"] == pytest.approx(2 / 2 ** 11)
    text = verdict["text"]
    assert text.startswith("Tuned exact_match 100.0% vs best prompting baseline (retrieval, k=4) 63.3%: "
                           "+36.7 points (95% CI +")
    assert "at 4.0x fewer prompt tokens per query (100 vs 400)" in text and "120 s of training" in text
    assert text == verdict_text(verdict)  # the text is made from the stored numbers
    assert metrics["intervals"]["base"]["exact_match"] == {"low": 0.0, "high": 0.0, "n": 30}
    assert metrics["changes"]["change"]["exact_match"]["low"] == 1.0  # every example gained


def test_the_verdict_when_prompting_reaches_the_tuned_score():
    metrics = _run(tuned=[1] * 29 + [0], base=[0] * 30, retrieval=[1] * 28 + [0, 1])
    verdict = metrics["verdict"]
    assert verdict["outcome"] == "prompting_matches" and verdict["low"] < 0 < verdict["high"] + 1e-9
    assert verdict["text"].startswith("Prompting reaches the tuned score within the interval, tuned exact_match "
                                      "96.7% vs best prompting baseline (retrieval, k=4) 96.7%")
    assert "fine-tuning is not needed for this task" in verdict["text"]
    worse = _run(tuned=[0] * 30, base=[0] * 30, retrieval=[1] * 30)["verdict"]
    assert worse["outcome"] == "prompting_better" and worse["text"].startswith("Prompting beats the tuned model")


def test_memorisation_gap_is_flagged_with_its_size():
    flagged = _run(tuned=[1] * 15 + [0] * 15, base=[0] * 30, retrieval=[0] * 30, train=[1] * 30)["memorisation"]
    gap = flagged["gap"]["exact_match"]
    assert gap["value"] == pytest.approx(0.5) and gap["low"] > 0.2 and flagged["flagged"] == ["exact_match"]
    assert flagged["train"] == {"exact_match": 1.0} and flagged["held_out"] == {"exact_match": 0.5}
    close = _run(tuned=[1] * 28 + [0] * 2, base=[0] * 30, retrieval=[0] * 30, train=[1] * 30)["memorisation"]
    assert close["gap"]["exact_match"]["value"] == pytest.approx(2 / 30) and close["flagged"] == []


def test_targets_read_intervals_and_p_values():
    metrics = _run(tuned=[1] * 30, base=[0] * 2 + [1] + [0] * 27, retrieval=[1] * 19 + [0] * 11)
    result = targets.check_targets({
        "tuned beats base by 50 points even at the low end": "ci_low:change:exact_match >= 0.5",
        "the gain over retrieval is significant": "p_value:tuned-retrieval:exact_match <= 0.01",
        "retrieval alone reaches 60%": "retrieval:exact_match >= 0.6",
        "tuned over retrieval": "tuned-retrieval:exact_match >= 0.3",
        "tuned interval": "ci_low:tuned:exact_match >= 0.99",
        "base interval reaches 20%": "ci_high:base:exact_match >= 0.2",
    }, metrics)
    values = {c["label"]: (c["value"], c["passed"]) for c in result["checks"]}
    assert values["tuned beats base by 50 points even at the low end"][1]
    assert values["tuned beats base by 50 points even at the low end"][0] == \
        metrics["changes"]["change"]["exact_match"]["low"]
    assert values["retrieval alone reaches 60%"] == (pytest.approx(19 / 30), True)
    assert values["tuned over retrieval"] == (pytest.approx(11 / 30), True)
    assert values["base interval reaches 20%"][1] is False
    assert [c["label"] for c in result["checks"] if not c["passed"]] == ["base interval reaches 20%"]
    assert targets.lookup(metrics, "ci_low:nowhere:exact_match") is None

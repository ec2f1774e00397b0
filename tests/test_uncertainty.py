"""Bootstrap intervals, McNemar's test, the run's comparison (changes, memorisation gap, verdict) and
the ``ci_low:`` / ``ci_high:`` / ``p_value:`` target checks, on numbers whose answer is known."""

import json
import math

import numpy as np
import pytest

import tuneforge
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


def _run(tuned, base, retrieval=None, few_shot=None, train=None, forgetting=None, extra=None, slices=None, seed=0,
         margin=0.05, forgetting_limit=0.05, majority=None, baseline_info=None, metric=None):
    """Metrics and per-example exact-match scores of a run with these columns (lists of 0/1).

    ``forgetting``: ``(base, tuned)`` 0/1 scores on a general set; ``extra``: ``{metric: (tuned, retrieval)}``
    continuous held-out scores; ``slices``: a ``lang`` label per held-out example."""
    columns = {"base": base, **({"retrieval": retrieval} if retrieval is not None else {}), "tuned": tuned,
               **({"few_shot": few_shot} if few_shot else {}), **({"majority": majority} if majority else {})}
    metrics = {"base": {"exact_match": float(np.mean(base))}, "tuned": {"exact_match": float(np.mean(tuned))},
               "baselines": {k: {"exact_match": float(np.mean(v))} for k, v in columns.items()
                             if k not in ("base", "tuned")},
               "baseline_info": {"retrieval": {"label": "retrieval, k=4"}, "few_shot": {"label": "few_shot, k=4"},
                                 **(baseline_info or {})},
               "metric_info": {"exact_match": {"higher_is_better": True, "section": "held-out"},
                               "forgetting/contains": {"higher_is_better": True, "section": "forgetting"}},
               "cost": {"base": {"prompt_tokens_per_query": 100.0}, "retrieval": {"prompt_tokens_per_query": 400.0},
                        "few_shot": {"prompt_tokens_per_query": 420.0},
                        "tuned": {"prompt_tokens_per_query": 100.0, "training_s": 120.0}}}
    scores = {k: {"exact_match": {"values": [float(x) for x in v], "weights": None}} for k, v in columns.items()}
    if forgetting is not None:
        for column, values in zip(("base", "tuned"), forgetting):
            metrics[column]["forgetting/contains"] = float(np.mean(values))
            scores[column]["forgetting/contains"] = {"values": [float(x) for x in values], "weights": None}
    for name, (tuned_values, retrieval_values) in (extra or {}).items():
        for column, values in (("tuned", tuned_values), ("retrieval", retrieval_values)):
            target = metrics[column] if column == "tuned" else metrics["baselines"]["retrieval"]
            target[name] = float(np.mean(values))
            scores[column][name] = {"values": [float(x) for x in values], "weights": None}
    memorisation = None
    if train is not None:
        memorisation = {"sample": len(train), "metrics": {"exact_match": float(np.mean(train))},
                        "scores": {"exact_match": {"values": [float(x) for x in train], "weights": None}}}
    return summarize(metrics, scores, seed=seed, memorisation=memorisation, margin=margin, metric=metric,
                     forgetting_limit=forgetting_limit, slice_labels=slices, slice_by="lang" if slices else None)


def test_the_verdict_when_tuning_wins():
    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 19 + [0] * 11, few_shot=[1] * 3 + [0] * 27)
    verdict = metrics["verdict"]
    assert verdict["baseline"] == "retrieval" and verdict["outcome"] == verdict["decision"] == "tune"
    assert verdict["change"] == pytest.approx(11 / 30) and verdict["low"] > 0.15 and verdict["high"] <= 11 / 30 + 0.25
    assert set(verdict["comparisons"]) == {"base", "retrieval", "few_shot"}  # tuned beat every column
    change = metrics["changes"]["tuned-retrieval"]["exact_match"]
    assert change["gained"] == 11 and change["lost"] == 0 and change["p_value"] == pytest.approx(2 / 2 ** 11)
    assert change["method"].startswith("Newcombe") and (change["low"], change["high"]) == (verdict["low"],
                                                                                            verdict["high"])
    assert verdict["headline"].startswith("Tune: tuned exact_match 100.0% vs retrieval, k=4 63.3%, +36.7 points "
                                          "(95% CI +")
    assert verdict["text"].startswith(verdict["headline"]) and verdict["text"] == verdict_text(verdict)
    assert "Method: Newcombe paired score (method 10); McNemar exact test." in verdict["text"]
    # the base model's 0/30 gets a real upper bound (Wilson), not the collapsed [0, 0]
    assert metrics["intervals"]["base"]["exact_match"] == {"low": 0.0, "high": pytest.approx(wilson(0, 30)[1]),
                                                            "n": 30, "method": "Wilson score"}
    assert metrics["changes"]["change"]["exact_match"]["low"] > 0.8  # every example gained


def test_proportion_intervals_at_the_edges_against_known_values():
    # Clopper-Pearson: 1 - 0.025 ** (1 / 30) at 0/30; 0.3130..0.6870 at 15/30 (published tables)
    assert u.clopper_pearson_interval(0, 30) == pytest.approx((0.0, 1 - 0.025 ** (1 / 30)))
    assert u.clopper_pearson_interval(0, 30)[1] == pytest.approx(0.1157, abs=1e-4)
    assert u.clopper_pearson_interval(15, 30) == pytest.approx((0.3130, 0.6870), abs=1e-4)
    assert u.clopper_pearson_interval(30, 30) == pytest.approx((0.025 ** (1 / 30), 1.0))
    for k in (0, 15, 30):
        assert u.wilson_interval(k, 30) == pytest.approx(tuple(min(1.0, max(0.0, x)) for x in wilson(k, 30)))
    assert u.wilson_interval(0, 30)[1] == pytest.approx(0.1135, abs=1e-4) and u.wilson_interval(30, 30)[0] > 0.88
    with pytest.raises(ValueError, match="no per-example values"):
        u.wilson_interval(0, 0)


def test_paired_difference_intervals_at_the_edges_and_their_coverage():
    ones, zeros = [1.0] * 30, [0.0] * 30
    low, high = u.newcombe_paired_interval(ones, zeros)  # every example gained
    assert 0.8 < low < 1.0 and high == 1.0
    low, high = u.newcombe_paired_interval(ones, ones)  # nothing differs: 0 inside, as wide as 30/30's own doubt
    doubt = 1 - u.wilson_interval(30, 30)[0]
    assert (low, high) == pytest.approx((-doubt, doubt))
    low, high = u.newcombe_paired_interval(zeros, ones)
    assert low == -1.0 and -1.0 < high < -0.8
    # validity at small n: the 95% interval covers the true difference at least ~95% of the time (n=18)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(1000):
        cells = rng.choice(4, size=18, p=[0.6, 0.2, 0.05, 0.15])  # both, only a, only b, neither: +0.15
        a, b = np.isin(cells, [0, 1]).astype(float), np.isin(cells, [0, 2]).astype(float)
        low, high = u.newcombe_paired_interval(a, b)
        covered += low <= 0.15 <= high
    assert covered >= 940, covered
    # continuous scores: the paired t interval equals scipy's, and is a point when every difference is equal
    from scipy.stats import ttest_rel

    x = np.random.default_rng(1).random(20)
    y = x + np.random.default_rng(2).normal(0.1, 0.1, 20)
    assert u.paired_t_interval(y, x) == pytest.approx(tuple(ttest_rel(y, x).confidence_interval()))
    assert u.paired_t_interval(x + 0.1, x) == pytest.approx((0.1, 0.1))
    test = u.paired_difference(y, x)
    assert test["method"].startswith("paired t") and test["p_value"] == pytest.approx(ttest_rel(y, x).pvalue)


def test_an_unsettled_lead_is_inconclusive_never_prompting_is_enough():
    """The case that misled: tuned leads retrieval by 16.7 points at n=18, McNemar p=0.375."""
    tuned = [1] * 13 + [1] * 4 + [0] * 1                   # 17/18
    retrieval = [1] * 13 + [0] * 4 + [1] * 1               # 14/18: 4 gained, 1 lost
    metrics = _run(tuned=tuned, base=[0] * 18, retrieval=retrieval)
    verdict = metrics["verdict"]
    assert verdict["change"] == pytest.approx(3 / 18) and verdict["p_value"] == pytest.approx(0.375)
    assert verdict["outcome"] == "inconclusive" and verdict["low"] < 0 < verdict["high"]
    assert verdict["headline"].startswith("Inconclusive at n=18: tuned exact_match 94.4% vs retrieval, k=4 77.8%")
    assert "not needed" not in verdict["text"] and "suffices" not in verdict["text"]
    assert verdict["examples_needed"] > 18 and f"about {verdict['examples_needed']} held-out examples" in \
        verdict["headline"]
    for seed in range(20):  # another resampling seed never changes the verdict
        again = _run(tuned=tuned, base=[0] * 18, retrieval=retrieval, seed=seed)["verdict"]
        assert again == verdict


def test_an_interval_past_0_with_an_exact_test_short_of_it_is_explained_and_forgetting_leads_the_headline():
    """A task kept aside: 23/30 vs retrieval's 16/30 (9 gained, 2 lost): Newcombe's interval excludes 0,
    McNemar's exact p is 0.065; and the general-ability set fell from 30/30 to 4/30."""
    tuned = [1] * 14 + [1] * 9 + [0] * 2 + [0] * 5
    retrieval = [1] * 14 + [0] * 9 + [1] * 2 + [0] * 5
    metrics = _run(tuned=tuned, base=[0] * 30, retrieval=retrieval, forgetting=([1] * 30, [1] * 4 + [0] * 26))
    verdict = metrics["verdict"]
    assert verdict["outcome"] == "inconclusive" and verdict["low"] > 0 and verdict["p_value"] == pytest.approx(
        2 * (1 + 11 + 55) / 2 ** 11)
    text = verdict["text"]
    assert "neither excludes 0" not in text, "the old fixed sentence contradicted the interval"
    assert (f"against retrieval, k=4 the 95% interval (+{100 * verdict['low']:.1f}..+{100 * verdict['high']:.1f}) "
            "excludes 0 but the McNemar p=0.065 is not below 0.05, and a gain counts only when both show it") in text
    assert "against base" not in text, "the zero-shot base is beaten: only the unsettled comparison is named"
    assert "Nor is prompting shown to be enough" in text and "Not significant is not equivalent." in text
    # the significant forgetting is in the headline, not only in the paragraph
    assert verdict["headline"].startswith("Inconclusive at n=30: ")
    assert "; and tuning costs 86.7 points of general ability (forgetting/contains 100.0% -> 13.3%" in \
        verdict["headline"]
    assert text.count("86.7 points") == 1 and "data.rehearsal_path" in text
    # the one-line form (compare, seeds) names the test's p and the cost too
    from tuneforge.evaluation.seeds import verdict_line

    line = verdict_line(verdict)
    assert line.startswith("inconclusive (+23.3 points vs retrieval, k=4, 95% CI +") and "McNemar p=0.065" in line
    assert "forgetting/contains -86.7 points" in line
    # an interval that includes 0 says so
    close = _run(tuned=[1] * 14 + [1] * 4 + [0] * 2 + [0] * 10, base=[0] * 30,
                 retrieval=[1] * 14 + [0] * 4 + [1] * 2 + [0] * 10)["verdict"]
    assert close["outcome"] == "inconclusive" and close["low"] < 0
    assert "against retrieval, k=4 the 95% interval (" in close["text"] and ") includes 0" in close["text"]


def test_the_cost_headline_keeps_the_gains_interval():
    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30, forgetting=([1] * 30, [1] * 22 + [0] * 8))
    verdict = metrics["verdict"]
    assert verdict["outcome"] == "tune_with_cost"
    assert "vs base (zero-shot) 0.0%, +100.0 points (95% CI +83.9..+100.0, n=30; McNemar p=" in verdict["headline"]
    assert "McNemar p=" in verdict["headline"] and verdict["text"].count("26.7 points") == 1


def test_prompting_suffices_only_when_equivalence_is_shown():
    same = [1] * 150 + [0] * 50
    metrics = _run(tuned=same, base=[0] * 200, retrieval=same)  # identical answers on 200 examples
    verdict = metrics["verdict"]
    assert verdict["outcome"] == "prompting_suffices" and verdict["equivalent_column"] == "retrieval"
    assert -0.05 < verdict["equivalence"]["low"] <= 0 <= verdict["equivalence"]["high"] < 0.05
    assert verdict["headline"].startswith("Prompting suffices: retrieval, k=4 is within ±5.0 of the tuned "
                                          "exact_match")
    # the same tie at n=30 cannot show equivalence within 5 points: inconclusive, not "prompting suffices"
    small = _run(tuned=[1] * 29 + [0], base=[0] * 30, retrieval=[1] * 28 + [0, 1])["verdict"]
    assert small["outcome"] == "inconclusive" and small["examples_needed"] > 30
    # a wider margin accepts it
    wide = _run(tuned=[1] * 29 + [0], base=[0] * 30, retrieval=[1] * 28 + [0, 1], margin=0.2)["verdict"]
    assert wide["outcome"] == "prompting_suffices"
    # prompting clearly better: equivalence-or-better is shown as well
    worse = _run(tuned=[0] * 30, base=[0] * 30, retrieval=[1] * 30)["verdict"]
    assert worse["outcome"] == "prompting_suffices" and worse["change"] == -1.0
    assert worse["headline"].startswith("Prompting suffices: retrieval, k=4 beats the tuned model on exact_match "
                                        "(95% CI of tuned minus it -100.0..")  # not "within ±5.0"


def test_a_significant_forgetting_drop_is_named_in_the_verdict():
    forgetting_base, forgetting_tuned = [1] * 30, [1] * 22 + [0] * 8     # -26.7 points, McNemar p=0.0078
    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30,
                   forgetting=(forgetting_base, forgetting_tuned))
    verdict = metrics["verdict"]
    assert verdict["decision"] == "tune" and verdict["outcome"] == "tune_with_cost"
    [entry] = verdict["forgetting"]
    assert entry["metric"] == "forgetting/contains" and entry["significant"] and entry["costs"]
    assert verdict["headline"].startswith("Tune, but it costs 26.7 points of general ability "
                                          "(forgetting/contains 100.0% -> 73.3%")
    # a small, non-significant drop within the limit leaves a plain "tune"
    held = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30, forgetting=([1] * 30, [1] * 29 + [0]))["verdict"]
    assert held["outcome"] == "tune" and not held["forgetting"][0]["costs"]
    # not significant, yet 29/30 cannot rule out a drop beyond the 5-point limit: said so, not "no cost"
    assert "No significant forgetting, but not ruled out: forgetting/contains 100.0% -> 96.7%" in held["text"]
    assert "the interval allows a drop of up to" in held["text"] and "more general-ability examples" in held["text"]
    # 300 of 300 kept: the interval rules out more than the limit
    kept = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30, forgetting=([1] * 300, [1] * 300))["verdict"]
    assert "No forgetting: forgetting/contains 100.0% -> 100.0%" in kept["text"]
    assert "the interval rules out a drop of more than 5.0 points" in kept["text"]
    # beyond the limit though not significant: still a cost
    beyond = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30, forgetting=([1] * 30, [1] * 28 + [0] * 2),
                  forgetting_limit=0.05)["verdict"]
    assert beyond["outcome"] == "tune_with_cost" and not beyond["forgetting"][0]["significant"]


def test_metrics_that_disagree_with_the_headline_are_named():
    rng = np.random.default_rng(0)
    rouge_retrieval = rng.uniform(0.2, 0.5, 18)
    metrics = _run(tuned=[1] * 15 + [0] * 3, base=[0] * 18, retrieval=[1] * 15 + [0] * 3,
                   extra={"rouge": (list(rouge_retrieval + 0.36 + rng.normal(0, 0.05, 18)), list(rouge_retrieval))})
    verdict = metrics["verdict"]
    assert verdict["metric"] == "exact_match" and verdict["outcome"] == "inconclusive"
    [d] = verdict["disagreements"]
    assert d["metric"] == "rouge" and d["direction"] == "better" and d["change"] == pytest.approx(0.36, abs=0.03)
    assert d["low"] > 0.25 and f"rouge favours tuning: tuned is significantly better (+{100 * d['change']:.1f} " \
        "points" in verdict["text"]
    assert "unlike exact_match, which it does not show" in verdict["text"] and "disagrees" not in verdict["text"]


def test_slices_give_every_metric_and_the_verdict_per_value():
    tuned = [1] * 20 + [1] * 20
    retrieval = [1] * 20 + [0] * 20                      # retrieval fails only the "zh" half
    labels = ["en"] * 20 + ["zh"] * 20
    metrics = _run(tuned=tuned, base=[0] * 40, retrieval=retrieval, slices=labels)
    slices = metrics["slices"]
    assert set(slices) == {"en", "zh"} and slices["zh"]["n"] == 20 and slices["zh"]["field"] == "lang"
    assert slices["zh"]["columns"]["retrieval"]["exact_match"] == 0.0
    assert slices["zh"]["verdict"]["outcome"] == "tune"
    assert slices["en"]["verdict"]["outcome"] in ("prompting_suffices", "inconclusive")
    assert metrics["verdict"]["outcome"] == "tune"


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
        "tuned interval": "ci_low:tuned:exact_match >= 0.85",  # Wilson at 30/30: 0.886
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


def test_cost_of_the_decision_break_even_and_gain_share():
    from tuneforge.evaluation.cost import cost_text, decision_cost, generation_timing

    timing = generation_timing({"val": {"seconds": 9.0, "queries": 12, "batch_s_per_query": [2.0, 0.5, 0.6, 0.55]}})
    assert timing == {"s_per_query": pytest.approx(0.575), "low": 0.5, "high": 2.0, "batches": 4}  # a slow first batch
    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 12 + [0] * 18)
    metrics["cost"]["retrieval"].update(generation_s_per_query=1.5, generation_s_range=[1.4, 1.6],
                                        completion_tokens_per_query=20.0)
    metrics["cost"]["tuned"].update(generation_s_per_query=0.5, generation_s_range=[0.45, 0.55],
                                    completion_tokens_per_query=20.0)
    decision = decision_cost(metrics, metrics["verdict"])
    assert decision["column"] == "retrieval" and decision["unit"] == "seconds"
    assert decision["gain_share"] == pytest.approx(0.4) and decision["query_cost_ratio"] == pytest.approx(3.0)
    assert decision["break_even_queries"] == 120  # 120 s of training / (1.5 - 0.5) s saved per query
    assert decision["break_even_range"] == [round(120 / 1.15), round(120 / 0.85)]
    text = cost_text(decision, "retrieval, k=4")
    assert text.startswith("Cost: retrieval, k=4 reaches 40% of the tuned gain at 3x the tuned model's cost per query")
    assert "pays back after about 120 queries (104..141 over the timing spread)" in text
    # priced by tokens: 420 vs 120 tokens a query at 2 per million; training at 3 an hour
    priced = decision_cost(metrics, metrics["verdict"], {"price_per_hour": 3.0, "price_per_million_tokens": 2.0})
    assert priced["unit"] == "money" and priced["training"] == pytest.approx(0.1)
    assert priced["break_even_queries"] == round(0.1 / ((420 - 120) * 2 / 1e6))
    # the tuned model slower per query: training never pays back in cost
    metrics["cost"]["tuned"]["generation_s_per_query"] = 2.0
    assert "never pays back" in cost_text(decision_cost(metrics, metrics["verdict"]), "retrieval")
    # without per-query timings nothing is claimed about paying back; summarize puts the cost in the verdict
    plain = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 12 + [0] * 18)["verdict"]
    assert "break_even_queries" not in plain["cost"] and "pays back" not in plain["text"]
    assert plain["text"].endswith("Cost: retrieval, k=4 reaches 40% of the tuned gain. Training cost 120 s.")


def test_no_pay_back_is_claimed_without_a_gain_over_zero_shot():
    """Tuned equal to zero-shot (+0.0): the tuned model's queries may be cheaper, but training bought nothing,
    so no break-even and no share of a gain; a real gain still gets both, also where lower is better."""
    from tuneforge.evaluation.cost import cost_text, decision_cost

    metrics = _run(tuned=[1] * 15 + [0] * 15, base=[1] * 15 + [0] * 15, retrieval=[1] * 15 + [0] * 15)
    column = metrics["verdict"]["baseline"]
    metrics["cost"][column].update(generation_s_per_query=1.5, generation_s_range=[1.4, 1.6])
    metrics["cost"]["tuned"].update(generation_s_per_query=0.5, generation_s_range=[0.45, 0.55])
    decision = decision_cost(metrics, metrics["verdict"])
    assert "break_even_queries" not in decision and "break_even_range" not in decision
    assert "gain_share" not in decision and decision["query_cost_ratio"] == pytest.approx(3.0)
    assert cost_text(decision, "retrieval, k=4") == "Training cost 120 s."
    cost = {"tuned": {"generation_s_per_query": 0.5, "training_s": 100.0},
            "retrieval": {"generation_s_per_query": 1.5}}
    verdict = {"outcome": "inconclusive", "baseline": "retrieval", "metric": "loss", "baseline_value": 1.8,
               "higher_is_better": False}
    lower = decision_cost({"base": {"loss": 2.0}, "cost": cost}, {**verdict, "tuned": 1.5})
    assert lower["break_even_queries"] == 100 and lower["gain_share"] == pytest.approx(0.4)
    worse = decision_cost({"base": {"loss": 2.0}, "cost": cost}, {**verdict, "tuned": 2.1})
    assert "break_even_queries" not in worse and "gain_share" not in worse


def test_the_console_and_the_report_give_the_verdict_once():
    """metrics.json's verdict text starts with its headline; printed after the headline it must not repeat it."""
    from tuneforge.evaluation.report import build_blocks, format_comparison, render_markdown

    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 12 + [0] * 18)
    headline, text = metrics["verdict"]["headline"], metrics["verdict"]["text"]
    assert text.startswith(headline) and len(text) > len(headline)
    printed = " ".join(format_comparison(metrics).split())
    assert printed.count(headline) == 1 and f"verdict: {headline}" in printed
    assert printed.endswith(text[len(headline):].strip())  # the rest of the paragraph, once
    report = " ".join(render_markdown(build_blocks(metrics)).split())
    assert report.count(headline) == 1 and text[len(headline):].strip() in report


def _bilingual(tmp_path):
    rows = []
    for i in range(24):
        lang = "zh" if i % 2 else "en"
        question = f"把数字 {i} 写成汉字" if lang == "zh" else f"Write the number {i} in words"
        rows.append({"instruction": question, "output": f"answer {i}", "lang": lang})
    path = tmp_path / "bilingual.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evidence_slice_by_slices_a_real_run_and_a_missing_field_stops_it_before_training(tmp_path):
    import tuneforge
    from tuneforge.testing import run_tiny_fit

    data = _bilingual(tmp_path)
    common = ["data=jsonl", f"data.path={data}", "data.val_size=8", "evaluators=[exact_match,perplexity]",
              "evaluators.exact_match.max_new_tokens=2", "baselines=[]", "memorisation.sample=0",
              "trainer.max_steps=1"]
    result = run_tiny_fit(tmp_path / "run", overrides=[*common, "evidence.slice_by=lang"])
    slices = json.loads((tmp_path / "run" / "metrics.json").read_text())["slices"]
    assert set(slices) == {"en", "zh"} and slices["en"]["n"] + slices["zh"]["n"] == 8
    assert result.metrics["slices"]["zh"]["verdict"]["outcome"] in verdict_outcomes()
    assert set(slices["zh"]["columns"]["tuned"]) == {"exact_match", "perplexity/loss"}
    report = (tmp_path / "run" / "report.md").read_text()  # shown, not only stored
    assert "\n## By lang\n" in report and "\n| en | " in report and "\n| zh | " in report
    with pytest.raises(tuneforge.ConfigError, match=r"^evidence\.slice_by: no held-out record has a field 'langue' "
                                                     r"\(their fields: .*lang"):
        run_tiny_fit(tmp_path / "bad", overrides=[*common, "evidence.slice_by=langue"])
    status = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert status["status"] == "failed" and not (tmp_path / "bad" / "checkpoints").exists()  # before training


def verdict_outcomes():
    from tuneforge.evaluation.verdict import OUTCOME_WORDS

    return set(OUTCOME_WORDS)


def test_the_zero_shot_column_claims_no_share_of_the_gain_and_no_share_reads_minus_zero():
    """Without a prompting baseline the verdict's column is the zero-shot base, which reaches none of the gain
    by definition: the cost sentence leaves the share out (it read "reaches -0% of the tuned gain")."""
    from tuneforge.evaluation.cost import cost_text, decision_cost

    metrics = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[1] * 12 + [0] * 18)
    verdict = dict(metrics["verdict"], baseline="base", baseline_value=metrics["base"]["exact_match"])
    decision = decision_cost(metrics, verdict)
    assert "gain_share" not in decision
    assert "of the tuned gain" not in cost_text(decision, "base (zero-shot)")
    assert "reaches 0% of the tuned gain" in cost_text(dict(decision, gain_share=-0.001), "retrieval")


def test_an_evaluator_can_say_a_metric_in_0_1_is_not_a_share():
    """A mean reward of 0.15 is on the reward's own scale: the verdict's margin and changes are not 'points'
    when the evaluator declares ``MetricInfo(share=False)``; undeclared, a 0-1 metric is still inferred."""
    from tuneforge.evaluation.verdict import is_share

    metrics = {"base": {"reward/mean": 0.12, "exact_match": 0.4}, "tuned": {"reward/mean": 0.15, "exact_match": 0.6},
               "metric_info": {"reward/mean": {"higher_is_better": True, "share": False},
                               "exact_match": {"higher_is_better": True, "share": None}}}
    assert not is_share(metrics, "reward/mean") and is_share(metrics, "exact_match")
    metrics["metric_info"]["exact_match"]["share"] = True
    metrics["tuned"]["exact_match"] = 1.5  # declared: no longer inferred from the values
    assert is_share(metrics, "exact_match")
    from tuneforge.plugins.rewards import tuneforge_evaluators

    (spec,) = tuneforge_evaluators()
    assert spec.metric_info("mean").share is False and spec.metric_info("format").share is False


def test_no_pay_back_is_claimed_when_the_prompting_column_scores_better():
    """Retrieval at 55% against a tuned 40% (base 0%): training 'paid back after about 79 queries' read as if
    the tuned model were the better choice; the column scoring better is said instead."""
    from tuneforge.evaluation.cost import cost_text, decision_cost

    metrics = _run(tuned=[1] * 12 + [0] * 18, base=[0] * 30, retrieval=[1] * 17 + [0] * 13)
    column = metrics["verdict"]["baseline"]
    metrics["cost"][column].update(generation_s_per_query=1.5, generation_s_range=[1.4, 1.6])
    metrics["cost"]["tuned"].update(generation_s_per_query=0.5, generation_s_range=[0.45, 0.55])
    decision = decision_cost(metrics, metrics["verdict"])
    assert decision["column_better"] and "break_even_queries" not in decision
    text = cost_text(decision, "retrieval, k=4")
    assert text.startswith("Cost: retrieval, k=4 reaches 142% of the tuned gain (it scores better than the tuned "
                           "model) at 3x the tuned model's cost per query")
    assert text.endswith("Training cost 120 s; retrieval, k=4 scores better, so the tuned model's cheaper queries "
                         "do not pay it back.") and "pays back after" not in text


def test_a_tuned_model_no_better_than_the_most_common_answer_is_not_tune():
    """The random-label control: tuning learns the labels' format (zero-shot scores 0) but not the task; the
    most common training answer (the ``majority`` column, no model) scores as well, so the verdict is not
    "Tune", and where the two are shown equivalent it says tuning did no better than that answer."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    tuned = (rng.integers(0, 5, size=200) == labels).astype(int)  # a right label by chance
    majority = (labels == 0).astype(int)
    metrics = _run(tuned=list(tuned), base=[0] * 200, majority=list(majority))
    verdict = metrics["verdict"]
    assert verdict["comparisons"]["base"]["low"] > 0  # it does beat the zero-shot base, by the format alone
    assert verdict["outcome"] != "tune" and "majority" in verdict["comparisons"]
    same = [1] * 40 + [0] * 160
    info = {"majority": {"label": "most common answer (no model)", "no_model": True, "answer": "billing"}}
    suffices = _run(tuned=same, base=[0] * 200, majority=same, baseline_info=info)["verdict"]
    assert suffices["outcome"] == "prompting_suffices" and suffices["equivalent_no_model"] is True
    assert suffices["headline"].startswith("Prompting suffices: tuning did no better than most common answer "
                                           "(no model), within ±5.0 of the tuned exact_match")
    alone = _run(tuned=[1] * 30, base=[0] * 30)["verdict"]  # no baseline at all: the risk is named
    assert alone["outcome"] == "tune" and "beat by the answers' format alone" in alone["text"]


def test_evidence_metric_chooses_the_verdicts_metric_and_a_missing_one_is_named(tmp_path):
    from tuneforge.testing import run_tiny_fit

    rouge = ([0.9] * 20 + [0.8] * 10, [0.5] * 30)
    chosen = _run(tuned=[1] * 15 + [0] * 15, base=[0] * 30, retrieval=[1] * 15 + [0] * 15, extra={"rouge": rouge},
                  metric="rouge")["verdict"]
    assert chosen["metric"] == "rouge" and chosen["outcome"] == "tune" and "metric_note" not in chosen
    automatic = _run(tuned=[1] * 15 + [0] * 15, base=[0] * 30, retrieval=[1] * 15 + [0] * 15,
                     extra={"rouge": rouge})["verdict"]
    assert automatic["metric"] == "exact_match" and automatic["outcome"] != "tune"
    missing = _run(tuned=[1] * 30, base=[0] * 30, retrieval=[0] * 30, metric="bleu")["verdict"]
    assert missing["metric"] == "exact_match"
    assert ("Evidence.metric=bleu was not measured for both the tuned model and a prompting column (as a held-out "
            "metric), so the verdict is on exact_match.") in missing["text"]
    with pytest.raises(tuneforge.ConfigError, match=r"evidence.metric: 'bleu' is not a metric of a selected "
                                                     r"evaluator \(selected: perplexity\)"):
        run_tiny_fit(tmp_path / "run", overrides=["evidence.metric=bleu", "trainer.max_steps=1"])
    assert not (tmp_path / "run" / "model").exists()
    reference = "${pkg:tuneforge.plugins/data/forgetting_general.jsonl}"
    with pytest.raises(tuneforge.ConfigError, match=r"evidence.metric: 'forgetting/contains' is a 'forgetting' "
                                                     r"metric; the verdict is about a held-out metric"):
        run_tiny_fit(tmp_path / "run2", overrides=["evidence.metric=forgetting/contains", "trainer.max_steps=1",
                                                   "evaluators=[perplexity,forgetting]",
                                                   f"evaluators.forgetting.path={reference}"])


def test_an_evidence_metric_its_evaluator_does_not_declare_is_warned_about_before_training(tmp_path, caplog):
    import logging

    from tuneforge.testing import run_tiny_fit

    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        metrics = run_tiny_fit(tmp_path / "run", overrides=["evidence.metric=perplexity/los", "trainer.max_steps=1",
                                                            "baselines=[]", "memorisation.sample=0"]).metrics
    assert ("evidence.metric: evaluator 'perplexity' declares no metric 'perplexity/los' (did you mean "
            "'perplexity/loss'?); its declared metrics: perplexity/loss, perplexity/perplexity") in caplog.text
    assert metrics["verdict"]["metric"] == "perplexity/loss" and "metric_note" in metrics["verdict"]


def test_a_loss_that_favours_tuning_says_what_a_lower_loss_shows():
    from tuneforge.evaluation.verdict import _disagreement_text

    verdict = {"metric": "exact_match", "decision": "inconclusive"}
    loss = {"metric": "perplexity/loss", "direction": "better", "change": -0.8, "low": -1.0, "high": -0.6,
            "share": False, "is_loss": True}
    text = _disagreement_text(verdict, loss)
    assert text.startswith("perplexity/loss favours tuning: tuned is significantly better (-0.8, 95% CI -1..-0.6)")
    assert text.endswith("A lower loss says the tuned model finds the reference answers likelier (their format and "
                         "words), not that its answers are right.")
    assert "likelier" not in _disagreement_text(verdict, dict(loss, metric="rouge", is_loss=False))

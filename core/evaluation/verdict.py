"""The verdict: tune, prompting suffices, or inconclusive, from valid tests on the run's own examples.

:func:`decide` reads the run's columns (base zero-shot, the prompting and RAG
baselines, tuned), their per-example scores and the ``evidence`` settings, and
returns the verdict's numbers (stored as ``metrics.json`` ``verdict``):

* **tune** (``outcome`` ``tune``): on the headline metric the tuned model beats
  *every* prompting column, each difference's 95% interval above zero (and, for
  0/1 scores, McNemar's exact test below 0.05 too).  Beating every column, not
  only the one that scored best, keeps the test valid although the best column
  was picked after looking.
* **tune, at a cost** (``tune_with_cost``): as above, but a general-ability
  metric (section :data:`tuneforge.specs.GENERAL_ABILITY`, e.g. the forgetting
  set) dropped significantly, or by more than ``evidence.forgetting_limit``.
* **prompting suffices** (``prompting_suffices``): some prompting column is
  shown equivalent or better: the two one-sided tests (TOST) put the whole
  ``1 - 2 * 0.05 / k`` interval of tuned minus that column below
  ``+evidence.margin`` (``k`` columns: Bonferroni over the columns tried).
* **inconclusive**: neither; with the number of held-out examples that would
  likely settle it (80% power, from the observed difference and its spread).

Intervals and tests are deterministic (:mod:`tuneforge.evaluation.uncertainty`):
the verdict never depends on a resampling seed.  Every other held-out metric
is compared too; those that disagree with the headline are named
(``disagreements``).  :func:`verdict_text` renders the numbers.
"""

from __future__ import annotations

import math
from typing import Optional

from tuneforge.evaluation import uncertainty
from tuneforge.specs import GENERAL_ABILITY, HELD_OUT

BASE, TUNED = "base", "tuned"
#: the significance level of every test of the verdict
ALPHA = 0.05
#: the power the sample-size estimate of an inconclusive verdict aims at
POWER = 0.8
#: the default equivalence margin (``evidence.margin``; the config's default is this constant)
MARGIN = 0.05
#: the default largest general-ability drop that is not a cost (``evidence.forgetting_limit``)
FORGETTING_LIMIT = 0.05
#: the outcomes, in the words the report leads with
OUTCOME_WORDS = {"tune": "Tune", "tune_with_cost": "Tune, at a cost", "prompting_suffices": "Prompting suffices",
                 "inconclusive": "Inconclusive", "no_comparison": "No verdict"}


def _info(metrics: dict, name: str) -> dict:
    return (metrics.get("metric_info") or {}).get(name) or {}


def _higher(metrics: dict, name: str) -> bool:
    return _info(metrics, name).get("higher_is_better", True)


def _section(metrics: dict, name: str) -> str:
    return _info(metrics, name).get("section", HELD_OUT)


def column_values(metrics: dict, column: str) -> dict:
    """The metrics of one column: ``base``, ``tuned`` or a baseline's name (under ``baselines``)."""
    if column in (BASE, TUNED):
        return metrics.get(column) or {}
    return (metrics.get("baselines") or {}).get(column) or {}


def column_order(metrics: dict) -> list:
    """``base``, the baselines in the order they ran, ``tuned`` (those present)."""
    order = [BASE] if metrics.get(BASE) else []
    order += list(metrics.get("baselines") or {})
    return order + ([TUNED] if metrics.get(TUNED) else [])


def column_label(metrics: dict, column: str) -> str:
    """How a column is named in the report: ``base (zero-shot)``, ``retrieval, k=4``, ``tuned``."""
    if column == BASE:
        return "base (zero-shot)"
    return ((metrics.get("baseline_info") or {}).get(column) or {}).get("label") or column


def is_share(metrics: dict, name: str) -> bool:
    """A 0-1 score shown as a percentage (changes in points): as the evaluator declared it
    (``MetricInfo.share``), else inferred from the values."""
    info = _info(metrics, name)
    if info.get("share") is not None:
        return bool(info["share"])
    values = [column_values(metrics, c).get(name) for c in column_order(metrics)]
    values = [v for v in values if v is not None]
    return bool(values) and all(0.0 <= v <= 1.0 for v in values) and info.get("higher_is_better", True) \
        and not info.get("is_loss", False)


def headline_metric(metrics: dict, scores: Optional[dict] = None, chosen: Optional[str] = None) -> Optional[str]:
    """The metric the verdict is about: ``chosen`` (``evidence.metric``) when it is a held-out metric of the
    tuned column that a prompting column also has; else among those, a ``primary`` one first, then one with
    per-example scores, then one where higher is better, then by name."""
    prompting = [c for c in column_order(metrics) if c != TUNED]
    names = [n for n in column_values(metrics, TUNED)
             if _section(metrics, n) == HELD_OUT and any(n in column_values(metrics, c) for c in prompting)]
    if chosen in names:
        return chosen
    if not names:
        return None
    tuned_scores = (scores or {}).get(TUNED) or {}
    return min(names, key=lambda n: (not _info(metrics, n).get("primary", False), n not in tuned_scores,
                                     not _higher(metrics, n), n))


def _paired(scores: dict, column: str, other: str, name: str, confidence: float) -> Optional[dict]:
    a, b = (scores.get(column) or {}).get(name), (scores.get(other) or {}).get(name)
    if not a or not b or not a.get("values") or len(a["values"]) != len(b.get("values") or ()):
        return None
    return uncertainty.paired_difference(a["values"], b["values"], a.get("weights"), b.get("weights"),
                                         confidence=confidence)


def _signed(test: dict, higher: bool) -> dict:
    """The test's value and bounds in the direction of improvement (a lower loss counts positive)."""
    sign = 1.0 if higher else -1.0
    low, high = sorted((sign * test["low"], sign * test["high"]))
    return {"value": sign * test["value"], "low": low, "high": high}


def _significant(test: dict, higher: bool, better: bool) -> bool:
    signed = _signed(test, higher)
    beyond = signed["low"] > 0 if better else signed["high"] < 0
    return beyond and (test.get("p_value") is None or test["p_value"] < ALPHA)


def _z(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def examples_to_settle(test: dict, higher: bool, margin: float) -> Optional[int]:
    """About how many held-out examples would likely settle an inconclusive comparison (80% power):
    enough to show the observed gain above zero, or, where it is smaller than the margin (the tuned model
    behind included), to show the prompting column equivalent or better (the upper end of tuned minus it
    below the margin, as "prompting suffices" needs); None when the spread is zero."""
    spread, gain = test.get("spread") or 0.0, _signed(test, higher)["value"]
    if spread <= 0:
        return None
    sizes = []
    if gain > 0:
        sizes.append(((_z(1 - ALPHA / 2) + _z(POWER)) * spread / gain) ** 2)
    if gain < margin:
        sizes.append(((_z(1 - ALPHA) + _z(POWER)) * spread / (margin - gain)) ** 2)
    return max(int(math.ceil(min(sizes))), int(test.get("n") or 0) + 1) if sizes else None


def decide(metrics: dict, scores: dict, *, margin: float = MARGIN, forgetting_limit: float = FORGETTING_LIMIT,
           metric: Optional[str] = None) -> dict:
    """The verdict's numbers (see the module doc).  ``scores``: ``{column: {metric: {"values",
    "weights"}}}``.  Keys: ``outcome``, ``decision`` (tune / prompting_suffices / inconclusive /
    no_comparison), ``metric``, ``baseline`` (the best prompting column) with ``baseline_label`` and
    ``baseline_value``, ``tuned``, ``change``, ``low``, ``high``, ``n``, ``p_value``, ``method``,
    ``comparisons`` (tuned vs every prompting column), ``equivalent_column`` (prompting suffices),
    ``examples_needed`` (inconclusive), ``forgetting`` (general-ability changes), ``disagreements``,
    ``margin``, ``forgetting_limit``, ``headline`` and ``text``; ``metric_note`` when ``metric`` (the
    chosen one, ``evidence.metric``) could not be the verdict's."""
    name = headline_metric(metrics, scores, metric)
    result: dict = {"margin": float(margin), "forgetting_limit": float(forgetting_limit)}
    if metric and name != metric:
        result["metric_note"] = (f"evidence.metric={metric} was not measured for both the tuned model and a "
                                 f"prompting column (as a held-out metric), so the verdict is on {name or 'nothing'}")
    if name is None or not metrics.get(TUNED):
        result.update(outcome="no_comparison", decision="no_comparison",
                      reason="no tuned model" if not metrics.get(TUNED) else "no shared held-out metric")
        return _with_text(result)
    higher = _higher(metrics, name)
    prompting = [c for c in column_order(metrics) if c != TUNED and name in column_values(metrics, c)]
    best = (max if higher else min)(prompting, key=lambda c: column_values(metrics, c)[name])
    comparisons = {c: _paired(scores, TUNED, c, name, 1 - ALPHA) for c in prompting}
    headline_test = comparisons[best] or {}
    result.update({
        "metric": name, "higher_is_better": higher, "share": is_share(metrics, name),
        "tuned": column_values(metrics, TUNED)[name], "baseline": best, "baseline_label": column_label(metrics, best),
        "baseline_value": column_values(metrics, best)[name], "baselines_run": list(metrics.get("baselines") or {}),
        "change": column_values(metrics, TUNED)[name] - column_values(metrics, best)[name],
        "low": headline_test.get("low"), "high": headline_test.get("high"), "n": headline_test.get("n"),
        "p_value": headline_test.get("p_value"), "method": headline_test.get("method"),
        "comparisons": {c: _public(t) for c, t in comparisons.items() if t},
        "labels": {c: column_label(metrics, c) for c in prompting},
    })
    if any(t is None for t in comparisons.values()):
        missing = [c for c, t in comparisons.items() if t is None]
        result.update(decision="inconclusive", reason=f"no per-example scores of {name} for {', '.join(missing)}")
    else:
        result.update(_three_way(comparisons, scores, name, higher, margin))
        if result.get("equivalent_column"):
            result["equivalent_label"] = column_label(metrics, result["equivalent_column"])
            result["equivalent_no_model"] = bool(((metrics.get("baseline_info") or {}).get(
                result["equivalent_column"]) or {}).get("no_model"))
        if result["decision"] == "inconclusive":
            result["examples_needed"] = examples_to_settle(headline_test, higher, margin)
    result["forgetting"] = _forgetting(metrics, scores, forgetting_limit)
    result["disagreements"] = _disagreements(metrics, scores, name, best, result["decision"])
    costly = [f for f in result["forgetting"] if f["costs"]]
    result["outcome"] = "tune_with_cost" if result["decision"] == "tune" and costly else result["decision"]
    return _with_text(result)


def _public(test: dict) -> dict:
    return {k: v for k, v in test.items() if k != "spread"}


def _three_way(comparisons: dict, scores: dict, name: str, higher: bool, margin: float) -> dict:
    k = len(comparisons)
    equivalence_confidence = 1 - 2 * ALPHA / k
    equivalent = {}
    for column in comparisons:
        test = _paired(scores, TUNED, column, name, equivalence_confidence)
        if _signed(test, higher)["high"] < margin:
            equivalent[column] = test
    if equivalent:
        column = min(equivalent, key=lambda c: _signed(equivalent[c], higher)["high"])
        test = equivalent[column]
        return {"decision": "prompting_suffices", "equivalent_column": column,
                "equivalence": {"low": test["low"], "high": test["high"], "confidence": equivalence_confidence,
                                "method": test["method"]}}
    if all(_significant(t, higher, better=True) for t in comparisons.values()):
        return {"decision": "tune"}
    return {"decision": "inconclusive"}


def _forgetting(metrics: dict, scores: dict, limit: float) -> list:
    """Tuned vs base on every general-ability metric: the change, its interval and whether it costs."""
    out = []
    for name in sorted(column_values(metrics, TUNED)):
        if _section(metrics, name) != GENERAL_ABILITY or name not in column_values(metrics, BASE):
            continue
        higher = _higher(metrics, name)
        change = column_values(metrics, TUNED)[name] - column_values(metrics, BASE)[name]
        entry = {"metric": name, "base": column_values(metrics, BASE)[name],
                 "tuned": column_values(metrics, TUNED)[name], "change": change, "share": is_share(metrics, name),
                 "higher_is_better": higher}
        test = _paired(scores, TUNED, BASE, name, 1 - ALPHA)
        if test:
            entry.update(low=test["low"], high=test["high"], n=test["n"], p_value=test.get("p_value"),
                         method=test["method"])
        drop = -(change if higher else -change)
        entry["significant"] = bool(test) and _significant(test, higher, better=False)
        entry["costs"] = entry["significant"] or drop > limit + 1e-12
        out.append(entry)
    return out


def _disagreements(metrics: dict, scores: dict, headline: str, best: str, decision: str) -> list:
    """Other held-out metrics whose tuned-vs-best-column test points the other way from the decision:
    significantly worse when the verdict is tune, significantly better otherwise."""
    out = []
    for name in sorted(column_values(metrics, TUNED)):
        if name == headline or _section(metrics, name) != HELD_OUT or name not in column_values(metrics, best):
            continue
        test = _paired(scores, TUNED, best, name, 1 - ALPHA)
        if not test:
            continue
        higher = _higher(metrics, name)
        worse, better = _significant(test, higher, better=False), _significant(test, higher, better=True)
        if (decision == "tune" and worse) or (decision != "tune" and better):
            out.append({"metric": name, "direction": "better" if better else "worse", "change": test["value"],
                        "low": test["low"], "high": test["high"], "p_value": test.get("p_value"),
                        "share": is_share(metrics, name), "is_loss": bool(_info(metrics, name).get("is_loss"))})
    return out


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def _value(share: bool, x) -> str:
    return f"{100 * x:.1f}%" if share else f"{x:.4g}"


def _delta(share: bool, x) -> str:
    return f"{100 * x:+.1f} points" if share else f"{x:+.4g}"


def _bound(share: bool, x) -> str:
    return f"{100 * x:+.1f}" if share else f"{x:+.4g}"


def _interval(share: bool, test: dict, level: str = "95%") -> str:
    if test.get("low") is None:
        return "no interval: the evaluator gives no per-example scores"
    text = f"{level} CI {_bound(share, test['low'])}..{_bound(share, test['high'])}"
    if test.get("n"):
        text += f", n={test['n']}"
    if test.get("p_value") is not None:
        text += f"; {_p_text(test)}"
    return text


def _p_text(test: dict) -> str:
    """``McNemar p=0.065`` / ``paired t p=0.01`` / ``p=0.2``: the p-value named by its test."""
    name = uncertainty.p_value_test(test.get("method"))
    return f"{name + ' ' if name else ''}p={test['p_value']:.2g}"


def _first_cost(v: dict) -> Optional[dict]:
    """The first general-ability metric whose change costs (the one the headline names), or None."""
    return next((f for f in v.get("forgetting") or [] if f["costs"]), None)


def _cost_clause(v: dict) -> str:
    """``; and tuning costs 86.7 points of general ability (...)`` for a headline that is not already about
    the cost, or ""."""
    cost = _first_cost(v)
    return f"; and tuning costs {_forgetting_text(cost)}" if cost is not None else ""


def _forgetting_text(entry: dict) -> str:
    share = entry["share"]
    drop = -entry["change"] if entry["higher_is_better"] else entry["change"]
    points = f"{100 * drop:.1f} points" if share else f"{drop:.4g}"
    return (f"{points} of general ability ({entry['metric']} {_value(share, entry['base'])} -> "
            f"{_value(share, entry['tuned'])}, {_interval(share, entry)})")


def _with_text(v: dict) -> dict:
    v["headline"], v["text"] = headline_text(v), verdict_text(v)
    return v


def headline_text(v: dict) -> str:
    """One sentence that starts with the answer."""
    outcome = v.get("outcome", "no_comparison")
    if outcome == "no_comparison":
        if v.get("reason") == "no tuned model":
            return "No verdict: nothing to compare, this evaluates the base model alone (no tuned model)."
        return "No verdict: no held-out metric was measured for both the tuned model and a prompting column."
    share, metric = v["share"], v["metric"]
    gap = f"tuned {metric} {_value(share, v['tuned'])} vs {v['baseline_label']} {_value(share, v['baseline_value'])}"
    if outcome in ("tune", "tune_with_cost"):
        head = f"Tune: {gap}, {_delta(share, v['change'])} ({_interval(share, v)})"
        if outcome == "tune_with_cost":
            head = (f"Tune, but it costs {_forgetting_text(_first_cost(v))}: {gap}, {_delta(share, v['change'])} "
                    f"({_interval(share, v)})")
        return head + "."
    if outcome == "prompting_suffices":
        column = v["equivalent_column"]
        eq = v["equivalence"]
        label = v.get("equivalent_label") or column
        interval = (f"{int(round(eq['confidence'] * 100))}% CI of tuned minus it {_bound(share, eq['low'])}.."
                    f"{_bound(share, eq['high'])}")
        if _signed({"value": 0.0, **eq}, v.get("higher_is_better", True))["high"] < -v["margin"]:  # clearly better
            who = f"tuning did worse than {label}" if v.get("equivalent_no_model") else f"{label} beats the tuned model"
            return f"Prompting suffices: {who} on {metric} ({interval}){_cost_clause(v)}."
        if v.get("equivalent_no_model"):  # e.g. the most common training answer: tuning learnt no more than that
            return (f"Prompting suffices: tuning did no better than {label}, within "
                    f"±{_bound(share, v['margin']).lstrip('+')} of the tuned {metric} ({interval}){_cost_clause(v)}.")
        return (f"Prompting suffices: {label} is within ±{_bound(share, v['margin']).lstrip('+')} of the tuned "
                f"{metric} ({interval}){_cost_clause(v)}.")
    needed = v.get("examples_needed")
    settle = f"; about {needed} held-out examples would likely settle it" if needed else ""
    n = f" at n={v['n']}" if v.get("n") else ""
    return f"Inconclusive{n}: {gap}, {_delta(share, v['change'])} ({_interval(share, v)}){settle}{_cost_clause(v)}."


def verdict_text(v: dict) -> str:
    """The verdict's paragraph: the headline, then why, the other metrics, forgetting and the cost."""
    parts = [v.get("headline") or headline_text(v)]
    if v.get("metric_note"):
        parts.append(v["metric_note"][0].upper() + v["metric_note"][1:] + ".")
    if v.get("outcome") == "no_comparison":
        return " ".join(parts)
    if v.get("reason"):
        parts.append(f"No decision: {v['reason']}.")
    elif v["decision"] in ("tune",):
        others = [c for c in v.get("comparisons", {}) if c != v["baseline"]]
        if others:
            parts.append(f"It beats every prompting column ({len(others) + 1} of {len(others) + 1}), "
                         f"each difference significant.")
    elif v["decision"] == "inconclusive":
        parts.append(_unsettled_text(v))
    if not v.get("baselines_run"):
        parts.append("No baseline ran: the comparison is with the zero-shot base model only, which a tuned model "
                     "can beat by the answers' format alone (the default baselines compare with prompting, and "
                     "with the most common answer on a classification set).")
    for d in v.get("disagreements") or []:
        parts.append(_disagreement_text(v, d))
    named = _first_cost(v)  # the headline names the first cost
    for f in v.get("forgetting") or []:
        if f["costs"]:
            if f is not named:
                parts.append(f"Tuning also costs {_forgetting_text(f)}.")
        elif f.get("low") is not None:
            parts.append(_kept_text(f, v["forgetting_limit"]))
    if named is not None:
        parts.append(REHEARSAL_HINT)
    if v.get("method"):
        parts.append(f"Method: {v['method']}.")
    if v.get("cost_text"):
        parts.append(v["cost_text"])
    return " ".join(parts)


#: what the verdict suggests when tuning costs general ability
REHEARSAL_HINT = ("Rehearsal usually wins general ability back: mix general examples the base model answers "
                  "well into training (data.rehearsal_path, e.g. "
                  "${pkg:tuneforge.plugins/data/rehearsal_general.jsonl}; docs/evaluation.md, forgetting).")


def _unsettled_text(v: dict) -> str:
    """Why an inconclusive verdict is neither "tune" nor "prompting suffices", comparison by comparison:
    an interval that includes 0, or an interval past 0 whose exact test does not reach p < ALPHA (the
    Newcombe interval is a score approximation, McNemar's test exact: near the edge they can disagree,
    and a gain counts only when both show it)."""
    share, higher = v["share"], v["higher_is_better"]
    reasons = []
    for column, test in (v.get("comparisons") or {}).items():
        if _significant(test, higher, better=True):
            continue
        label = (v.get("labels") or {}).get(column, column)
        interval = f"{_bound(share, test['low'])}..{_bound(share, test['high'])}"
        if _signed(test, higher)["low"] > 0:
            reasons.append(f"against {label} the 95% interval ({interval}) excludes 0 but the {_p_text(test)} "
                           f"is not below {ALPHA:g}, and a gain counts only when both show it")
        else:
            reasons.append(f"against {label} the 95% interval ({interval}) includes 0")
    margin = _bound(share, v["margin"]).lstrip("+")
    shown = f"A gain over prompting is not shown: {'; '.join(reasons)}. " if reasons else ""
    return (f"{shown}Nor is prompting shown to be enough: that needs the interval of tuned minus some prompting "
            f"column to lie below +{margin} (evidence.margin: within ±{margin} or better), and none does. "
            "Not significant is not equivalent.")


def _disagreement_text(v: dict, d: dict) -> str:
    """Another held-out metric whose test points away from the decision."""
    interval = f"{_delta(d['share'], d['change'])}, 95% CI {_bound(d['share'], d['low'])}..{_bound(d['share'], d['high'])}"
    if d["direction"] == "worse":
        return f"{d['metric']} points the other way: tuned is significantly worse ({interval})."
    unless = ("which it does not show" if v["decision"] == "inconclusive"
              else "where it finds prompting as good")
    text = f"{d['metric']} favours tuning: tuned is significantly better ({interval}), unlike {v['metric']}, {unless}."
    if d.get("is_loss"):
        text += (" A lower loss says the tuned model finds the reference answers likelier (their format and words), "
                 "not that its answers are right.")
    return text


def _kept_text(f: dict, limit: float) -> str:
    """A general-ability metric without a significant drop: whether its interval also rules out a drop
    beyond ``limit`` (evidence.forgetting_limit), or still allows one."""
    share, higher = f["share"], f["higher_is_better"]
    worst = -f["low"] if higher else f["high"]  # the largest drop the interval allows
    change = f"{f['metric']} {_value(share, f['base'])} -> {_value(share, f['tuned'])} ({_interval(share, f)})"
    amount = (lambda x: f"{100 * x:.1f} points") if share else (lambda x: f"{x:.4g}")
    if worst <= limit + 1e-12:
        return f"No forgetting: {change}; the interval rules out a drop of more than {amount(limit)}."
    return (f"No significant forgetting, but not ruled out: {change}; the interval allows a drop of up to "
            f"{amount(worst)}, more than evidence.forgetting_limit ({amount(limit)}): more general-ability "
            "examples would tell.")


def slice_verdicts(metrics: dict, scores: dict, labels: list, *, margin: float, forgetting_limit: float,
                   field: str, metric: Optional[str] = None) -> dict:
    """The verdict again within each value of a record field (``evidence.slice_by``): ``{value: {"n",
    "columns": {column: {metric: value}}, "verdict": {...}}}``.  Only held-out metrics whose per-example
    scores cover the held-out examples (``len(labels)``) are sliced."""
    import numpy as np

    out = {}
    for value in sorted({str(x) for x in labels}):
        index = [i for i, x in enumerate(labels) if str(x) == value]
        sub_scores: dict = {}
        sub_metrics: dict = {"metric_info": metrics.get("metric_info") or {},
                             "baseline_info": metrics.get("baseline_info") or {}}
        for column in column_order(metrics):
            for name, s in (scores.get(column) or {}).items():
                if _section(metrics, name) != HELD_OUT or len(s.get("values") or ()) != len(labels):
                    continue
                values = [s["values"][i] for i in index]
                weights = [s["weights"][i] for i in index] if s.get("weights") is not None else None
                sub_scores.setdefault(column, {})[name] = {"values": values, "weights": weights}
                mean = uncertainty.weighted_mean(values, weights)
                target = sub_metrics.setdefault("baselines", {}).setdefault(column, {}) \
                    if column not in (BASE, TUNED) else sub_metrics.setdefault(column, {})
                target[name] = float(mean) if np.isfinite(mean) else mean
        verdict = decide(sub_metrics, sub_scores, margin=margin, forgetting_limit=forgetting_limit, metric=metric)
        out[value] = {"n": len(index), "field": field,
                      "columns": {c: column_values(sub_metrics, c) for c in column_order(sub_metrics)},
                      "verdict": verdict}
    return out

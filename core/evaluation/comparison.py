"""The run's comparison of columns (base zero-shot, prompting baselines, tuned): intervals, changes,
the train-vs-held-out gap and the verdict, all stored in ``metrics.json``.

:func:`summarize` adds to a run's metrics

* ``intervals``: ``{column: {metric: {"low", "high", "n"}}}``, the bootstrap
  interval of every metric with per-example scores (columns ``base``, each
  baseline's name, ``tuned``);
* ``changes``: ``{"change": ..., "tuned-<baseline>": ...}``, each
  ``{metric: {"value", "low", "high", "n"}}`` (tuned minus the other column,
  paired over the same examples), plus ``gained``, ``lost`` and ``p_value``
  (McNemar's exact test) for 0/1 scores;
* ``memorisation``: the tuned model on a sample of training examples next to
  its held-out scores, the gap (train better by how much) with its interval,
  and the metrics flagged for a large gap (at least ``flag_gap`` and an
  interval above zero; metrics without per-example scores are not flagged);
* ``uncertainty``: how the intervals were made;
* ``verdict``: the numbers of the one-paragraph verdict (:func:`verdict_text`
  renders it): tuned vs the best prompting column on the headline metric.

Everything here reads and writes plain dicts, so the report and ``compare``
need no plugin.
"""

from __future__ import annotations

from typing import Optional

from tuneforge.evaluation import uncertainty
from tuneforge.specs import HELD_OUT

#: the column of the base model without any baseline (zero-shot), and of the tuned model
BASE, TUNED = "base", "tuned"


def _info(metrics: dict, name: str) -> dict:
    return (metrics.get("metric_info") or {}).get(name) or {}


def _held_out(metrics: dict, name: str) -> bool:
    return _info(metrics, name).get("section", HELD_OUT) == HELD_OUT


def _higher(metrics: dict, name: str) -> bool:
    return _info(metrics, name).get("higher_is_better", True)


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


def summarize(metrics: dict, scores: dict, *, seed: int = 0, resamples: int = uncertainty.RESAMPLES,
              confidence: float = uncertainty.CONFIDENCE, memorisation: Optional[dict] = None,
              flag_gap: float = 0.1) -> dict:
    """Add ``intervals``, ``changes``, ``memorisation``, ``uncertainty`` and ``verdict`` to ``metrics``.

    ``scores``: ``{column: {metric: {"values", "weights"}}}`` (the columns'
    per-example scores).  ``memorisation``: ``{"sample": n, "metrics": {...},
    "scores": {...}}`` of the tuned model on training examples, or None.
    ``resamples=0`` computes no interval (changes keep their value).
    """
    options = {"resamples": int(resamples), "confidence": float(confidence), "seed": int(seed)}
    metrics["uncertainty"] = {"method": "percentile bootstrap over examples (paired for changes); McNemar's exact "
                                        "test for 0/1 changes", **options}
    intervals: dict = {}
    for column in column_order(metrics):
        for name, s in (scores.get(column) or {}).items():
            interval = _interval(s, options)
            if interval is not None and name in column_values(metrics, column):
                intervals.setdefault(column, {})[name] = interval
    metrics["intervals"] = intervals
    changes: dict = {}
    if metrics.get(TUNED):
        for other in [c for c in column_order(metrics) if c != TUNED]:
            changes["change" if other == BASE else f"{TUNED}-{other}"] = _changes(
                metrics, scores.get(TUNED) or {}, scores.get(other) or {}, other, options)
    metrics["changes"] = changes
    if memorisation is not None:
        metrics["memorisation"] = _memorisation(metrics, memorisation, scores.get(TUNED) or {}, options, flag_gap)
    metrics["verdict"] = verdict(metrics)
    return metrics


def _interval(s: dict, options: dict) -> Optional[dict]:
    if not options["resamples"] or not s.get("values"):
        return None
    low, high = uncertainty.bootstrap_interval(s["values"], s.get("weights"), resamples=options["resamples"],
                                               confidence=options["confidence"], seed=options["seed"])
    return {"low": low, "high": high, "n": len(s["values"])}


def _changes(metrics: dict, tuned_scores: dict, other_scores: dict, other: str, options: dict) -> dict:
    out = {}
    tuned, base = column_values(metrics, TUNED), column_values(metrics, other)
    for name in sorted(set(tuned) & set(base)):
        entry: dict = {"value": tuned[name] - base[name]}
        a, b = tuned_scores.get(name), other_scores.get(name)
        if a and b and len(a["values"]) == len(b["values"]):
            entry["n"] = len(a["values"])
            if options["resamples"]:
                entry["low"], entry["high"] = uncertainty.paired_bootstrap_interval(
                    a["values"], b["values"], a.get("weights"), b.get("weights"), resamples=options["resamples"],
                    confidence=options["confidence"], seed=options["seed"])
            if uncertainty.is_binary(a["values"]) and uncertainty.is_binary(b["values"]):
                entry.update(uncertainty.mcnemar_exact(a["values"], b["values"]))
        out[name] = entry
    return out


def _memorisation(metrics: dict, memorisation: dict, tuned_scores: dict, options: dict, flag_gap: float) -> dict:
    train, held = memorisation.get("metrics") or {}, column_values(metrics, TUNED)
    train_scores = memorisation.get("scores") or {}
    out: dict = {"sample": int(memorisation.get("sample") or 0), "train": train,
                 "held_out": {n: held[n] for n in train if n in held}, "intervals": {}, "gap": {}, "flagged": []}
    for name in sorted(out["held_out"]):
        sign = 1.0 if _higher(metrics, name) else -1.0
        gap = {"value": sign * (train[name] - held[name])}
        a, b = train_scores.get(name), tuned_scores.get(name)
        if a:
            interval = _interval(a, options)
            if interval is not None:
                out["intervals"][name] = interval
        if a and b and options["resamples"]:
            low, high = uncertainty.unpaired_bootstrap_interval(
                a["values"], b["values"], a.get("weights"), b.get("weights"), resamples=options["resamples"],
                confidence=options["confidence"], seed=options["seed"])
            gap["low"], gap["high"] = sorted((sign * low, sign * high))
        out["gap"][name] = gap
        if gap["value"] >= flag_gap and gap.get("low", 0.0) > 0:
            out["flagged"].append(name)
    out["flag_gap"] = float(flag_gap)
    return out


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------


def headline_metric(metrics: dict) -> Optional[str]:
    """The metric the verdict is about: among held-out metrics of the tuned column that a prompting
    column also has, a ``primary`` one first, then one with an interval of its change, then one where
    higher is better, then by name."""
    prompting = [c for c in column_order(metrics) if c != TUNED]
    names = [n for n in column_values(metrics, TUNED)
             if _held_out(metrics, n) and any(n in column_values(metrics, c) for c in prompting)]
    if not names:
        return None
    change = (metrics.get("changes") or {}).get("change") or {}
    return min(names, key=lambda n: (not _info(metrics, n).get("primary", False), "low" not in change.get(n, {}),
                                     not _higher(metrics, n), n))


def _share(metrics: dict, name: str) -> bool:
    """A 0-1 score shown as a percentage (changes in points)."""
    values = [column_values(metrics, c).get(name) for c in column_order(metrics)]
    values = [v for v in values if v is not None]
    info = _info(metrics, name)
    return bool(values) and all(0.0 <= v <= 1.0 for v in values) and info.get("higher_is_better", True) \
        and not info.get("is_loss", False)


def verdict(metrics: dict) -> dict:
    """The verdict's numbers: tuned vs the best prompting column (base zero-shot or a baseline) on the
    :func:`headline_metric`, the paired change with its interval (and McNemar's p for 0/1 scores),
    prompt tokens per query of both, the training time, and the ``outcome``: ``tuning_better``
    (the interval of the change is above zero), ``prompting_matches`` (it contains zero),
    ``prompting_better`` (below zero), or ``no_comparison``.  ``text`` is :func:`verdict_text`."""
    name = headline_metric(metrics)
    if name is None:
        result = {"outcome": "no_comparison"}
        result["text"] = verdict_text(result)
        return result
    higher = _higher(metrics, name)
    prompting = [c for c in column_order(metrics) if c != TUNED and name in column_values(metrics, c)]
    best = (max if higher else min)(prompting, key=lambda c: column_values(metrics, c)[name])
    change = ((metrics.get("changes") or {}).get("change" if best == BASE else f"{TUNED}-{best}") or {}).get(name, {})
    tuned_value, best_value = column_values(metrics, TUNED)[name], column_values(metrics, best)[name]
    cost = metrics.get("cost") or {}
    result = {
        "metric": name, "higher_is_better": higher, "share": _share(metrics, name),
        "tuned": tuned_value, "baseline": best, "baseline_label": column_label(metrics, best),
        "baseline_value": best_value, "baselines_run": list(metrics.get("baselines") or {}),
        "change": tuned_value - best_value, "low": change.get("low"), "high": change.get("high"),
        "n": change.get("n"), "p_value": change.get("p_value"),
        "tuned_prompt_tokens": (cost.get(TUNED) or {}).get("prompt_tokens_per_query"),
        "baseline_prompt_tokens": (cost.get(best) or {}).get("prompt_tokens_per_query"),
        "training_s": (cost.get(TUNED) or {}).get("training_s"),
    }
    sign = 1.0 if higher else -1.0
    if result["low"] is not None and result["high"] is not None:
        low, high = sorted((sign * result["low"], sign * result["high"]))
        result["outcome"] = "tuning_better" if low > 0 else "prompting_better" if high < 0 else "prompting_matches"
    else:
        gain = sign * result["change"]
        result["outcome"] = "tuning_better" if gain > 0 else "prompting_better" if gain < 0 else "prompting_matches"
    result["text"] = verdict_text(result)
    return result


def _value(v: dict, x) -> str:
    return f"{100 * x:.1f}%" if v.get("share") else f"{x:.4g}"


def _delta(v: dict, x) -> str:
    return f"{100 * x:+.1f} points" if v.get("share") else f"{x:+.4g}"


def _bound(v: dict, x) -> str:
    return f"{100 * x:+.1f}" if v.get("share") else f"{x:+.4g}"


def verdict_text(v: dict) -> str:
    """The one-paragraph verdict from :func:`verdict`'s numbers."""
    if v.get("outcome") == "no_comparison" or "metric" not in v:
        return "No verdict: no held-out metric was measured for both the tuned model and a prompting column."
    metric = v["metric"]
    if v.get("low") is not None and v.get("high") is not None:
        interval = f"95% CI {_bound(v, v['low'])}..{_bound(v, v['high'])}"
        if v.get("n"):
            interval += f", n={v['n']}"
        if v.get("p_value") is not None:
            interval += f"; McNemar p={v['p_value']:.2g}"
    else:
        interval = "no interval: the evaluator gives no per-example scores"
    label = v["baseline_label"] if v["baseline"] != BASE else "the zero-shot base model"
    if not v.get("baselines_run"):
        label += ", no prompting baseline ran"
    tokens = ""
    if v.get("tuned_prompt_tokens") and v.get("baseline_prompt_tokens"):
        ratio = v["baseline_prompt_tokens"] / v["tuned_prompt_tokens"]
        tokens = (f"at {ratio:.1f}x fewer prompt tokens per query ({v['tuned_prompt_tokens']:.0f} vs "
                  f"{v['baseline_prompt_tokens']:.0f})" if ratio >= 1.05 else "at the same prompt length")
    training = f"{v['training_s']:.0f} s of training" if v.get("training_s") is not None else "training"
    comparison = (f"tuned {metric} {_value(v, v['tuned'])} vs best prompting baseline ({label}) "
                  f"{_value(v, v['baseline_value'])}: {_delta(v, v['change'])} ({interval})")
    if v["outcome"] == "tuning_better":
        return (f"{comparison[0].upper()}{comparison[1:]}{', ' + tokens if tokens else ''}: fine-tuning is worth "
                f"it for this task ({training}).")
    if v["outcome"] == "prompting_matches":
        saving = f"; tuning only buys {tokens.removeprefix('at ')}" if tokens.startswith("at ") and "x" in tokens \
            else ""
        return (f"Prompting reaches the tuned score within the interval, {comparison}: fine-tuning is not needed "
                f"for this task{saving}.")
    return f"Prompting beats the tuned model, {comparison}: fine-tuning is not worth it for this task."

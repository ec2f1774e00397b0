"""The run's comparison of columns (base zero-shot, prompting baselines, tuned): intervals, changes,
the train-vs-held-out gap and the verdict, all stored in ``metrics.json``.

:func:`summarize` adds to a run's metrics

* ``intervals``: ``{column: {metric: {"low", "high", "n", "method"}}}``, the
  interval of every metric with per-example scores (columns ``base``, each
  baseline's name, ``tuned``): Wilson for 0/1 scores, BCa bootstrap otherwise;
* ``changes``: ``{"change": ..., "tuned-<baseline>": ...}``, each
  ``{metric: {"value", "low", "high", "n", "method"}}`` (tuned minus the other
  column, paired over the same examples: Newcombe's interval with ``gained``,
  ``lost`` and McNemar's exact ``p_value`` for 0/1 scores, the paired t
  interval and test otherwise);
* ``memorisation``: the tuned model on a sample of training examples next to
  its held-out scores, the gap (train better by how much) with its interval,
  and the metrics flagged for a large gap (at least ``flag_gap`` and an
  interval above zero; metrics without per-example scores are not flagged);
* ``uncertainty``: how the intervals were made;
* ``verdict``: tune / tune at a cost / prompting suffices / inconclusive
  (:mod:`tuneforge.evaluation.verdict`), with its inputs;
* ``slices``: with ``slice_by`` labels, the columns and the verdict within each
  value of that record field.

Everything here reads and writes plain dicts, so the report and ``compare``
need no plugin.
"""

from __future__ import annotations

from typing import Optional, Sequence

from tuneforge.evaluation import uncertainty
from tuneforge.evaluation.cost import cost_text, decision_cost
from tuneforge.evaluation.verdict import (BASE, FORGETTING_LIMIT, MARGIN, TUNED, column_label,  # noqa: F401
                                          column_order, column_values, decide, headline_metric, slice_verdicts,
                                          verdict_text)

#: the default smallest train-vs-held-out gap that is flagged (``memorisation.flag_gap``)
FLAG_GAP = 0.1


def _higher(metrics: dict, name: str) -> bool:
    return ((metrics.get("metric_info") or {}).get(name) or {}).get("higher_is_better", True)


def summarize(metrics: dict, scores: dict, *, seed: int = 0, resamples: int = uncertainty.RESAMPLES,
              confidence: float = uncertainty.CONFIDENCE, memorisation: Optional[dict] = None,
              flag_gap: float = FLAG_GAP, margin: float = MARGIN, forgetting_limit: float = FORGETTING_LIMIT,
              slice_labels: Optional[Sequence] = None, slice_by: Optional[str] = None,
              prices: Optional[dict] = None, metric: Optional[str] = None) -> dict:
    """Add ``intervals``, ``changes``, ``memorisation``, ``uncertainty``, ``verdict`` (and ``slices``) to
    ``metrics``.

    ``scores``: ``{column: {metric: {"values", "weights"}}}`` (the columns'
    per-example scores).  ``memorisation``: ``{"sample": n, "metrics": {...},
    "scores": {...}}`` of the tuned model on training examples, or None.
    ``resamples`` and ``seed`` drive the BCa bootstrap of continuous column
    intervals and the memorisation gap (``resamples=0``: no intervals); the
    verdict's tests never resample.  ``margin`` and ``forgetting_limit``: the
    ``evidence`` settings of the verdict.  ``slice_labels``: the ``slice_by``
    field's value of every held-out example, in order.  ``prices``: the
    ``evidence`` prices of the verdict's cost (:mod:`tuneforge.evaluation.cost`).  ``metric``: the
    verdict's metric (``evidence.metric``; None: :func:`~tuneforge.evaluation.verdict.headline_metric`).
    """
    options = {"resamples": int(resamples), "confidence": float(confidence), "seed": int(seed)}
    metrics["uncertainty"] = {"method": "columns: Wilson score (0/1 scores) or BCa bootstrap; changes: Newcombe "
                                        "paired score interval and McNemar's exact test (0/1 scores) or paired t; "
                                        "memorisation gap: unpaired percentile bootstrap", **options}
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
    metrics["verdict"] = verdict = decide(metrics, scores, margin=margin, forgetting_limit=forgetting_limit,
                                          metric=metric)
    verdict["cost"] = decision_cost(metrics, verdict, prices)
    if verdict["cost"]:
        verdict["cost_text"] = cost_text(verdict["cost"], verdict["baseline_label"])
        verdict["text"] = verdict_text(verdict)
    if slice_labels is not None and slice_by:
        metrics["slices"] = slice_verdicts(metrics, scores, list(slice_labels), margin=margin,
                                           forgetting_limit=forgetting_limit, field=slice_by, metric=metric)
    return metrics


def _interval(s: dict, options: dict) -> Optional[dict]:
    if not options["resamples"] or not s.get("values"):
        return None
    return uncertainty.column_interval(s["values"], s.get("weights"), confidence=options["confidence"],
                                       resamples=options["resamples"], seed=options["seed"])


def _changes(metrics: dict, tuned_scores: dict, other_scores: dict, other: str, options: dict) -> dict:
    out = {}
    tuned, base = column_values(metrics, TUNED), column_values(metrics, other)
    for name in sorted(set(tuned) & set(base)):
        entry: dict = {"value": tuned[name] - base[name]}
        a, b = tuned_scores.get(name), other_scores.get(name)
        if a and b and len(a["values"]) == len(b["values"]) and options["resamples"]:
            test = uncertainty.paired_difference(a["values"], b["values"], a.get("weights"), b.get("weights"),
                                                 confidence=options["confidence"])
            entry.update({k: v for k, v in test.items() if k not in ("value", "spread")})
        elif a and b and len(a["values"]) == len(b["values"]):
            entry["n"] = len(a["values"])
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


def slice_labels(field: str, examples: Sequence) -> list:
    """The value of record field ``field`` (``evidence.slice_by``) for every held-out example, in order
    (``"(none)"`` where a record lacks it); a field that no record has is a one-line ``ConfigError``."""
    from tuneforge.errors import ConfigError

    records = [(e.get("record") or {}) if isinstance(e, dict) else {} for e in examples]
    labels = [r.get(field) for r in records]
    if records and all(label is None for label in labels):
        seen = sorted({k for r in records for k in r})[:12]
        raise ConfigError(f"evidence.slice_by: no held-out record has a field {field!r} "
                          f"(their fields: {', '.join(seen) or 'none'})")
    return ["(none)" if label is None else str(label) for label in labels]


def check_evidence_metric(settings, evaluators) -> None:
    """A :class:`ConfigError` when ``evidence.metric`` names no selected evaluator (``evaluators``, by key; a
    metric is ``<evaluator>`` or ``<evaluator>/<metric>``) or a metric it declares outside the held-out
    section; a warning when the evaluator declares metrics but not this one."""
    import fnmatch
    import logging

    from tuneforge.errors import ConfigError, did_you_mean
    from tuneforge.specs import HELD_OUT

    metric = settings.evidence.metric
    if not metric:
        return
    metric, key = str(metric), str(metric).split("/")[0]
    if key not in evaluators:
        raise ConfigError(f"evidence.metric: {metric!r} is not a metric of a selected evaluator (selected: "
                          f"{', '.join(evaluators) or 'none'}); a metric is named <evaluator> or "
                          "<evaluator>/<metric>, as metrics.json shows it (exact_match, perplexity/loss)")
    infos = tuple(getattr(evaluators[key].spec, "metrics", ()) or ())
    declared = {(key if len(infos) == 1 and info.name == key else f"{key}/{info.name}"): info for info in infos}
    matched = declared.get(metric) or next((info for name, info in declared.items() if any(c in name for c in "*?[")
                                            and fnmatch.fnmatchcase(metric, name)), None)
    if declared and matched is None:  # an evaluator may report metrics it does not declare: a warning
        names = sorted(declared)
        logging.getLogger("tuneforge").warning(
            "evidence.metric: evaluator '%s' declares no metric %r%s; its declared metrics: %s (unless it reports "
            "that one anyway, the verdict will be on another metric)", key, metric, did_you_mean(metric, names),
            ", ".join(names))
    if matched is not None and matched.section != HELD_OUT:
        raise ConfigError(f"evidence.metric: {metric!r} is a '{matched.section}' metric; the verdict is about a "
                          "held-out metric (the examples the tuned model and the prompting columns answer)")


def evidence_options(settings, val_examples: Sequence, evaluators: Optional[dict] = None) -> dict:
    """:func:`summarize`'s keyword arguments from a run's typed ``uncertainty`` and ``evidence`` settings
    (``settings``: :class:`~tuneforge.host.components.RunSettings`; the slices' labels from
    ``val_examples`` when ``evidence.slice_by`` is set).  With ``evaluators`` (the selected ones, by key), an
    ``evidence.metric`` that no selected evaluator can report is a :class:`ConfigError`."""
    evidence, intervals = settings.evidence, settings.uncertainty
    if evaluators is not None:
        check_evidence_metric(settings, evaluators)
    options = {"resamples": int(intervals.resamples), "confidence": float(intervals.confidence),
               "margin": float(evidence.margin), "forgetting_limit": float(evidence.forgetting_limit),
               "metric": evidence.metric,
               "prices": {"price_per_hour": evidence.price_per_hour,
                          "price_per_million_tokens": evidence.price_per_million_tokens}}
    if evidence.slice_by:
        options.update(slice_by=str(evidence.slice_by), slice_labels=slice_labels(str(evidence.slice_by),
                                                                                   val_examples))
    return options

"""The report's "Notable failures": the examples behind the numbers.

Read from the prediction rows (``predictions.jsonl``), whose ``scores`` hold each column's
per-example score of every metric an evaluator recorded
(:func:`tuneforge.evaluation.record_scores` with ``rows``):

* held-out: how many examples each column misses on the verdict's metric, the tuned model's misses
  (with what the best prompting baseline answered) and the best baseline's misses that tuning fixed;
* every other section (e.g. ``forgetting``): the examples the tuned model gets wrong, those the base
  model got right first (what fine-tuning cost).

A miss is a score of 0 for a 0/1 metric; for a graded metric (ROUGE-L) the lowest tuned scores are
shown instead.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Optional, Sequence

from tuneforge.evaluation.metrics_file import RunMetrics, metric_description
from tuneforge.specs import HELD_OUT

#: rows shown per table
SHOWN = 5
#: prediction rows of the memorisation sample (training examples), left out here
TRAIN_SET = "train"


def _clip(text, limit: int = 200) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score(row: dict, column: str, metric: str) -> Optional[float]:
    return ((row.get("scores") or {}).get(column) or {}).get(metric)


def _message(row: dict) -> str:
    return row.get("message") if row.get("message") is not None else row.get("prompt", "")


def _is_binary(rows: Sequence[dict], columns: Sequence[str], metric: str) -> bool:
    values = [_score(r, c, metric) for r in rows for c in columns]
    return all(v in (0.0, 1.0) for v in values if v is not None)


def _section_metrics(metrics: RunMetrics, rows: Sequence[dict]) -> dict:
    """``{section: [metric]}`` of the higher-is-better metrics that prediction rows carry scores of."""
    scored = {name for row in rows for column in (row.get("scores") or {}).values() for name in column}
    sections: dict = {}
    for name in sorted(scored):
        described = metric_description(metrics, name)
        if described.get("higher_is_better", True) and not described.get("is_loss", False):
            sections.setdefault(described.get("section") or HELD_OUT, []).append(name)
    return sections


def _held_out_metric(metrics: RunMetrics, names: list) -> Optional[str]:
    chosen = (metrics.get("verdict") or {}).get("metric")
    return chosen if chosen in names else (names[0] if names else None)


def failure_blocks(metrics: RunMetrics, predictions: Sequence[dict]) -> list:
    """The "Notable failures" section (report blocks); empty when no prediction row carries scores or there
    is no tuned column."""
    from tuneforge.evaluation.comparison import column_label, column_order
    from tuneforge.evaluation.lead import best_baseline

    if not metrics.get("tuned"):
        return []
    rows = [row for row in predictions if row.get("scores") and row.get("set") != TRAIN_SET]
    sections = _section_metrics(metrics, rows)
    blocks: list = []
    metric = _held_out_metric(metrics, sections.get(HELD_OUT, []))
    if metric is not None:
        held = [row for row in rows if _score(row, "tuned", metric) is not None]
        columns = [c for c in column_order(metrics) if any(_score(r, c, metric) is not None for r in held)]
        best = best_baseline(metrics)
        best = best if best in columns and best != "tuned" else None
        blocks += _held_out_blocks(metrics, held, columns, metric, best, column_label)
    for section, names in sections.items():
        if section == HELD_OUT:
            continue
        for name in names:
            scored = [row for row in rows if _score(row, "tuned", name) is not None]
            blocks += _section_blocks(section, name, scored, "base" if any(
                _score(r, "base", name) is not None for r in scored) else None)
    return [("h2", "Notable failures"), *blocks] if blocks else []


def _held_out_blocks(metrics, held, columns, metric, best, column_label) -> list:
    if not held:
        return []
    n = len(held)
    blocks: list = []
    best_label = column_label(metrics, best) if best else None
    if _is_binary(held, columns, metric):
        counts = ", ".join(f"{column_label(metrics, c)} {sum(_score(r, c, metric) == 0.0 for r in held)} of "
                           f"{sum(_score(r, c, metric) is not None for r in held)}" for c in columns)
        blocks.append(("p", f"Held-out misses on {metric}: {counts}."))
        misses = [r for r in held if _score(r, "tuned", metric) == 0.0]
        if misses:
            blocks.append(("p", f"The tuned model's misses ({len(misses)} of {n}"
                                f"{f'; first {SHOWN}' if len(misses) > SHOWN else ''}):"))
            blocks.append(_table(misses[:SHOWN], ["tuned", *([best] if best else [])],
                                 ["tuned", *([best_label] if best else [])]))
        else:
            blocks.append(("p", f"The tuned model misses none of the {n} held-out examples on {metric}."))
        if best:
            fixed = [r for r in held if _score(r, best, metric) == 0.0 and _score(r, "tuned", metric) == 1.0]
            if fixed:
                blocks.append(("p", f"{best_label} misses {len(fixed)} that the tuned model gets right"
                                    f"{f'; the first {min(3, len(fixed))}' if len(fixed) > 3 else ''}:"))
                blocks.append(_table(fixed[:3], [best, "tuned"], [best_label, "tuned"]))
    else:
        worst = sorted(held, key=lambda r: _score(r, "tuned", metric))[:SHOWN]
        blocks.append(("p", f"The held-out examples with the lowest tuned {metric} ({len(worst)} of {n}):"))
        shown = ["tuned", *([best] if best else [])]
        blocks.append(_table(worst, shown, ["tuned", *([best_label] if best else [])], metric))
    return blocks


def _section_blocks(section: str, metric: str, rows: list, base: Optional[str]) -> list:
    """The tuned model's misses on another section's metric: those the base model got right first."""
    if not rows:
        return []
    title = section[:1].upper() + section[1:]
    if not _is_binary(rows, ["tuned", *([base] if base else [])], metric):
        worst = sorted(rows, key=lambda r: _score(r, "tuned", metric))[:SHOWN]
        return [("p", f"{title}: the examples with the lowest tuned {metric}:"),
                _table(worst, [*([base] if base else []), "tuned"], [*(["base"] if base else []), "tuned"], metric)]
    misses = [r for r in rows if _score(r, "tuned", metric) == 0.0]
    if not misses:
        return [("p", f"{title} ({metric}): the tuned model misses none of the {len(rows)} examples.")]
    lost = [r for r in misses if base and _score(r, base, metric) == 1.0]
    kept = [r for r in misses if r not in lost]
    text = f"{title} ({metric}): the tuned model misses {len(misses)} of {len(rows)}"
    if base:
        text += f"; {len(lost)} of them the base model got right" + (" (listed first)" if lost else "")
    shown = (lost + kept)[:SHOWN]
    return [("p", text + (f"; the first {SHOWN}:" if len(misses) > SHOWN else ":")),
            _table(shown, [*([base] if base else []), "tuned"], [*(["base"] if base else []), "tuned"])]


def _short_source(source: str) -> str:
    """``sample.jsonl:30`` for ``/long/path/sample.jsonl:30`` (the full source is in predictions.jsonl)."""
    return PurePath(source).name if "/" in source or "\\" in source else source


def _table(rows: list, columns: list, labels: list, metric: Optional[str] = None) -> tuple:
    header = ["source", "user's message", "reference", *labels]
    body = []
    for row in rows:
        outputs = []
        for column in columns:
            text = _clip(row.get(column), 160)
            if metric is not None and _score(row, column, metric) is not None:
                text += f" ({_score(row, column, metric):.2f})"
            outputs.append(text)
        body.append([_short_source(row.get("source", "")), _clip(_message(row), 320), _clip(row.get("reference"), 160),
                     *outputs])
    return ("table", header, body)

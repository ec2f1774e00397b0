"""The run's metrics and verdict per value of a record field (``evidence.slice_by``; ``metrics.json``
``slices``, made by :func:`tuneforge.evaluation.verdict.slice_verdicts`) as the run shows them: the
report's "By <field>" section (:func:`slice_blocks`), the block printed after a run and by ``tuneforge
eval`` (:func:`slice_lines`) and ``tuneforge compare``'s table per run (:func:`slice_table`).

Every slice is shown on one metric, the run's headline metric (:func:`slice_metric`), in the order the
values are stored.  Everything is read from ``metrics`` (plain dicts): no plugin is loaded.
"""

from __future__ import annotations

from typing import Callable, Optional

from tuneforge.evaluation.metrics_file import RunMetrics
from tuneforge.evaluation.seeds import outcome_words, verdict_line
from tuneforge.evaluation.tables import short_text
from tuneforge.evaluation.verdict import BASE, TUNED, column_label, column_order, is_share

#: the most slice values printed after a run (all of them are in the report and in metrics.json)
PRINTED_SLICES = 20
#: why a slice's verdict is weaker than the run's, said wherever slices are shown
WEAKER = ("each slice holds only its own held-out examples (n), so its intervals are wider and its verdict "
          "weaker than the run's")


def slice_field(metrics: RunMetrics) -> Optional[str]:
    """The record field the run was sliced by (``evidence.slice_by``); None without slices."""
    slices = metrics.get("slices") or {}
    return next((str(s["field"]) for s in slices.values() if s.get("field")), "slice") if slices else None


def slice_metric(metrics: RunMetrics) -> Optional[str]:
    """The metric the slices are shown on: the run's verdict metric, else the first slice verdict's."""
    slices = metrics.get("slices") or {}
    if not slices:
        return None
    found = [(metrics.get("verdict") or {}).get("metric")]
    found += [(s.get("verdict") or {}).get("metric") for s in slices.values()]
    return next((name for name in found if name), None)


def _share(metrics: RunMetrics, name: str) -> bool:
    verdict = metrics.get("verdict") or {}
    return bool(verdict["share"]) if verdict.get("metric") == name and "share" in verdict else is_share(metrics, name)


def _number(share: bool, value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{100 * value:.1f}%" if share else f"{value:.4g}"


def _slice_value(one: dict, column: str, name: str):
    return ((one.get("columns") or {}).get(column) or {}).get(name)


def slice_table(metrics: RunMetrics, verdict: Callable[[dict], str] = verdict_line) -> Optional[tuple]:
    """``(header, rows)``: one row per slice value, as stored: the value, n, the slice metric of every
    column of the run (base, each baseline, tuned) and ``verdict(slice verdict)``; None without slices."""
    name = slice_metric(metrics)
    if name is None:
        return None
    share, columns = _share(metrics, name), column_order(metrics)
    header = [slice_field(metrics), "n", *[column_label(metrics, c) for c in columns], "verdict"]
    rows = [[short_text(value, 60), str(one.get("n", "-")),
             *[_number(share, _slice_value(one, c, name)) for c in columns], verdict(one.get("verdict") or {})]
            for value, one in (metrics.get("slices") or {}).items()]
    return header, rows


def slice_blocks(metrics: RunMetrics) -> list:
    """The report's "By <field>" section (blocks for :func:`tuneforge.evaluation.report_blocks.build_blocks`):
    a line on what it shows and why to read it with care, then :func:`slice_table`; none without slices."""
    table = slice_table(metrics)
    if table is None:
        return []
    field, name = slice_field(metrics), slice_metric(metrics)
    return [("h2", f"By {field}"),
            ("p", f"Per value of {field} (evidence.slice_by): {name} of every column and the verdict on those "
                  f"examples alone (every held-out metric per value is in metrics.json, slices). Per-slice n is "
                  f"small: {WEAKER}. Read a slice as where to look, not as a result of its own."),
            ("table", *table)]


def slice_line(value: str, one: dict, share: bool, name: str) -> str:
    """``billing (n=6): tuned 33.3%, best prompting 50.0% (retrieval, k=4) -> inconclusive``."""
    v = one.get("verdict") or {}
    tuned = _number(share, _slice_value(one, TUNED, name))
    text = f"{short_text(value, 40)} (n={one.get('n', '?')}): tuned {tuned}"
    if v.get("baseline") is not None:
        label = "zero-shot base" if v["baseline"] == BASE else (v.get("baseline_label") or v["baseline"])
        text += f", best prompting {_number(share, v.get('baseline_value'))} ({label})"
    return f"{text} -> {outcome_words(v.get('outcome') or 'no_comparison')}"


def slice_lines(metrics: RunMetrics, limit: int = PRINTED_SLICES) -> list:
    """The slices as printed after a run and by ``tuneforge eval``: a heading line, then one
    :func:`slice_line` per value (the first ``limit``, then how many more metrics.json holds); none
    without slices."""
    name = slice_metric(metrics)
    if name is None:
        return []
    slices, share = metrics.get("slices") or {}, _share(metrics, name)
    lines = [f"by {slice_field(metrics)} ({name}; per-slice n is small, so each verdict is weaker than the run's):"]
    lines += [f"  {slice_line(value, one, share, name)}" for value, one in list(slices.items())[:limit]]
    if len(slices) > limit:
        lines.append(f"  and {len(slices) - limit} more in metrics.json (slices)")
    return lines

"""The comparison as rows and cells: the table printed at the end of a run (:func:`format_comparison`,
:func:`format_columns`), the base/tuned rows and metric sections the report's tables are made of, and
the number formatting both share."""

from __future__ import annotations

from tuneforge.evaluation.metrics_file import RunMetrics, metric_change, metric_description, metric_interval
from tuneforge.specs import HELD_OUT


def format_comparison(metrics: RunMetrics) -> str:
    """A table of every evaluator metric: base, tuned and the change.

    When the run has prompting baselines or intervals, every column (base
    zero-shot, each baseline, tuned) is shown with a line of 95% intervals
    under each metric, then the cost per query, the memorisation check, the
    slices and the verdict paragraph (:func:`format_columns`).
    """
    if metrics.get("baselines") or metrics.get("intervals") or metrics.get("verdict"):
        return format_columns(metrics)
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = console_rows(metrics, set(base) | set(tuned))
    if not rows:
        return "no evaluator metrics"
    width = max(len("metric"), *(len(label) for label, _name in rows))
    lines = [f"{'metric':<{width}}  {'base':>10}  {'tuned':>10}  {'change':>10}"]
    for label, name in rows:
        if name is None:
            lines.append(label)
            continue
        b, t = base.get(name), tuned.get(name)
        change = f"{t - b:+10.4f}" if b is not None and t is not None else f"{'':>10}"
        fmt = lambda v: f"{v:10.4f}" if v is not None else f"{'-':>10}"  # noqa: E731
        lines.append(f"{label:<{width}}  {fmt(b)}  {fmt(t)}  {change}")
    return "\n".join(lines)


#: the console tables' mark of a metric whose lower values are better (``MetricInfo.higher_is_better=False``)
LOWER_IS_BETTER = " (lower is better)"


def console_rows(metrics: RunMetrics, names) -> list:
    """``[(label, metric or None)]`` for the console tables: metrics grouped by section like the report
    (held-out first, then the other sections in order of first metric; a ``<section>:`` label row
    before each when there are several), each labelled with its name, marked when lower is better."""
    sections: dict = {}
    for name in sorted(names):
        sections.setdefault(metric_description(metrics, name).get("section") or HELD_OUT, []).append(name)
    order = sorted(sections, key=lambda section: section != HELD_OUT)  # stable: held-out, then as met
    rows = []
    for section in order:
        if len(sections) > 1:
            rows.append((f"{section}:", None))
        for name in sections[section]:
            lower = metric_description(metrics, name).get("higher_is_better") is False
            rows.append((f"{'  ' if len(sections) > 1 else ''}{name}{LOWER_IS_BETTER if lower else ''}", name))
    return rows



def format_columns(metrics: RunMetrics, width: int = 100) -> str:
    """The printed comparison of a run with columns: values and interval lines, cost, memorisation, the slices
    (``evidence.slice_by``: :func:`tuneforge.evaluation.slices.slice_lines`), verdict."""
    import textwrap

    from tuneforge.evaluation.comparison import column_label, column_order, column_values

    columns = column_order(metrics)
    rows_of_names = console_rows(metrics, {n for c in columns for n in column_values(metrics, c)})
    if not rows_of_names:
        return "no evaluator metrics"
    header = ["metric", *[column_label(metrics, c) for c in columns], "change"]
    body = []
    for label, name in rows_of_names:
        if name is None:
            body.append([label, *[""] * len(columns), ""])
            continue
        values = [column_values(metrics, c).get(name) for c in columns]
        test = metric_change(metrics, "change", name)
        delta = test.get("value")
        body.append([label, *[number_text(v) for v in values], signed_text(delta) if delta is not None else ""])
        cis = [interval_text(metric_interval(metrics, c, name)) for c in columns]
        if any(ci != "-" for ci in cis) or "low" in test:
            extra = f"  {p_value_text(test)}" if test.get("p_value") is not None else ""
            indent = " " * (len(label) - len(label.lstrip()))  # under its metric (inside a section)
            body.append([f"{indent}  95% CI", *cis, (interval_text(test) if "low" in test else "") + extra])
    cost = metrics.get("cost") or {}
    cost_rows = []
    for key, title, digits in (("prompt_tokens_per_query", "prompt tokens / query", 1),
                               ("generation_s_per_query", "generation s / query", 3), ("training_s", "training s", 1)):
        cells = [(cost.get(c) or {}).get(key) for c in columns]
        if any(v is not None for v in cells):
            cost_rows.append([title, *[number_text(v, digits) for v in cells], ""])
    rows = [header, *body, *([["", *[""] * len(columns), ""], *cost_rows] if cost_rows else [])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:])]
        lines.append(("  ".join(cells) + "  " + row[-1]).rstrip())
    memorisation = metrics.get("memorisation") or {}
    for name in memorisation.get("flagged") or []:
        gap = memorisation["gap"][name]
        lines.append(f"memorisation: {name} is {gap['value']:.4g} better on {memorisation['sample']} training "
                     f"examples than held-out (95% CI {interval_text(gap)}): the tuned model fits what it saw")
    from tuneforge.evaluation.lead import verdict_lead
    from tuneforge.evaluation.slices import slice_lines

    sliced = slice_lines(metrics)
    if sliced:
        lines += ["", *sliced]
    headline, paragraph = verdict_lead(metrics)
    if headline:
        lines.append("")
        lines += textwrap.wrap("verdict: " + headline, width=width)
        if paragraph:
            lines += textwrap.wrap(paragraph, width=width)
    return "\n".join(lines).rstrip()


def comparison_rows(metrics: RunMetrics) -> list:
    """``[(metric, base, tuned, change)]`` with None where a value is missing."""
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = []
    for name in sorted(set(base) | set(tuned)):
        b, t = base.get(name), tuned.get(name)
        rows.append((name, b, t, t - b if b is not None and t is not None else None))
    return rows


def metric_sections(metrics: RunMetrics) -> dict:
    """``{section: [(metric, base, tuned, change)]}`` grouped by ``metrics["metric_info"]``
    (a metric without info belongs to the held-out section), sections in order of first metric."""
    sections: dict = {}
    for row in comparison_rows(metrics):
        sections.setdefault(metric_description(metrics, row[0]).get("section") or HELD_OUT, []).append(row)
    return sections


def number_text(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def signed_text(value) -> str:
    return "-" if value is None else f"{value:+.4f}"


def short_text(text, limit: int = 160) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"



def interval_text(interval) -> str:
    if not interval or interval.get("low") is None:
        return "-"
    return f"{interval['low']:.4f}..{interval['high']:.4f}"



def value_with_interval(value, interval) -> str:
    if value is None:
        return "-"
    if not interval or interval.get("low") is None:
        return number_text(value)
    return f"{number_text(value)} [{interval['low']:.4f}, {interval['high']:.4f}]"



def p_value_text(entry) -> str:
    """``McNemar p=0.0061``, ``paired t p=0.19``: a change's p value named by the test its ``method`` used
    (:func:`tuneforge.evaluation.uncertainty.p_value_test`); ``-`` without one."""
    from tuneforge.evaluation.uncertainty import p_value_test

    if not entry or entry.get("p_value") is None:
        return "-"
    test = p_value_test(entry.get("method"))
    return f"{test + ' ' if test else ''}p={entry['p_value']:.2g}"


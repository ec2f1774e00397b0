"""The run report, answer first: the verdict, what was tuned, the best baseline vs tuned (see
:mod:`tuneforge.evaluation.lead`), then every column with intervals and cost, the base-vs-tuned
tables, the notable failures (:mod:`tuneforge.evaluation.failures`), the memorisation check, plots,
predictions and the config last, as ``report.md`` and a self-contained ``report.html``.

:func:`format_comparison` is the table printed at the end of a run.
:func:`write_report` writes, into a run directory, ``loss_curves.png`` and
``metrics.png`` (matplotlib, Agg canvas: no display needed), ``report.md`` and
``report.html`` (the PNGs embedded as base64, so it opens with no server).
:func:`write_predictions` writes ``predictions.jsonl``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tuneforge.specs import HELD_OUT

#: how many prediction rows the report shows (all are in predictions.jsonl)
REPORT_PREDICTIONS = 10


def format_comparison(metrics: dict) -> str:
    """A table of every evaluator metric: base, tuned and the change.

    When the run has prompting baselines or intervals, every column (base
    zero-shot, each baseline, tuned) is shown with a line of 95% intervals
    under each metric, then the cost per query, the memorisation check and
    the verdict paragraph (:func:`format_columns`).
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


def console_rows(metrics: dict, names) -> list:
    """``[(label, metric or None)]`` for the console tables: metrics grouped by section like the report
    (held-out first, then the other sections in order of first metric; a ``<section>:`` label row
    before each when there are several), each labelled with its name, marked when lower is better."""
    info = metrics.get("metric_info") or {}
    sections: dict = {}
    for name in sorted(names):
        sections.setdefault((info.get(name) or {}).get("section") or HELD_OUT, []).append(name)
    order = sorted(sections, key=lambda section: section != HELD_OUT)  # stable: held-out, then as met
    rows = []
    for section in order:
        if len(sections) > 1:
            rows.append((f"{section}:", None))
        for name in sections[section]:
            lower = (info.get(name) or {}).get("higher_is_better") is False
            rows.append((f"{'  ' if len(sections) > 1 else ''}{name}{LOWER_IS_BETTER if lower else ''}", name))
    return rows


def _interval_text(interval) -> str:
    if not interval or interval.get("low") is None:
        return "-"
    return f"{interval['low']:.4f}..{interval['high']:.4f}"


def format_columns(metrics: dict, width: int = 100) -> str:
    """The printed comparison of a run with columns: values and interval lines, cost, memorisation, verdict."""
    import textwrap

    from tuneforge.evaluation.comparison import column_label, column_order, column_values

    columns = column_order(metrics)
    rows_of_names = console_rows(metrics, {n for c in columns for n in column_values(metrics, c)})
    if not rows_of_names:
        return "no evaluator metrics"
    intervals, change = metrics.get("intervals") or {}, (metrics.get("changes") or {}).get("change") or {}
    header = ["metric", *[column_label(metrics, c) for c in columns], "change"]
    body = []
    for label, name in rows_of_names:
        if name is None:
            body.append([label, *[""] * len(columns), ""])
            continue
        values = [column_values(metrics, c).get(name) for c in columns]
        delta = change.get(name, {}).get("value")
        body.append([label, *[_num(v) for v in values], _signed(delta) if delta is not None else ""])
        cis = [_interval_text((intervals.get(c) or {}).get(name)) for c in columns]
        test = change.get(name, {})
        if any(ci != "-" for ci in cis) or "low" in test:
            extra = f"  McNemar p={test['p_value']:.2g}" if test.get("p_value") is not None else ""
            indent = " " * (len(label) - len(label.lstrip()))  # under its metric (inside a section)
            body.append([f"{indent}  95% CI", *cis, (_interval_text(test) if "low" in test else "") + extra])
    cost = metrics.get("cost") or {}
    cost_rows = []
    for key, title, digits in (("prompt_tokens_per_query", "prompt tokens / query", 1),
                               ("generation_s_per_query", "generation s / query", 3), ("training_s", "training s", 1)):
        cells = [(cost.get(c) or {}).get(key) for c in columns]
        if any(v is not None for v in cells):
            cost_rows.append([title, *[_num(v, digits) for v in cells], ""])
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
                     f"examples than held-out (95% CI {_interval_text(gap)}): the tuned model fits what it saw")
    from tuneforge.evaluation.lead import verdict_lead

    headline, paragraph = verdict_lead(metrics)
    if headline:
        lines.append("")
        lines += textwrap.wrap("verdict: " + headline, width=width)
        if paragraph:
            lines += textwrap.wrap(paragraph, width=width)
    return "\n".join(lines).rstrip()


def comparison_rows(metrics: dict) -> list:
    """``[(metric, base, tuned, change)]`` with None where a value is missing."""
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = []
    for name in sorted(set(base) | set(tuned)):
        b, t = base.get(name), tuned.get(name)
        rows.append((name, b, t, t - b if b is not None and t is not None else None))
    return rows


# ---------------------------------------------------------------------------
# Training curves and the overfitting signal
# ---------------------------------------------------------------------------


def read_loss_curves(metrics_csv: Path) -> dict:
    """``{"train": [(step, loss)], "val": [(step, loss)]}`` from Lightning's ``metrics.csv``."""
    curves: dict = {"train": [], "val": []}
    if not Path(metrics_csv).is_file():
        return curves
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row.get("step") or 0))
            for split in ("train", "val"):
                value = row.get(f"{split}/loss")
                if value not in (None, ""):
                    curves[split].append((step, float(value)))
    return curves


def overfitting_signal(curves: dict, tuned: dict, metric_info: Optional[dict] = None) -> dict:
    """Train vs validation loss at the end of training and their gap (validation minus train).

    The train loss is the mean of the last tenth of logged steps; the
    validation loss is the last validation during training, or else the
    tuned value of the first held-out loss an evaluator declared
    (``metric_info``: ``{metric: {"is_loss": True, "section": "held-out", ...}}``,
    see :class:`tuneforge.specs.MetricInfo`).
    """
    train = [loss for _, loss in curves.get("train", [])]
    signal: dict = {"train_loss": None, "val_loss": None, "gap": None, "val_source": None}
    if train:
        tail = train[-max(1, len(train) // 10):]
        signal["train_loss"] = sum(tail) / len(tail)
    held_out_losses = [name for name, info in sorted((metric_info or {}).items())
                       if info.get("is_loss") and info.get("section", HELD_OUT) == HELD_OUT
                       and tuned.get(name) is not None]
    if curves.get("val"):
        signal["val_loss"], signal["val_source"] = curves["val"][-1][1], "validation during training"
    elif held_out_losses:
        name = held_out_losses[0]
        signal["val_loss"] = tuned[name]
        signal["val_source"] = f"{name.split('/')[0]} evaluator after training"
    if signal["train_loss"] is not None and signal["val_loss"] is not None:
        signal["gap"] = signal["val_loss"] - signal["train_loss"]
    best = best_validation(curves)
    if best is not None:
        signal["best_val_step"], signal["best_val_loss"] = int(best[0]), float(best[1])
    return signal


# ---------------------------------------------------------------------------
# Plots (matplotlib's object API on an Agg canvas: no pyplot state, no display)
# ---------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_loss_curves(curves: dict, path: Path) -> bool:
    """Training and validation loss against the step; False (no file) when nothing was logged."""
    if not curves.get("train") and not curves.get("val"):
        return False
    figure = _figure(6.4, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    if curves.get("train"):
        steps, losses = zip(*curves["train"])
        axes.plot(steps, losses, label="train loss", color="tab:blue")
    if curves.get("val"):
        steps, losses = zip(*curves["val"])
        axes.plot(steps, losses, "o-", label="validation loss", color="tab:orange")
        best_step, best_loss = best_validation(curves)
        axes.plot([best_step], [best_loss], marker="*", markersize=14, color="tab:red", linestyle="none",
                  label=f"lowest validation loss (step {best_step})")
        axes.annotate(f"step {best_step}: {best_loss:.3g}", (best_step, best_loss), textcoords="offset points",
                      xytext=(6, 8), fontsize=8, color="tab:red")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


def best_validation(curves: dict) -> Optional[tuple]:
    """``(step, loss)`` of the lowest validation loss during training (the first of equals); None without
    validation."""
    if not curves.get("val"):
        return None
    return min(curves["val"], key=lambda point: (point[1], point[0]))


def plot_metric_bars(metrics: dict, path: Path) -> bool:
    """One small bar chart per metric, one bar per column (base, each prompting baseline, tuned) with
    its 95% interval as an error bar; False (no file) when there is no metric."""
    from tuneforge.evaluation.comparison import column_order, column_values

    rows = comparison_rows(metrics)
    if not rows:
        return False
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    order = column_order(metrics) or ["base", "tuned"]
    figure = _figure(max(2.6, 0.7 * len(order)) * columns, 2.4 * lines)
    intervals = metrics.get("intervals") or {}
    for i, (name, _base, _tuned, _change) in enumerate(rows):
        axes = figure.add_subplot(lines, columns, i + 1)
        shown = [c for c in order if column_values(metrics, c).get(name) is not None]
        labels = [c for c in shown]
        values = [column_values(metrics, c)[name] for c in shown]
        errors = [[0.0] * len(shown), [0.0] * len(shown)]
        for j, c in enumerate(shown):
            interval = (intervals.get(c) or {}).get(name)
            if interval:
                errors[0][j] = max(0.0, values[j] - interval["low"])
                errors[1][j] = max(0.0, interval["high"] - values[j])
        colors = ["tab:gray" if c == "base" else "tab:green" if c == "tuned" else "tab:blue" for c in shown]
        bars = axes.bar(labels, values, color=colors, yerr=errors if any(map(any, errors)) else None, capsize=3)
        axes.bar_label(bars, fmt="%.3g", fontsize=8)
        if len(shown) > 2:
            axes.tick_params(axis="x", labelrotation=30)
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=8)
        axes.margins(y=0.2)
        top = max(v + e for v, e in zip(values, errors[1]))
        if min(values) >= 0:
            axes.set_ylim(0, top * 1.2 or 1.0)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


# ---------------------------------------------------------------------------
# predictions.jsonl
# ---------------------------------------------------------------------------


def write_predictions(path: Path, rows: Iterable[dict]) -> int:
    """Write prediction rows (set, kind, source, prompt, reference, base, tuned) as JSON lines."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


# ---------------------------------------------------------------------------
# report.md and report.html from one list of blocks
# ---------------------------------------------------------------------------


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _short(text, limit: int = 160) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_blocks(metrics: dict, *, config_yaml: str = "", predictions: Sequence[dict] = (),
                 images: Optional[dict] = None, title: str = "tuneforge run report") -> list:
    """The report as blocks: ``("h1"|"h2"|"p", text)``, ``("verdict", headline, paragraph or None)``,
    ``("ul", items)``, ``("table", header, rows)``, ``("img", path, alt)``, ``("pre", text)``.

    The answer comes first: the title names the model, data, adapter and
    steps (``metrics["setup"]``, :func:`tuneforge.evaluation.lead.report_title`),
    then the verdict (its headline, then its paragraph), one line on what was
    tuned where, and the tuned model against the best prompting baseline.
    Then the details: every column with its interval and the method behind
    it, the cost per query, the base-vs-tuned table of each section of
    metrics (``metrics["metric_info"]``, see :class:`tuneforge.specs.MetricInfo`:
    held-out first, then e.g. ``forgetting``), the notable failures, the
    memorisation check, data quality, training, the predictions (the user's
    message, not the rendered prompt), and the resolved config last.
    """
    from tuneforge.evaluation.failures import failure_blocks
    from tuneforge.evaluation.lead import best_baseline_blocks, held_out_names, report_title, setup_line, verdict_lead

    images = images or {}
    blocks: list = [("h1", report_title(metrics, title))]
    headline, paragraph = verdict_lead(metrics)
    if headline:
        blocks.append(("verdict", headline, paragraph))
    line = setup_line(metrics)
    if line:
        blocks.append(("p", line))
    sections = metric_sections(metrics)
    blocks += best_baseline_blocks(metrics, held_out_names(metrics))
    blocks += _columns_blocks(metrics)
    if "metrics" in images:
        blocks.append(("img", images["metrics"], "per-metric bars, every column with its 95% interval"))
    blocks.append(("h2", "Held-out metrics: base vs tuned"))
    if sections.get(HELD_OUT):
        blocks += _metric_table(sections[HELD_OUT], metrics)
    else:
        blocks.append(("p", "No held-out metrics." if sections else "No evaluator metrics."))
    for section, rows in sections.items():
        if section != HELD_OUT:
            blocks.append(("h2", section[:1].upper() + section[1:]))
            blocks += _metric_table(rows, metrics)
    blocks += failure_blocks(metrics, predictions)
    blocks += _memorisation_blocks(metrics)
    blocks += _quality_blocks(metrics)
    blocks += _training_blocks(metrics, images)
    if predictions:
        from tuneforge.evaluation.comparison import column_order

        labels = [label for label in (column_order(metrics) or ["base", "tuned"])
                  if any(label in row for row in predictions)]
        shown = list(predictions)[:REPORT_PREDICTIONS]
        blocks.append(("h2", f"Predictions (first {len(shown)} of {len(predictions)}; all in predictions.jsonl, "
                             "with the rendered prompts)"))
        blocks.append(("table", ["set", "user's message", "reference", *labels],
                       [[row.get("set", ""), _short(_user_text(row), 300), _short(row.get("reference")),
                         *[_short(row.get(label)) for label in labels]] for row in shown]))
    if config_yaml:
        blocks.append(("h2", "Settings (resolved config)"))
        blocks.append(("pre", config_yaml))
    return blocks


def _user_text(row: dict) -> str:
    """What the user asked in a prediction row: its ``message``, or (rows written before it was recorded)
    the rendered prompt."""
    return row["message"] if row.get("message") is not None else row.get("prompt", "")


def _quality_blocks(metrics: dict) -> list:
    quality = metrics.get("quality")
    if not quality:
        return []
    blocks: list = [("h2", "Data quality")]
    tokens = quality["tokens"]
    qrows = [
        ["records", quality["records"]["train"], quality["records"]["val"]],
        ["examples", quality["examples"]["train"], quality["examples"]["val"]],
        ["tokens per example (min / median / max)",
         f"{tokens['train']['min']} / {_num(tokens['train']['median'], 1)} / {tokens['train']['max']}",
         f"{tokens['val']['min']} / {_num(tokens['val']['median'], 1)} / {tokens['val']['max']}"],
        ["exact duplicates", quality["duplicates"], quality["val_duplicates"]],
        ["empty or whitespace-only targets", quality["empty_targets"]["train"],
         quality["empty_targets"]["val"]],
        ["over max length: truncated / dropped (both splits)", f"{quality['truncated']} / {quality['dropped']}",
         ""],
        ["held-out examples also in training (leakage)", "", quality["leakage"]],
    ]
    blocks.append(("table", ["check", "train", "held-out"], qrows))
    if quality.get("labels"):
        blocks.append(("p", "Label balance (training targets):"))
        blocks.append(("table", ["label", "count"], [[k, v] for k, v in quality["labels"].items()]))
    for warning in quality.get("warnings", []):
        blocks.append(("p", f"Warning: {warning}"))
    return blocks


def _training_blocks(metrics: dict, images: dict) -> list:
    if "steps" not in metrics and "parameters" not in metrics:
        return []
    params = metrics.get("parameters", {})
    signal = metrics.get("overfitting", {})
    throughput = metrics.get("throughput", {})
    trows = [
        ["trainable parameters", f"{params.get('trainable', 0):,} of {params.get('total', 0):,} "
                                 f"({100 * params.get('fraction', 0):.4f}%)"],
        ["optimizer steps", metrics.get("steps", "-")],
        ["wall time (whole run)", f"{_num(metrics.get('wall_time_s'), 1)} s"],
        ["training time", f"{_num(throughput.get('fit_time_s'), 1)} s"],
        ["training tokens / s", _num(throughput.get("tokens_per_s"), 1)],
        ["final train loss (mean of last tenth of steps)", _num(signal.get("train_loss"))],
        [f"validation loss ({signal.get('val_source') or 'none'})", _num(signal.get("val_loss"))],
        ["gap (validation - train): overfitting signal", _signed(signal.get("gap"))],
    ]
    if signal.get("best_val_step") is not None:
        trows.append(["lowest validation loss (marked on the curve)",
                      f"{_num(signal['best_val_loss'])} at step {signal['best_val_step']}"])
    restored = (metrics.get("train") or {}).get("early_stopping/restored_step")
    if restored is not None:
        trows.append(["early stopping restored the adapter of step", int(restored)])
    blocks: list = [("h2", "Training"), ("table", ["", "value"], trows)]
    if "loss" in images:
        blocks.append(("img", images["loss"], "training and validation loss"))
    return blocks


def _cell(value, interval) -> str:
    if value is None:
        return "-"
    if not interval or interval.get("low") is None:
        return _num(value)
    return f"{_num(value)} [{interval['low']:.4f}, {interval['high']:.4f}]"


def _columns_blocks(metrics: dict) -> list:
    """Every column of the held-out metrics with its 95% interval, then the cost per query."""
    from tuneforge.evaluation.comparison import column_label, column_order, column_values

    if not (metrics.get("baselines") or metrics.get("intervals") or metrics.get("baselines_skipped")):
        return []
    columns = column_order(metrics)
    intervals = metrics.get("intervals") or {}
    names = [row[0] for row in metric_sections(metrics).get(HELD_OUT, [])]
    blocks: list = [("h2", "Every column (held-out, 95% intervals)")]
    for key, why in (metrics.get("baselines_skipped") or {}).items():
        blocks.append(("p", f"Baseline {key} did not run: {why}."))
    blocks.append(("table", ["metric", *[column_label(metrics, c) for c in columns]],
                   [[n, *[_cell(column_values(metrics, c).get(n), (intervals.get(c) or {}).get(n)) for c in columns]]
                    for n in names]))
    from tuneforge.evaluation.lead import interval_methods

    methods = interval_methods(metrics, names)
    if methods:
        blocks.append(("p", "Intervals by metric: " + "; ".join(f"{m}" for m in methods) + ". A metric without "
                            "an interval has no per-example scores (corpus-level scores such as BLEU)."))
    else:
        method = metrics.get("uncertainty") or {}
        blocks.append(("p", f"Intervals: {method.get('method', 'bootstrap')}, {method.get('resamples', '?')} "
                            f"resamples, seed {method.get('seed', '?')}. A metric without an interval has no "
                            "per-example scores (corpus-level scores such as BLEU)."))
    cost = metrics.get("cost") or {}
    if cost:
        rows = []
        for c in columns:
            one = cost.get(c) or {}
            rows.append([column_label(metrics, c), _num(one.get("prompt_tokens_per_query"), 1),
                         _num(one.get("generation_s_per_query"), 3),
                         f"{_num(one.get('training_s'), 1)} s" if one.get("training_s") is not None else "-"])
        blocks.append(("table", ["column", "prompt tokens / query", "generation s / query", "training time"], rows))
    return blocks


def _memorisation_blocks(metrics: dict) -> list:
    """The tuned model on training examples next to held-out, the gap and the flags."""
    memorisation = metrics.get("memorisation") or {}
    if not memorisation.get("train"):
        return []
    intervals = (metrics.get("intervals") or {}).get("tuned") or {}
    rows = []
    for name in sorted(memorisation["held_out"]):
        gap = memorisation["gap"].get(name) or {}
        rows.append([name, _cell(memorisation["train"][name], memorisation["intervals"].get(name)),
                     _cell(memorisation["held_out"][name], intervals.get(name)), _signed(gap.get("value")),
                     _interval_text(gap), "FLAG" if name in memorisation["flagged"] else ""])
    blocks: list = [("h2", f"Memorisation: tuned model on {memorisation['sample']} training examples vs held-out"),
                    ("table", ["metric", "training sample", "held-out", "gap (train better by)", "95% CI of gap",
                               "flag"], rows)]
    for name in memorisation["flagged"]:
        gap = memorisation["gap"][name]
        blocks.append(("p", f"Flagged: {name} is {gap['value']:.4g} better on training examples than held-out "
                            f"(95% CI {_interval_text(gap)}; flagged from {memorisation.get('flag_gap', 0.1):g}): "
                            "the tuned model does better on what it saw, a sign of memorisation."))
    return blocks


def metric_sections(metrics: dict) -> dict:
    """``{section: [(metric, base, tuned, change)]}`` grouped by ``metrics["metric_info"]``
    (a metric without info belongs to the held-out section), sections in order of first metric."""
    info = metrics.get("metric_info") or {}
    sections: dict = {}
    for row in comparison_rows(metrics):
        sections.setdefault((info.get(row[0]) or {}).get("section") or HELD_OUT, []).append(row)
    return sections


def _metric_table(rows: list, metrics: dict) -> list:
    """The base/tuned/change table of ``rows`` (with the change's 95% interval and McNemar's p when the
    run has them), then one line per metric that has a description or where lower is better."""
    info = metrics.get("metric_info") or {}
    change = (metrics.get("changes") or {}).get("change") or {}
    if any("low" in (change.get(n) or {}) for n, *_ in rows):
        with_p = any((change.get(n) or {}).get("p_value") is not None for n, *_ in rows)
        header = ["metric", "base", "tuned", "change", "95% CI of change", *(["McNemar p"] if with_p else [])]
        table = [[n, _num(b), _num(t), _signed(c), _interval_text(change.get(n)),
                  *([_p(change.get(n))] if with_p else [])] for n, b, t, c in rows]
    else:
        header, table = ["metric", "base", "tuned", "change"], [[n, _num(b), _num(t), _signed(c)] for n, b, t, c in rows]
    blocks: list = [("table", header, table)]
    notes = []
    for name, *_ in rows:
        described = info.get(name) or {}
        text = described.get("description") or ""
        if described.get("higher_is_better") is False:
            text = f"{text} (lower is better)" if text else "lower is better"
        if text:
            notes.append(f"{name}: {text}")
    if notes:
        blocks.append(("ul", notes))
    return blocks


def _p(entry) -> str:
    return "-" if not entry or entry.get("p_value") is None else f"{entry['p_value']:.2g}"


def _md_cell(value) -> str:
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "verdict":
            out.append("## Verdict\n")
            out.append(f"**{block[1]}**\n")
            if block[2]:
                out.append(f"{block[2]}\n")
        elif kind == "ul":
            out.append("".join(f"- {_md_cell(item)}\n" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join(" --- " for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({Path(block[1]).name})\n")
        elif kind == "pre":
            out.append(f"```yaml\n{block[1].rstrip()}\n```\n")
    return "\n".join(out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}"
          "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}img{max-width:100%}"
          "h1{font-size:1.5em}#verdict{border-left:4px solid #2a7;background:#f4fbf7;padding:.2em 1em;margin:1em 0}"
          "#verdict h2{margin:.4em 0;font-size:1.1em}.headline{font-size:1.2em;font-weight:600}")


def render_html(blocks: list) -> str:
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "tuneforge report")
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(str(block[1]))}</{kind}>")
        elif kind == "verdict":
            paragraph = f"<p>{esc(str(block[2]))}</p>" if block[2] else ""
            out.append(f"<section id='verdict'><h2>Verdict</h2><p class='headline'>{esc(str(block[1]))}</p>"
                       f"{paragraph}</section>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(str(item))}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{esc(block[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "pre":
            out.append(f"<pre>{esc(block[1])}</pre>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(directory: Path, metrics: dict, *, config_yaml: str = "", predictions: Sequence[dict] = (),
                 metrics_csv: Optional[Path] = None, title: str = "tuneforge run report") -> dict:
    """Write the plots, ``report.md`` and ``report.html`` into ``directory``; returns their paths by file name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = {}
    if plot_metric_bars(metrics, directory / "metrics.png"):
        images["metrics"] = directory / "metrics.png"
    if metrics_csv is not None and plot_loss_curves(read_loss_curves(metrics_csv), directory / "loss_curves.png"):
        images["loss"] = directory / "loss_curves.png"
    blocks = build_blocks(metrics, config_yaml=config_yaml, predictions=predictions, images=images, title=title)
    (directory / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    (directory / "report.html").write_text(render_html(blocks), encoding="utf-8")
    return {"report.md": directory / "report.md", "report.html": directory / "report.html",
            **{path.name: path for path in images.values()}}

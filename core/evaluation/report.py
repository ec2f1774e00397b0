"""The run report: the base-vs-tuned table, plots, ``report.md`` and a self-contained ``report.html``.

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
    """A table of every evaluator metric: base, tuned and the change."""
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    names = sorted(set(base) | set(tuned))
    if not names:
        return "no evaluator metrics"
    width = max(len("metric"), *(len(n) for n in names))
    lines = [f"{'metric':<{width}}  {'base':>10}  {'tuned':>10}  {'change':>10}"]
    for name in names:
        b, t = base.get(name), tuned.get(name)
        change = f"{t - b:+10.4f}" if b is not None and t is not None else f"{'':>10}"
        fmt = lambda v: f"{v:10.4f}" if v is not None else f"{'-':>10}"  # noqa: E731
        lines.append(f"{name:<{width}}  {fmt(b)}  {fmt(t)}  {change}")
    return "\n".join(lines)


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
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


def plot_metric_bars(metrics: dict, path: Path) -> bool:
    """One small bar chart per metric, base vs tuned; False (no file) when there is no metric."""
    rows = comparison_rows(metrics)
    if not rows:
        return False
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    figure = _figure(2.6 * columns, 2.4 * lines)
    for i, (name, base, tuned, _change) in enumerate(rows):
        axes = figure.add_subplot(lines, columns, i + 1)
        labels = [label for label, value in (("base", base), ("tuned", tuned)) if value is not None]
        values = [value for value in (base, tuned) if value is not None]
        bars = axes.bar(labels, values, color=["tab:gray", "tab:green"][: len(values)])
        axes.bar_label(bars, fmt="%.3g", fontsize=8)
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=8)
        axes.margins(y=0.2)
        if min(values) >= 0:
            axes.set_ylim(0, max(values) * 1.2 or 1.0)
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
    """The report as blocks: ``("h1"|"h2"|"p", text)``, ``("ul", items)``, ``("table", header, rows)``,
    ``("img", path, alt)``, ``("pre", text)``.

    Evaluator metrics are grouped by their section (``metrics["metric_info"]``,
    see :class:`tuneforge.specs.MetricInfo`): the held-out table first, then
    one table per other section, e.g. ``forgetting``.
    """
    images = images or {}
    blocks: list = [("h1", title)]
    sections = metric_sections(metrics)
    blocks.append(("h2", "Held-out metrics: base vs tuned"))
    if sections.get(HELD_OUT):
        blocks += _metric_table(sections[HELD_OUT], metrics)
    else:
        blocks.append(("p", "No held-out metrics." if sections else "No evaluator metrics."))
    if "metrics" in images:
        blocks.append(("img", images["metrics"], "per-metric bars, base vs tuned"))
    for section, rows in sections.items():
        if section != HELD_OUT:
            blocks.append(("h2", section[:1].upper() + section[1:]))
            blocks += _metric_table(rows, metrics)

    quality = metrics.get("quality")
    if quality:
        blocks.append(("h2", "Data quality"))
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

    if "steps" in metrics or "parameters" in metrics:
        blocks.append(("h2", "Training"))
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
        blocks.append(("table", ["", "value"], trows))
        if "loss" in images:
            blocks.append(("img", images["loss"], "training and validation loss"))

    if predictions:
        labels = [label for label in ("base", "tuned") if any(label in row for row in predictions)]
        shown = list(predictions)[:REPORT_PREDICTIONS]
        blocks.append(("h2", f"Predictions (first {len(shown)} of {len(predictions)}; all in predictions.jsonl)"))
        blocks.append(("table", ["set", "prompt", "reference", *labels],
                       [[row.get("set", ""), _short(row.get("prompt")), _short(row.get("reference")),
                         *[_short(row.get(label)) for label in labels]] for row in shown]))
    if config_yaml:
        blocks.append(("h2", "Settings (resolved config)"))
        blocks.append(("pre", config_yaml))
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
    """The base/tuned/change table of ``rows``, then one line per metric that has a description or
    where lower is better."""
    info = metrics.get("metric_info") or {}
    blocks: list = [("table", ["metric", "base", "tuned", "change"],
                     [[n, _num(b), _num(t), _signed(c)] for n, b, t, c in rows])]
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
          "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}img{max-width:100%}")


def render_html(blocks: list) -> str:
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "tuneforge report")
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(str(block[1]))}</{kind}>")
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

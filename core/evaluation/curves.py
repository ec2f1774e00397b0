"""Training curves, the overfitting signal and the report's plots (matplotlib's object API on an Agg
canvas: no pyplot state, no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from tuneforge.evaluation.metrics_file import Overfitting, RunMetrics, metric_interval
from tuneforge.evaluation.tables import comparison_rows
from tuneforge.specs import HELD_OUT


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


def overfitting_signal(curves: dict, tuned: dict, metric_info: Optional[dict] = None) -> Overfitting:
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


def agg_figure(width: float, height: float):
    """A matplotlib figure of ``width`` x ``height`` inches on an Agg canvas (no pyplot state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_loss_curves(curves: dict, path: Path) -> bool:
    """Training and validation loss against the step; False (no file) when nothing was logged."""
    if not curves.get("train") and not curves.get("val"):
        return False
    figure = agg_figure(6.4, 3.6)
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


def plot_metric_bars(metrics: RunMetrics, path: Path) -> bool:
    """One small bar chart per metric, one bar per column (base, each prompting baseline, tuned) with
    its 95% interval as an error bar; False (no file) when there is no metric."""
    from tuneforge.evaluation.comparison import column_order, column_values

    rows = comparison_rows(metrics)
    if not rows:
        return False
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    order = column_order(metrics) or ["base", "tuned"]
    figure = agg_figure(max(2.6, 0.7 * len(order)) * columns, 2.4 * lines)
    for i, (name, _base, _tuned, _change) in enumerate(rows):
        axes = figure.add_subplot(lines, columns, i + 1)
        shown = [c for c in order if column_values(metrics, c).get(name) is not None]
        labels = [c for c in shown]
        values = [column_values(metrics, c)[name] for c in shown]
        errors = [[0.0] * len(shown), [0.0] * len(shown)]
        for j, c in enumerate(shown):
            interval = metric_interval(metrics, c, name)
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


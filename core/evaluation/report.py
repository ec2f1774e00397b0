"""The run report, answer first: the verdict, what was tuned, the best baseline vs tuned (see
:mod:`tuneforge.evaluation.lead`), then every column with intervals and cost, the base-vs-tuned
tables, the notable failures (:mod:`tuneforge.evaluation.failures`), the memorisation check, plots,
predictions and the config last, as ``report.md`` and a self-contained ``report.html``.

:func:`format_comparison` is the table printed at the end of a run.
:func:`write_report` writes, into a run directory, ``loss_curves.png`` and
``metrics.png`` (matplotlib, Agg canvas: no display needed), ``report.md`` and
``report.html`` (the PNGs embedded as base64, so it opens with no server).
:func:`write_predictions` writes ``predictions.jsonl``.

The work is split by job: :mod:`~tuneforge.evaluation.tables` (the printed
table, rows and number formatting), :mod:`~tuneforge.evaluation.curves` (loss
curves, the overfitting signal, the plots),
:mod:`~tuneforge.evaluation.predictions` (``predictions.jsonl``),
:mod:`~tuneforge.evaluation.report_blocks` (the report's content) and
:mod:`~tuneforge.evaluation.render` (Markdown and HTML).  The names other
modules use are importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from tuneforge.atomic import write_text
from tuneforge.evaluation.curves import (best_validation, overfitting_signal, plot_loss_curves,
                                         plot_metric_bars, read_loss_curves)
from tuneforge.evaluation.metrics_file import RunMetrics
from tuneforge.evaluation.predictions import REPORT_PREDICTIONS, write_predictions
from tuneforge.evaluation.render import render_html, render_markdown
from tuneforge.evaluation.report_blocks import build_blocks
from tuneforge.evaluation.tables import (LOWER_IS_BETTER, comparison_rows, console_rows, format_columns,
                                         format_comparison, metric_sections)

__all__ = ["LOWER_IS_BETTER", "REPORT_PREDICTIONS", "best_validation", "build_blocks", "comparison_rows",
           "console_rows", "format_columns", "format_comparison", "metric_sections", "overfitting_signal",
           "plot_loss_curves", "plot_metric_bars", "read_loss_curves", "render_html", "render_markdown",
           "write_predictions", "write_report"]


def write_report(directory: Path, metrics: RunMetrics, *, config_yaml: str = "", predictions: Sequence[dict] = (),
                 metrics_csv: Optional[Path] = None, title: str = "tuneforge run report") -> dict:
    """Write the plots, ``report.md`` and ``report.html`` into ``directory``; returns their paths by file name.

    Every file is written atomically (a temporary file, synced, renamed: :mod:`tuneforge.atomic`): a full
    disk or an interrupt leaves the earlier file or none, never a cut one; the ``OSError`` propagates."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = {}
    if _plot_atomically(lambda path: plot_metric_bars(metrics, path), directory / "metrics.png"):
        images["metrics"] = directory / "metrics.png"
    if metrics_csv is not None and _plot_atomically(
            lambda path: plot_loss_curves(read_loss_curves(metrics_csv), path), directory / "loss_curves.png"):
        images["loss"] = directory / "loss_curves.png"
    blocks = build_blocks(metrics, config_yaml=config_yaml, predictions=predictions, images=images, title=title)
    write_text(directory / "report.md", render_markdown(blocks))
    write_text(directory / "report.html", render_html(blocks))
    return {"report.md": directory / "report.md", "report.html": directory / "report.html",
            **{path.name: path for path in images.values()}}


def _plot_atomically(plot: Callable[[Path], bool], path: Path) -> bool:
    """``plot(file)`` into a temporary file, synced and renamed to ``path`` when it drew one (True); False
    (nothing drawn) leaves ``path`` as it was.  The temporary file never stays behind."""
    from tuneforge.atomic import commit_file, temporary_name

    tmp = temporary_name(path)
    try:
        drawn = bool(plot(tmp))
        if drawn:
            commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return drawn

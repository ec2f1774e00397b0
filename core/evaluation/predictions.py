"""``predictions.jsonl`` and the report's table of its first rows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tuneforge.evaluation.metrics_file import RunMetrics
from tuneforge.evaluation.tables import short_text

#: how many prediction rows the report shows (all are in predictions.jsonl)
REPORT_PREDICTIONS = 10
#: what the rows of each prediction set are, in the report's words (another set is named as it is)
SET_WORDS = {"val": "held-out", "forgetting": "general-ability (forgetting)",
             "train": "training sample (memorisation)"}


def write_predictions(path: Path, rows: Iterable[dict]) -> int:
    """Write prediction rows (set, kind, source, prompt, reference, base, tuned) as JSON lines, atomically
    (a temporary file renamed when complete: a full disk leaves no cut file, :mod:`tuneforge.atomic`)."""
    from tuneforge.atomic import open_atomic

    count = 0
    with open_atomic(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def prediction_blocks(metrics: RunMetrics, predictions: Sequence[dict]) -> list:
    """The report's table of the first :data:`REPORT_PREDICTIONS` prediction rows: the set, the user's
    message (not the rendered prompt), the reference and every column's output; none without rows.  The
    heading counts the rows by set (:data:`SET_WORDS`: held-out, general-ability, the memorisation sample),
    so that their total is not read as the number of training examples."""
    if not predictions:
        return []
    from tuneforge.evaluation.comparison import column_order

    labels = [label for label in (column_order(metrics) or ["base", "tuned"])
              if any(label in row for row in predictions)]
    shown = list(predictions)[:REPORT_PREDICTIONS]
    counts = Counter(str(row.get("set", "")) for row in predictions)
    which = "all" if len(shown) == len(predictions) else f"first {len(shown)} of"
    kinds = ", ".join(f"{count} {SET_WORDS.get(name, name or 'unnamed set')}" for name, count in counts.items())
    sets = ", ".join(f"{name} = {SET_WORDS[name]}" for name in counts if name in SET_WORDS)
    return [("h2", f"Predictions ({which} {len(predictions)} prediction rows: {kinds})"),
            ("p", (f"The set column: {sets}. " if sets else "") + "The rows count evaluated examples, not the "
                  "training set. All rows are in predictions.jsonl, with the rendered prompts."),
            ("table", ["set", "user's message", "reference", *labels],
             [[row.get("set", ""), short_text(user_text(row), 300), short_text(row.get("reference")),
               *[short_text(row.get(label)) for label in labels]] for row in shown])]


def user_text(row: dict) -> str:
    """What the user asked in a prediction row: its ``message``, or (rows written before it was recorded)
    the rendered prompt."""
    return row["message"] if row.get("message") is not None else row.get("prompt", "")

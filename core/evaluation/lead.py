"""The top of the run report, which gives the answer first: the title (model, data, adapter, steps), the
verdict (its headline, then its paragraph), one line on what was tuned where, and the table of the
tuned model against the best prompting baseline.

Everything is read from the run's ``metrics`` (as saved in ``metrics.json``): ``setup`` (see
:mod:`tuneforge.training.setup_summary`), ``verdict``, ``changes`` and the columns.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Optional

from tuneforge.evaluation.metrics_file import RunMetrics, metric_change, metric_description
from tuneforge.specs import HELD_OUT

#: the verdict's place when only the base model was evaluated (``tuneforge eval`` without ``run_dir``)
NOTHING_TO_COMPARE = ("Nothing to compare: only the base model was evaluated, so there is no tuned model to "
                      "weigh against prompting. Its scores are below; to compare, evaluate a run with "
                      "tuneforge eval run_dir=<run>.")


def verdict_lead(metrics: RunMetrics) -> tuple[Optional[str], Optional[str]]:
    """``(headline, paragraph)`` of the verdict: ``verdict["headline"]`` (the answer in one sentence) and
    the rest of ``verdict["text"]``, which starts with the headline (so that it reads on its own): the
    paragraph leaves it out, and the headline is shown once.  Without a headline the text is the
    headline and there is no paragraph.  With no tuned column the headline is
    :data:`NOTHING_TO_COMPARE`; ``(None, None)`` when there is no verdict."""
    if not metrics.get("tuned"):
        return NOTHING_TO_COMPARE, None
    verdict = metrics.get("verdict") or {}
    headline, text = verdict.get("headline"), verdict.get("text")
    if not headline:
        return (text or None), None
    rest = (text or "").removeprefix(headline).strip()
    return headline, (rest or None)


def _basename(path: str) -> str:
    return PurePath(str(path)).name or str(path)


def _count(n, what: str) -> str:
    return f"{n} {what}" if n is not None else what


def _settings_text(settings) -> str:
    def plain(value):
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(map(str, value)) + "]"
        return str(value)

    return ", ".join(f"{key}={plain(value)}" for key, value in _pairs(settings))


def _pairs(items) -> list:
    """``[(name, value)]`` of a list of pairs (as ``setup`` stores them) or of a mapping."""
    return list(items.items()) if isinstance(items, dict) else [tuple(pair) for pair in items or []]


def _model_text(setup: dict) -> str:
    model = setup.get("model") or {}
    return _basename(model["source"]) if model.get("source") else str(model.get("name") or "model")


def _data_text(setup: dict) -> str:
    """``legal_citations: 100 training examples (75 task, 25 rehearsal from rehearsal_general.jsonl),
    30 held-out``: the data's name, example counts and the files they came from."""
    data = setup.get("data") or {}
    files, parts = dict(data.get("files") or {}), _pairs(data.get("parts"))
    train = _count(data.get("train_examples"), "training examples")
    if parts:
        pieces = []
        for part, count in parts:
            source = files.pop(f"{part}_path", None)
            pieces.append(f"{count} {part}" + (f" from {_basename(source)}" if source else ""))
        train += " (" + ", ".join(pieces) + ")"
    if files.get("path"):
        train += f" from {_basename(files['path'])}"
    held = _count(data.get("val_examples"), "held-out")
    if files.get("val_path"):
        held += f" from {_basename(files.pop('val_path'))}"
    elif files.get("path"):
        held += " split from it"
    files.pop("path", None)
    others = "; " + ", ".join(f"{key} {_basename(value)}" for key, value in files.items()) if files else ""
    return f"{data.get('name') or 'data'}: {train}, {held}{others}"


def _machine_text(setup: dict) -> str:
    machine = setup.get("machine") or {}
    count = machine.get("threads")
    threads = f"{count} CPU thread{'s' if count != 1 else ''}" if count else "CPU"
    if machine.get("gpu"):
        devices = machine.get("devices") or 1
        return f"{devices} x {machine['gpu']}" + (f" ({machine.get('cpu')}, {threads})" if machine.get("cpu") else "")
    return f"{machine.get('cpu') or 'unknown CPU'} ({threads})"


def _adapter_text(setup: dict, metrics: dict) -> str:
    adapter = setup.get("adapter") or {}
    text = str(adapter.get("name") or "adapter")
    settings = _settings_text(adapter.get("settings") or {})
    params = metrics.get("parameters") or {}
    trained = (f"{100 * params['fraction']:.2f}% of {params.get('total', 0):,} parameters trained"
               if params.get("fraction") is not None and params.get("total") else "")
    inner = "; ".join(part for part in (settings, trained) if part)
    return f"{text} ({inner})" if inner else text


def _seconds(value) -> str:
    value = float(value)
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def setup_line(metrics: RunMetrics) -> Optional[str]:
    """One line on what was tuned where: model, data with counts and files, adapter with its key
    settings, steps, training time, machine; None without ``metrics["setup"]``."""
    setup = metrics.get("setup")
    if not setup:
        return None
    model, data, machine = _model_text(setup), _data_text(setup), _machine_text(setup)
    if not setup.get("adapter"):
        return f"Evaluated {model} on {data}; on {machine}."
    steps = setup.get("steps", metrics.get("steps"))
    seconds = setup.get("training_s", (metrics.get("throughput") or {}).get("fit_time_s"))
    training = _count(steps, "steps") + (f" in {_seconds(seconds)}" if seconds is not None else "")
    return f"Tuned {model} with {_adapter_text(setup, metrics)} on {data}; {training}, on {machine}."


def report_title(metrics: RunMetrics, prefix: str) -> str:
    """``<prefix>: <model> + <adapter> on <data> (<n> examples), <steps> steps``; ``prefix`` alone without
    ``metrics["setup"]``."""
    setup = metrics.get("setup")
    if not setup:
        return prefix
    model, data = _model_text(setup), setup.get("data") or {}
    where = f"{data.get('name') or 'data'}" + (f" ({data['train_examples']} examples)"
                                               if data.get("train_examples") is not None else "")
    adapter = setup.get("adapter")
    if not adapter:
        return f"{prefix}: {model} on {where}"
    key = _pairs(adapter.get("settings"))[:1]
    adapter_text = str(adapter.get("name")) + (f" {key[0][0]}={key[0][1]}" if key else "")
    steps = setup.get("steps", metrics.get("steps"))
    return f"{prefix}: {model} + {adapter_text} on {where}" + (f", {steps} steps" if steps is not None else "")


def best_baseline(metrics: RunMetrics) -> Optional[str]:
    """The column the verdict weighs the tuned model against (``verdict["baseline"]``), or ``base`` when a
    tuned column exists and the verdict names none; None without a tuned column."""
    from tuneforge.evaluation.comparison import column_order

    if not metrics.get("tuned"):
        return None
    chosen = (metrics.get("verdict") or {}).get("baseline")
    return chosen if chosen in column_order(metrics) else "base"


def change_key(column: str) -> str:
    """The key of ``metrics["changes"]`` holding tuned minus ``column``."""
    return "change" if column == "base" else f"tuned-{column}"


def interval_methods(metrics: RunMetrics, names) -> list:
    """``["exact_match: Wilson score (each column); Newcombe paired (changes)", ...]``: the method
    behind each metric's intervals (their ``method`` field), for the metrics among ``names`` that
    have one."""
    def methods(group: dict, name: str) -> list:
        return sorted({(entries.get(name) or {}).get("method") for entries in group.values()} - {None})

    notes = []
    for name in names:
        columns = methods(metrics.get("intervals") or {}, name)
        changes = methods(metrics.get("changes") or {}, name)
        parts = ([f"{', '.join(columns)} (each column)"] if columns else []) + \
            ([f"{', '.join(changes)} (changes)"] if changes else [])
        if parts:
            notes.append(f"{name}: {'; '.join(parts)}")
    return notes


def best_baseline_blocks(metrics: RunMetrics, held_out_names: list) -> list:
    """The tuned model against the best prompting column, metric by metric: both values, the change with
    its interval, the p value and the method (blocks for :func:`tuneforge.evaluation.report.build_blocks`)."""
    from tuneforge.evaluation.comparison import column_label, column_values

    column = best_baseline(metrics)
    if column is None:
        return []
    tuned, other = column_values(metrics, "tuned"), column_values(metrics, column)
    names = [n for n in held_out_names if n in tuned and n in other]
    if not names:
        return []
    changes = {n: metric_change(metrics, change_key(column), n) for n in names}
    label = column_label(metrics, column)
    with_p = any(changes[n].get("p_value") is not None for n in names)
    with_method = any(changes[n].get("method") for n in names)
    header = ["metric", label, "tuned", "change", "95% CI of change", *(["p"] if with_p else []),
              *(["method"] if with_method else [])]
    rows = []
    for name in names:
        entry = changes[name]
        value = entry.get("value", tuned[name] - other[name])
        interval = (f"{entry['low']:+.4f}..{entry['high']:+.4f}" if entry.get("low") is not None
                    and entry.get("high") is not None else "-")
        p = "-" if entry.get("p_value") is None else f"{entry['p_value']:.2g}"
        rows.append([name, f"{other[name]:.4f}", f"{tuned[name]:.4f}", f"{value:+.4f}", interval,
                     *([p] if with_p else []), *([entry.get("method") or "-"] if with_method else [])])
    title = ("Tuned vs the zero-shot base model (no prompting baseline ran)" if column == "base"
             and not metrics.get("baselines") else f"Tuned vs the best prompting baseline: {label}")
    return [("h2", title), ("table", header, rows)]


def held_out_names(metrics: RunMetrics) -> list:
    """The held-out metrics of the run, sorted (section ``held-out`` in ``metric_info`` or undeclared)."""
    names = set(metrics.get("base") or {}) | set(metrics.get("tuned") or {})
    return sorted(n for n in names if (metric_description(metrics, n).get("section") or HELD_OUT) == HELD_OUT)

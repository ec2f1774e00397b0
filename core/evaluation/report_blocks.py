"""The report as a list of blocks (headings, paragraphs, tables, images), answer first; rendered to
Markdown and HTML by :mod:`tuneforge.evaluation.render`."""

from __future__ import annotations

from typing import Optional, Sequence

from tuneforge.evaluation.metrics_file import RunMetrics, metric_change, metric_description, metric_interval
from tuneforge.evaluation.predictions import prediction_blocks
from tuneforge.evaluation.slices import slice_blocks
from tuneforge.evaluation.tables import (interval_text, metric_sections, number_text, p_value_text, signed_text,
                                         value_with_interval)
from tuneforge.specs import HELD_OUT


def build_blocks(metrics: RunMetrics, *, config_yaml: str = "", predictions: Sequence[dict] = (),
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
    held-out first, with the run's slices after it (``evidence.slice_by``,
    :mod:`tuneforge.evaluation.slices`), then e.g. ``forgetting``), the notable failures, the
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
        blocks += slice_blocks(metrics)
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
    blocks += prediction_blocks(metrics, predictions)
    if config_yaml:
        blocks.append(("h2", "Settings (resolved config)"))
        blocks.append(("pre", config_yaml))
    return blocks


def _quality_blocks(metrics: RunMetrics) -> list:
    quality = metrics.get("quality")
    if not quality:
        return []
    blocks: list = [("h2", "Data quality")]
    tokens = quality["tokens"]
    qrows = [
        ["records", quality["records"]["train"], quality["records"]["val"]],
        ["examples", quality["examples"]["train"], quality["examples"]["val"]],
        ["tokens per example (min / median / max)",
         f"{tokens['train']['min']} / {number_text(tokens['train']['median'], 1)} / {tokens['train']['max']}",
         f"{tokens['val']['min']} / {number_text(tokens['val']['median'], 1)} / {tokens['val']['max']}"],
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
        others = [["(targets that occur once)", quality["label_others"]]] if quality.get("label_others") else []
        blocks.append(("table", ["label", "count"], [[k, v] for k, v in quality["labels"].items()] + others))
    if quality.get("unused_keys"):
        from tuneforge.data.record_keys import unused_keys_text

        blocks.append(("p", "Record keys not used for training: " + unused_keys_text(quality["unused_keys"])))
    for warning in quality.get("warnings", []):
        blocks.append(("p", f"Warning: {warning}"))
    return blocks


def _training_blocks(metrics: RunMetrics, images: dict) -> list:
    if "steps" not in metrics and "parameters" not in metrics:
        return []
    params = metrics.get("parameters", {})
    signal = metrics.get("overfitting", {})
    throughput = metrics.get("throughput", {})
    trows = [
        ["trainable parameters", f"{params.get('trainable', 0):,} of {params.get('total', 0):,} "
                                 f"({100 * params.get('fraction', 0):.4f}%)"],
        ["optimizer steps", metrics.get("steps", "-")],
        ["wall time (whole run)", f"{number_text(metrics.get('wall_time_s'), 1)} s"],
        ["training time", f"{number_text(throughput.get('fit_time_s'), 1)} s"],
        ["training tokens / s", number_text(throughput.get("tokens_per_s"), 1)],
        *_memory_rows(metrics.get("memory") or {}),
        ["final train loss (mean of last tenth of steps)", number_text(signal.get("train_loss"))],
        [f"validation loss ({signal.get('val_source') or 'none'})", number_text(signal.get("val_loss"))],
        ["gap (validation - train): overfitting signal", signed_text(signal.get("gap"))],
    ]
    if signal.get("best_val_step") is not None:
        trows.append(["lowest validation loss (marked on the curve)",
                      f"{number_text(signal['best_val_loss'])} at step {signal['best_val_step']}"])
    restored = (metrics.get("train") or {}).get("early_stopping/restored_step")
    if restored is not None:
        trows.append(["early stopping restored the adapter of step", int(restored)])
    blocks: list = [("h2", "Training"), ("table", ["", "value"], trows)]
    if "loss" in images:
        blocks.append(("img", images["loss"], "training and validation loss"))
    return blocks + _objective_blocks(metrics)


def _memory_rows(memory: dict) -> list:
    """The peak resident (and GPU) memory rows, each with the step that reached it (``metrics.json`` memory)."""
    from tuneforge.planning.sizes import format_bytes

    rows = []
    for key, where, label in (("peak_rss_bytes", "peak_reached", "peak resident memory (main process)"),
                              ("gpu_peak_bytes", "gpu_peak_reached", "peak GPU memory (torch, main process)")):
        if memory.get(key) is not None:
            rows.append([label, f"{format_bytes(memory[key])}, reached in {memory.get(where) or '-'}"])
    return rows


def _objective_blocks(metrics: RunMetrics) -> list:
    """The metrics the loss itself reports on the held-out split at the last validation (``val/<name>`` other
    than the loss, e.g. a preference loss's reward margin and accuracy; their meaning: docs/losses.md)."""
    held_out = {key[len("val/"):]: value for key, value in (metrics.get("train") or {}).items()
                if key.startswith("val/") and key != "val/loss"}
    if not held_out:
        return []
    rows = [[name, number_text(value)] for name, value in sorted(held_out.items())]
    return [("h2", "Held-out training-objective metrics (last validation)"),
            ("p", "What the loss reports on the held-out split, e.g. a preference loss's implicit rewards: "
                  "reward_margin and reward_accuracy (docs/losses.md, Preference metrics)."),
            ("table", ["metric", "tuned (last validation)"], rows)]


def _columns_blocks(metrics: RunMetrics) -> list:
    """Every column of the held-out metrics with its 95% interval, then the cost per query."""
    from tuneforge.evaluation.comparison import column_label, column_order, column_values

    if not (metrics.get("baselines") or metrics.get("intervals") or metrics.get("baselines_skipped")):
        return []
    columns = column_order(metrics)
    names = [row[0] for row in metric_sections(metrics).get(HELD_OUT, [])]
    blocks: list = [("h2", "Every column (held-out, 95% intervals)")]
    for key, why in (metrics.get("baselines_skipped") or {}).items():
        blocks.append(("p", f"Baseline {key} did not run: {why}."))
    blocks.append(("table", ["metric", *[column_label(metrics, c) for c in columns]],
                   [[n, *[value_with_interval(column_values(metrics, c).get(n), metric_interval(metrics, c, n))
                          for c in columns]] for n in names]))
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
            rows.append([column_label(metrics, c), number_text(one.get("prompt_tokens_per_query"), 1),
                         number_text(one.get("generation_s_per_query"), 3),
                         f"{number_text(one.get('training_s'), 1)} s" if one.get("training_s") is not None else "-"])
        blocks.append(("table", ["column", "prompt tokens / query", "generation s / query", "training time"], rows))
    return blocks


def _memorisation_blocks(metrics: RunMetrics) -> list:
    """The tuned model on training examples next to held-out, the gap and the flags."""
    from tuneforge.evaluation.comparison import FLAG_GAP

    memorisation = metrics.get("memorisation") or {}
    if not memorisation.get("train"):
        return []
    rows = []
    for name in sorted(memorisation["held_out"]):
        gap = memorisation["gap"].get(name) or {}
        rows.append([name, value_with_interval(memorisation["train"][name], memorisation["intervals"].get(name)),
                     value_with_interval(memorisation["held_out"][name], metric_interval(metrics, "tuned", name)),
                     signed_text(gap.get("value")), interval_text(gap),
                     "FLAG" if name in memorisation["flagged"] else ""])
    blocks: list = [("h2", f"Memorisation: tuned model on {memorisation['sample']} training examples vs held-out"),
                    ("table", ["metric", "training sample", "held-out", "gap (train better by)", "95% CI of gap",
                               "flag"], rows)]
    for name in memorisation["flagged"]:
        gap = memorisation["gap"][name]
        blocks.append(("p", f"Flagged: {name} is {gap['value']:.4g} better on training examples than held-out "
                            f"(95% CI {interval_text(gap)}; flagged from {memorisation.get('flag_gap', FLAG_GAP):g}): "
                            "the tuned model does better on what it saw, a sign of memorisation."))
    return blocks


def _metric_table(rows: list, metrics: RunMetrics) -> list:
    """The base/tuned/change table of ``rows`` (with the change's 95% interval and its test's p, named by
    the test, when the run has them), then one line per metric that has a description or where lower is
    better."""
    change = {n: metric_change(metrics, "change", n) for n, *_ in rows}
    if any("low" in change[n] for n, *_ in rows):
        with_p = any(change[n].get("p_value") is not None for n, *_ in rows)
        header = ["metric", "base", "tuned", "change", "95% CI of change", *(["test"] if with_p else [])]
        table = [[n, number_text(b), number_text(t), signed_text(c), interval_text(change[n]),
                  *([p_value_text(change[n])] if with_p else [])] for n, b, t, c in rows]
    else:
        header = ["metric", "base", "tuned", "change"]
        table = [[n, number_text(b), number_text(t), signed_text(c)] for n, b, t, c in rows]
    blocks: list = [("table", header, table)]
    notes = []
    for name, *_ in rows:
        described = metric_description(metrics, name)
        text = described.get("description") or ""
        if described.get("higher_is_better") is False:
            text = f"{text} (lower is better)" if text else "lower is better"
        if text:
            notes.append(f"{name}: {text}")
    if notes:
        blocks.append(("ul", notes))
    return blocks

"""Several seeds of one run folded into one answer: mean and spread per metric, the verdict per seed and
across seeds.

:func:`fold_seed_runs` takes the ``metrics.json`` of runs that differ only by
their seed (``tuneforge train ... evidence.seeds=N`` writes them to
``<run_dir>/seed-<seed>/``; ``tuneforge compare`` finds them in a sweep) and
returns a plain dict, saved as ``seeds.json``:

* ``seeds``: the seeds (or run labels), in the order given;
* ``columns``: ``[{"key", "label"}]``, base zero-shot, each prompting
  baseline, tuned;
* ``metrics``: ``{column: {metric: spread}}`` and ``changes``: ``{change name:
  {metric: spread}}`` (e.g. ``change``, ``tuned-retrieval``), where a spread
  is ``{"mean", "std", "min", "max", "n", "values"}``: ``std`` is the sample
  standard deviation across seeds (``n - 1`` in the denominator; None for
  one seed), ``values`` one per seed that measured the metric;
* ``verdicts``: each seed's verdict (``seed``, ``outcome``, ``metric``,
  ``baseline``, ``change``, ``low``, ``high``, ``share``, ``higher_is_better``);
* ``verdict``: the verdict across seeds (:func:`cross_seed_verdict`).

:func:`format_seed_summary` prints it; :func:`seed_summary_markdown` is
``seeds.md``.  Everything here reads plain dicts: no plugin is loaded.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Optional, Sequence

from tuneforge.evaluation.comparison import column_label, column_order, column_values
from tuneforge.evaluation.metrics_file import RunMetrics, metric_change
from tuneforge.evaluation.uncertainty import p_value_test

#: outcomes in which tuning beats every prompting column (``tuning_better``: the name before the
#: three-way verdict)
TUNING_WINS = ("tune", "tune_with_cost", "tuning_better")
#: the cross-seed outcome when the seeds' verdicts disagree
DISAGREE = "inconclusive"


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max of ``values``."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fold_seed_runs(runs: Sequence[RunMetrics], seeds: Optional[Sequence] = None) -> dict:
    """The ``metrics.json`` dicts of ``runs`` (one per seed) folded into mean, spread and verdicts.

    ``seeds`` labels the runs (their seeds; default 0, 1, ...).  A metric a seed
    did not measure is left out of that seed's values (``n`` says how many had it).
    """
    if not runs:
        raise ValueError("no runs to fold")
    seeds = list(seeds) if seeds is not None else list(range(len(runs)))
    if len(seeds) != len(runs):
        raise ValueError(f"{len(seeds)} seeds for {len(runs)} runs")
    columns: dict = {}
    for run in runs:
        for key in column_order(run):
            columns.setdefault(key, column_label(run, key))
    folded: dict = {}
    for key in columns:
        values = _collect(column_values(run, key) for run in runs)
        if values:
            folded[key] = {name: spread(v) for name, v in values.items()}
    changes: dict = {}
    for change in dict.fromkeys(name for run in runs for name in (run.get("changes") or {})):
        values = _collect({name: metric_change(run, change, name).get("value")
                           for name in (run.get("changes") or {}).get(change) or {}} for run in runs)
        if values:
            changes[change] = {name: spread(v) for name, v in values.items()}
    verdicts = [dict(_seed_verdict(run.get("verdict") or {}), seed=seed) for run, seed in zip(runs, seeds)]
    return {"seeds": seeds, "columns": [{"key": key, "label": label} for key, label in columns.items()],
            "metrics": folded, "changes": changes, "verdicts": verdicts, "verdict": cross_seed_verdict(verdicts)}


def _collect(per_run) -> dict:
    """``{metric: [value of each run that has it]}`` from one ``{metric: value}`` per run (numbers only)."""
    values: dict = {}
    for run_values in per_run:
        for name, value in (run_values or {}).items():
            if _number(value):
                values.setdefault(name, []).append(float(value))
    return values


_VERDICT_KEYS = ("outcome", "metric", "baseline", "baseline_label", "change", "low", "high", "share",
                 "higher_is_better", "n", "p_value", "method", "forgetting")


def _seed_verdict(verdict: dict) -> dict:
    out = {key: verdict.get(key) for key in _VERDICT_KEYS}
    out["outcome"] = out["outcome"] or "no_comparison"
    return out


def cross_seed_verdict(verdicts: Sequence[dict]) -> dict:
    """The verdict across seeds from each seed's (``outcome``, ``change``, ``low``, ``high`` ...).

    * ``outcome``: the seeds' common outcome; when tuning wins in every seed but
      some pay for it in forgetting, ``tune_with_cost``; any other disagreement
      is ``inconclusive`` (one seed's conclusion is not the run's).
    * ``agree``: every seed gave the same outcome; ``counts``: ``{outcome: seeds}``.
    * ``metric`` and ``change``: the spread of the headline change (tuned minus
      the best prompting column) across seeds, over the seeds whose verdict is
      about the most common headline metric.
    * ``smallest_margin``: when tuning wins in every seed, the smallest lead
      the seeds' intervals allow: the lowest lower bound (the highest upper
      bound for a metric where lower is better), else the smallest change.
    * ``text``: the line to print (:func:`cross_seed_text`).
    """
    outcomes = [v.get("outcome") or "no_comparison" for v in verdicts]
    counts = dict(Counter(outcomes).most_common())
    if len(counts) == 1:
        outcome = outcomes[0]
    elif set(counts) <= set(TUNING_WINS):
        outcome = "tune_with_cost" if "tune_with_cost" in counts else next(iter(counts))
    else:
        outcome = DISAGREE
    result: dict = {"outcome": outcome, "agree": len(counts) == 1, "counts": counts, "seeds": len(verdicts)}
    metrics = Counter(v["metric"] for v in verdicts if v.get("metric"))
    if metrics:
        metric = metrics.most_common(1)[0][0]
        about = [v for v in verdicts if v.get("metric") == metric]
        higher = about[0].get("higher_is_better") is not False
        result.update(metric=metric, share=bool(about[0].get("share")), higher_is_better=higher)
        changes = [v["change"] for v in about if _number(v.get("change"))]
        if changes:
            result["change"] = spread(changes)
        if all(o in TUNING_WINS for o in outcomes):
            bounds = [(v.get("low") if higher else v.get("high")) for v in about]
            bounds = [b if _number(b) else v.get("change") for b, v in zip(bounds, about)]
            bounds = [b for b in bounds if _number(b)]
            if bounds:
                result["smallest_margin"] = min(bounds) if higher else max(bounds)
                result["margin_is_bound"] = all(_number(v.get("low" if higher else "high")) for v in about)
    costs = [_cost(v) for v in verdicts]
    if any(costs):  # a general-ability cost is told whatever the outcome, as in each seed's own verdict
        paid = [c for c in costs if c is not None]
        about = [c for c in paid if c["metric"] == paid[0]["metric"]]
        result["cost"] = {"metric": paid[0]["metric"], "seeds": len(paid), "share": bool(paid[0].get("share")),
                          "change": spread([c["change"] for c in about])}
    result["text"] = cross_seed_text(result)
    return result


def outcome_words(outcome: str) -> str:
    """``tune_with_cost`` -> ``tune with cost``."""
    return str(outcome).replace("_", " ")


def _delta(share: bool, value: float) -> str:
    return f"{100 * value:+.1f} points" if share else f"{value:+.4g}"


def cross_seed_text(v: dict) -> str:
    """``tune in 3/3 seeds; smallest margin +63.0 points``, or for seeds that disagree
    ``verdicts differ across seeds: tune 2/3, inconclusive 1/3 -> inconclusive``."""
    total, share = v["seeds"], v.get("share", False)
    if v["agree"]:
        text = f"{outcome_words(v['outcome'])} in {total}/{total} seeds"
    else:
        parts = ", ".join(f"{outcome_words(o)} {count}/{total}" for o, count in v["counts"].items())
        text = f"verdicts differ across seeds: {parts} -> {outcome_words(v['outcome'])}"
    if v.get("smallest_margin") is not None:
        kind = "" if v.get("margin_is_bound") else " (change; no interval)"
        kind += "" if v.get("higher_is_better", True) else " (lower is better)"
        text += f"; smallest margin {_delta(share, v['smallest_margin'])}{kind}"
    change = v.get("change")
    if change and change["n"] > 1:
        text += (f"; {v['metric']}, tuned minus best prompting column: mean {_delta(share, change['mean'])}, "
                 f"sd {_delta(share, change['std']).lstrip('+')}")
    cost = v.get("cost")
    if cost:
        text += (f"; tuning costs general ability in {cost['seeds']}/{total} seeds ({cost['metric']}: mean "
                 f"{_delta(cost['share'], cost['change']['mean'])})")
    return text


def verdict_line(v: dict) -> str:
    """One run's verdict on one line: ``tune (+63.3 points vs retrieval, k=4, 95% CI +50.0..+76.7; McNemar
    p=0.0001)``, with the first general-ability cost (``; forgetting/contains -86.7 points``) when it has one."""
    if v.get("metric") is None or not _number(v.get("change")):
        return outcome_words(v.get("outcome") or "no_comparison")
    share = bool(v.get("share"))
    interval = ""
    if _number(v.get("low")) and _number(v.get("high")):
        bound = (lambda x: f"{100 * x:+.1f}") if share else (lambda x: f"{x:+.4g}")
        interval = f", 95% CI {bound(v['low'])}..{bound(v['high'])}"
    if _number(v.get("p_value")):
        name = p_value_test(v.get("method"))
        interval += f"; {name + ' ' if name else ''}p={v['p_value']:.2g}"
    cost = _cost(v)
    if cost is not None:
        interval += f"; {cost['metric']} {_delta(bool(cost.get('share')), cost['change'])}"
        if _number(cost.get("p_value")):
            name = p_value_test(cost.get("method"))
            interval += f" ({name + ' ' if name else ''}p={cost['p_value']:.2g})"
    against = v.get("baseline_label") or v.get("baseline") or "best prompting column"
    return f"{outcome_words(v['outcome'])} ({_delta(share, v['change'])} vs {against}{interval})"


def _cost(v: dict):
    """The first general-ability metric on which a run's tuning costs (its verdict's ``forgetting``), or None."""
    return next((f for f in v.get("forgetting") or [] if f.get("costs") and _number(f.get("change"))), None)


def seed_verdict_text(v: dict) -> str:
    """``seed 43: tune (+63.3 points vs retrieval, k=4, 95% CI +50.0..+76.7)``."""
    return f"seed {v['seed']}: {verdict_line(v)}"


def seeds_verdict_cell(v: dict) -> str:
    """The verdict across seeds in a few words: ``tune 3/3``, or ``tune 2/3, inconclusive 1/3 -> inconclusive``."""
    total = v["seeds"]
    cost = v.get("cost")
    paid = f"; {cost['metric']} {_delta(cost['share'], cost['change']['mean'])} in {cost['seeds']}/{total}" \
        if cost else ""
    if v["agree"]:
        return f"{outcome_words(v['outcome'])} {total}/{total}{paid}"
    parts = ", ".join(f"{outcome_words(o)} {count}/{total}" for o, count in v["counts"].items())
    return f"{parts} -> {outcome_words(v['outcome'])}{paid}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def spread_rows(fold: dict) -> list:
    """Header and one row per (metric, column): mean, sample std, min, max and how many seeds."""
    rows = [["metric", "column", "mean", "std", "min", "max", "seeds"]]
    labels = {c["key"]: c["label"] for c in fold["columns"]}
    names = sorted({name for per_metric in fold["metrics"].values() for name in per_metric})
    for name in names:
        for key, label in labels.items():
            s = (fold["metrics"].get(key) or {}).get(name)
            if s is not None:
                rows.append([name, label, _num(s["mean"]), _num(s["std"]), _num(s["min"]), _num(s["max"]),
                             str(s["n"])])
    return rows


def _heading(fold: dict) -> str:
    seeds = ", ".join(str(s) for s in fold["seeds"])
    return f"{len(fold['seeds'])} seeds ({seeds}): mean, sample std and min..max across seeds"


def format_seed_summary(fold: dict) -> str:
    """The printed summary: the spread table, each seed's verdict, the verdict across seeds."""
    rows = spread_rows(fold)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_heading(fold)]
    lines += ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              .rstrip() for row in rows]
    lines += ["", *[seed_verdict_text(v) for v in fold["verdicts"]], f"across seeds: {fold['verdict']['text']}"]
    return "\n".join(lines)


def seed_summary_markdown(fold: dict, runs: Optional[Sequence[str]] = None) -> str:
    """``seeds.md``: the verdict across seeds first, then each seed's, then the spread table.
    ``runs``: each seed's run directory (relative), linked to its report."""
    rows = spread_rows(fold)
    lines = ["# Seeds", "", f"**Across seeds:** {fold['verdict']['text']}", ""]
    for i, v in enumerate(fold["verdicts"]):
        link = f" ([report]({runs[i]}/report.md))" if runs else ""
        lines.append(f"- {seed_verdict_text(v)}{link}")
    lines += ["", f"{_heading(fold)}:", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"

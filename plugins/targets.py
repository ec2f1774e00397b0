"""Callback ``targets``: pass/fail checks on a run's final numbers, printed when the run ends.

Select it like any callback and list the checks, each ``"<value> <op> <number>"``::

    callbacks:
      targets:
        checks:
          base exact match at most 10%: "base:exact_match <= 0.10"
          tuned exact match at least 90%: "tuned:exact_match >= 0.90"
          forgetting drop at most 5 points: "change:forgetting/contains >= -0.05"
          at most 100 training examples: "data:train_examples <= 100"

``<value>`` is ``<section>:<key>`` into the run's metrics: ``base`` and
``tuned`` (evaluator results, named as in the comparison table), ``change``
(tuned minus base), ``data`` (dataset counts such as ``train_examples``),
``train``, ``throughput``, ``parameters``; or a top-level number such as
``steps`` or ``wall_time_s``.  A prompting baseline's column is
``<baseline>:<key>`` (``retrieval:exact_match``) and the change of tuned
over it ``tuned-<baseline>:<key>``.  The prefixes ``ci_low:`` and
``ci_high:`` read the bounds of the 95% interval of a column's metric or of
a change (``"ci_low:change:exact_match >= 0.5"``: tuned beats base by at
least 50 points even at the interval's low end), and ``p_value:`` the
McNemar p-value of a change of 0/1 scores.  ``<op>`` is one of ``<=``,
``>=``, ``<``, ``>``, ``==``.

The checks run when a completed run ends (the callback's ``on_run_end``,
after the tuned evaluation), in the main process only: a block with PASS or
FAIL per check is printed and written to ``<run_dir>/targets.json``
(``{"passed": bool, "checks": [...]}``).  A missing value counts as a
failure.  The callback adds nothing to the trainer.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tuneforge
from tuneforge.evaluation import RunMetrics, metric_change, metric_interval
from tuneforge.validation import check

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_CHECK = re.compile(r"^\s*(?P<ref>[^\s<>=]+)\s*(?P<op><=|>=|==|<|>)\s*(?P<bound>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


@dataclass
class TargetsConfig:
    """checks: ``{label: "<section>:<key> <op> <number>"}`` (see the module docstring).
    title: heading of the printed block.
    """

    checks: dict = field(default_factory=dict)
    title: str = "targets"

    def __post_init__(self) -> None:
        check(self, checks=_checks_problem)


def _checks_problem(checks) -> Optional[str]:
    """Every check must parse, so a malformed one fails before training, not after."""
    if not isinstance(checks, dict):
        return f"must be a mapping label -> check, got {checks!r}"
    for label, expression in checks.items():
        try:
            parse_check(expression)
        except tuneforge.ConfigError as exc:
            return f"{label!r}: {str(exc).removeprefix('callbacks.targets: ')}"
    return None


def parse_check(expression: str) -> tuple[str, str, float]:
    """``"tuned:exact_match >= 0.9"`` -> ``("tuned:exact_match", ">=", 0.9)``."""
    match = _CHECK.match(str(expression))
    if not match:
        raise tuneforge.ConfigError(f"callbacks.targets: cannot read check {expression!r}; expected "
                                    f"'<section>:<key> <op> <number>' with <op> one of {', '.join(OPERATORS)}")
    return match["ref"], match["op"], float(match["bound"])


#: prefixes that read a change's or a column's interval, or a change's McNemar p-value
STATISTICS = {"ci_low": "low", "ci_high": "high", "p_value": "p_value"}


def lookup(metrics: RunMetrics, ref: str) -> Optional[float]:
    """The number ``ref`` names in ``metrics`` (``change:<key>`` is tuned minus base); None when absent.

    ``ci_low:<ref>`` / ``ci_high:<ref>`` are the bounds of the 95% interval of
    a column's metric (``tuned:exact_match``) or of a change (``change:...``,
    ``tuned-<baseline>:...``); ``p_value:<change>:<key>`` is McNemar's p.
    A baseline's column is ``<baseline>:<key>`` (``retrieval:exact_match``).
    """
    section, _, key = ref.partition(":")
    changes, baselines = metrics.get("changes") or {}, metrics.get("baselines") or {}
    if section in STATISTICS and key:
        column, _, name = key.partition(":")
        if column in changes:
            value = metric_change(metrics, column, name).get(STATISTICS[section])
        else:
            value = metric_interval(metrics, column, name).get(STATISTICS[section])
    elif not key:
        value = metrics.get(section)
    elif section == "change":
        base, tuned = lookup(metrics, f"base:{key}"), lookup(metrics, f"tuned:{key}")
        value = None if base is None or tuned is None else tuned - base
    elif section in changes:
        value = metric_change(metrics, section, key).get("value")
    elif section not in metrics and section in baselines:
        value = (baselines[section] or {}).get(key)
    else:
        value = (metrics.get(section) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_targets(checks: dict, metrics: RunMetrics) -> dict:
    """``{"passed": bool, "checks": [{label, expression, value, passed}]}`` for ``checks`` on ``metrics``."""
    rows = []
    for label, expression in checks.items():
        ref, op, bound = parse_check(expression)
        value = lookup(metrics, ref)
        passed = value is not None and OPERATORS[op](value, bound)
        rows.append({"label": str(label), "expression": f"{ref} {op} {bound:g}", "value": value,
                     "passed": bool(passed)})
    return {"passed": all(r["passed"] for r in rows), "checks": rows}


def format_targets(result: dict, title: str = "targets") -> str:
    rows = result["checks"]
    width = max([len(r["label"]) for r in rows] + [len("target")])
    lines = [f"== {title} ==", f"{'':4}  {'target':<{width}}  {'measured':>10}  check"]
    for r in rows:
        value = "missing" if r["value"] is None else f"{r['value']:.4g}"
        lines.append(f"{'PASS' if r['passed'] else 'FAIL':4}  {r['label']:<{width}}  {value:>10}  {r['expression']}")
    missed = sum(not r["passed"] for r in rows)
    lines.append(f"all {len(rows)} targets met" if not missed else f"{missed} of {len(rows)} targets missed")
    return "\n".join(lines)


def report_targets(config: TargetsConfig, metrics: dict, status: str, run_dir, context=None) -> Optional[dict]:
    """Check, print and save the targets of a completed run (main process only); returns the result."""
    if status != "completed" or (context is not None and not context.is_main):
        return None
    result = check_targets(dict(config.checks or {}), metrics)
    Path(run_dir, "targets.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_targets(result, config.title or "targets"), flush=True)
    return result


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("targets", TargetsConfig,
                                   "pass/fail checks on the final metrics, printed when the run ends",
                                   on_run_end=report_targets)]

"""Text summaries of a run's metrics."""

from __future__ import annotations


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

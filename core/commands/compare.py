"""``tuneforge compare``: several runs side by side, e.g. a data-efficiency sweep.

    tuneforge train -m +experiment=legal_citations data.max_examples=25,50,100
    tuneforge compare runs/multirun/<date>            # or: tuneforge compare runs/a runs/b ...

Reads each completed run's ``metrics.json``, prints one row per run (training
examples, steps, every base and tuned metric with its 95% bootstrap interval
when the run saved one) sorted by the number of training examples, and
writes ``comparison.md`` and ``data_efficiency.png`` (each tuned score
against the number of training examples, its interval as error bars, base as
a dashed line) into the first folder given, or ``out=<dir>``.  Which metrics are
plotted follows the ``metric_info`` the runs saved (see
:func:`plotted_metrics`), so no plugin is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError

USAGE = """\
usage: tuneforge compare <run dir or sweep dir> [more ...] [out=<dir>]

Compare completed runs (e.g. a Hydra multirun over data.max_examples): a table
of training examples, steps and base/tuned metrics, plus comparison.md and
data_efficiency.png.
"""


def find_runs(paths: list) -> list[Path]:
    """Run directories (holding metrics.json) among ``paths`` and one level below them."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise TuneforgeError(f"compare: {path} is not a directory")
        candidates = [path] if (path / "metrics.json").is_file() else sorted(
            p for p in path.iterdir() if (p / "metrics.json").is_file())
        if not candidates:
            raise TuneforgeError(f"compare: no completed run (metrics.json) in {path} or its subfolders")
        runs += candidates
    return runs


def find_failed_runs(paths: list) -> list[tuple[Path, str]]:
    """``(run directory, its error)`` of the runs among ``paths`` and one level below them whose
    ``status.json`` says ``failed`` (e.g. a sweep job that failed; it has no metrics.json to compare)."""
    failed = []
    for path in map(Path, paths):
        candidates = [path] if (path / "status.json").is_file() else sorted(
            p for p in path.iterdir() if (p / "status.json").is_file()) if path.is_dir() else []
        for run in candidates:
            try:
                status = json.loads((run / "status.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(status, dict) and status.get("status") == "failed":
                failed.append((run, str(status.get("error") or "no error recorded")))
    return failed


def load_rows(runs: list[Path]) -> list[dict]:
    rows = []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        data = metrics.get("data", {})
        rows.append({"run": str(run), "train_examples": data.get("train_examples", data.get("train_records")),
                     "steps": metrics.get("steps"), "base": metrics.get("base", {}),
                     "tuned": metrics.get("tuned", {}), "metric_info": metrics.get("metric_info", {}),
                     "config": _flat_config(run / "config.yaml"),
                     "intervals": metrics.get("intervals", {}),
                     "change": (metrics.get("changes") or {}).get("change", {})})
    return sorted(rows, key=lambda r: (r["train_examples"] is None, r["train_examples"] or 0, r["run"]))


#: config keys that differ between runs without being a setting that was compared
_NOT_SETTINGS = ("run_dir",)


def _flat_config(path: Path) -> dict:
    """``{dotted key: value}`` of a run's saved (resolved) ``config.yaml``; empty when it has none."""
    if not path.is_file():
        return {}
    import yaml

    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(yaml.safe_load(path.read_text()) or {}, "")
    return flat


def varied_settings(rows: list[dict]) -> list[str]:
    """The config keys whose values differ between the runs (the swept settings, e.g. ``optim.lr``)."""
    keys = sorted({key for row in rows for key in row.get("config", {})})
    return [key for key in keys if key not in _NOT_SETTINGS
            and len({json.dumps(row.get("config", {}).get(key), sort_keys=True, default=str) for row in rows}) > 1]


def metric_names(rows: list[dict]) -> list[str]:
    return sorted({name for row in rows for name in (*row["base"], *row["tuned"])})


def format_table(rows: list[dict]) -> list[list[str]]:
    """Header and one line per run: the settings that differ between runs (from each run's
    ``config.yaml``), training examples, steps, then every base and tuned metric with its 95%
    interval when the run saved one (``0.9667 [0.9000, 1.0000]``)."""
    names, settings = metric_names(rows), varied_settings(rows)
    header = (["run", *settings, "train examples", "steps"] + [f"{n} base" for n in names]
              + [f"{n} tuned" for n in names])
    body = [[Path(r["run"]).name, *(str(r.get("config", {}).get(k, "-")) for k in settings),
             str(r["train_examples"]), str(r["steps"])]
            + [_fmt(r["base"].get(n), _interval(r, "base", n)) for n in names]
            + [_fmt(r["tuned"].get(n), _interval(r, "tuned", n)) for n in names] for r in rows]
    return [header, *body]


def _interval(row: dict, column: str, name: str):
    return ((row.get("intervals") or {}).get(column) or {}).get(name)


def _fmt(value, interval=None) -> str:
    if value is None:
        return "-"
    if interval and interval.get("low") is not None:
        return f"{value:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"
    return f"{value:.4f}"


def plotted_metrics(rows: list[dict]) -> list[str]:
    """The tuned metrics the data-efficiency plot shows: the primary ones when any run declares one,
    else those where higher is better (losses would squash the 0-1 scores), else all of them.

    A metric a run saved no ``metric_info`` for counts as higher-is-better.
    """
    names = [n for n in metric_names(rows) if any(n in r["tuned"] for r in rows)]
    info: dict = {}
    for row in rows:
        for name, described in (row.get("metric_info") or {}).items():
            info.setdefault(name, described)
    primary = [n for n in names if (info.get(n) or {}).get("primary")]
    scores = [n for n in names if (info.get(n) or {}).get("higher_is_better", True)]
    return primary or scores or names


def plot_data_efficiency(rows: list[dict], path: Path) -> bool:
    """Tuned score vs training examples (one line per metric, base dashed); False without numbers."""
    from tuneforge.evaluation.report import _figure

    points = [r for r in rows if r["train_examples"] is not None]
    names = plotted_metrics(points)
    if not points or not names:
        return False
    figure = _figure(6.4, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    for name in names:
        tuned = [r for r in points if name in r["tuned"]]
        xs, ys = [r["train_examples"] for r in tuned], [r["tuned"][name] for r in tuned]
        errors = [[max(0.0, y - (_interval(r, "tuned", name) or {}).get("low", y)) for r, y in zip(tuned, ys)],
                  [max(0.0, (_interval(r, "tuned", name) or {}).get("high", y) - y) for r, y in zip(tuned, ys)]]
        line = axes.errorbar(xs, ys, yerr=errors if any(map(any, errors)) else None, fmt="o-", capsize=4,
                             label=f"{name} (tuned, 95% CI)" if any(map(any, errors)) else f"{name} (tuned)").lines[0]
        base = [r["base"][name] for r in points if name in r["base"]]
        if base:
            axes.axhline(sum(base) / len(base), linestyle="--", color=line.get_color(), alpha=0.6,
                         label=f"{name} (base)")
    axes.set_xlabel("training examples")
    axes.set_ylabel("metric")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


def compare_command(args: list) -> None:
    if not args or any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return
    outs = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    paths = [a for a in args if not a.startswith("out=")]
    rows = load_rows(find_runs(paths))
    out = Path(outs[0] if outs else paths[0])
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    markdown = ["# Run comparison", "", "| " + " | ".join(table[0]) + " |",
                "|" + "---|" * len(table[0])] + ["| " + " | ".join(row) + " |" for row in table[1:]]
    failed = find_failed_runs(paths)
    for run, error in failed:
        print(f"FAILED  {run.name}  {error}")
    if failed:
        markdown += ["", "Failed runs (not in the table):", ""] + [f"- FAILED `{run.name}`: {error}"
                                                                   for run, error in failed]
    if plot_data_efficiency(rows, out / "data_efficiency.png"):
        markdown += ["", "![data efficiency](data_efficiency.png)"]
    (out / "comparison.md").write_text("\n".join(markdown) + "\n")
    print(f"comparison: {out / 'comparison.md'}")

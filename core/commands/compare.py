"""``tuneforge compare``: several runs side by side, e.g. a data-efficiency sweep, with or without seeds.

    tuneforge train -m +experiment=legal_citations data.max_examples=25,50,100 [evidence.seeds=3]
    tuneforge compare runs/multirun/<date>            # or: tuneforge compare runs/a runs/b ...

Reads each completed run's ``metrics.json`` (a folder with ``seeds.json``, an
``evidence.seeds=N`` run, stands for its seeds' runs) and prints one row per
run: the settings that differ between runs, training examples, steps, every
metric of every column (base zero-shot, each prompting baseline, tuned) with
its 95% interval when the run saved one, and the run's verdict.  Runs whose
saved configs differ only by ``seed`` (:func:`group_runs`) are followed by one
row of their mean and sample standard deviation over the seeds and the
verdict across seeds, folded by :func:`tuneforge.evaluation.seeds.fold_seed_runs`
(the same fold as ``seeds.json``).  Rows are sorted by the number of training
examples.  Each run sliced by a record field (``evidence.slice_by``) gets a
short table after the main one: per value, n, the headline metric of every column and the
slice's outcome (:func:`slice_tables`; each seed's run on its own).

It writes ``comparison.md`` and ``data_efficiency.png`` (each column's score
against the number of training examples: tuned as a solid line with error
bars, the prompting columns dashed; the error bars are the seed spread, one
standard deviation, for a mean of several seeds, else the run's 95% interval;
one panel per metric section, so forgetting never shares the task metric's
axis) into a new folder ``compare-<date>_<time>`` in the current directory,
or ``out=<dir>``.  Which metrics are plotted follows the ``metric_info`` the
runs saved (:func:`plotted_metrics`), so no plugin is loaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import fmean
from typing import Optional

from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.comparison import column_order, column_values
from tuneforge.evaluation.metrics_file import RunMetrics, metric_interval, read_metrics
from tuneforge.specs import HELD_OUT

USAGE = """\
usage: tuneforge compare <run dir or sweep dir> [more ...] [out=<dir>]

Compare completed runs (e.g. a Hydra multirun over data.max_examples, with or
without evidence.seeds=N): a table of the settings that differ, training
examples, steps, every column's metrics (base, prompting baselines, tuned) and
each run's verdict; runs that differ only by seed also get their mean, spread
and the verdict across seeds; a run sliced by evidence.slice_by also gets a
table with a row per value of that field.  Writes comparison.md and data_efficiency.png to
a new folder compare-<date>_<time> in the current directory, or to out=<dir>.
"""

#: config keys that differ between runs without being a setting that was compared
_NOT_SETTINGS = ("run_dir",)
#: config keys that may differ between the runs of one group of seeds
_SEED_KEYS = ("seed", "run_dir", "resume", "evidence.seeds")


# ---------------------------------------------------------------------------
# Finding and reading runs
# ---------------------------------------------------------------------------


def find_runs(paths: list) -> list[Path]:
    """Run directories (holding metrics.json) among ``paths`` and one level below them; a folder
    holding ``seeds.json`` (an ``evidence.seeds=N`` run) gives its seeds' run directories."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise TuneforgeError(f"compare: {path} is not a directory")
        candidates = _runs_in(path) or [run for child in sorted(p for p in path.iterdir() if p.is_dir())
                                        for run in _runs_in(child)]
        if not candidates:
            raise TuneforgeError(f"compare: no completed run (metrics.json) in {path} or its subfolders")
        runs += candidates
    return runs


def _runs_in(path: Path) -> list[Path]:
    """``[path]`` for a run directory, its seeds' runs for a seeds folder, else nothing."""
    if (path / "metrics.json").is_file():
        return [path]
    if (path / "seeds.json").is_file():  # the seeds it folded (a later run with fewer seeds leaves others)
        folders = json.loads((path / "seeds.json").read_text()).get("runs") or [p.name for p in path.iterdir()]
        return sorted(path / name for name in folders if (path / name / "metrics.json").is_file())
    return []


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
    """One row per run: its ``metrics.json`` (``metrics``, read by
    :func:`~tuneforge.evaluation.metrics_file.read_metrics`), flattened ``config``, ``seed``, training
    examples and steps; sorted by the number of training examples."""
    rows = []
    for run in runs:
        metrics = read_metrics(run / "metrics.json")
        data, config = metrics.get("data", {}), _flat_config(run / "config.yaml")
        rows.append({"run": str(run), "train_examples": data.get("train_examples", data.get("train_records")),
                     "steps": metrics.get("steps"), "seed": config.get("seed"), "config": config,
                     "metrics": metrics, "base": metrics.get("base", {}), "tuned": metrics.get("tuned", {}),
                     "metric_info": metrics.get("metric_info", {})})
    return sorted(rows, key=_order)


def _order(row: dict) -> tuple:
    return row["train_examples"] is None, row["train_examples"] or 0, row["run"]


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


def _same(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def group_runs(rows: list[dict]) -> list[list[dict]]:
    """The runs grouped by their saved config without ``seed`` (and run directory): each group holds
    the seeds of one setting, sorted by seed; groups in the order of their first row.  A run without a
    saved config is a group of its own."""
    groups: dict = {}
    for row in rows:
        setting = {k: v for k, v in row["config"].items() if k not in _SEED_KEYS} if row["config"] else row["run"]
        groups.setdefault(_same(setting), []).append(row)
    return [sorted(group, key=lambda r: (r["seed"] is None, r["seed"] or 0, r["run"])) for group in groups.values()]


def fold_group(group: list[dict]) -> Optional[dict]:
    """The seeds of one group folded (:func:`~tuneforge.evaluation.seeds.fold_seed_runs`); None for one run."""
    from tuneforge.evaluation.seeds import fold_seed_runs

    if len(group) < 2:
        return None
    return fold_seed_runs([row["metrics"] for row in group],
                          seeds=[row["seed"] if row["seed"] is not None else Path(row["run"]).name for row in group])


def varied_settings(rows: list[dict]) -> list[str]:
    """The config keys whose values differ between the runs (the swept settings, e.g. ``optim.lr``)."""
    keys = sorted({key for row in rows for key in row.get("config", {})})
    return [key for key in keys if key not in _NOT_SETTINGS
            and len({_same(row.get("config", {}).get(key)) for row in rows}) > 1]


def metric_names(rows: list[dict]) -> list[str]:
    return sorted({name for row in rows for column in column_order(_metrics(row))
                   for name in column_values(_metrics(row), column)})


def columns(rows: list[dict]) -> list[str]:
    """The columns of any run: ``base``, the baselines in the order they ran, ``tuned``."""
    found = dict.fromkeys(column for row in rows for column in column_order(_metrics(row)))
    return sorted(found, key=lambda c: (c == "tuned", c != "base"))


def _metrics(row: dict) -> RunMetrics:
    """The run's metrics.json (rows built by hand may carry only ``base``/``tuned``)."""
    return row.get("metrics") or {"base": row.get("base") or {}, "tuned": row.get("tuned") or {}}


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def format_table(rows: list[dict]) -> list[list[str]]:
    """Header and one line per run (:func:`run_cells`); after the runs of a group of seeds, the line of
    their mean and spread (:func:`seeds_cells`)."""
    names, settings, shown = metric_names(rows), varied_settings(rows), columns(rows)
    header = (["run", *settings, "train examples", "steps"]
              + [f"{name} {column}" for name in names for column in shown] + ["verdict"])
    body = []
    for group in group_runs(rows):
        body += [run_cells(row, settings, names, shown) for row in group]
        fold = fold_group(group)
        if fold is not None:
            body.append(seeds_cells(group, fold, settings, names, shown))
    return [header, *body]


def run_cells(row: dict, settings: list, names: list, shown: list) -> list[str]:
    """One run: its settings, training examples, steps, each metric of each column (with its 95%
    interval when saved) and its verdict."""
    metrics = _metrics(row)
    cells = [run_name(row["run"]), *(str(row.get("config", {}).get(k, "-")) for k in settings),
             str(row["train_examples"]), str(row["steps"])]
    cells += [_fmt(column_values(metrics, column).get(name), _interval(row, column, name))
              for name in names for column in shown]
    return cells + [_verdict_cell(metrics.get("verdict"))]


def seeds_cells(group: list[dict], fold: dict, settings: list, names: list, shown: list) -> list[str]:
    """A group of seeds: ``mean (sd x)`` of each metric and the verdict across seeds."""
    from tuneforge.evaluation.seeds import seeds_verdict_cell

    def common(values) -> str:
        return ",".join(dict.fromkeys(str(v) for v in values))

    cells = [f"mean of {len(group)} runs", *(common(r.get("config", {}).get(k, "-") for r in group) for k in settings),
             common(r["train_examples"] for r in group), common(r["steps"] for r in group)]
    cells += [_spread_cell((fold["metrics"].get(column) or {}).get(name)) for name in names for column in shown]
    return cells + [seeds_verdict_cell(fold["verdict"])]


def run_name(run: str) -> str:
    """How a run is named in the table: its folder, with the seeds' folder for one seed's run
    (``sweep/0/seed-42`` -> ``0/seed-42``)."""
    path = Path(run)
    return f"{path.parent.name}/{path.name}" if (path.parent / "seeds.json").is_file() else path.name


def _interval(row: dict, column: str, name: str):
    return metric_interval(_metrics(row), column, name)


def _fmt(value, interval=None) -> str:
    if value is None:
        return "-"
    if interval and interval.get("low") is not None:
        return f"{value:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"
    return f"{value:.4f}"


def _spread_cell(spread: Optional[dict]) -> str:
    if spread is None:
        return "-"
    return f"{spread['mean']:.4f} (sd {spread['std']:.4f})" if spread["std"] is not None else f"{spread['mean']:.4f}"


def _verdict_cell(verdict: Optional[dict]) -> str:
    from tuneforge.evaluation.seeds import verdict_line

    return verdict_line(verdict) if verdict else "-"


def slice_tables(rows: list[dict]) -> list[tuple[str, list[list[str]]]]:
    """``(title, header and rows)`` of every run sliced by a record field (``evidence.slice_by``), in the
    table's order: per value, n, the headline metric of each column and the slice's outcome
    (:func:`tuneforge.evaluation.slices.slice_table`).  Each seed's run has its own; slices are not folded
    across seeds."""
    from tuneforge.evaluation.seeds import outcome_words
    from tuneforge.evaluation.slices import slice_field, slice_metric, slice_table

    tables = []
    for row in (row for group in group_runs(rows) for row in group):
        metrics = _metrics(row)
        table = slice_table(metrics, verdict=lambda v: outcome_words(v.get("outcome") or "no_comparison"))
        if table is not None:
            title = f"{run_name(row['run'])}: by {slice_field(metrics)} ({slice_metric(metrics)})"
            tables.append((title, [table[0], *table[1]]))
    return tables


def aligned(table: list[list[str]]) -> list[str]:
    """The rows of ``table`` as printed lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]


# ---------------------------------------------------------------------------
# The data-efficiency plot
# ---------------------------------------------------------------------------


def _all_info(rows: list[dict]) -> dict:
    info: dict = {}
    for row in rows:
        for name, described in (row.get("metric_info") or {}).items():
            info.setdefault(name, described)
    return info


def sections(rows: list[dict]) -> list[str]:
    """The metric sections of the tuned metrics (``held-out`` first, then e.g. ``forgetting``)."""
    info = _all_info(rows)
    found = {(info.get(n) or {}).get("section", HELD_OUT) for row in rows for n in row["tuned"]}
    return sorted(found, key=lambda s: (s != HELD_OUT, s))


def plotted_metrics(rows: list[dict], section: str = HELD_OUT) -> list[str]:
    """The tuned metrics of ``section`` the data-efficiency plot shows: the primary ones when any run
    declares one, else those where higher is better (losses would squash the 0-1 scores), else all of them.

    A metric a run saved no ``metric_info`` for counts as higher-is-better, of section ``held-out``.
    """
    info = _all_info(rows)
    names = sorted(n for n in {n for r in rows for n in r["tuned"]}
                   if (info.get(n) or {}).get("section", HELD_OUT) == section)
    primary = [n for n in names if (info.get(n) or {}).get("primary")]
    scores = [n for n in names if (info.get(n) or {}).get("higher_is_better", True)]
    return primary or scores or names


def _point(group: list[dict], fold: Optional[dict], column: str, name: str) -> Optional[tuple]:
    """``(x, y, low error, high error)`` of one column's metric for a group: the mean over its seeds with
    one standard deviation, or one run's value with its 95% interval; None when not measured."""
    xs = [r["train_examples"] for r in group if r["train_examples"] is not None]
    if not xs:
        return None
    if fold is not None:
        spread = (fold["metrics"].get(column) or {}).get(name)
        if spread is None:
            return None
        return fmean(xs), spread["mean"], spread["std"] or 0.0, spread["std"] or 0.0
    value = column_values(_metrics(group[0]), column).get(name)
    if value is None:
        return None
    interval = _interval(group[0], column, name) or {}
    low, high = interval.get("low", value), interval.get("high", value)
    return xs[0], value, max(0.0, value - low), max(0.0, high - value)


#: the markers of the prompting columns (base, then each baseline) in the plot; tuned is a filled circle
_PROMPTING_MARKERS = ("x", "s", "^", "v", "D", "P", "*")


def plot_data_efficiency(rows: list[dict], path: Path) -> bool:
    """Save :func:`data_efficiency_figure` as a PNG at ``path``; False (no file) without numbers."""
    figure = data_efficiency_figure(rows)
    if figure is None:
        return False
    figure.savefig(path, format="png")
    return True


def data_efficiency_figure(rows: list[dict]):
    """Each column's score vs training examples, one panel per metric section (``held-out``,
    ``forgetting`` ...): tuned solid with error bars (seed spread for a mean of seeds, else the 95%
    interval), base and baselines dashed; None without numbers."""
    from tuneforge.evaluation.curves import agg_figure

    groups = [(group, fold_group(group)) for group in group_runs(rows)]
    panels = [(section, plotted_metrics(rows, section)) for section in sections(rows)]
    panels = [(section, names) for section, names in panels if names]
    if not any(r["train_examples"] is not None for r in rows) or not panels:
        return None
    seeded = any(fold is not None for _, fold in groups)
    bars = "mean, sd over seeds" if seeded else "95% CI"
    if seeded and any(fold is None for _, fold in groups):
        bars += "; one run: 95% CI"
    figure = agg_figure(6.4 * len(panels), 3.8)
    for index, (section, names) in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), index)
        for name in names:
            color = None
            for number, column in enumerate(columns(rows)):
                points = sorted(p for p in (_point(g, fold, column, name) for g, fold in groups) if p is not None)
                if not points:
                    continue
                xs, ys, low, high = zip(*points)
                tuned = column == "tuned"
                errors = [low, high] if tuned and any(low + high) else None
                label = f"{name} ({column}{', ' + bars if errors else ''})"
                marker = "o" if tuned else _PROMPTING_MARKERS[number % len(_PROMPTING_MARKERS)]
                line = axes.errorbar(xs, ys, yerr=errors, fmt=f"{marker}-" if tuned else f"{marker}--",
                                     capsize=4 if tuned else 0, markersize=6 if tuned else 4,
                                     color=color, alpha=1.0 if tuned else 0.6, label=label).lines[0]
                color = color or line.get_color()
        axes.set_title(section, fontsize=9)
        axes.set_xlabel("training examples")
        axes.set_ylabel("metric" if section == HELD_OUT else f"{section} metric")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def new_output_dir(parent: Path) -> Path:
    """A folder ``compare-<date>_<time>`` (``-2``, ``-3`` ... when taken) made in ``parent``."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1, 1000):
        folder = parent / (f"compare-{stamp}" if attempt == 1 else f"compare-{stamp}-{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise TuneforgeError(f"compare: could not make a new folder compare-{stamp} in {parent}; give out=<dir>")


def comparison_markdown(rows: list[dict], table: list[list[str]], plotted: bool, failed: list = ()) -> str:
    """``comparison.md``: the table, the failed runs (``(run directory, error)``), each group's verdict
    across seeds, the plot."""
    from tuneforge.evaluation.seeds import seed_verdict_text

    lines = ["# Run comparison", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    if failed:
        lines += ["", "Failed runs (not in the table):", ""] + [f"- FAILED `{run.name}`: {error}"
                                                                for run, error in failed]
    folds = [(group, fold) for group in group_runs(rows) if (fold := fold_group(group)) is not None]
    if folds:
        lines += ["", "## Across seeds", ""]
        for group, fold in folds:
            settings = ", ".join(f"{k}={group[0]['config'].get(k)}" for k in varied_settings(rows) if k != "seed")
            lines += [f"- {settings + ': ' if settings else ''}{fold['verdict']['text']}"]
            lines += [f"  - {seed_verdict_text(v)}" for v in fold["verdicts"]]
    sliced = slice_tables(rows)
    if sliced:
        from tuneforge.evaluation.slices import WEAKER

        lines += ["", "## By slice (evidence.slice_by)", "", f"Per-slice n is small: {WEAKER}."]
        for title, (header, *values) in sliced:
            lines += ["", f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in values]
    if plotted:
        lines += ["", "![data efficiency](data_efficiency.png)"]
    return "\n".join(lines) + "\n"


def compare_command(args: list) -> None:
    if not args or any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return
    outs = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    paths = [a for a in args if not a.startswith("out=")]
    rows = load_rows(find_runs(paths))
    if outs:
        out = Path(outs[0])
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = new_output_dir(Path.cwd())
    table = format_table(rows)
    print("\n".join(aligned(table)))
    failed = find_failed_runs(paths)
    for run, error in failed:
        print(f"FAILED  {run.name}  {error}")
    for title, sliced in slice_tables(rows):
        print(f"\n{title}; per-slice n is small, so each verdict is weaker than the run's:")
        print("\n".join(f"  {line}" for line in aligned(sliced)))
    plotted = plot_data_efficiency(rows, out / "data_efficiency.png")
    (out / "comparison.md").write_text(comparison_markdown(rows, table, plotted, failed))
    print(f"comparison: {out / 'comparison.md'}")

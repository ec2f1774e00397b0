"""``metrics.json``: its typed model, its one writer and its one reader.

A run directory's ``metrics.json`` (and ``tuneforge eval``'s) is one JSON
object, :class:`RunMetrics`; each section is a ``TypedDict`` below (the training
sections: :mod:`tuneforge.evaluation.metrics_training`) whose docstring says what
every key holds (``key: what it holds``).  The run
builds it as a plain dict (the same object the ``on_run_end`` callbacks and
the ``tuneforge_run_end`` hook receive), :func:`write_metrics` stamps it with
``schema_version`` (:data:`SCHEMA_VERSION`) and writes it atomically, and
every command that reads one goes through :func:`read_metrics`.

Version policy (docs/metrics.md): adding an optional key keeps the version;
renaming, removing or re-shaping a key raises :data:`SCHEMA_VERSION`, and
:func:`read_metrics` upgrades every older version in memory (a file without
``schema_version`` is version 0, written before the field existed).  A file
of a newer version than this tuneforge knows is a one-line error.  The JSON
Schema in ``docs/metrics.schema.json`` is generated from these classes
(:mod:`tuneforge.evaluation.metrics_schema`).

Sections marked *open* may hold more keys than listed (the verdict's inputs,
the data counts a dataset plugin reports, the machine record ...); the listed
ones are those tuneforge's readers use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict, Union

from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.metrics_training import (Compile, Memory, Precision, Segment, Setup, Throughput,
                                                   open_section)

#: the version of the layout written by :func:`write_metrics` (``metrics.json`` ``schema_version``)
SCHEMA_VERSION = 1
#: the file's name inside a run directory (or ``tuneforge eval``'s output folder)
METRICS_FILE = "metrics.json"

#: ``{metric: value}``: one column's evaluator results (or ``{name: value}`` of training numbers)
Scores = Dict[str, float]


class MetricsFileError(TuneforgeError):
    """A ``metrics.json`` that this tuneforge cannot read: not JSON, not an object, or a newer schema version."""


class Interval(TypedDict, total=False):
    """The 95% interval of one metric of one column.

    low: the interval's lower bound (null when it could not be computed).
    high: the interval's upper bound (null when it could not be computed).
    n: the number of per-example scores it was computed from.
    method: how it was computed (``Wilson score``, ``BCa bootstrap`` ...).
    """

    low: Optional[float]
    high: Optional[float]
    n: int
    method: str


@open_section
class Change(TypedDict, total=False):
    """Tuned minus another column on one metric, paired over the same held-out examples.

    value: the difference of the two columns' values.
    low: the lower bound of the difference's 95% interval (scores of both columns needed).
    high: the upper bound of the difference's 95% interval.
    n: the number of paired examples.
    method: the interval's and test's method (Newcombe + McNemar for 0/1 scores, paired t otherwise).
    p_value: the test's p-value (McNemar's exact test for 0/1 scores, the paired t test otherwise).
    gained: 0/1 scores: the examples the tuned model gets right and the other column wrong.
    lost: 0/1 scores: the examples the other column gets right and the tuned model wrong.
    """

    value: float
    low: Optional[float]
    high: Optional[float]
    n: int
    method: str
    p_value: Optional[float]
    gained: int
    lost: int


@open_section
class MetricDescription(TypedDict, total=False):
    """What an evaluator declared about one of its metrics (:class:`tuneforge.specs.MetricInfo`).

    description: one line on what the metric measures.
    higher_is_better: false for losses, perplexity and other lower-is-better metrics.
    is_loss: a held-out loss (the report's overfitting signal uses the first one).
    primary: the evaluator's headline metric (the verdict prefers it).
    section: where the metric belongs: ``held-out`` or a general-ability section such as ``forgetting``.
    share: whether it is a share of examples shown in percent (absent: inferred from the values).
    """

    description: str
    higher_is_better: bool
    is_loss: bool
    primary: bool
    section: str
    share: bool


class Parameters(TypedDict):
    """The model's parameter counts after the adapter was applied.

    trainable: parameters the optimizer updates.
    total: all parameters of the model.
    fraction: trainable divided by total.
    """

    trainable: int
    total: int
    fraction: float


@open_section
class BaselineInfo(TypedDict, total=False):
    """How a prompting baseline's column is labelled (plus what the baseline reported, e.g. its corpus).

    name: the baseline component's name.
    label: the column's label in the tables (``few_shot, k=4``).
    """

    name: str
    label: str


class Uncertainty(TypedDict, total=False):
    """How the intervals were made (the ``uncertainty`` settings of the run).

    method: the methods of the columns' intervals, the changes and the memorisation gap, in words.
    resamples: bootstrap resamples of continuous scores (0: no intervals).
    confidence: the intervals' confidence level.
    seed: the bootstrap's seed (the run's seed).
    """

    method: str
    resamples: int
    confidence: float
    seed: int


class Gap(TypedDict, total=False):
    """The train-vs-held-out gap of one metric (positive: the training sample scores better).

    value: the gap, signed so that positive means better on the training sample.
    low: the lower bound of its 95% interval (unpaired percentile bootstrap).
    high: the upper bound of its 95% interval.
    """

    value: float
    low: float
    high: float


class Memorisation(TypedDict, total=False):
    """The tuned model on a sample of its training examples next to its held-out results.

    sample: how many training examples were scored (``memorisation.sample``).
    train: the held-out evaluators' metrics on the training sample.
    held_out: the same metrics of the tuned column on the held-out examples.
    intervals: the training sample's 95% intervals by metric.
    gap: the train-vs-held-out gap by metric.
    flagged: metrics whose gap is at least ``flag_gap`` with an interval above zero.
    flag_gap: the smallest gap that is flagged (``memorisation.flag_gap``).
    """

    sample: int
    train: Scores
    held_out: Scores
    intervals: Dict[str, Interval]
    gap: Dict[str, Gap]
    flagged: List[str]
    flag_gap: float


class Overfitting(TypedDict, total=False):
    """Train vs validation loss at the end of training (the report's overfitting signal).

    train_loss: the mean train loss of the last tenth of the logged steps.
    val_loss: the last validation loss during training, or the tuned model's first held-out loss metric.
    gap: validation loss minus train loss.
    val_source: where ``val_loss`` came from, in words.
    best_val_step: the step of the lowest validation loss during training.
    best_val_loss: the lowest validation loss during training.
    """

    train_loss: Optional[float]
    val_loss: Optional[float]
    gap: Optional[float]
    val_source: Optional[str]
    best_val_step: int
    best_val_loss: float


@open_section
class Verdict(TypedDict, total=False):
    """The verdict: tune, tune at a cost, prompting suffices or inconclusive (:mod:`tuneforge.evaluation.verdict`).

    outcome: ``tune``, ``tune_with_cost``, ``prompting_suffices``, ``inconclusive`` or ``no_comparison``.
    decision: the outcome before the general-ability check (``tune_with_cost`` is a ``tune`` decision).
    metric: the headline metric the verdict is about.
    baseline: the best prompting column on that metric (``base`` for zero-shot).
    baseline_label: that column's label.
    baseline_value: that column's value of the metric.
    tuned: the tuned model's value of the metric.
    change: tuned minus the best prompting column.
    low: the lower bound of that change's 95% interval.
    high: the upper bound of that change's 95% interval.
    p_value: the test's p-value of that change.
    comparisons: tuned against every prompting column: ``{column: change}``.
    headline: the verdict in one sentence.
    text: the verdict's paragraph.
    cost: the cost side of the decision (:mod:`tuneforge.evaluation.cost`; null without a compared column).
    margin: the equivalence margin (``evidence.margin``).
    forgetting_limit: the largest drop of a general-ability metric that does not count as a cost.
    """

    outcome: str
    decision: str
    metric: str
    baseline: str
    baseline_label: str
    baseline_value: float
    tuned: float
    change: float
    low: Optional[float]
    high: Optional[float]
    p_value: Optional[float]
    comparisons: Dict[str, Change]
    headline: str
    text: str
    cost: Optional[Dict[str, Any]]
    margin: float
    forgetting_limit: float


@open_section
class Slice(TypedDict, total=False):
    """The columns and the verdict within one value of the ``evidence.slice_by`` record field.

    n: the held-out examples with this value.
    field: the record field (``evidence.slice_by``).
    columns: ``{column: {metric: value}}`` within the slice.
    verdict: the verdict within the slice.
    """

    n: int
    field: str
    columns: Dict[str, Scores]
    verdict: Verdict


@open_section
class ColumnCost(TypedDict, total=False):
    """One column's cost per held-out query.

    prompt_tokens_per_query: prompt tokens per query (null when the data has no messages).
    completion_tokens_per_query: generated tokens per query (null without generation).
    generation_s_per_query: the median generation seconds per query over the timed batches.
    generation_s_range: the lowest and highest seconds per query over the batches.
    timed_batches: how many generated batches were timed.
    training_s: the tuned column only: the training time in seconds.
    """

    prompt_tokens_per_query: Optional[float]
    completion_tokens_per_query: Optional[float]
    generation_s_per_query: Optional[float]
    generation_s_range: Optional[List[float]]
    timed_batches: int
    training_s: Optional[float]


@open_section
class Quality(TypedDict, total=False):
    """The data quality report (:mod:`tuneforge.data.quality`); the run stops on leakage or empty targets.

    records: records read per split (``train``, ``val``).
    examples: examples kept per split.
    tokens: per split, the ``min``, ``median``, ``max`` and ``total`` tokens of an example.
    duplicates: exact duplicates within the training split.
    val_duplicates: exact duplicates within the held-out split.
    empty_targets: examples with an empty or whitespace-only target, per split.
    truncated: examples cut to the maximum length (both splits).
    dropped: examples dropped for being over the maximum length (both splits).
    leakage: held-out examples that are also training examples.
    labels: the training targets' label counts when they look like labels (at most ``quality.max_labels``
        repeated targets covering two thirds of the examples), else null.
    label_others: the training examples outside ``labels`` (targets that occur once, e.g. rehearsal rows).
    val_labels: the held-out examples of each label of ``labels``.
    unused_keys: ``{key: {"records": count, "first": source}}``, the record keys (``"<key> in <list>"`` for
        keys of messages) that no part of the run read, so nothing trained on them.
    warnings: the quality warnings printed during the run.
    """

    records: Dict[str, int]
    examples: Dict[str, int]
    tokens: Dict[str, Dict[str, float]]
    duplicates: int
    val_duplicates: int
    empty_targets: Dict[str, int]
    truncated: int
    dropped: int
    leakage: int
    labels: Optional[Dict[str, int]]
    label_others: int
    val_labels: Dict[str, int]
    unused_keys: Dict[str, Dict[str, Any]]
    warnings: List[str]


class RunMetrics(TypedDict, total=False):
    """The whole ``metrics.json`` of a run (``tuneforge train``) or of ``tuneforge eval``.

    schema_version: the layout's version (:data:`SCHEMA_VERSION`; a file without it is version 0).
    parameters: the model's parameter counts (training runs).
    data: the dataset's counts (``train_examples``, ``val_examples``, ``train_records``, ``unused_keys`` ...; open).
    setup: what was tuned where.
    data_files: ``{path: sha256}`` of every data file the run read.
    quality: the data quality report (training runs).
    base: the base model's evaluator results, zero-shot.
    baselines: ``{baseline: {metric: value}}``, each prompting baseline's column.
    baseline_info: ``{baseline: labels and what it reported}``.
    baselines_skipped: ``{baseline: why it gave no column}``.
    steps: the optimizer steps trained.
    skipped_nonfinite_batches: batches whose loss was not finite and that were skipped.
    throughput: training time and tokens per second.
    segments: every start or resume of the run.
    train: the last logged training numbers (``train/loss`` ...).
    tuned: the tuned model's evaluator results.
    metric_info: ``{metric: what its evaluator declared}``.
    cost: ``{column: cost per query}``.
    wall_time_s: the whole run's wall time in seconds (all segments).
    trackers: ``{logger: its run id and log folder}``, the experiment trackers the run logged to.
    uncertainty: how the intervals were made.
    intervals: ``{column: {metric: interval}}``, every metric with per-example scores.
    changes: ``{"change" | "tuned-<baseline>": {metric: change}}``: tuned minus base, tuned minus each baseline.
    memorisation: the tuned model on training examples vs held-out.
    verdict: the verdict and its inputs.
    slices: ``{value: slice}`` with ``evidence.slice_by``.
    overfitting: train vs validation loss at the end of training.
    memory: the peak memory of the run's main process and the phase that reached it.
    precision: the precision the run trained in and why (``trainer.precision=auto`` decides per machine).
    compile: whether the decoder layers were compiled (``trainer.compile``).
    """

    schema_version: int
    parameters: Parameters
    data: Dict[str, Any]
    setup: Setup
    data_files: Dict[str, str]
    quality: Quality
    base: Scores
    baselines: Dict[str, Scores]
    baseline_info: Dict[str, BaselineInfo]
    baselines_skipped: Dict[str, str]
    steps: int
    skipped_nonfinite_batches: int
    throughput: Throughput
    segments: List[Segment]
    train: Scores
    tuned: Scores
    metric_info: Dict[str, MetricDescription]
    cost: Dict[str, ColumnCost]
    wall_time_s: float
    trackers: Dict[str, Dict[str, Any]]
    uncertainty: Uncertainty
    intervals: Dict[str, Dict[str, Interval]]
    changes: Dict[str, Dict[str, Change]]
    memorisation: Memorisation
    verdict: Verdict
    slices: Dict[str, Slice]
    overfitting: Overfitting
    memory: Memory
    precision: Precision
    compile: Compile


# ---------------------------------------------------------------------------
# Reading numbers out of a RunMetrics
# ---------------------------------------------------------------------------


def metric_interval(metrics: RunMetrics, column: str, metric: str) -> Interval:
    """The 95% interval of ``metric`` in ``column`` (``base``, ``tuned``, a baseline); ``{}`` when it has none."""
    return ((metrics.get("intervals") or {}).get(column) or {}).get(metric) or {}


def metric_change(metrics: RunMetrics, comparison: str, metric: str) -> Change:
    """The change of ``metric`` in ``comparison`` (``change``: tuned minus base; ``tuned-<baseline>``);
    ``{}`` when the run has none."""
    return ((metrics.get("changes") or {}).get(comparison) or {}).get(metric) or {}


def metric_description(metrics: RunMetrics, metric: str) -> MetricDescription:
    """What the evaluator declared about ``metric`` (``metric_info``); ``{}`` when nothing."""
    return (metrics.get("metric_info") or {}).get(metric) or {}


# ---------------------------------------------------------------------------
# The one writer and the one reader
# ---------------------------------------------------------------------------


def write_metrics(path: Union[str, Path], metrics: RunMetrics) -> Path:
    """Write ``metrics`` as ``metrics.json`` at ``path`` (a file, or a directory to write it into):
    ``schema_version`` set to :data:`SCHEMA_VERSION` (in ``metrics`` too), keys sorted, atomically
    (a temporary file renamed; none left behind when the write fails).  Returns the file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    metrics["schema_version"] = SCHEMA_VERSION
    from tuneforge.atomic import write_json

    write_json(path, metrics)
    return path


def read_metrics(path: Union[str, Path]) -> RunMetrics:
    """The ``metrics.json`` at ``path`` (a file, or the run directory holding it), upgraded in memory to the
    current layout (:func:`upgrade`; ``schema_version`` stays what the file says, absent for version 0).

    An ``OSError`` (no such file ...) propagates; a file that is not a JSON
    object, or whose ``schema_version`` this tuneforge does not know, is a
    one-line :class:`MetricsFileError` naming the file, its version and the
    versions this tuneforge reads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    text = path.read_text(encoding="utf-8")
    readable = f"this tuneforge reads schema versions 0 to {SCHEMA_VERSION}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MetricsFileError(f"{path}: not a metrics.json (invalid JSON: {exc}); {readable}") from None
    if not isinstance(value, dict):
        raise MetricsFileError(f"{path}: not a metrics.json (a JSON {type(value).__name__}, not an object); "
                               f"{readable}")
    version = value.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= SCHEMA_VERSION:
        raise MetricsFileError(f"{path}: metrics.json schema_version {version!r} is not one this tuneforge knows "
                               f"({readable}); a newer tuneforge wrote it: upgrade tuneforge to read it")
    return upgrade(value, version)


def upgrade(metrics: dict, version: int) -> RunMetrics:
    """``metrics`` of layout ``version`` in the current layout (its ``schema_version``, if any, kept).

    Version 0 (files written before ``schema_version``): the oldest ones held
    the tuned-minus-base differences as a top-level ``change`` (``{metric:
    value}``); they become ``changes.change``.
    """
    if version < 1:
        old_change = metrics.pop("change", None)
        if isinstance(old_change, dict) and "changes" not in metrics:
            metrics["changes"] = {"change": {name: {"value": value} for name, value in old_change.items()
                                             if isinstance(value, (int, float))}}
    return metrics  # type: ignore[return-value]

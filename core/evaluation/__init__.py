"""Evaluation: the public helpers for evaluator plugins (prompts, references, shared greedy
generation, predictions, per-example scores; see :mod:`tuneforge.evaluation.generation`) and for
baseline plugins (demonstrations; :mod:`~tuneforge.evaluation.baselines`) and retriever plugins
(search terms, ranking; :mod:`~tuneforge.evaluation.retrieval`), the evaluator runner
(:mod:`~tuneforge.evaluation.runner`) and the run report (:mod:`~tuneforge.evaluation.report`).

A run's ``metrics.json`` is read with :func:`read_metrics` into its typed model :class:`RunMetrics`
(:mod:`~tuneforge.evaluation.metrics_file`; :func:`metric_interval`, :func:`metric_change` and
:func:`metric_description` read one metric's interval, change and declaration out of it).

Evaluator plugins import from here: ``from tuneforge.evaluation import generate_predictions``.
"""

from tuneforge.evaluation.baselines import (
    demonstration_pool,
    examples_by_label,
    demonstration_turns,
    held_out_overlaps,
    is_plain_turn,
    query_text,
    with_demonstrations,
)
from tuneforge.evaluation.generation import (
    EvaluationPass,
    decode_outputs,
    few_shot_messages,
    generate,
    generate_predictions,
    merge_predictions,
    model_device,
    prompts_and_references,
    record_predictions,
    record_scores,
    split_example,
    stop_token_ids,
    user_message,
    with_few_shot,
)
from tuneforge.evaluation.metrics_file import (
    SCHEMA_VERSION,
    MetricsFileError,
    RunMetrics,
    metric_change,
    metric_description,
    metric_interval,
    read_metrics,
)
from tuneforge.evaluation.pairs import score_pairs
from tuneforge.evaluation.retrieval import rank_all, search_terms
from tuneforge.evaluation.sharding import batches_of, distributed_world, map_batches

__all__ = [
    "EvaluationPass", "batches_of", "decode_outputs", "distributed_world", "few_shot_messages", "generate",
    "generate_predictions", "map_batches", "merge_predictions", "model_device", "prompts_and_references",
    "record_predictions", "split_example", "stop_token_ids", "user_message", "with_few_shot",
    "demonstration_pool", "demonstration_turns", "examples_by_label", "held_out_overlaps", "is_plain_turn", "query_text",
    "record_scores", "with_demonstrations",
    "rank_all", "search_terms", "score_pairs",
    "SCHEMA_VERSION", "MetricsFileError", "RunMetrics", "metric_change", "metric_description", "metric_interval",
    "read_metrics",
]

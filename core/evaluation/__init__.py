"""Evaluation: the public helpers for evaluator plugins (prompts, references, shared greedy
generation, predictions; see :mod:`tuneforge.evaluation.generation`), the evaluator runner
(:mod:`~tuneforge.evaluation.runner`) and the run report (:mod:`~tuneforge.evaluation.report`).

Evaluator plugins import from here: ``from tuneforge.evaluation import generate_predictions``.
"""

from tuneforge.evaluation.generation import (
    EvaluationPass,
    few_shot_messages,
    generate,
    generate_predictions,
    merge_predictions,
    model_device,
    prompts_and_references,
    record_predictions,
    split_example,
    with_few_shot,
)
from tuneforge.evaluation.sharding import batches_of, distributed_world, map_batches

__all__ = [
    "EvaluationPass", "batches_of", "distributed_world", "few_shot_messages", "generate", "generate_predictions",
    "map_batches", "merge_predictions", "model_device", "prompts_and_references", "record_predictions", "split_example",
    "with_few_shot",
]

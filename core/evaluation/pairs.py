"""Held-out pairs scored by a margin (a chosen answer against a rejected one): what the ``preference`` and
``reward_accuracy`` evaluators share."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from tuneforge.evaluation.generation import EvaluationPass, record_scores
from tuneforge.evaluation.sharding import map_batches


def score_pairs(model, margins: Callable[[list], list], examples: Sequence[dict], batch_size: int,
                evaluation: Optional[EvaluationPass] = None, *, accuracy: str = "accuracy",
                margin: str = "margin") -> dict:
    """``{accuracy: share of pairs with a margin > 0 (a tie counts as wrong), margin: mean margin}``.

    ``margins(part) -> [float]`` gives each pair's margin (chosen minus rejected) for a batch of examples; it
    runs with the model in eval mode (restored after), on this rank's share of the batches under DDP
    (:func:`~tuneforge.evaluation.map_batches`).  Both per-pair scores are recorded for the run's intervals
    (Wilson for the accuracy, a t interval for the margin)."""
    was_training = model.training
    model.eval()
    try:
        values = [v for part in map_batches(margins, list(examples), batch_size, evaluation) for v in part]
    finally:
        model.train(was_training)
    hits = [1.0 if v > 0 else 0.0 for v in values]
    record_scores(accuracy, hits, evaluation=evaluation)
    record_scores(margin, values, evaluation=evaluation)
    return {accuracy: sum(hits) / len(hits), margin: sum(values) / len(values)}

"""Mistake: an evaluator returns a string where a number belongs."""

from dataclasses import dataclass

import tuneforge


@dataclass
class JudgeConfig:
    """verdict: what the judge says about every model."""

    verdict: str = "looks good"


def evaluate(model, tokenizer, examples, config):
    return {"score": config.verdict, "count": len(examples)}


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("judge", JudgeConfig, "returns a string score", evaluate=evaluate,
                                    metrics=(tuneforge.MetricInfo("score"), tuneforge.MetricInfo("count")))]

"""Evaluator ``forgetting``: the same metrics on a separate reference set of general tasks.

The reference set is a JSON-lines file (``evaluators.forgetting.path``) of
alpaca or chat records, e.g. general questions the base model already answers
correctly.  It is scored like held-out data, but on its own examples, before
and after training: a drop from base to tuned is what fine-tuning cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import MISSING

import tuneforge
from tuneforge.data import read_jsonl, tokenize_records
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluation import EvaluationPass
from tuneforge.plugins.evaluators import (CHOICE_ACCURACY, PERPLEXITY_METRICS, ChoiceConfig, PerplexityConfig,
                                          evaluate_choice, evaluate_perplexity)
from tuneforge.plugins.evaluators_generation import (BLEU_TOKENIZERS, GENERATION_METRICS, SCORE_KEYS, predict,
                                                     record_example_scores, score_predictions, valid_few_shot,
                                                     valid_pattern)
from tuneforge.validation import at_least, check, existing_path, is_placeholder, non_empty, one_of

VALID_METRICS = (*GENERATION_METRICS, "choice", "perplexity")


@dataclass
class ForgettingConfig:
    """path: the reference set (``.jsonl``; alpaca or chat records).  Required.
    metrics: which metrics to compute on it: any of ``exact_match``,
        ``contains``, ``regex``, ``rouge``, ``bleu``, ``chrf``, ``choice``,
        ``perplexity``.
    format: ``auto``, ``alpaca`` or ``chat`` (as ``data.format``).
    max_length: token limit when tokenizing the set (for ``perplexity``).
    max_new_tokens: most tokens generated per answer (as for ``exact_match``).
    batch_size: prompts generated at once.
    few_shot: demonstration turns put before every prompt (as for ``exact_match``).
    limit: use only the first N records of the set (None: all).
    strip: strip whitespace before comparing answers.
    lowercase: compare answers case-insensitively.
    collapse_whitespace: treat runs of whitespace as one space when comparing.
    pattern: the regular expression of the ``regex`` metric (None: each record's ``pattern_field``).
    pattern_field: the record key holding a per-record pattern for ``regex``.
    fullmatch: ``regex`` must match the whole answer.
    ignore_case: ``regex`` matches case-insensitively.
    use_stemmer: ``rouge`` stems words before matching.
    tokenize: ``bleu``'s sacrebleu tokenizer (``13a``, ``intl``, ``char`` ...).
    word_order: ``chrf``'s word n-gram order (0: chrF, 2: chrF++).
    choices_field: the record key holding the options of the ``choice`` metric.
    answer_field: the record key holding the correct option (its index or text).
    length_normalize: ``choice`` compares per-token rather than total log-likelihoods.
    """

    path: str = MISSING
    metrics: list = field(default_factory=lambda: ["exact_match"])
    format: str = "auto"
    max_length: int = 2048
    max_new_tokens: int = 64
    batch_size: int = 8
    few_shot: list = field(default_factory=list)
    limit: Optional[int] = None
    strip: bool = True
    lowercase: bool = False
    collapse_whitespace: bool = False
    pattern: Optional[str] = None
    pattern_field: str = "pattern"
    fullmatch: bool = False
    ignore_case: bool = False
    use_stemmer: bool = False
    tokenize: str = "13a"
    word_order: int = 0
    choices_field: str = "choices"
    answer_field: str = "answer"
    length_normalize: bool = False

    #: data files (absolute in config.yaml; their content hashes identify the run's data)
    DATA_FILES: ClassVar[tuple] = ("path",)

    def __post_init__(self) -> None:
        check(self, path=existing_path("file"), metrics=_metrics_problem, format=one_of("auto", "alpaca", "chat"),
              max_length=at_least(1), max_new_tokens=at_least(1), batch_size=at_least(1), few_shot=valid_few_shot,
              limit=at_least(1), pattern=valid_pattern, pattern_field=non_empty, tokenize=one_of(*BLEU_TOKENIZERS),
              word_order=at_least(0), choices_field=non_empty, answer_field=non_empty)


def _metrics_problem(metrics) -> Optional[str]:
    if not isinstance(metrics, (list, tuple)) or not metrics:
        return f"must be a non-empty list of metrics; valid: {', '.join(VALID_METRICS)}"
    unknown = [m for m in metrics if m not in VALID_METRICS]
    return f"unknown {unknown}; valid: {', '.join(VALID_METRICS)}" if unknown else None


def _sub_config(config_class, config):
    """An evaluator's own config built from the matching fields of the forgetting config."""
    return config_class(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config_class)
                           if hasattr(config, f.name)})


def load_reference_set(config, tokenizer, chat_template: Optional[str] = None) -> list:
    """The reference set's examples, rendered with ``chat_template`` (the training data's; None: the
    tokenizer's own)."""
    if not config.path or is_placeholder(config.path):
        raise ConfigError("evaluators.forgetting.path is not set: give a .jsonl file of general tasks the "
                          "base model already handles")
    records = read_jsonl(config.path)
    if not records:
        raise DataError(f"{config.path}: the forgetting reference set holds no records")
    examples, _ = tokenize_records(records, tokenizer, fmt=config.format, max_length=config.max_length,
                                   chat_template=chat_template)
    return examples if config.limit is None else examples[: int(config.limit)]


def evaluate_forgetting(model, tokenizer, examples, config: ForgettingConfig, *,
                        evaluation: Optional[EvaluationPass] = None) -> dict:
    """Metrics on the reference set; ``examples`` (the held-out split) is not used."""
    metrics = list(config.metrics)  # checked when the config was built
    reference = load_reference_set(config, tokenizer, evaluation.chat_template if evaluation else None)
    results: dict = {}
    rows = None
    for metric in metrics:
        if metric == "perplexity":
            results.update(evaluate_perplexity(model, tokenizer, reference,
                                               PerplexityConfig(batch_size=config.batch_size),
                                               evaluation=evaluation))
        elif metric == "choice":
            sub = _sub_config(ChoiceConfig, config)
            sub.limit = None
            results.update({"choice_accuracy": v for v in evaluate_choice(
                model, tokenizer, reference, sub, set_name="forgetting", evaluation=evaluation).values()})
            if evaluation is not None and "accuracy" in evaluation.scores:
                evaluation.scores["choice_accuracy"] = evaluation.scores.pop("accuracy")
                if "accuracy" in evaluation.scored_rows:
                    evaluation.scored_rows["choice_accuracy"] = evaluation.scored_rows.pop("accuracy")
        else:
            if rows is None:
                rows = predict(model, tokenizer, reference, config, set_name="forgetting", evaluation=evaluation)
            sub = _sub_config(GENERATION_METRICS[metric][0], config)
            record_example_scores(metric, rows, reference, sub, evaluation)
            results.update(score_predictions(metric, [r["output"] for r in rows], [r["reference"] for r in rows],
                                             reference, sub))
    return results


def _on_reference_set(info: tuneforge.MetricInfo, name: Optional[str] = None) -> tuneforge.MetricInfo:
    return dataclasses.replace(info, name=name or info.name, section="forgetting",
                               description=f"{info.description}, on the general reference set: a worse tuned "
                                           "value is what fine-tuning cost")


#: every metric the evaluator can return (``evaluators.forgetting.metrics`` picks them), in report section
#: ``forgetting``
FORGETTING_METRICS = (
    *(_on_reference_set(tuneforge.MetricInfo(SCORE_KEYS[m], description=d))
      for m, (_config, d) in GENERATION_METRICS.items()),
    _on_reference_set(CHOICE_ACCURACY, "choice_accuracy"),
    *(_on_reference_set(info) for info in PERPLEXITY_METRICS),
)


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("forgetting", ForgettingConfig,
                                    "the same metrics on a general reference set (base vs tuned)",
                                    evaluate=evaluate_forgetting, metrics=FORGETTING_METRICS)]

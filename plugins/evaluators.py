"""Evaluators ``perplexity`` (held-out loss), ``choice`` (multiple choice by option log-likelihood) and
``preference`` (held-out preference pairs by answer log-likelihood)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import tuneforge
from tuneforge.data import IGNORE_INDEX, pad_batch
from tuneforge.errors import DataError
from tuneforge.evaluation import (EvaluationPass, map_batches, prompts_and_references, record_predictions,
                                  record_scores, score_pairs, split_example, user_message)
from tuneforge.losses import causal_lm_logits, sequence_logps, trained_logits
from tuneforge.plugins.evaluators_generation import valid_few_shot
from tuneforge.validation import at_least, check, non_empty


@dataclass
class PerplexityConfig:
    """batch_size: examples per forward pass."""

    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self, batch_size=at_least(1))


def target_nll_per_row(model, batch) -> tuple:
    """``(nll, count)`` per row of a padded batch: the summed negative log-likelihood (float64) and the
    number of its target tokens (labels other than -100).  The output layer runs on the target
    positions alone (:func:`tuneforge.losses.trained_logits`), so a long prompt adds no
    ``length x vocab`` logits: on SmolLM2 a batch of 10 prompts of 800 tokens would hold three 1.5 GiB
    copies of them."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits, targets = trained_logits(model, batch)
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none").double()
        rows = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero()[:, 0]  # each target's row, in order
        size = batch["labels"].size(0)
        row_nll = torch.zeros(size, dtype=torch.float64, device=token_nll.device).index_add_(0, rows, token_nll)
        return row_nll, torch.bincount(rows, minlength=size)


def evaluate_perplexity(model, tokenizer, examples, config: PerplexityConfig, *,
                        evaluation: Optional[EvaluationPass] = None) -> dict:
    """Token-weighted mean loss of the targets, from the logits of the target positions alone
    (:func:`target_nll_per_row`); under DDP the batches are shared out across ranks
    (:func:`tuneforge.evaluation.map_batches`) and gathered in the original order.  Records each
    example's mean token loss with its token count as weight (their weighted mean is the loss) for
    the run's interval."""

    if not examples:
        return {}
    device = next(model.parameters()).device

    def batch_nll(part):
        batch = {k: v.to(device) for k, v in pad_batch(part, tokenizer.pad_token_id).items()}
        row_nll, row_n = target_nll_per_row(model, batch)
        return [float(v) for v in row_nll], [int(n) for n in row_n]

    total, count = 0.0, 0
    losses, weights = [], []
    for row_nll, row_n in map_batches(batch_nll, list(examples), config.batch_size, evaluation):
        total += sum(row_nll)
        count += sum(row_n)
        losses += [v / max(n, 1) for v, n in zip(row_nll, row_n)]
        weights += row_n
    loss = total / max(count, 1)
    if count:
        record_scores("loss", losses, weights=weights, evaluation=evaluation)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@dataclass
class ChoiceConfig:
    """Multiple choice / classification scored by the log-likelihood of each option.

    choices_field: record field holding the list of option strings.
    answer_field: record field with the correct option (its index, or its
        text); when the record has no such field the final assistant turn
        must equal one of the options.
    length_normalize: compare mean log-likelihood per option token instead of
        the sum (fairer between options of different length).
    few_shot: ``{user, assistant}`` turns put before every prompt.
    batch_size: option sequences per forward pass.
    limit: score only the first N held-out examples.
    """

    choices_field: str = "choices"
    answer_field: str = "answer"
    length_normalize: bool = False
    few_shot: list = field(default_factory=list)
    batch_size: int = 16
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        check(self, choices_field=non_empty, answer_field=non_empty, few_shot=valid_few_shot, batch_size=at_least(1),
              limit=at_least(1))


def choice_options(example: dict, config) -> tuple[list, int]:
    """``(options, index of the correct one)`` of an example's record."""
    record, source = example.get("record") or {}, example.get("source", "<example>")
    options = record.get(config.choices_field)
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise DataError(f"{source}: choice evaluator needs a list of at least two option strings in "
                        f"'{config.choices_field}' (set evaluators.choice.choices_field)")
    answer = record.get(config.answer_field)
    if answer is None:
        answer = split_example(example)[1]
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError(f"{source}: '{config.answer_field}' must be an option index or an option's text")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise DataError(f"{source}: answer index {answer} is outside the {len(options)} options")
        return options, answer
    stripped = [o.strip() for o in options]
    if answer.strip() not in stripped:
        raise DataError(f"{source}: answer {answer!r} is not one of the options {options}")
    return options, stripped.index(answer.strip())


def option_log_likelihoods(model, tokenizer, prompt: str, options: list, batch_size: int = 16) -> list:
    """``[(sum of log p(option tokens | prompt), option token count)]`` for each option."""
    return score_continuations(model, tokenizer, [(prompt, o) for o in options], batch_size)


def score_continuations(model, tokenizer, pairs: list, batch_size: int = 16,
                        evaluation: Optional[EvaluationPass] = None) -> list:
    """``[(log-likelihood, token count)]`` of each continuation given its prompt (texts), batched;
    with ``evaluation`` under DDP the batches are shared out across ranks and gathered in order."""

    device = next(model.parameters()).device
    sequences = []
    for prompt, continuation in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        option_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not option_ids:
            raise DataError(f"choice option {continuation!r} is empty after tokenization")
        sequences.append({"input_ids": prompt_ids + option_ids,
                          "labels": [IGNORE_INDEX] * len(prompt_ids) + option_ids})

    def score(part):
        batch = {k: v.to(device) for k, v in pad_batch(part, tokenizer.pad_token_id).items()}
        row_nll, row_n = target_nll_per_row(model, batch)
        return [(-float(v), int(n)) for v, n in zip(row_nll, row_n)]

    return [item for part in map_batches(score, sequences, batch_size, evaluation) for item in part]


def evaluate_choice(model, tokenizer, examples, config: ChoiceConfig, set_name: str = "val", *,
                    evaluation: Optional[EvaluationPass] = None) -> dict:
    examples = list(examples) if config.limit is None else list(examples)[: int(config.limit)]
    if not examples:
        return {}
    prompts, _ = prompts_and_references(tokenizer, examples, config.few_shot, evaluation=evaluation)
    pairs, spans, answers = [], [], []
    for example, prompt in zip(examples, prompts):
        options, answer = choice_options(example, config)
        spans.append((len(pairs), options))
        pairs += [(prompt, option) for option in options]
        answers.append(answer)
    scores = score_continuations(model, tokenizer, pairs, config.batch_size, evaluation)
    hits, rows, per_example = 0, [], []
    for example, prompt, (offset, options), answer in zip(examples, prompts, spans, answers):
        values = [s / n if config.length_normalize else s for s, n in scores[offset:offset + len(options)]]
        chosen = max(range(len(options)), key=values.__getitem__)
        hits += chosen == answer
        per_example.append(float(chosen == answer))
        rows.append({"source": example.get("source", ""), "prompt": prompt,
                     "message": user_message(example.get("messages") or []), "reference": options[answer],
                     "output": options[chosen]})
    record_predictions(set_name, "choice", tuple(prompts), rows, evaluation=evaluation)
    record_scores("accuracy", per_example, evaluation=evaluation, rows=rows)
    return {"accuracy": hits / len(examples)}


@dataclass
class PreferenceConfig:
    """batch_size: preference pairs per forward pass (each pair is two sequences)."""

    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self, batch_size=at_least(1))


PAIR_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def evaluate_preference(model, tokenizer, examples, config: PreferenceConfig, *,
                        evaluation: Optional[EvaluationPass] = None) -> dict:
    """On held-out preference pairs: ``accuracy``, the share of pairs whose chosen answer has the higher mean
    log-probability per answer token (a tie counts as wrong), and ``logp_margin``, the mean of that difference.
    The same measure for the base model and the tuned one, whatever the loss (the loss's own ``val/reward_*``
    are relative to its reference, zero for the base model by definition); per-pair scores are recorded for
    the run's intervals."""
    import torch

    examples = list(examples)
    if not examples:
        return {}
    for example in examples:
        if any(key not in example for key in PAIR_KEYS):
            raise DataError(f"{example.get('source', '<held-out example>')}: evaluators=[preference] needs "
                            "preference pairs (chosen + rejected answers); this held-out example is not one")
    device = next(model.parameters()).device

    def average_logps(part, side):
        rows = [{key: example[f"{side}_{key}"] for key in ("input_ids", "labels")} for example in part]
        batch = {k: v.to(device) for k, v in pad_batch(rows, tokenizer.pad_token_id).items()}
        logits = causal_lm_logits(model, batch["input_ids"], batch["attention_mask"])
        total, count = sequence_logps(logits, batch["labels"])
        return total / count.clamp(min=1)

    def margins(part):
        with torch.no_grad():
            return [float(v) for v in average_logps(part, "chosen") - average_logps(part, "rejected")]

    return score_pairs(model, margins, examples, config.batch_size, evaluation, margin="logp_margin")


PERPLEXITY_METRICS = (
    tuneforge.MetricInfo("loss", higher_is_better=False, is_loss=True,
                         description="mean token loss of the held-out targets"),
    tuneforge.MetricInfo("perplexity", higher_is_better=False, description="exp(loss)"),
)
CHOICE_ACCURACY = tuneforge.MetricInfo("accuracy", description="share of examples whose most likely option is "
                                                               "the answer")
PREFERENCE_METRICS = (
    tuneforge.MetricInfo("accuracy", primary=True,
                         description="share of held-out pairs whose chosen answer is likelier "
                                     "(mean log-prob per token)"),
    tuneforge.MetricInfo("logp_margin", description="mean log-prob per token of the chosen answer minus the "
                                                    "rejected one's"),
)


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("perplexity", PerplexityConfig, "held-out loss and perplexity",
                                    evaluate=evaluate_perplexity, metrics=PERPLEXITY_METRICS),
            tuneforge.EvaluatorSpec("choice", ChoiceConfig, "multiple choice by log-likelihood of each option",
                                    evaluate=evaluate_choice, metrics=(CHOICE_ACCURACY,)),
            tuneforge.EvaluatorSpec("preference", PreferenceConfig,
                                    "held-out preference pairs: how often the chosen answer is the likelier one",
                                    evaluate=evaluate_preference, metrics=PREFERENCE_METRICS)]

"""Losses: ``cross_entropy``, ``chunked_cross_entropy``, ``dpo`` and ``distillation``.

Each ``build(config, context)`` returns ``loss_fn(model, batch) -> LossOutput``
whose ``loss`` is a mean over ``num_tokens`` units; the trainer turns that into
a per-unit mean over the whole accumulation window (see docs/losses.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

import tuneforge
from tuneforge.errors import ConfigError, ModelError
from tuneforge.losses import (
    LossOutput,
    causal_lm_logits,
    chunked_cross_entropy_sums,
    cross_entropy_sums,
    dpo_loss,
    final_hidden_states,
    kl_div_sum,
    sequence_logps,
    shift_for_next_token,
    token_nll_sum,
)
from tuneforge.validation import at_least, between, check, greater_than, one_of


@dataclass
class CrossEntropyConfig:
    """Next-token cross entropy on trained labels (labels of -100 carry no loss).

    label_smoothing: as in ``torch.nn.functional.cross_entropy`` (0 = none).
    z_loss: weight of the z-loss ``mean(logsumexp(logits)^2)`` over trained
        tokens, added to the loss (keeps logits small; PaLM used 1e-4); 0 = off.
    """

    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def __post_init__(self) -> None:
        check(self, label_smoothing=between(0, 1), z_loss=at_least(0))


@dataclass
class ChunkedCrossEntropyConfig:
    """The same value as ``cross_entropy``, computed without materialising all logits.

    The model returns its last hidden states; the output layer is applied to
    ``chunk_size`` trained tokens at a time under activation checkpointing, so
    peak logits memory is ``chunk_size x vocab`` instead of ``tokens x vocab``.
    label_smoothing: as for ``cross_entropy``.
    z_loss: as for ``cross_entropy``.
    chunk_size: trained tokens per chunk (smaller: less memory, more passes).
    """

    label_smoothing: float = 0.0
    z_loss: float = 0.0
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        check(self, label_smoothing=between(0, 1), z_loss=at_least(0), chunk_size=at_least(1))


@dataclass
class DPOConfig:
    """Direct preference optimisation on ``chosen_*`` / ``rejected_*`` batches.

    The reference model is the base model with the adapter disabled (PEFT
    adapters: no second copy); with ``adapter=full`` or ``freeze`` a frozen
    copy of the model is taken once, the first time the loss runs (before the
    first optimizer step).
    beta: strength of the implicit KL penalty to the reference (higher = stay
        closer).
    variant: ``sigmoid`` (the DPO paper) or ``ipo`` (squared loss on
        length-averaged log-probabilities, Azar et al.).
    label_smoothing: assumed fraction of flipped preference labels
        (conservative DPO, ``sigmoid`` only); 0 = off, below 0.5 (at 0.5
        chosen and rejected would weigh the same).
    """

    beta: float = 0.1
    variant: str = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check(self, beta=greater_than(0), variant=one_of("sigmoid", "ipo"),
              label_smoothing=between(0, 0.5, include_high=False))


@dataclass
class DistillationConfig:
    """Knowledge distillation from a teacher's logits, mixed with cross entropy.

    loss = alpha * temperature^2 * KL(teacher || student) + (1 - alpha) * CE,
    both per trained token.
    teacher: a model-source config mapping, e.g. ``{name: hf, path: ...}`` or
        ``{name: tiny, seed: 1}``; it must use the student's tokenizer (same
        vocabulary), checked when the loss is built.  Required.
    temperature: softens both distributions before the KL (>= 1 exposes more
        of the teacher's ranking).
    alpha: weight of the KL term (1 = pure distillation, 0 = plain CE).
    """

    teacher: Any = MISSING
    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check(self, teacher=_teacher_problem, temperature=greater_than(0), alpha=between(0, 1))


def _teacher_problem(teacher) -> Optional[str]:
    if isinstance(teacher, Mapping) and isinstance(teacher.get("name"), str) and teacher.get("name"):
        return None
    return ("must be a model-source mapping with a 'name', e.g. "
            "loss.teacher={name:hf,path:HuggingFaceTB/SmolLM2-360M-Instruct} or {name:tiny,seed:1}; "
            f"got {teacher!r}")


# ---------------------------------------------------------------------------
# cross entropy
# ---------------------------------------------------------------------------


def _ce_output(nll, z, count, z_weight) -> LossOutput:
    denominator = max(count, 1)
    loss = nll / denominator
    metrics = {}
    if z_weight:
        loss = loss + z_weight * (z / denominator)
        metrics["z_loss"] = (z / denominator).detach()
        metrics["ce"] = (nll / denominator).detach()
    return LossOutput(loss=loss, num_tokens=count, metrics=metrics)


def build_cross_entropy(config: CrossEntropyConfig, context=None):
    def cross_entropy(model, batch) -> LossOutput:
        logits = causal_lm_logits(model, batch["input_ids"], batch.get("attention_mask"))
        logits, labels = shift_for_next_token(logits, batch["labels"])
        nll, z, count = cross_entropy_sums(logits, labels, config.label_smoothing, with_z=bool(config.z_loss))
        return _ce_output(nll, z, count, config.z_loss)

    return cross_entropy


def build_chunked_cross_entropy(config: ChunkedCrossEntropyConfig, context=None):
    def chunked_cross_entropy(model, batch) -> LossOutput:
        hidden, lm_head = final_hidden_states(model, batch["input_ids"], batch.get("attention_mask"))
        nll, z, count = chunked_cross_entropy_sums(hidden, batch["labels"], lm_head, config.chunk_size,
                                                   config.label_smoothing, with_z=bool(config.z_loss))
        return _ce_output(nll, z, count, config.z_loss)

    return chunked_cross_entropy


# ---------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------

PREFERENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def _pad_right(tensor, length, value):
    import torch.nn.functional as F

    return F.pad(tensor, (0, length - tensor.size(1)), value=value)


def _pair_batch(batch):
    """Chosen and rejected stacked into one ``(2*pairs, length)`` batch (one forward pass)."""
    import torch

    missing = [key for key in PREFERENCE_KEYS if key not in batch]
    if missing:
        raise ConfigError(f"loss=dpo needs preference batches with {', '.join(PREFERENCE_KEYS)}; the batch "
                          f"lacks {missing} (has {sorted(batch)}): use a preference dataset")
    length = max(batch["chosen_input_ids"].size(1), batch["rejected_input_ids"].size(1))
    parts = {"input_ids": [], "labels": [], "attention_mask": []}
    for side in ("chosen", "rejected"):
        ids = batch[f"{side}_input_ids"]
        mask = batch.get(f"{side}_attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        parts["input_ids"].append(_pad_right(ids, length, 0))
        parts["labels"].append(_pad_right(batch[f"{side}_labels"], length, -100))
        parts["attention_mask"].append(_pad_right(mask, length, 0))
    return {key: torch.cat(value) for key, value in parts.items()}


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class _FrozenReference:
    """A frozen copy of a non-PEFT model, taken the first time it is needed."""

    def __init__(self):
        self.source_id = None
        self.copy = None

    def get(self, model):
        import copy

        if self.copy is None or self.source_id != id(model):
            self.copy = copy.deepcopy(model).eval()
            self.copy.requires_grad_(False)
            self.source_id = id(model)
        return self.copy


def build_dpo(config: DPOConfig, context=None):
    import torch

    frozen = _FrozenReference()

    def logps(model, pairs):
        logits = causal_lm_logits(model, pairs["input_ids"], pairs["attention_mask"])
        total, count = sequence_logps(logits, pairs["labels"])
        if config.variant == "ipo":
            total = total / count.clamp(min=1)
        return total

    def dpo(model, batch) -> LossOutput:
        pairs = _pair_batch(batch)
        n = batch["chosen_input_ids"].size(0)
        policy = logps(model, pairs)
        with torch.no_grad():
            if _is_peft(model):
                with model.disable_adapter():
                    reference = logps(model, pairs)
            else:
                reference = logps(frozen.get(model), pairs)
        losses = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], beta=config.beta,
                          variant=config.variant, label_smoothing=config.label_smoothing)
        chosen_reward = config.beta * (policy[:n] - reference[:n]).detach()
        rejected_reward = config.beta * (policy[n:] - reference[n:]).detach()
        metrics = {"reward_chosen": chosen_reward.mean(), "reward_rejected": rejected_reward.mean(),
                   "reward_margin": (chosen_reward - rejected_reward).mean(),
                   "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
                   "logp_margin": (policy[:n] - policy[n:]).detach().mean()}
        return LossOutput(loss=losses.mean(), num_tokens=n, metrics=metrics)

    return dpo


# ---------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------


def _check_same_tokenizer(student_tokenizer, teacher_tokenizer, source) -> None:
    student_size, teacher_size = len(student_tokenizer), len(teacher_tokenizer)
    if student_size != teacher_size or student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ModelError(f"loss.teacher={source}: the teacher's tokenizer differs from the student's "
                         f"(vocabulary sizes {teacher_size} vs {student_size}); distillation needs the "
                         "same tokenizer: pick a teacher of the same model family")


def build_distillation(config: DistillationConfig, context):
    import torch

    teacher_config = config.teacher
    problem = _teacher_problem(teacher_config)
    if problem:  # a DistillationConfig() built without a teacher (MISSING)
        raise ConfigError(f"loss.teacher {problem}")
    source = ",".join(f"{k}:{v}" for k, v in teacher_config.items())
    teacher, teacher_tokenizer = context.load_model(teacher_config)
    _check_same_tokenizer(context.tokenizer, teacher_tokenizer, "{" + source + "}")
    teacher.eval()
    teacher.requires_grad_(False)
    vocab = len(context.tokenizer)
    temperature, alpha = config.temperature, config.alpha

    def distillation(model, batch) -> LossOutput:
        nonlocal teacher
        logits = causal_lm_logits(model, batch["input_ids"], batch.get("attention_mask"))
        device = logits.device
        if next(teacher.parameters()).device != device:
            teacher = teacher.to(device)
        with torch.no_grad():
            teacher_logits = causal_lm_logits(teacher, batch["input_ids"], batch.get("attention_mask"))
        # models may pad their output layer beyond the tokenizer; compare real tokens only
        kl, count = kl_div_sum(logits[..., :vocab], teacher_logits[..., :vocab], batch["labels"], temperature)
        nll, _ = token_nll_sum(*shift_for_next_token(logits, batch["labels"]))
        denominator = max(count, 1)
        loss = (alpha * temperature ** 2 * kl + (1 - alpha) * nll) / denominator
        metrics = {"kl": (kl / denominator).detach(), "ce": (nll / denominator).detach()}
        return LossOutput(loss=loss, num_tokens=count, metrics=metrics)

    return distillation


@tuneforge.hookimpl
def tuneforge_losses():
    return [
        tuneforge.LossSpec("cross_entropy", CrossEntropyConfig,
                           "next-token cross entropy (label smoothing, z-loss)", build=build_cross_entropy),
        tuneforge.LossSpec("chunked_cross_entropy", ChunkedCrossEntropyConfig,
                           "cross entropy without materialising all logits", build=build_chunked_cross_entropy),
        tuneforge.LossSpec("dpo", DPOConfig, "direct preference optimisation (sigmoid, ipo)", build=build_dpo,
                           requires=("preference",)),
        tuneforge.LossSpec("distillation", DistillationConfig, "KL to a teacher's logits mixed with CE",
                           build=build_distillation),
    ]

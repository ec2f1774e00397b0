"""Losses: ``cross_entropy``, ``chunked_cross_entropy``, the preference losses ``dpo``, ``orpo``, ``simpo`` and
``kto`` (in :mod:`tuneforge.plugins.losses_preference`), and ``distillation``.

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
from tuneforge.data import IGNORE_INDEX
from tuneforge.errors import ConfigError, ModelError
from tuneforge.losses import (
    LossOutput,
    ReferenceModel,
    causal_lm_logits,
    chunked_cross_entropy_sums,
    chunked_logits_bytes,
    cross_entropy_logits_bytes,
    dpo_loss,
    final_hidden_states,
    kl_div_sum,
    kto_loss,
    kto_reference_point,
    model_inputs,
    orpo_loss,
    sequence_logps,
    shift_for_next_token,
    simpo_loss,
    token_nll_sum,
    trained_positions,
)
from tuneforge.validation import at_least, between, check, greater_than, one_of


@dataclass
class CrossEntropyConfig:
    """Next-token cross entropy on trained labels (labels of -100 carry no loss).

    The output layer runs on the trained positions only (no full
    ``length x vocab`` logits, see ``tuneforge.losses.trained_positions``), a chunk of them at
    a time, so not even their logits are kept (``tuneforge.linear_cross_entropy``).

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
class ORPOConfig:
    """Odds-ratio preference optimisation (Hong et al. 2024) on ``chosen_*`` / ``rejected_*`` batches.

    Reference-free (no reference forward pass): the chosen answer's mean token
    NLL plus ``beta`` times ``-log sigmoid(log odds ratio)`` of chosen over
    rejected, on length-averaged log-probabilities.
    beta: weight of the odds-ratio term (the paper's lambda; TRL's ``beta``);
        0 = plain SFT on the chosen answers.
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        check(self, beta=at_least(0))


@dataclass
class SimPOConfig:
    """Simple preference optimisation (Meng et al. 2024) on ``chosen_*`` / ``rejected_*`` batches.

    Reference-free: ``-log sigmoid(beta * (avg logp chosen - avg logp
    rejected) - gamma)`` on length-averaged log-probabilities.
    beta: scale of the reward difference (the paper uses 2.0 to 2.5).
    gamma: target reward margin subtracted inside the sigmoid (the paper:
        gamma/beta around 0.5).
    label_smoothing: assumed fraction of flipped preference labels (as
        TRL's CPO ``simpo``); 0 = off, below 0.5.
    sft_weight: weight of an added mean token NLL of the chosen answer (TRL's
        ``cpo_alpha``); 0 = pure SimPO.
    """

    beta: float = 2.0
    gamma: float = 1.0
    label_smoothing: float = 0.0
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        check(self, beta=greater_than(0), gamma=at_least(0), label_smoothing=between(0, 0.5, include_high=False),
              sft_weight=at_least(0))


@dataclass
class KTOConfig:
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired ``kto`` examples (an answer marked
    desirable or undesirable).

    The reference model is the base model with the adapter disabled, as for
    ``dpo`` (a frozen copy with ``adapter=full`` / ``freeze``).  The reference
    point is KL(policy || reference) estimated in the batch from mismatched
    pairs (prompt i with the answer of example i-1), clamped at 0 and not
    differentiated; a batch of one example pairs it with itself.
    beta: strength of the implicit KL penalty to the reference (higher = stay
        closer).
    desirable_weight: weight of the desirable examples' loss (lambda_D).
    undesirable_weight: weight of the undesirable examples' loss (lambda_U);
        the paper keeps ``desirable_weight * n_desirable /
        (undesirable_weight * n_undesirable)`` between 1 and 4/3.
    """

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        check(self, beta=greater_than(0), desirable_weight=greater_than(0), undesirable_weight=greater_than(0))


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
        nll, z, count = trained_positions(model, batch).cross_entropy_sums(config.label_smoothing,
                                                                           with_z=bool(config.z_loss))
        return _ce_output(nll, z, count, config.z_loss)

    return cross_entropy


def _cross_entropy_logits_bytes(config: CrossEntropyConfig, work) -> float:
    # a plain output layer runs in chunks (tuneforge.linear_cross_entropy); one with its own forward (soft-capped
    # logits, an adapter on it) builds the trained positions' logits, which the plan then undercounts
    return cross_entropy_logits_bytes(work)


def _chunked_logits_bytes(config: ChunkedCrossEntropyConfig, work) -> float:
    return chunked_logits_bytes(work, config.chunk_size)


def build_chunked_cross_entropy(config: ChunkedCrossEntropyConfig, context=None):
    def chunked_cross_entropy(model, batch) -> LossOutput:
        hidden, lm_head = final_hidden_states(model, **model_inputs(model, batch))
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


def _pair_batch(batch, loss: str = "dpo"):
    """Chosen and rejected stacked into one ``(2*pairs, length)`` batch (one forward pass)."""
    import torch

    missing = [key for key in PREFERENCE_KEYS if key not in batch]
    if missing:
        raise ConfigError(f"loss={loss} needs preference batches with {', '.join(PREFERENCE_KEYS)}; the batch "
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


def _pair_metrics(chosen_reward, rejected_reward) -> dict:
    """Reward metrics of preference pairs (the loss's own implicit rewards, detached)."""
    chosen_reward, rejected_reward = chosen_reward.detach(), rejected_reward.detach()
    return {"reward_chosen": chosen_reward.mean(), "reward_rejected": rejected_reward.mean(),
            "reward_margin": (chosen_reward - rejected_reward).mean(),
            "reward_accuracy": (chosen_reward > rejected_reward).float().mean()}


def build_dpo(config: DPOConfig, context=None):
    reference_model = ReferenceModel()

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
        reference = reference_model.run(model, logps, pairs)
        losses = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], beta=config.beta,
                          variant=config.variant, label_smoothing=config.label_smoothing)
        metrics = _pair_metrics(config.beta * (policy[:n] - reference[:n]), config.beta * (policy[n:] - reference[n:]))
        metrics["logp_margin"] = (policy[:n] - policy[n:]).detach().mean()
        return LossOutput(loss=losses.mean(), num_tokens=n, metrics=metrics)

    return dpo


# ---------------------------------------------------------------------------
# ORPO, SimPO (reference-free), KTO (unpaired)
# ---------------------------------------------------------------------------


def _average_pair_logps(model, batch, loss: str):
    """``(chosen, rejected)`` length-averaged log-probabilities of a preference batch (one forward pass)."""
    pairs = _pair_batch(batch, loss)
    n = batch["chosen_input_ids"].size(0)
    logits = causal_lm_logits(model, pairs["input_ids"], pairs["attention_mask"])
    total, count = sequence_logps(logits, pairs["labels"])
    average = total / count.clamp(min=1)
    return average[:n], average[n:]


def build_orpo(config: ORPOConfig, context=None):
    def orpo(model, batch) -> LossOutput:
        chosen, rejected = _average_pair_logps(model, batch, "orpo")
        losses, log_odds = orpo_loss(chosen, rejected, beta=config.beta)
        metrics = _pair_metrics(config.beta * chosen, config.beta * rejected)
        metrics.update(nll=-chosen.detach().mean(), log_odds_ratio=log_odds.detach().mean())
        return LossOutput(loss=losses.mean(), num_tokens=chosen.size(0), metrics=metrics)

    return orpo


def build_simpo(config: SimPOConfig, context=None):
    def simpo(model, batch) -> LossOutput:
        chosen, rejected = _average_pair_logps(model, batch, "simpo")
        losses = simpo_loss(chosen, rejected, beta=config.beta, gamma=config.gamma,
                            label_smoothing=config.label_smoothing)
        if config.sft_weight:
            losses = losses - config.sft_weight * chosen
        metrics = _pair_metrics(config.beta * chosen, config.beta * rejected)
        metrics["nll"] = -chosen.detach().mean()
        return LossOutput(loss=losses.mean(), num_tokens=chosen.size(0), metrics=metrics)

    return simpo


KTO_KEYS = ("input_ids", "labels", "kto_label")


def _mismatched_batch(batch):
    """Each prompt with the answer of the example before it (the first with the last's): the pairs KTO's
    reference point is estimated on.  Prompt = the tokens before the first trained label."""
    import torch

    labels, ids = batch["labels"], batch["input_ids"]
    lengths = batch["attention_mask"].sum(-1).tolist()
    starts = [int((row != IGNORE_INDEX).nonzero()[0]) for row in labels]
    rows = []
    for i in range(ids.size(0)):
        j = (i - 1) % ids.size(0)
        prompt = ids[i, :starts[i]]
        answer_ids, answer_labels = ids[j, starts[j]:lengths[j]], labels[j, starts[j]:lengths[j]]
        rows.append((torch.cat([prompt, answer_ids]),
                     torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer_labels])))
    length = max(len(r[0]) for r in rows)
    return {"input_ids": torch.stack([_pad_right(r[0][None], length, 0)[0] for r in rows]),
            "labels": torch.stack([_pad_right(r[1][None], length, IGNORE_INDEX)[0] for r in rows]),
            "attention_mask": torch.stack([_pad_right(torch.ones_like(r[0])[None], length, 0)[0] for r in rows])}


def _kto_metrics(rewards, desirable, kl) -> dict:
    """Desirable and undesirable mean rewards, their margin, and the share of examples whose reward has the
    sign of its mark (KTO data has no pairs: see docs/losses.md)."""
    metrics = {"kl": kl}
    good, bad = rewards[desirable], rewards[~desirable]
    if good.numel():
        metrics["reward_desirable"] = good.mean()
    if bad.numel():
        metrics["reward_undesirable"] = bad.mean()
    if good.numel() and bad.numel():
        metrics["reward_margin"] = good.mean() - bad.mean()
    metrics["reward_accuracy"] = _sign_accuracy(rewards, desirable)
    return metrics


def _sign_accuracy(rewards, desirable):
    """Share of examples whose reward is above 0 when desirable, below 0 when undesirable."""
    return ((rewards > 0) & desirable | (rewards < 0) & ~desirable).float().mean()


def build_kto(config: KTOConfig, context=None):
    reference_model = ReferenceModel()

    def logps(model, batch):
        logits = causal_lm_logits(model, batch["input_ids"], batch["attention_mask"])
        return sequence_logps(logits, batch["labels"])[0]

    def both(model, batch, mismatched):
        return logps(model, batch), logps(model, mismatched)

    def kto(model, batch) -> LossOutput:
        import torch

        missing = [key for key in KTO_KEYS if key not in batch]
        if missing:
            raise ConfigError(f"loss=kto needs kto batches with {', '.join(KTO_KEYS)}; the batch lacks {missing} "
                              f"(has {sorted(batch)}): use KTO data (records with a true/false 'label' or 'kto_tag')")
        desirable = batch["kto_label"][:, 0].bool()
        mismatched = _mismatched_batch(batch)
        policy = logps(model, batch)
        with torch.no_grad():
            policy_mismatched = logps(model, mismatched)
        reference, reference_mismatched = reference_model.run(model, both, batch, mismatched)
        kl = kto_reference_point(policy_mismatched, reference_mismatched, across_processes=model.training)
        losses = kto_loss(policy, reference, desirable, kl, beta=config.beta,
                          desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)
        rewards = config.beta * (policy - reference).detach()
        return LossOutput(loss=losses.mean(), num_tokens=desirable.numel(),
                          metrics=_kto_metrics(rewards, desirable, kl))

    return kto


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
        logits = causal_lm_logits(model, **model_inputs(model, batch))
        device = logits.device
        if next(teacher.parameters()).device != device:
            teacher = teacher.to(device)
        with torch.no_grad():  # the teacher's own attention implementation decides its packed inputs
            teacher_logits = causal_lm_logits(teacher, **model_inputs(teacher, batch))
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
                           "next-token cross entropy (label smoothing, z-loss)", build=build_cross_entropy,
                           supports_packing=True, logits_bytes=_cross_entropy_logits_bytes),
        tuneforge.LossSpec("chunked_cross_entropy", ChunkedCrossEntropyConfig,
                           "cross entropy without materialising all logits", build=build_chunked_cross_entropy,
                           supports_packing=True, logits_bytes=_chunked_logits_bytes),
        tuneforge.LossSpec("dpo", DPOConfig, "direct preference optimisation (sigmoid, ipo)", build=build_dpo,
                           requires=("preference",)),
        tuneforge.LossSpec("orpo", ORPOConfig, "odds-ratio preference optimisation (reference-free)",
                           build=build_orpo, requires=("preference",)),
        tuneforge.LossSpec("simpo", SimPOConfig, "simple preference optimisation (reference-free)",
                           build=build_simpo, requires=("preference",)),
        tuneforge.LossSpec("kto", KTOConfig, "Kahneman-Tversky optimisation on unpaired desirable/undesirable "
                           "answers", build=build_kto, requires=("kto",)),
        tuneforge.LossSpec("distillation", DistillationConfig, "KL to a teacher's logits mixed with CE",
                           build=build_distillation, supports_packing=True),
    ]

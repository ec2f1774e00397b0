"""``loss=grpo``: group relative policy optimisation (Shao et al. 2024, DeepSeekMath) with the run's rewards.

Each training batch holds prompts (``prompt`` examples, or the prompt part of alpaca/chat
examples, i.e. the tokens before the first trained one).  The loss samples ``group_size``
completions per prompt from the current policy, scores them with the run's rewards
(``rewards=[...]``, ``LossContext.rewards``; each completion with its example's source
record), and turns the scores into group-relative advantages
``A = (r - mean of the group) / (std of the group + std_eps)`` (without the division when
``scale_rewards=false``).  It then minimises, per completion token,

    -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL_k3

with ``ratio = pi(token) / pi_old(token)`` (one optimisation step per generation: ``pi_old`` is
the policy that sampled, detached, so the ratio is 1 and its gradient that of ``log pi``) and the
k3 estimator of the KL to the reference ``exp(ref - logp) - (ref - logp) - 1``.  The reference is
the base model: a PEFT model with its adapter disabled (no second copy of the weights); with
``adapter=full``/``freeze`` a frozen copy of the model, taken the first time the loss runs.

Sampling draws from the process's torch random generator, which every checkpoint saves for
each rank and restores on resume (``rng_states``), so a resumed run samples what the
uninterrupted one did.  Validation batches sample from a generator seeded with ``seed`` in a
forked RNG, so validating does not move the training samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tuneforge
from tuneforge.data import IGNORE_INDEX
from tuneforge.errors import ConfigError
from tuneforge.evaluation import decode_outputs, stop_token_ids
from tuneforge.losses import LossOutput, ReferenceModel, causal_lm_logits
from tuneforge.validation import at_least, check, greater_than, one_of


def _group_size(value) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
        return None
    return (f"must be >= 2: advantages compare the completions of one prompt with each other (with one, every "
            f"advantage is 0 and nothing trains), got {value!r}")


@dataclass
class GRPOConfig:
    """Group relative policy optimisation on completions sampled from the policy, scored by the run's
    rewards (``rewards=[...]``).

    group_size: completions sampled per prompt (at least 2); a batch of ``loader.batch_size`` prompts
        generates ``batch_size x group_size`` completions.
    max_new_tokens: the longest completion sampled.
    temperature: sampling temperature (the log-probabilities are taken at the same temperature).
    top_p: nucleus sampling: sample from the smallest set of tokens whose probability reaches it (1: all).
    epsilon: the clip range of the probability ratio, ``[1 - epsilon, 1 + epsilon_high]``.
    epsilon_high: the upper clip bound's epsilon (null: ``epsilon``; DAPO uses a larger one).
    beta: weight of the KL penalty to the reference (the base model); 0 leaves it out.
    scale_rewards: divide the advantages by the group's reward standard deviation (false: Dr. GRPO's
        unscaled advantages).
    std_eps: added to the standard deviation before dividing.
    aggregation: ``token`` (the mean over all completion tokens of the batch, over the accumulation
        window and devices too) or ``sequence`` (each completion's token mean, then the mean over
        completions: the GRPO paper).
    seed: seed of the sampling during validation (training samples from the run's RNG).
    """

    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    beta: float = 0.04
    scale_rewards: bool = True
    std_eps: float = 1e-4
    aggregation: str = "token"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self, group_size=_group_size, max_new_tokens=at_least(1), temperature=greater_than(0),
              top_p=lambda v: None if isinstance(v, (int, float)) and 0 < v <= 1 else f"must be in (0, 1], got {v!r}",
              epsilon=at_least(0), epsilon_high=at_least(0), beta=at_least(0), std_eps=at_least(0),
              aggregation=one_of("token", "sequence"), seed=at_least(0))


# ---------------------------------------------------------------------------
# the objective (public: the tests compare it with TRL's and with the paper's formula)
# ---------------------------------------------------------------------------


def group_advantages(rewards, group_size: int, scale: bool = True, std_eps: float = 1e-4):
    """``(rewards - group mean) / (group std + std_eps)`` for ``rewards`` ``(prompts * group_size,)``, the
    completions of one prompt next to each other; the std is the unbiased one (as TRL's); ``scale=False``
    leaves out the division."""
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + std_eps)
    return advantages.reshape(-1)


def k3_kl(logps, ref_logps):
    """The k3 estimator of KL(policy || reference) per token: ``exp(ref - logp) - (ref - logp) - 1``."""
    import torch

    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def per_token_loss(logps, old_logps, advantages, ref_logps=None, *, epsilon: float = 0.2,
                   epsilon_high: Optional[float] = None, beta: float = 0.0):
    """The clipped policy-gradient loss per completion token ``(completions, tokens)``, plus
    ``beta`` times :func:`k3_kl` when ``ref_logps`` is given; ``advantages`` is ``(completions,)``."""
    import torch

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    advantages = advantages.unsqueeze(1)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    if ref_logps is not None and beta:
        loss = loss + beta * k3_kl(logps, ref_logps)
    return loss


def aggregate(losses, mask, how: str = "token"):
    """``(loss, units)``: the token mean of ``losses`` over ``mask`` (units: tokens), or with ``sequence`` the
    mean over completions of each one's token mean (units: completions)."""
    mask = mask.to(losses.dtype)
    if how == "sequence":
        per_sequence = (losses * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.mean(), int(mask.size(0))
    return (losses * mask).sum() / mask.sum().clamp(min=1.0), int(mask.sum())


def token_logps(logits, tokens, temperature: float = 1.0):
    """Log-probabilities ``(rows, n)`` of ``tokens`` ``(rows, n)`` under ``logits`` ``(rows, n, vocab)`` at
    ``temperature``."""
    logps = (logits.float() / temperature).log_softmax(-1)
    return logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_mask(completions, stop_ids):
    """1 on each completion's tokens up to and including its first stop token, 0 after."""
    import torch

    stops = torch.zeros_like(completions, dtype=torch.bool)
    for stop in stop_ids:
        stops |= completions == stop
    after = torch.cumsum(stops.int(), dim=1) - stops.int()  # stops before this position
    return (after == 0).long()


# ---------------------------------------------------------------------------
# the loss function
# ---------------------------------------------------------------------------


def prompt_rows(batch) -> list:
    """The prompt token ids of each example of a padded batch: the tokens before the first trained label
    (alpaca/chat), or all real tokens (``prompt`` examples, which train no label)."""
    rows = []
    for ids, mask, labels in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                                 batch["labels"].tolist()):
        length = sum(mask)
        trained = next((i for i, label in enumerate(labels[:length]) if label != IGNORE_INDEX), None)
        rows.append(ids[:length if trained is None else trained])
    return rows


def left_padded(rows: list, pad_id: int, device):
    """``(ids, mask)`` of token lists padded on the left."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


def build_grpo(config: GRPOConfig, context):
    import torch
    from transformers import GenerationConfig

    rewards = getattr(context, "rewards", None)
    if rewards is None or not len(rewards):
        raise ConfigError("loss=grpo trains on rewards, but the run selects none; select some with "
                          "'rewards=[regex]' rewards.regex.pattern=<pattern>")
    tokenizer = context.tokenizer
    reference_model = ReferenceModel()
    group = config.group_size

    def sample(model, ids, mask, stops):
        settings = GenerationConfig(do_sample=True, max_new_tokens=config.max_new_tokens,
                                    temperature=config.temperature, top_p=config.top_p, top_k=0,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        finally:
            model.train(was_training)
        return generated[:, ids.size(1):]

    def sample_outside_training(model, ids, mask, stops):
        """Validation: its own seeded draws, leaving the training RNG where it was."""
        devices = [ids.device] if ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            return sample(model, ids, mask, stops)

    def logps_of(model, ids, mask, completions):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        width = completions.size(1)
        # the LM head on the completion's positions alone (the last prompt token predicts the first one)
        logits = causal_lm_logits(model, ids, mask, last=width + 1, position_ids=positions)
        return token_logps(logits[:, :-1], completions, config.temperature)

    def grpo(model, batch) -> LossOutput:
        training = model.training
        prompts = prompt_rows(batch)
        records = batch.get("records") or [{} for _ in prompts]
        device = batch["input_ids"].device
        repeated = [row for row in prompts for _ in range(group)]
        prompt_ids, prompt_mask = left_padded(repeated, tokenizer.pad_token_id, device)
        stops = stop_token_ids(model, tokenizer)
        draw = sample if training else sample_outside_training
        completions = draw(model, prompt_ids, prompt_mask, stops)
        done = completion_mask(completions, stops)
        # as the evaluation decodes: a completion cut inside a multi-byte character loses the partial character
        texts = decode_outputs(tokenizer, [c[:int(m.sum())].tolist() for c, m in zip(completions, done)],
                               [*stops, tokenizer.pad_token_id])
        prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=False)
        scores = rewards.score([text for text in prompt_texts for _ in range(group)], texts,
                               [record for record in records for _ in range(group)])
        reward = torch.tensor(scores.total, dtype=torch.float32, device=device)
        advantages = group_advantages(reward, group, config.scale_rewards, config.std_eps)
        ids = torch.cat([prompt_ids, completions], dim=1)
        mask = torch.cat([prompt_mask, done], dim=1)
        logps = logps_of(model, ids, mask, completions)
        ref_logps = None
        if config.beta:
            ref_logps = reference_model.run(model, logps_of, ids, mask, completions)
        losses = per_token_loss(logps, logps.detach(), advantages, ref_logps, epsilon=config.epsilon,
                                epsilon_high=config.epsilon_high, beta=config.beta)
        loss, units = aggregate(losses, done, config.aggregation)
        metrics = {"reward": reward.mean(), "reward_std": reward.view(-1, group).std(dim=1).mean(),
                   "completion_length": done.sum(-1).float().mean()}
        if ref_logps is not None:
            metrics["kl"] = aggregate(k3_kl(logps.detach(), ref_logps), done)[0]
        for key, values in scores.each.items():
            metrics[f"reward_{key}"] = torch.tensor(values, dtype=torch.float32).mean()
        return LossOutput(loss=loss, num_tokens=units, metrics=metrics)

    return grpo


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("grpo", GRPOConfig,
                               "group relative policy optimisation on sampled completions scored by the rewards",
                               build=build_grpo, requires=("prompt", "alpaca", "chat"), needs_rewards=True)]

"""Reward models: the loss ``reward`` (Bradley-Terry on preference pairs), the evaluator
``reward_accuracy`` (held-out pairwise accuracy and mean margin) and :func:`score_texts`.

A reward model is the run's causal LM body with a sequence-classification head of one label
(``LossSpec.model_head="sequence_classification"``: the model source loads e.g.
``LlamaForSequenceClassification``), its score read at each sequence's last non-padding token.  That
head, rather than a value head added next to the model, is what ``transformers`` saves and loads by
itself, so the trained model is an ordinary ``AutoModelForSequenceClassification`` folder, and peft
trains it fully (``modules_to_save``) with LoRA on the body.

At the end of training the loss's ``save_trained`` writes ``<run_dir>/reward_model/``: the trained model
merged into plain weights (``num_labels=1``, ``pad_token_id`` set) and its tokenizer, loadable with
``AutoModelForSequenceClassification.from_pretrained`` and ``AutoTokenizer.from_pretrained`` without
tuneforge (docs/losses.md, "reward").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tuneforge
from tuneforge.errors import ConfigError, DataError, ModelError
from tuneforge.evaluation import EvaluationPass, score_pairs
from tuneforge.losses import LossOutput
from tuneforge.validation import at_least, check

#: the model head a reward model has (``tuneforge.specs.MODEL_HEADS``)
HEAD = "sequence_classification"
#: the folder of a reward run that holds the trained reward model (the contract with GRPO's ``model`` reward)
REWARD_MODEL_DIR = "reward_model"
SIDES = ("chosen", "rejected")


@dataclass
class RewardConfig:
    """Bradley-Terry reward modelling on preference pairs: ``-log sigmoid(r_chosen - r_rejected - margin)``,
    as TRL's ``RewardTrainer``.

    margin: a margin every pair's chosen reward must exceed the rejected one's by (0: plain
        Bradley-Terry); the same for every pair.
    center_rewards_coefficient: weight of ``(r_chosen + r_rejected)^2`` added per pair, which keeps
        rewards centred on zero (Eisenstein et al. 2023 used 0.01; TRL's ``center_rewards_coefficient``);
        0 = off.
    """

    margin: float = 0.0
    center_rewards_coefficient: float = 0.0

    def __post_init__(self) -> None:
        check(self, center_rewards_coefficient=at_least(0))


@dataclass
class RewardAccuracyConfig:
    """Held-out pairwise accuracy of a reward model: the share of held-out preference pairs whose chosen
    answer gets the higher reward, and the mean reward margin.

    batch_size: sequences per forward pass.
    """

    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self, batch_size=at_least(1))


# ---------------------------------------------------------------------------
# the arithmetic
# ---------------------------------------------------------------------------


def bradley_terry_loss(chosen, rejected, *, margin: float = 0.0, center_rewards_coefficient: float = 0.0):
    """Per-pair loss from the rewards of the chosen and rejected sequences (``(pairs,)`` tensors):
    ``-log sigmoid(r_c - r_r - margin) + coefficient * (r_c + r_r)^2``.  Its mean is TRL's
    ``RewardTrainer`` loss (whose centring term is the mean of ``(r_c + r_r)^2`` over the batch)."""
    import torch.nn.functional as F

    loss = -F.logsigmoid(chosen - rejected - margin)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (chosen + rejected) ** 2
    return loss


def _pad_token_id(model) -> int:
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is None:
        raise ModelError("a reward model needs config.pad_token_id (its score is read at the last token that is "
                         "not padding); load it with a model source that sets it")
    return int(pad)


def sequence_rewards(model, input_ids, attention_mask):
    """One reward per row ``(rows,)``: the model's single score, which a ``transformers`` sequence
    classifier reads at each row's last token that is not ``config.pad_token_id`` (right padding)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() != 2 or logits.size(-1) != 1:
        raise ModelError(f"a reward model returns one score per sequence, logits of shape (rows, 1); this one "
                         f"returns {tuple(logits.shape)}: train it with loss=reward (a sequence_classification "
                         "model with num_labels=1)")
    return logits.squeeze(-1).float()


def paired_rewards(model, batch) -> tuple:
    """``(chosen rewards, rejected rewards)`` of a preference batch, in one forward pass (the two sides
    right-padded with ``config.pad_token_id`` to one length)."""
    import torch
    import torch.nn.functional as F

    missing = [f"{side}_input_ids" for side in SIDES if f"{side}_input_ids" not in batch]
    if missing:
        raise ConfigError(f"loss=reward needs preference batches (chosen_input_ids and rejected_input_ids); the "
                          f"batch lacks {missing} (has {sorted(batch)}): use preference data (chosen + rejected)")
    pad = _pad_token_id(model)
    length = max(batch[f"{side}_input_ids"].size(1) for side in SIDES)
    ids, masks = [], []
    for side in SIDES:
        side_ids = batch[f"{side}_input_ids"]
        mask = batch.get(f"{side}_attention_mask")
        if mask is None:
            mask = torch.ones_like(side_ids)
        ids.append(F.pad(side_ids, (0, length - side_ids.size(1)), value=pad))
        masks.append(F.pad(mask, (0, length - mask.size(1)), value=0))
    rewards = sequence_rewards(model, torch.cat(ids), torch.cat(masks))
    pairs = batch["chosen_input_ids"].size(0)
    return rewards[:pairs], rewards[pairs:]


def _refuse_virtual_tokens(model) -> None:
    """Prefix and prompt tuning cannot be merged into a plain reward model folder: refused at the first batch."""
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "is_prompt_learning", False):
            kind = getattr(config.peft_type, "value", config.peft_type)
            raise ConfigError(f"loss=reward writes a merged reward model, but the adapter is {kind} (virtual "
                              "tokens, which cannot be merged): use adapter=lora, ia3, full or freeze")


def build_reward(config: RewardConfig, context=None):
    checked: set = set()

    def reward(model, batch) -> LossOutput:
        if id(model) not in checked:
            _refuse_virtual_tokens(model)
            checked.add(id(model))
        chosen, rejected = paired_rewards(model, batch)
        losses = bradley_terry_loss(chosen, rejected, margin=config.margin,
                                    center_rewards_coefficient=config.center_rewards_coefficient)
        chosen, rejected = chosen.detach(), rejected.detach()
        metrics = {"reward_chosen": chosen.mean(), "reward_rejected": rejected.mean(),
                   "reward_margin": (chosen - rejected).mean(),
                   "reward_accuracy": (chosen > rejected).float().mean()}
        return LossOutput(loss=losses.mean(), num_tokens=int(chosen.numel()), metrics=metrics)

    return reward


# ---------------------------------------------------------------------------
# scoring texts, and the reward model folder
# ---------------------------------------------------------------------------


def score_texts(model, tokenizer, texts, batch_size: int = 8) -> list:
    """The reward of each text, without gradients: ``texts`` are whole sequences as training saw them
    (the chat template applied, e.g. ``tokenizer.apply_chat_template(messages, tokenize=False)``),
    tokenized without added special tokens, right-padded with the model's ``pad_token_id`` in batches of
    ``batch_size``; the score is read at each text's last real token, so padding does not change it."""
    import torch

    texts = None if isinstance(texts, str) else list(texts)
    if texts is None or not all(isinstance(text, str) for text in texts):
        raise TypeError("score_texts takes a list of strings")
    pad = _pad_token_id(model)  # the token the model's head skips when it looks for the last real one
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in
                           texts[start:start + batch_size]]
                length = max(len(ids) for ids in encoded)
                ids = torch.tensor([row + [pad] * (length - len(row)) for row in encoded], device=device)
                mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in encoded], device=device)
                scores += [float(value) for value in sequence_rewards(model, ids, mask)]
    finally:
        model.train(was_training)
    return scores


def save_reward_model(model, tokenizer, run_dir: Path, config: Optional[RewardConfig] = None) -> Path:
    """Write ``<run_dir>/reward_model/`` (atomically: a temporary folder renamed): the merged reward model
    (``num_labels=1``, ``pad_token_id`` set) and its tokenizer.  Returns the folder."""
    if getattr(model.config, "num_labels", None) != 1:
        raise ModelError(f"the trained model has {getattr(model.config, 'num_labels', None)} labels, not the one "
                         "score of a reward model")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    folder = Path(run_dir) / REWARD_MODEL_DIR
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------------------
# the evaluator
# ---------------------------------------------------------------------------


def evaluate_reward_accuracy(model, tokenizer, examples, config: RewardAccuracyConfig, *,
                             evaluation: Optional[EvaluationPass] = None) -> dict:
    """``pairwise_accuracy`` (share of pairs with ``r_chosen > r_rejected``; a tie counts as wrong) and
    ``mean_margin`` (mean ``r_chosen - r_rejected``) on the held-out pairs; per-pair scores recorded for
    the run's intervals (Wilson for the accuracy)."""
    import torch

    from tuneforge.data import pad_batch

    examples = list(examples)
    if not examples:
        return {}
    for example in examples:
        if "chosen_input_ids" not in example or "rejected_input_ids" not in example:
            raise DataError(f"{example.get('source', '<held-out example>')}: evaluators=[reward_accuracy] needs "
                            "preference pairs (chosen + rejected); this held-out example has none")
    device = next(model.parameters()).device
    keys = ("chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask")

    def margins(part):
        rows = [{key: example[key] for key in keys if key in example} for example in part]
        batch = {k: v.to(device) for k, v in pad_batch(rows, tokenizer.pad_token_id).items()}
        with torch.no_grad():
            chosen, rejected = paired_rewards(model, batch)
        return [float(v) for v in chosen - rejected]

    return score_pairs(model, margins, examples, config.batch_size, evaluation, accuracy="pairwise_accuracy",
                       margin="mean_margin")


REWARD_METRICS = (
    tuneforge.MetricInfo("pairwise_accuracy", primary=True,
                         description="share of held-out pairs whose chosen answer gets the higher reward"),
    tuneforge.MetricInfo("mean_margin", description="mean reward of the chosen answer minus the rejected one's"),
)


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("reward", RewardConfig, "Bradley-Terry reward model (a scalar head) on preference pairs",
                               build=build_reward, requires=("preference",), model_head=HEAD,
                               save_trained=save_reward_model)]


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("reward_accuracy", RewardAccuracyConfig,
                                    "held-out pairwise accuracy and mean margin of a reward model",
                                    evaluate=evaluate_reward_accuracy, metrics=REWARD_METRICS, model_heads=(HEAD,))]

"""The loss interface and shared loss arithmetic.

A loss plugin's ``build(config, context)`` returns ``loss_fn(model, batch) -> LossOutput``;
``context`` is a :class:`LossContext` (the tokenizer, and a way to load other
models, e.g. a distillation teacher, through the registered model sources).
The function runs the forward pass itself.  ``batch`` holds padded tensors
(``input_ids``, ``attention_mask``, ``labels`` with -100 on untrained tokens,
and any other fields the dataset produced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tuneforge.data import IGNORE_INDEX


@dataclass
class LossOutput:
    """``loss``: scalar tensor to minimise; ``num_tokens``: trained tokens it averages over;
    ``metrics``: extra floats/tensors to log (e.g. ``{"z_loss": ...}``)."""

    loss: object
    num_tokens: int = 0
    metrics: dict = field(default_factory=dict)


@dataclass
class LossContext:
    """What a loss may need besides its config.

    ``load_model(model_config)`` loads ``(model, tokenizer)`` with a registered
    model source; ``model_config`` is a mapping with ``name`` (the source, e.g.
    ``hf`` or ``tiny``) and that source's fields.
    """

    tokenizer: Any
    load_model: Callable[[Any], tuple]


def shift_for_next_token(logits, labels):
    """Align logits at position t with the label at t+1 (causal LM)."""
    return logits[..., :-1, :].contiguous(), labels[..., 1:].contiguous()


def token_nll_sum(logits, labels, label_smoothing: float = 0.0):
    """Sum of per-token negative log-likelihood over non-ignored labels, and their count.

    ``logits`` and ``labels`` must already be shifted.
    """
    import torch.nn.functional as F

    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum",
                            label_smoothing=label_smoothing)
    return total, int((flat_labels != IGNORE_INDEX).sum())

"""Evaluator ``perplexity``: token-level loss and perplexity on the held-out split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import tuneforge
from tuneforge.data import pad_batch
from tuneforge.losses import shift_for_next_token, token_nll_sum


@dataclass
class PerplexityConfig:
    """batch_size: examples per forward pass."""

    batch_size: int = 8


def evaluate_perplexity(model, tokenizer, examples, config: PerplexityConfig) -> dict:
    import torch

    if not examples:
        return {}
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), config.batch_size):
            batch = pad_batch(examples[start:start + config.batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, n = token_nll_sum(*shift_for_next_token(logits, batch["labels"]))
            total += float(nll)
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [tuneforge.EvaluatorSpec("perplexity", PerplexityConfig, "held-out loss and perplexity",
                                    evaluate=evaluate_perplexity)]

"""Loss ``cross_entropy``: next-token cross entropy on trained (non -100) labels."""

from __future__ import annotations

from dataclasses import dataclass

import tuneforge
from tuneforge.losses import LossOutput, shift_for_next_token, token_nll_sum


@dataclass
class CrossEntropyConfig:
    """label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    z_loss: weight of ``mean(logsumexp(logits)^2)`` over trained tokens (keeps logits small)."""

    label_smoothing: float = 0.0
    z_loss: float = 0.0


def build_cross_entropy(config: CrossEntropyConfig, context=None):
    def cross_entropy(model, batch) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = shift_for_next_token(logits, batch["labels"])
        total, count = token_nll_sum(logits, labels, config.label_smoothing)
        denominator = max(count, 1)
        loss = total / denominator
        metrics = {}
        if config.z_loss:
            mask = labels != -100
            z = (logits.float().logsumexp(-1)[mask] ** 2).sum() / denominator
            loss = loss + config.z_loss * z
            metrics["z_loss"] = z.detach()
        return LossOutput(loss=loss, num_tokens=count, metrics=metrics)

    return cross_entropy


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("cross_entropy", CrossEntropyConfig, "next-token cross entropy",
                               build=build_cross_entropy)]

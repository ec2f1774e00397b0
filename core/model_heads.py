"""Model heads: what a loss trains on top of the model's body, and what the other components must agree to.

* ``LossSpec.model_head`` (default ``causal_lm``): the head the loss trains.  The host loads the model
  with it: ``ModelSourceSpec.load(config)`` for ``causal_lm``, ``load(config, head=<head>)`` for any
  other, both for the run and where a run directory's model is loaded back (``eval``, ``export``);
  a full-weights ``model/`` is read with the head's ``transformers`` auto class (:data:`MODEL_HEADS`).
* ``ModelSourceSpec.heads`` (default ``("causal_lm",)``): the heads ``load`` can build.
  ``sequence_classification`` is a ``transformers`` ``...ForSequenceClassification`` model with
  ``num_labels=1`` and ``config.pad_token_id`` set (its one score read at each sequence's last
  non-padding token).
* ``EvaluatorSpec.model_heads`` (default ``("causal_lm",)``): the heads whose models ``evaluate`` can
  score.

Before any model loads, a loss training another head than ``causal_lm`` refuses (one line each,
naming the setting to change) a model source without that head, evaluators that cannot score it and
prompting baselines (they prompt a causal LM).

``LossSpec.save_trained(model, tokenizer, run_dir, config)`` (optional) is called once, on the main
process, after ``model/`` is saved, with the trained model merged into a plain ``transformers`` model (a
deep copy through the adapter's ``merge``: the run's model is untouched; over a quantized base, the base
loaded again and dequantized with the saved adapter merged in, as ``export`` does), the tokenizer (carrying the
data's chat template), the run directory (``pathlib.Path``) and the loss's config: it writes what the
trained model is for besides ``model/`` (the ``reward`` loss: ``<run_dir>/reward_model/``).
"""

from __future__ import annotations

#: the head a causal language model has (next-token logits): what every model source loads by default
CAUSAL_LM = "causal_lm"
#: each head with the ``transformers`` auto class that reads such a model's saved weights back:
#: ``causal_lm`` (next-token logits) and ``sequence_classification`` (one score per sequence, read at
#: its last non-padding token: a reward model)
MODEL_HEADS = {CAUSAL_LM: "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def checked_heads(kind: str, name: str, attribute: str, heads) -> tuple:
    """``heads`` as a tuple, or a ``TypeError`` naming the spec when one is not in :data:`MODEL_HEADS`."""
    if isinstance(heads, str) or not heads or any(head not in MODEL_HEADS for head in heads):
        raise TypeError(f"{kind} '{name}': '{attribute}' must be a tuple of model heads among "
                        f"{sorted(MODEL_HEADS)}, got {heads!r}")
    return tuple(heads)

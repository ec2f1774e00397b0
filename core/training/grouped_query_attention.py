"""transformers' ``sdpa`` attention without a copy of the keys and values per query head, on the CPU.

Models with grouped-query attention (SmolLM2, Llama 3, Qwen, Mistral ...) have fewer key/value heads
than query heads: SmolLM2-135M 3 for 9.  transformers' ``sdpa`` attention either passes
``enable_gqa=True`` to :func:`torch.nn.functional.scaled_dot_product_attention`, which serves every
query head from its group's key/value head, or first copies each key and value head once per query
head it serves (``repeat_kv``), whose backward then sums the copies' gradients back.  It takes the
first path only when the call has no attention mask (CUDA's fast kernels take no mask together with
grouped heads) or when the environment variable ``TRANSFORMERS_SDPA_FORCE_GQA`` is ``1``.  Packed
batches (their block-causal mask) and padded ones carry a mask, so on the CPU every layer made the
copies, though torch's CPU kernel takes a mask and grouped heads together: on a packed 8 x 256
SmolLM2 step the copies and their backward were about 7% of the step, in bfloat16 and float32.

:func:`grouped_query_sdpa` is a context for the model's forward pass in the training step that sets
``TRANSFORMERS_SDPA_FORCE_GQA=1`` (transformers reads it at every attention call) when it pays and is
safe: the model uses ``sdpa``, has grouped heads, and its attention weights are on the CPU, and torch
has ``enable_gqa`` (2.5 and later).  Leaving the context restores the environment, also after an
error.  A value the user set is left as it is (``TRANSFORMERS_SDPA_FORCE_GQA=0`` keeps transformers'
own choice).  The attention computes the same function either way; in float32 the loss and the
gradients agree to rounding (tests/test_grouped_query_attention.py).
"""

from __future__ import annotations

import contextlib
import os

from tuneforge.training.precision import modules_where, on_cpu, torch_at_least

__all__ = ["grouped_query_sdpa", "FORCE_GQA_VARIABLE"]

#: the environment variable transformers' ``sdpa`` attention reads to pass ``enable_gqa=True`` with a mask
FORCE_GQA_VARIABLE = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_query_sdpa(model):
    """A context for one forward pass of ``model`` in which its ``sdpa`` attention serves the query
    heads from their key/value heads without copies (:data:`FORCE_GQA_VARIABLE`), where
    :func:`_applies` says it pays; otherwise, and when the user set the variable, nothing changes."""
    if FORCE_GQA_VARIABLE in os.environ or not _applies(model):
        yield
        return
    os.environ[FORCE_GQA_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(FORCE_GQA_VARIABLE, None)


def _applies(model) -> bool:
    """Whether ``model`` attends with ``sdpa``, has grouped key/value heads whose weights are on the
    CPU, and torch's SDPA takes ``enable_gqa``."""
    from tuneforge.data.packing import attention_implementation

    if not _torch_has_enable_gqa() or attention_implementation(model) != "sdpa":
        return False
    grouped = modules_where(model, _has_grouped_heads)
    return bool(grouped) and on_cpu(grouped[0])


def _has_grouped_heads(module) -> bool:
    """An attention module of transformers with more query heads than key/value heads."""
    groups = getattr(module, "num_key_value_groups", 1)
    return isinstance(groups, int) and groups > 1


def _torch_has_enable_gqa() -> bool:
    """Whether this torch's SDPA takes ``enable_gqa`` (2.5 and later; :func:`torch_at_least` parses the
    version once, not at every loss call)."""
    return torch_at_least(2, 5)

"""Attention as two batched matrix products for short bfloat16 rows on the CPU, in the training step.

torch's CPU kernel for :func:`torch.nn.functional.scaled_dot_product_attention` (the one transformers'
``sdpa`` attention reaches on the CPU) is fast forward but slow backward in bfloat16 on short rows: on
SmolLM2-135M's shapes (9 query heads, 3 key/value heads, head size 64) on a 2-core AMX CPU, forward and
backward of one layer took 22-27 ms at 8 x 256 tokens and 31-33 ms at 16 x 128, of which the forward
is 3 ms.  The same attention as matrix products (``softmax(mask + scale * Q K^T) V``, the
"math" form that transformers' ``eager`` attention also computes) took 10-14 ms at 8 x 256 and 4-7 ms at
16 x 128, backward included; it keeps every layer's probabilities for the backward pass (``batch x
query heads x length^2`` bfloat16 values) and loses to the kernel from about 384 tokens on, so it is
used up to :data:`MAX_LENGTH`.

:func:`matmul_attention` is a context for the training step's forward pass in which transformers'
``sdpa`` attention function is replaced by :class:`_Attention` (through transformers' attention
registry, a local entry that leaving the context removes), unless ``trainer.cpu_attention=kernel``.
A call is computed as matrix products
when all of these hold, and handed to the function it replaced otherwise:

* a gradient is wanted (validation and generation, forward only, keep the kernel: its forward is faster);
* the query is on the CPU and the call computes in bfloat16 (under bfloat16 autocast, or bfloat16 inputs);
* no dropout on the attention probabilities, no soft-capping, sinks or position bias;
* queries and keys have one length (no key/value cache), at least 2 and at most :data:`MAX_LENGTH`;
* the mask is absent (causal or not, as the call says), boolean or additive, ``(batch or 1, 1 or query
  heads, length, length)``.

Grouped key/value heads are served without copies: the query heads of one key/value head are stacked
along the rows of one product.  The mask goes into the first product (``baddbmm``), expanded once per
mask and reused by every layer of the forward pass.  Numbers: the scores are rounded to bfloat16 before
the softmax (the kernel keeps them in float32), as in transformers' ``eager`` attention under autocast;
docs/performance.md ("Attention as matrix products") measures what that changes in the loss and the
gradients.  Masked positions get bfloat16's lowest finite value, not ``-inf``, so a query with no
allowed position (left padding) gets finite probabilities instead of NaN, which a 0/1 factor then
sets to 0, as torch's kernel gives such a query an output of 0.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from tuneforge.linear_cross_entropy import autocast_dtype
from tuneforge.training.precision import on_cpu

__all__ = ["matmul_attention", "MAX_LENGTH"]

#: rows longer than this keep torch's kernel (the products lost to it from about 384 tokens on)
MAX_LENGTH = 256
#: the attention implementation whose function the context replaces
SDPA = "sdpa"
#: replaced function -> its :class:`_Attention`, one per function, so compiled code that calls it sees
#: the same object at every step (a new one would be compiled again)
_REPLACEMENTS: dict = {}
#: keyword arguments of an attention call that the products do not compute; present and set, the call
#: goes to the replaced function
_UNSUPPORTED_ARGUMENTS = ("softcap", "s_aux", "sinks", "position_bias")


@contextlib.contextmanager
def matmul_attention(model, enabled: bool = True):
    """A context for one forward pass of ``model`` (and the backward pass that may recompute it) in
    which its ``sdpa`` attention runs as matrix products where :func:`_takes` says so; nothing changes
    when ``enabled`` is false (``trainer.cpu_attention=kernel``), for a model that does not use
    ``sdpa`` or whose weights are not on the CPU."""
    if not enabled or not _applies(model):
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    registry = ALL_ATTENTION_FUNCTIONS
    local = getattr(registry, "_local_mapping", {})
    earlier_local = local.get(SDPA)
    replaced = registry[SDPA]
    attention = _REPLACEMENTS.setdefault(replaced, _Attention(replaced))
    registry[SDPA] = attention
    try:
        yield
    finally:
        attention.forget_mask()
        if earlier_local is not None:
            registry[SDPA] = earlier_local
        else:
            del registry[SDPA]


def _applies(model) -> bool:
    """Whether ``model`` attends with ``sdpa`` and its first weight is on the CPU."""
    from tuneforge.data.packing import attention_implementation

    return attention_implementation(model) == SDPA and on_cpu(model)


class _Attention:
    """transformers' attention-function signature over the matrix products, falling back to
    ``replaced`` (the registry's ``sdpa`` function) for calls the products do not take; holds the
    last mask it expanded, so the layers of one forward pass expand it once."""

    def __init__(self, replaced):
        self.replaced = replaced
        self._mask_key: Optional[tuple] = None  # the mask itself (held, so its id is not reused) and its layout
        self._mask_rows: tuple = (None, None)

    def forget_mask(self):
        """Drop the expanded mask (at the end of the context: the next forward pass has its own)."""
        self._mask_key, self._mask_rows = None, (None, None)

    def __call__(self, module, query, key, value, attention_mask, dropout: float = 0.0,
                 scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
        if not _takes(module, query, key, attention_mask, dropout, kwargs):
            return self.replaced(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 is_causal=is_causal, **kwargs)
        batch, heads, length, size = query.shape
        groups = heads // key.shape[1]
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        rows, keep = self._rows(attention_mask, batch, key.shape[1], groups, length, causal)
        scale = size ** -0.5 if scaling is None else scaling
        output = _products(query, key, value, rows, keep, scale)
        return output.view(batch, heads, length, size).transpose(1, 2).contiguous(), None

    def _rows(self, mask, batch, kv_heads, groups, length, causal) -> tuple:
        """:func:`_mask_rows` for this call (``(None, None)`` without a mask, not causal), from the last
        call's when it came from the same mask."""
        if mask is None and not causal:
            return None, None
        if torch.compiler.is_compiling():  # compiled code keeps no state and reads no tensor's values
            return _mask_rows(mask, batch, kv_heads, groups, length, find_empty_rows=False)
        layout = (getattr(mask, "_version", None), batch, kv_heads, groups, length)
        if self._mask_key is None or self._mask_key[0] is not mask or self._mask_key[1] != layout:
            self._mask_rows = _mask_rows(mask, batch, kv_heads, groups, length)
            self._mask_key = (mask, layout)
        return self._mask_rows


def _takes(module, query, key, mask, dropout, kwargs) -> bool:
    """Whether the matrix products compute this attention call (the module docstring's list)."""
    if not torch.is_grad_enabled() or query.device.type != "cpu":
        return False
    if _compute_dtype(query) != torch.bfloat16:
        return False
    if (dropout and module.training) or any(kwargs.get(name) is not None for name in _UNSUPPORTED_ARGUMENTS):
        return False
    batch, heads, length, _ = query.shape
    if key.shape[2] != length or not 2 <= length <= MAX_LENGTH or heads % key.shape[1]:
        return False
    if mask is None:
        return True
    return (mask.dim() == 4 and mask.shape[0] in (1, batch) and mask.shape[1] in (1, heads)
            and tuple(mask.shape[2:]) == (length, length) and (mask.dtype == torch.bool or mask.is_floating_point()))


def _compute_dtype(query) -> torch.dtype:
    """The dtype this call's products run in: autocast's on the CPU when it is on, else the query's."""
    return autocast_dtype("cpu") or query.dtype


def _mask_rows(mask, batch, kv_heads, groups, length, find_empty_rows: bool = True) -> tuple:
    """``mask`` (``None``: causal; boolean: ``True`` where allowed; or additive) as a bfloat16 additive
    mask laid out like the scores of :func:`_products` (masked positions get bfloat16's lowest finite
    value), and, when some query may attend to nothing, a ``(rows, 1)`` factor that is 0 on those rows
    and 1 elsewhere (torch's kernel gives such rows an output of 0), else ``None``.
    ``find_empty_rows=False`` returns the factor for any mask without looking for such rows."""
    lowest = torch.finfo(torch.bfloat16).min
    if mask is None:
        allowed = torch.ones(length, length, dtype=torch.bool).tril_()
        causal = torch.zeros(length, length, dtype=torch.bfloat16).masked_fill_(~allowed, lowest)
        return causal.expand(groups, length, length).reshape(groups * length, length), None
    if mask.dtype == torch.bool:
        allowed = mask
        additive = torch.zeros(mask.shape, dtype=torch.bfloat16, device=mask.device).masked_fill_(~mask, lowest)
    else:
        allowed = mask > torch.finfo(mask.dtype).min
        additive = mask.to(torch.bfloat16).clamp_(min=lowest)
    rows = _grouped(additive, batch, kv_heads, groups, length)
    attends = allowed.any(dim=-1, keepdim=True)
    if find_empty_rows and bool(attends.all()):
        return rows, None
    keep = _grouped(attends.to(torch.bfloat16), batch, kv_heads, groups, length)
    return rows, keep


def _grouped(per_head, batch, kv_heads, groups, length) -> torch.Tensor:
    """``per_head`` (``(batch or 1, 1 or query heads, length, width)``) laid out like the scores of
    :func:`_products`: ``(batch * kv_heads, groups * length, width)``."""
    first, heads, _, width = per_head.shape
    shaped = (per_head.view(first, 1, 1, length, width) if heads == 1
              else per_head.view(first, kv_heads, groups, length, width))
    return shaped.expand(batch, kv_heads, groups, length, width).reshape(batch * kv_heads, groups * length, width)


def _products(query, key, value, rows, keep, scale) -> torch.Tensor:
    """``softmax(rows + scale * Q K^T) V`` in bfloat16, each key/value head's query heads stacked along
    the rows of one product, the probabilities times ``keep`` where given (:func:`_mask_rows`): the
    result is ``(batch * kv_heads, groups * length, head size)``."""
    batch, heads, length, size = query.shape
    kv_heads = key.shape[1]
    with torch.autocast("cpu", enabled=False):
        q = query.to(torch.bfloat16).reshape(batch * kv_heads, heads // kv_heads * length, size)
        k = key.to(torch.bfloat16).reshape(batch * kv_heads, length, size)
        v = value.to(torch.bfloat16).reshape(batch * kv_heads, length, size)
        if rows is None:
            scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
        else:
            scores = torch.baddbmm(rows, q, k.transpose(1, 2), alpha=scale)
        probabilities = torch.softmax(scores, dim=-1)
        if keep is not None:
            probabilities = probabilities * keep
        return torch.bmm(probabilities, v)

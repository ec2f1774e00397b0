"""peft's LoRA linear layers as one operation in the training step, on the CPU.

peft computes a LoRA layer as ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``: the scaling
is a multiplication over the whole ``tokens x out_features`` output and the sum a second pass over
it, each with its own backward; under autocast, ``x`` (the float32 output of a norm) is cast to
bfloat16 once for the base layer and once more for ``lora_A``, and both gradients are cast back.  On
a 2-core CPU these element-wise passes cost about as much as the layer's matrix products.

:class:`_LoraLinear` does the same arithmetic with matrix products only: ``x`` is cast once,
``scaling`` is folded into ``lora_B`` (``rank x out_features``, small), and the low-rank product is
added into the base output in place (``addmm_``); backward computes the input's gradient as one sum
of two products and the adapter's weight gradients directly.  The numbers are those of peft up to
rounding (one rounding of the sum instead of three); the memory kept for backward is less (one copy
of the input, not two).

:func:`fused_lora_layers` switches it on for one forward pass: a context in which every eligible
layer of the model runs fused.  A layer is eligible (:func:`_fusable`) when it is peft's plain
``lora.Linear`` (not a quantized or other backend's subclass) over a ``torch.nn.Linear``, with one
active, unmerged, vanilla LoRA adapter (no DoRA or other variant, no ``lora_bias``) and plain tensor
weights (not sharded ``DTensor`` s); a call is fused when it is on the CPU with no extra arguments
and, without autocast, the input and every weight share one dtype.  Anything else, layer or call, runs
peft's own forward, so the context never changes what an unusual layer computes.  LoRA dropout is the
layer's own dropout module, applied to the input before the fused product (in the training step its
mask comes from random bits: :mod:`tuneforge.training.lora_dropout`).

Casts are shared (:class:`Casts`) where that changes no number: layers that read the same input (a
decoder layer's query, key and value projections read one norm output, the gate and up projections
another) use one cast of it, which backward also keeps once instead of once a layer; and a frozen base
weight's cast is kept from one step to the next (in :class:`WeightCasts`, owned by the caller) until
the weight changes.  Each layer still returns its own float32 input gradient, so autograd adds the
layers' gradients in float32 as before.
"""

from __future__ import annotations

import contextlib

import torch

from tuneforge.linear_cross_entropy import autocast_dtype
from tuneforge.training.precision import modules_where, swapped_forwards

__all__ = ["Casts", "WeightCasts", "fused_lora_layers"]


class _LoraLinear(torch.autograd.Function):
    """``x @ W.T + bias + (dropped @ A.T) @ (scaling * B).T``, in ``dtype``, with its backward.

    ``dropped`` is ``x`` after LoRA dropout, or ``None`` when there is none (the two share one cast
    and one gradient).  ``W`` and ``bias`` are frozen; ``A`` and ``B`` are the adapter's weights.
    """

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_a, lora_b, scaling, dtype, casts):
        with torch.autocast(x.device.type, enabled=False):
            rows = casts.input(x, dtype).reshape(-1, x.shape[-1])
            lora_rows = rows if dropped is None else dropped.reshape(-1, x.shape[-1]).to(dtype)
            w = casts.weight(weight, dtype)
            a = lora_a.to(dtype)
            b = (lora_b * scaling).to(dtype)
            low_rank = lora_rows @ a.t()
            out = rows @ w.t() if bias is None else torch.addmm(bias.to(dtype), rows, w.t())
            out.addmm_(low_rank, b.t())
        ctx.save_for_backward(lora_rows, w, a, b, low_rank)
        ctx.scaling, ctx.input_shape, ctx.input_dtype = scaling, x.shape, x.dtype
        ctx.shared = dropped is None
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        lora_rows, w, a, b, low_rank = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_dropped = grad_bias = grad_a = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_rows = grad_out.reshape(-1, grad_out.shape[-1]).to(w.dtype)
            grad_low_rank = grad_rows @ b
            if needs[5]:
                grad_b = (grad_rows.t() @ low_rank).to(ctx.b_dtype) * ctx.scaling
            if needs[4]:
                grad_a = (grad_low_rank.t() @ lora_rows).to(ctx.a_dtype)
            if needs[3]:
                grad_bias = grad_rows.sum(0).to(ctx.bias_dtype)
            if needs[0] or needs[1]:
                grad_rows_in = grad_rows @ w
                if ctx.shared:
                    grad_rows_in.addmm_(grad_low_rank, a)
                else:
                    grad_dropped = (grad_low_rank @ a).reshape(ctx.input_shape).to(ctx.input_dtype)
                grad_x = grad_rows_in.reshape(ctx.input_shape).to(ctx.input_dtype)
        return grad_x, grad_dropped, None, grad_bias, grad_a, grad_b, None, None, None


class WeightCasts:
    """Frozen weights cast to the products' dtype, kept between training steps: a weight is cast again
    only when it changed (another tensor, storage or in-place version).  The owner :meth:`clear` s it
    when training ends, which frees the copies (about half the frozen linear weights' float32 size for
    bfloat16; backward keeps these casts during a step anyway, so a step's peak memory is the same)."""

    def __init__(self):
        self._casts = {}  # id(weight) -> (weight, data pointer, version, dtype, cast)

    def get(self, weight, dtype):
        if weight.dtype == dtype:
            return weight
        kept = self._casts.get(id(weight))
        if kept is not None and kept[0] is weight and kept[1:4] == (weight.data_ptr(), weight._version, dtype):
            return kept[4]
        cast = weight.detach().to(dtype)
        self._casts[id(weight)] = (weight, weight.data_ptr(), weight._version, dtype, cast)
        return cast

    def clear(self) -> None:
        self._casts.clear()

    def __len__(self) -> int:
        return len(self._casts)


class Casts:
    """The casts of one :func:`fused_lora_layers` context: the last input cast (so the layers reading the
    same input share it; a new input, or the same one changed in place, is cast anew) and the weights'
    (a :class:`WeightCasts` kept by the caller between steps, or one of this context's own).  With
    ``shared=False`` every call casts afresh (plain ``.to``, which ``torch.compile`` traces)."""

    def __init__(self, weights: "WeightCasts | None" = None, shared: bool = True):
        self._weights = WeightCasts() if weights is None else weights
        self._shared = shared
        self._last = None  # (input, version, dtype, cast)

    def input(self, x, dtype):
        if not self._shared or x.dtype == dtype:
            return x.to(dtype)
        last = self._last
        if last is not None and last[0] is x and last[1:3] == (x._version, dtype):
            return last[3]
        cast = x.detach().to(dtype)
        self._last = (x, x._version, dtype, cast)
        return cast

    def weight(self, weight, dtype):
        return self._weights.get(weight, dtype) if self._shared else weight.to(dtype)


@contextlib.contextmanager
def fused_lora_layers(model, weight_casts: "WeightCasts | None" = None, share_casts: bool = True):
    """A context for one forward pass of ``model`` (and its backward, which may come after): its eligible
    peft LoRA layers run as :class:`_LoraLinear`; on leaving, every layer has its own forward again.
    ``weight_casts`` keeps the frozen weights' casts for the next context (without it, they are cast
    in every context); ``share_casts=False`` casts in every call (for layers that ``torch.compile``
    traces, see :class:`Casts`)."""
    casts = Casts(weight_casts, shared=share_casts)
    with swapped_forwards(modules_where(model, _fusable), lambda layer: _fused_forward(layer, layer.forward, casts)):
        yield


def _fusable(layer) -> bool:
    """Whether ``layer`` is peft's plain LoRA ``Linear`` over a ``torch.nn.Linear`` (what the fused
    operation computes); the per-call conditions are :func:`_fused_call`'s."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return (type(layer) is Linear and type(layer.base_layer) is torch.nn.Linear
            and not getattr(layer, "fan_in_fan_out", False))


def _fused_forward(layer, peft_forward, casts: Casts):
    """``layer``'s forward while fused: :class:`_LoraLinear` (sharing ``casts``) where :func:`_fused_call`
    allows it, ``peft_forward`` (peft's own) otherwise."""

    def forward(x, *args, **kwargs):
        fused = None if args or kwargs else _fused_call(layer, x)
        if fused is None:
            return peft_forward(x, *args, **kwargs)
        adapter, dtype = fused
        base = layer.base_layer
        dropout = layer.lora_dropout[adapter]
        dropped = None if isinstance(dropout, torch.nn.Identity) else dropout(x)
        return _LoraLinear.apply(x, None if dropped is x else dropped, base.weight, base.bias,
                                 layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                                 layer.scaling[adapter], dtype, casts)

    return forward


def _fused_call(layer, x):
    """``(adapter, dtype)`` when this call of ``layer`` can be fused, else ``None``: the one active
    adapter and the dtype the products run in (autocast's on the CPU when it is on, else the input's).
    A call is fused on the CPU, the adapter unmerged and enabled, vanilla LoRA (no variant such as DoRA,
    no ``lora_bias``), a frozen base weight, plain tensors, and dtypes that fit (one dtype without
    autocast; float32 or autocast's dtype under it)."""
    if x.device.type != "cpu" or layer.merged or layer.disable_adapters or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}) \
            or getattr(layer, "use_dora", {}).get(adapter) or layer.lora_B[adapter].bias is not None:
        return None
    base = layer.base_layer
    tensors = [x, base.weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    if base.bias is not None:
        tensors.append(base.bias)
    if base.weight.requires_grad or any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return None
    autocast = autocast_dtype("cpu")
    dtype = autocast or x.dtype
    allowed = {dtype} if autocast is None else {dtype, torch.float32}
    return (adapter, dtype) if all(t.dtype in allowed for t in tensors) else None

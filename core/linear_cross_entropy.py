"""Cross entropy of an output layer's logits without keeping the logits: the default loss's last step.

The default loss (``loss=cross_entropy``) takes the hidden states of the trained positions and applies
the output layer (``lm_head``, ``tokens x vocab``) to them.  Done with plain autograd, that one step
builds and keeps about six ``tokens x vocab`` tensors (the logits, their float32 copy, log-softmax,
the zero-filled gradient, the gradient of log-softmax, its cast back): on SmolLM2 and a batch of 8 x
256 with 1,000 trained positions that is 200 MB each, more time on the CPU than the output layer's
matrix product (freshly allocated pages are faulted in and zeroed by the kernel) and a large part of
the peak memory.

:func:`linear_cross_entropy_sums` computes the same sums a ``chunk`` of rows at a time, in one
``chunk x vocab`` tensor reused in place (logits, then their exponentials, then the softmax, then the
gradient with respect to the logits).  Where a gradient is wanted, each chunk's gradient is carried
through the output layer right away, while its logits exist: the forward pass keeps the gradient with
respect to the hidden states (``tokens x dim``, and the weight's when it trains) for an upstream
gradient of 1, and backward only scales it.  So the memory for logits is one chunk's whatever the
number of trained positions, and the output layer's matrix products are those autograd would do.

The arithmetic follows plain autograd: the logits are computed in the dtype autocast would use
(or the layer's own), turned into float32 for the softmax, and the gradient is cast back to that
dtype before it meets the weight.  Label smoothing and the z-loss are those of
``torch.nn.functional.cross_entropy`` and of :func:`tuneforge.losses.picked_cross_entropy_sums`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from tuneforge.losses import CHUNK_BYTES, fused_chunk_rows

__all__ = ["CHUNK_BYTES", "autocast_dtype", "fusable_output_layer", "linear_cross_entropy_sums"]



def fusable_output_layer(lm_head) -> bool:
    """Whether ``lm_head`` is a plain ``torch.nn.Linear`` whose weight can be read directly.

    Anything else (an adapter-wrapped or quantized output layer, a weight sharded as a DTensor) is
    applied through its own forward by the caller instead.
    """
    if type(lm_head) is not torch.nn.Linear:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        return True
    return not isinstance(lm_head.weight, DTensor)


def linear_cross_entropy_sums(hidden, lm_head, targets, label_smoothing: float = 0.0, with_z: bool = False,
                              chunk: Optional[int] = None):
    """``(nll_sum, z_sum, count)`` of ``lm_head(hidden)`` against ``targets``, one ``chunk`` of rows at a time.

    ``hidden`` ``(tokens, dim)`` are the trained positions' hidden states, ``targets`` ``(tokens,)``
    their next tokens, ``lm_head`` a plain ``torch.nn.Linear`` (:func:`fusable_output_layer`).  The
    result equals ``picked_cross_entropy_sums(lm_head(hidden), targets, ...)``: the summed
    (label-smoothed) cross entropy, the summed ``logsumexp(logits) ** 2`` when ``with_z`` (else 0),
    and the number of tokens.  ``chunk`` rows per step default to what keeps a chunk's float32
    logits under :data:`CHUNK_BYTES` for the device (``tuneforge plan`` counts the same:
    :func:`tuneforge.losses.cross_entropy_logits_bytes`).
    """
    rows = chunk or fused_chunk_rows(lm_head.weight.size(0), hidden.device.type)
    nll, z = _LinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, float(label_smoothing),
                                       bool(with_z), int(rows))
    return nll, z, int(targets.numel())


def autocast_dtype(device_type: str):
    """The dtype autocast computes matrix products in on ``device_type`` now, or ``None`` when it is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one function per device
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        if enabled:
            return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the sums and, where a gradient is wanted, the gradient of each sum with respect to the
    hidden states (and weight, bias) for a unit upstream gradient, computed from each chunk's logits
    while they exist.  Backward: those gradients times the upstream ones (the sums are scalars)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, label_smoothing, with_z, rows):
        device_type = hidden.device.type
        dtype = autocast_dtype(device_type) if hidden.is_floating_point() else None
        dtype = dtype or torch.promote_types(hidden.dtype, weight.dtype)
        exact = torch.promote_types(dtype, torch.float32)  # the softmax's dtype: float32, or float64 in checks
        cast_weight = weight.to(dtype)
        cast_bias = None if bias is None else bias.to(dtype)
        wanted = ctx.needs_input_grad[:3]
        sums = {"nll": _Sum(hidden, weight, bias, wanted, exact)}
        if with_z:
            sums["z"] = _Sum(hidden, weight, bias, wanted, exact)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.size(0), rows):
                stop = min(start + rows, hidden.size(0))
                chunk = hidden[start:stop].to(dtype)
                logits = F.linear(chunk, cast_weight, cast_bias).to(exact)
                picked = logits.gather(1, targets[start:stop, None]).squeeze(1)
                mean = logits.mean(-1) if label_smoothing else None
                peak = logits.amax(-1)
                # from here on the chunk's one tensor is reused in place: exp(logits - max), then the softmax
                probabilities = logits.sub_(peak[:, None]).exp_()
                total = probabilities.sum(-1)
                lse = peak + total.log()
                nll = lse - picked
                if label_smoothing:
                    nll = (1.0 - label_smoothing) * nll + label_smoothing * (lse - mean)
                sums["nll"].value += nll.sum()
                if with_z:
                    sums["z"].value += (lse ** 2).sum()
                if not any(wanted):
                    continue
                probabilities.div_(total[:, None])
                if with_z:  # d lse^2 / d logit_j = 2 lse softmax_j
                    sums["z"].add_gradient(start, stop, probabilities * (2.0 * lse[:, None]), chunk, cast_weight)
                # d nll / d logit_j = softmax_j - (1 - eps) onehot_j - eps / vocab
                rows_index = torch.arange(stop - start, device=logits.device)
                probabilities[rows_index, targets[start:stop]] -= 1.0 - label_smoothing
                if label_smoothing:
                    probabilities.sub_(label_smoothing / probabilities.size(-1))
                sums["nll"].add_gradient(start, stop, probabilities, chunk, cast_weight)
        # only the gradients stay for backward: keeping the sums themselves (this function's outputs)
        # would make a reference cycle through the autograd graph, which holds every activation of the
        # step until the garbage collector breaks it
        ctx.gradients = {name: piece.gradients for name, piece in sums.items()}
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        z = sums["z"].value if with_z else sums["nll"].value.new_zeros(())
        return sums["nll"].value, z

    @staticmethod
    def backward(ctx, grad_nll, grad_z):
        upstream = {"nll": grad_nll, "z": grad_z}
        grads = [None, None, None]
        for name, gradients in ctx.gradients.items():
            if upstream[name] is None:
                continue
            for index, gradient in enumerate(gradients):
                if gradient is not None:
                    scaled = gradient * upstream[name].to(gradient.dtype)
                    grads[index] = scaled if grads[index] is None else grads[index] + scaled
        grads = [None if grad is None else grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)]
        return (*grads, None, None, None, None)


class _Sum:
    """One of the loss's sums (the cross entropy, or the z-loss): its value and its gradients with
    respect to the hidden states, weight and bias for an upstream gradient of 1 (``None`` where not
    wanted)."""

    def __init__(self, hidden, weight, bias, wanted, exact):
        want_hidden, want_weight, want_bias = wanted
        self.value = torch.zeros((), dtype=exact, device=hidden.device)
        self.gradients = [
            torch.empty(hidden.shape, dtype=exact, device=hidden.device) if want_hidden else None,
            torch.zeros(weight.shape, dtype=exact, device=weight.device) if want_weight else None,
            torch.zeros(bias.shape, dtype=exact, device=bias.device) if want_bias else None,
        ]

    def add_gradient(self, start, stop, grad_logits, chunk, cast_weight):
        """Add a chunk's ``d sum / d logits`` (float32 or float64), multiplied through the output layer
        in the layer's compute dtype, as autograd would (the gradient is cast before it meets the weight)."""
        grad_hidden, grad_weight, grad_bias = self.gradients
        cast = grad_logits.to(cast_weight.dtype)
        if grad_hidden is not None:
            grad_hidden[start:stop] = cast @ cast_weight
        if grad_weight is not None:
            grad_weight.add_(cast.t() @ chunk)
        if grad_bias is not None:
            grad_bias.add_(cast.sum(0))

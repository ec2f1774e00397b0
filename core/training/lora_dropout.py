"""LoRA dropout from random bits, in the training step on the CPU.

peft applies LoRA dropout with ``torch.nn.Dropout`` on each adapted layer's input.  On the CPU,
torch draws that mask with ``bernoulli_``, one floating-point uniform number per element: about
7 ms for one 8 x 256 x 576 input on 2 cores, and a decoder layer of SmolLM2 has seven adapted
layers, so with peft's usual ``lora_dropout=0.05`` the masks took about a quarter of a training step.

:func:`dropout_from_bits` draws the same Bernoulli mask from raw random bits instead: 31 bits per
element from torch's default generator (``random_`` on ``int64``, each split into two 31-bit
numbers), kept where they fall below ``round((1 - p) * 2**31)``; the kept elements are scaled by
``1 / (1 - p)`` exactly as ``torch.nn.functional.dropout`` scales them (the same float division).
The keep probability is ``1 - p`` to within ``2**-32``, the scaling and the gradient (the mask times
the scale) are dropout's, and the draw follows ``torch.manual_seed`` and the generator state that
checkpoints save, so runs stay reproducible and resume exactly.  Only the random stream differs from
torch's: a run with LoRA dropout draws other masks than peft's own forward would.

:func:`lora_dropout_from_bits` switches it on for one loss call (``FineTuneModule._forward_swaps``):
every peft LoRA layer's ``torch.nn.Dropout`` with ``p > 0`` uses it for floating-point CPU inputs in
training mode; anything else (a GPU input, eval mode, ``inplace=True``) is torch's own dropout.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["dropout_from_bits", "keep_mask", "lora_dropout_from_bits"]

#: the bits per element of the mask: 31 of each 32 drawn (the generator's ``int64`` are non-negative)
BITS = 31


def keep_mask(shape, p: float, generator=None) -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability ``1 - p`` (to within ``2**-32``),
    from torch's default generator (or ``generator``)."""
    count = math.prod(int(size) for size in shape)
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_(generator=generator)
    bits = words.view(torch.int32)[:count].view(shape) & ((1 << BITS) - 1)
    return bits < round((1.0 - p) * (1 << BITS))


def dropout_from_bits(x: torch.Tensor, p: float) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training=True)`` with its mask drawn by :func:`keep_mask`."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    noise = keep_mask(x.shape, p).to(x.dtype)
    noise.div_(1.0 - p)  # as torch's dropout scales its mask
    return x * noise


def _is_lora_dropout(module) -> bool:
    """A ``torch.nn.Dropout`` with ``p > 0`` (what a peft LoRA layer's ``lora_dropout`` holds for its adapters)."""
    return type(module) is torch.nn.Dropout and module.p > 0


def _has_lora_dropout(module) -> bool:
    dropouts = getattr(module, "lora_dropout", None)
    return isinstance(dropouts, torch.nn.ModuleDict) and any(_is_lora_dropout(d) for d in dropouts.values())


def _lora_dropouts(model) -> list:
    """The ``torch.nn.Dropout`` modules (``p > 0``) of every peft LoRA layer of ``model`` (the layers found once
    per model: :func:`tuneforge.training.precision.modules_where`)."""
    from tuneforge.training.precision import modules_where

    return [d for layer in modules_where(model, _has_lora_dropout) for d in layer.lora_dropout.values()
            if _is_lora_dropout(d)]


def _bits_forward(dropout: torch.nn.Dropout):
    def forward(x):
        if dropout.training and not dropout.inplace and x.device.type == "cpu" and x.is_floating_point():
            return dropout_from_bits(x, dropout.p)
        return torch.nn.functional.dropout(x, dropout.p, dropout.training, dropout.inplace)

    return forward


@contextlib.contextmanager
def lora_dropout_from_bits(model):
    """A context in which ``model``'s LoRA dropout draws its masks with :func:`dropout_from_bits` (on the
    CPU, in training mode); on leaving, each dropout module has its own forward again."""
    from tuneforge.training.precision import swapped_forwards

    with swapped_forwards(_lora_dropouts(model), _bits_forward):
        yield

"""Padding-free packing and length-grouped batching.

Packing (``loader.packing=true``) concatenates several tokenized examples into
one row of at most ``pack_length`` tokens.  Each example keeps its own
``position_ids`` (restarting at 0) and attends only to itself:

* :func:`pack_examples` decides which examples share a row: best-fit
  decreasing bin packing over the example lengths (a greedy packer), its ties
  broken by a seeded permutation, so the rows depend only on the example order
  and the seed;
* :func:`pack_batch` collates rows into ``input_ids``, ``labels``,
  ``attention_mask`` (1 on real tokens, 0 on padding) and ``position_ids``.
  The first label of every example is -100: after the next-token shift,
  position ``i`` predicts token ``i+1``, so no loss term reads across a
  boundary;
* :func:`packed_attention_inputs` turns ``position_ids`` into what the model's
  attention implementation needs to keep examples apart: a block-diagonal
  causal 4D mask for ``eager`` and ``sdpa``, or FlashAttention's variable
  length arguments (``cu_seq_lens_q/k``, ``max_length_q/k``) for
  ``flash_attention_2``/``_3``.

A packed batch is recognised by its ``position_ids``: each 0 starts a new
sequence (the padding at the end of a row is a sequence of its own, so no
attention row is empty).  Losses build their forward arguments with
:func:`tuneforge.losses.model_inputs`, which calls
:func:`packed_attention_inputs` for such batches.

Length grouping (``loader.group_by_length=true``) is
:func:`length_grouped_order`: batches of similar lengths, used by
:class:`tuneforge.training.resumable_sampler.ResumableSampler`.
"""

from __future__ import annotations

import bisect
import random
from typing import Optional, Sequence

from tuneforge.data.tokenization import IGNORE_INDEX
from tuneforge.errors import ModelError

#: length grouping sorts within mega-batches of this many (global) batches
MEGABATCH_BATCHES = 50

#: attention implementations that read a 4D additive mask
MASK_IMPLEMENTATIONS = ("eager", "sdpa")


def pack_examples(lengths: Sequence[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most ``max_tokens`` each.

    Best-fit decreasing: examples are taken longest first (equal lengths in the
    order of a permutation seeded by ``seed``) and each goes into the fullest
    row it still fits in, else starts a new row.  An example longer than
    ``max_tokens`` gets a row of its own.  Deterministic in (lengths, max_tokens,
    seed); within a row, examples keep the order they were placed in.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties stay in the seeded order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row number), sorted
    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(free, (length, -1))
        if length <= max_tokens and slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (space - length, row))
        else:
            rows.append([index])
            if length < max_tokens:
                bisect.insort(free, (max_tokens - length, len(rows) - 1))
    return rows


class PackedRows:
    """A map-style dataset of packed rows: item ``i`` is the list of examples of row ``i``."""

    def __init__(self, examples: Sequence[dict], rows: Sequence[Sequence[int]]):
        self.examples, self.rows = examples, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list:
        return [self.examples[i] for i in self.rows[index]]

    def lengths(self) -> list[int]:
        """Tokens per row."""
        return [sum(len(self.examples[i]["input_ids"]) for i in row) for row in self.rows]


def pack_batch(rows: Sequence[Sequence[dict]], pad_token_id: int, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Collate packed rows (each a list of examples) into right-padded tensors.

    ``input_ids``: the examples of a row concatenated, then padding;
    ``labels``: each example's labels with its first one set to -100 (that
    token is never predicted from the previous example), -100 on padding;
    ``attention_mask``: 1 on real tokens, 0 on padding (what tokens/s counts);
    ``position_ids``: ``0..len-1`` for every example, and ``0..`` again for the
    padding at the end of a row.
    """
    import torch

    rows = list(rows)
    width = max(sum(len(ex["input_ids"]) for ex in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids, labels, mask, positions = [], [], [], []
    for row in rows:
        ids, lab, pos = [], [], []
        for example in row:
            ids += example["input_ids"]
            lab += [IGNORE_INDEX] + list(example["labels"][1:])
            pos += list(range(len(example["input_ids"])))
        pad = width - len(ids)
        mask.append([1] * len(ids) + [0] * pad)
        input_ids.append(ids + [pad_token_id] * pad)
        labels.append(lab + [IGNORE_INDEX] * pad)
        positions.append(pos + list(range(pad)))
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask), "position_ids": torch.tensor(positions)}


def is_packed(batch) -> bool:
    """True for a batch from :func:`pack_batch` (it carries ``position_ids``)."""
    return isinstance(batch, dict) and batch.get("position_ids") is not None


def attention_implementation(model) -> str:
    """The model's attention implementation (``eager``, ``sdpa``, ``flash_attention_2`` ...)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def check_packing_support(model) -> None:
    """Raise ``ModelError`` unless packed batches can be kept apart in this model's attention."""
    implementation = attention_implementation(model)
    if implementation not in MASK_IMPLEMENTATIONS and "flash" not in implementation:
        raise ModelError(f"loader.packing=true needs attn_implementation eager, sdpa or flash_attention_2; "
                         f"this model uses '{implementation}': set model.attn_implementation=sdpa or "
                         "loader.packing=false")


def block_causal_mask(position_ids, dtype):
    """``(batch, 1, length, length)`` additive mask: 0 where a token may attend, ``finfo(dtype).min`` elsewhere.

    A token attends to itself and to the earlier tokens of its own sequence;
    a sequence starts at each ``position_ids == 0``.
    """
    import torch

    segments = (position_ids == 0).cumsum(-1)
    length = position_ids.size(-1)
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def varlen_arguments(position_ids) -> dict:
    """FlashAttention's variable-length arguments for the rows of ``position_ids`` laid end to end."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    total = torch.tensor([flat.numel()], device=flat.device)
    cu_seq_lens = torch.cat([starts, total]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest}


def packed_attention_inputs(model, position_ids) -> dict:
    """Forward arguments that keep packed sequences apart in ``model``'s attention.

    ``eager``/``sdpa``: ``attention_mask`` = :func:`block_causal_mask` in the
    model's dtype (transformers passes a 4D mask through unchanged);
    ``flash_attention_2``/``_3``: ``attention_mask=None`` plus
    :func:`varlen_arguments` (transformers' FlashAttention path then runs
    ``flash_attn_varlen_func`` over the flattened rows).  Both also pass
    ``position_ids``.  Other implementations raise ``ModelError``.
    """
    import torch

    check_packing_support(model)
    implementation = attention_implementation(model)
    if implementation in MASK_IMPLEMENTATIONS:
        dtype = getattr(model, "dtype", None)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            dtype = torch.float32
        return {"attention_mask": block_causal_mask(position_ids, dtype), "position_ids": position_ids}
    return {"attention_mask": None, "position_ids": position_ids, **varlen_arguments(position_ids)}


def length_grouped_order(order: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int,
                         shuffle: bool = True, megabatch: int = MEGABATCH_BATCHES) -> list[int]:
    """``order`` rearranged so that consecutive ``batch_size`` items have similar lengths.

    ``order`` is cut into mega-batches of ``megabatch * batch_size`` items, each
    sorted by length (longest first, ties in ``order``), then cut into
    batches; with ``shuffle`` the batches are shuffled (seeded by ``seed``)
    across the whole epoch (a short last batch stays last).  Every item of
    ``order`` appears exactly once.
    ``batch_size`` here is the *global* batch (per-rank batch x world size), so
    that striding by rank afterwards gives every rank a slice of the same batch.
    """
    order = list(order)
    size = max(1, megabatch * batch_size)
    batches = []
    for start in range(0, len(order), size):
        group = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    tail = batches.pop() if batches and len(batches[-1]) < batch_size else []
    if shuffle:  # a short last batch stays last, so the others keep their batch boundaries
        random.Random(seed).shuffle(batches)
    return [index for batch in [*batches, tail] for index in batch]

"""The loss interface and shared loss arithmetic.

A loss plugin's ``build(config, context)`` returns ``loss_fn(model, batch) -> LossOutput``;
``context`` is a :class:`LossContext` (the tokenizer, and a way to load other
models, e.g. a distillation teacher, through the registered model sources).
The function runs the forward pass itself.  ``batch`` holds padded tensors
(``input_ids``, ``attention_mask``, ``labels`` with -100 on untrained tokens,
and any other fields the dataset produced, e.g. ``chosen_input_ids``).  With
``loader.packing`` a batch also holds ``position_ids`` (several examples per
row); :func:`model_inputs` turns any batch into the forward arguments that
keep packed examples apart, and a loss whose spec says
``supports_packing=True`` must use it.

Normalisation contract (see docs/losses.md): ``LossOutput.loss`` is the *mean*
over ``LossOutput.num_tokens`` units (trained tokens, or preference pairs).
The trainer multiplies it back into a sum and divides the gradient by the
number of units in the whole accumulation window (all micro-batches, all
devices), so ``trainer.accumulate_grad_batches=k`` gives exactly the gradient
of one k-times larger batch.  A loss that leaves ``num_tokens=None`` is
weighted as one unit per micro-batch (a mean of micro-batch means).

The helpers below are public: third-party losses may use them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tuneforge.data import IGNORE_INDEX

#: the float32 logits of one chunk of the default loss (:mod:`tuneforge.linear_cross_entropy`) stay under
#: this size: on the CPU below glibc's largest mmap threshold (32 MiB), so the chunk's memory is reused from
#: one chunk to the next instead of being faulted in again; on a GPU, whose caching allocator reuses memory
#: anyway, larger chunks mean fewer kernel launches
CHUNK_BYTES = {"cpu": 16 * 2 ** 20, "other": 256 * 2 ** 20}
#: bytes per position and vocabulary entry that plain autograd holds at the peak besides the logits
#: themselves (in the activation dtype): their float32 copy, the log-probabilities and the gradient
LOGIT_EXTRA_BYTES = 12


@dataclass
class LossOutput:
    """What a loss function returns.

    ``loss``: scalar tensor to minimise, the mean over ``num_tokens`` units.
    ``num_tokens``: how many units (trained tokens, preference pairs ...) the
    mean is over; the trainer uses it to average over a whole accumulation
    window.  ``None`` means "not reported": the micro-batch counts as one unit.
    ``metrics``: extra floats/tensors to log (e.g. ``{"z_loss": ...}``).
    """

    loss: object
    num_tokens: Optional[int] = None
    metrics: dict = field(default_factory=dict)


@dataclass
class LossContext:
    """What a loss may need besides its config.

    ``load_model(model_config)`` loads ``(model, tokenizer)`` with a registered
    model source; ``model_config`` is a mapping with ``name`` (the source, e.g.
    ``hf`` or ``tiny``) and that source's fields.

    ``rewards``: the run's selected rewards (:class:`tuneforge.rewards.Rewards`),
    built, for a loss whose spec says ``needs_rewards``; None for the others.
    """

    tokenizer: Any
    load_model: Callable[[Any], tuple]
    rewards: Any = None


def loss_output_problem(output: Any) -> Optional[str]:
    """What is wrong with ``output`` as a loss function's result (None: nothing), worded to follow
    "returned" (see :func:`tuneforge.host.plugin_returns.loss_output`): not a :class:`LossOutput`, a ``loss`` that is not a one-element
    floating-point tensor, a ``loss`` without a gradient while gradients are on (training: it was
    detached from the model's output, or computed under ``torch.no_grad``), or a ``num_tokens`` that is
    not a count."""
    import torch

    from tuneforge.host.guard import type_name

    if not isinstance(output, LossOutput):
        return type_name(output)
    loss, units = output.loss, output.num_tokens
    if not isinstance(loss, torch.Tensor):
        return f"a LossOutput whose loss is {type_name(loss)}"
    if loss.numel() != 1 or not loss.is_floating_point():
        return f"a LossOutput whose loss is a {loss.dtype} tensor of shape {tuple(loss.shape)}"
    if torch.is_grad_enabled() and not loss.requires_grad:
        return ("a LossOutput whose loss has no gradient (detached from the model's output, or computed "
                "under torch.no_grad)")
    if units is not None:
        if isinstance(units, torch.Tensor):
            units = units.item() if units.numel() == 1 else units
        if isinstance(units, bool) or not isinstance(units, (int, float)) or units < 0:
            return f"a LossOutput whose num_tokens is {units!r}"
    if not isinstance(output.metrics, dict):
        return f"a LossOutput whose metrics is {type_name(output.metrics)}"
    return None


def loss_weight(output: LossOutput) -> float:
    """How many units ``output.loss`` averages over (1 when the loss did not say)."""
    return 1.0 if output.num_tokens is None else float(output.num_tokens)


class ReferenceModel:
    """The reference of an objective that keeps the policy close to the base model (``dpo``, ``kto``,
    ``grpo``): the trained model with its PEFT adapter disabled (no second copy of the weights), or, for a
    model without a PEFT adapter (``adapter=full``/``freeze``), a frozen copy taken the first time it is
    needed (before the first optimizer step).  One instance per built loss."""

    def __init__(self):
        self._source_id, self._copy = None, None

    def run(self, model, forward, *inputs):
        """``forward(reference, *inputs)`` without gradients, ``reference`` being ``model``'s reference."""
        import torch

        with torch.no_grad():
            if is_peft_model(model):
                with model.disable_adapter():
                    return forward(model, *inputs)
            return forward(self._frozen_copy(model), *inputs)

    def _frozen_copy(self, model):
        import copy

        if self._copy is None or self._source_id != id(model):
            self._copy = copy.deepcopy(model).eval()
            self._copy.requires_grad_(False)
            self._source_id = id(model)
        return self._copy


def is_peft_model(model) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (its adapter can be switched off)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


# ---------------------------------------------------------------------------
# The memory of the output layer and the logits, for ``tuneforge plan`` (LossSpec.logits_bytes)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitsWork:
    """What the memory of a loss's output layer and logits depends on, as ``tuneforge plan`` sees a step:
    ``tokens`` positions per device (batch x length, every one counted as trained: the most a batch can
    need), the model's ``vocab_size`` and ``hidden_size``, ``element_bytes`` of an activation (2 under
    16-bit autocast, 4 in float32), the ``device_kind`` (``cpu`` or ``gpu``) and ``weight_bytes`` of the
    loaded weights (an output layer already in the activation dtype needs no cast copy)."""

    tokens: int
    vocab_size: int
    hidden_size: int
    element_bytes: int
    device_kind: str = "cpu"
    weight_bytes: int = 4


def full_logits_bytes(work: LogitsWork) -> float:
    """Every position's logits built with plain autograd (the default of a loss that declares nothing: DPO,
    distillation, an output layer with its own forward): the logits, their float32 copy, the
    log-probabilities and the gradient (:data:`LOGIT_EXTRA_BYTES`)."""
    return work.tokens * work.vocab_size * (work.element_bytes + LOGIT_EXTRA_BYTES)


def chunked_logits_bytes(work: LogitsWork, rows: int, entry_bytes: Optional[float] = None) -> float:
    """The output layer applied ``rows`` positions at a time: one chunk's logits at ``entry_bytes`` per
    vocabulary entry (default: what plain autograd holds, the activation bytes + :data:`LOGIT_EXTRA_BYTES`,
    as ``chunked_cross_entropy``'s checkpointed chunks do), the gathered hidden states with their float32
    gradient, and the output layer's weight cast to the activation dtype when it is loaded in another.  (A
    trained output layer's own gradient is counted with the other gradients.)"""
    per_entry = work.element_bytes + LOGIT_EXTRA_BYTES if entry_bytes is None else entry_bytes
    chunk = min(rows, work.tokens) * work.vocab_size * per_entry
    hidden = work.tokens * work.hidden_size * (work.element_bytes + 4)
    cast = work.element_bytes != work.weight_bytes
    cast_weight = work.vocab_size * work.hidden_size * work.element_bytes if cast else 0
    return chunk + hidden + cast_weight


def fused_chunk_rows(vocab_size: int, device_kind: str) -> int:
    """Rows per chunk of :func:`tuneforge.linear_cross_entropy.linear_cross_entropy_sums`: what keeps one
    chunk's float32 logits under :data:`CHUNK_BYTES` for the device (at least 16)."""
    return max(16, CHUNK_BYTES["cpu" if device_kind == "cpu" else "other"] // (4 * vocab_size))


def cross_entropy_logits_bytes(work: LogitsWork) -> float:
    """The default loss's (``loss=cross_entropy``) on a plain output layer: chunks of :func:`fused_chunk_rows`
    whose logits are reused in place (:mod:`tuneforge.linear_cross_entropy`): in the activation dtype, in
    float32 and as a gradient, 8 bytes per entry beyond the activation's (measured with torch's profiler on
    the CPU: about 10 per entry under bf16 autocast, 7 in float32, where the float32 copy is the logits
    themselves)."""
    return chunked_logits_bytes(work, fused_chunk_rows(work.vocab_size, work.device_kind), work.element_bytes + 8)


# ---------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------


def model_inputs(model, batch) -> dict:
    """Keyword arguments for ``model``'s forward from a batch: ``input_ids`` and ``attention_mask``,
    and for a packed batch (one with ``position_ids``, see :mod:`tuneforge.data.packing`) the
    ``position_ids`` plus the attention arguments that keep its examples apart in this model's
    attention implementation (a block-diagonal causal 4D mask, or FlashAttention's varlen
    arguments)."""
    from tuneforge.data.packing import is_packed, packed_attention_inputs

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if is_packed(batch):
        inputs.update(packed_attention_inputs(model, batch["position_ids"]))
    return inputs


def causal_lm_logits(model, input_ids, attention_mask=None, *, last: Optional[int] = None, **inputs):
    """Logits ``(batch, length, vocab)`` aligned with ``input_ids``.

    ``inputs`` are further forward arguments (``position_ids`` ... from
    :func:`model_inputs`).  Adapters that prepend virtual tokens (peft prompt
    tuning) return longer logits; the extra leading positions are cut off here.
    ``last``: only the logits of the last ``last`` positions ``(batch, last, vocab)``, which the
    model then computes alone (transformers' ``logits_to_keep``): the LM head's output is the
    largest tensor of a forward pass, and a loss on completions needs no logits over the prompt.
    """
    if last is not None:
        inputs[_logits_to_keep_keyword()] = int(last)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits
    return logits[:, -(input_ids.size(1) if last is None else int(last)):]


def _logits_to_keep_keyword() -> str:
    """``logits_to_keep`` (transformers >= 4.49), ``num_logits_to_keep`` before.

    Older causal LMs swallow unknown keywords into ``**kwargs``, so the wrong
    name would silently build the full logits instead of failing.
    """
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return "logits_to_keep" if (major, minor) >= (4, 49) else "num_logits_to_keep"


def _hidden_forward(model, input_ids, attention_mask, inputs):
    """``(outputs, lm_head)`` of a forward asked for hidden states and one position of logits,
    or ``None`` when the model cannot do that (no ``logits_to_keep``, no hidden states).

    ``use_cache`` is left to the model's config, as in :func:`causal_lm_logits`:
    forcing it off breaks peft prefix tuning on older lines (transformers 4.47
    with peft 0.13: the prefix's legacy tuple of past keys becomes a cache
    object only when caching is on).
    """
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        return None
    try:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        **{_logits_to_keep_keyword(): 1}, **inputs)
    except TypeError:
        return None
    if getattr(outputs, "hidden_states", None) is None:
        return None
    return outputs, lm_head


def final_hidden_states(model, input_ids, attention_mask=None, **inputs):
    """``(hidden, lm_head)``: the last hidden states (after the final norm) and the output layer.

    The model is asked for only one position of logits (``logits_to_keep=1``,
    ``num_logits_to_keep=1`` before transformers 4.49), so the full
    ``length x vocab`` logits are never built.  ``inputs`` are further forward
    arguments (see :func:`model_inputs`).  Raises ``ModelError`` for models
    whose forward does not take that keyword or that expose no output layer /
    hidden states.
    """
    from tuneforge.errors import ModelError

    result = _hidden_forward(model, input_ids, attention_mask, inputs)
    if result is None:
        raise ModelError(f"loss=chunked_cross_entropy needs a causal LM whose forward accepts "
                         f"{_logits_to_keep_keyword()} and returns hidden states, with output embeddings "
                         "(transformers >= 4.47); this one does not: use loss=cross_entropy")
    outputs, lm_head = result
    hidden = outputs.hidden_states[-1]
    return hidden[:, -input_ids.size(1):], lm_head


#: config attributes of models whose logits are not just ``lm_head(hidden)``
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _head_is_plain(model, outputs, lm_head, hidden) -> bool:
    """True when the model's logits are ``lm_head(last hidden state)`` (no soft-capping or scaling)."""
    import torch

    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    with torch.no_grad():
        expected = outputs.logits[:, -1].float()
        return bool(torch.allclose(lm_head(hidden[:, -1]).float(), expected, rtol=1e-3, atol=1e-4))


@dataclass
class TrainedPositions:
    """The trained positions of a batch (position ``t`` is trained when the label at ``t+1`` is not -100).

    ``targets`` ``(tokens,)``: their next tokens.  Either ``hidden`` ``(tokens, dim)`` and ``lm_head``
    (the model's logits are ``lm_head(hidden)``, and the output layer has not been applied yet), or
    ``logits`` ``(tokens, vocab)`` for models whose logits are more than that.
    """

    targets: Any
    hidden: Any = None
    lm_head: Any = None
    logits: Any = None

    def trained_logits(self):
        """``(tokens, vocab)`` logits of the trained positions."""
        return self.logits if self.logits is not None else self.lm_head(self.hidden)

    def cross_entropy_sums(self, label_smoothing: float = 0.0, with_z: bool = False):
        """``(nll_sum, z_sum, count)`` as :func:`picked_cross_entropy_sums` computes them on
        :meth:`trained_logits`; with a plain output layer the logits are never all built
        (:func:`tuneforge.linear_cross_entropy.linear_cross_entropy_sums`)."""
        from tuneforge.linear_cross_entropy import fusable_output_layer, linear_cross_entropy_sums

        if self.logits is None and fusable_output_layer(self.lm_head):
            return linear_cross_entropy_sums(self.hidden, self.lm_head, self.targets, label_smoothing, with_z)
        return picked_cross_entropy_sums(self.trained_logits(), self.targets, label_smoothing, with_z)


def trained_positions(model, batch) -> TrainedPositions:
    """The forward pass of a causal-LM loss, kept to the trained positions (:class:`TrainedPositions`).

    The model returns its last hidden states (one position of logits,
    ``logits_to_keep=1``); those of the trained positions are gathered, and
    the output layer is left for the loss to apply, so neither the full
    ``length x vocab`` logits nor a shifted copy of them is built.  Models
    whose logits are more than ``lm_head(hidden)`` (soft-capping, scaling;
    checked on the config and, once per model, on the returned position) or
    whose forward lacks ``logits_to_keep`` get the full logits, of which the
    trained positions are gathered without a shifted copy.
    """
    inputs = model_inputs(model, batch)
    input_ids, attention_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    targets = labels[mask]
    plain = _PLAIN_HEADS.get(model)
    if plain is not False:
        result = _hidden_forward(model, input_ids, attention_mask, inputs)
        if result is None:
            _PLAIN_HEADS[model] = False
        else:
            outputs, lm_head = result
            hidden = outputs.hidden_states[-1][:, -input_ids.size(1):]
            if plain is None:
                plain = _PLAIN_HEADS[model] = _head_is_plain(model, outputs, lm_head, hidden)
            if plain:
                return TrainedPositions(targets, hidden=hidden[:, :-1][mask], lm_head=lm_head)
    logits = causal_lm_logits(model, input_ids, attention_mask, **inputs)
    return TrainedPositions(targets, logits=logits[:, :-1][mask])


def trained_logits(model, batch):
    """``(logits, targets)`` of the trained positions only: ``(tokens, vocab)`` and ``(tokens,)``
    (:func:`trained_positions` with the output layer applied)."""
    positions = trained_positions(model, batch)
    return positions.trained_logits(), positions.targets


#: model -> whether its logits are lm_head(hidden) (see :func:`trained_logits`)
_PLAIN_HEADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------
# Token-level arithmetic
# ---------------------------------------------------------------------------


def shift_for_next_token(logits, labels):
    """Align logits at position t with the label at t+1 (causal LM).

    Logits longer than the labels (virtual prompt tokens in front) are cut to
    the labels' length first.
    """
    logits = logits[:, -labels.size(1):]
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


def cross_entropy_sums(logits, labels, label_smoothing: float = 0.0, with_z: bool = True):
    """``(nll_sum, z_sum, count)`` on already shifted logits/labels.

    ``nll_sum``: summed (label-smoothed) cross entropy of trained tokens;
    ``z_sum``: summed ``logsumexp(logits)^2`` of trained tokens (the z-loss of
    PaLM; 0 when ``with_z=False``); ``count``: number of trained tokens.
    """
    mask = labels != IGNORE_INDEX
    return picked_cross_entropy_sums(logits[mask], labels[mask], label_smoothing, with_z)


def picked_cross_entropy_sums(logits, targets, label_smoothing: float = 0.0, with_z: bool = True):
    """:func:`cross_entropy_sums` on the ``(tokens, vocab)`` logits of trained tokens and their
    ``(tokens,)`` targets (e.g. from :func:`trained_logits`)."""
    import torch.nn.functional as F

    picked = logits.float()
    nll = F.cross_entropy(picked, targets, reduction="sum", label_smoothing=label_smoothing)
    z = (picked.logsumexp(-1) ** 2).sum() if with_z else picked.new_zeros(())
    return nll, z, int(targets.numel())


def chunked_cross_entropy_sums(hidden, labels, lm_head, chunk_size: int = 1024, label_smoothing: float = 0.0,
                               with_z: bool = True):
    """Same as :func:`cross_entropy_sums` from hidden states, never building all logits.

    ``hidden`` ``(batch, length, dim)`` and ``labels`` ``(batch, length)`` are
    *not* shifted.  Only trained positions are kept, then ``lm_head`` (the
    output layer, e.g. ``model.get_output_embeddings()``) is applied
    ``chunk_size`` tokens at a time under activation checkpointing: a chunk's
    logits are freed as soon as its loss is taken and recomputed during
    backward, so peak logits memory is ``chunk_size x vocab`` instead of
    ``tokens x vocab``.  ``with_z=False`` skips the z-loss sum (returned as 0).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    hidden, labels = hidden[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    picked = hidden[mask]
    targets = labels[mask]
    count = int(targets.numel())

    def chunk_sums(h, t):
        logits = lm_head(h).float()
        nll = F.cross_entropy(logits, t, reduction="sum", label_smoothing=label_smoothing)
        z = (logits.logsumexp(-1) ** 2).sum() if with_z else logits.new_zeros(())
        return nll, z

    nll_total = picked.new_zeros((), dtype=torch.float32)
    z_total = picked.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        h, t = picked[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled():
            nll, z = checkpoint(chunk_sums, h, t, use_reentrant=False)
        else:
            nll, z = chunk_sums(h, t)
        nll_total = nll_total + nll
        z_total = z_total + z
    return nll_total, z_total, count


def sequence_logps(logits, labels):
    """Per-sequence sum of log-probabilities of the trained labels, and trained-token counts.

    ``logits`` ``(batch, length, vocab)`` and ``labels`` ``(batch, length)``
    unshifted; returns two ``(batch,)`` tensors.
    """
    import torch.nn.functional as F

    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    token_logp = -F.cross_entropy(logits.float().transpose(1, 2), safe, reduction="none")
    return (token_logp * mask).sum(-1), mask.sum(-1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, *, beta: float,
             variant: str = "sigmoid", label_smoothing: float = 0.0):
    """Per-pair DPO loss from sequence log-probabilities (all ``(pairs,)`` tensors).

    ``sigmoid`` (Rafailov et al. 2023): ``-log sigmoid(beta * h)``, with
    conservative label smoothing ``eps``: ``-(1-eps) log s(beta h) - eps log s(-beta h)``.
    ``ipo`` (Azar et al. 2023): ``(h - 1/(2 beta))^2``; pass length-averaged
    log-probabilities for IPO.  ``h`` is the policy's chosen-minus-rejected
    margin minus the reference's.
    """
    import torch.nn.functional as F

    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if variant == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if variant == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    from tuneforge.errors import ConfigError

    raise ConfigError(f"loss.variant is '{variant}'; valid: sigmoid, ipo")


def kl_div_sum(student_logits, teacher_logits, labels, temperature: float = 1.0):
    """``(sum over trained tokens of KL(teacher || student), count)`` at ``temperature``.

    Both logits unshifted ``(batch, length, vocab)``; positions are those whose
    next-token label is trained.  The KL is of the temperature-softened
    distributions and is *not* multiplied by ``temperature**2``.
    """
    student_logits, shifted = shift_for_next_token(student_logits, labels)
    teacher_logits, _ = shift_for_next_token(teacher_logits, labels)
    mask = shifted != IGNORE_INDEX
    student_logp = (student_logits[mask].float() / temperature).log_softmax(-1)
    teacher_logp = (teacher_logits[mask].float() / temperature).log_softmax(-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
    return kl, int(mask.sum())


def log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, computed without cancellation (branch at ``-log 2``)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_avg_logps, rejected_avg_logps, *, beta: float):
    """Per-pair ORPO loss (Hong et al. 2024) and the log odds ratio, from *length-averaged* log-probabilities.

    ``loss = -chosen_avg_logp - beta * log sigmoid(log_odds)`` with
    ``log_odds = log(p_c / (1 - p_c)) - log(p_r / (1 - p_r))`` and ``p = exp(avg logp)``:
    the chosen answer's mean token NLL plus ``beta`` (the paper's lambda) times the odds-ratio term.
    """
    import torch.nn.functional as F

    chosen, rejected = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return -chosen - beta * F.logsigmoid(log_odds), log_odds


def simpo_loss(chosen_avg_logps, rejected_avg_logps, *, beta: float, gamma: float, label_smoothing: float = 0.0):
    """Per-pair SimPO loss (Meng et al. 2024) from *length-averaged* log-probabilities.

    ``-log sigmoid(z)`` with ``z = beta * (avg logp chosen - avg logp rejected) - gamma``; with
    label smoothing ``eps``: ``-(1-eps) log sigmoid(z) - eps log sigmoid(-z)`` (as TRL's CPO ``simpo``).
    """
    import torch.nn.functional as F

    z = beta * (chosen_avg_logps.float() - rejected_avg_logps.float()) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def kto_loss(policy_logps, reference_logps, desirable, kl, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """Per-example KTO loss (Ethayarajh et al. 2024, eq. 7) from summed answer log-probabilities.

    ``desirable`` is a bool tensor (the mark), ``kl`` the reference point (a detached scalar, >= 0: see
    :func:`kto_reference_point`).  With ``r = policy - reference``: a desirable answer costs
    ``desirable_weight * (1 - sigmoid(beta * (r - kl)))``, an undesirable one
    ``undesirable_weight * (1 - sigmoid(beta * (kl - r)))``.
    """
    import torch

    ratio = policy_logps.float() - reference_logps.float()
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable.bool(), good, bad)


def kto_reference_point(policy_mismatched_logps, reference_mismatched_logps, *, across_processes: bool = False):
    """KTO's reference point: the batch mean of ``policy - reference`` log-probabilities of *mismatched*
    (prompt, answer) pairs, an estimate of KL(policy || reference), clamped at 0 and detached.

    ``across_processes``: in a process group (DDP), the mean of every process's estimate, as TRL gathers
    it, so that all ranks train against one reference point.  Every rank must then call it together
    (training steps do; a validation pass, whose batches may differ per rank, should not)."""
    import torch

    from tuneforge.evaluation.sharding import distributed_world

    estimate = (policy_mismatched_logps.float() - reference_mismatched_logps.float()).mean().detach()
    world = distributed_world()[1] if across_processes else 1
    if world > 1:
        torch.distributed.all_reduce(estimate, op=torch.distributed.ReduceOp.SUM)
        estimate = estimate / world
    return estimate.clamp(min=0)

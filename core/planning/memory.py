"""The memory estimate of one run, per device: pure arithmetic on :class:`~tuneforge.planning.model_facts.ModelFacts`
and a :class:`Workload` (see docs/memory.md for the formulas, their sources and their limits).

- weights: the parameters that do not train, at the loaded dtype (``-true`` precisions convert them);
  a quantized base keeps its linear-layer weights in 4 bits (plus one float32 absmax per 64-weight
  block, or with double quantization one byte per block plus a float32 per 256 blocks) or 8 bits (plus
  a float32 scale per row), and the rest (embeddings, output layer, norms) in float32, which is what
  ``peft.prepare_model_for_kbit_training`` leaves them in;
- trainable weights, their gradients (same dtype) and the optimizer state
  (:attr:`~tuneforge.specs.OptimizerSpec.state_bytes_per_parameter`; AdamW's 8 when the run selects none);
- activations: what the forward pass keeps for the backward pass, per token and layer
  (:data:`LAYER_ACTIVATIONS`), plus the loss's output layer and logits (``LossSpec.logits_bytes``; by
  default every position's logits and their gradient in float32); with gradient checkpointing
  each layer keeps only its input and one layer's activations are rebuilt at a time;
- the runtime: what the process holds besides tensors (:data:`CPU_RUNTIME_BYTES`, :data:`GPU_RUNTIME_BYTES`);
- strategies: DDP replicates everything; FSDP shards weights, gradients and optimizer state over the
  devices; DeepSpeed ZeRO stage 1 shards the optimizer state, stage 2 gradients too, stage 3 the weights too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.losses import LogitsWork, full_logits_bytes
from tuneforge.planning.model_facts import ModelFacts
from tuneforge.planning.sizes import format_count

#: bytes per weight of a bitsandbytes 4-bit layer: half a byte + a float32 absmax per 64-weight block;
#: with double quantization the absmax is one byte, plus a float32 per 256 blocks
NF4_BYTES = 0.5 + 4 / 64
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)

#: activation elements kept per token and transformer layer, as multiples of the hidden size, of the
#: key/value width (kv heads x head dim) and of the MLP width.  Counted with
#: ``torch.autograd.graph.saved_tensors_hooks`` on a Llama block with LoRA on every linear layer (peft,
#: dropout 0.05) on the CPU, varying one width at a time (docs/memory.md): the norms, q/k/v and their
#: rotary copies, the attention output, residuals, the gated MLP's intermediates and the adapter's
#: dropped-out inputs.
LAYER_ACTIVATIONS = {"hidden": 18.5, "kv": 4.3, "intermediate": 8.4}
#: the peak holds more than the saved tensors: the gradients of the layer the backward pass is in and
#: the allocator's slack (fitted to SmolLM2's measured peaks, docs/memory.md)
BACKWARD_SLACK = 1.1

#: resident memory of a CPU training process besides its tensors: Python, torch, transformers, peft,
#: Lightning, tuneforge, the tokenizer and the tokenized data (the measured peaks' intercept at batch 0
#: minus the weights, docs/memory.md)
CPU_RUNTIME_BYTES = int(0.72 * 2 ** 30)
#: a GPU process's memory besides tensors: the CUDA context and kernels (cuBLAS workspaces)
GPU_RUNTIME_BYTES = int(0.75 * 2 ** 30)
#: share of the tensor memory a GPU's caching allocator holds on top (fragmentation)
GPU_ALLOCATOR_OVERHEAD = 0.05

#: bytes per kept activation element under autocast (the ``-mixed`` precisions): the matrix products'
#: outputs are 16-bit, but the norms' outputs, the residual stream and the softmax inputs stay float32.
#: Measured: SmolLM2, LoRA, 8 x 256 on the CPU, bf16-mixed kept 0.61 of float32's activations
#: (3.47 against 5.65 GiB, benchmarks/memory_peaks.py, docs/memory.md): 2.46 bytes an element
MIXED_ACTIVATION_BYTES = 2.5
#: Lightning precision -> (bytes per weight element after the conversion or None: as loaded,
#: bytes per activation element of the 16-bit dtype the matrix products give)
PRECISION_BYTES = {
    "32-true": (None, 4), "32": (None, 4), "64-true": (8, 8), "64": (8, 8),
    "16-mixed": (None, 2), "16": (None, 2), "bf16-mixed": (None, 2), "bf16": (None, 2),
    "16-true": (2, 2), "bf16-true": (2, 2), "transformer-engine": (None, 2), "transformer-engine-float16": (None, 2),
}
#: the precisions that compute under autocast over float32 activations (:data:`MIXED_ACTIVATION_BYTES`): the
#: weights stay as loaded and the matrix products give 16-bit outputs
MIXED_PRECISIONS = tuple(name for name, (weights, products) in PRECISION_BYTES.items()
                         if weights is None and products == 2)


@dataclass(frozen=True)
class Workload:
    """How a run uses one device: ``batch_size`` rows of ``sequence_length`` tokens, ``precision``
    (Lightning's name), the base's ``quantization`` (``nf4``/``fp4``/``int8``/None, ``double_quant``),
    ``checkpointing``, ``optimizer`` (name) and its ``state_bytes`` per trainable parameter, the
    ``strategy`` name, ``world_size`` (devices x nodes), the ``device_kind`` (``cpu``/``gpu``), and the bytes
    of the loss's output layer and logits (``logits_bytes``, from ``LossSpec.logits_bytes``; None: every
    position's full logits, :func:`tuneforge.losses.full_logits_bytes`) with what they are (``logits_note``);
    ``precision_note``: what ``precision`` is still subject to (``trainer.precision=auto``'s calibration)."""

    batch_size: int
    sequence_length: int
    precision: str = "32-true"
    quantization: Optional[str] = None
    double_quant: bool = False
    checkpointing: bool = False
    optimizer: str = "adamw"
    state_bytes: float = 8.0
    strategy: str = "auto"
    world_size: int = 1
    device_kind: str = "cpu"
    logits_bytes: Optional[float] = None
    logits_note: str = ""
    precision_note: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of each part (``parts``: name -> bytes, in table order) and how each was reached
    (``details``: name -> a short explanation)."""

    parts: dict
    details: dict

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))


def estimate(facts: ModelFacts, work: Workload) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of ``facts`` under ``work``."""
    param_bytes, activation_bytes = PRECISION_BYTES.get(str(work.precision), (None, 4))
    trainable = facts.trainable_parameters
    # bytes per trainable element as built (adapter weights may be float32 over a 16-bit base); a "-true"
    # precision converts every parameter
    trainable_bytes = param_bytes or (facts.trainable_bytes / trainable if trainable else facts.weight_bytes)
    details = {}
    if work.quantization:
        quantized = facts.linear_weights
        per_weight = {"nf4": NF4_DOUBLE_QUANT_BYTES if work.double_quant else NF4_BYTES,
                      "fp4": NF4_DOUBLE_QUANT_BYTES if work.double_quant else NF4_BYTES}.get(work.quantization)
        if per_weight is None:  # int8: a byte per weight and a float32 scale per output row
            quantized_bytes = quantized + 4 * facts.linear_rows
        else:
            quantized_bytes = quantized * per_weight
        rest = max(facts.frozen_parameters - quantized, 0)
        weights = quantized_bytes + rest * 4
        trainable_bytes = 4  # adapter weights over a quantized base train in float32
        details["weights"] = (f"{format_count(quantized)} linear weights in {work.quantization}"
                              f"{' (double quant)' if work.double_quant and per_weight else ''} "
                              f"+ {format_count(rest)} others in float32")
    else:
        weights = facts.frozen_parameters * param_bytes if param_bytes else facts.frozen_bytes
        details["weights"] = (f"{format_count(facts.frozen_parameters)} frozen x "
                              f"{param_bytes or facts.frozen_bytes / max(facts.frozen_parameters, 1):g} B")
    parts = {"weights": weights, "trainable weights": trainable * trainable_bytes,
             "gradients": trainable * trainable_bytes, "optimizer state": trainable * work.state_bytes}
    details["trainable weights"] = f"{format_count(trainable)} x {trainable_bytes:g} B"
    details["gradients"] = f"{format_count(trainable)} x {trainable_bytes:g} B"
    details["optimizer state"] = f"{work.optimizer}: {work.state_bytes:g} B per trainable parameter"
    sharded = _sharded_parts(work.strategy)
    if work.world_size > 1 and sharded:
        for name in sharded:
            parts[name] = parts[name] / work.world_size
            details[name] += f", / {work.world_size} devices ({work.strategy})"
    mixed = str(work.precision) in MIXED_PRECISIONS
    kept_bytes = MIXED_ACTIVATION_BYTES if mixed else activation_bytes
    tokens = work.batch_size * work.sequence_length
    logits_bytes = work.logits_bytes
    if logits_bytes is None:  # the loss says nothing: every position's full logits, in the products' dtype
        logits_bytes = full_logits_bytes(LogitsWork(tokens, facts.vocab_size, facts.hidden_size, activation_bytes,
                                                    work.device_kind))
    parts["activations"] = layer_activations(facts, work, kept_bytes) + logits_bytes
    logits = (work.logits_note if work.logits_bytes is not None
              else f"logits {format_count(tokens)} x {format_count(facts.vocab_size)}")
    details["activations"] = (f"{work.batch_size} x {work.sequence_length} tokens, {facts.num_layers} layers, "
                              f"{kept_bytes:g} B each{' (autocast: part float32)' if mixed else ''}"
                              f"{', checkpointed' if work.checkpointing else ''}; "
                              f"{logits}")
    if work.device_kind == "gpu":
        tensors = sum(parts.values())
        parts["runtime"] = GPU_RUNTIME_BYTES + GPU_ALLOCATOR_OVERHEAD * tensors
        details["runtime"] = f"CUDA context + {GPU_ALLOCATOR_OVERHEAD:.0%} allocator fragmentation"
    else:
        parts["runtime"] = CPU_RUNTIME_BYTES
        details["runtime"] = "Python, torch, transformers, Lightning, tokenizer, data"
    return MemoryEstimate(parts={k: int(v) for k, v in parts.items()}, details=details)


def layer_activations(facts: ModelFacts, work: Workload, element_bytes: float) -> float:
    """Bytes the transformer layers' forward pass keeps for backward on one device (see
    :data:`LAYER_ACTIVATIONS`, :data:`BACKWARD_SLACK`) at ``element_bytes`` an element; the loss's output
    layer and logits come on top (:func:`estimate`)."""
    tokens = work.batch_size * work.sequence_length
    kv_width = facts.num_kv_heads * facts.head_dim
    layer = (LAYER_ACTIVATIONS["hidden"] * facts.hidden_size + LAYER_ACTIVATIONS["kv"] * kv_width
             + LAYER_ACTIVATIONS["intermediate"] * facts.intermediate_size)
    if work.checkpointing:  # each layer's input kept; one layer's activations rebuilt during backward
        per_token = facts.num_layers * facts.hidden_size + layer
    else:
        per_token = facts.num_layers * layer + facts.hidden_size
    return tokens * per_token * element_bytes * BACKWARD_SLACK


def _sharded_parts(strategy: str) -> tuple:
    name = str(strategy)
    if name.startswith("fsdp"):
        return ("weights", "trainable weights", "gradients", "optimizer state")
    if name.startswith("deepspeed"):
        import re

        found = re.search(r"stage_(\d)", name)
        stage = int(found.group(1)) if found else 2
        return {1: ("optimizer state",), 2: ("gradients", "optimizer state")}.get(
            stage, ("weights", "trainable weights", "gradients", "optimizer state"))
    return ()

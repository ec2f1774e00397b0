"""The parameter shapes of a plain decoder language model, from its config's fields alone (no torch).

``tuneforge plan`` sizes a run with these when its model source can give the config's fields without
loading anything (:attr:`~tuneforge.specs.ModelSourceSpec.config_fields`), the architecture is one of
:data:`DECODER_FAMILIES` and the adapter can count its own parameters on them
(:attr:`~tuneforge.specs.AdapterSpec.count_parameters`).  Otherwise the model is built on torch's meta
device (:mod:`tuneforge.planning.model_facts`), which is exact for any architecture and adapter but
imports torch, transformers and peft first (seconds on a small CPU).  tests/test_plan_quick.py compares both
ways on every family here, parameter count by parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: the families sized from their fields: transformers' ``model_type`` -> its causal LM class, the
#: defaults its config class gives the fields that shape the model when config.json leaves them out
#: (``None``: derived, see :func:`decoder_shapes`), and whether q/k/v always have a bias (Qwen2) and
#: whether q and k are normalised per head (Qwen3)
DECODER_FAMILIES = {
    "llama": {"class": "LlamaForCausalLM",
              "defaults": {"num_key_value_heads": None, "head_dim": None, "attention_bias": False,
                           "mlp_bias": False, "tie_word_embeddings": False}},
    "mistral": {"class": "MistralForCausalLM",
                "defaults": {"num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False}},
    "qwen2": {"class": "Qwen2ForCausalLM",
              "defaults": {"num_key_value_heads": 32, "tie_word_embeddings": False}, "qkv_bias": True},
    "qwen3": {"class": "Qwen3ForCausalLM",
              "defaults": {"num_key_value_heads": 32, "head_dim": 128, "attention_bias": False,
                           "tie_word_embeddings": False}, "qk_norm": True},
}
#: the fields every family needs; a config without one of them is sized on the meta device
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
#: bytes per element of the dtype names a config gives its weights (``dtype``, or ``torch_dtype`` before
#: transformers 4.56); float32 when it names none, as transformers builds the model
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8, "double": 8}


@dataclass(frozen=True)
class LinearShape:
    """One ``nn.Linear`` of the model: its module path (as ``named_modules`` gives it), its sizes, whether
    it has a bias and the index of the transformer layer it is in (None outside the layers)."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    layer: Optional[int] = None

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class DecoderShapes:
    """The parameters of one decoder causal LM, by kind.

    ``linears``: every linear layer but the output layer (what LoRA's ``all-linear`` adapts and
    bitsandbytes quantizes); ``output``: the output layer (``lm_head``); ``tied``: it shares its weight
    with the input embeddings, so it adds no parameter; ``other_parameters``: the embeddings and the
    norms; ``layer_norm_parameters``: the norms' parameters in each transformer layer;
    ``weight_bytes``: bytes per element of the weights as the source loads them.
    """

    model_type: str
    architecture: str
    linears: tuple
    output: LinearShape
    tied: bool
    other_parameters: int
    layer_norm_parameters: int
    weight_bytes: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @property
    def base_parameters(self) -> int:
        return (sum(linear.parameters for linear in self.linears) + self.other_parameters
                + (0 if self.tied else self.output.parameters))

    def layer_parameters(self, index: int) -> int:
        """Parameters of transformer layer ``index`` (its linear layers and norms)."""
        return sum(linear.parameters for linear in self.linears if linear.layer == index) + self.layer_norm_parameters

    @property
    def bias_parameters(self) -> int:
        """Elements of every bias of the model (the norms have none)."""
        return sum(linear.out_features for linear in self.linears if linear.bias)


def decoder_shapes(fields: dict) -> Optional[DecoderShapes]:
    """The :class:`DecoderShapes` of the causal LM a config's fields describe (``fields``: config.json's
    keys, with ``model_type``); None when the family is not one of :data:`DECODER_FAMILIES`, a field it
    needs is missing, or the config asks for something these shapes do not model (code of its own,
    several experts, a quantization of its own)."""
    family = DECODER_FAMILIES.get(fields.get("model_type"))
    if family is None or fields.get("auto_map") or fields.get("quantization_config"):
        return None
    if any(not isinstance(fields.get(name), int) or fields[name] <= 0 for name in REQUIRED_FIELDS):
        return None
    value = {**family["defaults"], **{k: v for k, v in fields.items() if v is not None}}.get
    hidden, heads, layers = fields["hidden_size"], fields["num_attention_heads"], fields["num_hidden_layers"]
    kv_heads = value("num_key_value_heads") or heads
    head_dim = value("head_dim") or hidden // heads
    inner = fields["intermediate_size"]
    attention_bias = bool(value("attention_bias", False))
    qkv_bias = attention_bias or family.get("qkv_bias", False)
    mlp_bias = bool(value("mlp_bias", False))
    linears = []
    for index in range(layers):
        prefix = f"model.layers.{index}"
        linears += [LinearShape(f"{prefix}.self_attn.q_proj", hidden, heads * head_dim, qkv_bias, index),
                    LinearShape(f"{prefix}.self_attn.k_proj", hidden, kv_heads * head_dim, qkv_bias, index),
                    LinearShape(f"{prefix}.self_attn.v_proj", hidden, kv_heads * head_dim, qkv_bias, index),
                    LinearShape(f"{prefix}.self_attn.o_proj", heads * head_dim, hidden, attention_bias, index),
                    LinearShape(f"{prefix}.mlp.gate_proj", hidden, inner, mlp_bias, index),
                    LinearShape(f"{prefix}.mlp.up_proj", hidden, inner, mlp_bias, index),
                    LinearShape(f"{prefix}.mlp.down_proj", inner, hidden, mlp_bias, index)]
    norms_per_layer = 2 * hidden + (2 * head_dim if family.get("qk_norm") else 0)
    vocab = fields["vocab_size"]
    dtype = str(fields.get("dtype") or fields.get("torch_dtype") or "float32").replace("torch.", "")
    return DecoderShapes(
        model_type=fields["model_type"], architecture=family["class"],
        linears=tuple(linears), output=LinearShape("lm_head", hidden, vocab, False),
        tied=bool(value("tie_word_embeddings")), other_parameters=vocab * hidden + layers * norms_per_layer + hidden,
        layer_norm_parameters=norms_per_layer,
        weight_bytes=DTYPE_BYTES.get(dtype, 4), hidden_size=hidden, intermediate_size=inner, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab)


@dataclass(frozen=True)
class AdapterCount:
    """What an adapter adds to and trains in a model of known shapes (``AdapterSpec.count_parameters``).

    ``adapter_parameters``: parameters it adds (all trained); ``trainable_base_parameters``: parameters of
    the base model it trains; ``adapter_bytes``: bytes per element of its own parameters (peft keeps them
    in float32 over a 16-bit base); ``checkpointing``: it turns gradient checkpointing on.
    """

    adapter_parameters: int = 0
    trainable_base_parameters: int = 0
    adapter_bytes: int = 4
    checkpointing: bool = False

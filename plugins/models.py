"""Model sources: ``hf`` (Hugging Face id, local folder or ``.gguf`` file) and ``tiny``.

Both can load the base quantized by bitsandbytes (``model.quantization=nf4|fp4|int8``, QLoRA):
built with transformers' ``BitsAndBytesConfig`` and prepared for training an adapter on top with
``peft.prepare_model_for_kbit_training``.  A folder or hub id is quantized as ``from_pretrained``
reads it; a model that is first built in memory (``tiny``, or a ``.gguf`` file, which transformers
dequantizes and cannot quantize again while reading) is quantized by ``from_pretrained`` from its
state dict.  No quantization code of tuneforge's own.

Both load the model with the head the run's loss trains (``ModelSourceSpec.heads``): a causal LM, or a
sequence classifier with one label (``load(config, head="sequence_classification")``: a reward model's
scalar head on the same body, ``config.pad_token_id`` set so the score is read at the last real token).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tuneforge
from tuneforge.errors import ModelError
from tuneforge.plugins.model_hub import hub_arguments
from tuneforge.specs import MODEL_HEADS
from tuneforge.validation import ConfigValueError, at_least, check, greater_than, is_placeholder, non_empty, one_of

DTYPES = ("float32", "bfloat16", "float16", "auto")
#: ``model.quantization``: how the base weights are loaded (bitsandbytes); "none": as they are
QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATION_EXTRA = "pip install 'tuneforge[quantization]'"

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def bitsandbytes_installed() -> bool:
    """Whether ``bitsandbytes`` can be imported (found without importing it: that would import torch)."""
    import importlib.util

    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except (ImportError, ValueError):  # ValueError: blocked (sys.modules entry None)
        return False


@dataclass
class QuantizedBaseConfig:
    """The quantization settings both model sources share (QLoRA: see docs/quantization.md).

    quantization: load the base weights quantized by bitsandbytes: ``none`` (as stored), ``nf4``
        or ``fp4`` (4-bit), ``int8`` (8-bit).  A quantized base trains only through an adapter
        that trains weights of its own on top of it (``lora``, ``ia3``, ``prefix``, ``prompt``;
        ``adapter=qlora``); needs ``pip install 'tuneforge[quantization]'``.
    double_quant: 4-bit only: quantize the quantization constants too (about 0.4 bits per weight
        less; QLoRA's "double quantization").
    compute_dtype: 4-bit only: the dtype the 4-bit layers compute in: ``float32`` (CPU),
        ``bfloat16`` or ``float16`` (GPU).  8-bit layers compute with bitsandbytes' int8 matmul.
    """

    quantization: str = "none"
    double_quant: bool = False
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        check(self, quantization=one_of(*QUANTIZATIONS), compute_dtype=one_of(*COMPUTE_DTYPES))
        if self.quantization == "none":
            if self.double_quant:
                raise ConfigValueError("double_quant", "applies to a 4-bit base only; set model.quantization=nf4 "
                                                       "(or fp4), or model.double_quant=false")
            return
        if self.double_quant and self.quantization == "int8":
            raise ConfigValueError("double_quant", "applies to a 4-bit base (nf4, fp4) only, not int8; set "
                                                   "model.double_quant=false")
        if not bitsandbytes_installed():
            raise ConfigValueError("quantization", f"{self.quantization} needs the bitsandbytes package, which is "
                                                   f"not installed: {QUANTIZATION_EXTRA}")


def base_quantization(config: QuantizedBaseConfig) -> Optional[str]:
    """``nf4``, ``fp4``, ``int8``, or None for a full-precision base (:attr:`ModelSourceSpec.base_quantization`)."""
    return None if config.quantization == "none" else config.quantization


def quantization_config(config: QuantizedBaseConfig):
    """transformers' ``BitsAndBytesConfig`` for the config's quantization (None: none)."""
    if config.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if config.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quantization,
                              bnb_4bit_use_double_quant=bool(config.double_quant),
                              bnb_4bit_compute_dtype=_dtype(config.compute_dtype))


def _quantized_load_arguments(config: QuantizedBaseConfig) -> dict:
    """``from_pretrained`` keywords that load the base quantized ({} for none); the weights stay on the
    CPU (Lightning moves the model to the run's device)."""
    quantization = quantization_config(config)
    return {} if quantization is None else {"quantization_config": quantization, "device_map": {"": "cpu"}}


class _OnceFilter:
    """Lets a log message whose text starts with ``prefix`` through once per process."""

    def __init__(self, prefix: str):
        self.prefix, self.seen = prefix, False

    def filter(self, record) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


def _int8_cast_said_once() -> None:
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every forward of every
    8-bit layer (an int8 base in float32 on the CPU): once per process says it."""
    import logging

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in logger.filters):
        logger.addFilter(_OnceFilter("MatMul8bitLt: inputs will be cast"))


def _prepared(model, config: QuantizedBaseConfig):
    """A quantized base made ready for an adapter to train on top of it (peft's
    ``prepare_model_for_kbit_training``: frozen, norms in float32); the adapter's own
    ``gradient_checkpointing`` decides about checkpointing.  A full-precision base as it is."""
    if config.quantization == "none":
        return model
    from peft import prepare_model_for_kbit_training

    if config.quantization == "int8":
        _int8_cast_said_once()
    return _without_cpu_repacking(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False))


def _without_cpu_repacking(model):
    """``model`` with bitsandbytes' CPU repacking of 4-bit layers turned off.

    On CPUs with AVX512-BF16 (the AMX machines), bitsandbytes >= 0.48 repacks a ``Linear4bit``'s weight in
    place for its own CPU kernel the first time the layer runs in eval mode without gradients, which a
    run's base-model evaluation does before training.  The repacked layer computes other numbers than the
    unpacked one (an export's dequantized merge no longer matches it), and training, resuming and FSDP
    on the repacked weights then fail or differ (found by the test suite on an AMX machine).  With the
    switch off, a 4-bit base computes as on every other CPU."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    return model


def _quantize_in_memory(model, config: QuantizedBaseConfig):
    """A model built in memory (``tiny``, a dequantized ``.gguf``), quantized by transformers'
    ``from_pretrained`` from its state dict (transformers cannot quantize a GGUF file while reading it)."""
    arguments = _quantized_load_arguments(config)
    if not arguments:
        return model
    name = model.config.name_or_path  # from_pretrained(None) would record the string "None"
    quantized = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                            **{_dtype_argument(): model.dtype}, **arguments)
    quantized.config.name_or_path = quantized.name_or_path = name
    return quantized


@dataclass
class HFModelConfig(QuantizedBaseConfig):
    """A pretrained causal LM loaded with ``AutoModelForCausalLM``.

    path: Hugging Face model id, a local folder, or a ``.gguf`` file (loaded
        through transformers' ``gguf_file=``, dequantized).  A model id that is
        not in the local cache (``HF_HOME``) stops the run at once, in one line,
        when offline mode is on (``HF_HUB_OFFLINE=1``) or the hub does not answer
        within 5 s; a cached one then loads from the cache alone.
    tokenizer: tokenizer id/folder when it differs from ``path``.
    revision: git revision of a hub model.
    dtype: ``float32`` (CPU default), ``bfloat16``, ``float16`` or ``auto``.
    trust_remote_code: run code shipped with the model; off unless you trust it.
    token: Hugging Face token for gated/private models (default: the
        ``HF_TOKEN`` environment variable, read by transformers); it is redacted
        from every file tuneforge writes.
    allow_pickle: accept pickle-based weights (``pytorch_model.bin``); off by
        default, so only safetensors (or GGUF) weights are read.
    attn_implementation: ``eager``, ``sdpa`` or ``flash_attention_2`` (None: default).
    """

    path: str = "???"
    tokenizer: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    token: Optional[str] = None
    allow_pickle: bool = False
    attn_implementation: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, path=non_empty, dtype=one_of(*DTYPES))
        path = self.path
        if is_placeholder(path):
            return
        if path.endswith(".gguf"):
            if not Path(path).expanduser().is_file():
                raise ConfigValueError("path", f"GGUF file not found: {Path(path).expanduser()}")
        elif Path(path).expanduser().is_file():
            raise ConfigValueError("path", f"{path} is a file, not a model: give a folder with config.json (and "
                                           "its weights), a .gguf file, or a Hugging Face id")
        elif (path.startswith((".", "/", "~")) or Path(path).exists()) and not Path(path).expanduser().is_dir():
            raise ConfigValueError("path", f"no such model folder: {path} "
                                           "(give a Hugging Face id, a folder with config.json, or a .gguf file)")


@dataclass
class TinyModelConfig(QuantizedBaseConfig):
    """A small random Llama and a byte-level tokenizer built in memory (no download).

    For tests and smoke runs: the weights are drawn from ``seed``.

    hidden_size: width of the residual stream.
    intermediate_size: width of each MLP's hidden layer.
    num_hidden_layers: number of transformer blocks.
    num_attention_heads: query heads per block (``hidden_size`` must divide by it).
    num_key_value_heads: key/value heads (grouped-query attention; divides the query heads).
    max_position_embeddings: longest sequence the rotary embeddings are set up for.
    initializer_range: standard deviation of the random weights; larger than a
        real model's 0.02 so a frozen output layer can still express sharp
        distributions and adapters visibly learn within a few steps.
    seed: seed of the random weights (the same seed gives the same model).
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    initializer_range: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, hidden_size=at_least(1), intermediate_size=at_least(1), num_hidden_layers=at_least(1),
              num_attention_heads=at_least(1), num_key_value_heads=at_least(1), max_position_embeddings=at_least(1),
              initializer_range=greater_than(0))
        if not all(isinstance(v, int) for v in (self.hidden_size, self.num_attention_heads, self.num_key_value_heads)):
            return
        if self.hidden_size % self.num_attention_heads:
            raise ConfigValueError("hidden_size", f"must be a multiple of num_attention_heads "
                                                  f"({self.num_attention_heads}), got {self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigValueError("num_key_value_heads", f"must divide num_attention_heads "
                                                          f"({self.num_attention_heads}), got {self.num_key_value_heads}")


@functools.lru_cache(maxsize=None)
def _dtype_argument() -> str:
    """``dtype`` on transformers >= 4.56, ``torch_dtype`` before (where ``dtype`` is unknown)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _dtype(name: str):
    import torch

    valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
    if name not in valid:
        raise ModelError(f"model.dtype is '{name}'; valid: {sorted(valid)}")
    return valid[name]


def _head_arguments(head: str) -> dict:
    """``from_pretrained`` keywords of a head: one score per sequence for ``sequence_classification``."""
    return {"num_labels": 1} if head == "sequence_classification" else {}


def _with_pad_token_id(model, tokenizer):
    """A sequence classifier reads its score at the last token that is not ``config.pad_token_id``: set it
    from the tokenizer when the checkpoint does not say."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_hf(config: HFModelConfig, head: str = "causal_lm"):
    """Load model and tokenizer from a hub id, a folder or a ``.gguf`` file; ``head``: ``causal_lm``
    (``AutoModelForCausalLM``) or ``sequence_classification`` (``AutoModelForSequenceClassification``
    with one label: a reward model's scalar head, newly initialised unless the checkpoint has one)."""
    import transformers
    from transformers import AutoTokenizer

    auto_class = getattr(transformers, MODEL_HEADS[head])

    path = str(config.path)
    source, kwargs = _hf_source(config)
    model_kwargs = dict(kwargs, **{_dtype_argument(): _dtype(config.dtype)})
    if "gguf_file" not in kwargs and not config.allow_pickle:
        model_kwargs["use_safetensors"] = True
    if "gguf_file" not in kwargs:  # a GGUF file is read dequantized, then quantized below
        model_kwargs.update(_quantized_load_arguments(config))
    if config.attn_implementation:
        model_kwargs["attn_implementation"] = config.attn_implementation
    model_kwargs.update(_head_arguments(head))
    if kwargs.get("local_files_only"):  # the auto classes ask the hub for a PEFT adapter_config.json without it
        model_kwargs["adapter_kwargs"] = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or source, **kwargs)
        model = auto_class.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not config.allow_pickle and "safetensors" in str(exc).lower():
            raise ModelError(f"model '{path}' has no safetensors weights; pickle weights run code when "
                             f"loaded, so they are refused unless model.allow_pickle=true ({message})") from exc
        if "trust_remote_code" in str(exc):
            raise ModelError(f"model '{path}' ships its own code; rerun with "
                             f"model.trust_remote_code=true if you trust it ({message})") from exc
        raise ModelError(f"cannot load model.path='{path}': {message}") from exc
    _finish_tokenizer(tokenizer, model.config if "gguf_file" in kwargs else None)
    if "gguf_file" in kwargs:
        _forget_gguf_quantization(model)
        model = _quantize_in_memory(model, config)
    if head != "causal_lm":
        _with_pad_token_id(model, tokenizer)
    model = _prepared(model, config)
    model.train()
    return model, tokenizer


def _hf_source(config: HFModelConfig) -> tuple:
    """``(folder or hub id, from_pretrained keyword arguments)`` of ``model.path`` (a ``.gguf`` file: its
    folder and ``gguf_file``); a hub id that is not cached and cannot be downloaded fails here, in one line
    (:func:`~tuneforge.plugins.model_hub.hub_arguments`)."""
    path = str(config.path)
    kwargs = {"revision": config.revision, "trust_remote_code": config.trust_remote_code, **hub_arguments(config)}
    if config.token:
        kwargs["token"] = config.token
    if path.endswith(".gguf"):  # HFModelConfig checked that local paths exist
        gguf = Path(path).expanduser()
        return str(gguf.parent), dict(kwargs, gguf_file=gguf.name)
    return path, kwargs


def load_hf_tokenizer(config: HFModelConfig):
    """The tokenizer :func:`load_hf` gives, without the weights (a ``.gguf`` file's end tokens from its
    metadata, as ``load_hf`` takes them from the model's config)."""
    from transformers import AutoConfig, AutoTokenizer

    source, kwargs = _hf_source(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or source, **kwargs)
        gguf_config = AutoConfig.from_pretrained(source, **kwargs) if "gguf_file" in kwargs else None
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load the tokenizer of model.path='{config.path}': {message}") from exc
    return _finish_tokenizer(tokenizer, gguf_config)


def _finish_tokenizer(tokenizer, gguf_model_config=None):
    """What :func:`load_hf` and :func:`load_hf_tokenizer` do to a loaded tokenizer: a GGUF file's end and
    padding tokens from its model config (``gguf_model_config``, None for other files), and the end token
    as the padding token when there is none."""
    if gguf_model_config is not None:
        _special_tokens_from_model_config(tokenizer, gguf_model_config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _forget_gguf_quantization(model) -> None:
    """Mark a model read from a ``.gguf`` file as the plain float model it is.

    transformers dequantizes every tensor on load, but (5.x) keeps a GGUF
    "quantizer" on the model, and then refuses ``save_pretrained`` ("quantized
    with gguf and is not serializable": ``tuneforge export format=hf`` of a run on
    a GGUF base, ``adapter=full``'s saved weights) and ``Trainer`` training.
    No weight changes.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _special_tokens_from_model_config(tokenizer, model_config) -> None:
    """Use the end and padding tokens the GGUF file declares.

    transformers' GGUF tokenizer conversion can pick another end token than
    the file's metadata (SmolLM2: ``<|im_start|>`` instead of ``<|im_end|>``);
    the model config read from the same file has the right ids.
    """
    for attribute in ("eos", "pad"):
        token_id = getattr(model_config, f"{attribute}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{attribute}_token", tokenizer.convert_ids_to_tokens(token_id))


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False,
                                                     trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(TINY_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|im_end|>", pad_token="<pad>",
                                        unk_token="<|endoftext|>", chat_template=TINY_CHAT_TEMPLATE)
    return tokenizer


def _tiny_llama_config(config: TinyModelConfig, tokenizer):
    """The ``LlamaConfig`` of the tiny model (its vocabulary is ``tokenizer``'s)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=False,
        initializer_range=config.initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def load_tiny(config: TinyModelConfig, head: str = "causal_lm"):
    """A random ``LlamaForCausalLM`` sized by the config, deterministic in ``seed``; with
    ``head="sequence_classification"`` a ``LlamaForSequenceClassification`` with one label, whose body
    equals the causal LM's of the same seed (the score layer is drawn after it, in place of ``lm_head``)."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = build_tiny_tokenizer()
    model_config = _tiny_llama_config(config, tokenizer)
    model_class = LlamaForCausalLM
    if head == "sequence_classification":
        model_config.num_labels, model_class = 1, LlamaForSequenceClassification
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    model = model_class(model_config)
    torch.random.set_rng_state(generator_state)
    model = _prepared(_quantize_in_memory(model, config), config)
    model.train()
    return model, tokenizer


def load_tiny_tokenizer(config: TinyModelConfig):
    """The tokenizer :func:`load_tiny` gives (built in memory; the same for every config)."""
    return build_tiny_tokenizer()


def tiny_model_config(config: TinyModelConfig):
    """The tiny model's architecture (the ``LlamaConfig`` :func:`load_tiny` builds; float32 weights)."""
    return _tiny_llama_config(config, build_tiny_tokenizer())


def hf_model_config(config: HFModelConfig):
    """The architecture of ``model.path`` without its weights: ``config.json`` of a folder or hub id
    (``AutoConfig``), or the metadata of a ``.gguf`` file (no tensor is read or dequantized).  Its
    dtype is the one :func:`load_hf` gives the weights (``model.dtype``; ``auto``: the checkpoint's)."""
    from transformers import AutoConfig

    path = str(config.path)
    kwargs = {"revision": config.revision, "trust_remote_code": config.trust_remote_code,
              **hub_arguments(config, fields=("path",))}
    if config.token:
        kwargs["token"] = config.token
    source = path
    if path.endswith(".gguf"):
        gguf = Path(path).expanduser()
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    try:
        model_config = None
        if "gguf_file" in kwargs:  # the header only: transformers' reader parses the whole vocabulary too
            model_config = _gguf_architecture(Path(source) / kwargs["gguf_file"])
        if model_config is None:
            model_config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot read the config of model.path='{path}': {message}") from exc
    if config.dtype != "auto":
        setattr(model_config, _dtype_argument(), _dtype(config.dtype))
    elif "gguf_file" in kwargs:  # transformers dequantizes GGUF tensors to float32
        setattr(model_config, _dtype_argument(), _dtype("float32"))
    return model_config


def _gguf_architecture(path: Path):
    """The transformers config of a GGUF file of a plain decoder architecture, from its header
    (:func:`~tuneforge.plugins.gguf_header.gguf_config_fields`); None for other architectures."""
    from transformers import AutoConfig

    from tuneforge.plugins.gguf_header import gguf_config_fields

    fields = gguf_config_fields(path)
    if fields is None:
        return None
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def hf_config_fields(config: HFModelConfig) -> Optional[dict]:
    """The architecture of ``model.path`` as ``config.json`` fields, read without torch: a local folder's
    ``config.json`` or a ``.gguf`` file's header; None for a hub id or a config that only transformers
    reads (``tuneforge plan`` then uses :func:`hf_model_config`).  ``dtype`` is the one :func:`load_hf`
    gives the weights."""
    import json

    from tuneforge.plugins.gguf_header import gguf_config_fields

    path = Path(str(config.path)).expanduser()
    if path.suffix == ".gguf":
        try:
            fields = gguf_config_fields(path)
        except (OSError, ValueError):  # not a readable GGUF: hf_model_config says what is wrong with it
            return None
        checkpoint_dtype = "float32"  # transformers dequantizes GGUF tensors to float32
    else:
        try:
            fields = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a hub id, or a file transformers will say more about
            return None
        checkpoint_dtype = None
    if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
        return None
    if config.dtype != "auto":
        fields["dtype"] = config.dtype
    elif checkpoint_dtype:
        fields["dtype"] = checkpoint_dtype
    return fields


@tuneforge.hookimpl
def tuneforge_model_sources():
    return [
        tuneforge.ModelSourceSpec("hf", HFModelConfig, "Hugging Face id, local folder or .gguf file",
                                  load=load_hf, base_quantization=base_quantization, model_config=hf_model_config,
                                  config_fields=hf_config_fields, heads=tuple(MODEL_HEADS),
                                  load_tokenizer=load_hf_tokenizer),
        tuneforge.ModelSourceSpec("tiny", TinyModelConfig, "small random Llama for tests, no download",
                                  load=load_tiny, base_quantization=base_quantization,
                                  model_config=tiny_model_config, heads=tuple(MODEL_HEADS),
                                  load_tokenizer=load_tiny_tokenizer),
    ]

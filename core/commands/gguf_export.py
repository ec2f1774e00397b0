"""Writing a merged Llama-family model as one GGUF file (for llama.cpp, Ollama, LM Studio).

Uses the ``gguf`` package's writer, so no llama.cpp checkout is needed.  What
is written:

* the architecture keys llama.cpp and ``transformers`` (``gguf_file=``) read:
  context length, embedding length, block count, feed-forward length, head
  counts, RoPE base and dimension, RMS-norm epsilon, vocabulary size;
* the tensors under GGUF names (``token_embd``, ``blk.N.attn_q`` ...), with
  the query/key rows reordered the way llama.cpp's converter does (GGUF
  stores RoPE pairs interleaved; ``transformers`` undoes it when loading);
  ``output.weight`` is left out when the embeddings are tied;
* the tokenizer (byte-level BPE: tokens, merges, token types, special-token
  ids) and the chat template training used.

``dtype``: ``f32``, ``f16`` (2-D weights; norms stay f32) or ``q8_0``
(8-bit blocks of 32 for 2-D weights whose rows are a multiple of 32; others
f16).  Supported: ``LlamaForCausalLM`` (Llama 2/3 without rope scaling,
SmolLM, TinyLlama ...) and ``MistralForCausalLM`` without sliding-window
attention (written as the ``llama`` architecture, as llama.cpp does).  Other
architectures are refused with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from tuneforge.errors import TuneforgeError

GGUF_DTYPES = ("f32", "f16", "q8_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

#: GGUF token types (llama.cpp's ``llama_token_type``)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


class GGUFExportError(TuneforgeError):
    """The model or tokenizer cannot be written as GGUF."""


def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def rope_theta(config) -> float:
    """RoPE base from the model config (``rope_theta``, or transformers 5's ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    return float(_config_value(config, "rope_theta", default=10000.0))


def check_supported(model) -> None:
    """Refuse architectures and options the GGUF ``llama`` layout cannot express."""
    config = model.config
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(f"format=gguf writes Llama-family models ({', '.join(SUPPORTED_ARCHITECTURES)}); "
                              f"this run's model is {architecture}: export format=hf and convert it with "
                              "llama.cpp's convert_hf_to_gguf.py")
    scaling = getattr(config, "rope_scaling", None)
    params = getattr(config, "rope_parameters", None)
    rope_type = (scaling or {}).get("rope_type") or (params or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise GGUFExportError(f"format=gguf: rope scaling '{rope_type}' is not written by tuneforge's GGUF "
                              "exporter; export format=hf and convert it with llama.cpp")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFExportError("format=gguf: attention/MLP biases are not part of the llama GGUF layout")
    if architecture == "MistralForCausalLM" and getattr(config, "sliding_window", None):
        raise GGUFExportError("format=gguf: Mistral sliding-window attention is not written by tuneforge's "
                              "GGUF exporter; export format=hf and convert it with llama.cpp")


def permute_for_rope(weights, n_head: int, n_head_kv: Optional[int] = None):
    """Reorder q/k projection rows from Hugging Face's half-split RoPE layout to GGUF's interleaved one."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """Tokens, merges, types and special ids of a byte-level BPE tokenizer, padded to ``vocab_size``."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(state.get("pre_tokenizer")):
        raise GGUFExportError("format=gguf writes byte-level BPE tokenizers (GPT-2/Llama-3/SmolLM style); this "
                              f"run's tokenizer is {model.get('type', 'unknown')}: export format=hf and convert "
                              "it with llama.cpp")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise GGUFExportError(f"format=gguf: the tokenizer has {len(by_id)} tokens but the model only "
                              f"{vocab_size} embeddings")
    special = {added["content"] for added in state.get("added_tokens", []) if added.get("special")}
    added = {added["content"] for added in state.get("added_tokens", []) if not added.get("special")}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        else:
            tokens.append(token)
            types.append(CONTROL if token in special else USER_DEFINED if token in added else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": _pre_tokenizer_name(state)}


def _pre_tokenizers(node) -> list:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [p for child in node.get("pretokenizers", []) for p in _pre_tokenizers(child)]
    return [node]


def _is_byte_level(node) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _pre_tokenizers(node))


def _pre_tokenizer_name(state: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for the pre-tokenizer transformers trained with.

    ``smollm``: digits split one by one, then GPT-2's byte-level regex;
    ``gpt-2``: the byte-level regex alone; ``default`` otherwise.
    """
    parts = _pre_tokenizers(state.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    return "default"


def _tensor_data(name: str, tensor, dtype: str):
    """``(numpy array, raw GGML type or None)`` for one tensor in the requested dtype."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    data = tensor.detach().to("cpu").float().numpy()
    if data.ndim < 2 or dtype == "f32":
        return data.astype(np.float32), None
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        return quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def write_gguf(model, tokenizer, path, *, dtype: str = "f16", chat_template: Optional[str] = None,
               name: Optional[str] = None) -> Path:
    """Write ``model`` (a plain, merged ``transformers`` model) and ``tokenizer`` to ``path`` atomically."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise GGUFExportError(f"gguf.dtype is '{dtype}'; valid: {', '.join(GGUF_DTYPES)}")
    check_supported(model)
    config = model.config
    n_head = int(config.num_attention_heads)
    n_head_kv = int(_config_value(config, "num_key_value_heads", default=n_head))
    head_dim = int(_config_value(config, "head_dim", default=config.hidden_size // n_head))
    vocab_size = int(config.vocab_size)
    vocab = tokenizer_metadata(tokenizer, vocab_size)

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_type("model")
        writer.add_name(name or str(getattr(config, "_name_or_path", "") or "tuneforge model"))
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_freq_base(rope_theta(config))
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(vocab_size)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        if vocab["merges"]:
            writer.add_token_merges(vocab["merges"])
        else:  # GGUF drops empty arrays; readers then rebuild (no) merges from the scores
            writer.add_token_scores([0.0] * len(vocab["tokens"]))
        for kind in ("bos", "eos", "unk", "pad"):
            token_id = getattr(tokenizer, f"{kind}_token_id", None)
            if token_id is not None:
                getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id",
                                 "unk": "add_unk_token_id", "pad": "add_pad_token_id"}[kind])(int(token_id))
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if isinstance(template, str) and template:
            writer.add_chat_template(template)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFExportError(f"format=gguf: no GGUF name for tensor '{hf_name}'")
            if hf_name.endswith("q_proj.weight"):
                tensor = permute_for_rope(tensor, n_head, n_head)
            elif hf_name.endswith("k_proj.weight"):
                tensor = permute_for_rope(tensor, n_head, n_head_kv)
            data, raw_type = _tensor_data(gguf_name, tensor, dtype)
            writer.add_tensor(gguf_name, data, raw_dtype=raw_type)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    except Exception:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path

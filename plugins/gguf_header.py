"""The header of a GGUF file read quickly: its key/value metadata and tensor names, no tensor data.

transformers' own reader parses every array (the vocabulary and merges too) through the ``gguf``
package; ``tuneforge plan`` needs only the architecture's numbers, so arrays of strings are skipped in a
tight loop and nothing here imports torch.  The key mapping is transformers' own table
(``transformers.integrations.ggml``), except for the decoders ``tuneforge plan`` sizes by itself, whose
few keys are listed here (:data:`DECODER_GGUF_KEYS`): importing transformers takes a second, a quarter of
a quick plan (tests/test_plan_quick.py checks the list against transformers' table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

#: GGUF architectures whose config transformers maps key by key (others: transformers' own, slower reader)
PLAIN_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "starcoder2", "nemotron")
_COMMON_KEYS = {"context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
                "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
                "rope.freq_base": "rope_theta", "attention.head_count": "num_attention_heads",
                "attention.head_count_kv": "num_key_value_heads",
                "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size"}
#: GGUF keys (after ``<architecture>.``) -> config fields, as transformers maps them, for the decoder
#: families of :mod:`tuneforge.planning.decoder_shapes` (GGUF calls Mistral models ``llama``)
DECODER_GGUF_KEYS = {"llama": {**_COMMON_KEYS, "rope.dimension_count": "head_dim"},
                     "qwen2": _COMMON_KEYS, "qwen3": _COMMON_KEYS}
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_header(path: Path) -> Optional[tuple]:
    """``(metadata, tensor names)`` of a GGUF file (version 2 or later); an array's value is
    ``("array", length)``.  None when the file is not GGUF; ``ValueError`` when its header is cut short
    or holds a value type GGUF does not have."""
    import struct

    try:
        return _read_header(path)
    except (struct.error, KeyError) as exc:
        raise ValueError(f"{path} is not a readable GGUF file: its header is damaged or cut short ({exc})") from exc


def _read_header(path: Path) -> Optional[tuple]:
    import mmap
    import struct

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        offset = 0

        def read(fmt):
            nonlocal offset
            (number,) = struct.unpack_from(fmt, data, offset)
            offset += struct.calcsize(fmt)
            return number

        def text():
            nonlocal offset
            size = read("<Q")
            offset += size
            return bytes(data[offset - size:offset]).decode("utf-8", "replace")

        def value(kind):
            nonlocal offset
            if kind == 8:
                return text()
            if kind == 9:  # an array: its length only
                item, count = read("<I"), read("<Q")
                if item == 8:  # strings: a length and the bytes, skipped in a tight loop (the vocabulary)
                    length, position = struct.Struct("<Q").unpack_from, offset
                    for _ in range(count):
                        position += 8 + length(data, position)[0]
                    offset = position
                elif item == 9:
                    for _ in range(count):
                        value(9)
                else:
                    offset += count * struct.calcsize(_GGUF_SCALARS[item])
                return ("array", count)
            return read(_GGUF_SCALARS[kind])

        if bytes(data[:4]) != b"GGUF":
            return None
        offset = 4
        if read("<I") < 2:
            return None
        tensors, pairs = read("<Q"), read("<Q")
        metadata = {}
        for _ in range(pairs):
            key = text()
            metadata[key] = value(read("<I"))
        names = []
        for _ in range(tensors):
            names.append(text())
            dimensions = read("<I")
            offset += 8 * dimensions + 4 + 8  # dimensions, type, offset
    return metadata, names


def gguf_config_fields(path: Path) -> Optional[dict]:
    """The ``config.json`` fields (with ``model_type``) transformers' GGUF reader gives a file of a plain
    decoder architecture, mapped with transformers' own table; None for other architectures."""
    header = read_gguf_header(path)
    if header is None:
        return None
    metadata, names = header
    architecture = metadata.get("general.architecture")
    if architecture not in PLAIN_GGUF_ARCHITECTURES or "mistral" in str(metadata.get("general.name", "")).lower():
        return None
    mapping = DECODER_GGUF_KEYS.get(architecture)
    if mapping is None:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

        mapping = GGUF_CONFIG_MAPPING.get(architecture, {})
    values = {"model_type": architecture, "tie_word_embeddings": "output.weight" not in names}
    for key, item in metadata.items():
        prefix, _, rest = key.partition(".")
        target = mapping.get(rest) if prefix == architecture else None
        if target not in (None, -1) and not isinstance(item, tuple):
            values[target] = item
    if "vocab_size" not in values and isinstance(metadata.get("tokenizer.ggml.tokens"), tuple):
        values["vocab_size"] = metadata["tokenizer.ggml.tokens"][1]
    for token, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad"), ("unknown", "unk")):
        if f"tokenizer.ggml.{token}_token_id" in metadata:
            values[f"{name}_token_id"] = metadata[f"tokenizer.ggml.{token}_token_id"]
    return values

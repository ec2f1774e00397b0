"""The models of the GPU check: real architectures with random weights, saved as model folders.

Nothing can be downloaded on the GPU machine and a real checkpoint is too large to carry there, so the
check builds its models from a config: SmolLM2-135M's and Llama-3.2-1B's architectures (``SHAPES["gpu"]``)
with random weights drawn on the device, saved in bfloat16 as a Hugging Face folder (``config.json``,
``model.safetensors``) with a tokenizer: SmolLM2's (``--tokenizer``, a folder of its tokenizer files, which
``check.sh`` carries: 3.5 MB) so that the benchmark's alpaca-like records have their real token lengths, or
else tuneforge's byte-level one (``build_tiny_tokenizer``; the dry run's).  Both vocabularies fit inside
every architecture's.  Runs then load them the way users load a model: ``model=hf
model.path=<folder>``.  ``--dry-run`` builds the same folders from ``SHAPES["cpu"]``: the same
vocabularies (the chunked loss is checked at 128k), tiny bodies.

Random weights cannot show that a model learned a task; they do show that training runs, that packed
and unpacked batches give the same loss, that a resumed run equals an uninterrupted one, and how fast a
step is: what the check asks.
"""

from __future__ import annotations

import time
from pathlib import Path

#: architecture -> LlamaConfig fields, per mode (``gpu``: the real sizes; ``cpu``: the dry run's)
SHAPES = {
    "gpu": {
        # HuggingFaceTB/SmolLM2-135M-Instruct's config
        "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                        max_position_embeddings=8192),
        # meta-llama/Llama-3.2-1B's config (rope scaling left out: the check's sequences are short)
        "llama_1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=4096),
    },
    "cpu": {
        "smollm2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                        max_position_embeddings=2048),
        "llama_1b": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=2048),
    },
}
#: standard deviation of the random weights (a real model's; the outputs stay in bfloat16's range)
INITIALIZER_RANGE = 0.02


def llama_config(shape: dict, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(**shape, initializer_range=INITIALIZER_RANGE, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def load_tokenizer(source=None):
    """SmolLM2's tokenizer from the folder ``source``, or tuneforge's byte-level one when ``source`` is None."""
    if source is None:
        from tuneforge.plugins.models import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def build_folder(folder: Path, shape: dict, device: str, tokenizer_source=None, seed: int = 0) -> dict:
    """Draw a ``LlamaForCausalLM`` of ``shape`` on ``device`` (seeded), save it in bfloat16 with the tokenizer
    (:func:`load_tokenizer`) into ``folder``; returns ``{"parameters": ..., "bytes": ...}``.  An existing
    complete folder is reused."""
    import torch
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    done = folder / "BUILT"
    if not done.is_file():
        tokenizer = load_tokenizer(tokenizer_source)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = llama_config(shape, tokenizer)
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(config)
        model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        parameters = sum(p.numel() for p in model.parameters())
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        done.write_text(str(parameters))
    files = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")
    return {"parameters": int(done.read_text()), "bytes": files}


def build_models(context) -> dict:
    """The model folders (SmolLM2 and Llama-1B architectures, random bf16 weights) and the records of the
    length-2048 runs."""
    from data import generate_records, write_jsonl

    details = {}
    for name, shape in SHAPES[context.mode].items():
        started = time.monotonic()
        folder = context.work / "models" / name
        details[name] = {**build_folder(folder, shape, context.device, context.tokenizer),
                         "seconds": round(time.monotonic() - started, 1), "shape": shape}
        context.folders[name] = folder
    from runs import SIZES  # the run sizes say how many records the length-2048 runs read

    sizes = SIZES[context.mode]
    records = context.work / "records-long.jsonl"
    write_jsonl(records, generate_records(sizes["long_batch"] * sizes["long_steps"] * 2, seed=2,
                                          max_field_tokens=0 if context.tokenizer else 12))
    context.folders["records"] = records
    tokenizer = "SmolLM2's" if context.tokenizer else "tuneforge's byte-level"
    return {"summary": ", ".join(f"{name} {d['parameters'] / 1e6:.0f}M parameters ({d['seconds']} s)"
                                 for name, d in details.items()) + f"; {tokenizer} tokenizer",
            "details": details}

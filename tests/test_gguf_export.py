"""GGUF export round trip: a merged Llama written with the gguf package's writer loads back in
transformers (``gguf_file=``) with the same logits (f32), the same greedy outputs (f16), and q8_0 loads."""

import pytest
import torch

from tuneforge.commands.gguf_export import GGUFExportError, permute_for_rope, write_gguf


@pytest.fixture(scope="module")
def tiny():
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, tokenizer = load_tiny(TinyModelConfig(seed=3))
    model.eval()
    return model, tokenizer


def _reload(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


PROMPTS = ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"]


def _greedy(model, tokenizer, prompt, tokens=12):
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_f32_round_trip_has_the_same_logits_and_tokenizer(tiny, tmp_path):
    model, tokenizer = tiny
    path = write_gguf(model, tokenizer, tmp_path / "tiny-f32.gguf", dtype="f32")
    back, back_tokenizer = _reload(path)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        back_ids = back_tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        assert back_ids.tolist() == ids.tolist()
        with torch.no_grad():
            difference = (model(ids).logits - back(ids).logits).abs().max().item()
        assert difference <= 1e-4
    assert back_tokenizer.chat_template == tokenizer.chat_template


def test_f16_keeps_greedy_outputs_and_q8_0_loads(tiny, tmp_path):
    model, tokenizer = tiny
    f16, _ = _reload(write_gguf(model, tokenizer, tmp_path / "tiny-f16.gguf", dtype="f16"))
    for prompt in PROMPTS:
        assert _greedy(f16, tokenizer, prompt) == _greedy(model, tokenizer, prompt)
    q8 = tmp_path / "tiny-q8_0.gguf"
    q8_model, _ = _reload(write_gguf(model, tokenizer, q8, dtype="q8_0"))
    assert q8.stat().st_size < (tmp_path / "tiny-f16.gguf").stat().st_size
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        reference, quantized = model(ids).logits, q8_model(ids).logits
    assert (reference - quantized).abs().max().item() < 0.25 * reference.abs().max().item()


def test_the_rope_reordering_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3).numpy()
    processor = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 2})
    for heads_kv, name in ((8, "blk.0.attn_q.weight"), (2, "blk.0.attn_k.weight")):
        rows = weights[: 16 * heads_kv] if heads_kv == 2 else weights
        restored = processor.process(permute_for_rope(rows, 8, heads_kv), name).weights
        assert (restored == rows).all()


def test_other_architectures_and_dtypes_are_refused_in_one_line(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(GGUFExportError, match="gguf.dtype is 'q4'; valid: f32, f16, q8_0"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf", dtype="q4")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(GGUFExportError, match="writes Llama-family models") as refused:
        write_gguf(gpt2, tokenizer, tmp_path / "gpt2.gguf")
    assert "\n" not in str(refused.value)
    assert not list(tmp_path.glob("*gpt2*"))


def test_export_command_writes_a_gguf_of_the_tuned_run(tmp_path):
    """``tuneforge export format=gguf``: the merged LoRA run, reloaded from GGUF, has the HF export's logits."""
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.cli import main
    from tuneforge.testing import run_tiny_fit

    run = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=3", "optim.lr=0.01", "evaluators=[]"]).run_dir
    main(["export", f"run_dir={run}", f"out={tmp_path / 'hf'}"])
    main(["export", f"run_dir={run}", f"out={tmp_path / 'tuned.gguf'}", "format=gguf", "gguf.dtype=f32"])
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    back, back_tokenizer = _reload(tmp_path / "tuned.gguf")
    ids = back_tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        assert (merged(ids).logits - back(ids).logits).abs().max().item() <= 1e-4
    with pytest.raises(SystemExit) as refused:
        main(["export", f"run_dir={run}", f"out={tmp_path / 'tuned.gguf'}", "format=gguf"])
    assert refused.value.code == 2  # exists: overwrite=true needed


def test_a_gguf_base_loaded_by_the_hf_source_saves_as_a_plain_model(tiny, tmp_path):
    """transformers keeps a GGUF "quantizer" on a dequantized model and then refuses save_pretrained;
    the hf model source drops it, so `tuneforge export format=hf` (and adapter=full) work on a GGUF base."""
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.models import HFModelConfig, load_hf

    model, tokenizer = tiny
    path = write_gguf(model, tokenizer, tmp_path / "base.gguf", dtype="f32")
    loaded, _ = load_hf(HFModelConfig(path=str(path), dtype="float32"))
    assert getattr(loaded, "hf_quantizer", None) is None and not getattr(loaded, "is_quantized", False)
    loaded.save_pretrained(tmp_path / "folder", safe_serialization=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "folder", dtype=torch.float32).eval()
    ids = torch.tensor([list(PROMPTS[0].encode()[:12])]) % model.config.vocab_size
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits, atol=1e-6)

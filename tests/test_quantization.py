"""Quantized bases (``model.quantization``, ``adapter=qlora``; bitsandbytes on the CPU): the layers are
bitsandbytes', the adapter trains over them, evaluation/generate/chat use them, export merges into a
dequantized base that plain transformers loads, and what cannot work is refused in one line before the
model loads.  Resume after SIGKILL: tests/test_resume.py; two DDP processes: tests/test_cli.py; FSDP:
tests/test_fsdp.py."""

import io
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tuneforge.errors import ConfigError
from tuneforge.host.components import run_components
from tuneforge.host.compose import compose, load_plugins
from tuneforge.testing import run_tiny_fit

from helpers import run_cli, train_losses

FIT = ["trainer.max_steps=6", "optim.lr=0.01", "evaluators=[perplexity]"]


@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _probe(tokenizer):
    return torch.tensor([tokenizer("Name a colour: red, green", add_special_tokens=False)["input_ids"]])


def _bnb_modules(model) -> list:
    return sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")})


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("fp4", "Linear4bit"),
                                                 ("int8", "Linear8bitLt")])
def test_tiny_loads_its_linear_layers_quantized_and_frozen(bnb, quantization, layer):
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    plain, _ = load_tiny(TinyModelConfig())
    model, tokenizer = load_tiny(TinyModelConfig(quantization=quantization, double_quant=quantization == "nf4"))
    projection = model.model.layers[0].mlp.up_proj
    assert type(projection).__name__ == layer and isinstance(projection, getattr(bnb.nn, layer))
    assert type(model.lm_head) is torch.nn.Linear  # the output layer stays full precision (transformers' rule)
    assert not any(p.requires_grad for p in model.parameters())  # prepare_model_for_kbit_training froze it
    if quantization != "int8":
        assert projection.weight.quant_state.quant_type == quantization
        assert (projection.weight.quant_state.state2 is not None) == (quantization == "nf4")  # double quant
    ids = _probe(tokenizer)
    difference = (_logits(model.eval(), ids) - _logits(plain.eval(), ids)).abs().max().item()
    assert 0 < difference < 2.0  # the same weights, rounded
    assert model.config.name_or_path == plain.config.name_or_path


def test_hf_folder_and_gguf_file_load_quantized(bnb, qlora_export, tmp_path):
    """A folder is quantized as from_pretrained reads it; a GGUF file read dequantized, then quantized."""
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.gguf_export import write_gguf
    from tuneforge.plugins.models import HFModelConfig, load_hf

    plain = AutoModelForCausalLM.from_pretrained(str(qlora_export)).eval()
    folder, tokenizer = load_hf(HFModelConfig(path=str(qlora_export), quantization="int8"))
    assert _bnb_modules(folder) == ["Linear8bitLt"]
    gguf = write_gguf(plain, tokenizer, tmp_path / "tiny.gguf", dtype="f32", name="tiny")
    from_gguf, _ = load_hf(HFModelConfig(path=str(gguf), quantization="nf4", double_quant=True))
    assert _bnb_modules(from_gguf) == ["Linear4bit"]
    ids = _probe(tokenizer)
    for model in (folder, from_gguf):
        difference = (_logits(model.eval(), ids) - _logits(plain, ids)).abs().max().item()
        assert 0 < difference < 2.0


# ----------------------------------------------------------------------------- a QLoRA run and what reads it


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    return run_tiny_fit(tmp_path_factory.mktemp("qlora"), overrides=[*FIT, "adapter=qlora"])


@pytest.fixture(scope="module")
def qlora_export(qlora_run, tmp_path_factory):
    from tuneforge.commands.export import export_run

    return export_run(qlora_run.run_dir, tmp_path_factory.mktemp("qlora-export") / "merged")


def test_qlora_trains_lora_on_every_linear_layer_over_a_double_quantized_nf4_base(qlora_run):
    config = OmegaConf.load(qlora_run.run_dir / "config.yaml")
    assert config.adapter.name == "lora" and config.adapter.target_modules == "all-linear"
    assert (config.model.quantization, config.model.double_quant) == ("nf4", True)
    losses = train_losses(qlora_run.run_dir)
    assert len(losses) == 6 and losses[-1] < losses[0]
    metrics = qlora_run.metrics
    # base and tuned evaluation, and the prompting baselines, all on the quantized base
    assert metrics["tuned"]["perplexity/loss"] < metrics["base"]["perplexity/loss"]
    assert {"few_shot", "retrieval"} <= set(metrics["baselines"])


def test_the_saved_run_reloads_over_the_quantized_base_for_generate_and_chat(qlora_run):
    from peft import PeftModel

    from tuneforge.commands.chat import chat_loop
    from tuneforge.commands.generate import generate_reply
    from tuneforge.commands.run_loading import load_run
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    loaded = load_run(qlora_run.run_dir, device="cpu")
    assert "Linear4bit" in _bnb_modules(loaded.model)
    # the same model built by hand: the quantized tiny base and peft's own loading
    config = OmegaConf.to_container(OmegaConf.load(qlora_run.run_dir / "config.yaml").model)
    config.pop("name")
    direct = PeftModel.from_pretrained(load_tiny(TinyModelConfig(**config))[0],
                                       str(qlora_run.run_dir / "model")).eval()
    ids = _probe(loaded.tokenizer)
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(direct, ids), atol=1e-6, rtol=0)

    messages = [{"role": "user", "content": "Name a colour."}]
    prompt = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = direct.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                              do_sample=False, eos_token_id=loaded.tokenizer.eos_token_id,
                              pad_token_id=loaded.tokenizer.pad_token_id)
    expected = loaded.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    assert generate_reply(loaded, messages, max_new_tokens=8, temperature=0.0) == expected
    history = chat_loop(loaded, io.StringIO("Name a colour.\n/exit\n"), io.StringIO(), max_new_tokens=8)
    assert history[-1] == {"role": "assistant", "content": expected}


def test_export_merges_into_a_dequantized_base_that_plain_transformers_loads(qlora_run, qlora_export, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.export import export_gguf
    from tuneforge.commands.run_loading import load_run

    quantized = load_run(qlora_run.run_dir, device="cpu")
    ids = _probe(quantized.tokenizer)
    expected = _logits(quantized.model, ids)
    assert "quantization_config" not in (qlora_export / "config.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(str(qlora_export)).eval()
    gguf = export_gguf(qlora_run.run_dir, tmp_path / "tuned.gguf", dtype="f32")
    from_gguf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    for model in (plain, from_gguf):
        assert not [type(m) for m in model.modules() if type(m).__module__.split(".")[0] in ("bitsandbytes", "peft")]
        assert all(type(m) is torch.nn.Linear for name, m in model.named_modules() if name.endswith("proj"))
        # the dequantized weights are what the 4-bit layers computed with: the same logits
        torch.testing.assert_close(_logits(model, ids), expected, atol=1e-4, rtol=0)


def test_an_int8_base_trains_and_exports_dequantized(bnb, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.export import export_run
    from tuneforge.commands.run_loading import load_run

    result = run_tiny_fit(tmp_path / "run", overrides=[*FIT, "model.quantization=int8", "baselines=[]"])
    losses = train_losses(result.run_dir)
    assert losses[-1] < losses[0]
    assert result.metrics["tuned"]["perplexity/loss"] < result.metrics["base"]["perplexity/loss"]
    loaded = load_run(result.run_dir, device="cpu")
    assert "Linear8bitLt" in _bnb_modules(loaded.model)
    plain = AutoModelForCausalLM.from_pretrained(str(export_run(result.run_dir, tmp_path / "merged"))).eval()
    assert not _bnb_modules(plain)
    ids = _probe(loaded.tokenizer)
    # int8 layers quantize their inputs too (bitsandbytes' int8 matmul): close, not equal
    difference = (_logits(plain, ids) - _logits(loaded.model, ids)).abs()
    assert difference.max() < 0.1 and difference.mean() < 0.01, (difference.max(), difference.mean())


def test_prompt_tuning_trains_over_a_quantized_base(bnb, tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=6", "optim.lr=0.05", "adapter=prompt",
                                                       "model.quantization=nf4", "evaluators=[perplexity]",
                                                       "baselines=[]"])
    assert result.metrics["tuned"]["perplexity/loss"] < result.metrics["base"]["perplexity/loss"]


# ----------------------------------------------------------------------------- refusals


def _validate(overrides):
    plugins = load_plugins(overrides)
    return run_components(compose(overrides), plugins)


REFUSED = {
    "adapter=full": "adapter=full cannot train the nf4-quantized base that model=tiny loads: it trains the base "
                    "weights themselves, and quantized weights cannot train; use an adapter that trains over a "
                    "quantized base (ia3, lora, prefix, prompt), or load the base unquantized",
    "adapter=freeze": "adapter=freeze cannot train the nf4-quantized base",
    "strategy=deepspeed_stage_2 trainer.accelerator=cpu": "strategy=deepspeed_stage_2 with trainer.accelerator=cpu "
                                                          "cannot train the nf4-quantized base",
}


@pytest.mark.parametrize("overrides", REFUSED)
def test_what_cannot_train_a_quantized_base_is_refused_before_the_model_loads(bnb, overrides):
    with pytest.raises(ConfigError) as error:
        _validate(["model.quantization=nf4", *overrides.split()])
    assert str(error.value).startswith(REFUSED[overrides]) and "\n" not in str(error.value)


def test_the_adapters_that_train_over_a_quantized_base_pass_validation(bnb):
    """fsdp too: it trains a quantized base exactly like ddp (tests/test_fsdp.py)."""
    for adapter in ("lora", "ia3", "prefix", "prompt", "qlora"):
        run = _validate([f"adapter={adapter}", "model.quantization=nf4", "strategy=fsdp"])
        assert run.adapter.spec.trains_quantized_base and run.model.config.quantization == "nf4"


def test_qlora_is_a_preset_whose_keys_the_command_line_and_an_experiment_still_set(bnb):
    run = _validate(["adapter=qlora", "model.double_quant=false", "adapter.r=4"])
    assert (run.adapter.name, run.adapter.config.r, run.adapter.config.target_modules) == ("lora", 4, "all-linear")
    assert (run.model.config.quantization, run.model.config.double_quant) == ("nf4", False)
    demo = compose(["+experiment=legal_citations", "adapter=qlora"])  # the experiment says override /adapter: lora
    assert (demo.model.name, demo.model.quantization, demo.model.double_quant) == ("hf", "nf4", True)
    assert (demo.adapter.name, demo.adapter.r, demo.adapter.target_modules) == ("lora", 16, "all-linear")


@pytest.mark.parametrize("overrides, line", [
    (["model.quantization=nf8"], "tuneforge: error: model.quantization: must be one of none, nf4, fp4, int8, "
                                 "got 'nf8' (did you mean 'nf4'?)"),
    (["adapter=qlora", "model.quantization=int8"], "tuneforge: error: model.double_quant: applies to a 4-bit base "
                                                   "(nf4, fp4) only, not int8; set model.double_quant=false"),
    (["adapter=full", "model=hf", "model.path=HERE", "model.quantization=int8"],
     "tuneforge: error: adapter=full cannot train the int8-quantized base that model=hf loads: it trains the base "
     "weights themselves"),
])
def test_bad_quantization_settings_exit_2_with_one_line(bnb, tmp_path, overrides, line):
    (tmp_path / "config.json").write_text("{}")  # a model folder that is never read: refused before loading
    overrides = [o.replace("HERE", str(tmp_path)) for o in overrides]
    result = run_cli(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert not (tmp_path / "run").exists()


def test_without_bitsandbytes_quantization_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is absent
    with pytest.raises(ConfigError) as error:
        _validate(["adapter=qlora"])
    assert str(error.value) == ("model.quantization: nf4 needs the bitsandbytes package, which is not installed: "
                                "pip install 'tuneforge[quantization]'")
    _validate(["adapter=lora"])  # a full-precision base does not need it

"""Built-in adapters: each trains on the tiny model, reports its trainable parameters,
and its saved weights reload (with plain peft / transformers) to the same logits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import tuneforge
from tuneforge.errors import ModelError
from tuneforge.plugins import adapters
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.testing import run_tiny_fit

WORDS = ["forest", "maple", "garden", "stone", "cloud", "river", "candle", "planet", "silver", "window",
         "bridge", "orange", "pencil", "rabbit", "castle", "dragon", "meadow", "harbor", "lantern", "marble",
         "needle", "oyster", "pepper", "quartz", "saddle", "thunder", "velvet", "walnut", "yellow", "zephyr"]

PROBE = torch.arange(10, 50).view(2, 20)

#: logits of the in-memory model at the end of training, keyed by run directory
CAPTURED: dict = {}


@dataclass
class CaptureConfig:
    """key: where to store the logits in CAPTURED."""

    key: str = ""


def _probe_logits(model):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits.clone()
    model.train(was_training)
    return logits


class CapturePlugin:
    """Registers callback ``capture_logits``: records the trained model's logits on PROBE."""

    @staticmethod
    def tuneforge_callbacks():
        import lightning.pytorch as pl

        class Capture(pl.Callback):
            def __init__(self, key):
                self.key = key

            def on_train_end(self, trainer, pl_module):
                CAPTURED[self.key] = _probe_logits(pl_module.model)

        return [tuneforge.CallbackSpec("capture_logits", CaptureConfig, build=lambda cfg: Capture(cfg.key))]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    with path.open("w") as handle:
        for word in WORDS:
            handle.write(json.dumps({"instruction": "Write the word in capital letters.", "input": word,
                                     "output": word.upper()}) + "\n")
    return path


def fit(tmp_path, data_file, overrides, steps=15, lr=1e-2):
    key = str(tmp_path)
    result = run_tiny_fit(tmp_path, plugins=[CapturePlugin()], overrides=[
        f"data.path={data_file}", "data.val_size=6", f"optim.lr={lr}", f"trainer.max_steps={steps}",
        "optim.scheduler=constant", "+callbacks=[capture_logits]", f"callbacks.capture_logits.key={key}",
        *overrides])
    return result, CAPTURED.pop(key)


def tiny_base():
    model, _ = load_tiny(TinyModelConfig())
    return model.eval()


PEFT_CASES = {
    "lora": ["adapter=lora"],
    "lora_dora_rslora": ["adapter=lora", "adapter.use_dora=true", "adapter.use_rslora=true",
                         "adapter.target_modules=[q_proj,v_proj,down_proj]", "adapter.modules_to_save=[lm_head]"],
    "prefix": ["adapter=prefix", "adapter.num_virtual_tokens=8"],
    "prompt": ["adapter=prompt", "adapter.num_virtual_tokens=8"],
    "ia3": ["adapter=ia3"],
}
PEFT_LR = {"prompt": 5e-2, "prefix": 3e-2, "ia3": 3e-2}


@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_peft_adapter_trains_and_reloads(tmp_path, data_file, case):
    from peft import PeftModel

    result, trained_logits = fit(tmp_path, data_file, PEFT_CASES[case], lr=PEFT_LR.get(case, 1e-2))
    metrics = result.metrics
    # held-out loss falls
    assert metrics["tuned"]["perplexity/loss"] < metrics["base"]["perplexity/loss"] - 0.2, metrics

    # trainable parameters reported at start match peft's own count for the same adapter
    spec = {s.name: s for s in adapters.tuneforge_adapters()}[result.config.adapter.name]
    reference = spec.apply(load_tiny(TinyModelConfig())[0], result.components.adapter.config)
    trainable, total = reference.get_nb_trainable_parameters()
    assert metrics["parameters"]["trainable"] == trainable > 0
    assert metrics["parameters"]["total"] == total
    assert metrics["parameters"]["fraction"] == pytest.approx(trainable / total)

    # the saved adapter reloads with plain peft and reproduces the trained model's logits
    directory = result.run_dir / "model"
    assert (directory / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_base(), str(directory)).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits
        base_logits = tiny_base()(input_ids=PROBE).logits
    torch.testing.assert_close(logits, trained_logits, atol=1e-5, rtol=1e-5)
    # and training really changed the model
    assert (trained_logits[:, -PROBE.size(1):] - base_logits).abs().max() > 1e-3


def test_lora_options_reach_peft(tmp_path):
    model = load_tiny(TinyModelConfig())[0]
    config = adapters.LoraAdapterConfig(use_dora=True, use_rslora=True, target_modules=["q_proj", "v_proj"],
                                        modules_to_save=["lm_head"])
    peft_model = adapters.apply_lora(model, config)
    lora_config = peft_model.peft_config["default"]
    assert lora_config.use_dora and lora_config.use_rslora
    assert set(lora_config.target_modules) == {"q_proj", "v_proj"}
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)  # DoRA
    assert any("modules_to_save" in n and "lm_head" in n for n in names)
    assert not any("k_proj" in n for n in names)
    # rsLoRA scales by alpha / sqrt(r)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(config.lora_alpha / config.r ** 0.5)


def test_all_linear_targets_every_linear_layer_but_the_output():
    peft_model = adapters.apply_lora(load_tiny(TinyModelConfig())[0], adapters.LoraAdapterConfig())
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("case", ["full", "freeze"])
def test_full_and_freeze_train_and_reload(tmp_path, data_file, case):
    from transformers import AutoModelForCausalLM

    overrides = ["adapter=full"] if case == "full" else [
        "adapter=freeze", "adapter.trainable_layers=1", "adapter.trainable_modules=[lm_head]"]
    result, trained_logits = fit(tmp_path, data_file, overrides, lr=3e-3)
    metrics = result.metrics
    assert metrics["tuned"]["perplexity/loss"] < metrics["base"]["perplexity/loss"] - 0.2, metrics

    base = tiny_base()
    total = sum(p.numel() for p in base.parameters())
    if case == "full":
        expected = total
    else:
        expected = sum(p.numel() for p in base.model.layers[-1].parameters()) + base.lm_head.weight.numel()
    assert metrics["parameters"] == {"trainable": expected, "total": total, "fraction": expected / total}

    directory = result.run_dir / "model"
    assert (directory / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits
    torch.testing.assert_close(logits, trained_logits, atol=1e-5, rtol=1e-5)

    if case == "freeze":  # frozen weights are untouched, trained ones moved
        torch.testing.assert_close(reloaded.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight,
                                   atol=0, rtol=0)
        torch.testing.assert_close(reloaded.model.embed_tokens.weight, base.model.embed_tokens.weight, atol=0, rtol=0)
        assert not torch.equal(reloaded.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)
        assert not torch.equal(reloaded.lm_head.weight, base.lm_head.weight)


def test_freeze_selects_top_layers_and_named_modules():
    model = load_tiny(TinyModelConfig(num_hidden_layers=3))[0]
    adapters.apply_freeze(model, adapters.FreezeAdapterConfig(trainable_layers=2, trainable_modules=["model.norm"]))
    trainable = {n.split(".weight")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert any(n.startswith("model.layers.2.") for n in trainable)
    assert not any(n.startswith("model.layers.0.") for n in trainable)
    assert "model.norm" in trainable and "lm_head" not in trainable
    model = load_tiny(TinyModelConfig())[0]
    adapters.apply_freeze(model, adapters.FreezeAdapterConfig(trainable_layers=0,
                                                              trainable_modules=["model.layers.*.mlp"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".mlp." in n for n in trainable)


@pytest.mark.parametrize("apply, config, key, valid", [
    (adapters.apply_lora, adapters.LoraAdapterConfig(target_modules=["qproj"]), "adapter.target_modules", "q_proj"),
    (adapters.apply_lora, adapters.LoraAdapterConfig(target_modules=".*attention.*"), "adapter.target_modules",
     "q_proj"),
    (adapters.apply_lora, adapters.LoraAdapterConfig(modules_to_save=["head"]), "adapter.modules_to_save",
     "lm_head"),
    (adapters.apply_ia3, adapters.IA3AdapterConfig(target_modules=["key"]), "adapter.target_modules", "k_proj"),
    (adapters.apply_freeze, adapters.FreezeAdapterConfig(trainable_layers=3), "adapter.trainable_layers",
     "0 to 2"),
    (adapters.apply_freeze, adapters.FreezeAdapterConfig(trainable_layers=0, trainable_modules=["decoder"]),
     "adapter.trainable_modules", "lm_head"),
    (adapters.apply_freeze, adapters.FreezeAdapterConfig(trainable_layers=0), "adapter.trainable_layers", "1 to 2"),
    (adapters.apply_prompt, adapters.PromptAdapterConfig(init="text"), "adapter.init_text", "init=text"),
])
def test_adapter_that_does_not_fit_names_key_and_valid_values(apply, config, key, valid):
    with pytest.raises(ModelError) as info:
        apply(load_tiny(TinyModelConfig())[0], config)
    message = str(info.value)
    assert key in message and valid in message
    assert "\n" not in message


def test_bad_target_module_stops_the_run_with_one_line(tmp_path):
    with pytest.raises(ModelError, match=r"adapter.target_modules: \['attn'\] match no module.*q_proj"):
        run_tiny_fit(tmp_path, overrides=["adapter=lora", "adapter.target_modules=[attn]"])

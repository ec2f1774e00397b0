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


def test_lora_with_gradient_checkpointing_gives_the_same_gradients():
    """adapter.gradient_checkpointing recomputes activations in the backward pass: same loss and LoRA
    gradients as without it (float32, no dropout), and the decoder layers are marked as checkpointed."""
    def gradients(checkpointing: bool):
        model = load_tiny(TinyModelConfig())[0]
        torch.manual_seed(0)  # the same random adapter both times
        peft_model = adapters.apply_lora(model, adapters.LoraAdapterConfig(lora_dropout=0.0, init_lora_weights="gaussian",
                                                                            gradient_checkpointing=checkpointing))
        peft_model.train()
        ids = torch.arange(3, 40).reshape(1, -1)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        layers = peft_model.base_model.model.model.layers
        return loss.item(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}, \
            all(layer.gradient_checkpointing for layer in layers)

    plain_loss, plain, plain_marked = gradients(False)
    loss, checkpointed, marked = gradients(True)
    assert marked and not plain_marked
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


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


# ---------------------------------------------------------------------------
# the spec's save -> load -> merge round trip, through the host's functions (what generate, chat, eval and
# export use)
# ---------------------------------------------------------------------------


def _spec(name):
    return {s.name: s for s in adapters.tuneforge_adapters()}[name]


def _as_if_trained(model):
    """Move every trainable parameter (LoRA's B starts at zero, IA3's vectors at one: a no-op)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


@pytest.mark.parametrize("name, config", [
    ("lora", adapters.LoraAdapterConfig()),
    ("ia3", adapters.IA3AdapterConfig()),
    ("full", adapters.FullAdapterConfig()),
    ("freeze", adapters.FreezeAdapterConfig(trainable_layers=1, trainable_modules=["lm_head"])),
])
def test_saved_adapter_loads_back_and_merges_to_the_same_logits(tmp_path, name, config):
    from peft import PeftModel
    from transformers import PreTrainedModel

    from tuneforge.training.model_io import load_saved_model, merge_model, needs_base_model, save_model

    spec = _spec(name)
    base, tokenizer = load_tiny(TinyModelConfig())
    model = _as_if_trained(spec.apply(base, config))
    trained = _probe_logits(model)
    assert (trained - _probe_logits(tiny_base())).abs().max() > 1e-3

    save_model(spec, model, tokenizer, tmp_path / "model")
    assert needs_base_model(spec) is (name in ("lora", "ia3"))  # full weights need no base
    loaded = load_saved_model(spec, tiny_base() if needs_base_model(spec) else None, tmp_path / "model").eval()
    torch.testing.assert_close(_probe_logits(loaded), trained, atol=1e-5, rtol=1e-5)

    merged = merge_model(spec, loaded)
    assert isinstance(merged, PreTrainedModel) and not isinstance(merged, PeftModel)
    torch.testing.assert_close(_probe_logits(merged), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, config, kind", [
    ("prefix", adapters.PrefixAdapterConfig(num_virtual_tokens=4), "PREFIX_TUNING"),
    ("prompt", adapters.PromptAdapterConfig(num_virtual_tokens=4), "PROMPT_TUNING"),
])
def test_prompt_learning_adapters_load_back_but_refuse_to_merge(tmp_path, name, config, kind):
    from tuneforge.training.model_io import load_saved_model, merge_model, save_model

    spec = _spec(name)
    base, tokenizer = load_tiny(TinyModelConfig())
    model = _as_if_trained(spec.apply(base, config))
    save_model(spec, model, tokenizer, tmp_path / "model")
    loaded = load_saved_model(spec, tiny_base(), tmp_path / "model").eval()
    torch.testing.assert_close(_probe_logits(loaded), _probe_logits(model), atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError) as info:
        merge_model(spec, loaded)
    message = str(info.value)
    assert f"is {kind} (virtual tokens, not weight deltas) and cannot be merged" in message
    assert "\n" not in message


def test_an_adapter_spec_without_load_or_merge_gets_the_full_weights_defaults(tmp_path):
    """A third-party spec written before load/merge existed: save_pretrained, from_pretrained, identity."""
    from tuneforge.training.model_io import load_saved_model, merge_model, needs_base_model, save_model

    def head_only(model, config):
        model.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(True)
        return model

    spec = tuneforge.AdapterSpec("head_only", CaptureConfig, apply=head_only)
    assert spec.load is None and spec.merge is None and not needs_base_model(spec)
    base, tokenizer = load_tiny(TinyModelConfig())
    model = _as_if_trained(spec.apply(base, None))
    save_model(spec, model, tokenizer, tmp_path / "model")
    loaded = load_saved_model(spec, None, tmp_path / "model").eval()
    torch.testing.assert_close(_probe_logits(loaded), _probe_logits(model), atol=1e-5, rtol=1e-5)
    assert merge_model(spec, loaded) is loaded
    with pytest.raises(ModelError, match=r"adapter 'head_only' cannot load the trained model saved there"):
        load_saved_model(spec, None, tmp_path / "nothing-here")


def test_adapter_spec_fields_are_checked():
    with pytest.raises(TypeError, match="'load' must be a callable or None"):
        tuneforge.AdapterSpec("x", CaptureConfig, apply=adapters.apply_full, load="peft")
    spec = tuneforge.AdapterSpec("x", CaptureConfig, apply=adapters.apply_full, load=adapters.load_peft,
                                 needs_base=False)
    assert spec.needs_base is False


def _apply_loha(model, config):
    """What a docs-only plugin author writes for a peft adapter tuneforge has no built-in for."""
    from peft import LoHaConfig, get_peft_model

    return get_peft_model(model, LoHaConfig(r=2, alpha=2, target_modules=["q_proj", "v_proj"]))


def test_a_peft_adapter_spec_without_load_or_merge_gets_the_peft_defaults(tmp_path):
    """``apply`` alone returning a peft model: the default save writes peft's adapter folder, the default load
    puts it back on the base (not from_pretrained on the adapter folder), the default merge folds it in."""
    from peft import PeftModel
    from transformers import PreTrainedModel

    from tuneforge.training.model_io import load_saved_model, merge_model, needs_base_model, save_model

    spec = tuneforge.AdapterSpec("loha", CaptureConfig, apply=_apply_loha)
    base, tokenizer = load_tiny(TinyModelConfig())
    model = _as_if_trained(spec.apply(base, None))
    trained = _probe_logits(model)
    assert (trained - _probe_logits(tiny_base())).abs().max() > 1e-3
    save_model(spec, model, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_config.json").is_file()
    assert needs_base_model(spec, tmp_path / "model") and not needs_base_model(spec)
    loaded = load_saved_model(spec, tiny_base(), tmp_path / "model").eval()
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(_probe_logits(loaded), trained, atol=1e-5, rtol=1e-5)
    merged = merge_model(spec, loaded)
    assert isinstance(merged, PreTrainedModel) and not isinstance(merged, PeftModel)
    torch.testing.assert_close(_probe_logits(merged), trained, atol=1e-5, rtol=1e-5)


def test_the_default_merge_refuses_a_prompt_learning_peft_model_in_one_line():
    from peft import PromptTuningConfig, get_peft_model

    from tuneforge.training.model_io import merge_model

    spec = tuneforge.AdapterSpec("soft", CaptureConfig, apply=lambda model, config: model)
    model = get_peft_model(tiny_base(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ModelError, match=r"^adapter 'soft' is PROMPT_TUNING \(virtual tokens, not weight deltas\) "
                                         r"and cannot be merged into the base weights; .*$"):
        merge_model(spec, model)


def test_a_merge_that_returns_the_peft_model_unmerged_is_one_line_saying_what_merge_must_return():
    from tuneforge.errors import PluginError
    from tuneforge.training.model_io import merge_model

    spec = tuneforge.AdapterSpec("loha", CaptureConfig, apply=_apply_loha, merge=lambda model: model)
    with pytest.raises(PluginError) as info:
        merge_model(spec, _apply_loha(tiny_base(), None))
    assert str(info.value) == (
        "plugin code: adapter 'loha', merge returned PeftModel, a peft model whose adapter is not merged into the "
        "base weights; it must return the merged model: a plain transformers model that save_pretrained writes "
        "whole (for a peft model, model.merge_and_unload())")
    wrong = tuneforge.AdapterSpec("loha", CaptureConfig, apply=_apply_loha, merge=lambda model: torch.nn.Linear(1, 1))
    with pytest.raises(PluginError, match=r"merge returned Linear, which has no save_pretrained; it must return"):
        merge_model(wrong, tiny_base())

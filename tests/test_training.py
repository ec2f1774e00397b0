"""Tiny end-to-end fits: the loss falls, outputs are complete and reload exactly."""

import json
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf

import tuneforge
from helpers import train_losses
from tuneforge.testing import run_tiny_fit

PROBE_TEXT = "<|im_start|>user\nSpell the word 'maple' backwards.<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class ProbeConfig:
    """No fields: the probe records logits of a fixed input."""


class LogitProbe:
    """An in-process evaluator plugin that keeps the logits it saw (base, then tuned)."""

    __name__ = "logit_probe"

    def __init__(self):
        self.logits = []

    def evaluate(self, model, tokenizer, examples, config):
        ids = torch.tensor([tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            self.logits.append(model(input_ids=ids).logits.clone())
        return {"calls": float(len(self.logits))}

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        return [tuneforge.EvaluatorSpec("logit_probe", ProbeConfig, evaluate=self.evaluate)]


def _tiny_base():
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, tokenizer = load_tiny(TinyModelConfig())
    return model.eval(), tokenizer


def test_lora_loss_falls_over_20_steps_and_adapter_reloads_with_plain_peft(tmp_path):
    from peft import PeftModel

    probe = LogitProbe()
    result = run_tiny_fit(tmp_path, plugins=[probe], overrides=[
        "adapter=lora", "adapter.r=8", "trainer.max_steps=20", "optim.lr=1e-2",
        "evaluators=[perplexity,logit_probe]", "baselines=[]", "memorisation.sample=0"])  # probe: base, tuned
    losses = train_losses(tmp_path)
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert result.metrics["steps"] == 20
    assert result.metrics["tuned"]["perplexity/loss"] < result.metrics["base"]["perplexity/loss"]

    base_logits, tuned_logits = probe.logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-3)  # training changed the model
    base, tokenizer = _tiny_base()
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "model")).eval()
    ids = torch.tensor([tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
    torch.testing.assert_close(logits, tuned_logits, atol=1e-5, rtol=1e-5)


def test_run_directory_holds_resolved_config_metrics_model_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    run_tiny_fit(tmp_path, overrides=["trainer.max_steps=3", "adapter.r=4"])
    config = OmegaConf.load(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "${" not in text  # resolved
    assert config.adapter.name == "lora" and config.adapter.r == 4 and config.trainer.max_steps == 3
    assert config.data.path.endswith("sample.jsonl")
    assert len(train_losses(tmp_path)) == 3
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["base"]) == {"perplexity/loss", "perplexity/perplexity"}
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_full_fine_tune_saves_safetensors_loadable_by_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    probe = LogitProbe()
    run_tiny_fit(tmp_path, plugins=[probe], overrides=[
        "adapter=full", "loss=cross_entropy", "trainer.max_steps=5", "optim.lr=1e-3",
        "evaluators=[logit_probe]"])
    assert (tmp_path / "model" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    _, tokenizer = _tiny_base()
    ids = torch.tensor([tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, probe.logits[-1], atol=1e-5, rtol=1e-5)


def test_lifecycle_hooks_are_called_once_each_with_keywords(tmp_path):
    calls = []

    class Recorder:
        __name__ = "recorder"

        @tuneforge.hookimpl
        def tuneforge_run_start(self, config, run_dir):
            calls.append(("start", config.trainer.max_steps, run_dir))

        @tuneforge.hookimpl
        def tuneforge_run_end(self, run_dir, status, metrics):
            calls.append(("end", status, metrics["steps"]))

    run_tiny_fit(tmp_path, plugins=[Recorder()], overrides=["trainer.max_steps=2"])
    assert calls == [("start", 2, tmp_path), ("end", "completed", 2)]


def test_tuneforge_fit_fixture_runs_an_author_plugin(tuneforge_fit):
    @dataclass
    class HeadOnlyConfig:
        """scale: unused marker field."""

        scale: int = 1

    def head_only(model, config):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(True)
        return model

    class AuthorPlugin:
        __name__ = "author_plugin"

        @tuneforge.hookimpl
        def tuneforge_adapters(self):
            return [tuneforge.AdapterSpec("head_only", HeadOnlyConfig, apply=head_only)]

    result = tuneforge_fit(plugins=[AuthorPlugin()], overrides=["adapter=head_only", "adapter.scale=3"])
    head = result.metrics["parameters"]["trainable"]
    assert head == 64 * 260  # hidden size x tiny vocabulary: only lm_head trains
    assert result.config.adapter.scale == 3 and result.metrics["steps"] == 5


def test_override_errors_name_the_key_and_the_choices(tmp_path):
    from tuneforge.errors import ConfigError

    cases = {
        "adapter=lorra": r"unknown choice 'lorra' for 'adapter' \(did you mean 'lora'\?\); valid: .*full.*lora",
        "adapter.rr=3": r"unknown config key 'adapter.rr' \(did you mean 'r'\?\); valid keys of adapter: .*lora_alpha",
        "+adapter.rr=3": r"unknown config key 'adapter.rr' for adapter 'lora' \(did you mean 'r'\?\)",
        "trainer.max_steps=abc": r"bad value for 'trainer.max_steps': Value 'abc' of type 'str' could not be "
                                 r"converted to Integer",
        "trainr.max_steps=3": r"unknown config key 'trainr' \(did you mean 'trainer'\?\)",
        "evaluators=[perplexit]": r"unknown choice 'perplexit' for 'evaluators' \(did you mean 'perplexity'\?\)",
        "adapter.name=ia3": r"^adapter.name=ia3 does not switch the adapter: the other settings are lora's; "
                            r"choose a component with adapter=ia3",
    }
    for override, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern) as raised:
            run_tiny_fit(tmp_path, overrides=[override])
        assert "name" not in str(raised.value).partition("valid keys")[2].replace(",", " ").split(), override

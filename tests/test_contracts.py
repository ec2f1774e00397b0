"""The component contracts a third-party plugin relies on: evaluators old (four arguments) and new
(``evaluation=``, ``MetricInfo``), callbacks with ``build`` and/or ``on_run_end``, an adapter without
``load``/``merge`` used by generate/export, and the one-line error when a run's adapter plugin is gone."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass

import pytest
import torch

import tuneforge
from tuneforge.evaluation import EvaluationPass, generate_predictions
from tuneforge.specs import call_accepting
from tuneforge.testing import run_tiny_fit

from helpers import FIXTURES, run_cli

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@dataclass
class CountConfig:
    """label: any text, echoed back by the callbacks."""

    label: str = ""


@dataclass
class LengthConfig:
    """max_new_tokens: generation length."""

    max_new_tokens: int = 3


class ContractPlugin:
    """Third-party evaluators and callbacks written against the documented contracts."""

    __name__ = "contract_plugin"

    def __init__(self):
        self.passes: list = []
        self.run_ends: list = []
        self.batches = 0

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        def count_examples(model, tokenizer, examples, config):  # written before `evaluation` existed
            return {"examples": float(len(examples))}

        def answer_length(model, tokenizer, examples, config, *, evaluation):
            self.passes.append(evaluation)
            rows = generate_predictions(model, tokenizer, examples, max_new_tokens=config.max_new_tokens,
                                        evaluation=evaluation, set_name="mine")
            return {"chars": sum(len(r["output"]) for r in rows) / len(rows)}

        return [
            tuneforge.EvaluatorSpec("count_examples", CountConfig, evaluate=count_examples),
            tuneforge.EvaluatorSpec("answer_length", LengthConfig, evaluate=answer_length, metrics=(
                tuneforge.MetricInfo("chars", higher_is_better=False, section="my-section",
                                     description="mean characters per answer"),)),
        ]

    @tuneforge.hookimpl
    def tuneforge_callbacks(self):
        import lightning.pytorch as pl

        plugin = self

        class CountBatches(pl.Callback):
            def on_train_batch_end(self, *args, **kwargs):
                plugin.batches += 1

        def end_only(config, status):  # a subset of the keywords
            self.run_ends.append(("end_only", config.label, status))

        def end_with_everything(config, **extra):
            self.run_ends.append(("both", config.label, sorted(extra), extra["metrics"]["tuned"]))

        return [
            tuneforge.CallbackSpec("build_only", CountConfig, build=lambda config: CountBatches()),
            tuneforge.CallbackSpec("end_only", CountConfig, on_run_end=end_only),
            tuneforge.CallbackSpec("both", CountConfig, build=lambda config: pl.Callback(),
                                   on_run_end=end_with_everything),
        ]


@pytest.fixture(scope="module")
def contract_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contracts")
    (folder / "t.jinja").write_text(TEMPLATE)
    plugin = ContractPlugin()
    result = run_tiny_fit(folder / "run", plugins=[plugin], overrides=[
        "trainer.max_steps=2", f"data.chat_template={folder / 't.jinja'}",
        "evaluators=[perplexity,count_examples,answer_length]",
        "callbacks=[build_only,end_only,both]", "callbacks.end_only.label=mine", "callbacks.both.label=theirs"])
    return result, plugin


def test_old_and_new_style_evaluators_run_side_by_side(contract_run):
    result, plugin = contract_run
    for label in ("base", "tuned"):
        assert result.metrics[label]["count_examples/examples"] == 6.0
        assert result.metrics[label]["answer_length/chars"] >= 0
    assert [p.label for p in plugin.passes] == ["base", "tuned"]
    assert all(isinstance(p, EvaluationPass) and p.context is not None and p.context.is_main for p in plugin.passes)
    assert all(p.chat_template == TEMPLATE for p in plugin.passes)  # the data's template reaches the evaluator
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").open()]
    mine = [row for row in rows if row["set"] == "mine"]
    assert len(mine) == 6 and all(row["prompt"].endswith("<assistant>") and "base" in row and "tuned" in row
                                  for row in mine)


def test_metric_info_groups_the_report_and_is_saved(contract_run):
    result, _ = contract_run
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    info = saved["metric_info"]
    assert info["answer_length/chars"] == {"higher_is_better": False, "primary": False, "section": "my-section",
                                           "description": "mean characters per answer", "is_loss": False}
    assert info["count_examples/examples"] == tuneforge.MetricInfo("examples").as_dict()  # undeclared: defaults
    assert info["count_examples/examples"]["section"] == "held-out"
    md = (result.run_dir / "report.md").read_text()
    held_out, mine = md.split("## My-section")
    assert "| count_examples/examples |" in held_out and "answer_length/chars" not in held_out
    base, tuned = result.metrics["base"]["answer_length/chars"], result.metrics["tuned"]["answer_length/chars"]
    assert f"| answer_length/chars | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |" in mine
    assert "- answer_length/chars: mean characters per answer (lower is better)" in mine
    assert "<h2>My-section</h2>" in (result.run_dir / "report.html").read_text()


def test_callbacks_get_their_own_config_at_run_end(contract_run):
    result, plugin = contract_run
    assert plugin.batches == 2  # build-only callback: a Lightning callback, as before
    assert plugin.run_ends[0] == ("end_only", "mine", "completed")
    name, label, keywords, tuned = plugin.run_ends[1]
    assert (name, label) == ("both", "theirs")
    assert keywords == ["context", "metrics", "run_dir", "status"]
    assert tuned == result.metrics["tuned"]
    assert len(plugin.run_ends) == 2


def test_spec_contracts_are_checked_when_built():
    with pytest.raises(TypeError, match="callback 'x': give 'build'.*'on_run_end' or both"):
        tuneforge.CallbackSpec("x", CountConfig)
    with pytest.raises(TypeError, match="'on_run_end' must be a callable"):
        tuneforge.CallbackSpec("x", CountConfig, on_run_end="later")
    with pytest.raises(TypeError, match="must be a tuple of tuneforge.MetricInfo"):
        tuneforge.EvaluatorSpec("x", CountConfig, evaluate=len, metrics=("loss",))
    spec = tuneforge.EvaluatorSpec("x", CountConfig, evaluate=len, metrics=[tuneforge.MetricInfo("a")])
    assert spec.metrics == (tuneforge.MetricInfo("a"),) and spec.metric_info("b") == tuneforge.MetricInfo("b")


def test_call_accepting_passes_only_the_keywords_a_function_takes():
    assert call_accepting(lambda a, b: (a, b), 1, 2, evaluation="p") == (1, 2)
    assert call_accepting(lambda a, *, evaluation=None: (a, evaluation), 1, evaluation="p") == (1, "p")
    assert call_accepting(lambda a, **kw: (a, kw), 1, x=2, y=3) == (1, {"x": 2, "y": 3})
    assert call_accepting(lambda a, x, /: (a, x), 1, 2, x=3) == (1, 2)  # positional-only is not a keyword


def test_a_third_party_peft_adapter_without_load_or_merge_loads_and_exports_through_the_peft_defaults(
        tmp_path, monkeypatch):
    """``loha`` (tests/plugin_fixtures/peftdefaults) gives only ``apply``, returning peft's LoHa model: eval,
    generate and chat load it onto the base (no "couldn't connect to huggingface.co" from from_pretrained on
    an adapter folder), and export merges it into a standalone model with the trained logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.export import export_run
    from tuneforge.commands.run_loading import load_run
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    monkeypatch.syspath_prepend(str(FIXTURES / "peftdefaults"))
    importlib.invalidate_caches()
    run = run_tiny_fit(tmp_path / "run", overrides=["adapter=loha", "trainer.max_steps=2", "optim.lr=0.05",
                                                    "baselines=[]", "evaluators=[]", "memorisation.sample=0"]).run_dir
    assert (run / "model" / "adapter_config.json").is_file()
    loaded = load_run(run, device="cpu")
    assert isinstance(loaded.model, PeftModel)
    out = export_run(run, tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.arange(10, 30).view(1, 20)
    with torch.no_grad():
        tuned, base = loaded.model(input_ids=ids).logits, load_tiny(TinyModelConfig())[0].eval()(input_ids=ids).logits
        assert (tuned - base).abs().max() > 1e-4, "the trained adapter should matter"
        torch.testing.assert_close(exported(input_ids=ids).logits, tuned, atol=1e-5, rtol=1e-5)


def test_a_third_party_adapter_without_load_or_merge_generates_and_exports(tmp_path, monkeypatch):
    """``my_adapter`` (tests/plugin_fixtures/good) gives only ``apply``: the host's defaults (full weights
    saved with save_pretrained, loaded with from_pretrained, exported as loaded) carry it through."""
    from transformers import AutoModelForCausalLM

    from tuneforge.commands.export import export_run
    from tuneforge.commands.generate import generate_reply
    from tuneforge.commands.run_loading import load_run

    monkeypatch.syspath_prepend(str(FIXTURES / "good"))
    importlib.invalidate_caches()
    run = run_tiny_fit(tmp_path / "run", overrides=["adapter=my_adapter", "trainer.max_steps=2",
                                                    "optim.lr=0.01"]).run_dir
    loaded = load_run(run, device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    out = export_run(run, tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.arange(10, 30).view(1, 20)
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
        prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True,
                                                      add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)["input_ids"]
        direct = exported.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                   do_sample=False, eos_token_id=loaded.tokenizer.eos_token_id,
                                   pad_token_id=loaded.tokenizer.pad_token_id)
    expected = loaded.tokenizer.decode(direct[0, prompt.shape[1]:], skip_special_tokens=True)
    assert generate_reply(loaded, [{"role": "user", "content": "Hi"}], max_new_tokens=6) == expected

    # the same run where the plugin is not installed: one line naming the adapter
    result = run_cli(["generate", f"run_dir={run}", "prompt=hi"], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: ")
    assert f"run_dir={run} was trained with adapter 'my_adapter', which no installed plugin provides" in lines[0]

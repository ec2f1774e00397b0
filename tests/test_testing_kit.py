"""tuneforge.testing for plugin authors: installed + passed plugins, label, loss and evaluator checks."""

import sys
import types

import pytest
import torch

from helpers import FIXTURES
from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager
from tuneforge.testing import (TOY_RECORDS, assert_labels, run_evaluator, run_loss, run_tiny_fit, tiny_model,
                               tiny_tokenizer, toy_examples, trained_spans)


@pytest.fixture
def installed_myplug(monkeypatch):
    """The fixture distribution ``myplug`` on sys.path (as if pip-installed) and its module imported."""
    import importlib

    for name in [n for n in sys.modules if n == "myplug" or n.startswith("myplug.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FIXTURES / "good"))
    return importlib.import_module("myplug.plugin")


def test_an_installed_module_passed_in_is_registered_once_as_installed(installed_myplug):
    plugins = create_plugin_manager(PluginSelection(), [installed_myplug])
    assert "myplug.plugin" not in plugins.infos
    assert plugins.infos["myplug"].distribution == "myplug" and plugins.infos["myplug"].version == "0.1.0"
    assert plugins.contributions("myplug") == {"data": ["my_data"], "adapter": ["my_adapter"]}
    assert plugins.pm.get_plugin("myplug") is installed_myplug


def test_the_documented_call_works_for_an_installed_plugin(tmp_path, installed_myplug):
    result = run_tiny_fit(tmp_path, plugins=[installed_myplug], overrides=["adapter=my_adapter", "data=my_data"])
    assert result.metrics["steps"] == 5
    assert result.metrics["parameters"]["trainable"] == 64 * 260  # my_adapter trains lm_head only


def test_a_module_that_is_not_installed_keeps_its_own_name():
    module = types.ModuleType("scratch_plugin")
    exec("import tuneforge\n"
         "from dataclasses import dataclass\n"
         "@dataclass\nclass C:\n    x: int = 1\n"
         "def tuneforge_adapters():\n"
         "    return [tuneforge.AdapterSpec('scratch', C, apply=lambda model, config: model)]\n", module.__dict__)
    plugins = create_plugin_manager(PluginSelection(), [module])
    assert plugins.infos["scratch_plugin"].distribution == "<registered in-process>"
    assert plugins["adapter"].origin("scratch").name == "scratch_plugin"


def test_an_entry_point_loading_the_passed_object_counts_as_that_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "objplug").mkdir(parents=True)
    (site / "objplug" / "__init__.py").write_text(
        "class Hooks:\n    def tuneforge_run_end(self, status):\n        pass\nPLUGIN = Hooks()\n")
    info = site / "objplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: objplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tuneforge]\nobjplug = objplug:PLUGIN\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        import objplug

        plugins = create_plugin_manager(PluginSelection(), [objplug.PLUGIN])
        assert [name for name, p in plugins.pm.list_name_plugin() if p is objplug.PLUGIN] == ["objplug"]
    finally:
        sys.modules.pop("objplug", None)


def test_assert_labels_names_exactly_the_trained_spans():
    tokenizer = tiny_tokenizer()
    alpaca, chat, completion = toy_examples(tokenizer, [
        {"instruction": "Capital of France?", "output": "Paris"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]},
        {"text": "free text"}])
    assert assert_labels(alpaca, tokenizer, trained=["Paris<|im_end|>\n"]) == ["Paris<|im_end|>\n"]
    assert_labels(chat, tokenizer, trained=["hello<|im_end|>\n", "ciao<|im_end|>\n"])  # every assistant turn
    assert_labels(completion, tokenizer, trained=["free text<|im_end|>"])
    with pytest.raises(AssertionError) as info:
        assert_labels(alpaca, tokenizer, trained=["Paris"])
    assert "got      ['Paris<|im_end|>\\n']" in str(info.value)
    assert "assistant\\n[[Paris<|im_end|>\\n]]" in str(info.value)  # the example with its trained span marked


def test_trained_spans_refuse_shifted_labels():
    tokenizer = tiny_tokenizer()
    example = dict(toy_examples(tokenizer)[0])
    example["labels"] = example["labels"][1:] + [-100]
    with pytest.raises(AssertionError, match="differs from its input id"):
        trained_spans(example, tokenizer)


def test_preference_spans_with_a_prefix():
    tokenizer = tiny_tokenizer()
    [example] = toy_examples(tokenizer, [{"prompt": "Pick one.", "chosen": "A", "rejected": "B"}])
    assert_labels(example, tokenizer, prefix="chosen_", trained=["A<|im_end|>\n"])
    assert_labels(example, tokenizer, prefix="rejected_", trained=["B<|im_end|>\n"])


def test_run_loss_builds_a_spec_and_checks_value_and_gradients():
    plugins = create_plugin_manager(PluginSelection())
    spec = plugins["loss"].get("cross_entropy")
    model, tokenizer = tiny_model()
    output = run_loss(spec, config={"label_smoothing": 0.0}, model=model, tokenizer=tokenizer)
    trained = sum(1 for ex in toy_examples(tokenizer) for label in ex["labels"][1:] if label != -100)
    assert output.num_tokens == trained
    assert 4.0 < float(output.loss) < 7.0  # near log(260) = 5.56 for a random model over 260 tokens
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_run_loss_catches_broken_losses():
    from tuneforge.losses import LossOutput

    with pytest.raises(AssertionError, match="must return tuneforge.losses.LossOutput"):
        run_loss(lambda model, batch: 1.0)
    with pytest.raises(AssertionError, match="every gradient is zero"):
        run_loss(lambda model, batch: LossOutput(
            loss=0.0 * model(input_ids=batch["input_ids"]).logits.sum(), num_tokens=1))
    with pytest.raises(AssertionError, match="LossOutput.loss is nan"):
        run_loss(lambda model, batch: LossOutput(loss=torch.tensor(float("nan")), num_tokens=1), backward=False)


def test_run_evaluator_on_given_predictions_and_on_examples():
    plugins = create_plugin_manager(PluginSelection())
    exact = plugins["evaluators"].get("exact_match")
    predictions = [("2+2?", "4", "4"), ("3+3?", "6", "7"), {"prompt": "Sky?", "reference": "blue", "output": "blue"}]
    assert run_evaluator(exact, predictions=predictions) == {"exact_match": pytest.approx(2 / 3)}
    perplexity = run_evaluator(plugins["evaluators"].get("perplexity"), TOY_RECORDS)
    assert set(perplexity) == {"loss", "perplexity"} and perplexity["perplexity"] > 1
    # a bare evaluate function with its config instance
    seen = []
    run_evaluator(lambda model, tokenizer, examples, config: seen.append((len(examples), config)) or {"n": 1.0},
                  config="cfg")
    assert seen == [(len(TOY_RECORDS), "cfg")]


def test_run_evaluator_says_the_expected_form_of_predictions():
    exact = create_plugin_manager(PluginSelection())["evaluators"].get("exact_match")
    form = r"it takes a list of \(prompt, reference, output\) tuples or of \{'prompt', 'reference', 'output'\} dicts"
    cases = [([("a", "b")], r"row 0 \('a', 'b'\) has 2 items, not 3"),
             ([("a", "b", "c"), ["a", "b", "c", "d"]], r"row 1 \['a', 'b', 'c', 'd'\] has 4 items, not 3"),
             ([{"prompt": "a", "reference": "b"}], r"row 0 \{.*\} lacks 'output'"),
             (["abc"], r"row 0 'abc' is a str"),
             ("abc", r"got str 'abc'"),
             ({"prompt": "a", "reference": "b", "output": "c"}, r"got dict \{'prompt': 'a', .*\}")]
    for predictions, problem in cases:
        with pytest.raises(ValueError, match=rf"^run_evaluator\(predictions=\.\.\.\):? {problem}; {form}, e\.g\. "):
            run_evaluator(exact, predictions=predictions)


def test_run_evaluator_refuses_what_the_run_would_refuse():
    """Non-finite or bool metrics and per-example scores, and a count of scores that is not one per example,
    fail a plugin author's test as they would fail the run."""
    from tuneforge.errors import PluginError
    from tuneforge.evaluation import record_scores

    def judge(model, tokenizer, examples, config, *, evaluation=None):
        values = config(len(examples))
        record_scores("hit", values, evaluation=evaluation)
        return {"hit": sum(values) / len(values)}

    assert run_evaluator(judge, config=lambda n: [1.0] * n) == {"hit": 1.0}
    with pytest.raises(PluginError, match=r"evaluator 'judge', record_scores\('hit'\) got 3 values for the 4 "):
        run_evaluator(judge, config=lambda n: [1.0] * (n - 1))
    with pytest.raises(PluginError, match=r"evaluator 'judge', record_scores\('hit'\) got True \(bool\) as "):
        run_evaluator(judge, config=lambda n: [True] * n)
    with pytest.raises(PluginError, match=r"evaluator 'judge', evaluate returned nan \(float\) for metric 'hit'"):
        run_evaluator(judge, config=lambda n: [float("nan")] * n)


def test_fit_result_loads_the_trained_model_back_like_eval_does(tmp_path):
    """``FitResult.load_model()``: the run's model/ read back through the adapter's ``load``, in eval mode:
    trained (not the base model's logits) and the same on every load."""
    result = run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=4", "optim.lr=1e-2", "evaluators=[perplexity]",
                                                        "baselines=[]"])
    model, tokenizer = result.load_model()
    assert not model.training
    base, _ = result.components.model.spec.load(result.components.model.config)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)
        again, _ = result.load_model()
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)

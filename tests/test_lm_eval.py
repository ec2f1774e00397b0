"""The ``lm_eval`` evaluator: lm-evaluation-harness on the live model, offline, with the shipped local task.

The numbers are checked against an independent log-likelihood computation of
the same multiple-choice questions with the tiny model, for the base model and
for a ``peft`` LoRA model whose adapter changes the outputs.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.evaluation import EvaluationPass
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.specs import EvaluatorSpec, MetricInfo

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "examples" / "lm_eval_tasks"
TASK = "tuneforge_general_knowledge"


@dataclass
class _Empty:
    """no field."""


def _config(**values):
    from tuneforge.plugins.evaluators_lm_eval import LmEvalConfig

    return LmEvalConfig(**{"tasks": [TASK], "include_path": str(TASKS), "limit": 12, **values})


def _questions(limit):
    rows = [json.loads(line) for line in (TASKS / "general_knowledge.jsonl").read_text().splitlines()]
    return rows[:limit]


def _expected_accuracies(model, tokenizer, rows) -> dict:
    """acc and acc_norm of the example task computed here: the option whose tokens after the prompt are
    most likely (acc_norm: divided by the option's length in characters); ``scores``: every option's
    log-likelihood."""
    hits = hits_norm = 0
    all_scores = []
    with torch.no_grad():
        for row in rows:
            context = f"Question: {row['question']}\nAnswer:"
            scores = []
            for choice in row["choices"]:
                context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
                ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
                logprobs = torch.log_softmax(logits[:-1], dim=-1)
                targets = torch.tensor(ids[1:])
                token_lp = logprobs[torch.arange(len(targets)), targets]
                scores.append(float(token_lp[len(context_ids) - 1:].sum()))
            all_scores += scores
            hits += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
            normed = [s / len(c) for s, c in zip(scores, row["choices"])]
            hits_norm += max(range(len(normed)), key=normed.__getitem__) == row["answer"]
    return {"acc": hits / len(rows), "acc_norm": hits_norm / len(rows), "scores": all_scores}


@pytest.fixture(scope="module")
def lm_eval_plugin():
    pytest.importorskip("lm_eval")
    from tuneforge.plugins import evaluators_lm_eval

    return evaluators_lm_eval


# ---------------------------------------------------------------------------
# Metric metadata (no lm-eval needed)
# ---------------------------------------------------------------------------


def test_metric_info_patterns_describe_metrics_named_at_run_time():
    spec = EvaluatorSpec("x", _Empty, evaluate=len, metrics=(MetricInfo("loss", higher_is_better=False),
                                  MetricInfo("*/perplexity", higher_is_better=False, section="forgetting"),
                                  MetricInfo("*", section="forgetting", description="any")))
    assert spec.metric_info("loss") == MetricInfo("loss", higher_is_better=False)
    assert spec.metric_info("arc/perplexity") == MetricInfo("arc/perplexity", higher_is_better=False,
                                                           section="forgetting")
    assert spec.metric_info("arc/acc") == MetricInfo("arc/acc", section="forgetting", description="any")
    plain = EvaluatorSpec("y", _Empty, evaluate=len, metrics=(MetricInfo("acc"),))
    assert plain.metric_info("arc/acc") == MetricInfo("arc/acc")  # no pattern: the defaults, held-out


def test_lm_eval_metrics_are_in_the_forgetting_section_with_lm_evals_directions():
    from tuneforge.plugins.evaluators_lm_eval import SPEC

    for name in ("t/acc", "t/acc_norm", "t/exact_match/strict-match", "t/acc_stderr"):
        assert SPEC.metric_info(name).section == "forgetting"
    assert SPEC.metric_info("t/acc").higher_is_better is True
    assert SPEC.metric_info("t/exact_match/flexible-extract").higher_is_better is True
    for name in ("t/word_perplexity", "t/bits_per_byte", "t/perplexity/none2", "t/acc_stderr"):
        assert SPEC.metric_info(name).higher_is_better is False, name


# ---------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"limit": 0}, "evaluators.lm_eval.limit: must be a whole number of documents >= 1 or a fraction"),
    ({"limit": 2.5}, "evaluators.lm_eval.limit"),
    ({"batch_size": 0}, "evaluators.lm_eval.batch_size: must be a whole number >= 1, got 0"),
    ({"num_fewshot": -1}, "evaluators.lm_eval.num_fewshot: must be a whole number >= 0"),
    ({"bootstrap_iters": -5}, "evaluators.lm_eval.bootstrap_iters"),
    ({"tasks": "arc_easy"}, "evaluators.lm_eval.tasks: must be a list of names"),
    ({"metrics": [""]}, "evaluators.lm_eval.metrics: must be a list of names"),
    ({"include_path": "/no/such/tasks"}, "evaluators.lm_eval.include_path: no such folder: /no/such/tasks"),
])
def test_bad_values_fail_when_the_config_is_built(values, message):
    from tuneforge.plugins.evaluators_lm_eval import LmEvalConfig

    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as raised:
        LmEvalConfig(**values)
    assert isinstance(raised.value, ConfigError) and "\n" not in str(raised.value)
    LmEvalConfig()  # the defaults are valid (no task: nothing is checked against lm-eval)
    LmEvalConfig(tasks="???", limit="${oc.env:LIMIT}")  # placeholders are not checked


def test_missing_lm_eval_names_the_install_command(monkeypatch):
    import importlib.util

    from tuneforge.plugins.evaluators_lm_eval import LmEvalConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r'lm-evaluation-harness, which is not installed: '
                                          r'pip install "tuneforge\[lm-eval\]"'):
        LmEvalConfig(tasks=["arc_easy"])


def test_unknown_task_names_the_valid_ones(lm_eval_plugin):
    with pytest.raises(ConfigError, match=r"evaluators\.lm_eval\.tasks: unknown lm-eval task 'tuneforge_general' "
                                          r"\(did you mean 'tuneforge_general_knowledge'\?\); valid: "
                                          r"tuneforge_general_knowledge \(under include_path\)$"):
        _config(tasks=["tuneforge_general"], include_defaults=False)
    with pytest.raises(ConfigError, match="include_defaults: is false and include_path is empty"):
        _config(include_path=None, include_defaults=False)


# ---------------------------------------------------------------------------
# The evaluation, in process
# ---------------------------------------------------------------------------


def test_scores_the_live_model_and_a_peft_model_like_an_independent_computation(lm_eval_plugin):
    import peft

    model, tokenizer = load_tiny(TinyModelConfig())
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    base = lm_eval_plugin.evaluate_lm_eval(model, tokenizer, [], _config(limit=12),
                                           evaluation=EvaluationPass("base"))
    assert model.training  # handed back in train mode
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # and unchanged
    assert set(base) == {f"{TASK}/acc", f"{TASK}/acc_norm"}
    model.eval()
    expected = _expected_accuracies(model, tokenizer, _questions(12))
    assert base[f"{TASK}/acc"] == pytest.approx(expected["acc"])
    assert base[f"{TASK}/acc_norm"] == pytest.approx(expected["acc_norm"])
    # a fraction of the task: 0.25 of 32 questions
    quarter = lm_eval_plugin.evaluate_lm_eval(model, tokenizer, [], _config(limit=0.25))
    assert quarter[f"{TASK}/acc"] == pytest.approx(_expected_accuracies(model, tokenizer, _questions(8))["acc"])

    # a peft model whose adapter changes the outputs is scored with its adapter
    torch.manual_seed(1)
    tuned = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=64, init_lora_weights=False,
                                                       target_modules=["q_proj", "v_proj", "down_proj"]))
    tuned.eval()
    expected_tuned = _expected_accuracies(tuned, tokenizer, _questions(12))
    assert expected_tuned["scores"] != pytest.approx(expected["scores"], abs=1e-3)  # the adapter is active
    scores = lm_eval_plugin.evaluate_lm_eval(tuned, tokenizer, [], _config(limit=12, metrics=["acc"]))
    assert set(scores) == {f"{TASK}/acc"}
    assert scores[f"{TASK}/acc"] == pytest.approx(expected_tuned["acc"])


def test_random_state_is_kept(lm_eval_plugin):
    model, tokenizer = load_tiny(TinyModelConfig())
    torch.manual_seed(3)
    random.seed(3)
    expected = (random.random(), torch.rand(2))
    torch.manual_seed(3)
    random.seed(3)
    lm_eval_plugin.evaluate_lm_eval(model, tokenizer, [], _config(limit=2))
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(2), expected[1])


def test_offline_and_missing_data_errors_are_one_line(lm_eval_plugin, tmp_path):
    model, tokenizer = load_tiny(TinyModelConfig())
    (tmp_path / "hub.yaml").write_text(
        "task: needs_the_hub\ndataset_path: tuneforge-test/no-such-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n")
    (tmp_path / "missing.yaml").write_text(
        "task: missing_file\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: no_such_file.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\n"
        "doc_to_target: 0\nmetric_list:\n  - metric: acc\n")
    hub = _config(tasks=["needs_the_hub"], include_path=str(tmp_path), include_defaults=False)
    with pytest.raises(ConfigError, match=r"on the Hugging Face hub and evaluators\.lm_eval\.offline is true: "
                                          r".*OfflineModeIsEnabled.*offline=false to download it$"):
        lm_eval_plugin.evaluate_lm_eval(model, tokenizer, [], hub)
    missing = _config(tasks=["missing_file"], include_path=str(tmp_path), include_defaults=False)
    with pytest.raises(ConfigError, match=r"a task's data file is missing: .*no_such_file\.jsonl.*working directory"):
        lm_eval_plugin.evaluate_lm_eval(model, tokenizer, [], missing)


def test_offline_switch_restores_the_hub_flags(lm_eval_plugin):
    import datasets
    import huggingface_hub

    before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with lm_eval_plugin._offline(True):
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


# ---------------------------------------------------------------------------
# In a run: base and tuned in metrics.json, the forgetting section of report.md
# ---------------------------------------------------------------------------


def test_run_reports_lm_eval_base_and_tuned_in_the_forgetting_section(lm_eval_plugin, tmp_path, monkeypatch):
    from tuneforge.testing import run_tiny_fit

    monkeypatch.chdir(ROOT)  # the example task's data_files path is relative to the repository root
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "trainer.max_steps=2", "optim.lr=0.05", "evaluators=[perplexity,lm_eval]",
        "evaluators.lm_eval.include_path=examples/lm_eval_tasks", f"evaluators.lm_eval.tasks=[{TASK}]",
        "evaluators.lm_eval.limit=8"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = {f"lm_eval/{TASK}/acc", f"lm_eval/{TASK}/acc_norm"}
    for label in ("base", "tuned"):
        assert names <= set(saved[label])
        for name in names:
            assert saved[label][name] * 8 == pytest.approx(round(saved[label][name] * 8))  # k of 8 questions
    base_model, tokenizer = load_tiny(TinyModelConfig())
    base_model.eval()
    expected = _expected_accuracies(base_model, tokenizer, _questions(8))
    assert saved["base"][f"lm_eval/{TASK}/acc"] == pytest.approx(expected["acc"])
    assert saved["metric_info"][f"lm_eval/{TASK}/acc"]["section"] == "forgetting"
    assert saved["metric_info"][f"lm_eval/{TASK}/acc"]["higher_is_better"] is True
    assert result.metrics["tuned"] == saved["tuned"]

    report = (tmp_path / "run" / "report.md").read_text()
    forgetting = report.split("## Forgetting", 1)[1].split("\n## ", 1)[0]
    for name in sorted(names):
        row = f"| {name} | {saved['base'][name]:.4f} | {saved['tuned'][name]:.4f} |"
        assert row in forgetting
    held_out = report.split("## Held-out metrics", 1)[1].split("## Forgetting", 1)[0]
    assert "lm_eval/" not in held_out and "perplexity/loss" in held_out

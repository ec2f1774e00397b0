"""Reward models (``loss=reward``): the Bradley-Terry arithmetic (by hand and against TRL's
``RewardTrainer``), a run that learns a separable toy preference set (held-out pairwise accuracy with
its interval), the ``reward_model/`` folder read back by ``transformers`` alone, exact resume after an
interruption, ``adapter=full``, and the one-line refusals."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.data import pad_batch
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.plugins import reward_model
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.testing import run_tiny_fit
from tuneforge.training.run import RunInterrupted

WORDS = ["forest", "maple", "garden", "stone", "cloud", "river", "candle", "planet", "silver", "window",
         "bridge", "orange"]


def write_pairs(path: Path, count: int = 40) -> Path:
    """A separable toy preference set (TRL's prompt/chosen/rejected layout): the chosen answer always ends
    in "!!" (which the tiny random model's fresh head happens to score lower: base accuracy 0)."""
    rows = [{"prompt": f"Item {i}: say something about {WORDS[i % len(WORDS)]}.",
             "chosen": f"{WORDS[i % len(WORDS)]} is bad!!", "rejected": f"{WORDS[i % len(WORDS)]} is good"}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reward_overrides(data: Path) -> list:
    return ["data=jsonl", f"data.path={data}", "data.val_size=10", "data.cache=false", "loss=reward",
            "evaluators=[reward_accuracy]", "baselines=[]", "optim.lr=1e-2", "trainer.max_steps=8"]


def seq_cls_tiny():
    return load_tiny(TinyModelConfig(), head="sequence_classification")


# ---------------------------------------------------------------------------
# the arithmetic
# ---------------------------------------------------------------------------


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([0.0, 2.0, -0.5])
    plain = reward_model.bradley_terry_loss(chosen, rejected)
    expected = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0)), math.log(2.0)]
    assert plain.tolist() == pytest.approx(expected, abs=1e-6)
    # margin 0.5 and centring 0.1: -log sigmoid(rc - rr - 0.5) + 0.1 (rc + rr)^2
    both = reward_model.bradley_terry_loss(chosen, rejected, margin=0.5, center_rewards_coefficient=0.1)
    expected = [math.log(1 + math.exp(-0.5)) + 0.1 * 1.0, math.log(1 + math.exp(2.5)) + 0.1 * 4.0,
                math.log(1 + math.exp(0.5)) + 0.1 * 1.0]
    assert both.tolist() == pytest.approx(expected, abs=1e-6)


def _token_pairs(tokenizer):
    texts = [("the sky is blue", "the sky is green!"), ("two plus two is four", "five"),
             ("paris", "rome is the capital of france")]
    return [{"chosen_input_ids": tokenizer(c, add_special_tokens=False)["input_ids"],
             "rejected_input_ids": tokenizer(r, add_special_tokens=False)["input_ids"]} for c, r in texts]


@pytest.mark.parametrize("margin, center", [(0.0, None), (0.3, 0.01)])
def test_reward_loss_equals_trl_reward_trainer(margin, center):
    trl_reward = pytest.importorskip("trl.trainer.reward_trainer")
    from collections import defaultdict
    from types import SimpleNamespace

    model, tokenizer = seq_cls_tiny()
    model.eval()
    pairs = _token_pairs(tokenizer)
    loss_fn = reward_model.build_reward(reward_model.RewardConfig(margin=margin,
                                                                  center_rewards_coefficient=center or 0.0))
    with torch.no_grad():
        ours = loss_fn(model, pad_batch(pairs, tokenizer.pad_token_id))

    collate = trl_reward.DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    inputs = collate([{"chosen_ids": p["chosen_input_ids"], "rejected_ids": p["rejected_input_ids"],
                       **({"margin": margin} if margin else {})} for p in pairs])
    accelerator = SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=center),
                              accelerator=accelerator, _metrics=defaultdict(lambda: defaultdict(list)),
                              _total_train_tokens=0)
    with torch.no_grad():
        theirs = trl_reward.RewardTrainer.compute_loss(trainer, model, inputs)
    assert abs(float(ours.loss) - float(theirs)) < 1e-5, (float(ours.loss), float(theirs))
    assert ours.num_tokens == len(pairs)
    assert float(ours.metrics["reward_margin"]) == pytest.approx(trainer._metrics["eval"]["margin"][0], abs=1e-5)


def test_score_texts_ignores_padding():
    model, tokenizer = seq_cls_tiny()
    texts = ["a short one", "a much longer text than the first one, padded less", "mid length"]
    together = reward_model.score_texts(model, tokenizer, texts, batch_size=3)
    alone = [reward_model.score_texts(model, tokenizer, [text])[0] for text in texts]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(round(v, 6) for v in together)) == 3
    with pytest.raises(TypeError, match="a list of strings"):
        reward_model.score_texts(model, tokenizer, "one text")


def test_hf_source_loads_a_folder_with_a_scalar_head_on_the_same_body(tmp_path):
    from tuneforge.plugins.models import HFModelConfig, load_hf

    causal, tokenizer = load_tiny(TinyModelConfig())
    causal.config.pad_token_id = None  # a checkpoint that does not say: the tokenizer's is used
    causal.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model, loaded_tokenizer = load_hf(HFModelConfig(path=str(tmp_path / "lm")), head="sequence_classification")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == loaded_tokenizer.pad_token_id
    body = causal.model.state_dict()
    assert all(torch.equal(body[k], v) for k, v in model.model.state_dict().items())
    assert model.score.weight.shape == (1, causal.config.hidden_size)
    assert load_hf(HFModelConfig(path=str(tmp_path / "lm")))[0].config.pad_token_id is None  # causal LM untouched


def test_lora_trains_the_head_in_full_and_the_body_through_low_rank_matrices():
    from tuneforge.plugins.adapters import LoraAdapterConfig, apply_lora

    model, _ = seq_cls_tiny()
    trainable = [name for name, p in apply_lora(model, LoraAdapterConfig()).named_parameters() if p.requires_grad]
    head = [name for name in trainable if ".score." in name]
    assert head and all("modules_to_save" in name for name in head)  # a trained copy, not LoRA on the head
    assert not any("score.lora" in name for name in trainable)
    assert set(trainable) - set(head) and all("lora_" in name for name in set(trainable) - set(head))


# ---------------------------------------------------------------------------
# a reward run
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """The documented command's settings (docs/losses.md, ``reward``) on the toy set, with the tiny model."""
    root = tmp_path_factory.mktemp("reward")
    data = write_pairs(root / "pairs.jsonl")
    run_dir = root / "run"
    assert run_tiny_fit(run_dir, overrides=reward_overrides(data)).metrics["steps"] == 8
    return run_dir, data


def test_reward_run_raises_held_out_pairwise_accuracy(reward_run):
    run_dir, _ = reward_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    base, tuned = metrics["base"], metrics["tuned"]
    assert base["reward_accuracy/pairwise_accuracy"] <= 0.2
    assert tuned["reward_accuracy/pairwise_accuracy"] == 1.0
    assert tuned["reward_accuracy/mean_margin"] > base["reward_accuracy/mean_margin"] + 1.0
    interval = metrics["intervals"]["tuned"]["reward_accuracy/pairwise_accuracy"]
    assert interval["method"] == "Wilson score" and interval["n"] == 10
    assert interval["low"] == pytest.approx(0.7225, abs=1e-3) and interval["high"] == 1.0
    assert metrics["metric_info"]["reward_accuracy/pairwise_accuracy"]["primary"] is True


def folder_scores(run_dir: Path, tolerance: float):
    """The reward model folder, read by ``transformers`` alone, scoring the run's held-out pairs as texts:
    their mean margin is the run's tuned ``mean_margin``.  Returns ``(model, tokenizer, cfg, texts, scores)``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.commands.run_loading import plugins_for_run, read_run_config
    from tuneforge.host.components import typed_config

    folder = run_dir / "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged
    assert getattr(model.config, "quantization_config", None) is None  # plain weights

    cfg = read_run_config(run_dir)
    spec = plugins_for_run(cfg)["data"].get(cfg.data.name)
    held_out = spec.load(typed_config(spec, cfg.data, "data"), tokenizer).val
    texts = [tokenizer.decode(example[f"{side}_input_ids"]) for example in held_out for side in ("chosen", "rejected")]
    scores = reward_model.score_texts(model, tokenizer, texts, batch_size=4)
    margins = [c - r for c, r in zip(scores[::2], scores[1::2])]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(margins) / len(margins) == pytest.approx(metrics["tuned"]["reward_accuracy/mean_margin"],
                                                        abs=tolerance)
    return model, tokenizer, cfg, texts, scores


def test_reward_model_folder_loads_with_transformers_and_scores_as_the_run(reward_run):
    from tuneforge.commands.run_loading import load_run_model

    run_dir, _ = reward_run
    model, tokenizer, cfg, texts, scores = folder_scores(run_dir, tolerance=1e-5)
    # and text by text equal to the run's trained model (base + LoRA adapter, loaded back by tuneforge)
    trained = load_run_model(run_dir, cfg)
    assert reward_model.score_texts(trained, tokenizer, texts, batch_size=1) == pytest.approx(scores, abs=1e-5)


def test_a_qlora_reward_run_writes_a_dequantized_reward_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    data = write_pairs(tmp_path / "pairs.jsonl")
    result = run_tiny_fit(tmp_path / "run", overrides=[*reward_overrides(data), "model.quantization=nf4"])
    assert result.metrics["tuned"]["reward_accuracy/pairwise_accuracy"] == 1.0
    folder_scores(tmp_path / "run", tolerance=1e-4)  # the 4-bit weights as they computed, LoRA merged


def test_tuneforge_eval_rescores_a_reward_run(reward_run):
    from tuneforge.commands.eval import eval_command

    run_dir, _ = reward_run
    eval_command([f"run_dir={run_dir}"])
    again = json.loads((run_dir / "eval" / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    for column in ("base", "tuned"):
        assert again[column]["reward_accuracy/mean_margin"] == pytest.approx(
            trained[column]["reward_accuracy/mean_margin"], abs=1e-5)


def test_reward_run_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    from tuneforge.training.module import FineTuneModule

    data = write_pairs(tmp_path / "pairs.jsonl")
    run = [*reward_overrides(data), "evaluators=[]", "checkpoint.every_n_steps=2", "adapter.lora_dropout=0.1"]
    reference = run_tiny_fit(tmp_path / "reference", overrides=run)
    assert reference.metrics["steps"] == 8

    original = FineTuneModule.on_train_batch_start

    def stop_at_step_5(self, batch, batch_idx):
        if self.trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(FineTuneModule, "on_train_batch_start", stop_at_step_5)
    with pytest.raises(RunInterrupted):
        run_tiny_fit(tmp_path / "crashed", overrides=run)
    monkeypatch.setattr(FineTuneModule, "on_train_batch_start", original)
    resumed = run_tiny_fit(tmp_path / "crashed", overrides=run)
    assert resumed.metrics["steps"] == 8
    assert len(resumed.metrics["segments"]) == 2
    want = load_file(tmp_path / "reference" / "reward_model" / "model.safetensors")
    got = load_file(tmp_path / "crashed" / "reward_model" / "model.safetensors")
    assert want.keys() == got.keys()
    assert max(float((want[k] - got[k]).abs().max()) for k in want) <= 1e-6


def test_full_fine_tuning_trains_a_reward_model_that_eval_reads_back(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tuneforge.commands.run_loading import load_run_model, read_run_config

    data = write_pairs(tmp_path / "pairs.jsonl")
    result = run_tiny_fit(tmp_path / "run", overrides=[*reward_overrides(data), "adapter=full", "optim.lr=1e-3",
                                                       "trainer.max_steps=4"])
    assert result.metrics["tuned"]["reward_accuracy/pairwise_accuracy"] == 1.0
    folder = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "reward_model")
    saved = load_run_model(tmp_path / "run", read_run_config(tmp_path / "run"))  # model/ through the run's head
    assert type(saved).__name__ == "LlamaForSequenceClassification"
    for (name, a), (_, b) in zip(folder.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name
    from tuneforge.commands.export import auto_class_of, export_run  # export writes the same reward model

    exported = AutoModelForSequenceClassification.from_pretrained(export_run(tmp_path / "run", tmp_path / "out"))
    assert auto_class_of(tmp_path / "out") == "AutoModelForSequenceClassification"  # what export tells to load it with
    assert all(torch.equal(a, b) for a, b in zip(folder.state_dict().values(), exported.state_dict().values()))


# ---------------------------------------------------------------------------
# refusals, one line each
# ---------------------------------------------------------------------------


def test_default_evaluators_and_baselines_are_refused_naming_the_setting(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", overrides=["data=jsonl", f"data.path={data}", "loss=reward"])
    lines = str(info.value).splitlines()
    assert "evaluators=[perplexity] cannot score a sequence_classification model, but loss=reward trains a " \
           "sequence_classification model; set 'evaluators=[reward_accuracy]'" in lines
    assert "baselines=[few_shot,retrieval] prompt the base model as a causal LM, but loss=reward trains a " \
           "sequence_classification model; set 'baselines=[]'" in lines
    assert not (tmp_path / "run" / "model").exists()


def test_non_preference_data_is_refused_in_one_line(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(8)))
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", overrides=["data=jsonl", f"data.path={chat}", "loss=reward",
                                                  "evaluators=[reward_accuracy]", "baselines=[]"])
    assert str(info.value) == ("loss: reward trains on preference examples, but data=jsonl gives alpaca examples; "
                               "use preference data or another loss")


def test_bad_settings_are_refused_in_one_line(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", overrides=[*reward_overrides(data), "loss.center_rewards_coefficient=-1"])
    assert "\n" not in str(info.value) and "loss.center_rewards_coefficient" in str(info.value)
    # prefix tuning cannot be merged into a reward model folder: refused at the first batch
    from tuneforge.plugins.adapters import PrefixAdapterConfig, apply_prefix

    model, tokenizer = seq_cls_tiny()
    prefixed = apply_prefix(model, PrefixAdapterConfig(num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="^loss=reward writes a merged reward model, but the adapter is "
                                          "PREFIX_TUNING .*use adapter=lora, ia3, full or freeze$"):
        reward_model.build_reward(reward_model.RewardConfig())(prefixed, pad_batch(_token_pairs(tokenizer), tokenizer.pad_token_id))
    # data whose kinds the dataset could not tell: the first batch, and the base evaluation, say so
    plain = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6, 7]])}
    with pytest.raises(ConfigError, match=r"^loss=reward needs preference batches .*use preference data"):
        reward_model.build_reward(reward_model.RewardConfig())(model, plain)
    with pytest.raises(TuneforgeError, match=r"^row 3: evaluators=\[reward_accuracy\] needs preference pairs"):
        reward_model.evaluate_reward_accuracy(model, tokenizer, [{"input_ids": [5, 6], "source": "row 3"}],
                                              reward_model.RewardAccuracyConfig())
    # a causal LM (no scalar head) is not a reward model
    causal, _ = load_tiny(TinyModelConfig())
    with pytest.raises(TuneforgeError, match="one score per sequence"):
        reward_model.score_texts(causal, tokenizer, ["text"])


def test_plan_counts_the_reward_models_parameters(tmp_path):
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.planning.model_facts import model_facts

    overrides = ["model=tiny", *reward_overrides(write_pairs(tmp_path / "pairs.jsonl"))]
    plugins = load_plugins(overrides)  # first: it registers the config groups compose reads
    run = run_components(compose(overrides), plugins)
    facts = model_facts(run)
    model, _ = run.model.spec.load(run.model.config, head=run.loss.spec.model_head)
    model = run.adapter.spec.apply(model, run.adapter.config)
    assert facts.architecture == "LlamaForSequenceClassification"
    assert facts.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert facts.total_parameters == sum(p.numel() for p in model.parameters())

"""GRPO with rewards as plugins: the objective (by hand and against TRL), the rewards, prompt data, a tiny
run that reports the held-out reward, exact resume after SIGKILL, DDP, init_from and the one-line refusals."""

from __future__ import annotations

import json
import math
import signal
from types import SimpleNamespace

import pytest
import torch

from tuneforge.errors import ConfigError, PluginError
from tuneforge.host.components import Component
from tuneforge.plugins import grpo, rewards as builtin
from tuneforge.rewards import RewardContext, build_rewards
from tuneforge.testing import run_tiny_fit

from helpers import FIXTURES, run_cli, train_losses

WORDS = ["apple", "river", "stone", "cloud", "green", "table", "light", "music", "horse", "paper", "glass", "sugar"]


def write_prompts(folder, count=24):
    """Prompt-only records with a reference field."""
    path = folder / "prompts.jsonl"
    with open(path, "w") as handle:
        for i in range(count):
            word = WORDS[i % len(WORDS)]
            handle.write(json.dumps({"prompt": f"Write a number after {word}{i}:", "reference": str(i % 10)}) + "\n")
    return path


def grpo_overrides(data_path, *more, rewards=("rewards=[regex]", r"rewards.regex.pattern=\d")):
    return ["data=jsonl", f"data.path={data_path}", "loss=grpo", *rewards, "evaluators=[reward]", "evaluators.reward.max_new_tokens=8", "loss.max_new_tokens=6",
            "loss.group_size=2", "loader.batch_size=2", "trainer.max_steps=3", "baselines=[]", "data.val_size=3",
            "memorisation.sample=2", *more]


# --------------------------------------------------------------------------- the objective


def test_the_objective_on_a_case_computed_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    advantages = grpo.group_advantages(rewards, 2, scale=True, std_eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(0.5); group 2: all equal -> 0 (0/0 avoided by std_eps below)
    assert advantages[:2].tolist() == pytest.approx([0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)])
    assert grpo.group_advantages(rewards, 2, scale=True, std_eps=1e-4)[2:].tolist() == [0.0, 0.0]
    assert grpo.group_advantages(rewards, 2, scale=False).tolist() == [0.5, -0.5, 0.0, 0.0]

    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    old = torch.tensor([[math.log(0.25), math.log(0.2)]])  # ratios 2 and 1
    ref = torch.tensor([[math.log(0.4), math.log(0.1)]])
    for advantage, expected_policy in ((1.0, [-1.2, -1.0]),    # A > 0: ratio 2 clipped to 1.2
                                       (-1.0, [2.0, 1.0])):    # A < 0: min picks the unclipped 2
        losses = grpo.per_token_loss(logp, old, torch.tensor([advantage]), ref, epsilon=0.2, beta=0.1)
        kl = [0.4 / 0.5 - math.log(0.4 / 0.5) - 1, 0.1 / 0.2 - math.log(0.1 / 0.2) - 1]  # k3: r - log r - 1
        assert losses[0].tolist() == pytest.approx([p + 0.1 * k for p, k in zip(expected_policy, kl)], abs=1e-6)
    # an asymmetric clip range (DAPO): the upper bound is 1 + epsilon_high
    assert grpo.per_token_loss(logp, old, torch.tensor([1.0]), epsilon=0.2, epsilon_high=0.5)[0, 0] == \
        pytest.approx(-1.5)
    losses = torch.tensor([[1.0, 3.0, 100.0], [2.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert grpo.aggregate(losses, mask, "token") == (pytest.approx(2.0), 3)
    assert grpo.aggregate(losses, mask, "sequence") == (pytest.approx(2.0), 2)
    stops = grpo.completion_mask(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]]), [2])
    assert stops.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_one_step_on_the_objective_raises_the_likelihood_of_the_better_completions():
    """The gradient direction on a fixed batch: after one SGD step the completions with positive advantage
    are likelier and those with negative advantage less likely."""
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    torch.manual_seed(0)
    model, _ = load_tiny(TinyModelConfig())
    ids = torch.randint(3, 200, (4, 9))
    mask = torch.ones_like(ids)
    completions = ids[:, 5:]
    advantages = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)

    def sequence_logps():
        logits = model(input_ids=ids, attention_mask=mask).logits
        return grpo.token_logps(logits[:, 4:-1], completions)

    logps = sequence_logps()
    loss, _ = grpo.aggregate(grpo.per_token_loss(logps, logps.detach(), advantages), torch.ones_like(completions))
    loss.backward()
    before = logps.detach().sum(-1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= 0.5 * parameter.grad
        after = sequence_logps().sum(-1)
    change = after - before
    assert change[0] > 0 and change[3] > 0 and change[1] < 0 and change[2] < 0, change


def test_sampled_completions_are_decoded_as_the_evaluation_decodes_them(tmp_path, monkeypatch):
    """A completion cut by max_new_tokens inside a multi-byte character reaches the rewards without the
    partial character (U+FFFD), as the held-out evaluation decodes it; one that stopped keeps its text."""
    from tuneforge.losses import LossContext
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    (tmp_path / "seen_rewards.py").write_text("SEEN = []\ndef record(prompt, completion, record):\n"
                                              "    SEEN.append(completion)\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import seen_rewards

    torch.manual_seed(0)
    model, tokenizer = load_tiny(TinyModelConfig())
    cut = tokenizer.encode("ok é", add_special_tokens=False)[:-1]  # ends inside the two bytes of "é"
    stopped = tokenizer.encode("ok", add_special_tokens=False) + [tokenizer.eos_token_id]
    width = len(cut)
    assert len(stopped) <= width
    fixed = torch.tensor([cut, stopped + [tokenizer.pad_token_id] * (width - len(stopped))])
    monkeypatch.setattr(model, "generate", lambda input_ids, **_: torch.cat([input_ids, fixed[:input_ids.size(0)]], 1))
    rewards = _rewards(python=builtin.PythonRewardConfig(function="seen_rewards:record"))
    loss_fn = grpo.build_grpo(grpo.GRPOConfig(group_size=2, max_new_tokens=width, beta=0.0),
                              LossContext(tokenizer=tokenizer, load_model=None, rewards=rewards))
    prompt = tokenizer.encode("Say ok:", add_special_tokens=False)
    batch = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
             "labels": torch.full((1, len(prompt)), -100)}
    loss_fn(model, batch)
    assert seen_rewards.SEEN == ["ok", "ok"], seen_rewards.SEEN
    assert tokenizer.decode(cut).endswith("\ufffd")  # what the rewards saw before


def test_the_completion_logits_alone_equal_the_full_forwards():
    """grpo's policy and reference passes compute the LM head on the completion's positions alone
    (causal_lm_logits(last=)): the same values as the full logits cut to those positions."""
    from tuneforge.losses import causal_lm_logits
    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    torch.manual_seed(0)
    model, _ = load_tiny(TinyModelConfig())
    ids = torch.randint(3, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as grpo's prompts have
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = causal_lm_logits(model, ids, mask, position_ids=positions)
        last = causal_lm_logits(model, ids, mask, last=5, position_ids=positions)
    assert last.shape == (3, 5, full.size(-1))
    torch.testing.assert_close(last, full[:, -5:], atol=1e-5, rtol=1e-5)


def _trl_loss(loss_type, logps, old, ref, advantages, mask, beta, epsilon):
    """TRL's GRPOTrainer._compute_loss on given log-probabilities (its own code, with a stand-in for the
    trainer's state)."""
    from collections import defaultdict

    from trl.trainer.grpo_trainer import GRPOTrainer

    accelerator = SimpleNamespace(reduce=lambda t, reduction="sum": t, gather=lambda t: t,
                                  gather_for_metrics=lambda t: t, num_processes=1, sync_gradients=True)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type=loss_type,
        epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=accelerator)
    inputs = {"prompt_ids": torch.zeros(mask.size(0), 1, dtype=torch.long), "prompt_mask": torch.ones(mask.size(0), 1),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref}
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("aggregation, loss_type", [("token", "bnpo"), ("sequence", "grpo")])
def test_the_objective_equals_trls_on_a_fixed_batch(aggregation, loss_type):
    pytest.importorskip("trl")
    from trl.trainer.utils import nanstd

    generator = torch.Generator().manual_seed(3)
    rewards = torch.rand(8, generator=generator)
    ours = grpo.group_advantages(rewards, 4, scale=True, std_eps=1e-4)
    grouped = rewards.view(-1, 4)
    theirs = (rewards - grouped.mean(1).repeat_interleave(4)) / (nanstd(grouped, dim=1).repeat_interleave(4) + 1e-4)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)

    logps = torch.log(torch.rand(8, 5, generator=generator)).requires_grad_()
    old = (logps.detach() + 0.3 * torch.randn(8, 5, generator=generator))  # ratios away from 1: clipping acts
    ref = logps.detach() + 0.5 * torch.randn(8, 5, generator=generator)
    mask = (torch.rand(8, 5, generator=generator) > 0.3).long()
    mask[:, 0] = 1
    expected = _trl_loss(loss_type, logps, old, ref, ours, mask, beta=0.04, epsilon=0.2)
    got, _ = grpo.aggregate(grpo.per_token_loss(logps, old, ours, ref, epsilon=0.2, beta=0.04), mask, aggregation)
    assert abs(float(got.detach()) - float(expected.detach())) <= 1e-5
    grad_ours = torch.autograd.grad(got, logps)[0]
    grad_trl = torch.autograd.grad(_trl_loss(loss_type, logps, old, ref, ours, mask, 0.04, 0.2), logps)[0]
    torch.testing.assert_close(grad_ours, grad_trl, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- rewards


def _rewards(**selected):
    specs = {spec.name: spec for spec in builtin.tuneforge_rewards()}
    components = {key: Component(specs[key], config) for key, config in selected.items()}
    from tuneforge.plugins.models import build_tiny_tokenizer

    return build_rewards(components, RewardContext(tokenizer=build_tiny_tokenizer()))


def test_built_in_rewards_score_and_combine_with_weights(tmp_path):
    rewards = _rewards(regex=builtin.RegexRewardConfig(pattern=r"\d+ U\.S\.", mode="search", weight=2.0),
                       exact=builtin.ReferenceRewardConfig(field="answer"),
                       contains=builtin.ReferenceRewardConfig(field="answer", weight=0.5),
                       length=builtin.LengthRewardConfig(target=5, unit="chars", penalty=0.1))
    scores = rewards.score(["p", "p"], ["410 U.S. 113", "Paris"], [{"answer": "paris"}, {"answer": "PARIS"}])
    assert scores.each == {"regex": [1.0, 0.0], "exact": [0.0, 1.0], "contains": [0.0, 1.0],
                           "length": [pytest.approx(-0.7), 0.0]}
    assert scores.total == [pytest.approx(2.0 - 0.7), pytest.approx(1.0 + 0.5)]
    full = _rewards(regex=builtin.RegexRewardConfig(pattern=r"\d+", mode="fullmatch"))
    assert full.score(["", ""], ["123", "123a"], [{}, {}]).total == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"rewards.exact.field='answer': a record has no such key \(its keys: "
                                          r"prompt\)"):
        _rewards(exact=builtin.ReferenceRewardConfig(field="answer")).score(["p"], ["x"], [{"prompt": "p"}])


def test_the_similarity_reward_gives_partial_credit_that_ranks_a_nearly_right_answer_above_a_wrong_one():
    rewards = _rewards(similarity=builtin.ReferenceRewardConfig(field="reference"))
    reference = "Roe v. Wade, 410 U.S. 113 (1973)"
    completions = [reference, "Roe v. Wade, 410 U.S. 114 (1973)", "roe  v. wade, 410 u.s. 113 (1973) ",
                   "Marbury v. Madison, 5 U.S. 137 (1803)", ""]
    scores = rewards.score([""] * 5, completions, [{"reference": reference}] * 5).each["similarity"]
    assert scores[0] == scores[2] == 1.0  # case and whitespace normalised, as for exact
    assert scores[1] == pytest.approx(2 * 31 / 64)  # one character of 32 differs
    assert scores[1] > scores[3] > scores[4] == 0.0
    with pytest.raises(ConfigError, match=r"rewards.similarity.field='reference': a record has no such key"):
        rewards.score(["p"], ["x"], [{"prompt": "p"}])


def test_the_python_reward_and_its_bad_paths(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text("def shout(prompt, completion, record):\n"
                                           "    return float(completion.isupper())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in ("myrewards:shout", "myrewards.shout"):
        scored = _rewards(python=builtin.PythonRewardConfig(function=path)).score(["", ""], ["HEY", "hey"], [{}, {}])
        assert scored.total == [1.0, 0.0]
    with pytest.raises(ConfigError) as missing:
        _rewards(python=builtin.PythonRewardConfig(function="nosuchmodule_xyz:f"))
    assert str(missing.value).startswith("rewards.python.function=nosuchmodule_xyz:f: cannot import module "
                                         "'nosuchmodule_xyz' (ModuleNotFoundError")
    with pytest.raises(ConfigError, match="^rewards.python.function=myrewards:whisper: module 'myrewards' has no "
                                          "'whisper'$"):
        _rewards(python=builtin.PythonRewardConfig(function="myrewards:whisper"))


def test_a_reward_that_returns_a_non_number_is_one_line_naming_it(tmp_path, monkeypatch):
    (tmp_path / "badrewards.py").write_text("def nan(prompt, completion, record):\n    return float('nan')\n"
                                            "def text(prompt, completion, record):\n    return 'good'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for function, shown in (("badrewards:nan", "nan (float)"), ("badrewards:text", "'good' (str)")):
        rewards = _rewards(python=builtin.PythonRewardConfig(function=function))
        with pytest.raises(PluginError) as error:
            rewards.score(["p"], ["c"], [{}])
        line = str(error.value)
        assert "\n" not in line and "reward 'python' (rewards.python)" in line
        assert f"returned {shown} for completion 0" in line


def test_the_model_reward_reads_a_sequence_classification_checkpoint_or_a_run_directory(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    classifier = LlamaForSequenceClassification(config).eval()
    folder = tmp_path / "run" / builtin.REWARD_MODEL_FOLDER
    classifier.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    texts = (["prompt: ", "prompt: "], ["a fine answer", "no"])
    expected = []
    for text in (p + c for p, c in zip(*texts)):
        with torch.no_grad():
            expected.append(float(classifier(**tokenizer(text, add_special_tokens=False,
                                                         return_tensors="pt")).logits[0, 0]))
    for path in (tmp_path / "run", folder):  # a run directory, or the checkpoint folder itself
        scored = _rewards(model=builtin.ModelRewardConfig(path=str(path), batch_size=2)).score(*texts, [{}, {}])
        assert scored.total == pytest.approx(expected, abs=1e-5)
    assert expected[0] != pytest.approx(expected[1])
    with pytest.raises(ConfigError, match="^rewards.model.path=.*: no sequence-classification checkpoint there"):
        _rewards(model=builtin.ModelRewardConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"^rewards.model.label=3: the model at .* has 1 output\(s\); valid: 0..0$"):
        _rewards(model=builtin.ModelRewardConfig(path=str(folder), label=3))


# --------------------------------------------------------------------------- runs on the tiny model


def test_grpo_trains_on_prompt_only_data_and_reports_base_and_tuned_held_out_reward(tmp_path):
    data = write_prompts(tmp_path)
    result = run_tiny_fit(tmp_path / "run", overrides=grpo_overrides(data))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["data"]["formats"] == {"prompt": 24}
    for column in ("base", "tuned"):
        assert 0.0 <= metrics[column]["reward/mean"] <= 1.0
        assert metrics[column]["reward/mean"] == metrics[column]["reward/regex"]
    assert metrics["intervals"]["base"]["reward/mean"]["n"] == metrics["intervals"]["tuned"]["reward/mean"]["n"] == 3
    import csv

    with open(result.run_dir / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/reward")]
    assert len(rows) == 3  # the reward curve: one row per step
    for row in rows:
        assert 0.0 <= float(row["train/reward"]) <= 1.0 and float(row["train/reward_std"]) >= 0.0
        assert float(row["train/kl"]) >= 0.0 and 1 <= float(row["train/completion_length"]) <= 6
    predictions = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert {"base", "tuned"} <= set(predictions[0]) and "reward/mean" in predictions[0]["scores"]["tuned"]


def test_the_reward_rises_on_an_easy_reward(tmp_path, monkeypatch):
    """A reward for completions that start with a letter (about 1 in 5 tokens of the random model): 6 steps
    of 8 samples per prompt raise the sampled reward well above where it started (about 0.2 -> 1)."""
    (tmp_path / "easy.py").write_text("def letter(prompt, completion, record):\n"
                                      "    return float(completion[:1].isalpha())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_prompts(tmp_path, 8)
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=jsonl", f"data.path={data}", "data.val_size=0", "loss=grpo", "rewards=[python]",
        "rewards.python.function=easy:letter", "evaluators=[]", "baselines=[]", "loss.max_new_tokens=1",
        "loss.group_size=8", "loss.beta=0", "loader.batch_size=4", "trainer.max_steps=6", "optim.lr=0.05",
        "optim.scheduler=constant", "adapter=full", "memorisation.sample=0"])
    import csv

    with open(result.run_dir / "metrics.csv") as handle:
        curve = [float(row["train/reward"]) for row in csv.DictReader(handle) if row.get("train/reward")]
    assert len(curve) == 6
    assert sum(curve[-2:]) / 2 > sum(curve[:2]) / 2 + 0.3, curve


def test_prompt_data_with_a_loss_that_needs_answers_is_one_line(tmp_path):
    data = write_prompts(tmp_path)
    with pytest.raises(ConfigError, match=r"^loss: loss=cross_entropy cannot train on the prompt examples data=jsonl gives: they are prompts without an answer to learn .*; use loss=grpo$"):
        run_tiny_fit(tmp_path / "run", overrides=["data=jsonl", f"data.path={data}", "evaluators=[]", "baselines=[]"])


@pytest.mark.parametrize("overrides, line", [
    (["loss=grpo"], "loss=grpo trains on rewards, but the run selects none; select some with "
                    "rewards=[<name>,...]"),
    (["loss=grpo", "rewards=[regex]", "rewards.regex.pattern=a", "loss.group_size=1"],
     "loss.group_size: must be >= 2: advantages compare the completions of one prompt with each other"),
])
def test_bad_grpo_settings_are_one_line(tmp_path, overrides, line):
    result = run_cli(["train", "model=tiny", "data=jsonl", f"data.path={write_prompts(tmp_path)}",
                      f"run_dir={tmp_path / 'run'}", *overrides])
    assert result.returncode != 0
    errors = [text for text in result.stderr.splitlines() if text.startswith("tuneforge: error:")]
    assert len(errors) == 1 and line in errors[0], result.stderr[-2000:]


def test_config_groups_and_plugins_list_the_rewards_and_a_third_party_reward_is_selected_by_name(
        tmp_path, monkeypatch):
    listed = run_cli(["config", "groups"], site_dirs=["rewards"])
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:2] for line in listed.stdout.splitlines()]
    for name in ("regex", "exact", "contains", "similarity", "length", "model", "python", "vowels"):
        assert ["rewards", name] in rows
    monkeypatch.syspath_prepend(str(FIXTURES / "rewards"))
    result = run_tiny_fit(tmp_path / "run", overrides=[
        *grpo_overrides(write_prompts(tmp_path), "trainer.max_steps=1",
                        rewards=("rewards=[vowels]", "rewards.vowels.letters=aeiouy"))])
    assert 0.0 <= result.metrics["tuned"]["reward/vowels"] <= 1.0
    assert result.metrics["tuned"]["reward/mean"] == result.metrics["tuned"]["reward/vowels"]


def test_a_third_party_reward_returning_words_stops_the_run_in_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "rewards"))
    with pytest.raises(PluginError) as error:
        run_tiny_fit(tmp_path / "run", overrides=grpo_overrides(write_prompts(tmp_path), rewards=("rewards=[wordy]",)))
    line = str(error.value)
    assert line.startswith("plugin 'wordy' (distribution 'rewplug 0.1.0'): reward 'wordy' (rewards.wordy) returned ")
    assert line.endswith(" (str) for completion 0; a reward's score() must return one finite number per completion")
    assert "'high'" in line or "'low'" in line


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
def test_a_grpo_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    """The sampling draws from the process RNG, which the checkpoint saves: the resumed run samples, scores and
    trains as the uninterrupted one did."""
    from safetensors.torch import load_file

    data = write_prompts(tmp_path)
    run = ["train", "model=tiny", *grpo_overrides(data, "trainer.max_steps=4"), "checkpoint.every_n_steps=2",
           "callbacks=[batch_log]", "trainer.enable_progress_bar=false", "threads=1"]
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    done = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'a.log'}", f"run_dir={reference}"],
                   site_dirs=["steplog"])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'b.log'}", "callbacks.batch_log.kill_at_step=3",
                      f"run_dir={crashed}"], site_dirs=["steplog"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'b.log'}", f"run_dir={crashed}"],
                      site_dirs=["steplog"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((crashed / "status.json").read_text())["resumed_from"].endswith("step-00000002")
    a = load_file(str(reference / "model" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "model" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert train_losses(crashed) == pytest.approx(train_losses(reference), abs=1e-6)
    import csv

    def curve(folder):
        with open(folder / "metrics.csv") as handle:
            return [float(row["train/reward"]) for row in csv.DictReader(handle) if row.get("train/reward")]

    assert curve(crashed) == curve(reference) and len(curve(reference)) == 4


def test_grpo_on_two_ddp_processes(tmp_path):
    result = run_cli(["train", "model=tiny", *grpo_overrides(write_prompts(tmp_path), "trainer.max_steps=2"),
                      "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=1",
                      "trainer.enable_progress_bar=false", f"run_dir={tmp_path / 'run'}"],
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["setup"]["machine"]["devices"] == 2
    assert 0.0 <= metrics["tuned"]["reward/mean"] <= 1.0


# --------------------------------------------------------------------------- init_from


def test_init_from_starts_from_the_earlier_runs_adapter(tmp_path):
    common = ["evaluators=[perplexity]", "baselines=[]", "trainer.max_steps=2", "optim.lr=1e-2"]
    first = run_tiny_fit(tmp_path / "sft", overrides=common)
    second = run_tiny_fit(tmp_path / "second", overrides=[*common, f"init_from={tmp_path / 'sft'}"])
    # the second run's starting point ("base") is the first run's tuned model
    assert second.metrics["base"]["perplexity/loss"] == pytest.approx(first.metrics["tuned"]["perplexity/loss"],
                                                                      abs=1e-6)
    assert first.metrics["base"]["perplexity/loss"] != pytest.approx(first.metrics["tuned"]["perplexity/loss"])
    with pytest.raises(ConfigError, match=r"^init_from=.*sft: that run trained another model or adapter "
                                          r"\(adapter.r \(8 -> 4\)\)"):
        run_tiny_fit(tmp_path / "third", overrides=[*common, "adapter.r=4", f"init_from={tmp_path / 'sft'}"])
    with pytest.raises(ConfigError, match="init_from: .* holds no trained adapter"):
        run_tiny_fit(tmp_path / "fourth", overrides=[*common, f"init_from={tmp_path}"])


# --------------------------------------------------------------------------- the demo experiment


def test_the_grpo_demo_experiment_composes_and_its_pattern_accepts_every_reference(smollm2_placeholder):
    import re

    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.plugins.legal_citations import generate

    overrides = ["+experiment=legal_citations_grpo"]
    cfg = compose(overrides, load_plugins(overrides))
    assert cfg.loss.name == "grpo" and list(cfg.rewards) == ["regex", "similarity", "length"]
    assert cfg.rewards.similarity.field == "output" and "reward" in cfg.evaluators  # the content, not the shape alone
    assert cfg.data.n_rehearsal == 0 and list(cfg.baselines) == ["few_shot", "retrieval", "majority"]
    sft = compose(["+experiment=legal_citations"], load_plugins(["+experiment=legal_citations"]))
    assert dict(cfg.adapter) == dict(sft.adapter)  # init_from=<a demo SFT run> fits
    train, val = generate(100, 30, 0)
    assert all(re.fullmatch(cfg.rewards.regex.pattern, r["output"]) for r in train + val)
    for wrong in ("Garrison v. Fairbanks, 682 Federal Reporter 34 (9th Cir. 2003)",
                  "Garrison v. Fairbanks, 682 F.3d 34 (Ninth Circuit 2003)", "Garrison v. Fairbanks"):
        assert not re.fullmatch(cfg.rewards.regex.pattern, wrong)


def test_the_grpo_demo_pipeline_on_the_tiny_model(tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "+experiment=legal_citations_grpo", "model=tiny", "data.n_train=8", "data.n_val=4", "trainer.max_steps=1",
        "loss.group_size=2", "loss.max_new_tokens=4", "loader.batch_size=2", "evaluators.reward.max_new_tokens=4",
        "evaluators.exact_match.max_new_tokens=4", "baselines.few_shot.k=1", "baselines.retrieval.k=1",
        "threads=1"])
    metrics = result.metrics
    for column in ("base", "tuned"):
        assert "reward/regex" in metrics[column] and "reward/length" in metrics[column]
    assert {"few_shot", "retrieval"} <= set(metrics["baselines"])
    assert "reward/regex" in metrics["baselines"]["few_shot"] and "reward/regex" in metrics["intervals"]["tuned"]

"""ORPO, SimPO and KTO: the formulas on hand-computed cases, TRL's implementations as oracles (where TRL is
installed), KTO data layouts, and tiny-model runs that train, report held-out preference metrics and resume
exactly after an interruption."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import ConfigError, DataError
from tuneforge.losses import kto_loss, kto_reference_point, log1mexp, orpo_loss, simpo_loss
from tuneforge.plugins import adapters, losses
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.testing import run_tiny_fit

from helpers import train_losses

WORDS = ["forest", "maple", "garden", "stone", "cloud", "river", "candle", "planet", "silver", "window",
         "bridge", "orange", "pencil", "rabbit", "castle", "dragon", "meadow", "harbor", "lantern", "marble",
         "needle", "oyster", "pepper", "quartz"]


# ---------------------------------------------------------------------------
# the papers' formulas on cases computed by hand
# ---------------------------------------------------------------------------


def test_orpo_on_a_hand_computed_case():
    # p_chosen = 0.5 (odds 1), p_rejected = 0.25 (odds 1/3): log odds ratio = log 3
    chosen, rejected = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    loss, log_odds = orpo_loss(chosen, rejected, beta=0.1)
    assert float(log_odds) == pytest.approx(math.log(3), abs=1e-6)
    # NLL of the chosen answer (log 2) + 0.1 * -log sigmoid(log 3) = log 2 - 0.1 * log(3/4)
    assert float(loss) == pytest.approx(math.log(2) - 0.1 * math.log(0.75), abs=1e-6)
    assert float(log1mexp(torch.tensor(math.log(0.25)))) == pytest.approx(math.log(0.75), abs=1e-7)
    assert float(log1mexp(torch.tensor(-1e-4))) == pytest.approx(math.log(1 - math.exp(-1e-4)), rel=1e-5)


def test_simpo_on_a_hand_computed_case():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-2.0])
    # z = 2 * (-1 - -2) - 1 = 1
    assert float(simpo_loss(chosen, rejected, beta=2.0, gamma=1.0)) == pytest.approx(math.log1p(math.exp(-1)))
    smoothed = simpo_loss(chosen, rejected, beta=2.0, gamma=1.0, label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1)))


def test_kto_on_a_hand_computed_case():
    policy, reference = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    desirable = torch.tensor([True, False])
    # log ratios +1 (desirable) and -1 (undesirable) against a reference point of 0.5, beta 1
    losses_ = kto_loss(policy, reference, desirable, torch.tensor(0.5), beta=1.0, desirable_weight=1.0,
                       undesirable_weight=2.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses_.tolist() == pytest.approx([1 - sigmoid(0.5), 2 * (1 - sigmoid(1.5))])
    # the reference point: mean log ratio of the mismatched pairs, never below 0, not differentiated
    mismatched = torch.tensor([-1.0, -2.0], requires_grad=True)
    point = kto_reference_point(mismatched, torch.tensor([-2.0, -2.0]))
    assert float(point) == pytest.approx(0.5) and not point.requires_grad
    assert float(kto_reference_point(torch.tensor([-3.0, -3.0]), torch.tensor([-2.0, -2.0]))) == 0.0


def _reference_point_on_rank(rank, address, results):
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=2)
    try:
        # rank 0 estimates 1.5, rank 1 -0.5: the point is their mean (0.5), clamped only after averaging
        mismatched = torch.tensor([-0.5, -0.5]) if rank == 0 else torch.tensor([-2.5, -2.5])
        together = kto_reference_point(mismatched, torch.tensor([-2.0, -2.0]), across_processes=True)
        alone = kto_reference_point(mismatched, torch.tensor([-2.0, -2.0]))
        results[rank] = (float(together), float(alone))
    finally:
        torch.distributed.destroy_process_group()


def test_kto_reference_point_is_the_mean_of_every_processs_estimate():
    """Under DDP every rank trains against one reference point, the mean of the ranks' estimates (TRL
    gathers it the same way); without across_processes each rank keeps its own."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_reference_point_on_rank, args=(f"tcp://127.0.0.1:{port}", results), nprocs=2)
    assert results[0] == pytest.approx((0.5, 1.5)) and results[1] == pytest.approx((0.5, 0.0))


def test_bad_settings_are_refused_naming_the_key_and_the_valid_values():
    with pytest.raises(ConfigError, match="beta: must be > 0"):
        losses.SimPOConfig(beta=0)
    with pytest.raises(ConfigError, match=r"label_smoothing: must be .*0.*0\.5"):
        losses.SimPOConfig(label_smoothing=0.5)
    with pytest.raises(ConfigError, match="undesirable_weight: must be > 0"):
        losses.KTOConfig(undesirable_weight=0)
    with pytest.raises(ConfigError, match="beta: must be >= 0"):
        losses.ORPOConfig(beta=-1)


# ---------------------------------------------------------------------------
# TRL's implementations as oracles
# ---------------------------------------------------------------------------


def _fixed_logps():
    generator = torch.Generator().manual_seed(3)
    chosen = -torch.rand(6, generator=generator, dtype=torch.float64).float() * 3 - 0.05
    rejected = -torch.rand(6, generator=generator, dtype=torch.float64).float() * 3 - 0.05
    return chosen, rejected


class _TrainerSelf:
    """The attributes TRL's loss methods read from their trainer (``beta`` ..., ``accelerator.device``)."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)
        self.accelerator = type("Accelerator", (), {"device": torch.device("cpu")})()


def test_orpo_equals_trl():
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = _fixed_logps()
    beta = 0.25
    trl_terms, trl_chosen_reward, trl_rejected_reward, _, trl_log_odds = ORPOTrainer.odds_ratio_loss(
        _TrainerSelf(beta=beta), chosen, rejected)
    ours, log_odds = orpo_loss(chosen, rejected, beta=beta)
    assert float(log_odds.mean()) == pytest.approx(float(trl_log_odds), abs=1e-5)
    # TRL: loss = NLL(chosen) - mean(beta * log sigmoid(log odds)); the NLL of equal-length answers is -mean(avg logp)
    trl_total = -chosen.mean() - trl_terms.mean()
    assert float(ours.mean()) == pytest.approx(float(trl_total), abs=1e-5)
    torch.testing.assert_close(ours + chosen, -trl_terms, atol=1e-5, rtol=0)
    torch.testing.assert_close(beta * chosen, trl_chosen_reward, atol=1e-6, rtol=0)
    torch.testing.assert_close(beta * rejected, trl_rejected_reward, atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_equals_trl(label_smoothing):
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = _fixed_logps()
    trainer = _TrainerSelf(beta=2.5, simpo_gamma=1.25, label_smoothing=label_smoothing, loss_type="simpo",
                           alpha=0.0)
    trl_losses, _, _ = CPOTrainer.cpo_loss(trainer, chosen, rejected)
    ours = simpo_loss(chosen, rejected, beta=2.5, gamma=1.25, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours, trl_losses.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed, kl_clamped", [(0, False), (5, True)])
def test_kto_equals_trl(seed, kl_clamped):
    """The same batch (TRL tokenizes and collates it, and builds its mismatched pairs), the same LoRA policy and
    the same reference (the adapter disabled): tuneforge's kto loss equals TRL's KTOTrainer loss."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    torch.manual_seed(0)  # the LoRA initialisation too: not whatever the tests before left in the generator
    base, tokenizer = load_tiny(TinyModelConfig())
    model = adapters.apply_lora(base, adapters.LoraAdapterConfig(lora_dropout=0.0))
    config = losses.KTOConfig(beta=0.3, desirable_weight=1.0, undesirable_weight=1.5)
    rows = [{"prompt": f"Word: {word}\nVerdict: ", "completion": (f"yes, {word}" if i % 3 else f"no, {word}"),
             "label": bool(i % 3)} for i, word in enumerate(WORDS[:6])]
    args = KTOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(rows), beta=config.beta,
                     desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
                     report_to=[], use_cpu=True, disable_dropout=True)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    # TRL's reference is a copy of the adapter as it starts ("ref", B = 0: the base model), tuneforge's the base
    # with the adapter disabled; now move the trained adapter away from it
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_" in name and ".default." in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    # in the dataset's order (the train loader would shuffle, changing which answers the mismatched pairs get)
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100),
                "kto_label": torch.as_tensor(batch["label"]).long()[:, None]}
        output = losses.build_kto(config)(trainer.model, ours)
    assert (float(output.metrics["kl"]) == 0) == kl_clamped  # the reference point at 0 (clamped) or in play
    assert float(output.loss) == pytest.approx(trl_loss, abs=1e-5)


def test_kto_reference_is_the_adapter_disabled_base_and_starts_at_half():
    model = adapters.apply_lora(load_tiny(TinyModelConfig())[0], adapters.LoraAdapterConfig(lora_dropout=0.0))
    model.eval()
    from tuneforge.data import pad_batch
    from tuneforge.plugins.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    examples = []
    for i, word in enumerate(WORDS[:4]):
        prompt = tokenizer(f"Word: {word}\nVerdict: ", add_special_tokens=False)["input_ids"]
        answer = tokenizer(f"yes, {word}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer,
                         "kto_label": [i % 2]})
    output = losses.build_kto(losses.KTOConfig(desirable_weight=1.0, undesirable_weight=3.0))(
        model, pad_batch(examples, tokenizer.pad_token_id))
    # policy = reference: every log ratio and the reference point are 0, each loss is weight * (1 - sigmoid(0))
    assert float(output.loss) == pytest.approx((2 * 0.5 + 2 * 1.5) / 4, abs=1e-6)
    assert float(output.metrics["kl"]) == 0.0 and output.num_tokens == 4
    with pytest.raises(ConfigError, match="loss=kto needs kto batches with input_ids, labels, kto_label"):
        losses.build_kto(losses.KTOConfig())(model, {"input_ids": torch.ones(1, 3, dtype=torch.long)})


# ---------------------------------------------------------------------------
# tiny-model runs: train, held-out preference metrics, exact resume
# ---------------------------------------------------------------------------


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def lf_preference_rows():
    """LLaMA-Factory's preference layouts: alpaca (instruction + chosen/rejected strings) and sharegpt
    (conversations + chosen/rejected message objects), alternating."""
    rows = []
    for i, word in enumerate(WORDS):
        if i % 2:
            rows.append({"instruction": f"Word: {word}", "chosen": f"yes, {word}", "rejected": f"no, {word}"})
        else:
            rows.append({"conversations": [{"from": "human", "value": f"Word: {word}"}],
                         "chosen": {"from": "gpt", "value": f"yes, {word}"},
                         "rejected": {"from": "gpt", "value": f"no, {word}"}})
    return rows


def lf_kto_rows():
    """LLaMA-Factory's KTO layouts: sharegpt messages with ``kto_tag`` (and ``label``, as its kto_en_demo)."""
    rows = []
    for i, word in enumerate(WORDS):
        good = i % 2 == 0
        conversation = [{"from": "human", "value": f"Word: {word}"},
                        {"from": "gpt", "value": f"{'yes' if good else 'no'}, {word}"}]
        rows.append({"conversations": conversation, "kto_tag": good})
    return rows


def trl_kto_rows():
    """TRL's unpaired preference layout: prompt, completion, label."""
    return [{"prompt": f"Word: {word}", "completion": f"{'yes' if i % 2 == 0 else 'no'}, {word}",
             "label": i % 2 == 0} for i, word in enumerate(WORDS)]


LAYOUTS = {"orpo": (lf_preference_rows, ["loss=orpo", "loss.beta=0.5"]),
           "simpo": (lf_preference_rows, ["loss=simpo", "loss.beta=2.0", "loss.gamma=0.5"]),
           "kto_llamafactory": (lf_kto_rows, ["loss=kto", "loss.beta=0.5"]),
           "kto_trl": (trl_kto_rows, ["loss=kto", "loss.beta=0.5"])}
#: 20 train / 4 held-out examples, batches of 4: 5 micro-batches an epoch, validated at its end
RUN = ["data.val_size=4", "data.cache=false", "data.chat_template=chatml", "evaluators=[]", "baselines=[]",
       "adapter=lora", "adapter.lora_dropout=0.0", "optim.lr=2e-2", "optim.scheduler=constant",
       "trainer.max_steps=6", "checkpoint.every_n_steps=2",
       "quality.min_train_examples=2", "memorisation.sample=0"]


def _overrides(tmp_path, name):
    rows, loss = LAYOUTS[name]
    return [f"data.path={_write(tmp_path / 'data.jsonl', rows())}", *loss, *RUN]


@pytest.mark.parametrize("name", LAYOUTS)
def test_preference_loss_trains_reports_held_out_metrics_and_resumes_exactly(tmp_path, monkeypatch, name):
    overrides = _overrides(tmp_path, name)
    reference = run_tiny_fit(tmp_path / "reference", overrides=overrides)
    losses_ = train_losses(tmp_path / "reference")
    assert len(losses_) == 6 and sum(losses_[-2:]) < sum(losses_[:2]), losses_
    held_out = json.loads((tmp_path / "reference" / "metrics.json").read_text())["train"]
    assert {"val/loss", "val/reward_margin", "val/reward_accuracy"} <= set(held_out), sorted(held_out)
    assert held_out["val/reward_margin"] > 0 and held_out["val/reward_accuracy"] > 0.5, held_out
    report = (tmp_path / "reference" / "report.md").read_text()
    assert "Held-out training-objective metrics (last validation)" in report and "| reward_accuracy |" in report
    if name.startswith("kto"):
        assert {"val/reward_desirable", "val/reward_undesirable", "val/kl"} <= set(held_out)
        assert reference.metrics["data"]["formats"] == {"kto": 24}
    else:
        assert {"val/reward_chosen", "val/reward_rejected"} <= set(held_out)
        assert reference.metrics["data"]["formats"] == {"preference": 24}

    # interrupted (SIGTERM) in step 4: a checkpoint there (or at step 2), then the same command resumes it
    from tuneforge.training import module as module_file
    from tuneforge.training.run_stop import RunInterrupted

    original = module_file.FineTuneModule.on_before_optimizer_step
    fired = []

    def stop_once(self, optimizer):
        original(self, optimizer)
        if self.global_step == 3 and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(module_file.FineTuneModule, "on_before_optimizer_step", stop_once)
    with pytest.raises(RunInterrupted):
        run_tiny_fit(tmp_path / "crashed", overrides=overrides)
    assert fired
    run_tiny_fit(tmp_path / "crashed", overrides=overrides)
    status = json.loads((tmp_path / "crashed" / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"]
    a = load_file(str(tmp_path / "reference" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert train_losses(tmp_path / "crashed") == pytest.approx(losses_, abs=1e-5)


def test_the_preference_evaluator_compares_base_and_tuned_on_held_out_pairs(tmp_path):
    """evaluators=[preference]: base and tuned get the same held-out measure, with intervals; on KTO data
    (no pairs) it is one line naming the evaluator."""
    overrides = [arg if not arg.startswith("evaluators=") else "evaluators=[preference]"
                 for arg in _overrides(tmp_path, "simpo")]
    result = run_tiny_fit(tmp_path / "run", overrides=overrides)
    base, tuned = result.metrics["base"], result.metrics["tuned"]
    assert tuned["preference/logp_margin"] > base["preference/logp_margin"] + 0.1, (base, tuned)
    assert tuned["preference/accuracy"] >= base["preference/accuracy"]
    assert 0 <= tuned["preference/accuracy"] <= 1
    change = result.metrics["changes"]["change"]["preference/logp_margin"]
    assert change["low"] <= change["value"] <= change["high"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "preference/accuracy" in report

    kto = [arg if not arg.startswith("evaluators=") else "evaluators=[preference]"
           for arg in _overrides(tmp_path, "kto_trl")]
    with pytest.raises(DataError) as error:
        run_tiny_fit(tmp_path / "kto", overrides=kto)
    assert "\n" not in str(error.value) and "evaluators=[preference] needs preference pairs" in str(error.value)


# ---------------------------------------------------------------------------
# KTO data: the layouts, labels, and what other losses do with it
# ---------------------------------------------------------------------------


def test_kto_data_without_a_label_is_refused_naming_file_line_and_key(tmp_path):
    rows = trl_kto_rows()
    del rows[2]["label"]
    path = _write(tmp_path / "kto.jsonl", rows)
    with pytest.raises(DataError) as info:
        run_tiny_fit(tmp_path / "run", overrides=[f"data.path={path}", "loss=kto", *RUN])
    # without its label, TRL's prompt + completion reads as prompt_completion (SFT) data, named as a KTO record
    # without its mark; data.format=kto says "KTO record has no 'label'" (test_data_other_projects.py)
    assert str(info.value) == (f"{path}:3: KTO record without its mark: 'label' (true/false) is missing (first KTO "
                               f"record of the dataset: {path}:1)")
    rows = lf_kto_rows()
    del rows[1]["kto_tag"]
    path = _write(tmp_path / "lf.jsonl", rows)
    with pytest.raises(DataError) as info:
        run_tiny_fit(tmp_path / "run2", overrides=[f"data.path={path}", "loss=kto", *RUN])
    assert str(info.value) == (f"{path}:2: KTO record without its mark: 'kto_tag' (true/false) is missing (first KTO "
                               f"record of the dataset: {path}:1)")


def test_sft_on_kto_data_is_refused_in_one_line_naming_loss_kto(tmp_path):
    path = _write(tmp_path / "kto.jsonl", lf_kto_rows())
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", overrides=[f"data.path={path}", "loss=cross_entropy"])
    message = str(info.value)
    assert "loss=cross_entropy cannot train on the kto examples data=jsonl gives" in message, message
    assert "would also train the model to write the undesirable ones; use loss=kto" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="kto trains on kto examples, but data=jsonl gives preference examples"):
        run_tiny_fit(tmp_path / "run2", overrides=[f"data.path={_write(tmp_path / 'p.jsonl', lf_preference_rows())}",
                                                    "loss=kto"])


class KtoRecordsPlugin:
    """A dataset that cannot tell its example kinds before loading (no ``example_kinds``): KTO records."""

    @staticmethod
    def tuneforge_datasets():
        from dataclasses import dataclass as config_class

        import tuneforge
        from tuneforge.data import DataConfig, Record, prepare_splits

        @config_class
        class KtoRecordsConfig(DataConfig):
            """KTO records built in memory."""

        def load(config, tokenizer):
            records = [Record(row, f"memory:{i}") for i, row in enumerate(trl_kto_rows(), 1)]
            return prepare_splits(records, tokenizer, config, origin="memory")

        return [tuneforge.DatasetSpec("kto_records", KtoRecordsConfig, load=load)]


def test_sft_on_kto_data_found_only_when_loading_is_refused_after_the_data_loads(tmp_path):
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", plugins=[KtoRecordsPlugin()], overrides=[
            "data=kto_records", "data.chat_template=chatml", "data.cache=false", "loss=cross_entropy"])
    assert str(info.value) == ("loss: loss=cross_entropy cannot train on the kto examples data=kto_records gives: "
                               "its answers are marked desirable or undesirable (label/kto_tag true/false), and a "
                               "loss that does not read the mark, such as SFT, would also train the model to write "
                               "the undesirable ones; use loss=kto")

"""`tuneforge plan`: the memory estimate made from a model's config alone (docs/memory.md).

The estimate is checked against the real models (trainable counts of the tiny model with its adapter
really applied), against itself (batch size, strategies), and end to end: the table on the command
line, the changes it suggests when a run does not fit (each one fits when planned again), the
one-line errors, and the warning `tuneforge train` logs.
"""

import logging
import shutil
import time
from pathlib import Path

import pytest

from helpers import run_cli
from tuneforge.host.components import run_components
from tuneforge.host.compose import compose, load_plugins
from tuneforge.planning.memory import Workload, estimate
from tuneforge.planning.model_facts import model_facts
from tuneforge.planning.plan import plan_run
from tuneforge.planning.sizes import parse_memory

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "sample.jsonl"
LLAMA_8B = ROOT / "examples" / "configs" / "llama-3-8b"
TINY = ["model=tiny", f"data.path={SAMPLE}", "baselines=[]"]
GiB = 2 ** 30


def planned_run(*overrides):
    plugins = load_plugins(list(overrides))
    return run_components(compose(list(overrides)), plugins), plugins


def replanner(overrides, plugins):
    return lambda extra: run_components(compose([*overrides, *extra]), plugins)


@pytest.mark.parametrize("adapter", ["lora", "full", "freeze"])
def test_trainable_counts_equal_the_real_models(adapter):
    run, _ = planned_run(*TINY, f"adapter={adapter}")
    facts = model_facts(run)
    model, _ = run.model.spec.load(run.model.config)
    model = run.adapter.spec.apply(model, run.adapter.config)
    parameters = list(model.parameters())
    assert facts.trainable_parameters == sum(p.numel() for p in parameters if p.requires_grad)
    assert facts.total_parameters == sum(p.numel() for p in parameters)
    assert facts.exact and facts.weight_bytes == 4
    if adapter == "full":
        assert facts.trainable_parameters == facts.total_parameters
    else:
        assert 0 < facts.trainable_parameters < facts.total_parameters


def test_a_config_only_folder_is_planned_without_weights_in_seconds(tmp_path):
    folder = tmp_path / "llama"
    shutil.copytree(LLAMA_8B, folder)
    assert not [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")]
    run, _ = planned_run("model=hf", f"model.path={folder}", "model.dtype=bfloat16", f"data.path={SAMPLE}")
    plan = plan_run(run, memory=80 * GiB)
    facts = plan.facts
    # Llama-3-8B: 8.03B parameters; LoRA r=8 on all 7 linear layers of 32 blocks
    assert facts.base_parameters == 8_030_261_248
    assert facts.trainable_parameters == 32 * 8 * (4096 + 4096 + 4096 + 1024 + 4096 + 1024 + 4096 + 4096
                                                   + 2 * (4096 + 14336) + 14336 + 4096)
    assert facts.weight_bytes == 2
    assert plan.estimate.parts["weights"] == facts.frozen_parameters * 2

    tiny, _ = planned_run(*TINY)
    started = time.perf_counter()
    plan = plan_run(planned_run(*TINY, "adapter.r=4")[0])  # a new adapter config: nothing cached
    assert time.perf_counter() - started < 5
    assert plan.fits and plan.estimate.total > 0


def test_doubling_the_batch_doubles_the_activations_only():
    run, _ = planned_run(*TINY)
    facts = model_facts(run)
    one = estimate(facts, Workload(batch_size=4, sequence_length=256))
    two = estimate(facts, Workload(batch_size=8, sequence_length=256))
    assert two.parts["activations"] == pytest.approx(2 * one.parts["activations"], rel=1e-6)
    for name in ("weights", "trainable weights", "gradients", "optimizer state", "runtime"):
        assert two.parts[name] == one.parts[name]
    checkpointed = estimate(facts, Workload(batch_size=8, sequence_length=256, checkpointing=True))
    assert checkpointed.parts["activations"] < two.parts["activations"]


@pytest.mark.parametrize("strategy, sharded", [
    ("ddp", ()),
    ("fsdp", ("weights", "trainable weights", "gradients", "optimizer state")),
    ("deepspeed_stage_2", ("gradients", "optimizer state")),
    ("deepspeed_stage_3", ("weights", "trainable weights", "gradients", "optimizer state")),
])
def test_strategies_shard_what_they_shard(strategy, sharded):
    run, _ = planned_run(*TINY, "adapter=full")
    facts = model_facts(run)
    alone = estimate(facts, Workload(batch_size=2, sequence_length=64, strategy=strategy, world_size=1))
    four = estimate(facts, Workload(batch_size=2, sequence_length=64, strategy=strategy, world_size=4))
    for name, size in alone.parts.items():
        expected = size / 4 if name in sharded else size
        assert four.parts[name] == pytest.approx(expected, abs=1), name


def test_quantized_weights_take_their_bits():
    run, _ = planned_run(*TINY)
    facts = model_facts(run)
    plain = estimate(facts, Workload(batch_size=1, sequence_length=8)).parts["weights"]
    nf4 = estimate(facts, Workload(batch_size=1, sequence_length=8, quantization="nf4")).parts["weights"]
    double = estimate(facts, Workload(batch_size=1, sequence_length=8, quantization="nf4",
                                      double_quant=True)).parts["weights"]
    int8 = estimate(facts, Workload(batch_size=1, sequence_length=8, quantization="int8")).parts["weights"]
    rest = (facts.frozen_parameters - facts.linear_weights) * 4
    assert nf4 == int(facts.linear_weights * (0.5 + 4 / 64) + rest)
    assert double < nf4 < int8 < plain
    assert int8 == facts.linear_weights + 4 * facts.linear_rows + rest


def test_a_run_that_cannot_fit_gets_changes_that_each_fit_when_planned_again():
    overrides = [*TINY, "loader.batch_size=64", "data.max_length=1024"]
    run, plugins = planned_run(*overrides)
    needed = plan_run(run, memory=64 * GiB).estimate.total
    memory = int(needed * 0.6)
    plan = plan_run(run, memory=memory, replan=replanner(overrides, plugins))
    assert not plan.fits
    assert plan.suggestions
    for extra, changed in plan.suggestions:
        again = plan_run(run_components(compose([*overrides, *extra]), plugins), memory=memory)
        assert again.fits and again.estimate.total == changed.estimate.total, extra
    first = plan.suggestions[0][0]
    assert first[0].startswith("loader.batch_size=") and first[1].startswith("trainer.accumulate_grad_batches=")
    batch, accumulation = (int(o.split("=")[1]) for o in first)
    assert batch * accumulation >= 64


def test_the_plan_command_prints_the_table_and_exits_0():
    completed = run_cli(["plan", *TINY, "loader.batch_size=4"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    for part in ("weights", "trainable weights", "gradients", "optimizer state", "activations", "runtime",
                 "total", "device", "fits:"):
        assert part in out, out
    assert "batch 4 x 1024 tokens" in out


def test_the_plan_command_for_a_gpu_it_does_not_have_suggests_overrides():
    completed = run_cli(["plan", "model=hf", f"model.path={LLAMA_8B}", "model.dtype=bfloat16", f"data.path={SAMPLE}",
                         "adapter=full", "trainer.accelerator=gpu", "trainer.precision=bf16-true",
                         "--memory", "24GiB"])
    assert completed.returncode == 0, completed.stderr[-2000:]  # the plan is the answer
    assert "does not fit" in completed.stdout and "24.00 GiB" in completed.stdout
    checked = run_cli(["plan", "model=hf", f"model.path={LLAMA_8B}", "model.dtype=bfloat16", f"data.path={SAMPLE}",
                       "adapter=full", "trainer.accelerator=gpu", "trainer.precision=bf16-true",
                       "--memory", "24GiB", "--check"])
    assert checked.returncode == 1 and "does not fit" in checked.stdout, checked.stderr[-2000:]


@pytest.mark.parametrize("args, expected", [
    (["--memory", "lots"], "--memory='lots' is not a memory size"),
    (["--memory=0GiB"], "--memory='0GiB' is not a memory size"),
    (["--memory"], "--memory needs a size"),
    (["--gpus", "2"], "unknown option '--gpus'; valid: --memory SIZE, --check, --help"),
])
def test_a_bad_memory_argument_is_one_line_and_exit_2(args, expected, capsys):
    from tuneforge.commands.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "model=tiny", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_an_adapter_that_does_not_fit_the_model_is_refused_by_plan_as_by_train(capsys):
    """Target modules that match nothing are the adapter's ModelError, the line `tuneforge train` gives; not a
    meta-device note with every parameter counted as trainable and "fits"."""
    from tuneforge.commands.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *TINY, "adapter.target_modules=[attn]"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: adapter.target_modules: ['attn'] match no "
                                                   "module of the model; valid: 'all-linear' or names among"), lines


def test_an_adapter_that_needs_real_weights_is_still_planned_as_an_upper_bound():
    run, _ = planned_run(*TINY, "adapter.init_lora_weights=pissa")  # an SVD of the weights: not on the meta device
    facts = model_facts(run)
    assert not facts.exact and "cannot be applied on the meta device" in facts.note
    assert facts.trainable_parameters == facts.total_parameters


def test_memory_sizes_parse():
    assert parse_memory("24GiB") == parse_memory("24GB") == parse_memory("24 g") == 24 * GiB
    assert parse_memory("512MiB") == 512 * 2 ** 20
    assert parse_memory("1.5TiB") == int(1.5 * 2 ** 40)
    assert parse_memory("1000") == 1000


def test_train_warns_when_the_run_will_not_fit_and_still_trains(tmp_path, caplog):
    from tuneforge.testing import run_tiny_fit

    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        result = run_tiny_fit(tmp_path, overrides=["loader.batch_size=65536", "data.max_length=65536",
                                                   "trainer.max_steps=1", "baselines=[]", "memorisation.sample=0"])
    assert result.metrics["steps"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
    assert len(warnings) == 1 and "tuneforge plan" in warnings[0], warnings


def test_train_does_not_warn_when_it_fits(tmp_path, caplog):
    from tuneforge.testing import run_tiny_fit

    with caplog.at_level(logging.DEBUG, logger="tuneforge"):
        run_tiny_fit(tmp_path, overrides=["trainer.max_steps=1", "baselines=[]", "memorisation.sample=0"])
    assert not [r for r in caplog.records if r.getMessage().startswith("memory:")]
    assert not [r for r in caplog.records if "memory estimate skipped" in r.getMessage()]


@pytest.mark.slow
def test_smollm2_is_planned_from_its_gguf_metadata_in_seconds():
    """The real model (``bash .ci/fetch-smollm2``): its GGUF file's metadata only, no tensor dequantized."""
    from tuneforge.plugins.models import HFModelConfig, hf_model_config

    overrides = ("model=smollm2", f"data.path={SAMPLE}", "data.max_length=256", "baselines=[]")
    plan_run(planned_run(*overrides, "adapter.r=4")[0])  # the libraries imported once (torch, peft, gguf ...)
    started = time.perf_counter()
    run, _ = planned_run(*overrides)
    plan = plan_run(run)
    assert time.perf_counter() - started < 15  # about 3 s unloaded: composing, 30 layers built, LoRA on 210 layers
    facts = plan.facts
    assert (facts.hidden_size, facts.num_layers, facts.num_heads, facts.num_kv_heads) == (576, 30, 9, 3)
    assert facts.base_parameters == 134_515_008 and facts.weight_bytes == 4  # tied embeddings: counted once
    assert plan.fits
    assert hf_model_config(HFModelConfig(path=run.model.config.path)).vocab_size == 49152


def test_a_gguf_files_architecture_is_read_from_its_header_as_transformers_reads_it(tmp_path):
    """The quick header reader of the hf source (the vocabulary skipped) gives transformers' config."""
    import numpy as np
    from gguf import GGUFWriter
    from transformers import AutoConfig

    from tuneforge.plugins.models import _gguf_architecture

    path = tmp_path / "small.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("small")
    for add, number in ((writer.add_context_length, 256), (writer.add_embedding_length, 64),
                        (writer.add_block_count, 2), (writer.add_feed_forward_length, 128),
                        (writer.add_head_count, 4), (writer.add_head_count_kv, 2), (writer.add_rope_dimension_count, 16)):
        add(number)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_token_merges(["t 1", "t 2"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", np.zeros((300, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    quick = _gguf_architecture(path).to_dict()
    full = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).to_dict()
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
            "tie_word_embeddings", "bos_token_id", "eos_token_id")
    assert {key: quick.get(key) for key in keys} == {key: full.get(key) for key in keys}
    assert quick["vocab_size"] == 300 and quick["tie_word_embeddings"] is True


def test_the_default_loss_is_planned_as_it_computes_its_logits_in_chunks():
    """At Llama-3-8B's 128k vocabulary the default loss never holds a step's full logits (it runs the output
    layer in chunks, tuneforge.linear_cross_entropy): the plan counts what LossSpec.logits_bytes says, and
    a loss that declares nothing (dpo) still gets every position's full logits."""
    import dataclasses

    from tuneforge.losses import LogitsWork, cross_entropy_logits_bytes, full_logits_bytes
    from tuneforge.planning.plan import workload

    overrides = [*TINY[1:], "model=hf", f"model.path={LLAMA_8B}", "model.dtype=bfloat16", "trainer.accelerator=gpu",
                 "trainer.precision=bf16-mixed", "loader.batch_size=1", "data.max_length=2048"]
    run, _ = planned_run(*overrides)
    plan = plan_run(run, memory=24 * GiB)
    work = LogitsWork(2048, 128256, 4096, 2, "gpu", weight_bytes=2)
    assert plan.work.logits_bytes == pytest.approx(cross_entropy_logits_bytes(work))
    assert "loss=cross_entropy" in plan.estimate.details["activations"]
    full = estimate(plan.facts, dataclasses.replace(plan.work, logits_bytes=None))
    saved = full.parts["activations"] - plan.estimate.parts["activations"]
    assert saved == pytest.approx(full_logits_bytes(work) - cross_entropy_logits_bytes(work), rel=1e-6)
    assert saved > 2 * GiB  # 3.4 GiB of logits counted before, 0.5 GiB of one chunk and hidden states now
    chunked = plan_run(planned_run(*overrides, "loss=chunked_cross_entropy", "loss.chunk_size=512")[0],
                       memory=24 * GiB)
    assert chunked.estimate.parts["activations"] < full.parts["activations"]
    preference = ROOT / "plugins" / "data" / "preference.jsonl"
    dpo, _ = planned_run(*overrides, "loss=dpo", f"data.path={preference}")
    assert workload(dpo, plan.device).logits_bytes is None


def test_a_loss_whose_logits_estimate_breaks_is_planned_with_full_logits(caplog):
    """A third-party LossSpec.logits_bytes that raises or returns nonsense never stops a plan: it is logged
    and the plan counts full logits (the safe side)."""
    from types import SimpleNamespace

    from tuneforge.losses import LogitsWork
    from tuneforge.planning.plan import loss_logits

    work = LogitsWork(512, 1000, 64, 4)

    def broken(config, work):
        raise KeyError("chunk")

    for measure in (broken, lambda config, work: float("nan"), lambda config, work: -1):
        run = SimpleNamespace(loss=SimpleNamespace(spec=SimpleNamespace(name="acme_loss", logits_bytes=measure),
                                                   config=None))
        with caplog.at_level(logging.WARNING, logger="tuneforge"):
            assert loss_logits(run, work) == (None, "")
    assert caplog.text.count("loss 'acme_loss': logits_bytes") == 3 and "KeyError" in caplog.text


def test_autocast_activations_are_planned_at_the_measured_share_of_float32():
    """Under bf16-mixed the norms' outputs and the residual stream stay float32: the layers' activations are
    planned at 2.5 bytes an element (measured 2.46 on SmolLM2, docs/memory.md), not 2; bf16-true at 2."""
    from tuneforge.planning.memory import MIXED_ACTIVATION_BYTES

    run, _ = planned_run(*TINY)
    facts = model_facts(run)

    def layers(precision):
        work = Workload(batch_size=8, sequence_length=256, precision=precision, logits_bytes=0.0)
        return estimate(facts, work)

    fp32, mixed, true16 = layers("32-true"), layers("bf16-mixed"), layers("bf16-true")
    assert mixed.parts["activations"] == pytest.approx(fp32.parts["activations"] * MIXED_ACTIVATION_BYTES / 4)
    assert true16.parts["activations"] == pytest.approx(fp32.parts["activations"] / 2)
    assert "2.5 B each (autocast: part float32)" in mixed.details["activations"]


@pytest.mark.parametrize("units, expected", [(["amx_bf16"], "bf16-mixed (trainer.precision=auto: where a calibration "
                                                           "at the start of training finds it faster than 32-true"),
                                             ([], "32-true, ")])
def test_the_plan_says_auto_bf16_is_subject_to_the_calibration(monkeypatch, units, expected):
    """``trainer.precision=auto`` on the CPU: the plan assumes bfloat16 where the CPU has its matrix units, and
    says that training may still choose 32-true (the tiny model's calibration does)."""
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.planning.plan import format_plan, plan_run
    from tuneforge.training import precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    loaded = load_plugins([])
    text = format_plan(plan_run(run_components(compose([]), loaded)))
    assert f"tokens per device, precision {expected}" in text

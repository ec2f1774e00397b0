"""The command line as a user runs it (subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuneforge

from helpers import run_cli, train_losses

REPO = Path(__file__).resolve().parents[1]


def test_help_is_fast_because_nothing_heavy_is_imported():
    code = ("import sys, time; t = time.perf_counter(); from tuneforge.commands.cli import main; main(['--help']); "
            "heavy = [m for m in ('torch', 'transformers', 'lightning', 'peft', 'hydra') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: tuneforge" in out and "HEAVY []" in out
    module = run_cli(["--help"])
    assert module.returncode == 0 and "commands:" in module.stdout


def test_the_bitsandbytes_kernel_notice_is_silenced_and_its_other_messages_are_not():
    """bitsandbytes (imported by peft) warns on every import without the optional ``kernels`` package; the
    command line drops that one message and lets the logger's other warnings and errors through."""
    code = ("import logging, sys; from tuneforge.commands.cli import main; main(['config', 'groups']); "
            "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s'); "
            "log = logging.getLogger('bitsandbytes.backends.cpu.ops'); "
            "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
            "already `pip install kernels` and the kernels >= 0.11.1', \"No module named 'kernels'\"); "
            "log.warning('Failed to load something else'); log.error('gemm failed')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "gemm_4bit_forward" not in out
    assert "WARNING Failed to load something else" in out and "ERROR gemm failed" in out


def test_plugins_lists_builtins_and_third_party_with_components():
    result = run_cli(["plugins"], site_dirs=["good"])
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "adapter: freeze, full, ia3, lora, prefix, prompt" in lines["adapters"]
    assert f"tuneforge {tuneforge.__version__}" in lines["adapters"]
    assert "model: hf, tiny" in lines["models"]
    assert "data: csv, files, hf, json, jsonl, parquet" in lines["datasets"]
    assert "loss: chunked_cross_entropy, cross_entropy, distillation, dpo, kto, orpo, simpo" in lines["losses"]
    assert "evaluators: bleu, chrf, contains, exact_match, regex, rouge" in lines["evaluators_generation"]
    assert "myplug 0.1.0" in lines["myplug"] and "adapter: my_adapter" in lines["myplug"]


def test_third_party_components_selected_from_the_command_line(tmp_path):
    result = run_cli(["train", "model=tiny", "data=my_data", "adapter=my_adapter", "adapter.some_field=3",
                      "trainer.max_steps=4", "trainer.enable_progress_bar=false", "threads=1",
                      f"run_dir={tmp_path}"], site_dirs=["good"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["parameters"]["trainable"] == 64 * 260  # the plugin's adapter trains only lm_head
    assert metrics["data"]["train_records"] == 32  # the plugin's dataset: 40 records, 20% held out
    assert "adapter:\n  name: my_adapter\n  some_field: 3" in (tmp_path / "config.yaml").read_text()
    assert len(train_losses(tmp_path)) == 4
    assert "perplexity/loss" in result.stdout  # the base/tuned table


def test_command_line_evaluators_replace_an_experiments_in_a_real_run(tmp_path):
    """``tuneforge train +experiment=... evaluators=[exact_match]``: the job runs exactly that evaluator
    (the experiment's forgetting evaluator, added by its defaults, is dropped and said)."""
    result = run_cli(["train", "+experiment=legal_citations", "model=tiny", "evaluators=[exact_match]",
                      "callbacks=[]", "baselines=[]", "memorisation.sample=0", "data.n_train=8", "data.n_val=2",
                      "data.n_rehearsal=0", "evaluators.exact_match.max_new_tokens=2", "trainer.max_steps=1",
                      "trainer.enable_progress_bar=false", "threads=1", f"run_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "forgetting dropped" in result.stdout + result.stderr
    evaluated = json.loads((tmp_path / "metrics.json").read_text())["tuned"]
    assert set(evaluated) == {"exact_match"}, evaluated


def test_readme_training_commands(tmp_path):
    lora = run_cli(["train", "model=tiny", "data=jsonl", "data.path=examples/data/sample.jsonl", "adapter=lora",
                    "adapter.r=8", "trainer.max_steps=20", "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={tmp_path / 'lora'}"], cwd=REPO)
    assert lora.returncode == 0, lora.stderr[-3000:]
    assert (tmp_path / "lora" / "model" / "adapter_model.safetensors").is_file()
    assert f"run directory: {tmp_path / 'lora'}" in lora.stdout
    full = run_cli(["train", "adapter=full", "loss=cross_entropy", "trainer.max_steps=5",
                    "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()
    assert len(train_losses(tmp_path / "full")) == 5


def test_bad_choice_is_one_line_with_valid_choices_and_no_traceback():
    result = run_cli(["train", "adapter=lorra"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tuneforge: error: unknown choice 'lorra' for 'adapter' (did you mean 'lora'?); "
        "valid: freeze, full, ia3, lora, prefix, prompt, qlora"]


def test_broken_plugin_stops_with_its_name_and_can_be_blocked():
    # `tuneforge plugins` still lists, the broken plugin with its one-line reason (issue 22)
    listed = run_cli(["plugins"], site_dirs=["broken"])
    assert listed.returncode == 0 and "Traceback" not in listed.stdout + listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("badplug")]
    assert "broken: plugin 'badplug' (distribution 'badplug 0.2.0'" in line
    assert "RuntimeError: badplug cannot find its model zoo" in line
    broken = run_cli(["config", "groups"], site_dirs=["broken"])  # every other command stops, naming it
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines() == [line.split("broken: ", 1)[1].join(("tuneforge: error: ", ""))]
    blocked = run_cli(["plugins"], site_dirs=["broken"], env={"TUNEFORGE_DISABLE_PLUGINS": "badplug"})
    assert blocked.returncode == 0 and "blocked (not imported): badplug" in blocked.stdout
    debug = run_cli(["--debug", "config", "groups"], site_dirs=["broken"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_unknown_command_suggests_the_closest():
    result = run_cli(["trian"])
    assert result.returncode == 2 and "did you mean 'train'?" in result.stderr


def test_ddp_on_two_cpu_processes_trains_and_saves_once(tmp_path):
    # the default runs/<date_time>: Lightning's launcher passes the parent's directory to the child
    result = run_cli(["train", "strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "trainer.max_steps=3", "trainer.enable_progress_bar=false", "threads=1",
                      "loggers=[tensorboard]"], timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gloo, all 2 processes registered" in result.stdout + result.stderr
    assert result.stdout.count("run directory:") == 1
    [run_dir] = (tmp_path / "runs").iterdir()  # one directory for both processes
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert len(train_losses(run_dir)) == 3  # metrics.csv is kept without `csv` in loggers
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    # only the main process logs to the tracker: every event file comes from one process id
    # (events.out.tfevents.<time>.<host>.<pid>.<n>)
    event_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files and len({f.name.rsplit(".", 2)[1] for f in event_files}) == 1


@pytest.mark.parametrize("layout", [  # the packed and qlora variants: in CI's slow step
    pytest.param([], id="examples"),
    pytest.param(["loader.packing=true", "loader.pack_length=256", "loader.group_by_length=true"], id="packed_grouped",
                 marks=pytest.mark.slow),
    pytest.param(["adapter=qlora"], id="qlora", marks=pytest.mark.slow)])
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, layout):
    from safetensors.torch import load_file

    if "adapter=qlora" in layout:  # LoRA over a 4-bit base (bitsandbytes, the `quantization` extra)
        pytest.importorskip("bitsandbytes")
    common = ["train", "adapter.lora_dropout=0", "loader.shuffle=false", "trainer.max_steps=3", "optim.lr=1e-2",
              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]", *layout]
    single = run_cli([*common, "trainer.devices=1", "loader.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli([*common, "strategy=ddp", "trainer.devices=2", "loader.batch_size=2",
                   f"hydra.run.dir={tmp_path / 'two'}"], timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the logged loss is global (all-reduced, token-weighted): the 1-process loss of the same global batch
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), abs=1e-5)
    one = load_file(str(tmp_path / "one" / "model" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    # 4-bit layers (bitsandbytes dequantizes, then multiplies) sum in another order for batches of 2 than of 4;
    # AdamW's normalised step turns that into up to ~1e-4 on a weight whose gradient is near zero (steps are 1e-2;
    # 2.3e-4 on one of 512 weights on an AVX-512/AMX CPU, whose bitsandbytes kernels sum in yet another order)
    atol = 5e-4 if "adapter=qlora" in layout else 2e-5
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=atol, rtol=1e-4)
    # LoRA B matrices start at zero (A starts random): a nonzero B proves that training moved the adapter
    lora_b = [key for key in one if "lora_B" in key]
    assert lora_b and all(one[key].abs().max() > 1e-4 for key in lora_b)


def test_hydra_flags_with_values_are_not_overrides():
    result = run_cli(["train", "--cfg", "job", "adapter.r=4"])
    assert result.returncode == 0, result.stderr
    assert "adapter:\n  name: lora\n  r: 4" in result.stdout


def test_progress_bar_of_a_run_bounded_by_steps_shows_no_negative_epoch_count(tmp_path):
    """Lightning's rich bar writes ``Epoch 0/-2`` when only ``trainer.max_steps`` bounds the run."""
    result = run_cli(["train", "model=tiny", "evaluators=[]", "baselines=[]", "trainer.max_steps=3", "threads=1",
                      f"run_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "Epoch 0" in shown and "/-2" not in shown, shown[-2000:]

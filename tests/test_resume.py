"""Crash and preemption: SIGKILL + resume equals an uninterrupted run; SIGTERM checkpoints and says how to resume."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import FIXTURES, run_cli, train_losses

RUN = ["train", "adapter.lora_dropout=0.1", "trainer.max_steps=10", "trainer.accumulate_grad_batches=2",
       "loader.batch_size=4", "optim.lr=5e-3", "optim.warmup_steps=2", "checkpoint.every_n_steps=3",
       "checkpoint.keep_last=2", "trainer.enable_progress_bar=false", "threads=1", "callbacks=[batch_log]"]


def _batches(log_path):
    """The micro-batches that count: for a resumed run, the later record of each (step, batch) wins."""
    final = {}
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        final[(row["epoch"], row["batch"])] = row
    return [final[key] for key in sorted(final)]


#: batch layouts whose position a checkpoint must restore exactly.  packed: 18 rows of <= 256 tokens,
#: 5 micro-batches and 3 steps per epoch, so every checkpoint falls at an epoch's end; packed_grouped:
#: 49 rows of <= 128 tokens grouped by length, 13 micro-batches per epoch, checkpoints mid-epoch
LAYOUTS = {"examples": [], "packed": ["loader.packing=true", "loader.pack_length=256"],
           "packed_grouped": ["loader.packing=true", "loader.pack_length=128", "loader.group_by_length=true"]}


#: optimizers whose state a checkpoint must restore exactly (the 8-bit ones quantize every state: the tiny
#: model's LoRA matrices are below bitsandbytes' default min_8bit_size)
OPTIMIZERS = {"adamw_8bit": ["optimizer=adamw_8bit", "optimizer.min_8bit_size=0"],
              "paged_adamw_8bit": ["optimizer=paged_adamw_8bit", "optimizer.min_8bit_size=0"],
              "adafactor": ["optimizer=adafactor"], "sgd": ["optimizer=sgd", "optim.lr=0.05"]}
#: quantized bases (bitsandbytes): the adapter trains over frozen 4-bit / 8-bit weights
QUANTIZED = {"nf4": ["model.quantization=nf4"], "int8": ["model.quantization=int8"], "qlora": ["adapter=qlora"]}
#: the optimizers and bases resumed in the default suite (one with factored state, a 4-bit base with its
#: adapter); the others are marked ``slow`` (~25-45 s each), so CI runs them in its slow step
DEFAULT_SUITE = {"adafactor", "qlora"}


@pytest.mark.parametrize("layout", [pytest.param(name, marks=pytest.mark.slow) if name == "packed_grouped" else name
                                    for name in LAYOUTS])  # packed_grouped: in CI's slow step
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, layout):
    # 58 training examples / batch 4 = 15 micro-batches per epoch; 10 steps of 2 (one epoch-end step of 1);
    # packed: 5 micro-batches per epoch (3 steps each, the last of 1); packed_grouped: 13 (7 steps)
    count, epoch = {"packed": (17, 3)}.get(layout, (19, 1))
    _sigkill_then_resume(tmp_path, [*RUN, *LAYOUTS[layout]], count, epoch)


@pytest.mark.parametrize("optimizer", [name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow)
                                       for name in OPTIMIZERS])
def test_sigkill_then_resume_with_another_optimizer_matches_an_uninterrupted_run(tmp_path, optimizer):
    if "8bit" in optimizer:
        pytest.importorskip("bitsandbytes")
    assert _sigkill_then_resume(tmp_path, [*RUN, *OPTIMIZERS[optimizer]], 19, 1) <= 1e-6


@pytest.mark.parametrize("base", [name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow)
                                  for name in QUANTIZED])
def test_sigkill_then_resume_on_a_quantized_base_matches_an_uninterrupted_run(tmp_path, base):
    pytest.importorskip("bitsandbytes")
    assert _sigkill_then_resume(tmp_path, [*RUN, *QUANTIZED[base], "baselines=[]"], 19, 1) <= 1e-6


def _sigkill_then_resume(tmp_path, run, count, epoch) -> float:
    """A run killed at a random step after its first checkpoint, resumed by the same command, equals the
    uninterrupted run: the same micro-batches, learning rates, adapter weights and loss history.  Returns
    the largest difference of an adapter weight."""
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    result = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'reference.log'}",
                      f"hydra.run.dir={reference}"], site_dirs=["steplog"])
    assert result.returncode == 0, result.stderr[-3000:]

    # the kill step is drawn from a seed that is printed, so a failure can be replayed:
    # RESUME_TEST_SEED=<seed> pytest tests/test_resume.py
    seed = int(os.environ.get("RESUME_TEST_SEED", str(time.time_ns() % 1_000_000)))
    kill_step = random.Random(seed).randint(4, 9)  # after the first checkpoint (step 3)
    print(f"kill step {kill_step} (RESUME_TEST_SEED={seed})")
    killed = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'crashed.log'}",
                      f"callbacks.batch_log.kill_at_step={kill_step}", f"hydra.run.dir={crashed}"],
                     site_dirs=["steplog"])
    assert killed.returncode == -signal.SIGKILL, (kill_step, killed.stderr[-2000:])
    assert json.loads((crashed / "status.json").read_text())["status"] == "running"
    assert not (crashed / "model").exists()  # a crashed run presents no model
    resumed = run_cli([*run, f"callbacks.batch_log.path={tmp_path / 'crashed.log'}", f"hydra.run.dir={crashed}"],
                      site_dirs=["steplog"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "completed" and status["steps"] == 10
    assert status["resumed_from"].endswith(f"step-{(kill_step // 3) * 3:08d}"), (kill_step, status)

    expected, got = _batches(tmp_path / "reference.log"), _batches(tmp_path / "crashed.log")
    assert [b["ids"] for b in got] == [b["ids"] for b in expected], f"data order differs (killed at {kill_step})"
    assert [b["lr"] for b in got] == pytest.approx([b["lr"] for b in expected], rel=1e-9)
    assert len(got) == count and got[-1]["step"] == 9 and got[-1]["epoch"] == epoch
    a = load_file(str(reference / "model" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    largest = max(float((b[key] - a[key]).abs().max()) for key in a)
    # the loss history survives the crash: every step logged once, equal to the uninterrupted run
    assert train_losses(crashed) == pytest.approx(train_losses(reference), abs=1e-5)
    assert json.loads((crashed / "metrics.json").read_text())["base"] == json.loads(
        (reference / "metrics.json").read_text())["base"]
    assert len(list((crashed / "checkpoints").iterdir())) == 2  # keep_last
    return largest


def test_sigterm_saves_a_checkpoint_and_prints_how_to_resume(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "batches.log"
    env = dict(os.environ, PYTHONPATH=str(FIXTURES / "steplog"))
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", *RUN, f"callbacks.batch_log.path={log}", "callbacks.batch_log.sleep_s=0.3",
         f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert lines[-2].startswith("tuneforge: interrupted by SIGTERM at step ")
    resume = lines[-1]
    assert resume.startswith("Resume with: tuneforge train ") and resume.endswith(f"hydra.run.dir={run_dir}")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    assert checkpoints and (checkpoints[-1] / "COMPLETE").is_file()

    args = shlex.split(resume.split("Resume with: ", 1)[1])[2:]
    args = [a.replace("callbacks.batch_log.sleep_s=0.3", "callbacks.batch_log.sleep_s=0") for a in args]
    finished = run_cli(["train", *args], site_dirs=["steplog"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["steps"] == 10
    assert len(_batches(log)) == 19


def test_resuming_into_another_runs_directory_is_refused(tmp_path):
    first = run_cli(["train", "trainer.max_steps=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"])
    assert first.returncode == 0, first.stderr[-2000:]
    other = run_cli(["train", "trainer.max_steps=2", "adapter.r=4", f"hydra.run.dir={tmp_path}"])
    assert other.returncode == 2
    assert "holds a different run: adapter.r (8 -> 4)" in other.stderr.strip().splitlines()[-1]


@pytest.mark.fault(fault="SIGKILL after a checkpoint is complete, before that step's metrics row is logged",
                   outcome="the resume restores the row from the checkpoint: metrics.csv equals the uninterrupted run's")
def test_a_kill_between_a_checkpoint_and_its_steps_row_loses_no_row(tmp_path):
    """Killed after the step-6 checkpoint is complete but before Lightning logs step 6's row: the resume starts
    after step 6, so it never logs that row again; the checkpoint keeps it, and the final metrics.csv has it."""
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    result = run_cli([*RUN, f"callbacks.batch_log.path={tmp_path / 'reference.log'}",
                      f"hydra.run.dir={reference}"], site_dirs=["steplog"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = f"callbacks.batch_log.path={tmp_path / 'crashed.log'}"
    killed = run_cli([*RUN, log, "callbacks.batch_log.kill_after_checkpoint_at_step=6", f"hydra.run.dir={crashed}"],
                     site_dirs=["steplog"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (crashed / "checkpoints" / "step-00000006" / "COMPLETE").is_file()
    assert 5 not in [step for step, train, _ in _csv_steps(crashed) if train]  # the row of the 6th step (step 5)
    resumed = run_cli([*RUN, log, f"hydra.run.dir={crashed}"], site_dirs=["steplog"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _csv_steps(reference), _csv_steps(crashed)
    assert [row[0] for row in got] == [row[0] for row in expected]
    assert [float(row[1]) for row in got if row[1]] == pytest.approx([float(row[1]) for row in expected if row[1]],
                                                                       abs=1e-6)


def _csv_steps(run_dir):
    import csv

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(row["step"]), row.get("train/loss") or None, row.get("val/loss") or None)
                for row in csv.DictReader(handle)]


@pytest.mark.fault(fault="three SIGKILLs (one while a checkpoint is written), then the same command",
                   outcome="`metrics.csv` holds every step once, equal to the uninterrupted run; `status.json` lists "
                           "all four segments, the killed ones `interrupted`; weights bit-for-bit equal")
def test_history_survives_repeated_sigkills_including_one_mid_checkpoint_write(tmp_path):
    """Killed at step 5, killed again while writing the step-6 checkpoint (so it resumes from 3 again), killed a
    third time at step 8 (after the step-6 checkpoint of that segment): the final metrics.csv holds every row of
    the uninterrupted run exactly once, status.json lists all four segments, the weights are equal."""
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    result = run_cli([*RUN, f"callbacks.batch_log.path={tmp_path / 'reference.log'}",
                      f"hydra.run.dir={reference}"], site_dirs=["steplog"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = f"callbacks.batch_log.path={tmp_path / 'crashed.log'}"
    for kill in ("callbacks.batch_log.kill_at_step=5", "callbacks.batch_log.kill_in_checkpoint_at_step=6",
                 "callbacks.batch_log.kill_at_step=8"):
        killed = run_cli([*RUN, log, kill, f"hydra.run.dir={crashed}"], site_dirs=["steplog"])
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-2000:])
        if "checkpoint" in kill:  # the interrupted save left no usable step-6 checkpoint
            assert not (crashed / "checkpoints" / "step-00000006" / "COMPLETE").exists()
    resumed = run_cli([*RUN, log, f"hydra.run.dir={crashed}"], site_dirs=["steplog"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _csv_steps(reference), _csv_steps(crashed)
    assert [row[0] for row in got] == [row[0] for row in expected]
    train_steps = [step for step, train, _ in got if train]
    assert train_steps == sorted(set(train_steps)) and len(train_steps) == 10  # every step exactly once
    assert [float(row[1]) for row in got if row[1]] == pytest.approx([float(row[1]) for row in expected if row[1]],
                                                                       abs=1e-6)
    assert not (crashed / "metrics_history.csv").exists()

    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "completed"
    segments = status["segments"]
    assert [(s["from_step"], s["status"]) for s in segments] == [
        (0, "interrupted"), (3, "interrupted"), (3, "interrupted"), (6, "completed")]
    # as far as each got by its logged rows (the second was killed while saving step 6, before logging it)
    assert [s["to_step"] for s in segments] == [5, 5, 8, 10]
    assert all(s.get("killed") for s in segments[:3])

    a = load_file(str(reference / "model" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)

"""Fault tests of the run directory: two runs at once, a completed run rerun, a failed run reused,
unusable directories, nothing written to the working directory, metrics summed over resumes."""

import json
import subprocess
import time

import pytest

from helpers import TUNEFORGE, run_cli

FAST = ["trainer.enable_progress_bar=false", "threads=1", "evaluators=[]"]


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]


@pytest.mark.fault(fault="a second `tuneforge train` on a run directory in use",
                   outcome="one line naming the live holder (pid, host, since), within seconds; the first run is untouched")
def test_two_runs_on_one_directory_one_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    import os

    env = dict(os.environ, PYTHONPATH=str(__import__("helpers").FIXTURES / "steplog"))
    slow = ["callbacks=[batch_log]", f"callbacks.batch_log.path={tmp_path / 'batches.log'}",
            "callbacks.batch_log.sleep_s=1.0"]  # ~20 s of training: the second run starts meanwhile
    first = subprocess.Popen([*TUNEFORGE, "train", *FAST, *slow, "trainer.max_steps=20", f"run_dir={run_dir}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "batches.log").is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "batches.log").is_file(), "the first run never started training"
        started = time.time()
        second = run_cli(["train", *FAST, "trainer.max_steps=3", "adapter.r=4", f"run_dir={run_dir}"], cwd=tmp_path)
        assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
        took = time.time() - started
    finally:
        out, err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = _error_lines(second)
    assert len(lines) == 1 and "is in use by tuneforge train (pid" in lines[0], second.stderr[-2000:]
    assert took < 30
    assert first.returncode == 0, err[-2000:]
    saved = (run_dir / "config.yaml").read_text()
    assert "r: 8" in saved and "r: 4" not in saved  # the config is the first run's
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 20
    assert not (tmp_path / "runs").exists()  # run_dir given: nothing in the working directory
    assert (run_dir / "train.log").is_file()  # the run's log is in its own directory


@pytest.mark.fault(fault="the command of a completed run run again",
                   outcome="one line pointing to `tuneforge eval` or resume=never; the completed run's files are untouched")
def test_a_completed_run_is_refused_and_keeps_its_evidence(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(["train", *FAST, "trainer.max_steps=3", f"run_dir={run_dir}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (run_dir / "metrics.json").read_text()
    again = run_cli(["train", *FAST, "trainer.max_steps=3", f"run_dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 2
    lines = _error_lines(again)
    assert len(lines) == 1 and "holds a completed run (3 steps)" in lines[0] and "tuneforge eval" in lines[0]
    assert (run_dir / "metrics.json").read_text() == before
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003"]
    fresh = run_cli(["train", *FAST, "trainer.max_steps=2", "resume=never", f"run_dir={run_dir}"], cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    # the earlier run's checkpoints are gone, so a later resume=auto cannot pick its step 3
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]


def test_a_run_that_failed_before_training_leaves_a_reusable_directory(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": 3}\n')
    run_dir = tmp_path / "run"
    failed = run_cli(["train", *FAST, "data=jsonl", f"data.path={bad}", "trainer.max_steps=2",
                      f"run_dir={run_dir}"], cwd=tmp_path)
    assert failed.returncode == 2 and len(_error_lines(failed)) == 1, failed.stderr[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and not status["steps"]
    fixed = run_cli(["train", *FAST, "trainer.max_steps=2", "adapter.r=4", f"run_dir={run_dir}"], cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-2000:]


@pytest.mark.fault(fault="run_dir is a file, or below a file",
                   outcome="one line saying so, exit 2, no traceback")
def test_unusable_run_directories_are_one_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for target, expected in ((taken, "is a file, not a directory"), (taken / "below", "is a file, so")):
        result = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={target}"], cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = _error_lines(result)
        assert len(lines) == 1 and expected in lines[0]
        assert "Traceback" not in result.stderr


def _as_if_killed(run_dir, keep_checkpoints=()):
    """Make a finished run look like one whose process died while training: status 'running', and only the
    named checkpoints left (none: the default checkpoint.every_n_steps=0 had written none yet)."""
    import shutil

    status = json.loads((run_dir / "status.json").read_text())
    status.update(status="running")
    (run_dir / "status.json").write_text(json.dumps(status))
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if checkpoint.name not in keep_checkpoints:
            shutil.rmtree(checkpoint)


@pytest.mark.fault(fault="a run killed before any checkpoint, then the same command run again",
                   outcome="it starts over with a warning, and the killed run's files are kept in previous-1/")
def test_a_killed_run_without_a_checkpoint_is_set_aside_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    command = ["train", *FAST, "trainer.max_steps=3", f"run_dir={run_dir}"]
    assert run_cli(command, cwd=tmp_path).returncode == 0
    _as_if_killed(run_dir)
    rows = (run_dir / "metrics.csv").read_text()
    again = run_cli(command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    said = again.stdout + again.stderr
    assert "left no checkpoint to resume from" in said and "killed while running at step 3" in said
    assert f"its files are kept in {run_dir / 'previous-1'}" in said
    assert (run_dir / "previous-1" / "metrics.csv").read_text() == rows  # the history is kept as it was
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_resuming_into_a_shorter_run_is_refused_and_another_length_is_warned_about(tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", *FAST, "checkpoint.every_n_steps=2", f"run_dir={run_dir}"]
    assert run_cli([*base, "trainer.max_steps=4"], cwd=tmp_path).returncode == 0
    _as_if_killed(run_dir, keep_checkpoints=("step-00000002",))
    shorter = run_cli([*base, "trainer.max_steps=1"], cwd=tmp_path)
    assert shorter.returncode == 2
    [line] = _error_lines(shorter)
    assert "step-00000002 is at step 2, past trainer.max_steps=1" in line and "trainer.max_steps >= 2" in line
    longer = run_cli([*base, "trainer.max_steps=5"], cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "trainer.max_steps was 4 when this run started and is 5 now: the learning-rate schedule" in \
        longer.stdout + longer.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 5


@pytest.mark.fault(fault="a run resumed on changed held-out data (allow_changed_data=true)",
                   outcome="the base model is scored again on the new held-out examples, not compared from the old ones")
def test_a_base_evaluation_of_other_held_out_examples_is_not_reused(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Item {i}."}) + "\n"
                             for i in range(12)))
    val.write_text("".join(json.dumps({"instruction": f"Name {i}", "output": f"Thing {i}."}) + "\n" for i in range(4)))
    run_dir = tmp_path / "run"
    base = ["train", "trainer.enable_progress_bar=false", "threads=1", "evaluators=[perplexity]", "baselines=[]",
            "data=jsonl", f"data.path={train}", f"data.val_path={val}", "checkpoint.every_n_steps=2",
            "trainer.max_steps=4", f"run_dir={run_dir}"]
    assert run_cli(base, cwd=tmp_path).returncode == 0
    _as_if_killed(run_dir, keep_checkpoints=("step-00000002",))
    before = json.loads((run_dir / "base_eval.json").read_text())
    val.write_text("".join(json.dumps({"instruction": f"Other {i}", "output": "Something else entirely."}) + "\n"
                           for i in range(3)))
    resumed = run_cli([*base, "allow_changed_data=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "the held-out examples changed since the base model was scored" in resumed.stdout + resumed.stderr
    after = json.loads((run_dir / "base_eval.json").read_text())
    assert after["held_out"] != before["held_out"]
    assert after["metrics"]["perplexity/loss"] != before["metrics"]["perplexity/loss"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["base"] == after["metrics"] and metrics["data"]["val_examples"] == 3

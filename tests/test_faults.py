"""Faults a run must survive with a clean status and one line: a full disk at a write (simulated: an
``OSError(ENOSPC)`` raised at the lowest write, the rest of tuneforge's code path is the real one),
SIGTERM outside the training loop, a process that died with status ``running``, and a ``resume=never``
retrain that fails (no mixed directory; ``eval``/``export`` refuse what does not belong together).

In-process tiny runs (``tuneforge.testing.run_tiny_fit``) where the fault is injected; one CLI run
where the printed lines matter.
"""

import errno
import json
import os
import pathlib
import shlex
import shutil
import signal

import pytest

from tuneforge.commands.run_loading import RunDirectoryError, read_run_config
from tuneforge.errors import DataError
from tuneforge.testing import run_tiny_fit
from tuneforge.training.checkpoint import CheckpointError
from tuneforge.training.run import RunInterrupted

from helpers import run_cli, sigterm_while_the_model_loads

FAST = ["trainer.max_steps=2", "evaluators=[]", "baselines=[]"]


def _status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _leftovers(run_dir) -> list:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """A completed 2-step run with adapter.r=8."""
    return run_tiny_fit(tmp_path_factory.mktemp("completed") / "run", overrides=[*FAST, "adapter.r=8"]).run_dir


def _copy(run_dir, target):
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".lock"))
    return target


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------


def _disk_fills_at_first_checkpoint(monkeypatch, nothing_frees_space=False):
    """From the first checkpoint save on, every new file fails with ENOSPC after a partial write (as a
    full disk does) until the run deletes the space it kept for its status (.status-reserve); with
    ``nothing_frees_space`` the disk stays full even then (another writer took the space), and the
    half-written status.json.tmp cannot be removed either."""
    import peft  # noqa: F401  (imported first: modules that bind save_file at import keep the real one)
    import safetensors.torch
    import transformers.modeling_utils  # noqa: F401

    full = {"on": False}

    def no_space(path):
        return OSError(errno.ENOSPC, "No space left on device", str(path))

    def save_file(tensors, filename, *args, **kwargs):
        full["on"] = True
        pathlib.Path(filename).write_bytes(b"\0" * 16)  # what fitted before the disk was full
        raise no_space(filename)

    real_write_bytes, real_write_text = pathlib.Path.write_bytes, pathlib.Path.write_text
    real_unlink = pathlib.Path.unlink

    def write_bytes(self, data):
        if full["on"]:
            real_write_bytes(self, data[:8])
            raise no_space(self)
        return real_write_bytes(self, data)

    def write_text(self, data, *args, **kwargs):
        if full["on"]:
            real_write_text(self, data[:8], *args, **kwargs)
            raise no_space(self)
        return real_write_text(self, data, *args, **kwargs)

    def unlink(self, missing_ok=False):
        if nothing_frees_space and self.name == "status.json.tmp":
            raise OSError(errno.EIO, "Input/output error", str(self))
        real_unlink(self, missing_ok=missing_ok)
        if self.name == ".status-reserve" and not nothing_frees_space:
            full["on"] = False  # its blocks are free again

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)


@pytest.mark.fault(fault="disk full while a checkpoint is saved (and the status file cannot be written anew)",
                   outcome="one line (`disk full while saving checkpoint ...`); status.json says failed with that "
                           "line (written in the space the run kept for it); no partial checkpoint, no `.tmp` file")
def test_a_full_disk_at_a_checkpoint_is_one_line_and_status_says_failed(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _disk_fills_at_first_checkpoint(monkeypatch)
    with pytest.raises(CheckpointError) as failed:
        run_tiny_fit(run_dir, overrides=[*FAST, "checkpoint.every_n_steps=1"])
    line = str(failed.value)
    assert "\n" not in line and line.startswith("disk full while saving checkpoint ") and "step-00000001" in line
    status = _status(run_dir)
    assert status["status"] == "failed" and status["error"] == line
    assert _leftovers(run_dir) == []
    assert not (run_dir / "checkpoints").exists() or list((run_dir / "checkpoints").iterdir()) == []


@pytest.mark.fault(fault="disk full, and even status.json cannot be written",
                   outcome="the run's own one-line error still shows; the next start says the previous run ended "
                           "without writing its last status, and removes the `.tmp` files")
def test_when_not_even_the_status_can_be_written_the_next_start_says_so(tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _disk_fills_at_first_checkpoint(patch, nothing_frees_space=True)
        with pytest.raises(CheckpointError, match="^disk full while saving checkpoint"):
            run_tiny_fit(run_dir, overrides=[*FAST, "checkpoint.every_n_steps=1"])
    assert _status(run_dir)["status"] == "running"
    assert _leftovers(run_dir) == ["status.json.tmp"]
    with caplog.at_level("WARNING", logger="tuneforge"):
        run_tiny_fit(run_dir, overrides=[*FAST, "checkpoint.every_n_steps=1"])
    assert any("ended without writing its last status (status.json.tmp was left behind" in r.getMessage()
               for r in caplog.records)
    assert _status(run_dir)["status"] == "completed" and _leftovers(run_dir) == []


# ---------------------------------------------------------------------------
# SIGTERM outside the training loop
# ---------------------------------------------------------------------------


def _sigterm_during(monkeypatch, target: str):
    """Send this process SIGTERM from inside ``target`` ("module:attribute"), then let it run on."""
    import importlib

    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


@pytest.mark.fault(fault="SIGTERM while the model loads, the data loads or the base model is evaluated",
                   outcome="`interrupted by SIGTERM while <phase> (step 0); nothing was trained yet` and the "
                           "resume command; status.json says interrupted")
@pytest.mark.parametrize("target, phase", [
    ("tuneforge.training.run:count_parameters", "loading the model"),
    ("tuneforge.data.quality:assess", "loading the data"),
    ("tuneforge.training.run:run_evaluators", "evaluating the base model")])
def test_sigterm_before_training_is_interrupted_with_its_phase(tmp_path, monkeypatch, target, phase):
    _sigterm_during(monkeypatch, target)
    with pytest.raises(RunInterrupted) as stopped:
        run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=2", "baselines=[]"])
    line = f"interrupted by SIGTERM while {phase} (step 0); nothing was trained yet"
    assert str(stopped.value) == line
    status = _status(tmp_path / "run")
    assert status["status"] == "interrupted" and status["error"] == line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone again


def test_sigterm_while_the_model_loads_prints_the_line_and_the_resume_command(tmp_path):
    # the signal comes from a sitecustomize in the tuneforge process, sent while the model is being loaded
    site = sigterm_while_the_model_loads(tmp_path)
    run_dir = tmp_path / "run"
    result = run_cli(["train", *FAST, "trainer.enable_progress_bar=false", f"run_dir={run_dir}"], cwd=tmp_path,
                     env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 143, result.stderr[-3000:]
    tail = result.stderr.strip().splitlines()[-2:]
    resume = shlex.join(["tuneforge", "train", *FAST, "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"])
    assert tail == ["tuneforge: interrupted by SIGTERM while loading the model (step 0); nothing was trained yet.",
                    f"Resume with: {resume}"], result.stderr[-3000:]
    assert _status(run_dir)["status"] == "interrupted"


# ---------------------------------------------------------------------------
# A process that died with status "running"
# ---------------------------------------------------------------------------


@pytest.mark.fault(fault="the process was SIGKILLed (status.json still says running, nobody holds the lock)",
                   outcome="`train` (next start), `eval` and `tuneforge status` say `interrupted (the process "
                           "died)`; `export`/`generate` refuse it unless force=true")
def test_a_run_whose_process_died_is_reported_as_interrupted(completed_run, tmp_path, caplog):
    died = _copy(completed_run, tmp_path / "died")
    (died / "status.json").write_text(json.dumps({"status": "running", "steps": None}))
    from tuneforge.commands.status import run_line

    assert run_line(died) == f"{died}  interrupted (the process died)"
    with pytest.raises(RunDirectoryError, match=r"status is 'running': it was interrupted \(the process died\).*"
                                                r"force=true"):
        read_run_config(died)  # generate / chat / export
    with caplog.at_level("WARNING", logger="tuneforge"):
        assert read_run_config(died, allow_interrupted=True).adapter.r == 8  # eval: its last model, said so
    assert any("it was interrupted (the process died)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    fresh = tmp_path / "fresh"  # a run that died before saving anything: the next start says so, then runs
    fresh.mkdir()
    shutil.copy(completed_run / "config.yaml", fresh / "config.yaml")
    (fresh / "status.json").write_text(json.dumps({"status": "running"}))
    with caplog.at_level("WARNING", logger="tuneforge"):
        run_tiny_fit(fresh, overrides=[*FAST, "adapter.r=8"])
    assert any(f"the previous run in {fresh} was interrupted (the process died" in r.getMessage()
               for r in caplog.records)
    assert _status(fresh)["status"] == "completed"


# ---------------------------------------------------------------------------
# No mixed directories
# ---------------------------------------------------------------------------


@pytest.mark.fault(fault="a `resume=never` retrain (adapter.r=16) of a completed run fails on bad data",
                   outcome="the earlier run's outputs were moved to previous-1/ first; the directory holds no "
                           "model/; `eval`/`export` refuse it in one line (status failed) unless force=true")
def test_a_failed_retrain_leaves_no_mixed_directory_and_eval_refuses_it(completed_run, tmp_path):
    run_dir = _copy(completed_run, tmp_path / "run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": 3}\n')
    with pytest.raises(DataError):
        run_tiny_fit(run_dir, overrides=[*FAST, "adapter.r=16", "resume=never", f"data.path={bad}"])
    previous = run_dir / "previous-1"
    assert "r: 8" in (previous / "config.yaml").read_text() and (previous / "model").is_dir()
    assert json.loads((previous / "metrics.json").read_text())["steps"] == 2
    assert [p.name for p in (previous / "checkpoints").iterdir()] == ["step-00000002"]
    assert "r: 16" in (run_dir / "config.yaml").read_text()
    assert not (run_dir / "model").exists() and not (run_dir / "metrics.json").exists()
    assert _status(run_dir)["status"] == "failed"
    result = run_cli(["eval", f"run_dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tuneforge: error: run_dir={run_dir}: the run's status is 'failed' ({_status(run_dir)['error']}) and it "
        "saved no model/; train it again (or resume it with the same tuneforge train command)"]


@pytest.mark.fault(fault="a run directory whose model/ was saved by another config than its config.yaml",
                   outcome="`eval`/`export`/`generate` refuse it in one line naming the differing keys, unless "
                           "force=true")
def test_a_model_that_its_config_did_not_train_is_refused_unless_forced(completed_run, tmp_path):
    mixed = _copy(completed_run, tmp_path / "mixed")
    config = mixed / "config.yaml"
    config.write_text(config.read_text().replace("  r: 8\n", "  r: 16\n"))
    with pytest.raises(RunDirectoryError, match=r"model/ was saved by a run with another config than its "
                                                r"config.yaml \(adapter.r \(8 -> 16\)\).*force=true") as refused:
        read_run_config(mixed)
    assert "\n" not in str(refused.value)
    assert read_run_config(mixed, force=True).adapter.r == 16
    assert read_run_config(completed_run).adapter.r == 8  # its own model: accepted


@pytest.mark.fault(fault="SIGTERM while the run is being prepared (the run directory, the resume decision, "
                         "waiting for the other ranks)",
                   outcome="`interrupted by SIGTERM while preparing the run directory (step 0); nothing was "
                           "trained yet`; status.json says interrupted, with the phase (an earlier run's status.json "
                           "that this start had not replaced yet is left as it was); the lock is released")
@pytest.mark.parametrize("after_status", [False, True])
def test_sigterm_while_the_run_is_prepared_is_interrupted_with_its_phase(tmp_path, monkeypatch, after_status):
    import tuneforge.training.run as run
    from tuneforge.training.run_lock import RunLock

    if after_status:  # the signal arrives just after status.json says running
        original = run.write_running_status

        def write_then_stop(*args, **kwargs):
            original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(run, "write_running_status", write_then_stop)
    else:  # before anything of this start is written
        _sigterm_during(monkeypatch, "tuneforge.training.run:save_metric_history")
    with pytest.raises(RunInterrupted) as stopped:
        run_tiny_fit(tmp_path / "run", overrides=["trainer.max_steps=2", "baselines=[]"])
    line = "interrupted by SIGTERM while preparing the run directory (step 0); nothing was trained yet"
    assert str(stopped.value) == line
    status = _status(tmp_path / "run")  # before status.json said running too: the directory held none
    assert status["status"] == "interrupted" and status["error"] == line and not status["steps"]
    assert status["phase"] == "preparing the run directory"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    RunLock(tmp_path / "run", "train").acquire().release()  # nobody holds the lock any more


def test_sigterm_while_preparing_leaves_an_earlier_runs_status_as_it_was(completed_run, tmp_path, monkeypatch):
    run_dir = _copy(completed_run, tmp_path / "run")
    before = (run_dir / "status.json").read_text()
    _sigterm_during(monkeypatch, "tuneforge.training.run:prepare_run_dir")  # before resume=never moves it aside
    with pytest.raises(RunInterrupted, match="while preparing the run directory"):
        run_tiny_fit(run_dir, overrides=[*FAST, "resume=never"])
    assert (run_dir / "status.json").read_text() == before  # it still describes what the directory holds

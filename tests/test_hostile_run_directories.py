"""Run directories as a hostile (or unlucky) user leaves them: retrained with ``resume=never`` (train.log
holds this command's lines only), stopped by SIGTERM before the run started (status.json says so), still
being trained while ``eval``/``export`` read them, on a read-only mount, or holding a ``config.yaml`` of
the user's own.  Each answer is one line naming what is wrong, where, and what to do."""

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import run_cli, sigterm_inside_a_del_when_called, sigterm_when_called

FAST = ["model=tiny", "threads=1", "baselines=[]", "evaluators=[]", "trainer.enable_progress_bar=false"]
ENV = {"OMP_NUM_THREADS": "1"}


def _error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed one-step tiny run."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={root / 'run'}"], cwd=root, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def _copy(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".lock"))
    return target


# ---------------------------------------------------------------------------
# 1. train.log after resume=never (and after a start-over of a run that left no checkpoint)
# ---------------------------------------------------------------------------

def _as_if_killed(run_dir: Path, keep=()):
    """status.json 'running' (the process died) and only the checkpoints named in ``keep`` left."""
    status = _status(run_dir)
    (run_dir / "status.json").write_text(json.dumps(dict(status, status="running")))
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if checkpoint.name not in keep:
            shutil.rmtree(checkpoint)


def _first_message(log: bytes) -> str:
    return log.decode().splitlines()[0].split(" - ", 1)[1]


@pytest.mark.fault(fault="`resume=never` (or a start-over of a killed run that left no checkpoint) in a run "
                         "directory whose train.log holds earlier runs' lines",
                   outcome="train.log holds this command's lines only; the earlier ones are in previous-<n>/train.log "
                           "(a resume keeps adding to one train.log)")
def test_train_log_holds_only_this_runs_lines_after_resume_never(tmp_path):
    run_dir = tmp_path / "run"
    command = ["train", *FAST, "trainer.max_steps=2", "checkpoint.every_n_steps=1", f"run_dir={run_dir}"]
    assert run_cli(command, cwd=tmp_path, env=ENV).returncode == 0
    first = (run_dir / "train.log").read_bytes()
    _as_if_killed(run_dir, keep=("step-00000001",))
    resumed = run_cli(command, cwd=tmp_path, env=ENV)  # a real resume: one run's history, in one log
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = (run_dir / "train.log").read_bytes()
    assert history.startswith(first) and b"resuming from" in history[len(first):]

    again = run_cli([*command, "resume=never"], cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (run_dir / "train.log").read_bytes()
    assert (run_dir / "previous-1" / "train.log").read_bytes() == history
    assert _first_message(log).startswith("resume=never: moved the earlier run's")
    assert b"\0" not in log and b"`Trainer.fit` stopped" in log  # later lines appended at the new end
    assert all(line in again.stdout for line in log.decode().splitlines())  # this command's lines, and only they

    _as_if_killed(run_dir)  # killed before any checkpoint: resume=auto starts over, keeping the earlier files
    restart = run_cli(command, cwd=tmp_path, env=ENV)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert (run_dir / "previous-2" / "train.log").read_bytes() == log
    log = (run_dir / "train.log").read_text()
    assert "left no checkpoint to resume from" in log and "resume=never: moved" not in log
    assert all(line in restart.stdout for line in log.splitlines())


@pytest.mark.fault(fault="a `-m` sweep run again into the same `hydra.sweep.dir` with `resume=never`",
                   outcome="each job's train.log holds this sweep's lines only; the earlier ones are in "
                           "previous-<n>/train.log")
def test_a_sweep_jobs_train_log_holds_only_this_sweeps_lines_after_resume_never(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *FAST, "trainer.max_steps=1", f"hydra.sweep.dir={sweep}", "optim.lr=1e-3"]
    assert run_cli(command, cwd=tmp_path, env=ENV).returncode == 0
    first = (sweep / "0" / "train.log").read_bytes()
    again = run_cli([*command, "resume=never"], cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (sweep / "0" / "previous-1" / "train.log").read_bytes() == first
    log = (sweep / "0" / "train.log").read_bytes()
    assert _first_message(log).startswith("resume=never: moved the earlier run's")


# ---------------------------------------------------------------------------
# 2. SIGTERM after the lock, before status.json said running
# ---------------------------------------------------------------------------

@pytest.mark.fault(fault="SIGTERM while `tuneforge train` starts (loading plugins, composing, importing), before "
                         "the run took its lock",
                   outcome="one line `interrupted by SIGTERM while starting, before its run began: nothing was "
                           "trained or written; run the same command again`, exit 143; the run directory Hydra "
                           "made for it is removed")
@pytest.mark.parametrize("module, function", [("tuneforge.host.compose", "load_plugins"),
                                              ("tuneforge.commands.train", "_route_library_logs")])
def test_sigterm_while_train_starts_is_one_line_and_leaves_no_directory(tmp_path, module, function):
    run_dir = tmp_path / "run"
    site = sigterm_when_called(tmp_path, module, function)
    stopped = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={run_dir}"], cwd=tmp_path,
                      env={**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines() == [
        "tuneforge: train interrupted by SIGTERM while starting, before its run began: nothing was trained or "
        "written; run the same command again"]
    assert not run_dir.exists()


def _train_with_a_dropped_sigterm(tmp_path: Path, module: str, function: str, *overrides):
    """``tuneforge train`` on the tiny model whose SIGTERM arrives inside a ``__del__`` when ``module.function``
    is called (Python drops the handler's exception there)."""
    site = sigterm_inside_a_del_when_called(tmp_path, module, function)
    return run_cli(["train", *FAST, *overrides, f"run_dir={tmp_path / 'run'}"], cwd=tmp_path,
                   env={**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})


@pytest.mark.fault(fault="SIGTERM delivered while Python runs a `__del__` (or a garbage-collection callback), which "
                         "drops the handler's exception: while `tuneforge train` starts, while the run builds its "
                         "model, or while Lightning sets up the training loop",
                   outcome="the dropped stop is noted and honoured where the run next checks: the same one line, "
                           "status.json and exit 143 as an undisturbed SIGTERM there (before, the run trained to the "
                           "end and exited 0)")
@pytest.mark.parametrize("module, function, expected", [
    ("tuneforge.commands.train", "_route_library_logs", "while starting, before its run began"),
    pytest.param("tuneforge.training.run", "count_parameters", "while loading the data (step 0)",
                 marks=pytest.mark.slow),  # in CI's slow step
    ("tuneforge.training.module", "FineTuneModule.configure_optimizers", "at step 1; saved checkpoint ")])
def test_a_stop_signal_whose_exception_python_dropped_still_stops_the_run(tmp_path, module, function, expected):
    stopped = _train_with_a_dropped_sigterm(tmp_path, module, function, "trainer.max_steps=3")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Exception ignored" not in stopped.stderr and "StopSignal" not in stopped.stderr
    assert "interrupted by SIGTERM " + expected in stopped.stderr
    run_dir = tmp_path / "run"
    if "starting" in expected:
        assert not run_dir.exists()
    else:
        assert _status(run_dir)["status"] == "interrupted"


def test_a_dropped_stop_is_raised_once_and_forgotten_when_the_outermost_block_closes():
    # in-process: a dropped stop noted in one run must not stop a later run of the same process (the suite's)
    import gc
    import signal
    import sys

    from tuneforge.training.run_stop import StopSignal, raise_dropped_stop, signals_stop_the_run, take_dropped_stop

    class Dropping:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs here; Python drops its StopSignal

    hook_before = sys.unraisablehook
    with signals_stop_the_run():
        Dropping()
        gc.collect()
        with pytest.raises(StopSignal, match="SIGTERM"):
            with signals_stop_the_run():  # a nested block raises it on entering
                pass
        raise_dropped_stop()  # raised once only
        Dropping()
        assert sys.unraisablehook is not hook_before
    assert sys.unraisablehook is hook_before
    assert take_dropped_stop() is None  # forgotten with the outermost block
    with signals_stop_the_run():
        pass


def _sigterm_while_hashing_the_data(tmp_path: Path) -> str:
    """PYTHONPATH with a sitecustomize that sends the tuneforge process SIGTERM while it hashes the data
    files: after it took the run's lock, before status.json says running."""
    site = sigterm_when_called(tmp_path, "tuneforge.training.data_files", "data_file_hashes")
    return os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])


@pytest.mark.fault(fault="SIGTERM after the run took its lock, before status.json said running (the data files "
                         "being hashed)",
                   outcome="`interrupted by SIGTERM while preparing the run directory (step 0)` and the resume "
                           "command; status.json says interrupted with the phase; the directory counts as having "
                           "trained nothing, so the next start may use other settings")
def test_sigterm_before_the_running_status_leaves_an_interrupted_status(tmp_path):
    run_dir = tmp_path / "run"
    stopped = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={run_dir}"], cwd=tmp_path,
                      env={**ENV, "PYTHONPATH": _sigterm_while_hashing_the_data(tmp_path)})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = "interrupted by SIGTERM while preparing the run directory (step 0); nothing was trained yet"
    assert f"tuneforge: {line}." in stopped.stderr
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["error"] == line
    assert status["phase"] == "preparing the run directory" and not status["steps"]
    shown = run_cli(["status", str(run_dir)], cwd=tmp_path, env=ENV)
    assert f"{run_dir}  interrupted  {line}" in shown.stdout, shown.stderr[-2000:]
    other = run_cli(["train", *FAST, "trainer.max_steps=1", "adapter.r=4", f"run_dir={run_dir}"], cwd=tmp_path,
                    env=ENV)
    assert other.returncode == 0, other.stderr[-3000:]
    assert _status(run_dir)["status"] == "completed"


# ---------------------------------------------------------------------------
# 3. eval / export of a run that is still training
# ---------------------------------------------------------------------------

@pytest.mark.fault(fault="`tuneforge eval`/`export` of a run that is still training (a live process holds its lock, "
                         "status.json says running)",
                   outcome="one line: the run is still training, naming the process that holds it (pid, host, "
                           "since); wait for it to finish or give a finished run; never 'train it again'")
def test_eval_and_export_of_a_run_still_training_name_the_live_process(finished_run, tmp_path):
    from tuneforge.training.run_lock import RunLock

    live = _copy(finished_run, tmp_path / "live")
    shutil.rmtree(live / "model")  # as while it trains: no model/ yet
    (live / "status.json").write_text(json.dumps({"status": "running", "segments": []}))
    with RunLock(live, "train"):  # this test process is the live trainer
        for command in (["eval", f"run_dir={live}"], ["export", f"run_dir={live}", f"out={tmp_path / 'out'}"]):
            result = run_cli(command, cwd=tmp_path, env=ENV)
            assert result.returncode == 2, result.stderr[-3000:]
            [line] = _error_lines(result)
            assert line.startswith(f"tuneforge: error: run_dir={live} is still training: tuneforge train (pid "
                                   f"{os.getpid()} on "), line
            assert "wait for that run to finish" in line and "train it again" not in line, line
    assert not (tmp_path / "out").exists() and not (live / "eval").exists()


# ---------------------------------------------------------------------------
# 4. eval of a run on a read-only mount
# ---------------------------------------------------------------------------

@contextmanager
def _read_only(folder: Path):
    """``folder`` read-only while the block runs: a read-only bind mount for root (whom permissions do not
    stop), the write bits taken away for anyone else; skipped where neither can be had."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount {folder} read-only here ({mounted.stderr.decode().strip()})")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
            pytest.skip(f"cannot remount {folder} read-only here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.fault(fault="`tuneforge eval` of a run directory on a read-only mount (its default out is "
                         "<run_dir>/eval)",
                   outcome="one line before anything loads, naming the read-only run directory and suggesting "
                           "out=<a writable folder>; with out= elsewhere it evaluates")
def test_eval_of_a_read_only_run_directory_suggests_out(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path / "archived")
    with _read_only(run_dir):
        refused = run_cli(["eval", f"run_dir={run_dir}", "threads=1"], cwd=tmp_path, env=ENV)
        assert refused.returncode == 2, refused.stderr[-3000:]
        [line] = _error_lines(refused)
        assert f"out={run_dir / 'eval'}: run_dir={run_dir} is " in line, line
        assert ("read-only file system" in line or "not writable" in line) and "out=<a writable folder>" in line
        assert "Traceback" not in refused.stderr
        elsewhere = run_cli(["eval", f"run_dir={run_dir}", "threads=1", "evaluators=[perplexity]",
                             f"out={tmp_path / 'eval'}"], cwd=tmp_path, env=ENV)
        assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file() and not (run_dir / "eval").exists()


# ---------------------------------------------------------------------------
# 5. A config.yaml tuneforge did not write
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("content, said", [
    ("model: foo\n", "has no model, adapter or data section with a name"),
    ("foo: 1\nbar: [1, 2]\n", "has no model, adapter or data section with a name"),
    ("- a\n- b\n", "has no model, adapter or data section with a name"),
    ("model: {name: tiny}\n", "has no adapter or data section with a name"),
    ("model: ${nowhere}\nadapter: {name: lora}\ndata: {name: jsonl}\n", "has no model section with a name"),
    ("a: [b\n", "cannot be read as YAML"),
    ("", "has no model, adapter or data section with a name")])
def test_a_config_yaml_tuneforge_did_not_write_is_named_in_one_line(tmp_path, content, said):
    from tuneforge.training.run_dir import ForeignConfig, saved_config

    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ForeignConfig) as refused:
        saved_config(tmp_path, "do this")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'} ") and said in message and message.endswith("; do this")
    assert "\n" not in message


def test_the_config_yaml_of_a_run_is_read_as_its_own(finished_run):
    from tuneforge.training.run_dir import saved_config

    assert saved_config(finished_run, "never said").model.name == "tiny"


@pytest.mark.fault(fault="`tuneforge train`/`eval` on a folder holding the user's own config.yaml (`model: foo`, "
                         "an unrelated YAML)",
                   outcome="one line: <run_dir>/config.yaml was not written by tuneforge, and what to do (another "
                           "run_dir, or move the file); no traceback, no list of <unset> settings")
def test_train_and_eval_on_a_users_own_config_yaml_are_one_line(finished_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("model: foo\n")
    trained = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={mine}"], cwd=tmp_path, env=ENV)
    assert trained.returncode == 2, trained.stderr[-3000:]
    [line] = _error_lines(trained)
    assert line.startswith(f"tuneforge: error: {mine / 'config.yaml'} was not written by tuneforge"), line
    assert "give another run_dir, or move config.yaml out of the directory" in line
    assert "Traceback" not in trained.stderr and "<unset>" not in trained.stderr
    assert (mine / "config.yaml").read_text() == "model: foo\n"

    shutil.copytree(finished_run / "model", mine / "model")  # a model/ beside it: the config is what is wrong
    (mine / "config.yaml").write_text("model:\n  name: tiny\n")
    evaluated = run_cli(["eval", f"run_dir={mine}"], cwd=tmp_path, env=ENV)
    assert evaluated.returncode == 2, evaluated.stderr[-3000:]
    [line] = _error_lines(evaluated)
    assert line.startswith(f"tuneforge: error: {mine / 'config.yaml'} was not written by tuneforge: it has no "
                           "adapter or data section"), line
    assert "give the run_dir of a tuneforge train run" in line and "<unset>" not in line

"""``-m`` sweeps whose jobs run in run directories of their own (``run_dir=runs/r${adapter.r}``): run again,
the sweep skips the runs it finished (with other settings, it is refused them) and leaves them as they are;
two jobs that would share a directory are refused before any job runs; each run's job log is
``<run_dir>/train.log`` (also for a ``run_dir`` an experiment file sets), and no Hydra folder is left that
would hold only that log."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import run_cli

FAST = ["model=tiny", "threads=1", "baselines=[]", "evaluators=[]", "trainer.enable_progress_bar=false",
        "trainer.max_steps=1"]
ENV = {"OMP_NUM_THREADS": "1"}


def _error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]


def _user_conf(tmp_path: Path) -> Path:
    """A config folder with a second tiny model preset (``model=mytiny``: another size, the same seed) and an
    experiment file that sets ``run_dir``."""
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "mytiny.yaml").write_text("defaults: [tiny, _self_]\nhidden_size: 32\n"
                                                "num_attention_heads: 2\nnum_key_value_heads: 1\n")
    (conf / "experiment").mkdir()
    (conf / "experiment" / "x.yaml").write_text(
        f"# @package _global_\nrun_dir: {tmp_path / 'runs'}/from_file_${{adapter.r}}\n")
    return conf


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
@pytest.mark.fault(fault="a `-m` sweep with `run_dir=runs/r${adapter.r}` run again (its jobs find the runs it "
                         "completed)",
                   outcome="each job whose run completed with the same settings is skipped (one line each, exit "
                           "0); with a setting changed (seed=7) each job is refused in one line, recorded as failed in "
                           "its own Hydra job folder; either way the completed runs' status.json stay as they were "
                           "(`tuneforge status` says completed); each run's train.log is in its run directory and no "
                           "Hydra folder is left in the working directory")
def test_a_sweep_run_again_leaves_the_runs_it_completed_as_they_were(tmp_path):
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    command = ["train", "-m", *FAST, "adapter.r=2,4", f"run_dir={runs}/r${{adapter.r}}"]
    first = run_cli(command, cwd=cwd, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    for r in (2, 4):
        assert "`Trainer.fit` stopped" in (runs / f"r{r}" / "train.log").read_text()  # the job log, in the run
    assert list(cwd.iterdir()) == []  # no runs/multirun/<date>/<n> holding only a log
    statuses = {r: (runs / f"r{r}" / "status.json").read_bytes() for r in (2, 4)}

    same = run_cli([*command, f"hydra.sweep.dir={tmp_path / 'same'}"], cwd=cwd, env=ENV)  # a sweep resumed
    assert same.returncode == 0, same.stderr[-3000:]
    for num, r in enumerate((2, 4)):
        assert f"sweep job {num} (adapter.r={r}): completed in {runs / f'r{r}'}; skipped" in same.stdout, same.stdout
    assert {r: (runs / f"r{r}" / "status.json").read_bytes() for r in (2, 4)} == statuses  # untouched
    assert list(cwd.iterdir()) == []

    sweep = tmp_path / "sweep"
    command = [*command, "seed=7"]  # another setting: the completed runs are not this sweep's
    again = run_cli([*command, f"hydra.sweep.dir={sweep}"], cwd=cwd, env=ENV)
    assert again.returncode == 2, again.stderr[-3000:]
    assert {r: (runs / f"r{r}" / "status.json").read_bytes() for r in (2, 4)} == statuses  # untouched
    job = json.loads((sweep / "0" / "status.json").read_text())
    assert job["status"] == "failed" and "holds a completed run" in job["error"], job
    assert job["run_dir"] == str(runs / "r2") and job["job"]["num"] == 0
    assert _error_lines(again)[-1] == (f"tuneforge: error: sweep job 1 (adapter.r=4) failed: "
                                       f"{json.loads((sweep / '1' / 'status.json').read_text())['error']} "
                                       f"[{sweep / '1'}]")
    shown = run_cli(["status", str(runs)], cwd=cwd)
    assert shown.stdout.splitlines() == [f"{runs / 'r2'}  completed  1 steps", f"{runs / 'r4'}  completed  1 steps"]
    shown = run_cli(["status", str(sweep)], cwd=cwd)
    assert f"{sweep / '0'}  failed  run_dir={runs / 'r2'} holds a completed run" in shown.stdout, shown.stdout
    assert list(cwd.iterdir()) == []

    earlier = (runs / "r2" / "train.log").read_bytes()
    never = run_cli([*command, "resume=never"], cwd=cwd, env=ENV)  # the earlier run's lines are moved aside
    assert never.returncode == 0, never.stderr[-3000:]
    assert (runs / "r2" / "previous-1" / "train.log").read_bytes() == earlier
    log = (runs / "r2" / "train.log").read_text()
    assert log.startswith("[") and "resume=never: moved the earlier run's" in log.splitlines()[0], log
    assert list(cwd.iterdir()) == []


@pytest.mark.fault(fault="a first `-m` sweep with `run_dir=runs/r${adapter.r}` in a folder without `runs/` (Hydra's "
                         "sweep folder runs/multirun/<date> and the runs share the new runs/)",
                   outcome="the runs stay; only the sweep folder, left holding multirun.yaml alone, and the empty "
                           "folders above it that the command made are removed")
def test_a_first_sweep_into_a_new_runs_folder_keeps_its_runs(tmp_path):
    result = run_cli(["train", "-m", *FAST, "adapter.r=2,4", "run_dir=runs/r${adapter.r}"], cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r2", "r4"]  # no runs/multirun left either
    for r in (2, 4):
        assert json.loads((tmp_path / "runs" / f"r{r}" / "status.json").read_text())["status"] == "completed"


def test_a_failed_sweep_job_leaves_another_runs_status_as_it_is(tmp_path):
    """:func:`record_failed_job` writes into a run directory only when the job started its own run there."""
    from tuneforge.commands.sweep import FAILED_JOB_FILE, failed_jobs, record_failed_job
    from tuneforge.errors import ConfigError
    from tuneforge.training.run_dir import write_running_status, write_status

    def hydra(job_dir):
        return OmegaConf.create({"job": {"num": 0}, "overrides": {"task": ["adapter.r=2"]},
                                 "runtime": {"output_dir": str(job_dir)}})

    completed = {"status": "completed", "steps": 1}
    other, job_dir = tmp_path / "other", tmp_path / "sweep" / "0"
    other.mkdir()
    write_status(other, completed)
    record_failed_job(ConfigError("refused"), hydra(job_dir), str(other))  # refused: another run is there
    assert json.loads((other / "status.json").read_text()) == completed
    assert json.loads((job_dir / "status.json").read_text())["run_dir"] == str(other)

    in_job_dir = tmp_path / "again" / "0"  # no run_dir: the job's directory holds the earlier run
    in_job_dir.mkdir(parents=True)
    write_status(in_job_dir, completed)
    record_failed_job(ConfigError("refused"), hydra(in_job_dir))
    assert json.loads((in_job_dir / "status.json").read_text()) == completed
    assert failed_jobs(tmp_path / "again") == [f"sweep job 0 (adapter.r=2) failed: refused [{in_job_dir}]"]
    assert (in_job_dir / FAILED_JOB_FILE).is_file()

    own = tmp_path / "own"  # the job started its run there: the run's own failed status gets the job
    own.mkdir()
    write_running_status(own, None, [], 0)
    write_status(own, {"status": "failed", "error": "bad data", "steps": 0})
    record_failed_job(ConfigError("bad data"), hydra(tmp_path / "sweep" / "1"), str(own))
    status = json.loads((own / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "bad data" and status["job"]["num"] == 0


@pytest.mark.fault(fault="a `-m` sweep whose run_dir pattern gives two jobs one directory "
                         "(`model=tiny,mytiny run_dir=runs/seed${model.seed}`: both seed 0)",
                   outcome="refused before any job runs: one line naming the jobs' overrides and the shared "
                           "directory; nothing is written")
def test_a_sweep_whose_jobs_resolve_to_one_run_dir_is_refused_before_any_job(tmp_path):
    conf, cwd = _user_conf(tmp_path), tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli(["train", "-m", "--config-dir", str(conf), *FAST, "model=tiny,mytiny",
                      f"run_dir={tmp_path / 'runs'}/seed${{model.seed}}"], cwd=cwd, env=ENV)
    assert result.returncode == 2, result.stderr[-3000:]
    assert _error_lines(result) == [
        f"tuneforge: error: run_dir={tmp_path / 'runs'}/seed${{model.seed}} gives the jobs model=tiny and "
        f"model=mytiny of this -m sweep the same directory {tmp_path / 'runs' / 'seed0'}, so a later job would "
        "find an earlier job's run there; make it differ per job (a key the sweep sets, or "
        f"'run_dir={tmp_path / 'runs'}/seed${{model.seed}}/${{hydra:job.num}}'), or leave run_dir out"], \
        result.stderr[-3000:]
    assert "Launching" not in result.stderr
    assert not (tmp_path / "runs").exists() and list(cwd.iterdir()) == []


@pytest.mark.fault(fault="run_dir set in an experiment file (`# @package _global_`, used with +experiment=x)",
                   outcome="the job log is <run_dir>/train.log like any run's; no runs/<date> folder holding only "
                           "the log is left in the working directory")
def test_a_run_dir_set_in_an_experiment_file_gets_the_job_log(tmp_path):
    conf, cwd = _user_conf(tmp_path), tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli(["train", "--config-dir", str(conf), "+experiment=x", *FAST, "adapter.r=2"], cwd=cwd, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "from_file_2"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    log = (run_dir / "train.log").read_text()
    assert "`Trainer.fit` stopped" in log and "adapter lora" in log  # from the job's first line on
    assert list(cwd.iterdir()) == []


def test_the_moved_job_log_and_a_seeds_log_are_opened_like_the_job_log(tmp_path):
    """:func:`open_log_file`, which the moved job log (job_log) and a seed's log (seed_runs) are written by:
    appending, like the handler it replaces (format, level, filters, encoding), or like the job log."""
    import ast
    import logging

    from tuneforge.training.run_dir import LOG_FORMAT, log_handlers, open_log_file, same_place

    job_log = logging.FileHandler(tmp_path / "train.log", encoding="utf-8")
    job_log.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    job_log.setLevel(logging.WARNING)
    job_log.addFilter(kept := logging.Filter("tuneforge"))
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [job_log]  # the job log alone (pytest's own handlers set aside)
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "train.log").write_text("earlier\n")
        moved = open_log_file(tmp_path / "run" / "train.log", like=job_log)
        assert (moved.mode, moved.encoding, moved.formatter, moved.level, moved.filters) == \
            ("a", "utf-8", job_log.formatter, logging.WARNING, [kept])
        seed = open_log_file(tmp_path / "seed.log")  # a seed's own log: the job log's format, every level
        assert (seed.mode, seed.formatter, seed.level, seed.filters) == ("a", job_log.formatter, logging.NOTSET, [])
        assert log_handlers(tmp_path / "x" / ".." / "train.log") == [job_log]
        assert same_place(tmp_path / "run", tmp_path / "run" / ".." / "run")
        root.handlers = []
        bare = open_log_file(tmp_path / "bare.log")  # no job log: Hydra's format
        assert bare.formatter._fmt == LOG_FORMAT
        for handler in (moved, seed, bare):
            handler.close()
    finally:
        root.handlers = handlers
        job_log.close()
    assert (tmp_path / "run" / "train.log").read_text() == "earlier\n"  # appended to, never emptied
    core = Path(__file__).resolve().parents[1] / "core"
    for module in ("commands/job_log.py", "training/seed_runs.py"):  # run_dir's public functions only
        imported = [alias.name for node in ast.walk(ast.parse((core / module).read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module == "tuneforge.training.run_dir"
                    for alias in node.names]
        assert imported and not [name for name in imported if name.startswith("_")], (module, imported)

"""A ``-m`` sweep interrupted by SIGTERM/SIGINT, and the sweep directory it leaves: the printed ``Resume with:``
command is the same ``-m`` command into the same ``hydra.sweep.dir``; run so, the jobs that completed are
skipped, the interrupted job resumes from its checkpoint and the jobs not reached yet run.  A sweep into a
folder holding the user's own ``multirun.yaml`` (which Hydra's sweeper would overwrite) is refused in one line."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FIXTURES, run_cli

FAST = ["model=tiny", "threads=1", "baselines=[]", "evaluators=[]", "trainer.enable_progress_bar=false"]
ENV = {"OMP_NUM_THREADS": "1"}


def _error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]


def _status(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize("sweep_dir", ["/tmp/sweeps/2026-01-01_12-00-00", "/tmp/a sweep é=1,2"])
def test_the_resume_command_of_a_sweep_job_resumes_the_sweep(sweep_dir):
    """The same ``-m`` arguments (a per-job run_dir pattern kept; ``resume=`` and the job's own directory left
    out) into the sweep's directory, quoted for the shell and for Hydra."""
    from tuneforge.commands.train import resume_command

    args = ["-m", "model=tiny", "optim.lr=1e-4,2e-4", "run_dir=runs/lr${optim.lr}", "resume=never",
            "hydra.sweep.dir=elsewhere", "hydra.run.dir=x"]
    words = shlex.split(resume_command(args, "/tmp/runs/lr0.0002", sweep_dir))
    assert words[:-1] == ["tuneforge", "train", "-m", "model=tiny", "optim.lr=1e-4,2e-4", "run_dir=runs/lr${optim.lr}"]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(words[-1])
    assert override.key_or_group == "hydra.sweep.dir" and override.value() == sweep_dir
    single = shlex.split(resume_command(["model=tiny", "run_dir=r"], "/tmp/r"))  # a single run: as before
    assert single == ["tuneforge", "train", "model=tiny", "hydra.run.dir=/tmp/r"]


@pytest.mark.fault(fault="a `-m` sweep (default runs/multirun/<date>) interrupted by SIGTERM to its process group "
                         "while its second job trains, the first one completed",
                   outcome="exit 143 and 'Resume with:' the same -m command with hydra.sweep.dir=<the sweep dir>; "
                           "run as printed, the completed job is skipped (its files untouched), the interrupted "
                           "job resumes from its checkpoint, the job not reached yet runs; exit 0")
def test_an_interrupted_sweep_resumes_with_the_printed_command(tmp_path):
    log = tmp_path / "batches.log"
    args = ["train", "-m", *FAST, "optim.lr=1e-4,2e-4,3e-4", "trainer.max_steps=8", "checkpoint.every_n_steps=1",
            "callbacks=[batch_log]", f"callbacks.batch_log.path={log}", "callbacks.batch_log.sleep_s=0.3"]
    env = dict(os.environ, PYTHONPATH=str(FIXTURES / "steplog"), **ENV)
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", *args], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    sweep = None
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        sweep = next(iter((tmp_path / "runs" / "multirun").glob("*")), None) if sweep is None else sweep
        if sweep is not None and _status(sweep / "0").get("status") == "completed" \
                and list((sweep / "1" / "checkpoints").glob("step-*/COMPLETE")):
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)  # as a terminal's Ctrl-C or a scheduler reaches the whole group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert _status(sweep / "1")["status"] == "interrupted" and not (sweep / "2").exists()
    resume = stderr.strip().splitlines()[-1]
    assert resume.startswith("Resume with: tuneforge train -m ") and resume.endswith(f"hydra.sweep.dir={sweep}")
    assert "hydra.run.dir" not in resume
    completed = {name: (sweep / "0" / name).read_bytes() for name in ("status.json", "metrics.json", "config.yaml")}
    checkpoint = sorted((sweep / "1" / "checkpoints").glob("step-*"))[-1]

    words = shlex.split(resume.split("Resume with: ", 1)[1])  # run as printed: a changed setting is another run
    assert words[:2] == ["tuneforge", "train"]
    resumed = run_cli(words[1:], site_dirs=["steplog"], cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {name: (sweep / "0" / name).read_bytes() for name in completed} == completed  # skipped, untouched
    assert f"sweep job 0 (optim.lr=0.0001): completed in {sweep / '0'}; skipped" in resumed.stdout
    status = _status(sweep / "1")
    assert status["status"] == "completed" and status["steps"] == 8, status
    assert status["resumed_from"] == str(checkpoint)
    assert [segment["status"] for segment in status["segments"]] == ["interrupted", "completed"]
    assert _status(sweep / "2")["status"] == "completed"
    assert [p.name for p in (tmp_path / "runs" / "multirun").iterdir()] == [sweep.name]  # no second sweep folder


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
def test_a_sweep_run_again_with_resume_never_trains_its_completed_jobs_again(tmp_path):
    """resume=never is no resume: the completed job is not skipped, its earlier run goes to previous-1/."""
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *FAST, "trainer.max_steps=1", "adapter.r=2", f"hydra.sweep.dir={sweep}"]
    assert run_cli(command, cwd=tmp_path, env=ENV).returncode == 0
    again = run_cli([*command, "resume=never"], cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" not in again.stdout and (sweep / "0" / "previous-1" / "status.json").is_file()


@pytest.mark.fault(fault="a `-m` sweep into a hydra.sweep.dir holding the user's own multirun.yaml (not one a "
                         "Hydra sweep wrote), which Hydra's sweeper would overwrite with the sweep's config",
                   outcome="refused before any job in one line naming the file and why it is not a sweep's, with "
                           "the ways out (move it, another hydra.sweep.dir); the file stays as it was, no job "
                           "folder is made")
@pytest.mark.parametrize("content", ["my notes: keep me\n", "not: [yaml\n"])
def test_a_users_own_multirun_yaml_in_the_sweep_dir_is_refused_not_overwritten(tmp_path, content):
    sweep = tmp_path / "mine"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(content)
    result = run_cli(["train", "-m", *FAST, "trainer.max_steps=1", "adapter.r=2,4", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path, env=ENV)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"tuneforge: error: hydra.sweep.dir={sweep} holds a multirun.yaml that no Hydra "
                               "sweep wrote (")
    assert f"move {sweep / 'multirun.yaml'} out of the folder, or give another hydra.sweep.dir" in lines[0]
    assert (sweep / "multirun.yaml").read_text() == content
    assert [p.name for p in sweep.iterdir()] == ["multirun.yaml"] and "Launching" not in result.stderr


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
@pytest.mark.fault(fault="SIGTERM while a `-m` sweep goes on to its next job (the first job completed, the second "
                         "one starting, before its run took its lock)",
                   outcome="exit 143 and one line saying the sweep was between runs, the completed runs kept, then "
                           "'Resume with:' the same -m command with hydra.sweep.dir=<the sweep dir>; run as printed, "
                           "the completed job is skipped and the other one trains; exit 0")
def test_a_sweep_stopped_between_its_runs_says_how_to_resume_it(tmp_path):
    sweep = tmp_path / "sweep"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(  # SIGTERM when the second job starts (its log routing)
        "import os, signal\n"
        "def _patch():\n"
        "    import tuneforge.commands.train as patched\n"
        "    original, calls = patched._route_library_logs, []\n"
        "    def stop(*a, **k):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 2:\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "        return original(*a, **k)\n"
        "    patched._route_library_logs = stop\n"
        "_patch()\n")
    command = ["train", "-m", *FAST, "trainer.max_steps=1", "adapter.r=2,4", f"hydra.sweep.dir={sweep}"]
    stopped = run_cli(command, cwd=tmp_path,
                      env={**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    *_, line, resume = stopped.stderr.strip().splitlines()
    assert line == (f"tuneforge: train interrupted by SIGTERM while its -m sweep was between runs (the last run "
                    f"began: {sweep / '0'}, completed); the runs that completed are kept and are skipped when the "
                    "sweep resumes.")
    assert resume.startswith("Resume with: tuneforge train -m ") and resume.endswith(f"hydra.sweep.dir={sweep}")
    assert _status(sweep / "0")["status"] == "completed" and not _status(sweep / "1")
    resumed = run_cli(shlex.split(resume.split("Resume with: ", 1)[1])[1:], cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"sweep job 0 (adapter.r=2): completed in {sweep / '0'}; skipped" in resumed.stdout
    assert _status(sweep / "1")["status"] == "completed"

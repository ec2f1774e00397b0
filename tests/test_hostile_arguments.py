"""Run directories and keys as a hostile user writes them: names with spaces, ``é``, ``,``, ``=`` and quotes
(the printed resume command works pasted into a shell; every command takes ``run_dir`` quoted the way
``train`` needs it), a fixed ``run_dir`` in a ``-m`` sweep, a run directory inside a data folder, and
``+key`` typos.  Each refusal is one line naming what is wrong, where, and what is valid."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli, sigterm_while_the_model_loads

FAST = ["model=tiny", "threads=1", "baselines=[]", "evaluators=[]", "trainer.enable_progress_bar=false"]

#: run directory names a shell and Hydra's override grammar both treat specially
HOSTILE_NAMES = ["dir with space/run é=1,2", "q\"uo'te\\ $x [a]{b}(c):d"]


def _error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]


def _hydra_value(override: str):
    """The value Hydra's override parser and OmegaConf give the override ``key=value``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    value = OverridesParser.create().parse_override(override).value()
    return OmegaConf.create({"v": value}).v


# ---------------------------------------------------------------------------
# 1. The printed resume command, and run_dir quoted for Hydra
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/tmp/hostile/uni é dir", "/tmp/c,d", "/tmp/a=b", '/tmp/x/a"b', "/tmp/x/a'b",
                                  "/tmp/trailing\\", '/tmp/back\\"slash', "/tmp/${x}", "/tmp/[a]{b}(c):d t\tab",
                                  "/tmp/plain_name-1.2"])
def test_the_resume_command_reads_back_as_the_run_directory_in_the_shell_and_in_hydra(name):
    from tuneforge.commands.train import resume_command
    from tuneforge.host.paths import quoted_override_string, unquoted

    command = resume_command(["model=tiny", "optim.lr=1e-3", f"run_dir={name}"], name)
    words = shlex.split(command)
    assert words[:4] == ["tuneforge", "train", "model=tiny", "optim.lr=1e-3"] and len(words) == 5
    assert words[4].startswith("hydra.run.dir=") and _hydra_value(words[4]) == name
    for quote in "\"'":  # the quoting of paths.py and its inverse
        assert _hydra_value(f"k={quoted_override_string(name, quote)}") == name
        if "${" not in name:
            assert unquoted(quoted_override_string(name, quote)) == name


@pytest.mark.fault(fault="a run directory named with spaces, é, ',', '=' or quotes, interrupted",
                   outcome="the printed 'Resume with:' command, pasted into a shell as it is, resumes the run")
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_printed_resume_command_works_verbatim_for_hostile_run_directory_names(tmp_path, name):
    from tuneforge.host.paths import quoted_override_string

    run_dir = tmp_path / name
    hook = str(sigterm_while_the_model_loads(tmp_path))
    stopped = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={quoted_override_string(str(run_dir))}"],
                      cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([hook, os.environ.get("PYTHONPATH", "")])})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    printed = stopped.stderr.strip().splitlines()[-1]
    assert printed.startswith("Resume with: tuneforge train "), stopped.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    # as printed, through a shell, with `tuneforge` this interpreter's
    script = f'tuneforge() {{ "$TUNEFORGE_PYTHON" -m tuneforge "$@"; }}\n{printed[len("Resume with: "):]}\n'
    resumed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                             env=dict(os.environ, TUNEFORGE_PYTHON=sys.executable))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "train.log").is_file() and not (tmp_path / "runs").exists()


def test_a_run_dir_with_a_double_quote_goes_to_hydra_quoted(tmp_path):
    from tuneforge.commands.train import run_dir_overrides

    for given in (f'{tmp_path}/a"b', f'"{tmp_path}/a\\"b"', f"'{tmp_path}/a\"b'"):
        (override,) = run_dir_overrides([f"run_dir={given}"], [f"run_dir={given}"])
        assert _hydra_value(override) == f'{tmp_path}/a"b', (given, override)


# ---------------------------------------------------------------------------
# 2. Every command takes run_dir quoted as train needs it, or not
# ---------------------------------------------------------------------------

def test_every_command_parses_run_dir_quoted_or_not(tmp_path):
    from tuneforge.commands.chat import CHAT_OPTIONS
    from tuneforge.commands.export import EXPORT_OPTIONS
    from tuneforge.commands.generate import GENERATE_OPTIONS
    from tuneforge.commands.key_values import parse_key_values
    from tuneforge.commands.serve import parse_serve_args
    from tuneforge.commands.status import status_path

    where = tmp_path / "dir with space" / "run é=1,2"
    where.mkdir(parents=True)
    for given in (str(where), f'"{where}"', f"'{where}'"):
        arg = f"run_dir={given}"
        assert parse_key_values([arg, "prompt=hi"], GENERATE_OPTIONS, "generate")["run_dir"] == str(where)
        assert parse_key_values([arg], CHAT_OPTIONS, "chat")["run_dir"] == str(where)
        assert parse_key_values([arg, "out=x"], EXPORT_OPTIONS, "export")["run_dir"] == str(where)
        assert parse_serve_args([arg, f"serve.{arg}"])["run_dir"] == [str(where), str(where)]
        assert status_path(arg) == where
    assert status_path(f'"{where}"') == where and status_path(str(where)) == where


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A completed tiny run in a directory whose name holds a space, é, '=' and ','."""
    from tuneforge.host.paths import quoted_override_string

    root = tmp_path_factory.mktemp("hostile")
    run_dir = root / "dir with space" / "run é=1,2"
    result = run_cli(["train", *FAST, "trainer.max_steps=1", f"run_dir={quoted_override_string(str(run_dir))}"],
                     cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.fault(fault="`tuneforge eval`/`generate`/`status` given run_dir quoted as train needs it "
                         "('run_dir=\"/runs/a b\"')",
                   outcome="the same run as unquoted: one level of matching quotes is taken off, as Hydra does")
def test_eval_generate_and_status_take_run_dir_quoted_as_train_does(hostile_run, tmp_path):
    quoted = f'run_dir="{hostile_run}"'
    evaluated = run_cli(["eval", quoted, "baselines=[]", "evaluators=[perplexity]", f"out={tmp_path / 'eval'}"],
                        cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()
    status = run_cli(["status", quoted], cwd=tmp_path)
    assert status.returncode == 0 and "completed" in status.stdout, status.stderr[-2000:]
    generated = run_cli(["generate", quoted, "prompt=hi", "max_new_tokens=2", "threads=1"], cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr[-3000:]


# ---------------------------------------------------------------------------
# 3. A -m sweep with a run_dir every job would share
# ---------------------------------------------------------------------------

@pytest.mark.fault(fault="a `-m` sweep given one fixed run_dir for all its jobs",
                   outcome="refused before any job runs: one line saying to leave run_dir out or make it per job "
                           "(${hydra:job.num}); nothing is written")
def test_a_sweep_with_a_fixed_run_dir_is_refused_before_any_job(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli(["train", "-m", *FAST, "trainer.max_steps=1", "optim.lr=1e-3,1e-2",
                      f"run_dir={tmp_path / 'X'}"], cwd=cwd)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"run_dir={tmp_path / 'X'} is shared by all 2 jobs of this -m sweep" in lines[0]
    assert "leave run_dir out" in lines[0] and "${hydra:job.num}" in lines[0]
    assert "Launching" not in result.stderr  # no job started
    assert not (tmp_path / "X").exists() and list(cwd.iterdir()) == []


def _sweep_config(run_dir, task, params=None):
    from omegaconf import OmegaConf

    return OmegaConf.create({"run_dir": run_dir, "hydra": {"overrides": {"task": task},
                                                           "sweeper": {"params": params}}})


@pytest.mark.parametrize("run_dir, task, params, refused", [
    (None, ["optim.lr=1,2"], None, None),
    ("/x", ["optim.lr=1"], None, None),  # one job
    ("/x/${hydra:job.num}", ["optim.lr=1,2"], None, None),
    ("/x/lr_${optim.lr}", ["optim.lr=1,2"], None, None),
    ("/x/${model.name}", ["model=tiny,hf"], None, None),
    ("/x/${hydra:runtime.choices.model}", ["model=tiny,hf"], None, None),  # the group's choice, per job
    ("/x/${hydra:job.override_dirname}", ["optim.lr=1,2"], None, None),
    ("/x/${hydra:overrides.task}", ["optim.lr=1,2"], None, None),
    (None, ["run_dir=/a,/b"], None, None),
    (None, ["run_dir=/a/${hydra:job.id},/b/${hydra:job.id}", "optim.lr=1,2"], None, None),
    ("/x", ["optim.lr=1,2"], None, "run_dir=/x is shared by all 2 jobs"),
    ("/x", ["optim.lr=range(1,4)"], None, "run_dir=/x is shared by all 3 jobs"),
    ("/x", [], {"optim.lr": "1,2"}, "run_dir=/x is shared by all 2 jobs"),
    ("/x/${oc.env:HOME}", ["optim.lr=1,2"], None, "is shared by all 2 jobs"),
    (None, ["run_dir=/a,/b", "optim.lr=1,2"], None, "run_dir=/a,/b gives 2 directories to the 4 jobs"),
    (None, ["run_dir=/a,/a"], None, "gives 1 directory to the 2 jobs"),
    ("/x/${hydra.job.num}", ["optim.lr=1,2"], None, "write it with Hydra's resolver: ${hydra:job.num}"),
])
def test_which_sweep_run_dirs_vary_per_job(run_dir, task, params, refused):
    from tuneforge.host.hydra_dirs import sweep_run_dir_problem

    problem = sweep_run_dir_problem(_sweep_config(run_dir, task, params))
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem and "\n" not in problem, problem


# ---------------------------------------------------------------------------
# 4. A run directory inside a data folder
# ---------------------------------------------------------------------------

def _data_folder(tmp_path) -> Path:
    folder = tmp_path / "D"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n"
                                                for i in range(12)))
    return folder


@pytest.mark.fault(fault="run_dir inside a data folder (data=files data.path=D run_dir=D/run)",
                   outcome="refused before anything is written: one line naming the run directory and the data "
                           "folder's key")
@pytest.mark.parametrize("data, where", [("files", "run_dir=D/run"), ("jsonl", "hydra.run.dir=D"),
                                         ("files", "run_dir=D")])
def test_a_run_directory_inside_a_data_folder_is_refused_before_anything_is_written(tmp_path, data, where):
    folder = _data_folder(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    key, _, rest = where.partition("=")
    target = tmp_path / rest
    result = run_cli(["train", *FAST, "trainer.max_steps=1", f"data={data}", f"data.path={folder}",
                      f"{key}={target}"], cwd=cwd)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _error_lines(result)
    assert lines == [f"tuneforge: error: the run directory {target} is inside the data folder data.path={folder}: "
                     "the run would read its own files as data and change the folder's content hash; put run_dir "
                     f"(or hydra.run.dir) outside {folder}"], result.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["train.jsonl"]  # no train.log, no run folder
    assert list(cwd.iterdir()) == []


def test_validation_refuses_a_run_dir_inside_a_data_folder_and_takes_one_beside_it(tmp_path):
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    folder = _data_folder(tmp_path)
    plugins = load_plugins([])
    inside = validate(compose(["data=files", f"data.path={folder}", f"run_dir={folder / 'sub' / 'run'}"]), plugins)
    assert [p.key for p in inside] == ["data.path"] and f"data folder data.path={folder}" in str(inside[0])
    assert validate(compose(["data=files", f"data.path={folder}", f"run_dir={tmp_path / 'D-run'}"]), plugins) == []
    single_file = folder / "train.jsonl"  # a data file's folder is not a data folder
    assert validate(compose(["data=jsonl", f"data.path={single_file}", f"run_dir={folder / 'run'}"]), plugins) == []


# ---------------------------------------------------------------------------
# 5. +key typos
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, line", [
    ("+trainer.max_stepz=3", "unknown config key 'trainer.max_stepz' (did you mean 'max_steps'?); valid keys of "
                             "trainer: max_steps, max_epochs"),
    ("+optim.weight_decayy=0.5", "unknown config key 'optim.weight_decayy' (did you mean 'weight_decay'?); "
                                 "valid keys of optim: lr, weight_decay"),
    ("+unknown=1", "unknown config key 'unknown'; valid keys: model, data, adapter"),
    ("+lr=0.5", "unknown config key 'lr' (did you mean 'optim.lr'?); valid keys: model, data"),
    ("+trainer.max_steps.x=1", None),  # Hydra itself refuses a key below a value
])
def test_added_keys_outside_the_schema_are_refused_with_the_closest_key(override, line):
    from tuneforge.errors import ConfigError
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    plugins = load_plugins([])
    if line is None:
        with pytest.raises(ConfigError):
            compose([override])
        return
    problems = [str(p) for p in validate(compose([override]), plugins)]
    assert len(problems) == 1 and problems[0].startswith(line), problems


@pytest.mark.parametrize("overrides", [
    ["+experiment=legal_citations"], ["+experiment=legal_citations_grpo"], ["+evaluators=[rouge]"],
    ["+strategy.kwargs.timeout=60"], ["++trainer.max_steps=3"], ["++optim.lr=0.01"],
    ["callbacks=[targets]", "+callbacks.targets.checks.t='steps >= 1'"],
])
def test_documented_additions_still_validate(overrides, smollm2_placeholder):
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    plugins = load_plugins(overrides)  # first: it registers the config groups compose reads
    assert validate(compose(overrides), plugins) == []


@pytest.mark.fault(fault="a `+key` typo (+trainer.max_stepz=3, +unknown=1)",
                   outcome="one line naming the key, the closest valid key and the valid keys; exit 2, nothing run")
def test_an_added_typo_is_refused_on_the_command_line(tmp_path):
    result = run_cli(["train", *FAST, "+trainer.max_stepz=3", f"run_dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _error_lines(result)
    assert len(lines) == 1 and "unknown config key 'trainer.max_stepz' (did you mean 'max_steps'?)" in lines[0]
    assert list(tmp_path.iterdir()) == []

"""A user's own config folder (``--config-dir``, ``hydra.searchpath``): files that tuneforge's built-in ones
would shadow are refused, a saved run's config re-runs, and mistakes inside the user's files are one line
naming the file."""

import functools
import logging
from pathlib import Path

import pytest
import yaml

from helpers import run_cli
from tuneforge.errors import ConfigError


@functools.lru_cache(maxsize=None)
def plugins():
    from tuneforge.host.compose import load_plugins

    return load_plugins([])


def compose(folder, *overrides):
    """The config composed with ``folder`` on Hydra's search path (as ``--config-dir`` puts it)."""
    from tuneforge.host.compose import compose as compose_config

    plugins()  # plugin configs are in Hydra's ConfigStore before composing
    return compose_config([f"hydra.searchpath=[file://{folder}]", *overrides])


def write(folder: Path, relative: str, text: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refusal(folder, *overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        compose(folder, *overrides)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------------------
# A user file at a built-in file's path
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("relative, select", [("trainer/smoke.yaml", "trainer=my_smoke"),
                                              ("experiment/legal_citations.yaml", "+experiment=my_legal_citations"),
                                              ("config.yaml", "--config-name my_config")])
def test_a_user_file_a_built_in_one_shadows_is_refused_naming_both_and_another_name(tmp_path, relative, select):
    from tuneforge.host.config_files import builtin_dir

    ours = (builtin_dir() / relative).read_text()
    write(tmp_path, relative, ours)  # an identical copy changes nothing: harmless
    compose(tmp_path)
    path = write(tmp_path, relative, ours + "\nseed: 3\n")
    message = refusal(tmp_path)
    assert f"{path} is ignored: tuneforge's built-in {relative} has the same name" in message
    assert select in message


def saved_run_config(tmp_path, *overrides) -> Path:
    """A run's ``config.yaml`` as tuneforge saves it: the resolved config, no defaults list."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    cfg = compose(tmp_path, *overrides, f"run_dir={run_dir}")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    return run_dir


def test_a_saved_run_config_is_refused_as_config_and_re_runs_under_another_name(tmp_path):
    run_dir = saved_run_config(tmp_path, "model=tiny", "adapter=ia3", "baselines=[retrieval]",
                               "evaluators=[perplexity]", "trainer.max_steps=1", "threads=1", "data.max_examples=20")
    refused = run_cli(["train", "--config-dir", str(run_dir), "--config-name", "config", "--cfg", "job"],
                      cwd=tmp_path)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    copy = run_dir / "my_run.yaml"
    assert f"cp {run_dir / 'config.yaml'} {copy} && tuneforge train --config-dir {run_dir} --config-name my_run" \
        in refused.stderr
    copy.write_bytes((run_dir / "config.yaml").read_bytes())
    again = tmp_path / "again"
    result = run_cli(["train", "--config-dir", str(run_dir), "--config-name", "my_run", f"run_dir={again}"],
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    saved, rerun = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run_dir, again))
    assert rerun.pop("run_dir") == str(again) and saved.pop("run_dir") == str(run_dir)
    assert rerun == saved  # the same components, every saved key accepted as it was
    assert rerun["adapter"]["name"] == "ia3" and list(rerun["baselines"]) == ["retrieval"]
    other = run_cli(["train", "--config-dir", str(run_dir), "--config-name", "my_run", "adapter=lora", "--cfg", "job"],
                    cwd=tmp_path)  # ia3's settings are saved in the file: another component is refused naming it
    [line] = other.stderr.strip().splitlines()
    assert line.startswith("tuneforge: error: unknown config key 'adapter.feedforward_modules'"), line
    from tuneforge.host.config_files import key_line

    assert line.endswith(f" in {copy}{key_line(copy, 'adapter.feedforward_modules')} (a run's saved config: it keeps "
                         "its components' settings, so override values, not components; for another component write "
                         "a config of your own)"), line
    assert key_line(copy, "adapter.feedforward_modules")  # the line of the key


# ---------------------------------------------------------------------------
# Defaults lists that recurse
# ---------------------------------------------------------------------------

def test_a_preset_that_lists_itself_is_one_line_naming_it_and_another_name(tmp_path):
    path = write(tmp_path, "model/tiny.yaml", "defaults:\n  - tiny\n  - _self_\nhidden_size: 16\n")
    message = refusal(tmp_path)
    assert f"{path} lists itself in its defaults list" in message
    assert "my_tiny.yaml" in message and "model=my_tiny" in message
    write(tmp_path, "model/my_tiny.yaml", "defaults:\n  - tiny\n  - _self_\nhidden_size: 16\n")
    (tmp_path / "model" / "tiny.yaml").unlink()
    assert compose(tmp_path, "model=my_tiny").model.hidden_size == 16  # what the message says works


def test_two_presets_listing_each_other_are_named(tmp_path):
    loop1 = write(tmp_path, "model/loop1.yaml", "defaults: [loop2]\n")
    loop2 = write(tmp_path, "model/loop2.yaml", "defaults: [loop1]\n")
    message = refusal(tmp_path, "model=loop1")
    assert "cycle" in message and str(loop1) in message and str(loop2) in message


def test_a_defaults_cycle_on_the_command_line_is_one_line(tmp_path):
    write(tmp_path, "conf/model/tiny.yaml", "defaults:\n  - tiny\n  - _self_\n")
    result = run_cli(["train", "--config-dir", str(tmp_path / "conf"), "--cfg", "job"], cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-2000:]
    assert "lists itself in its defaults list" in result.stderr


# ---------------------------------------------------------------------------
# Mistakes inside the user's files
# ---------------------------------------------------------------------------

GLOBAL = "# @package _global_\n"
FILE_MISTAKES = {
    "unknown key": ("experiment/typo.yaml", GLOBAL + "trainer:\n  max_stepz: 2\n", "+experiment=typo",
                    ["unknown config key 'trainer.max_stepz' in {file}:3", "did you mean 'max_steps'",
                     "valid keys of trainer: "]),
    "bad value": ("experiment/typo.yaml", GLOBAL + "adapter:\n  r: eight\n", "+experiment=typo",
                  ["bad value for 'adapter.r' in {file}:3: ", "'eight'", "; adapter.r takes int"]),
    "no header": ("experiment/typo.yaml", "trainer:\n  max_steps: 2\n", "+experiment=typo",
                  ["{file} has no '# @package _global_' header", "as its first line"]),
    "empty": ("experiment/typo.yaml", "", "+experiment=typo", ["{file}", "'# @package _global_'"]),
    "a list": ("experiment/typo.yaml", "- a\n- b\n", "+experiment=typo", ["{file} holds a YAML list"]),
    "list group value": ("experiment/typo.yaml", GLOBAL + "evaluators: [exact_match]\n", "+experiment=typo",
                         ["'evaluators: [exact_match]' in {file}:2", "'- override /evaluators: [exact_match]'"]),
    "no baselines value": ("experiment/typo.yaml", GLOBAL + "baselines: []\n", "+experiment=typo",
                           ["{file}:2", "'- override /baselines: []'"]),
    "nested": ("trainer/nested.yaml", "trainer:\n  max_steps: 1\n", "trainer=nested",
               ["the keys of {file}:1 are already inside 'trainer'"]),
    "global group file": ("trainer/glob.yaml", GLOBAL + "max_steps: 1\n", "trainer=glob",
                          ["{file} starts with '# @package _global_'", "only experiment files"]),
    "global group file with defaults": ("trainer/glob.yaml", GLOBAL + "defaults:\n  - default\n  - _self_\n",
                                        "trainer=glob", ["{file} starts with '# @package _global_'"]),
    "choice twice": ("experiment/typo.yaml", GLOBAL + "defaults:\n  - /model: mytiny\n", "+experiment=typo",
                     ["{file}: its defaults list chooses 'model' again", "'- override /model: mytiny'"]),
}


@pytest.mark.parametrize("case", sorted(FILE_MISTAKES))
def test_a_mistake_in_a_user_file_is_one_line_naming_the_file(tmp_path, case):
    relative, text, select, expected = FILE_MISTAKES[case]
    write(tmp_path, "model/mytiny.yaml", "defaults:\n  - tiny\n  - _self_\n")
    path = write(tmp_path, relative, text)
    message = refusal(tmp_path, select)
    for part in expected:
        assert part.format(file=path) in message, message


def test_a_mistake_in_a_user_file_is_named_by_tuneforge_train(tmp_path):
    path = write(tmp_path, "conf/experiment/typo.yaml", GLOBAL + "trainer:\n  max_stepz: 2\n")
    result = run_cli(["train", "--config-dir", str(tmp_path / "conf"), "+experiment=typo", "--cfg", "job"],
                     cwd=tmp_path)
    assert result.returncode != 0
    assert f"unknown config key 'trainer.max_stepz' in {path}:3 (did you mean 'max_steps'?)" in result.stderr


def test_an_empty_list_group_mapping_in_an_experiment_warns(tmp_path, caplog):
    path = write(tmp_path, "experiment/none.yaml", GLOBAL + "baselines: {}\n")
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        cfg = compose(tmp_path, "+experiment=none")
    assert sorted(cfg.baselines) == ["few_shot", "majority", "retrieval"]  # what Hydra makes of it
    assert f"'baselines: {{}}' in {path}:2 changes nothing" in caplog.text
    assert "'- override /baselines: []'" in caplog.text
    write(tmp_path, "experiment/none.yaml", GLOBAL + "defaults:\n  - override /baselines: []\n  - _self_\n")
    assert dict(compose(tmp_path, "+experiment=none").baselines) == {}  # what the warning says works


# ---------------------------------------------------------------------------
# Hydra's flags
# ---------------------------------------------------------------------------

def test_info_takes_its_value_as_the_next_argument(tmp_path):
    from tuneforge.commands.train import hydra_overrides

    assert hydra_overrides(["--info", "defaults", "model=tiny"]) == ["model=tiny"]
    assert hydra_overrides(["-i", "searchpath"]) == []
    assert hydra_overrides(["--info", "model=tiny"]) == ["model=tiny"]
    result = run_cli(["train", "--info", "searchpath", "--config-dir", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pkg://tuneforge.conf" in result.stdout and str(tmp_path) in result.stdout


def test_config_dir_reaches_help_config_plan_and_data_show_and_valid_choices_list_the_users_presets(tmp_path):
    conf = tmp_path / "conf"
    write(conf, "model/mytiny.yaml", "defaults: [tiny, _self_]\nhidden_size: 32\nnum_attention_heads: 2\n"
                                      "num_key_value_heads: 1\n")
    write(conf, "experiment/exp1.yaml", "# @package _global_\ndefaults:\n  - override /model: mytiny\n  - _self_\n"
                                        "adapter: {r: 4}\n")
    helped = run_cli(["train", "--config-dir", str(conf), "--help", "model=mytiny"], cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "  model         hf, *mytiny, smollm2, tiny" in helped.stdout
    experiment = run_cli(["train", "--config-dir", str(conf), "--help", "+experiment=exp1"], cwd=tmp_path)
    # the preset the experiment selects is marked and shown with its own values, not the component it extends
    assert "  model         hf, *mytiny, smollm2, tiny" in experiment.stdout, experiment.stderr
    assert "\nmodel=mytiny  [preset " in experiment.stdout and "  model.hidden_size              int = 32" in \
        experiment.stdout
    assert "  model.hidden_size = " not in experiment.stdout  # the preset's own value, not the experiment's
    assert "  adapter.r = 4  (default 8)" in experiment.stdout, experiment.stderr
    groups = run_cli(["config", "groups", f"--config-dir={conf}"], cwd=tmp_path)
    assert f"preset {conf / 'model' / 'mytiny.yaml'} (your config folder)" in groups.stdout, groups.stderr
    shown = run_cli(["config", "show", "-cd", str(conf), "model=mytiny"], cwd=tmp_path)
    assert shown.stdout.startswith("model=mytiny  [preset "), shown.stderr
    write(tmp_path / "other", "model/bare.yaml", "defaults: [tiny]\n")
    bare = run_cli(["config", "show", "-cd", str(tmp_path / "other"), "model=bare"], cwd=tmp_path)
    assert "  a preset of model=tiny: it sets no values of its own\n" in bare.stdout, bare.stderr
    planned = run_cli(["plan", "--config-dir", str(conf), "model=mytiny"], cwd=tmp_path)
    assert planned.returncode == 0 and "fits" in planned.stdout, planned.stderr
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"instruction": "q{i}", "output": "a{i}"}}\n' for i in range(12)))
    show = run_cli(["data", "show", "--config-dir", str(conf), "model=mytiny", f"data.path={data}"], cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    typo = run_cli(["train", "--config-dir", str(conf), "model=mytyni"], cwd=tmp_path)
    assert typo.stderr.startswith("tuneforge: error: unknown choice 'mytyni' for 'model' (did you mean 'mytiny'?); "
                                  "valid: hf, mytiny, smollm2, tiny"), typo.stderr


def test_cfg_job_with_a_config_dir_prints_the_config_the_run_keeps(tmp_path):
    conf = tmp_path / "conf"
    write(conf, "experiment/ev.yaml", "# @package _global_\ndefaults:\n  - override /evaluators: [exact_match, rouge]\n"
                                      "  - _self_\nevaluators:\n  exact_match: {max_new_tokens: 4}\n")
    job = run_cli(["train", "--config-dir", str(conf), "+experiment=ev", "evaluators=[perplexity]", "--cfg", "job"],
                  cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    evaluators = yaml.safe_load(job.stdout)["evaluators"]
    assert list(evaluators) == ["perplexity"]  # neither rouge nor exact_match's leftover setting
    assert "settings for evaluators.exact_match ignored: not selected (evaluators=[perplexity])" in job.stderr


def test_eval_of_a_run_takes_a_config_dir(tmp_path):
    conf = tmp_path / "conf"
    write(conf, "model/mytiny.yaml", "defaults: [tiny, _self_]\nhidden_size: 32\nnum_attention_heads: 2\n"
                                      "num_key_value_heads: 1\n")
    run = tmp_path / "run"
    trained = run_cli(["train", "--config-dir", str(conf), "model=mytiny", "trainer.max_steps=1", "baselines=[]",
                       "threads=1", f"run_dir={run}"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = run_cli(["eval", "--config-dir", str(conf), f"run_dir={run}", f"out={tmp_path / 'eval'}",
                         "baselines=[]"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (tmp_path / "eval" / "report.md").is_file()


# ---------------------------------------------------------------------------
# The --config-dir flag itself
# ---------------------------------------------------------------------------

MY_TINY = "defaults: [tiny, _self_]\nhidden_size: 32\nnum_attention_heads: 2\nnum_key_value_heads: 1\n"


@pytest.mark.parametrize("name", ["my conf", "conf é", "a,b", "it's \"here\"", "x=${y}", "back\\slash"])
def test_a_config_dir_of_any_name_is_a_searchpath_entry_hydra_reads_back(tmp_path, name):
    from tuneforge.commands.train import hydra_overrides
    from tuneforge.host.config_files import config_dir_as_searchpath, config_dirs

    folder = tmp_path / name
    write(folder, "model/mytiny.yaml", MY_TINY)
    overrides = hydra_overrides(config_dir_as_searchpath(["--config-dir", str(folder), "model=mytiny"]))
    assert config_dirs((), overrides) == [folder]
    from tuneforge.host.compose import compose as compose_config

    plugins()
    assert compose_config(overrides).model.hidden_size == 32  # Hydra found the preset in that folder


def test_a_config_dir_with_a_space_an_accent_and_a_comma_reaches_every_command(tmp_path):
    conf = tmp_path / "my conf, é"
    write(conf, "model/mytiny.yaml", MY_TINY)
    shown = run_cli(["config", "show", "--config-dir", str(conf), "model=mytiny"], cwd=tmp_path)
    assert shown.stdout.startswith(f"model=mytiny  [preset {conf / 'model' / 'mytiny.yaml'}"), shown.stderr
    groups = run_cli(["config", "groups", f"--config-dir={conf}"], cwd=tmp_path)
    assert f"preset {conf / 'model' / 'mytiny.yaml'} (your config folder)" in groups.stdout, groups.stderr
    helped = run_cli(["train", "-cd", str(conf), "--help", "model=mytiny"], cwd=tmp_path)
    assert "  model         hf, *mytiny, smollm2, tiny" in helped.stdout, helped.stderr
    job = run_cli(["train", "--config-dir", str(conf), "model=mytiny", "--cfg", "job"], cwd=tmp_path)
    assert job.returncode == 0 and yaml.safe_load(job.stdout)["model"]["hidden_size"] == 32, job.stderr
    planned = run_cli(["plan", "--config-dir", str(conf), "model=mytiny"], cwd=tmp_path)
    assert planned.returncode == 0 and "fits" in planned.stdout, planned.stderr


def test_two_config_dirs_are_refused_naming_both_with_a_command_that_reads_both(tmp_path):
    import shlex

    from tuneforge.host.config_files import given_config_dir

    first, second = tmp_path / "conf", tmp_path / "more conf"
    write(first, "experiment/exp1.yaml", "# @package _global_\nadapter: {r: 4}\n")
    write(second, "model/mytiny.yaml", MY_TINY)
    assert given_config_dir(["-cd", str(first), f"--config-dir={first}/"]) == first  # the same folder twice: fine
    for command in (["train", "--cfg", "job"], ["plan"], ["config", "show", "model=tiny"]):
        refused = run_cli([*command, "--config-dir", str(first), "-cd", str(second)], cwd=tmp_path)
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith(f"tuneforge: error: --config-dir is given 2 times ({first}, {second}), and Hydra "
                               "would read the last one only; "), line
    suggested = shlex.split(line.split("as hydra.searchpath: ", 1)[1])
    assert suggested == ["--config-dir", str(first), f'hydra.searchpath=["file://{second}"]']
    job = run_cli(["train", *suggested, "model=mytiny", "+experiment=exp1", "--cfg", "job"], cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert yaml.safe_load(job.stdout)["model"]["hidden_size"] == 32 and yaml.safe_load(job.stdout)["adapter"]["r"] == 4
    shown = run_cli(["config", "show", *suggested, "model=mytiny", "+experiment=exp1"], cwd=tmp_path)
    assert shown.returncode == 0 and "(your config folder)" in shown.stdout, shown.stderr


def test_a_config_dir_that_is_a_file_or_no_folder_is_one_line_saying_so(tmp_path):
    preset = write(tmp_path, "conf/experiment/exp1.yaml", "# @package _global_\nadapter: {r: 4}\n")
    other = write(tmp_path, "my_run.yaml", "seed: 1\n")
    for command in (["train", "--cfg", "job"], ["plan"], ["train", "--help"], ["config", "groups"]):
        result = run_cli([*command, "--config-dir", str(preset)], cwd=tmp_path)
        assert result.stderr.strip() == (f"tuneforge: error: --config-dir {preset} is a file; --config-dir takes the "
                                         "folder that holds your config files; to select this one: --config-dir "
                                         f"{tmp_path / 'conf'} +experiment=exp1"), result.stderr
    result = run_cli(["train", "--config-dir", str(other), "--cfg", "job"], cwd=tmp_path)
    assert result.stderr.strip().endswith(f"to select this one: --config-dir {tmp_path} --config-name my_run")
    searchpath = run_cli(["plan", f"hydra.searchpath=[file://{other}]"], cwd=tmp_path)
    assert f"hydra.searchpath entry {other} is a file; hydra.searchpath lists folders" in searchpath.stderr
    for command in (["train", "--cfg", "job"], ["plan"]):  # plan used to go on without a word
        missing = run_cli([*command, "--config-dir", str(tmp_path / "nope")], cwd=tmp_path)
        assert missing.stderr.strip() == (f"tuneforge: error: --config-dir {tmp_path / 'nope'}: no such folder; give "
                                          "the folder that holds your config files (e.g. conf, with "
                                          "conf/model/my_tiny.yaml, conf/experiment/my_run.yaml)"), missing.stderr


# ---------------------------------------------------------------------------
# A run's saved config re-run: mistakes in it, its run_dir, a run of several seeds
# ---------------------------------------------------------------------------

def saved_copy(tmp_path, replace: tuple = (), *overrides) -> tuple:
    """A run's saved ``config.yaml`` copied as ``<run_dir>/my_run.yaml`` with the text ``replace``
    (``(old, new)``) replaced: ``(file, line number of new)``."""
    run_dir = saved_run_config(tmp_path, "model=tiny", "trainer.max_steps=1", "threads=1", *overrides)
    text = (run_dir / "config.yaml").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    copy = run_dir / "my_run.yaml"
    copy.write_text(text)
    start = text.index(replace[1]) + len(replace[1]) - len(replace[1].lstrip("\n")) if replace else 0
    line = text[:start].count("\n") + 1 if replace else None
    return copy, line


SAVED_MISTAKES = {
    "bad value": (("\n  r: 8\n", "\n  r: eight\n"), ["bad value for 'adapter.r' in {file}:{line}: Value 'eight'",
                                                     "; adapter.r takes int"]),
    "root value": (("\nseed: 42\n", "\nseed: abc\n"), ["bad value for 'seed' in {file}:{line}: ",
                                                       "; seed takes int"]),
    "list for a number": (("\n  max_steps: 1\n", "\n  max_steps: [1, 2]\n"),
                          ["bad value for 'trainer.max_steps' in {file}:{line}: Value '[1, 2]'",
                           "trainer.max_steps takes int"]),
    "list group as a list": (("\nevaluators:\n  perplexity:\n", "\nevaluators: [exact_match]\nold:\n  perplexity:\n"),
                             ["'evaluators: [exact_match]' in {file}:{line} is a list; in a run's saved config "
                              "evaluators is a mapping of each chosen one to its settings: "
                              "'evaluators: {{exact_match: {{}}}}'"]),
    "section as a list": (("\ntrainer:\n", "\ntrainer: [1]\nold:\n"),
                          ["'trainer' in {file}:{line} is a list; in a run's saved config 'trainer' is a mapping"]),
}


@pytest.mark.parametrize("case", sorted(SAVED_MISTAKES))
def test_a_mistake_in_a_saved_run_config_is_one_line_naming_file_line_key_and_what_is_valid(tmp_path, case):
    replace, expected = SAVED_MISTAKES[case]
    copy, line = saved_copy(tmp_path, replace)
    result = run_cli(["train", "--config-dir", str(copy.parent), "--config-name", "my_run", "--cfg", "job"],
                     cwd=tmp_path)
    [said] = result.stderr.strip().splitlines()
    for part in expected:
        assert part.format(file=copy, line=line) in said, said


def test_a_saved_run_config_value_the_run_refuses_names_the_file_and_line(tmp_path):
    copy, line = saved_copy(tmp_path, ("\n  scheduler: cosine\n", "\n  scheduler: cosinus\n"))
    result = run_cli(["train", "--config-dir", str(copy.parent), "--config-name", "my_run"], cwd=tmp_path,
                     env={"OMP_NUM_THREADS": "1"})
    [said] = result.stderr.strip().splitlines()
    assert said.startswith("tuneforge: error: optim.scheduler: must be one of "), said
    assert said.endswith(f"got 'cosinus' (did you mean 'cosine'?) (in {copy}:{line})"), said


def test_an_edited_run_dir_in_a_saved_run_config_is_not_used_and_says_what_to_do(tmp_path, caplog):
    from tuneforge.host.config_files import saved_run_args

    copy, _ = saved_copy(tmp_path)
    args = ["--config-dir", str(copy.parent), "--config-name", "my_run"]
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        saved_run_args(args, [copy.parent])  # the saved run's own run_dir: a new one, without a word
    assert not caplog.records
    edited = tmp_path / "new run é"
    text = copy.read_text().replace(f"run_dir: {copy.parent}", f"run_dir: {edited}")
    copy.write_text(text)
    line = text[:text.index(f"run_dir: {edited}")].count("\n") + 1
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        saved_run_args([*args, f"run_dir={edited}"], [copy.parent])  # chosen on the command line: no warning
        assert not caplog.records
        saved_run_args(args, [copy.parent])
    [record] = caplog.records
    assert record.getMessage() == (f"run_dir: {edited} in {copy}:{line} is not used: a re-run of a saved config gets "
                                   "a new run directory, as a run without run_dir= does (the file's run_dir is the "
                                   f"saved run's); to train in {edited}, give it on the command line: "
                                   f"'run_dir=\"{edited}\"'")
    job = run_cli(["train", *args, "--cfg", "job"], cwd=tmp_path)
    assert yaml.safe_load(job.stdout)["run_dir"] is None and "is not used" in job.stderr, job.stderr
    job = run_cli(["train", *args, f'run_dir="{edited}"', "--cfg", "job"], cwd=tmp_path)
    assert yaml.safe_load(job.stdout)["run_dir"] == str(edited) and "is not used" not in job.stderr, job.stderr


def test_a_seed_runs_saved_config_re_runs_every_seed_as_readme_says(tmp_path):
    """README: an ``evidence.seeds=N`` run has no ``config.yaml`` of its own; its first seed's, re-run with
    ``evidence.seeds=N``, is the command's config again."""
    from omegaconf import OmegaConf

    from tuneforge.training.run_dir import resolved_config_yaml
    from tuneforge.training.seed_runs import seed_runs

    command = ["model=tiny", "trainer.max_steps=1", "evidence.seeds=2", "seed=7"]
    cfg = compose(tmp_path, *command, f"run_dir={tmp_path / 'seeds'}")
    first = seed_runs(cfg, tmp_path / "seeds")[0]
    conf = write(tmp_path, "conf/my_run.yaml", resolved_config_yaml(first.config)).parent
    job = run_cli(["train", "--config-dir", str(conf), "--config-name", "my_run", "evidence.seeds=2", "--cfg", "job"],
                  cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    rerun = yaml.safe_load(job.stdout)
    original = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    assert rerun.pop("run_dir") is None and original.pop("run_dir") == str(tmp_path / "seeds")
    assert rerun == original  # the seeds' command: seed 7 first, 2 seeds


def test_a_ddp_child_composes_with_the_commands_config_dir_and_config_name(tmp_path):
    from tuneforge.commands.train import config_flags

    conf = tmp_path / "conf é"
    conf.mkdir()
    assert config_flags(["model=tiny", f"--config-dir={conf}/", "-cn", "my_run", "seed=1"]) == [
        "--config-dir", str(conf), "--config-name", "my_run"]
    assert config_flags(["model=tiny"]) == []

"""Warts a third-party plugin author hit, each now one line: early stopping without validation,
an unparsable override, and `tuneforge eval` on a run whose plugin is gone."""

import importlib
import json
import sys
from dataclasses import dataclass

import pytest

import tuneforge
from helpers import FIXTURES, run_cli
from tuneforge.errors import ConfigError
from tuneforge.host.compose import plugin_selection
from tuneforge.testing import run_tiny_fit

NO_VALIDATION = "callbacks.early_stopping acts only when validation runs"


@dataclass
class _SpyConfig:
    """seed: unused."""

    seed: int = 0


class LoadSpy:
    """A model source ``spy`` (the tiny model) that records every load."""

    def __init__(self):
        self.loads = 0

    def tuneforge_model_sources(self):
        def load(config):
            self.loads += 1
            from tuneforge.testing import tiny_model

            return tiny_model()

        return [tuneforge.ModelSourceSpec("spy", _SpyConfig, load=load)]


@pytest.mark.parametrize("override, why", [
    ("data.val_fraction=0", "data=jsonl holds out no validation data (data.val_fraction is 0.0"),
    ("data.val_size=0", "data=jsonl holds out no validation data (data.val_size is 0"),
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches is 0"),
    ("trainer.check_val_every_n_epoch=null", "both null"),
])
def test_early_stopping_without_validation_is_refused_before_the_model_loads(tmp_path, override, why):
    spy = LoadSpy()
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path, plugins=[spy], overrides=["model=spy", "callbacks=[early_stopping]", override])
    message = str(info.value)
    assert message.startswith(NO_VALIDATION) and why in message and "\n" not in message
    assert "trainer.val_check_interval=<steps>" in message and "data.val_fraction > 0" in message
    assert spy.loads == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith(NO_VALIDATION)


def test_early_stopping_when_no_validation_ran_is_one_line_on_the_command_line(tmp_path):
    # max_steps=3 ends training inside the first epoch: no validation ran when early stopping first checks
    result = run_cli(["train", "callbacks=[early_stopping]", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                      "threads=1", f"run_dir={tmp_path / 'run'}"], cwd=tmp_path)  # Hydra's log dir lands in cwd
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # (library warnings may come before it)
    errors = [line for line in lines if line.startswith("tuneforge: error:")]
    assert errors == lines[-1:] and errors[0].startswith(f"tuneforge: error: {NO_VALIDATION}"), result.stderr[-2000:]
    assert "no validation had run by step 3" in errors[0] and "trainer.val_check_interval" in errors[0]
    assert "HYDRA_FULL_ERROR" not in result.stderr and "Traceback" not in result.stderr


def test_early_stopping_with_validation_still_works(tmp_path):
    result = run_tiny_fit(tmp_path, overrides=["trainer.max_steps=20", "trainer.val_check_interval=2",
                                               "trainer.limit_val_batches=1", "callbacks=[early_stopping]",
                                               "callbacks.early_stopping.patience=1",
                                               "callbacks.early_stopping.divergence_threshold=0"])
    assert result.metrics["steps"] == 2  # the first validation (after 2 batches) is above the threshold 0


@pytest.mark.parametrize("override, cause", [
    ("adapter.r=int(abc)", "ValueError while evaluating 'int(abc)'"),
    ("x=foo(1)", "Unknown function 'foo'"),
    ("data.path=a=b", "mismatched input '='"),
    ('data.path="a', "unexpected character '\"' at position 11 (an unclosed quote)"),
    ("data.path=a#b", "unexpected character '#' at position 12"),
    ("data.path=a\nb", "unexpected character '\\n'"),
])
def test_an_unparsable_override_is_one_clean_line(override, cause):
    with pytest.raises(ConfigError) as info:
        plugin_selection([override])
    message = str(info.value)
    shown = override.replace("\n", "\\n")
    assert message.startswith(f"cannot parse override '{shown}': ") and cause in message
    assert "\n" not in message and "Error parsing override" not in message and "hydra.cc" not in message
    assert message.count(shown) == 1


def test_an_unparsable_override_on_the_command_line():
    result = run_cli(["train", "adapter.r=int(abc)"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tuneforge: error: cannot parse override 'adapter.r=int(abc)': ValueError while evaluating 'int(abc)': "
        "invalid literal for int() with base 10: 'abc'; write key=value, group=choice or key=[a,b], and quote "
        "values with special characters: 'key=\"a,b\"' (see docs/plugins.md, 'Override values')"]


def test_eval_of_a_run_whose_callback_plugin_is_gone(tmp_path, monkeypatch):
    from tuneforge.commands.eval import eval_command, run_config
    from tuneforge.host.compose import load_plugins

    monkeypatch.syspath_prepend(str(FIXTURES / "steplog"))
    steplog = importlib.import_module("steplog.plugin")
    run = run_tiny_fit(tmp_path / "run", plugins=[steplog], overrides=[
        "callbacks=[batch_log]", f"callbacks.batch_log.path={tmp_path / 'batches.jsonl'}", "trainer.max_steps=2"])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "steplog" not in p])
    for name in [n for n in sys.modules if n.startswith("steplog")]:
        monkeypatch.delitem(sys.modules, name)
    plugins = load_plugins([])
    assert "batch_log" not in plugins["callbacks"].names()
    with pytest.raises(ConfigError) as info:
        run_config(run.run_dir, [])
    message = str(info.value)
    assert "\n" not in message
    assert f"run_dir={run.run_dir} was trained with callback 'batch_log' (callbacks.batch_log in " in message
    assert "which no installed plugin provides (installed: early_stopping, targets)" in message
    assert "callbacks=[]" in message
    eval_command([f"run_dir={run.run_dir}", "threads=1", "callbacks=[]"])  # the way out the message names
    assert (run.run_dir / "eval" / "metrics.json").is_file()


def test_eval_of_a_run_with_non_default_loggers_baselines_and_callbacks(tmp_path):
    """eval re-selects the run's own list groups, so their saved settings merge onto the same components
    (it used to merge ``loggers.tensorboard`` onto the default ``loggers=[csv]`` and stop with a KeyError)."""
    pytest.importorskip("tensorboard")
    from tuneforge.commands.eval import eval_command, run_config

    run = run_tiny_fit(tmp_path / "run", overrides=[
        "trainer.max_steps=2", "loggers=[csv,tensorboard]", "baselines=[few_shot]", "baselines.few_shot.k=2",
        "callbacks=[targets]", "+callbacks.targets.checks.ran='steps >= 1'"])
    cfg = run_config(run.run_dir, ["threads=1"])
    assert list(cfg.loggers) == ["csv", "tensorboard"] and list(cfg.baselines) == ["few_shot"]
    assert cfg.baselines.few_shot.k == 2 and list(cfg.callbacks) == ["targets"]
    eval_command([f"run_dir={run.run_dir}", "threads=1"])
    assert (run.run_dir / "eval" / "metrics.json").is_file()
    eval_command([f"run_dir={run.run_dir}", "threads=1", "baselines=[]", "loggers=[csv]",
                  f"out={tmp_path / 'again'}"])
    assert (tmp_path / "again" / "metrics.json").is_file()

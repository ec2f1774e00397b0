"""A plugin's mistake is one line that names the plugin (fixture package ``plugmistakes``: one plugin per
mistake), and a logger is finalized once, after its last row."""

import json
from dataclasses import dataclass

import pytest

from helpers import FIXTURES, run_cli
from tuneforge.commands.cli import main
from tuneforge.errors import PluginError

MISTAKES = FIXTURES / "mistakes"
#: the plugins of ``plugmistakes`` that break loading (blocked when another mistake is checked)
LOAD_BREAKERS = ("nodefault", "hookraises")
HINT = "rerun with --debug for the traceback"


def _one_error_line(text: str) -> str:
    """The single ``tuneforge: error:`` line of ``text``, which has no traceback and no Hydra hint."""
    assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0][len("tuneforge: error: "):]


def _main_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    return _one_error_line(captured.err)


def test_plugins_lists_broken_plugins_and_wrong_groups_and_the_others_load(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(MISTAKES))
    monkeypatch.delenv("TUNEFORGE_DISABLE_PLUGINS", raising=False)
    main(["plugins"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert "broken: plugin 'nodefault' (distribution 'plugmistakes 0.1.0'): registration hook tuneforge_adapters: " \
           "TypeError: adapter 'scale': config field 'factor' needs a default" in lines["nodefault"]
    assert "broken: plugin 'hookraises' (distribution 'plugmistakes 0.1.0'): registration hook " \
           "tuneforge_datasets: KeyError: 'DATASET_HOME'; block it with TUNEFORGE_DISABLE_PLUGINS=hookraises" \
           in lines["hookraises"]
    assert "not loaded: wrong group" in lines["wronggroup"] and "'tuneforge.plugins'" in lines["wronggroup"]
    assert "callbacks: boom" in lines["callbackraises"] and "evaluators: judge" in lines["stringeval"]
    assert "adapter: freeze, full" in lines["adapters"]  # the others still load


@pytest.mark.parametrize("plugin, component, cause", [
    ("nodefault", "registration hook tuneforge_adapters", "TypeError: adapter 'scale': config field 'factor'"),
    ("hookraises", "registration hook tuneforge_datasets", "KeyError: 'DATASET_HOME'"),
])
def test_a_plugin_that_breaks_loading_is_one_line_for_every_command(monkeypatch, capsys, tmp_path, plugin,
                                                                     component, cause):
    monkeypatch.syspath_prepend(str(MISTAKES))
    other = [name for name in LOAD_BREAKERS if name != plugin]
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", ",".join(other))
    expected = (f"plugin '{plugin}' (distribution 'plugmistakes 0.1.0'): {component}: {cause}")
    for argv in (["config", "groups"], ["train", "model=tiny", f"run_dir={tmp_path / 'run'}"],
                 ["eval", "model=tiny", f"out={tmp_path / 'eval'}"]):
        line = _main_error(capsys, argv)
        assert line.startswith(expected) and line.endswith(f"TUNEFORGE_DISABLE_PLUGINS={plugin}, or {HINT}"), argv
    assert not (tmp_path / "run").exists()
    # blocked, it is gone and the rest works
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", ",".join(LOAD_BREAKERS))
    main(["config", "groups"])
    assert "judge" in capsys.readouterr().out


def test_a_plugin_in_a_wrong_entry_point_group_is_named_when_its_component_is_chosen(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(MISTAKES))
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", ",".join(LOAD_BREAKERS))
    line = _main_error(capsys, ["config", "show", "adapter=misplaced"])
    assert "'misplaced'" in line and "entry point 'wronggroup' of 'plugmistakes' in group 'tuneforge.plugins' is " \
                                      "not loaded: wrong group" in line


def test_mistakes_that_hit_in_a_later_phase_stop_the_run_with_one_line_in_status_json(tmp_path):
    env = {"TUNEFORGE_DISABLE_PLUGINS": ",".join(LOAD_BREAKERS), "OMP_NUM_THREADS": "1"}
    common = ["model=tiny", "trainer.max_steps=3", "threads=1", "trainer.enable_progress_bar=false", "baselines=[]",
              "memorisation.sample=0"]
    cases = {
        "start": (["evaluators=[perplexity]"], {"TUNEFORGE_MISTAKE_START": "1"},
                  "plugin 'startraises' (distribution 'plugmistakes 0.1.0'): hook tuneforge_run_start: "
                  "RuntimeError: cannot reach the experiment server"),
        "callback": (["evaluators=[perplexity]", "callbacks=[boom]"], {},
                     "plugin 'callbackraises' (distribution 'plugmistakes 0.1.0'): callback 'boom', Lightning hook "
                     "on_train_batch_end: ZeroDivisionError: division by zero in the learning-rate probe"),
        "evaluator": (["evaluators=[judge]"], {},
                      "plugin 'stringeval' (distribution 'plugmistakes 0.1.0'): evaluator 'judge', evaluate returned "
                      "'looks good' (str) for metric 'score'"),
    }
    for case, (overrides, more_env, expected) in cases.items():
        run_dir = tmp_path / case
        result = run_cli(["train", *common, *overrides, f"run_dir={run_dir}"], site_dirs=["mistakes"],
                         env={**env, **more_env}, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        line = _one_error_line(result.stderr)
        assert line.startswith(expected), line
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and status["error"] == line
        assert (run_dir / ".lock").read_text() == ""  # released
    result = run_cli(["eval", "model=tiny", "evaluators=[judge]", "threads=1", f"out={tmp_path / 'eval'}"],
                     site_dirs=["mistakes"], env=env, cwd=tmp_path)
    assert result.returncode == 2 and _one_error_line(result.stderr).startswith(cases["evaluator"][2])


def test_evaluator_values_are_checked_per_metric():
    import numpy
    import torch

    import tuneforge
    from tuneforge.evaluation.runner import checked_metric_values

    spec = tuneforge.EvaluatorSpec("judge", _Empty, evaluate=lambda *a: {}, metrics=(tuneforge.MetricInfo("score"),))
    assert checked_metric_values(spec, {"score": numpy.float32(0.5), "n": 3, "t": torch.tensor(2.0), "x": None}) \
        == {"score": 0.5, "n": 3.0, "t": 2.0, "x": None}
    with pytest.raises(PluginError, match=r"evaluator 'judge', evaluate returned 'good' \(str\) for metric 'verdict' "
                                          r"\(declared: score\)"):
        checked_metric_values(spec, {"score": 1.0, "verdict": "good"})
    with pytest.raises(PluginError, match=r"evaluate returned list \[1, 2\], not a dict"):
        checked_metric_values(spec, [1, 2])
    with pytest.raises(PluginError, match=r"returned \[0.5\] \(list\) for metric 'score'"):
        checked_metric_values(spec, {"score": [0.5]})
    with pytest.raises(PluginError, match=r"returned tensor\(\[1., 2.\]\) \(Tensor\) for metric 'score'"):
        checked_metric_values(spec, {"score": torch.tensor([1.0, 2.0])})
    with pytest.raises(PluginError, match=r"returned True \(bool\) for metric 'score'; it must return "
                                          r"\{metric name: finite number \(not a bool\) or None\}"):
        checked_metric_values(spec, {"score": True})


@pytest.mark.parametrize("value, shown", [(float("nan"), r"nan \(float\)"), (float("-inf"), r"-inf \(float\)"),
                                          (False, r"False \(bool\)"), ("numpy_nan", r"(np\.float64\()?nan\)? \(float64\)"),
                                          ("tensor_inf", r"tensor\(inf\) \(Tensor\)"),
                                          ("numpy_bool", r"(np\.)?True_? \(bool_?\)")])
def test_a_nan_inf_or_bool_metric_is_one_line_naming_the_plugin_evaluator_and_metric(value, shown):
    import numpy
    import torch

    import tuneforge
    from tuneforge.evaluation.runner import checked_metric_values
    from tuneforge.host.guard import set_origin

    value = {"numpy_nan": numpy.float64("nan"), "tensor_inf": torch.tensor(float("inf")),
             "numpy_bool": numpy.bool_(True)}.get(value, value) if isinstance(value, str) else value
    spec = tuneforge.EvaluatorSpec("judge", _Empty, evaluate=lambda *a: {})
    set_origin(spec, "acme")
    cause = r" \(nan and inf also come from a model whose outputs are not finite\)"
    if "bool" in shown:
        cause = ""
    with pytest.raises(PluginError, match=rf"^plugin 'acme': evaluator 'judge', evaluate returned {shown} for metric "
                                          rf"'score'{cause}; it must return \{{metric name: finite number \(not a "
                                          r"bool\) or None\}; block it with TUNEFORGE_DISABLE_PLUGINS=acme") as refused:
        checked_metric_values(spec, {"ok": 0.5, "score": value})
    assert "\n" not in str(refused.value)


def test_recorded_example_scores_are_finite_numbers_one_per_example_given():
    import torch

    import tuneforge
    from tuneforge.evaluation.runner import checked_example_scores

    spec = tuneforge.EvaluatorSpec("judge", _Empty, evaluate=lambda *a: {}, metrics=(
        tuneforge.MetricInfo("hit"), tuneforge.MetricInfo("general", section="forgetting")))

    def check(values, weights=None, rows=None, metric="hit", count=3):
        return checked_example_scores(spec, {metric: {"values": values, "weights": weights}},
                                      {metric: rows} if rows is not None else {}, count)

    assert check([1, 0.5, torch.tensor(0.0)], weights=[3, 1, 2]) == {
        "hit": {"values": [1.0, 0.5, 0.0], "weights": [3.0, 1.0, 2.0]}}
    assert check([1.0], rows=[{}]) == {"hit": {"values": [1.0], "weights": None}}  # rows: those examples
    assert check([1.0] * 5, metric="general")["general"]["values"] == [1.0] * 5  # its own reference set
    with pytest.raises(PluginError, match=r"evaluator 'judge', record_scores\('hit'\) got 2 values for the 3 "
                                          r"examples evaluate was given; it needs one per example, in order"):
        check([1.0, 0.0])
    with pytest.raises(PluginError, match=r"record_scores\('hit'\) got 4 values for the 3 examples"):
        check([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(PluginError, match=r"record_scores\('hit'\) got nan \(float\) as values\[1\] of 3; each "
                                          r"must be a finite number \(not a bool: 1.0 or 0.0"):
        check([1.0, float("nan"), 0.0])
    with pytest.raises(PluginError, match=r"record_scores\('hit'\) got True \(bool\) as values\[0\] of 3"):
        check([True, False, True])
    with pytest.raises(PluginError, match=r"record_scores\('hit'\) got inf \(float\) as weights\[2\] of 3"):
        check([1.0, 0.0, 1.0], weights=[1, 1, float("inf")])


def test_the_run_refuses_an_evaluator_that_records_too_few_scores():
    """The runner checks what each evaluator recorded: 2 scores for 3 held-out examples stop the evaluation
    with one line, not a verdict at n=2."""
    from types import SimpleNamespace

    import tuneforge
    from omegaconf import OmegaConf
    from tuneforge.evaluation import record_scores
    from tuneforge.evaluation.runner import run_evaluators
    from tuneforge.testing import TOY_RECORDS, tiny_model, toy_examples

    def evaluate(model, tokenizer, examples, config, *, evaluation=None):
        record_scores("hit", [1.0, 0.0], evaluation=evaluation)
        return {"hit": 0.5}

    model, tokenizer = tiny_model()
    spec = tuneforge.EvaluatorSpec("judge", _Empty, evaluate=evaluate)
    settings = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1}})
    examples = toy_examples(tokenizer, TOY_RECORDS[:3])
    with pytest.raises(PluginError, match=r"evaluator 'judge', record_scores\('hit'\) got 2 values for the 3 "):
        run_evaluators({"judge": SimpleNamespace(spec=spec, config=_Empty())}, settings, model, tokenizer, examples)


@dataclass
class _Empty:
    """No keys."""


class CallRecorder:
    """A logger plugin whose Lightning logger records every call made on it, in order."""

    def __init__(self):
        self.calls = []

    def tuneforge_loggers(self):
        import tuneforge
        from lightning.pytorch.loggers import Logger

        calls = self.calls

        class Recording(Logger):
            name = "recording"
            version = "r1"

            def log_metrics(self, metrics, step=None):
                calls.append(("log_metrics", sorted(metrics)))

            def log_hyperparams(self, params, *args, **kwargs):
                calls.append(("log_hyperparams", None))

            def finalize(self, status):
                calls.append(("finalize", status))

        return [tuneforge.LoggerSpec("recording", _Empty, build=lambda config: Recording())]


class RunEndRaises:
    """A plugin whose ``tuneforge_run_end`` raises (after the run's outputs are written)."""

    __name__ = "run_end_raises"

    def tuneforge_run_end(self, status):
        raise OSError(f"cannot upload the {status} run")


def test_a_logger_is_finalized_once_after_its_last_row_and_a_failing_run_end_leaves_a_clean_run(tmp_path):
    from tuneforge.testing import run_tiny_fit

    recorder = CallRecorder()
    with pytest.raises(PluginError) as info:
        run_tiny_fit(tmp_path, plugins=[recorder, RunEndRaises()], overrides=[
            "loggers=[csv,recording]", "trainer.max_steps=2", "baselines=[]", "evaluators=[perplexity]"])
    line = str(info.value)
    assert line.startswith("plugin 'run_end_raises' (distribution '<registered in-process>'): hook "
                           "tuneforge_run_end: OSError: cannot upload the completed run; block it with ")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == line and status["steps"] == 2
    assert (tmp_path / ".lock").read_text() == "" and (tmp_path / "metrics.json").is_file()
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds.count("finalize") == 1 and kinds[-1] == "finalize", kinds
    assert recorder.calls[-1] == ("finalize", "success")
    last_row = [keys for kind, keys in recorder.calls if kind == "log_metrics"][-1]
    assert "tuned/perplexity/loss" in last_row and "base/perplexity/loss" in last_row


def test_a_failed_run_finalizes_its_logger_once_with_failed(tmp_path):
    from tuneforge.testing import run_tiny_fit

    class Boom:
        __name__ = "boom_plugin"

        def tuneforge_callbacks(self):
            import lightning.pytorch as pl
            import tuneforge

            class Raise(pl.Callback):
                def on_train_batch_end(self, *args):
                    raise ValueError("probe failed")

            return [tuneforge.CallbackSpec("raise_at_once", _Empty, build=lambda config: Raise())]

    recorder = CallRecorder()
    with pytest.raises(PluginError) as info:
        run_tiny_fit(tmp_path, plugins=[recorder, Boom()], overrides=[
            "loggers=[csv,recording]", "callbacks=[raise_at_once]", "baselines=[]", "evaluators=[perplexity]"])
    assert str(info.value).startswith("plugin 'boom_plugin' (distribution '<registered in-process>'): callback "
                                      "'raise_at_once', Lightning hook on_train_batch_end: ValueError: probe failed")
    assert [call for call in recorder.calls if call[0] == "finalize"] == [("finalize", "failed")]
    assert recorder.calls[-1] == ("finalize", "failed")
    assert json.loads((tmp_path / "status.json").read_text())["error"] == str(info.value)


def test_the_console_summary_groups_by_section_and_marks_lower_is_better():
    from tuneforge.evaluation.report import format_columns, format_comparison

    metrics = {"base": {"exact_match": 0.1, "perplexity/loss": 2.0, "forgetting/contains": 1.0},
               "tuned": {"exact_match": 0.9, "perplexity/loss": 0.5, "forgetting/contains": 0.8},
               "metric_info": {"perplexity/loss": {"higher_is_better": False, "section": "held-out"},
                               "forgetting/contains": {"higher_is_better": True, "section": "forgetting"},
                               "exact_match": {"higher_is_better": True, "section": "held-out"}}}
    lines = format_comparison(metrics).splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "metric", "held-out:", "", "", "forgetting:", ""]
    assert [line.split()[0] for line in lines[1:]] == ["held-out:", "exact_match", "perplexity/loss", "forgetting:",
                                                       "forgetting/contains"]
    assert lines[3].split() == ["perplexity/loss", "(lower", "is", "better)", "2.0000", "0.5000", "-1.5000"]
    assert "lower is better" not in lines[2] and "lower is better" not in lines[5]
    columns = format_columns(dict(metrics, intervals={"tuned": {"perplexity/loss": {"low": 0.4, "high": 0.6}}}))
    rows = columns.splitlines()
    at = next(i for i, row in enumerate(rows) if row.strip().startswith("perplexity/loss (lower is better)"))
    assert rows[at + 1].startswith("    95% CI") and rows.index("forgetting:") > at
    # one section: no section rows
    single = {key: value for key, value in metrics.items()}
    single["base"] = {"perplexity/loss": 2.0}
    single["tuned"] = {"perplexity/loss": 0.5}
    assert format_comparison(single).splitlines()[1].startswith("perplexity/loss (lower is better)")


def test_config_show_and_train_help_show_each_evaluators_metrics():
    from tuneforge.commands.config import show, train_help

    shown = show(["evaluators=[perplexity,forgetting]"]).splitlines()
    assert "  metric loss: lower is better, section held-out; mean token loss of the held-out targets" in shown
    assert any(line.startswith("  metric contains: higher is better, section forgetting; ") for line in shown)
    helped = train_help(["evaluators=[perplexity]"]).splitlines()
    assert "  metric perplexity: lower is better, section held-out; exp(loss)" in helped

"""Every value is checked before anything heavy: one composition, one validation, typed component configs."""

import functools
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tuneforge
from helpers import run_cli
from tuneforge.errors import ConfigError
from tuneforge.validation import ConfigValueError, at_least, between, check, existing_path, one_of, required


@functools.lru_cache(maxsize=None)
def plugins():
    from tuneforge.host.compose import load_plugins

    return load_plugins([])


def compose(*overrides):
    from tuneforge.host.compose import compose as compose_config

    plugins()  # plugin configs are in Hydra's ConfigStore before composing
    return compose_config(list(overrides))


# ---------------------------------------------------------------------------
# The command line: one line naming the key, exit 2, fast, nothing left behind
# ---------------------------------------------------------------------------

BAD_VALUES = {
    "adapter.r=0": ("adapter.r", "must be >= 1, got 0"),
    "optim.lr=-0.001": ("optim.lr", "must be > 0, got -0.001"),
    "optim.scheduler=cosin": ("optim.scheduler", "did you mean 'cosine'"),
    "data.path=/nonexistent": ("data.path", "no such file or folder: /nonexistent"),
    "loader.batch_size=0": ("loader.batch_size", "must be >= 1, got 0"),
    "loader.group_batches=0": ("loader.group_batches", "must be >= 1, got 0"),
    "trainer.max_steps=0": ("trainer.max_steps", "got 0"),
    "loss=dpo": ("loss", "dpo trains on preference examples, but data=jsonl gives alpaca examples"),
    "adapter.lora_dropout=1.5": ("adapter.lora_dropout", "must be >= 0 and < 1, got 1.5"),
}


@pytest.fixture(scope="module")
def composing_seconds(tmp_path_factory) -> float:
    """How long this machine takes to start the CLI and compose a config without running it (``--cfg
    job``): the yardstick of "refused before anything runs" (a fixed 3 s failed on AVX2-only CPUs, where
    the start alone takes that long)."""
    started = time.perf_counter()
    result = run_cli(["train", "--cfg", "job"], cwd=tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - started


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_bad_value_is_one_line_naming_the_key_before_anything_runs(override, tmp_path, composing_seconds):
    key, message = BAD_VALUES[override]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    started = time.perf_counter()
    result = run_cli(["train", override, f"run_dir={tmp_path / 'r'}"], cwd=cwd)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tuneforge: error: {key}: ") and message in lines[0], lines
    # no model, data or trainer: within twice the compose time (a tiny run takes ten times that and more)
    assert elapsed < 2 * composing_seconds + 2.0, f"{override} took {elapsed:.1f} s, composing {composing_seconds:.1f} s"
    assert not (tmp_path / "r").exists()
    assert list(cwd.iterdir()) == []  # no runs/<date>/ from Hydra either


def test_validation_imports_no_torch_and_names_every_problem_one_per_line(tmp_path):
    code = ("import sys\nfrom tuneforge.commands.cli import main\n"
            "try:\n    main(['train', 'adapter.r=0', 'optim.lr=0', 'loader.batch_size=-1', 'run_dir=r'])\n"
            "except SystemExit as exc:\n    print('EXIT', exc.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "EXIT 2 False False" in result.stdout, result.stdout + result.stderr
    assert sorted(result.stderr.splitlines()) == [
        "tuneforge: error: adapter.r: must be >= 1, got 0",
        "tuneforge: error: loader.batch_size: must be >= 1, got -1",
        "tuneforge: error: optim.lr: must be > 0, got 0.0"]
    assert list(tmp_path.iterdir()) == []


def test_refused_run_keeps_an_existing_run_directory(tmp_path):
    existing = tmp_path / "earlier"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    result = run_cli(["train", "adapter.r=0", f"hydra.run.dir={existing}"], cwd=tmp_path)
    assert result.returncode == 2 and "adapter.r" in result.stderr
    assert (existing / "notes.txt").read_text() == "mine"  # Hydra's output dir existed: it stays


@pytest.mark.fault(fault="one job of a `-m` sweep has an invalid setting (adapter.r=0)",
                   outcome="that job's one line is printed and recorded in its directory's status.json; the other "
                           "jobs run; at the end one line per failed job, exit status 2")
def test_a_sweep_job_refused_by_validation_is_recorded_and_the_others_run(tmp_path):
    result = run_cli(["train", "-m", "adapter.r=0,4", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
                      "threads=1", "evaluators=[]", "baselines=[]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert errors == ["tuneforge: error: sweep job 0: adapter.r: must be >= 1, got 0",
                      "tuneforge: error: sweep job 0 (adapter.r=0) failed: adapter.r: must be >= 1, got 0 "
                      f"[{tmp_path / 'sweep' / '0'}]"], result.stderr[-3000:]
    status = json.loads((tmp_path / "sweep" / "0" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "adapter.r: must be >= 1, got 0"
    assert status["job"]["num"] == 0 and status["job"]["overrides"][0] == "adapter.r=0"
    assert json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())["steps"] == 1  # job 1 ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_cfg_job_prints_what_the_run_keeps_of_an_experiments_list_groups():
    """``evaluators=[exact_match]`` over an experiment that adds ``forgetting`` (and sets
    ``evaluators.perplexity.batch_size``): the run drops both, so the printed config does not show them."""
    result = run_cli(["train", "--cfg", "job", "+experiment=legal_citations", "evaluators=[exact_match]"])
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert list(printed["evaluators"]) == ["exact_match"] and "targets" in printed["callbacks"]
    assert "forgetting dropped" in result.stderr and "evaluators.perplexity ignored" in result.stderr
    resolved = run_cli(["train", "--cfg", "job", "evaluators=[exact_match]", "--resolve"])
    assert resolved.returncode == 0 and "${" not in resolved.stdout, resolved.stderr


def test_cfg_job_still_prints_the_composed_config():
    result = run_cli(["train", "--cfg", "job", "adapter.r=0"])  # printing is not running: no validation
    assert result.returncode == 0, result.stderr
    assert "adapter:\n  name: lora\n  r: 0" in result.stdout


# ---------------------------------------------------------------------------
# In-process: validate() reports, run_components() types
# ---------------------------------------------------------------------------

def test_validate_returns_problems_and_leaves_the_config_as_composed():
    from omegaconf import OmegaConf

    from tuneforge.host.components import Problem, validate

    cfg = compose("adapter.r=0", "data.max_length=${loader.batch_size}", "loader.batch_size=0")
    problems = validate(cfg, plugins())
    assert all(isinstance(p, Problem) for p in problems)
    assert {p.key for p in problems} == {"adapter.r", "loader.batch_size", "data.max_length"}
    assert all("\n" not in str(p) and str(p).startswith(p.key + ": ") for p in problems)
    assert OmegaConf.is_interpolation(cfg.data, "max_length")  # not resolved in place
    assert validate(compose(), plugins()) == []


def test_deselecting_an_experiments_components_drops_their_settings_with_a_warning(caplog, smollm2_placeholder):
    """``+experiment=legal_citations`` sets ``evaluators.perplexity.batch_size`` and ``baselines.few_shot.k``;
    replacing the selection on the command line leaves those settings behind, which must not stop the run."""
    from tuneforge.host.components import run_components, validate

    cfg = compose("+experiment=legal_citations", "evaluators=[exact_match]", "~evaluators.forgetting",
                  "baselines=[]", "callbacks=[]")
    with caplog.at_level("WARNING", logger="tuneforge"):
        components = run_components(cfg, plugins())
    assert set(components.evaluators) == {"exact_match"}
    assert components.baselines == {} and components.callbacks == {}
    assert set(components.config.evaluators) == {"exact_match"} and not components.config.baselines
    assert components.evaluators["exact_match"].config.max_new_tokens == 48  # the experiment's own setting stays
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "evaluators.perplexity" in warned and "baselines.few_shot" in warned and "ignored" in warned

    typo = validate(compose("+evaluators.exact_macth.max_new_tokens=3"), plugins())
    assert [p.key for p in typo] == ["evaluators.exact_macth"] and "has no 'name'" in str(typo[0])


def test_a_list_the_command_line_sets_drops_what_the_experiments_defaults_add(caplog, smollm2_placeholder):
    """``legal_citations`` adds exact_match and forgetting with absolute defaults, which Hydra merges after
    the command line's ``evaluators=[...]``: the run must still get exactly the listed evaluators."""
    from tuneforge.host.components import run_components

    with caplog.at_level("WARNING", logger="tuneforge"):
        components = run_components(compose("+experiment=legal_citations", "evaluators=[exact_match]",
                                            "callbacks=[]"), plugins())
    assert set(components.evaluators) == {"exact_match"} and components.callbacks == {}
    assert components.evaluators["exact_match"].config.max_new_tokens == 48  # the experiment's setting stays
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "evaluators=[exact_match] on the command line: forgetting dropped" in warned
    nothing = run_components(compose("+experiment=legal_citations", "evaluators=[]"), plugins())
    assert nothing.evaluators == {}
    twice = run_components(compose("+experiment=legal_citations", "evaluators=[]", "evaluators=[exact_match,rouge]"),
                           plugins())
    assert set(twice.evaluators) == {"exact_match", "rouge"}  # the last setting counts, as in Hydra
    # additions and the experiment's own selection are untouched
    added = run_components(compose("+experiment=legal_citations", "+evaluators=[rouge]"), plugins())
    assert set(added.evaluators) == {"perplexity", "exact_match", "forgetting", "rouge"}


def test_plugins_get_an_instance_of_their_own_config_class():
    from tuneforge.host.components import run_components
    from tuneforge.plugins.adapters import LoraAdapterConfig
    from tuneforge.plugins.datasets import FilesDataConfig
    from tuneforge.plugins.evaluators_generation import NormalizedEvalConfig
    from tuneforge.plugins.targets import TargetsConfig

    run = run_components(compose("adapter.target_modules=[q_proj,v_proj]", "evaluators=[perplexity,exact_match]",
                                 "evaluators.exact_match.few_shot=[{user: q, assistant: a}]",
                                 "callbacks=[targets]", "+callbacks.targets.checks.t='steps >= 1'"), plugins())
    adapter = run.adapter.config
    assert type(adapter) is LoraAdapterConfig and not hasattr(adapter, "name")
    assert type(adapter.target_modules) is list and adapter.target_modules == ["q_proj", "v_proj"]
    assert type(run.data.config) is FilesDataConfig and run.data.config.path.endswith("sample.jsonl")
    exact = run.evaluators["exact_match"].config
    assert type(exact) is NormalizedEvalConfig and type(exact.few_shot[0]) is dict
    targets = run.callbacks["targets"].config
    assert type(targets) is TargetsConfig and type(targets.checks) is dict
    assert run.config.adapter.name == "lora"  # the saved config keeps the names


@dataclass
class RecordingConfig:
    """sizes: a list; weights: a mapping."""

    sizes: list = field(default_factory=lambda: [1, 2])
    weights: dict = field(default_factory=lambda: {"a": 1.0})


class Recorder:
    """A third-party plugin whose adapter, evaluator and callback record the config objects they get."""

    __name__ = "recorder_plugin"

    def __init__(self):
        self.seen = {}

    @tuneforge.hookimpl
    def tuneforge_adapters(self):
        def apply(model, config):
            self.seen["adapter"] = config
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.get_output_embeddings().weight.requires_grad_(True)
            return model

        return [tuneforge.AdapterSpec("recording", RecordingConfig, apply=apply)]

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        def evaluate(model, tokenizer, examples, config):
            self.seen.setdefault("evaluator", []).append(config)
            return {"n": float(len(config.sizes))}

        return [tuneforge.EvaluatorSpec("recording_eval", RecordingConfig, evaluate=evaluate)]

    @tuneforge.hookimpl
    def tuneforge_callbacks(self):
        def build(config):
            import lightning.pytorch as pl

            self.seen["callback"] = config
            return pl.Callback()

        return [tuneforge.CallbackSpec("recording_cb", RecordingConfig, build=build)]


def test_a_third_party_plugin_receives_its_dataclass_with_plain_lists_and_dicts(tmp_path):
    from tuneforge.testing import run_tiny_fit

    recorder = Recorder()
    result = run_tiny_fit(tmp_path, plugins=[recorder], overrides=[
        "adapter=recording", "adapter.sizes=[3,4,5]", "evaluators=[recording_eval]", "callbacks=[recording_cb]",
        "+callbacks.recording_cb.weights.b=2.0", "trainer.max_steps=1", "baselines=[]", "memorisation.sample=0"])
    adapter, callback = recorder.seen["adapter"], recorder.seen["callback"]
    assert type(adapter) is RecordingConfig and adapter.sizes == [3, 4, 5] and type(adapter.sizes) is list
    assert type(callback) is RecordingConfig and callback.weights == {"a": 1.0, "b": 2.0} and type(callback.weights) is dict
    assert [type(c) for c in recorder.seen["evaluator"]] == [RecordingConfig, RecordingConfig]  # base, tuned
    assert result.metrics["base"]["recording_eval/n"] == 2.0
    saved = (tmp_path / "config.yaml").read_text()
    assert "adapter:\n  name: recording\n  sizes:\n  - 3" in saved


# ---------------------------------------------------------------------------
# Self-validating configs
# ---------------------------------------------------------------------------

@dataclass
class PickyConfig:
    """rank, dropout, mode, path, need: checked by __post_init__."""

    rank: int = 4
    dropout: float = 0.0
    mode: str = "fast"
    path: Optional[str] = None
    need: Any = "x"

    def __post_init__(self):
        check(self, rank=at_least(1), dropout=between(0, 1), mode=one_of("fast", "exact"),
              path=existing_path("file"), need=required)
        if self.mode == "exact" and self.rank > 8:
            raise ConfigValueError("rank", "must be <= 8 with mode=exact")


@dataclass
class PlainValueErrorConfig:
    """level: a __post_init__ that raises a plain ValueError."""

    level: int = 1

    def __post_init__(self):
        if self.level > 3:
            raise ValueError("level above 3 is not supported\nsecond line is dropped")


class PickyPlugin:
    __name__ = "picky_plugin"

    @tuneforge.hookimpl
    def tuneforge_adapters(self):
        return [tuneforge.AdapterSpec("picky", PickyConfig, apply=lambda model, config: model),
                tuneforge.AdapterSpec("plain", PlainValueErrorConfig, apply=lambda model, config: model)]


def test_post_init_checks_become_one_line_errors_naming_the_key(tmp_path):
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose as compose_config, load_plugins

    loaded = load_plugins([], extra_plugins=[PickyPlugin()])

    def problems(*overrides):
        return [str(p) for p in validate(compose_config(list(overrides)), loaded)]

    assert problems("adapter=picky") == []
    assert problems("adapter=picky", "adapter.rank=0", "adapter.dropout=2", "adapter.mode=exakt",
                    f"adapter.path={tmp_path / 'none.txt'}", "adapter.need=null") == [
        "adapter.rank: must be >= 1, got 0",
        "adapter.dropout: must be between 0 and 1, got 2.0",
        "adapter.mode: must be one of fast, exact, got 'exakt' (did you mean 'exact'?)",
        f"adapter.path: no such file: {tmp_path / 'none.txt'}",
        "adapter.need: must be set"]
    assert problems("adapter=picky", "adapter.mode=exact", "adapter.rank=9") == [
        "adapter.rank: must be <= 8 with mode=exact"]
    assert problems("adapter=plain", "adapter.level=4") == ["adapter: level above 3 is not supported"]
    with pytest.raises(ConfigError, match=r"^adapter\.rank: must be >= 1, got 0$"):
        from tuneforge.testing import run_tiny_fit

        run_tiny_fit(tmp_path / "run", plugins=[PickyPlugin()], overrides=["adapter=picky", "adapter.rank=0"])
    assert not (tmp_path / "run").exists()


def test_configs_tolerate_placeholders_and_their_defaults_are_valid():
    from omegaconf import OmegaConf

    from tuneforge.host.schema import TuneforgeConfig
    from tuneforge.plugins.datasets import FilesDataConfig, HFDataConfig, TypedFilesDataConfig
    from tuneforge.plugins.evaluators_forgetting import ForgettingConfig
    from tuneforge.plugins.losses import DistillationConfig
    from tuneforge.plugins.models import HFModelConfig

    for config_class in (HFModelConfig, HFDataConfig, TypedFilesDataConfig, ForgettingConfig, DistillationConfig):
        config_class()  # a required field still MISSING ("???") is the host's to report
    FilesDataConfig(path="${pkg:tuneforge.plugins/data/sample.jsonl}", max_length="${loader.batch_size}")
    OmegaConf.structured(TuneforgeConfig)
    for spec_kind in ("model", "data", "adapter", "loss", "optimizer", "evaluators", "callbacks"):
        for spec in plugins()[spec_kind]:
            try:
                spec.config()
            except ConfigValueError as exc:  # only a required value may be missing from the defaults
                pytest.fail(f"{spec_kind} {spec.name}: defaults refused: {exc}")


def test_a_required_value_left_missing_names_the_key():
    from tuneforge.host.components import validate

    assert [str(p) for p in validate(compose("model=hf"), plugins())] == [
        "model.path: no value given (it is required); set model.path=<value>"]
    assert [p.key for p in validate(compose("loss=distillation"), plugins())] == ["loss.teacher"]


# ---------------------------------------------------------------------------
# Property: random numbers pass validation or give one line per bad key, nothing else
# ---------------------------------------------------------------------------

def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


#: key -> (values to draw, oracle: is the value valid)
NUMERIC_FIELDS = {
    "optim.lr": (st.floats(allow_nan=True, allow_infinity=True), lambda x: _finite(x) and x > 0),
    "optim.warmup_ratio": (st.floats(-2, 3), lambda x: 0 <= x <= 1),
    "optim.weight_decay": (st.floats(allow_nan=True), lambda x: _finite(x) and x >= 0),
    "loader.batch_size": (st.integers(-5, 2 ** 40), lambda x: x >= 1),
    "loader.num_workers": (st.integers(-3, 8), lambda x: x >= 0),
    "trainer.max_steps": (st.integers(-3, 10 ** 12), lambda x: x >= 1),  # -1 needs max_epochs
    "trainer.accumulate_grad_batches": (st.integers(-2, 64), lambda x: x >= 1),
    "trainer.gradient_clip_val": (st.floats(-1, 10), lambda x: x >= 0),
    "adapter.r": (st.integers(-4, 1024), lambda x: x >= 1),
    "adapter.lora_dropout": (st.floats(allow_nan=True, allow_infinity=True), lambda x: _finite(x) and 0 <= x < 1),
    "data.val_fraction": (st.floats(-1, 2), lambda x: 0 <= x < 1),
    "data.max_length": (st.integers(-10, 10 ** 6), lambda x: x >= 1),
    "checkpoint.keep_last": (st.integers(-3, 10), lambda x: x >= 0),
    "seed": (st.integers(-10, 2 ** 33), lambda x: 0 <= x <= 2 ** 32 - 1),
}


@functools.lru_cache(maxsize=None)
def _base_config():
    return compose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({}, optional={k: v[0] for k, v in NUMERIC_FIELDS.items()}))
def test_random_numbers_validate_or_give_one_line_per_bad_key(values):
    import copy

    from omegaconf import OmegaConf

    from tuneforge.host.components import run_components

    cfg = copy.deepcopy(_base_config())
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    expected_bad = {key for key, value in values.items() if not NUMERIC_FIELDS[key][1](value)}
    try:
        run = run_components(cfg, plugins())
    except ConfigError as exc:
        lines = str(exc).split("\n")
        assert {line.split(": ", 1)[0] for line in lines} == expected_bad, lines
        assert len(lines) == len(expected_bad)
        return
    assert not expected_bad
    assert run.adapter.config.r == cfg.adapter.r


# ---------------------------------------------------------------------------
# Combinations and the package-data resolver
# ---------------------------------------------------------------------------

@dataclass
class PairsConfig:
    """weight: unused."""

    weight: float = 1.0


class PairsLoss:
    """A loss for another kind of example, and a dataset that says what it gives: the host stays generic."""

    __name__ = "pairs_plugin"

    @tuneforge.hookimpl
    def tuneforge_losses(self):
        return [tuneforge.LossSpec("pairs_only", PairsConfig, build=lambda config, context: None,
                                   requires=("pairs",))]

    @tuneforge.hookimpl
    def tuneforge_datasets(self):
        return [tuneforge.DatasetSpec("pairs_data", PairsConfig, load=lambda config, tokenizer: None,
                                      example_kinds=lambda config: {"pairs"}),
                tuneforge.DatasetSpec("unknown_data", PairsConfig, load=lambda config, tokenizer: None)]


def test_loss_requirements_are_checked_against_the_data_kinds():
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose as compose_config, load_plugins

    loaded = load_plugins([], extra_plugins=[PairsLoss()])

    def problems(*overrides):
        return [str(p) for p in validate(compose_config(list(overrides)), loaded)]

    assert problems("loss=pairs_only") == [
        "loss: pairs_only trains on pairs examples, but data=jsonl gives alpaca examples; use pairs data or "
        "another loss"]
    assert problems("loss=pairs_only", "data=pairs_data") == []
    assert problems("loss=pairs_only", "data=unknown_data") == []  # a dataset that cannot tell is not refused
    assert problems("loss=dpo", "data=jsonl", "data.path=${pkg:tuneforge.plugins/data/preference.jsonl}") == []
    assert problems("loss=dpo", "data.format=preference") == []  # a named format needs no peek
    assert problems("loss=dpo", "data=hf", "data.path=some/dataset") == []  # unknown until loaded


def test_dpo_on_a_folder_and_on_csv_peeks_at_the_first_record(tmp_path):
    from tuneforge.host.components import validate

    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "a.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    (tmp_path / "qa.csv").write_text("instruction,output\nsay hi,hi\n")
    assert validate(compose("loss=dpo", f"data.path={tmp_path / 'pairs'}"), plugins()) == []
    assert [str(p) for p in validate(compose("loss=dpo", "data=csv", f"data.path={tmp_path / 'qa.csv'}"),
                                     plugins())] == [
        "loss: dpo trains on preference examples, but data=csv gives alpaca examples; use preference data or "
        "another loss"]
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    assert [str(p) for p in validate(compose("loss=dpo", f"data.path={tmp_path / 'bad.jsonl'}"), plugins())] == [
        f"data: {tmp_path / 'bad.jsonl'}:1: invalid JSON (Expecting property name enclosed in double quotes at "
        "column 2); each line must be one JSON object"]


def test_no_resolver_is_registered_by_importing_a_plugin():
    code = ("from omegaconf import OmegaConf\nimport tuneforge.plugins.datasets, tuneforge.plugins.legal_citations\n"
            "print(OmegaConf.has_resolver('tuneforge_sample'), OmegaConf.has_resolver('pkg'))\n"
            "from tuneforge.host.compose import load_plugins\nload_plugins([])\nprint(OmegaConf.has_resolver('pkg'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "True"]


def test_pkg_resolver_gives_shipped_files_and_names_what_is_missing():
    from tuneforge.host.components import validate
    from tuneforge.plugins.datasets import SAMPLE_DIR

    cfg = compose("data.path=${pkg:tuneforge.plugins/data/preference.jsonl}")
    assert cfg.data.path == str(SAMPLE_DIR / "preference.jsonl")
    (problem,) = validate(compose("data.path=${pkg:tuneforge.plugins/data/nope.jsonl}"), plugins())
    assert problem.key == "data.path" and "ships no file 'data/nope.jsonl'" in problem.message
    assert "preference.jsonl" in problem.message


@dataclass
class BadDefaultConfig:
    warm_steps: int = 0.5  # a float default on an int field: the plugin author's mistake


class BadDefaultPlugin:
    __name__ = "bad_default_plugin"

    @tuneforge.hookimpl
    def tuneforge_adapters(self):
        return [tuneforge.AdapterSpec("bad_default", BadDefaultConfig, apply=lambda model, config: model)]


def test_a_config_default_of_the_wrong_type_names_the_field():
    from tuneforge.host.compose import load_plugins

    with pytest.raises(tuneforge.PluginError) as caught:
        load_plugins([], extra_plugins=[BadDefaultPlugin()])
    message = str(caught.value)
    assert "adapter 'bad_default', config class BadDefaultConfig" in message
    assert "field 'warm_steps': its default does not fit its type (Value '0.5' of type 'float'" in message
    assert "give it a default of its type" in message and "\n" not in message


def test_an_unknown_choice_that_is_not_a_typo_says_where_plugin_choices_come_from():
    from tuneforge.host.plugin_manager import unknown_choice_note

    valid = ["adafactor", "adamw", "sgd"]
    assert unknown_choice_note("adamw_warm", valid).startswith("; a plugin's choice is listed once its package is "
                                                               "installed with an entry point in group 'tuneforge'")
    assert unknown_choice_note("instruction_prompt", valid) != ""
    assert unknown_choice_note("adamv", valid) == ""  # a typo: the did-you-mean says enough
    result = run_cli(["train", "optimizer=adamw_warm"])
    assert result.returncode == 2 and "entry point in group 'tuneforge'" in result.stderr


class MisspeltSpecFieldPlugin:
    __name__ = "misspelt_spec_field_plugin"

    @tuneforge.hookimpl
    def tuneforge_baselines(self):
        return [tuneforge.BaselineSpec("bare_prompt", BadDefaultConfig, rewrite=lambda *a, **k: [],
                                       describ=lambda config: "bare")]


def test_a_misspelt_spec_field_is_named_with_the_fields_it_has():
    from tuneforge.host.compose import load_plugins

    with pytest.raises(tuneforge.PluginError) as caught:
        load_plugins([], extra_plugins=[MisspeltSpecFieldPlugin()])
    message = str(caught.value)
    assert ("registration hook tuneforge_baselines: TypeError: tuneforge.BaselineSpec has no field 'describ' "
            "(did you mean 'describe'?); its fields: name, config, description") in message

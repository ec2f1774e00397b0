"""Mistakes a docs-only plugin author made, each caught where it is made and said in one line: a config
attribute without a type annotation, a spec callable taking an argument the host never passes, plain dicts
handed to ``prepare_splits``, an ``assert`` in a config's ``__post_init__`` and a misspelt hook name."""

import linecache
from dataclasses import dataclass
from typing import ClassVar, Optional

import pytest

import tuneforge
from helpers import run_cli, install_fake_distribution
from tuneforge.data import DataConfig, prepare_splits
from tuneforge.errors import ConfigError, DataError, PluginError
from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager
from tuneforge.specs import SPEC_KINDS




def _one_error_line(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0][len("tuneforge: error: "):]


class _Passed:
    """A plugin passed in-process, giving ``specs`` from the hook of their kind."""

    def __init__(self, name: str, *specs):
        self.__name__ = name
        for spec in specs:
            hook = SPEC_KINDS[type(spec)][1]
            setattr(self, hook, lambda spec=spec: [spec])


# ---------------------------------------------------------------------------
# 1. A config attribute without a type annotation is no field: refused when the plugin loads
# ---------------------------------------------------------------------------

UNANNOTATED = '''
@dataclass
class Cfg:
    """Train everything.

    r: the rank.
    alpha: the scale.
    """
    r = 8
    alpha: int = 8

def tuneforge_adapters():
    return [tuneforge.AdapterSpec("acme_noannot", Cfg, "no annotation", apply=lambda model, config: model)]
'''


def test_a_config_attribute_without_annotation_is_one_line_when_the_plugin_loads(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "noannot", UNANNOTATED)
    expected = ("plugin 'noannot' (distribution 'noannot 0.1.0'): config class Cfg of adapter 'acme_noannot': "
                "'r = 8' has no type annotation, so it is not a config field; write 'r: int = 8' (or ClassVar[...] "
                "for a constant); block it with TUNEFORGE_DISABLE_PLUGINS=noannot")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == expected
    assert create_plugin_manager(PluginSelection(), tolerate_broken=True).broken["noannot"] == expected
    # config show no longer leaves r out in silence
    shown = run_cli(["config", "show", "adapter=acme_noannot"], site_dirs=[str(tmp_path)], cwd=tmp_path)
    assert shown.returncode == 2 and _one_error_line(shown.stderr) == expected


@dataclass
class _Fine:
    """Everything but fields is left alone.

    alpha: a field.
    """

    DATA_FILES: ClassVar[tuple] = ()
    kinds: ClassVar[tuple] = ("a", "b")
    LIMIT = 3  # a constant
    alpha: int = 1

    @property
    def doubled(self):
        return 2 * self.alpha

    def scaled(self, by):
        return by * self.alpha

    @staticmethod
    def helper():
        return 1

    @classmethod
    def make(cls):
        return cls()

    class Nested:
        pass


def test_constants_classvars_and_methods_are_not_taken_for_fields():
    from tuneforge.host.spec_checks import config_class_problem, unannotated_attributes

    assert unannotated_attributes(_Fine) == []

    @dataclass
    class Several(_Fine):
        tags = []
        cut = None
        mode = "fast"

    spec = tuneforge.AdapterSpec("several", Several, apply=lambda model, config: model)
    assert config_class_problem(spec) == (
        "config class Several of adapter 'several': 'tags = []' and 'cut = None' and 'mode = 'fast'' have no type "
        "annotation, so they are not config fields; write 'tags: list = field(default_factory=list)', "
        "'cut: Optional[...] = None', \"mode: str = 'fast'\" (or ClassVar[...] for a constant)")


def test_every_built_in_config_class_passes_the_load_checks():
    from tuneforge.host.spec_checks import spec_problem

    plugins = create_plugin_manager(PluginSelection(autoload=False), tolerate_broken=True)
    assert not plugins.broken
    specs = [spec for registry in plugins.registries.values() for spec in registry]
    assert len(specs) > 40 and [spec.name for spec in specs if spec_problem(spec)] == []


LIST_NONE = '''
@dataclass
class Cfg:
    """target_modules: modules to train."""
    target_modules: list = None

def tuneforge_adapters():
    return [tuneforge.AdapterSpec("acme_listnone", Cfg, apply=lambda model, config: model)]
'''


def test_config_show_refuses_a_default_that_does_not_fit_its_type_as_train_does(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "listnone", LIST_NONE)
    shown = run_cli(["config", "show", "adapter=acme_listnone"], site_dirs=[str(tmp_path)], cwd=tmp_path)
    assert shown.returncode == 2, shown.stdout
    line = _one_error_line(shown.stderr)
    assert line.startswith("plugin 'listnone' (distribution 'listnone 0.1.0'): adapter 'acme_listnone', config "
                           "class Cfg: TypeError: field 'target_modules': its default does not fit its type")
    assert "None with Optional[...]" in line and line.endswith("TUNEFORGE_DISABLE_PLUGINS=listnone, or rerun with "
                                                               "--debug for the traceback")


# ---------------------------------------------------------------------------
# 2. A spec callable taking an argument the host never passes: refused when the plugin loads
# ---------------------------------------------------------------------------

@dataclass
class _Cfg:
    """x: unused."""

    x: int = 0


ON_RUN_END_ARGS = ("valid arguments of on_run_end: config, metrics, status, run_dir, context (any subset, by these "
                   "names)")


def test_an_on_run_end_with_a_wrong_parameter_name_is_refused_before_the_run(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "cbsig", '''
@dataclass
class Cfg:
    """x: unused."""
    x: int = 0

def on_run_end(cfg, metrics):
    pass

def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("probe", Cfg, on_run_end=on_run_end)]
''')
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    assert str(info.value) == (
        "plugin 'cbsig' (distribution 'cbsig 0.1.0'): callback 'probe', on_run_end takes argument 'cfg' (did you "
        f"mean 'config'?), which the host does not pass; {ON_RUN_END_ARGS}; block it with "
        "TUNEFORGE_DISABLE_PLUGINS=cbsig")
    # in-process (tuneforge.testing): the same line, before any model loads or run directory is made
    probe = tuneforge.CallbackSpec("probe", _Cfg, on_run_end=lambda cfg, metrics: None)
    from tuneforge.testing import run_tiny_fit

    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", "cbsig")
    with pytest.raises(PluginError, match=r"callback 'probe', on_run_end takes argument 'cfg' \(did you mean "
                                          r"'config'\?\), which the host does not pass"):
        run_tiny_fit(tmp_path / "run", plugins=[_Passed("probe_plugin", probe)], overrides=["callbacks=[probe]"])
    assert not (tmp_path / "run").exists()


def _evaluate_with_metrics(model, tokenizer, examples, config, metrics):
    return {}


@pytest.mark.parametrize("spec, expected", [
    (tuneforge.CallbackSpec("probe", _Cfg, on_run_end=lambda config, *, verbose: None),
     f"callback 'probe', on_run_end takes argument 'verbose', which the host does not pass; {ON_RUN_END_ARGS}"),
    (tuneforge.CallbackSpec("probe", _Cfg, build=lambda: None),
     "callback 'probe', build takes 0 positional arguments, but the host passes 1; valid arguments of build: "
     "config (positional, in this order), then optionally context (positional)"),
    (tuneforge.LoggerSpec("jsonl", _Cfg, build=lambda config, context, verbose: None),
     "logger 'jsonl', build takes argument 'verbose', which the host does not pass; valid arguments of build: "
     "config (positional, in this order), then optionally context (positional)"),
    (tuneforge.EvaluatorSpec("judge", _Cfg, evaluate=_evaluate_with_metrics),
     "evaluator 'judge', evaluate takes argument 'metrics', which the host does not pass; valid arguments of "
     "evaluate: model, tokenizer, examples, config (positional, in this order), then any of evaluation, context "
     "(by these names)"),
    (tuneforge.BaselineSpec("system", _Cfg, rewrite=lambda model, tokenizer, train, held_out, config, *, sed: []),
     "baseline 'system', rewrite takes argument 'sed' (did you mean 'seed'?), which the host does not pass"),
])
def test_spec_callables_are_checked_against_what_the_host_passes(spec, expected):
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection(autoload=False), extra_plugins=[_Passed("sigplug", spec)])
    message = str(info.value)
    assert message.startswith(f"plugin 'sigplug' (distribution '<registered in-process>'): {expected}"), message
    assert "TUNEFORGE_DISABLE_PLUGINS" not in message and "\n" not in message  # in-process: no block list


@pytest.mark.parametrize("spec", [
    tuneforge.CallbackSpec("probe", _Cfg, on_run_end=lambda config, metrics, **later: None),
    tuneforge.CallbackSpec("probe", _Cfg, on_run_end=lambda status, verbose=False: None),
    tuneforge.CallbackSpec("probe", _Cfg, build=lambda config, context=None, *, extra=1: None),
    tuneforge.LoggerSpec("jsonl", _Cfg, build=lambda *args: None),
    tuneforge.EvaluatorSpec("judge", _Cfg, evaluate=lambda model, tokenizer, examples, config, evaluation: {}),
    tuneforge.EvaluatorSpec("judge", _Cfg, evaluate=lambda model, tokenizer, examples, config, *, context: {}),
    tuneforge.BaselineSpec("system", _Cfg, rewrite=lambda model, tokenizer, train, held_out, config, seed: []),
])
def test_spec_callables_that_take_what_the_host_passes_load(spec):
    from tuneforge.host.spec_checks import callable_problem

    assert callable_problem(spec) is None
    plugins = create_plugin_manager(PluginSelection(autoload=False), extra_plugins=[_Passed("sigplug", spec)])
    assert plugins.infos["sigplug"] and not plugins.broken


# ---------------------------------------------------------------------------
# 3. prepare_splits takes plain dicts too
# ---------------------------------------------------------------------------

def _alpaca(n: int) -> list:
    return [{"instruction": f"What is {i} + 1?", "output": str(i + 1)} for i in range(n)]


def test_prepare_splits_takes_plain_dicts_and_names_them_by_index():
    from tuneforge.data import DataConfig, Record, prepare_splits
    from tuneforge.testing import tiny_tokenizer

    tokenizer, config = tiny_tokenizer(), DataConfig(val_size=2, cache=False, max_length=64)
    records = _alpaca(8)
    splits = prepare_splits(records, tokenizer, config, origin="adding")
    assert len(splits.train) == 6 and len(splits.val) == 2
    assert sorted(example["source"] for example in [*splits.train, *splits.val]) == sorted(
        f"adding:row {i}" for i in range(8))
    mixed = [Record(records[0], "mine:1"), *records[1:]]
    assert "mine:1" in {example["source"] for example in [*prepare_splits(mixed, tokenizer, config).train,
                                                          *prepare_splits(mixed, tokenizer, config).val]}
    records[3] = {"instruction": "no answer"}
    with pytest.raises(DataError, match=r"^adding:row 3: "):
        prepare_splits(records, tokenizer, config, origin="adding")
    records[3] = "oops"
    with pytest.raises(TypeError) as info:
        prepare_splits(records, tokenizer, config, origin="adding")
    assert str(info.value) == ("adding: records[3] is str ('oops'); prepare_splits takes each record as a dict or "
                               "a tuneforge.data.Record(data, source)")
    with pytest.raises(TypeError, match=r"^adding: val_records\[0\] is list \(\['a'\]\)"):
        prepare_splits(_alpaca(8), tokenizer, config, origin="adding", val_records=[["a"]])


@dataclass
class _DictsConfig(DataConfig):
    """n: how many records; bad: put a string among them."""

    n: int = 24
    bad: bool = False


def _load_dicts(config, tokenizer):
    records = _alpaca(config.n)
    if config.bad:
        records[3] = "oops"
    return prepare_splits(records, tokenizer, config, origin="acme_dicts")


def test_a_dataset_handing_dicts_trains_and_one_handing_strings_is_one_line(tmp_path):
    from tuneforge.testing import run_tiny_fit

    plugin = _Passed("dictsplug", tuneforge.DatasetSpec("acme_dicts", _DictsConfig, load=_load_dicts))
    common = ["data=acme_dicts", "trainer.max_steps=1", "evaluators=[perplexity]", "baselines=[]",
              "memorisation.sample=0", "data.cache=false"]
    result = run_tiny_fit(tmp_path / "ok", plugins=[plugin], overrides=common)
    assert result.metrics["steps"] == 1
    with pytest.raises(PluginError) as info:
        run_tiny_fit(tmp_path / "bad", plugins=[plugin], overrides=[*common, "data.bad=true"])
    assert str(info.value).startswith("plugin 'dictsplug' (distribution '<registered in-process>'): dataset "
                                      "'acme_dicts', load: TypeError: acme_dicts: records[3] is str ('oops'); "
                                      "prepare_splits takes each record as a dict or a tuneforge.data.Record")


# ---------------------------------------------------------------------------
# 4. An assert in __post_init__ reads like any config error; a misspelt hook says how to block it
# ---------------------------------------------------------------------------

#: compiled here, not as part of this test module, so pytest leaves its asserts as a plugin's are (no message)
_ASSERTING = '''
@dataclass
class Asserting:
    """r: rank (positive); mode: how it checks."""

    r: int = 8
    mode: Optional[str] = None

    def __post_init__(self):
        if self.mode == "bare":
            assert self.r > 0
        elif self.mode == "bug":
            {}["missing"]
        else:
            assert self.r > 0, "r must be positive"
'''
_namespace = {"dataclass": dataclass, "Optional": Optional, "__name__": "acme_bad"}
linecache.cache["<acme_bad>"] = (len(_ASSERTING), None, _ASSERTING.splitlines(True), "<acme_bad>")  # its source
exec(compile(_ASSERTING, "<acme_bad>", "exec"), _namespace)
_Asserting = _namespace["Asserting"]


def _problems(*overrides) -> list:
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins

    spec = tuneforge.AdapterSpec("acme_assert", _Asserting, apply=lambda model, config: model)
    plugins = load_plugins([], extra_plugins=[_Passed("acme_bad", spec)])
    with pytest.raises(ConfigError) as info:
        run_components(compose(["adapter=acme_assert", *overrides]), plugins)
    return str(info.value).splitlines()


def test_an_assert_in_post_init_reads_like_the_other_config_errors():
    assert _problems("adapter.r=0") == ["adapter: r must be positive"]
    assert _problems("adapter.r=0", "adapter.mode=bare") == [
        "adapter: config class Asserting refused the values: assert self.r > 0 failed"]
    bug = _problems("adapter.mode=bug")
    assert bug == ["plugin 'acme_bad' (distribution '<registered in-process>'): adapter 'acme_assert', config class "
                   "Asserting: KeyError: 'missing'; block it with TUNEFORGE_DISABLE_PLUGINS=acme_bad, or rerun with "
                   "--debug for the traceback"]  # a bug, not a check: named as such, without "adapter: " before it


def test_a_misspelt_hook_says_how_to_block_the_plugin(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "typo2", "def tuneforge_adaptors():\n    return []\n")
    with pytest.raises(PluginError) as info:
        create_plugin_manager(PluginSelection())
    message = str(info.value)
    assert message.startswith("plugin 'typo2' (distribution 'typo2 0.1.0') implements an unknown hook "
                              "'tuneforge_adaptors' (did you mean 'tuneforge_adapters'?); valid hooks: ")
    assert message.endswith("; block it with TUNEFORGE_DISABLE_PLUGINS=typo2")

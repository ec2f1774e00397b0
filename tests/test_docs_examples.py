"""The plugin examples in docs/*.md run, and the facts docs/plugins.md states hold.

A fenced ``python`` block whose first line is

    # doctest: plugin-example [<module name>:] [override ...] [expect-file=<path in run_dir>]

is a complete plugin module: it is written to a temporary folder under that
module name (default ``doc_example_<n>``), imported, and run through
``tuneforge.testing.run_tiny_fit`` with the overrides; each ``group=name``
override must have selected that component, and each ``expect-file`` must
exist in the run directory afterwards.  A block starting with
``# doctest: plugin-test`` is a pytest file testing the examples of the same
page; it runs (pytester, in process) twice: with the example modules merely
importable, and with them "installed" (a dist-info with their entry point on
``sys.path``), so the documented ``tuneforge_fit(plugins=[module])`` works both ways.
"""

import json
import re
import sys
from pathlib import Path

import pytest

from helpers import train_losses
from tuneforge.host.config_docs import describe_fields
from tuneforge.testing import TINY_OVERRIDES, FitResult, run_tiny_fit

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"^```python\n# doctest: (plugin-example|plugin-test)([^\n]*)\n(.*?)^```", re.M | re.S)
COMPONENT_GROUPS = {"model", "data", "adapter", "loss", "optimizer", "evaluators", "callbacks", "loggers",
                    "baselines"}
LIST_GROUPS = {"evaluators", "callbacks", "loggers", "baselines"}


def marked_blocks(path: Path) -> list:
    """``[(kind, header tokens, code)]`` of the marked blocks of one page."""
    return [(kind, header.split(), code) for kind, header, code in _BLOCK.findall(path.read_text())]


def examples(path: Path) -> list:
    """``[(module name, overrides, expected files, code)]`` of the plugin-example blocks of a page."""
    out = []
    for index, (kind, tokens, code) in enumerate(marked_blocks(path)):
        if kind != "plugin-example":
            continue
        module = f"doc_example_{path.stem}_{index}"
        if tokens and tokens[0].endswith(":"):
            module, tokens = tokens[0][:-1], tokens[1:]
        expect = [t.split("=", 1)[1] for t in tokens if t.startswith("expect-file=")]
        overrides = [t for t in tokens if not t.startswith("expect-file=")]
        out.append((module, overrides, expect, code))
    return out


def write_module(site: Path, module: str, code: str) -> None:
    parts = module.split(".")
    folder = site.joinpath(*parts[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    for depth in range(1, len(parts)):
        init = site.joinpath(*parts[:depth], "__init__.py")
        if not init.exists():
            init.write_text("")
    (folder / f"{parts[-1]}.py").write_text(code)


def _package_modules(top: str) -> list:
    return [n for n in sys.modules if n == top or n.startswith(top + ".")]


def import_fresh(monkeypatch, site: Path, module: str):
    """Import ``module`` from ``site``, hiding any module of the same top-level package imported before
    (monkeypatch puts those back after the test; :func:`forget` drops the example's own)."""
    import importlib

    for name in _package_modules(module.split(".")[0]):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return importlib.import_module(module)


def forget(module: str) -> None:
    """Drop the example's modules, so later tests importing a real package of that name get the real one
    (e.g. the fixture distribution ``myplug``)."""
    for name in _package_modules(module.split(".")[0]):
        del sys.modules[name]


def install_entry_point(site: Path, module: str) -> None:
    """Make ``module`` look pip-installed: a dist-info whose entry point names it."""
    top = module.split(".")[0]
    info = site / f"{top}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {top}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[tuneforge]\n{top} = {module}\n")


ALL_EXAMPLES = [(path.name, *example) for path in DOCS for example in examples(path)]


def test_the_docs_have_one_example_per_kind():
    plugins_md = ROOT / "docs" / "plugins.md"
    hooks = "\n".join(code for _, _, _, code in examples(plugins_md))
    for hook in ("tuneforge_model_sources", "tuneforge_datasets", "tuneforge_adapters", "tuneforge_losses", "tuneforge_evaluators",
                 "tuneforge_callbacks", "tuneforge_loggers", "tuneforge_baselines", "tuneforge_run_start",
                 "tuneforge_run_end"):
        assert f"def {hook}(" in hooks, hook
    assert any(kind == "plugin-test" for kind, _, _ in marked_blocks(plugins_md))
    assert any(name == "losses.md" for name, *_ in ALL_EXAMPLES)


@pytest.mark.parametrize("page, module, overrides, expect, code", ALL_EXAMPLES,
                         ids=[f"{e[0]}:{e[1]}" for e in ALL_EXAMPLES])
def test_plugin_example_runs_in_a_tiny_fit(tmp_path, monkeypatch, page, module, overrides, expect, code):
    write_module(tmp_path / "site", module, code)
    try:
        plugin = import_fresh(monkeypatch, tmp_path / "site", module)
        result = run_tiny_fit(tmp_path / "run", plugins=[plugin], overrides=[*overrides, "data.cache=false"])
    finally:
        forget(module)
    assert result.metrics["steps"] == 5
    assert json.loads((result.run_dir / "status.json").read_text())["status"] == "completed"
    for override in overrides:
        group, _, value = override.partition("=")
        if group in COMPONENT_GROUPS:
            names = value.strip("[]").split(",")
            selected = list(result.config[group]) if group in LIST_GROUPS else \
                [result.config[group].name]
            assert set(names) <= set(selected), (override, selected)
    for relative in expect:
        assert (result.run_dir / relative).is_file(), relative


TEST_PAGES = [path for path in DOCS if any(kind == "plugin-test" for kind, _, _ in marked_blocks(path))]


@pytest.mark.parametrize("installed", [False, True], ids=["not-installed", "installed"])
@pytest.mark.parametrize("page", TEST_PAGES, ids=[p.name for p in TEST_PAGES])
def test_documented_plugin_tests_pass(pytester, monkeypatch, page, installed):
    site = pytester.path / "site"
    for module, _, _, code in examples(page):
        if module.startswith("doc_example_"):
            continue  # only the examples given a module name are imported by the page's tests
        write_module(site, module, code)
        for name in _package_modules(module.split(".")[0]):  # pytester restores sys.modules after its run
            monkeypatch.delitem(sys.modules, name)
        if installed:
            install_entry_point(site, module)
    monkeypatch.syspath_prepend(str(site))
    tests = [code for kind, _, code in marked_blocks(page) if kind == "plugin-test"]
    for i, code in enumerate(tests):
        pytester.makepyfile(**{f"test_doc_{page.stem}_{i}": code})
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=sum(code.count("\ndef test_") + code.startswith("def test_") for code in tests))


# ---------------------------------------------------------------------------
# The facts in "What your plugin can rely on"
# ---------------------------------------------------------------------------

PLUGINS_MD = (ROOT / "docs" / "plugins.md").read_text()


def test_fit_result_and_tiny_overrides_are_documented_from_their_source():
    for row in describe_fields(FitResult, skip=()):
        assert row.doc, f"FitResult.{row.name} has no doc line"
        assert f"| `{row.name}` | `{row.type}` | {row.doc} |" in PLUGINS_MD, f"regenerate the FitResult row {row.name}"
    for override in TINY_OVERRIDES:
        assert f"`{override}`" in PLUGINS_MD, override


def test_documented_run_facts_hold(tmp_path):
    result = run_tiny_fit(tmp_path, overrides=["evaluators=[perplexity,exact_match]",
                                               "evaluators.exact_match.max_new_tokens=2",
                                               "trainer.val_check_interval=2", "trainer.limit_val_batches=1"])
    metrics = result.metrics
    assert {"base", "tuned", "steps", "train", "data", "quality", "parameters", "throughput", "overfitting",
            "skipped_nonfinite_batches", "wall_time_s"} <= set(metrics)
    assert {"train/loss", "val/loss"} <= set(metrics["train"])
    assert len(train_losses(result.run_dir)) == 5  # train/loss, one row per optimizer step
    assert {"perplexity/loss", "exact_match"} <= set(metrics["base"])
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    held_out = [row for row in rows if row["set"] == "val"]  # the rest: the memorisation sample ("train")
    assert held_out and all({"set", "kind", "source", "prompt", "reference", "base", "tuned", "few_shot",
                             "retrieval"} <= set(row) for row in held_out)
    assert {row["set"] for row in rows} == {"val", "train"} and {row["kind"] for row in rows} == {"generation"}


@pytest.mark.parametrize("override, value", [
    ('data.chat_template="a,b"', "a,b"), (r"data.chat_template=a\,b", "a,b"), ('data.chat_template="a=b"', "a=b"),
    ('data.chat_template=" a "', " a "), (r'data.chat_template="say \"hi\""', 'say "hi"'),
    (r"data.chat_template='it\'s'", "it's"), ('data.chat_template="null"', "null"),
    ("data.chat_template=a\tb", "a\tb"), ('data.chat_template="a\nb"', "a\nb"), (r"data.chat_template=a\tb", "a\\tb"),
])
def test_documented_override_quoting(override, value):
    from tuneforge.host.compose import compose, load_plugins

    assert compose([override], load_plugins([override])).data.chat_template == value


def test_a_bare_comma_value_is_refused():
    from tuneforge.errors import ConfigError
    from tuneforge.host.compose import compose, load_plugins

    with pytest.raises(ConfigError, match="Ambiguous value"):
        compose(["data.chat_template=a,b"], load_plugins([]))


def test_the_testing_helpers_table_gives_each_helper_s_real_parameters_and_tiny_model_s_tuple():
    import inspect

    import torch

    import tuneforge.testing as testing

    section = PLUGINS_MD.split("Smaller checks without a training run:", 1)[1].split("```", 1)[0]
    rows = re.findall(r"^\| `(\w+)\(([^`]*)\)` \| (.*) \|$", section, re.M)
    assert {name for name, _, _ in rows} >= {"tiny_model", "tiny_tokenizer", "toy_examples", "assert_labels",
                                             "run_loss", "run_evaluator"}
    for name, args, _ in rows:
        documented = [a.strip().split("=")[0] for a in args.split(",") if a.strip() not in ("", "*")]
        assert documented == list(inspect.signature(getattr(testing, name)).parameters), name
    model, tokenizer = testing.tiny_model()
    assert isinstance(model, torch.nn.Module) and type(tokenizer) is type(testing.tiny_tokenizer())
    assert "a tuple `(model, tokenizer)`" in dict((n, what) for n, _, what in rows)["tiny_model"]


def test_the_config_class_error_lines_are_what_the_host_prints(monkeypatch, tmp_path):
    """docs/plugins.md, "Config classes": ``check``/``ConfigValueError`` name the dotted key (the five-minute
    example), a plain ``ValueError`` only the group."""
    from dataclasses import dataclass

    import tuneforge
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    [(module, _, _, code)] = [e for e in examples(ROOT / "docs" / "plugins.md") if e[0] == "myplug.plugin"]
    write_module(tmp_path / "site", module, code)

    @dataclass
    class PlainConfig:
        some_field: int = 1

        def __post_init__(self):
            if isinstance(self.some_field, int) and self.some_field < 1:
                raise ValueError(f"some_field must be at least 1, got {self.some_field}")

    class Plain:
        __name__ = "plain_plugin"

        def tuneforge_adapters(self):
            return [tuneforge.AdapterSpec("plain", PlainConfig, apply=lambda model, config: model)]

    try:
        five_minutes = import_fresh(monkeypatch, tmp_path / "site", module)
        loaded = load_plugins([], extra_plugins=[five_minutes, Plain()])
        for adapter in ("my_adapter", "plain"):
            overrides = [f"adapter={adapter}", "adapter.some_field=0"]
            [problem] = validate(compose(overrides), loaded)
            assert f"    tuneforge: error: {problem}\n" in PLUGINS_MD, problem
    finally:
        forget(module)

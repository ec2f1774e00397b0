"""The host's shape, as docs/architecture.md states it: small modules and functions a reader can hold,
one typed run config whose settings are exactly the root schema's sections and values."""

import ast
import dataclasses
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules():
    return sorted(CORE.rglob("*.py"))


def long_functions(source: str) -> list:
    """``(name, lines)`` of every function (methods and nested ones too) longer than the limit."""
    tree = ast.parse(source)
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_module_of_the_host_is_longer_than_600_lines():
    long = {str(path.relative_to(CORE.parent)): len(path.read_text().splitlines()) for path in _modules()
            if len(path.read_text().splitlines()) > MAX_MODULE_LINES}
    assert not long, f"split these along their sections: {long}"


def test_no_function_of_the_host_is_longer_than_100_lines():
    long = {str(path.relative_to(CORE.parent)): found for path in _modules()
            if (found := long_functions(path.read_text()))}
    assert not long, f"split these into named steps: {long}"


def test_the_scan_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]
    assert long_functions("def g():\n    return 1\n") == []


def test_run_settings_hold_exactly_the_root_sections_and_values():
    from tuneforge.host.components import RunSettings
    from tuneforge.host.schema import ROOT_SECTIONS, ROOT_VALUES, TuneforgeConfig

    assert [f.name for f in dataclasses.fields(RunSettings)] == [*ROOT_SECTIONS, *ROOT_VALUES]
    hints = {f.name: f.type for f in dataclasses.fields(TuneforgeConfig)}
    for field in dataclasses.fields(RunSettings):
        if field.name in ROOT_SECTIONS:  # the section's own dataclass, so its defaults live in one place
            assert field.type == hints[field.name] or field.type.endswith(str(hints[field.name])), field.name


def test_the_typed_settings_are_built_once_from_the_composed_config():
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.host.schema import LoaderConfig, TrainerConfig

    overrides = ["trainer.max_steps=7", "loader.batch_size=3", "seed=5"]
    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)
    assert isinstance(run.settings.trainer, TrainerConfig) and run.settings.trainer.max_steps == 7
    assert isinstance(run.settings.loader, LoaderConfig) and run.settings.loader.batch_size == 3
    assert run.settings.seed == 5 and run.settings.trainer.collective_timeout_s == TrainerConfig().collective_timeout_s


def test_every_package_folder_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (core/ installs as tuneforge/): a new sub-package left out
    works in the editable install the tests use and is missing from a wheel (tuneforge.planning was)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    folders = {name: Path(folder) for name, folder in setup["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), f"package folders missing from pyproject.toml's packages: {found - listed}"

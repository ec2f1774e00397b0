"""The boundaries docs/architecture.md states, checked on the source with ast (nothing is imported):

- `core/` never imports `plugins/` (`tuneforge.plugins`);
- a built-in plugin imports only the public tuneforge modules, and another built-in plugin
  module only inside its family (docs/architecture.md, "Built-in plugins"), never a `_private` name;
- no module other than core/context.py reads or writes a rank or process-group environment variable.

Each check is a function over one file's source that returns its violations as "path:line: what"
lines, so a synthetic file shows that it fails (the last tests).
"""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

#: what a plugin may import from tuneforge: docs/plugins.md and docs/rag.md (``tuneforge.specs.selects``,
#: the spec classes of the hook reference) name these for plugin authors
PUBLIC_MODULES = {"tuneforge", "tuneforge.data", "tuneforge.evaluation", "tuneforge.losses", "tuneforge.validation",
                  "tuneforge.errors", "tuneforge.specs"}

#: built-in plugins that are one feature split over several entry-point modules share code, public names
#: only: the held-out evaluators (the forgetting check scores with their configs and metric tables) and
#: the prompting baselines with their retrievers and document reader (docs/architecture.md)
PLUGIN_FAMILIES = ({"evaluators", "evaluators_generation", "evaluators_forgetting"},
                   {"baselines", "retrievers", "rag", "documents"}, {"adapters", "adapter_counts"},
                   {"models", "gguf_header", "model_hub"})

#: rank and process-group environment variables; only core/context.py names them
RANK_VARIABLES = {"RANK", "LOCAL_RANK", "GLOBAL_RANK", "GROUP_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                  "MASTER_ADDR", "MASTER_PORT", "TUNEFORGE_EARLY_PROCESS_GROUP", "PMI_RANK", "PMI_SIZE",
                  "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"}
RANK_PREFIXES = ("SLURM_",)


def imports(source: str) -> list:
    """``(line, module, names)`` of every import in ``source``: statements anywhere (also inside functions) and
    ``importlib.import_module``/``__import__`` calls with a literal name; ``names`` are the names taken from it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and ast.unparse(node.func) in ("importlib.import_module",
                                                                                      "import_module", "__import__"):
            found.append((node.lineno, node.args[0].value, ()))
    return sorted(found)


def _is_plugin_module(module: str) -> bool:
    return module in ("plugins", "tuneforge.plugins") or module.startswith(("plugins.", "tuneforge.plugins."))


def core_violations(path: str, source: str) -> list:
    """A core module that imports a plugin module."""
    return [f"{path}:{line}: imports {module if _is_plugin_module(module) else 'tuneforge.plugins'}"
            for line, module, names in imports(source)
            if _is_plugin_module(module) or (module == "tuneforge" and "plugins" in names)]


def plugin_violations(path: str, source: str) -> list:
    """A plugin module (``plugins/<name>.py``) importing a tuneforge module that is not public, a plugin outside
    its family, or a ``_private`` name of another plugin."""
    own = Path(path).stem
    family = next((f for f in PLUGIN_FAMILIES if own in f), {own})
    violations = []
    for line, module, names in imports(source):
        if _is_plugin_module(module):
            other = module.split(".")[-1] if module not in ("plugins", "tuneforge.plugins") else None
            if other is None or other not in family:
                violations.append(f"{path}:{line}: imports the plugin module {module} (outside its family)")
            private = [n for n in names if n.startswith("_")]
            if private:
                violations.append(f"{path}:{line}: imports {', '.join(private)}, internals of {module}")
        elif (module == "tuneforge" or module.startswith("tuneforge.")) and module not in PUBLIC_MODULES:
            violations.append(f"{path}:{line}: imports {module}, not a public module "
                              f"(public: {', '.join(sorted(PUBLIC_MODULES))})")
        elif module == "tuneforge" and "plugins" in names:
            violations.append(f"{path}:{line}: imports tuneforge.plugins")
    return violations


def rank_variable_uses(path: str, source: str) -> list:
    """Every place that names a rank environment variable: a string literal, or a keyword argument
    (``os.environ.update(LOCAL_RANK=...)``, ``dict(os.environ, RANK=...)``)."""
    def rank(name) -> bool:
        return isinstance(name, str) and (name in RANK_VARIABLES or name.startswith(RANK_PREFIXES))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and rank(node.value):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Call):
            found += [(node.lineno, kw.arg) for kw in node.keywords if rank(kw.arg)]
    return [f"{path}:{line}: names {name}" for line, name in sorted(found)]


def _sources(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_core_never_imports_a_plugin():
    sources = list(_sources("core"))
    assert len(sources) > 50
    assert [v for path, source in sources for v in core_violations(path, source)] == []


def test_plugins_import_only_public_modules_and_no_other_plugins_internals():
    sources = list(_sources("plugins"))
    assert len(sources) > 15
    assert [v for path, source in sources for v in plugin_violations(path, source)] == []


def test_the_plugin_families_name_existing_plugin_modules():
    modules = {path.stem for path in (ROOT / "plugins").glob("*.py")}
    assert set().union(*PLUGIN_FAMILIES) <= modules


def test_only_the_run_context_names_rank_environment_variables():
    uses = [v for folder in ("core", "plugins") for path, source in _sources(folder)
            if path != "core/context.py" for v in rank_variable_uses(path, source)]
    assert uses == []


def test_the_run_context_does_name_them():  # the check finds what it looks for
    source = (ROOT / "core" / "context.py").read_text(encoding="utf-8")
    assert {v.split(" names ")[1] for v in rank_variable_uses("core/context.py", source)} >= {"LOCAL_RANK"}


# --------------------------------------------------------------------------- the checks catch what they should


def test_a_plugin_importing_tuneforge_training_fails_the_check(tmp_path):
    plugin = tmp_path / "plugins" / "sneaky.py"
    plugin.parent.mkdir()
    plugin.write_text("import tuneforge\nfrom tuneforge.data import DataConfig\n\n\n"
                      "def build():\n    from tuneforge.training.module import FineTuneModule\n"
                      "    import tuneforge.host.schema\n    return FineTuneModule\n")
    assert plugin_violations("plugins/sneaky.py", plugin.read_text()) == [
        "plugins/sneaky.py:6: imports tuneforge.training.module, not a public module (public: tuneforge, "
        "tuneforge.data, tuneforge.errors, tuneforge.evaluation, tuneforge.losses, tuneforge.specs, "
        "tuneforge.validation)",
        "plugins/sneaky.py:7: imports tuneforge.host.schema, not a public module (public: tuneforge, "
        "tuneforge.data, tuneforge.errors, tuneforge.evaluation, tuneforge.losses, tuneforge.specs, "
        "tuneforge.validation)",
    ]
    assert plugin_violations("plugins/sneaky.py", "import importlib\nimportlib.import_module('tuneforge.training')\n")


def test_a_plugin_importing_another_plugin_or_its_internals_fails_the_check():
    assert plugin_violations("plugins/adapters.py", "from tuneforge.plugins.losses import dpo\n") == [
        "plugins/adapters.py:1: imports the plugin module tuneforge.plugins.losses (outside its family)"]
    assert plugin_violations("plugins/rag.py", "from tuneforge.plugins.baselines import _private, report_ties\n") \
        == ["plugins/rag.py:1: imports _private, internals of tuneforge.plugins.baselines"]
    assert plugin_violations("plugins/rag.py", "from tuneforge.plugins.documents import read_corpus\n") == []


def test_core_importing_a_plugin_fails_the_check():
    assert core_violations("core/x.py", "def f():\n    from tuneforge.plugins.adapters import lora\n") == [
        "core/x.py:2: imports tuneforge.plugins.adapters"]
    assert core_violations("core/x.py", "from tuneforge import plugins\n") == ["core/x.py:1: imports tuneforge.plugins"]


def test_reading_or_writing_a_rank_variable_fails_the_check():
    source = ("import os\nrank = os.environ.get('LOCAL_RANK')\nos.environ.update(MASTER_PORT='1')\n"
              "job = os.getenv('SLURM_JOB_ID')\nhome = os.environ['HOME']\n")
    assert rank_variable_uses("core/x.py", source) == [
        "core/x.py:2: names LOCAL_RANK", "core/x.py:3: names MASTER_PORT", "core/x.py:4: names SLURM_JOB_ID"]

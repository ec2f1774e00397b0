"""The plugin authors' kit on the command line: `train --help`, `config groups|show`, `new-plugin`,
and a scaffolded package that installs offline, passes its own tests and trains."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tuneforge

from helpers import run_cli
from tuneforge.commands.new_plugin import package_files, plugin_names
from tuneforge.commands.plugin_templates import TEMPLATES
from tuneforge.host.config_docs import describe_fields
from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager
from tuneforge.host.schema import TrainerConfig

HEAVY = ("torch", "transformers", "lightning", "peft", "hydra")


def _fields(group: str, name: str):
    return describe_fields(create_plugin_manager(PluginSelection())[group].get(name).config)


def test_train_help_shows_groups_and_the_selected_choices_fields_quickly_without_heavy_imports():
    code = ("import sys, time, io, contextlib; from tuneforge.commands.cli import main\n"
            "t = time.process_time(); out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): main(['train', '--help', 'adapter=ia3'])\n"
            "cpu = time.process_time() - t\n"
            f"print(out.getvalue()); print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules]); print('CPU', cpu)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = result.stdout
    assert "HEAVY []" in out
    assert float(out.rsplit("CPU ", 1)[1]) < 1.0
    assert "usage: tuneforge train" in out
    assert re.search(r"^  adapter +freeze, full, \*ia3, lora, prefix, prompt, qlora$", out, re.M)
    assert re.search(r"^  trainer +\*default, smoke$", out, re.M)
    ia3 = _fields("adapter", "ia3")
    assert ia3 and all(f"adapter.{f.name}" in out and f.doc in out for f in ia3)  # ia3's fields, with their docs
    assert "adapter.r " not in out  # lora is not selected
    assert all(f"trainer.{f.name}" in out for f in describe_fields(TrainerConfig))


def test_train_help_errors_and_hydra_flags(tmp_path):
    bad = run_cli(["train", "--help", "adapter=lorra"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "tuneforge: error: unknown choice 'lorra' for 'adapter' (did you mean 'lora'?); "
        "valid: freeze, full, ia3, lora, prefix, prompt, qlora"]
    job = run_cli(["train", "--cfg", "job", "adapter=ia3"], cwd=tmp_path)  # Hydra's own flags still reach Hydra
    assert job.returncode == 0 and "adapter:\n  name: ia3" in job.stdout


def test_train_help_with_an_experiment_marks_its_choices_and_lists_what_it_sets():
    result = run_cli(["train", "--help", "+experiment=legal_citations", "adapter.r=4"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^  model +hf, \*smollm2, tiny$", out, re.M)  # the experiment's choices (a preset), not the defaults
    assert re.search(r"^  data +.*\*legal_citations", out, re.M) and "*jsonl" not in out
    assert re.search(r"^  evaluators +.*\*exact_match, \*forgetting", out, re.M)
    assert "set by +experiment=legal_citations (defaults below are the choices' own):" in out
    assert "  adapter.lora_alpha = 32  (default 16)" in out and "  data.n_train = 75  (default 100)" in out
    assert "  adapter.r = " not in out  # the command line's own value is not the experiment's
    assert "  model.name" not in out  # a choice is marked above, not listed


def test_config_groups_names_the_plugin_and_distribution_of_every_choice():
    result = run_cli(["config", "groups"], site_dirs=["good"])
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 2) for line in result.stdout.splitlines()[1:]]
    by_choice = {(r[0], r[1]): r[2] for r in rows}
    assert by_choice[("adapter", "lora")] == f"plugin 'adapters', distribution tuneforge {tuneforge.__version__}"
    assert by_choice[("adapter", "my_adapter")] == "plugin 'myplug', distribution myplug 0.1.0"
    assert by_choice[("model", "smollm2")].startswith("preset conf/model/smollm2.yaml")
    assert by_choice[("trainer", "default")] == "tuneforge schema TrainerConfig"
    plugins = create_plugin_manager(PluginSelection())
    for group in ("model", "data", "adapter", "loss", "optimizer", "evaluators", "callbacks"):
        assert {(group, n) for n in plugins[group].names()} <= set(by_choice), group


def test_config_show_a_component_a_root_group_and_errors():
    result = run_cli(["config", "show", "adapter=lora", "optim", "root", "evaluators=[exact_match]"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"adapter=lora  [plugin 'adapters', distribution tuneforge {tuneforge.__version__}]\n")
    for row in _fields("adapter", "lora"):
        assert f"adapter.{row.name}" in out and f"{row.type} = {row.default}" in out and row.doc in out
    assert "optim.lr            float = 0.0002" in out and "peak learning rate." in out
    assert re.search(r"^  seed +int = 42$", out, re.M)  # column width follows the longest root key
    assert "evaluators.exact_match.lowercase" in out and "ignore case." in out
    unknown = run_cli(["config", "show", "adaptr=lora"])
    assert unknown.returncode == 2 and unknown.stderr.startswith(
        "tuneforge: error: unknown config group 'adaptr' (did you mean 'adapter'?); valid: model, data, adapter")
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["Acme"], "invalid plugin name 'Acme': use lowercase letters and digits"),
    (["9lives"], "invalid plugin name '9lives'"),
    (["class"], "invalid plugin name 'class': 'class' is reserved"),
    (["acme", "--kinds", "dataset,tracker"], "unknown kind 'tracker' in --kinds; valid: model, dataset, adapter, loss, "
                                             "optimizer, evaluator, callback, baseline, logger"),
    (["acme", "--kinds", "adaptr"], "unknown kind 'adaptr' in --kinds (did you mean 'adapter'?)"),
    (["acme", "--colour"], "unknown option '--colour'"),
    ([], None),
])
def test_new_plugin_bad_arguments_are_one_line(tmp_path, args, message):
    result = run_cli(["new-plugin", *args, "--dir", str(tmp_path)] if args else ["new-plugin"], cwd=tmp_path)
    if message is None:
        assert result.returncode == 0 and "usage: tuneforge new-plugin" in result.stdout
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("tuneforge: error: ")
    assert message in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_new_plugin_refuses_an_existing_directory(tmp_path):
    (tmp_path / "acme").mkdir()
    result = run_cli(["new-plugin", "acme"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"tuneforge: error: {tmp_path / 'acme'} already exists; choose another NAME or --dir"


def test_a_kind_is_one_template_entry_and_only_the_chosen_kinds_are_written():
    names = plugin_names("tuneforge-acme-tools")
    assert names == {"dist": "tuneforge-acme-tools", "module": "tuneforge_acme_tools", "prefix": "acme_tools"}
    files = package_files(names, ["dataset", "callback"])
    module = "src/tuneforge_acme_tools"
    assert {f"{module}/dataset.py", f"{module}/callback.py", "tests/test_dataset.py", "tests/test_callback.py",
            f"{module}/data/sample.tsv"} <= set(files)
    assert f"{module}/adapter.py" not in files and "tests/test_adapter.py" not in files
    plugin = files[f"{module}/plugin.py"]
    assert "import tuneforge_datasets" in plugin and "import tuneforge_callbacks" in plugin
    assert "tuneforge_adapters" not in plugin
    assert '"tuneforge_acme_tools" = ["data/*.tsv"]' in files["pyproject.toml"]
    for text in files.values():
        assert "{{" not in text  # every placeholder filled
    from tuneforge import hookspecs
    from tuneforge.specs import SPEC_KINDS

    kinds = {group: hook for group, hook, _ in SPEC_KINDS.values()}
    for template in TEMPLATES.values():  # each entry is complete, for a kind that exists
        assert template.module and template.test and template.readme
        assert kinds.get(template.group) == template.hook and hasattr(hookspecs, template.hook)


def test_the_scaffold_builds_under_the_installed_setuptools():
    from importlib.metadata import version

    from tuneforge.commands.new_plugin import SETUPTOOLS_FLOOR

    assert tuple(int(p) for p in version("setuptools").split(".")[:2]) >= tuple(
        int(p) for p in SETUPTOOLS_FLOOR.split("."))


def test_a_scaffolded_plugin_installs_offline_passes_its_tests_and_trains(tmp_path):
    made = run_cli(["new-plugin", "acme"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package, site = tmp_path / "acme", tmp_path / "site"
    assert "--no-build-isolation" in (package / "README.md").read_text()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(site), str(package)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("TUNEFORGE_COMMAND", None)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                            "ignore::DeprecationWarning"], cwd=package, capture_output=True, text=True, env=env,
                           timeout=600)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert re.search(r"\b34 passed", tests.stdout), tests.stdout[-2000:]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    listed = cli("plugins")
    line = next(line for line in listed.stdout.splitlines() if line.startswith("acme "))
    assert "acme 0.1.0" in line and "adapter: acme_bitfit" in line and "data: acme_tsv" in line
    assert "baselines: acme_system_prompt" in line and "loggers: acme_jsonl" in line
    assert "rewards: acme_keyword" in line
    shown = cli("config", "show", "adapter=acme_bitfit")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("adapter=acme_bitfit  [plugin 'acme', distribution acme 0.1.0]")
    assert "adapter.include_norms           bool = true" in shown.stdout
    assert "also train the weights of normalisation layers (LayerNorm, RMSNorm)." in shown.stdout
    trained = cli("train", "model=tiny", "adapter=acme_bitfit", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                  "threads=1", f"run_dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 < metrics["parameters"]["fraction"] < 0.05


def test_the_example_plugin_package_installs_offline_and_passes_its_tests(tmp_path):
    import shutil

    source = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "tuneforge-tsv-bitfit"
    package, site = tmp_path / "tuneforge-tsv-bitfit", tmp_path / "site"
    # a copy: an in-tree build would leave build/ and *.egg-info in the repository
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(site), str(package)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "tuneforge_tsv_bitfit" / "data" / "sample.tsv").is_file()  # package data installed
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("TUNEFORGE_COMMAND", None)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                            "ignore::DeprecationWarning"], cwd=package, capture_output=True, text=True, env=env,
                           timeout=600)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert re.search(r"\b14 passed", tests.stdout), tests.stdout[-2000:]

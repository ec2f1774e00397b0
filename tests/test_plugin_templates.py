"""The `tuneforge new-plugin` template files: shipped as package data, rendered with a small set of
variables, and kept equal to the example package that was grown from them
(examples/plugins/tuneforge-tsv-bitfit/)."""

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from tuneforge.commands.new_plugin import package_files, plugin_names
from tuneforge.commands.plugin_templates import TEMPLATE_DIR, TEMPLATES, render, render_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "tuneforge-tsv-bitfit"
COMMON = {"pyproject.toml.tmpl", "README.md.tmpl", "gitignore.tmpl", "src/module/__init__.py.tmpl",
          "src/module/plugin.py.tmpl"}

#: the example's components were renamed by hand (`tsv`, not `tsv_bitfit_tsv`): the kinds it holds, by name
EXAMPLE_NAMES = {"model": "local", "dataset": "tsv", "adapter": "bitfit"}
#: the top-level parts of the example the README says were completed by hand (data.val_path,
#: adapter.extra_trainable); every other part that comes from a template must equal the template
HAND_CHANGED = {
    "src/tuneforge_tsv_bitfit/dataset.py": {"<docstring>", "<imports>", "TsvDataConfig", "load_tsv"},
    "src/tuneforge_tsv_bitfit/adapter.py": {"<docstring>", "<imports>", "BitFitConfig", "trainable_names",
                                            "apply_bitfit"},
}


def _template_files() -> set:
    return {path.relative_to(TEMPLATE_DIR).as_posix() for path in TEMPLATE_DIR.rglob("*") if path.is_file()}


def test_every_template_file_is_package_data_and_used():
    # the package-data line of pyproject.toml (Python 3.10 has no tomllib)
    line = re.search(r'^"tuneforge.commands" = \[(.*)\]$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    shipped = [g[len("plugin_template/"):] for g in re.findall(r'"([^"]+)"', line) if g.startswith("plugin_template/")]
    assert shipped
    files = _template_files()
    # '**/' also matches no folder, as setuptools' glob does
    assert all(any(fnmatch.fnmatch(f, g) or fnmatch.fnmatch(f, g.replace("**/", "")) for g in shipped) for f in files)
    used = set(COMMON)
    for template in TEMPLATES.values():
        used |= set(template.outputs()) | {f"readme/{template.kind}.md.tmpl"}
    assert files == used  # no template file left over, none missing


def test_a_kind_file_uses_only_the_documented_variables():
    kind_files = _template_files() - COMMON
    for relative in kind_files:
        found = set(re.findall(r"\{\{(\w+)\}\}", (TEMPLATE_DIR / relative).read_text()))
        assert found <= {"dist", "module", "prefix", "name"}, (relative, found)


def test_rendering_replaces_only_named_variables_and_refuses_a_missing_one():
    assert render("{{a}}-{{ b }}-{{a}}", {"a": "x"}) == "x-{{ b }}-x"  # Jinja's '{{ b }}' (spaces) stays
    assert render("{{a}}", {"a": "{{b}}", "b": "y"}) == "{{b}}"  # one pass: values are not rendered again
    with pytest.raises(ValueError, match=r"^plugin_template/readme/model.md.tmpl: no value for \{\{name\}\}; known: "
                                         r"dist, module, prefix$"):
        render_file("readme/model.md.tmpl", plugin_names("acme"))


def test_the_component_name_is_the_prefix_and_the_kind_suffix():
    files = package_files(plugin_names("tuneforge-acme"), ["adapter", "logger"])
    assert 'tuneforge.AdapterSpec("acme_bitfit"' in files["src/tuneforge_acme/adapter.py"]
    assert '"loggers=[csv,acme_jsonl]"' in files["tests/test_logger.py"]
    assert files["src/tuneforge_acme/plugin.py"].count("import tuneforge_") == 2
    assert files["pyproject.toml"].count("[tool.setuptools.package-data]") == 0  # no kind with package data


# --------------------------------------------------------------------------- the example package


def _parts(source: str) -> dict:
    """A module's top-level parts by name: ``<docstring>``, ``<imports>`` (all together), each def/class/assignment."""
    lines = source.splitlines(keepends=True)
    parts: dict = {}
    for index, node in enumerate(ast.parse(source).body):
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "".join(lines[first - 1:node.end_lineno])
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            key = "<docstring>"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            key = "<imports>"
            text = parts.get(key, "") + text
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            key = node.name
        else:
            key = ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", node))
        parts[key] = text
    return parts


def _example_kind_files():
    names = plugin_names("tuneforge-tsv-bitfit")
    for kind, name in EXAMPLE_NAMES.items():
        template = TEMPLATES[kind]
        for source, target in template.outputs().items():
            yield target.replace("src/module/", f"src/{names['module']}/"), render_file(source, {**names, "name": name})


def test_the_example_plugin_package_matches_the_templates_it_came_from():
    checked = []
    for target, rendered in _example_kind_files():
        example = (EXAMPLE / target).read_text(encoding="utf-8")
        if not target.endswith(".py"):
            assert example == rendered, f"{target} drifted from its template"
            continue
        ours, theirs = _parts(rendered), _parts(example)
        changed = HAND_CHANGED.get(target, set())
        for key, text in ours.items():
            assert key in theirs, f"{target}: {key} of the template is missing in the example"
            if key in changed:
                assert theirs[key] != text, f"{target}: {key} equals the template again; drop it from HAND_CHANGED"
            else:
                assert theirs[key] == text, f"{target}: {key} drifted from the template"
            checked.append((target, key))
    assert len(checked) > 40 and ("tests/test_model.py", "test_a_tiny_fit_trains_it_and_the_run_reloads_it") in checked
    gitignore = render_file("gitignore.tmpl", {})
    assert (EXAMPLE / ".gitignore").read_text() == gitignore


def test_the_example_readme_keeps_each_components_description():
    names = plugin_names("tuneforge-tsv-bitfit")
    readme = (EXAMPLE / "README.md").read_text()
    for kind, name in EXAMPLE_NAMES.items():
        section = render_file(f"readme/{kind}.md.tmpl", {**names, "name": name})
        prose = [block for block in section.split("\n\n")[1:] if block.strip() and not block.startswith("    ")]
        assert prose and all(block.strip() in readme for block in prose), kind


def test_a_drifted_part_is_found():
    rendered = dict(_example_kind_files())["src/tuneforge_tsv_bitfit/model.py"]
    drifted = rendered.replace("model.train()", "model.eval()")
    assert _parts(drifted)["load_local"] != _parts(rendered)["load_local"]
    assert {k for k in _parts(rendered) if _parts(drifted)[k] != _parts(rendered)[k]} == {"load_local"}

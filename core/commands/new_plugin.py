"""``tuneforge new-plugin NAME``: write a ready plugin package to start from.

    tuneforge new-plugin acme                                  every kind
    tuneforge new-plugin acme --kinds dataset,adapter          only these
    tuneforge new-plugin acme-tools --dir ~/src                into ~/src/acme-tools/

The package (``NAME/``) installs with ``pip install -e NAME`` (offline:
``pip install --no-build-isolation -e NAME``) and its tests pass at once:

    NAME/pyproject.toml             setuptools build, ``[project.entry-points.tuneforge]``, dependency tuneforge
    NAME/README.md                  what each component does, install, test, use
    NAME/src/<module>/__init__.py   ``PLUGIN_NAME`` (the entry-point name; also the run-directory subfolder)
    NAME/src/<module>/plugin.py     the entry-point module: re-exports each kind's registration hook
    NAME/src/<module>/<kind>.py     one module per kind: documented config dataclass + implementation
    NAME/tests/test_<kind>.py       tests with tuneforge.testing (a tiny CPU fit per component)

``<module>`` is NAME with ``-`` turned into ``_``; components are named
``<prefix>_<what>`` where the prefix is the module name without a leading
``tuneforge_`` (``acme_bitfit``, ``acme_tsv`` ...).  The kinds and their files
are the table :data:`tuneforge.commands.plugin_templates.TEMPLATES`.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from tuneforge.commands.key_values import ArgumentError
from tuneforge.commands.plugin_templates import TEMPLATES
from tuneforge.errors import did_you_mean

#: the setuptools the scaffold's build needs: PEP 660 editable installs (``pip install -e``) arrived in 64
SETUPTOOLS_FLOOR = "64"
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_RESERVED = {"tuneforge", "test", "tests", "src", "plugins", "core"}

USAGE = f"""\
usage: tuneforge new-plugin NAME [--kinds KIND,...] [--dir PATH]

Write a ready tuneforge plugin package to PATH/NAME (PATH: the current directory):
pyproject.toml with the tuneforge entry point, one module per component kind
(a documented config dataclass and a working implementation), tests that run a
tiny CPU fit of each component, and a README.  Then:

  pip install -e NAME                          (offline: pip install --no-build-isolation -e NAME)
  cd NAME && python -m pytest                  (passes as generated)
  tuneforge plugins                            (lists it)

NAME       lowercase letters and digits, words joined by '-' or '_' (the distribution name;
           the import name is NAME with '-' turned into '_')
--kinds    which components to write (default: all): {', '.join(TEMPLATES)}
--dir      the folder to create NAME/ in
"""


def plugin_names(name: str) -> dict:
    """``{"dist", "module", "prefix"}`` for a plugin NAME, or ArgumentError when NAME cannot be one."""
    if not _NAME.match(name) or len(name) > 60:
        raise ArgumentError(f"invalid plugin name '{name}': use lowercase letters and digits, words joined by '-' "
                            "or '_', starting with a letter (e.g. acme or acme-tools)")
    module = name.replace("-", "_")
    if keyword.iskeyword(module) or module in _RESERVED:
        raise ArgumentError(f"invalid plugin name '{name}': '{module}' is reserved; choose another, e.g. {name}-plugin")
    prefix = module[len("tuneforge_"):] if module.startswith("tuneforge_") and module != "tuneforge_" else module
    return {"dist": name, "module": module, "prefix": prefix}


def parse_kinds(text: str) -> list:
    """``"dataset,adapter"`` -> the known kinds in table order; an unknown one is an ArgumentError."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise ArgumentError(f"--kinds names no kind; valid: {', '.join(TEMPLATES)}")
    for kind in kinds:
        if kind not in TEMPLATES:
            raise ArgumentError(f"unknown kind '{kind}' in --kinds{did_you_mean(kind, TEMPLATES)}; "
                                f"valid: {', '.join(TEMPLATES)}")
    return [k for k in TEMPLATES if k in kinds]


def render(text: str, names: dict) -> str:
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def package_files(names: dict, kinds: list) -> dict:
    """``{relative path: text}`` of the whole package for these kinds."""
    templates = [TEMPLATES[k] for k in kinds]
    module = names["module"]
    files = {
        "pyproject.toml": _pyproject(names, templates),
        "README.md": _readme(names, templates),
        ".gitignore": "__pycache__/\n*.egg-info/\nbuild/\ndist/\n",
        f"src/{module}/__init__.py": _init(names, templates),
        f"src/{module}/plugin.py": _plugin(names, templates),
    }
    for template in templates:
        files[f"src/{module}/{template.kind}.py"] = render(template.module, names)
        files[f"tests/test_{template.kind}.py"] = render(template.test, names)
        for relative, text in template.files.items():
            files[f"src/{module}/{relative}"] = render(text, names)
    return files


def write_package(name: str, kinds: list, parent: Path) -> Path:
    """Create ``parent/name/`` with the package; refuses an existing path."""
    names = plugin_names(name)
    target = Path(parent).expanduser() / name
    if target.exists():
        raise ArgumentError(f"{target} already exists; choose another NAME or --dir")
    if not Path(parent).expanduser().is_dir():
        raise ArgumentError(f"--dir {parent}: no such directory")
    for relative, text in package_files(names, kinds).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def new_plugin_command(args: list) -> None:
    """``tuneforge new-plugin NAME [--kinds ...] [--dir PATH]``."""
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    name, kinds, parent, rest = None, list(TEMPLATES), Path.cwd(), list(args)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag in ("--kinds", "--dir"):
            if not eq:
                if not rest:
                    raise ArgumentError(f"{flag} needs a value")
                value = rest.pop(0)
            if flag == "--kinds":
                kinds = parse_kinds(value)
            else:
                parent = Path(value)
        elif arg.startswith("-"):
            raise ArgumentError(f"unknown option '{arg}'{did_you_mean(arg, ['--kinds', '--dir'])}; "
                                "valid: --kinds, --dir")
        elif name is None:
            name = arg
        else:
            raise ArgumentError(f"one NAME only, got '{name}' and '{arg}'")
    if name is None:
        raise ArgumentError("new-plugin needs a NAME, e.g. 'tuneforge new-plugin acme'")
    target = write_package(name, kinds, parent)
    names = plugin_names(name)
    components = ", ".join(f"{TEMPLATES[k].group}={names['prefix']}_{TEMPLATES[k].suffix}" for k in kinds)
    print(f"wrote {target} ({components})\n"
          f"next: pip install -e {target}   (offline: pip install --no-build-isolation -e {target})\n"
          f"      cd {target} && python -m pytest")


# --------------------------------------------------------------------------- the common files


def _pyproject(names: dict, templates: list) -> str:
    data = sorted({glob for t in templates for glob in t.package_data})
    package_data = (f'\n[tool.setuptools.package-data]\n"{names["module"]}" = [{", ".join(repr(g) for g in data)}]\n'
                    .replace("'", '"') if data else "")
    return f"""\
# The build backend must be importable by pip: online it is fetched into an isolated build
# environment; offline install with `pip install --no-build-isolation -e .`, which uses the
# setuptools of the current environment (>= {SETUPTOOLS_FLOOR}, for editable installs).
[build-system]
requires = ["setuptools>={SETUPTOOLS_FLOOR}"]
build-backend = "setuptools.build_meta"

[project]
name = "{names['dist']}"
version = "0.1.0"
description = "tuneforge plugin: {', '.join(f"{t.kind} {names['prefix']}_{t.suffix}" for t in templates)}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["tuneforge"]

[project.optional-dependencies]
test = ["pytest>=8"]

# tuneforge finds plugins through this entry-point group: name = module with the hooks
[project.entry-points.tuneforge]
{names['module']} = "{names['module']}.plugin"

[tool.setuptools.packages.find]
where = ["src"]
{package_data}
[tool.pytest.ini_options]
testpaths = ["tests"]
# the tests also run from a checkout that is not installed (tuneforge.testing registers the module)
pythonpath = ["src"]
"""


def _init(names: dict, templates: list) -> str:
    return f'''"""{names['dist']}: a tuneforge plugin ({', '.join(t.kind for t in templates)}).

The entry-point module is :mod:`{names['module']}.plugin`; each component lives in its own module.
"""

#: the entry-point name (``tuneforge plugins`` shows it); files this plugin writes into a
#: run go to ``<run_dir>/<PLUGIN_NAME>/``
PLUGIN_NAME = "{names['module']}"
'''


def _plugin(names: dict, templates: list) -> str:
    imports = "\n".join(f"from {names['module']}.{t.kind} import {t.hook}" for t in templates)
    exported = ", ".join(f'"{t.hook}"' for t in templates)
    return f'''"""The entry-point module of {names['dist']} (``[project.entry-points.tuneforge]`` in pyproject.toml).

tuneforge imports this module on every command and registers the ``tuneforge_*``
functions found here.  Keep it cheap: the component modules import torch and
friends inside their functions only.
"""

{imports}

__all__ = [{exported}]
'''


def _readme(names: dict, templates: list) -> str:
    dist, module = names["dist"], names["module"]
    components = "\n".join(render(t.readme, names) for t in templates)
    example = next((f"{t.group}={names['prefix']}_{t.suffix}" for t in templates if t.group in ("adapter", "data",
                                                                                                   "loss")), "")
    show = next((f"{t.group}={names['prefix']}_{t.suffix}" for t in templates), "")
    return f"""\
# {dist}

A tuneforge plugin, generated by `tuneforge new-plugin {dist}`.
tuneforge finds it through the entry point `{module} = "{module}.plugin"` in
`pyproject.toml`.

## Install

    pip install -e .                          # from this folder; or pip install -e path/to/{dist}

Offline (no package index to fetch the build backend from), build with the
setuptools already installed (>= {SETUPTOOLS_FLOOR}) instead of an isolated build environment:

    pip install --no-build-isolation -e .

Check that tuneforge sees it, and what it configures:

    tuneforge plugins                         # {module}  {dist} 0.1.0  ...
    tuneforge config show {show}
    tuneforge train model=tiny {example} trainer.max_steps=3

## Test

    python -m pytest

The tests use `tuneforge.testing` (installed with tuneforge): the `tuneforge_fit`
fixture runs a tiny CPU fine-tune (a random 2-layer Llama, no download) with
this plugin registered; `assert_labels`, `run_loss` and `run_evaluator` check
one component without training.  They pass whether or not the package is
installed: a module passed as `plugins=[plugin]` that is also installed is
registered once, in place of its entry point.

## Components

{components}
## Writing more

- Document every config field in the dataclass docstring, one `<field>: <what it does>`
  line each (continuation lines indented deeper): `tuneforge config show`,
  `tuneforge train --help` and the docs read them from there.
- Validate values in `__post_init__` and raise `ValueError`; tolerate omegaconf's
  `"???"` and interpolation strings while Hydra checks the types.
- Import torch, transformers and lightning inside functions, never at module level:
  tuneforge imports `{module}.plugin` on every command.
- Write files only into `<run_dir>/{module}/`, and only in the main process: the
  run context (`tuneforge.RunContext`: `run_dir`, `is_main`) is the second argument
  of a callback's `build` and the `context` argument of the lifecycle hooks.
- See tuneforge's `docs/plugins.md` ("What your plugin can rely on") for the
  prediction row keys, the logged metric names and the override quoting rules.
"""

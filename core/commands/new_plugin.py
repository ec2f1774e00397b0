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
``tuneforge_`` (``acme_bitfit``, ``acme_tsv`` ...).  Every file is rendered from
a template file in ``core/commands/plugin_template/``; the kinds are the table
:data:`tuneforge.commands.plugin_templates.TEMPLATES`, whose docstring lists the
template files and their variables.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from tuneforge.commands.key_values import ArgumentError
from tuneforge.commands.plugin_templates import TEMPLATES, render_file
from tuneforge.errors import did_you_mean

#: the setuptools the scaffold's build needs: PEP 660 editable installs (``pip install -e``) arrived in 64, and
#: ``--no-build-isolation`` builds (offline) need ``bdist_wheel`` inside setuptools, since 70.1 (before, the
#: separate ``wheel`` package, which a fresh venv lacks)
SETUPTOOLS_FLOOR = "70.1"
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


def package_files(names: dict, kinds: list) -> dict:
    """``{relative path: text}`` of the whole package for these kinds, rendered from ``plugin_template/``."""
    templates = [TEMPLATES[k] for k in kinds]
    common = {**names, **_common_variables(names, templates)}
    outputs = {"pyproject.toml.tmpl": "pyproject.toml", "README.md.tmpl": "README.md",
               "gitignore.tmpl": ".gitignore", "src/module/__init__.py.tmpl": "src/module/__init__.py",
               "src/module/plugin.py.tmpl": "src/module/plugin.py"}
    files = {_target(target, names): render_file(source, common) for source, target in outputs.items()}
    for template in templates:
        variables = template.variables(names)
        files.update({_target(target, names): render_file(source, variables)
                      for source, target in template.outputs().items()})
    return files


def _target(path: str, names: dict) -> str:
    """A template's target path in the package: ``src/module/`` is ``src/<module>/``."""
    return f"src/{names['module']}/{path[len('src/module/'):]}" if path.startswith("src/module/") else path


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


def _common_variables(names: dict, templates: list) -> dict:
    """The variables of the common files (pyproject.toml, README.md, ``__init__.py``, ``plugin.py``) for these kinds."""
    data = sorted({glob for t in templates for glob in t.package_data})
    globs = ", ".join(f'"{glob}"' for glob in data)
    package_data = f'\n[tool.setuptools.package-data]\n"{names["module"]}" = [{globs}]\n' if data else ""
    components = [f"{t.group}={names['prefix']}_{t.suffix}" for t in templates]
    return {
        "setuptools_floor": SETUPTOOLS_FLOOR,
        "description": ", ".join(f"{t.kind} {names['prefix']}_{t.suffix}" for t in templates),
        "package_data": package_data,
        "kinds": ", ".join(t.kind for t in templates),
        "imports": "\n".join(f"from {names['module']}.{t.kind} import {t.hook}" for t in templates),
        "exported": ", ".join(f'"{t.hook}"' for t in templates),
        "show": components[0] if components else "",
        "example": next((c for t, c in zip(templates, components) if t.group in ("adapter", "data", "loss")), ""),
        "components": "\n".join(render_file(f"readme/{t.kind}.md.tmpl", t.variables(names)) for t in templates),
    }

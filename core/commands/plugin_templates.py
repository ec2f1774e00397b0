"""The files ``tuneforge new-plugin`` writes: template files, and one :class:`KindTemplate` per component kind.

The templates are real files in ``plugin_template/`` (package data, beside this
module), laid out like the package they become (Django's ``project_template``
is the model)::

    plugin_template/
      pyproject.toml.tmpl, README.md.tmpl   the common files
      gitignore.tmpl                        -> .gitignore
      src/module/__init__.py.tmpl           -> src/<module>/__init__.py   (``module``: the import name)
      src/module/plugin.py.tmpl             -> src/<module>/plugin.py     (the entry-point module)
      src/module/<kind>.py.tmpl             -> src/<module>/<kind>.py     one per kind: documented config
                                                                          dataclass + implementation
      src/module/data/sample.tsv.tmpl       -> src/<module>/data/sample.tsv  (the dataset kind's extra file)
      tests/test_<kind>.py.tmpl             -> tests/test_<kind>.py       one per kind (tuneforge.testing)
      readme/<kind>.md.tmpl                 the kind's section of README.md (its ``{{components}}``)

A file's target path is its path without ``.tmpl`` (``src/module`` becoming
``src/<module>``).  A kind is ONE entry of :data:`TEMPLATES`: which hook and
config group it fills, its component-name suffix, and its extra files with
their package-data globs; its module, tests and README section are the files
named after it.

Rendering (:func:`render`) replaces each ``{{variable}}`` (a name in double
braces, no spaces) by its value, in one pass; any other text, ``{{ ... }}`` with
spaces included (a Jinja chat template), stays as written.  The variables:

- every file: ``dist`` (distribution name, e.g. ``acme-tools``), ``module``
  (import name, ``acme_tools``), ``prefix`` (the import name without a leading
  ``tuneforge_``);
- a kind's files: ``name``, the component's name (``<prefix>_<suffix>``, e.g.
  ``acme_tools_bitfit``);
- the common files, assembled from the chosen kinds by
  :func:`tuneforge.commands.new_plugin.package_files`: ``setuptools_floor``,
  ``description`` (pyproject), ``package_data`` (the pyproject table, or
  nothing), ``kinds`` (``__init__.py``), ``imports`` and ``exported``
  (``plugin.py``), ``show``, ``example`` and ``components`` (README).

A ``{{variable}}`` without a value is an error naming the template file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: the folder of template files (package data of ``tuneforge.commands``)
TEMPLATE_DIR = Path(__file__).with_name("plugin_template")

_VARIABLE = re.compile(r"\{\{(\w+)\}\}")


def render(text: str, variables: dict, origin: str = "template") -> str:
    """``text`` with each ``{{variable}}`` replaced by ``variables[variable]``; ValueError for a missing one."""
    def value(match: re.Match) -> str:
        if match.group(1) not in variables:
            raise ValueError(f"{origin}: no value for {{{{{match.group(1)}}}}}; known: {', '.join(variables)}")
        return variables[match.group(1)]

    return _VARIABLE.sub(value, text)


def template_text(relative: str) -> str:
    """The text of ``plugin_template/<relative>`` (a ``.tmpl`` file), unrendered."""
    return (TEMPLATE_DIR / relative).read_text(encoding="utf-8")


def render_file(relative: str, variables: dict) -> str:
    """``plugin_template/<relative>`` rendered with ``variables``."""
    return render(template_text(relative), variables, origin=f"plugin_template/{relative}")


@dataclass(frozen=True)
class KindTemplate:
    """Everything one component kind adds to a scaffolded plugin package."""

    #: the name given to ``--kinds``
    kind: str
    #: the component is named ``<prefix>_<suffix>`` (e.g. ``acme_bitfit``)
    suffix: str
    #: the config group users select it in (``adapter=acme_bitfit``)
    group: str
    #: the registration hook its module implements (re-exported by ``plugin.py``)
    hook: str
    #: extra files, paths relative to the package directory ``src/<module>/`` (templates in ``src/module/``)
    files: tuple = ()
    #: globs for ``[tool.setuptools.package-data]`` (relative to the package directory)
    package_data: tuple = ()

    def variables(self, names: dict) -> dict:
        """The rendering variables of this kind's files: ``names`` plus the component ``name``."""
        return {**names, "name": f"{names['prefix']}_{self.suffix}"}

    def outputs(self) -> dict:
        """``{template path: target path}`` of this kind's package files (``module`` stands for the import name)."""
        targets = {f"src/module/{self.kind}.py": f"src/module/{self.kind}.py",
                   f"tests/test_{self.kind}.py": f"tests/test_{self.kind}.py"}
        targets.update({f"src/module/{relative}": f"src/module/{relative}" for relative in self.files})
        return {f"{source}.tmpl": target for source, target in targets.items()}

    @property
    def module(self) -> str:
        """The unrendered source of ``src/<module>/<kind>.py``."""
        return template_text(f"src/module/{self.kind}.py.tmpl")

    @property
    def test(self) -> str:
        """The unrendered source of ``tests/test_<kind>.py``."""
        return template_text(f"tests/test_{self.kind}.py.tmpl")

    @property
    def readme(self) -> str:
        """The unrendered README section describing the component."""
        return template_text(f"readme/{self.kind}.md.tmpl")


#: every kind ``tuneforge new-plugin --kinds`` accepts, in the order they are written
TEMPLATES = {t.kind: t for t in (
    KindTemplate("model", "local", "model", "tuneforge_model_sources"),
    KindTemplate("dataset", "tsv", "data", "tuneforge_datasets", files=("data/sample.tsv",),
                 package_data=("data/*.tsv",)),
    KindTemplate("adapter", "bitfit", "adapter", "tuneforge_adapters"),
    KindTemplate("loss", "smoothed_ce", "loss", "tuneforge_losses"),
    KindTemplate("optimizer", "signum", "optimizer", "tuneforge_optimizers"),
    KindTemplate("evaluator", "exact", "evaluators", "tuneforge_evaluators"),
    KindTemplate("callback", "step_counter", "callbacks", "tuneforge_callbacks"),
    KindTemplate("baseline", "system_prompt", "baselines", "tuneforge_baselines"),
    KindTemplate("logger", "jsonl", "loggers", "tuneforge_loggers"),
    KindTemplate("reward", "keyword", "rewards", "tuneforge_rewards"),
)}

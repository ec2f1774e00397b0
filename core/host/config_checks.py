"""Checks of a composed config that no single dataclass can make: keys outside tuneforge's schema, and
a run directory inside a folder the run reads as data.

* Hydra checks every ``key=value`` against the schema, but ``+key=value`` adds a key whatever it is
  (``+trainer.max_stepz=3``, ``+unknown=1``); :func:`unknown_key_problems` names each key of the composed
  config that the root schema (:class:`tuneforge.host.schema.TuneforgeConfig` and its section
  dataclasses) does not have, with the closest valid key.  The component groups are checked against
  their component's config class by :mod:`tuneforge.host.components`; a ``dict`` field
  (``strategy.kwargs``) takes any key.
* A run directory inside a data folder (``data=files data.path=D run_dir=D/run``) would be read as data
  by the run itself (its ``data_files.json``, ``train.log`` ...), and the folder's content hash would
  change with every file the run writes; :func:`run_dir_data_problems` refuses it before anything is
  written, naming both.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Iterable

from tuneforge.errors import ConfigError, did_you_mean

#: root keys that are not tuneforge settings but may be in a composed config (Hydra's own node)
NOT_SETTINGS = ("hydra",)


def unknown_key_problems(resolved) -> list:
    """A :class:`~tuneforge.host.components.Problem` for each key of the composed root config ``resolved``
    (and of each root section, e.g. ``trainer``) that the schema does not have."""
    from tuneforge.host.schema import COMPONENT_GROUPS, TuneforgeConfig

    return _unknown_keys(resolved, TuneforgeConfig, "", skip=(*COMPONENT_GROUPS, *NOT_SETTINGS))


def _unknown_keys(node, schema: type, parent: str, skip: Iterable[str] = ()) -> list:
    from omegaconf import DictConfig

    from tuneforge.host.components import Problem

    hints = typing.get_type_hints(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    problems: list = []
    for key in (str(k) for k in node.keys()):
        full = f"{parent}.{key}" if parent else key
        if key in skip:
            continue
        if key not in valid:
            hint = did_you_mean(key, valid) or (_section_hint(key) if not parent else "")
            problems.append(Problem(full, "unknown config key", line=(
                f"unknown config key '{full}'{hint}; valid keys{' of ' + parent if parent else ''}: "
                f"{', '.join(valid)}")))
        elif dataclasses.is_dataclass(hints.get(key)) and isinstance(node.get(key), DictConfig):
            problems += _unknown_keys(node.get(key), hints[key], full)
    return problems


def _section_hint(key: str) -> str:
    """`` (did you mean 'optim.lr'?)`` for a root key that is a field of exactly one root section."""
    from tuneforge.host.schema import ROOT_SECTIONS, TuneforgeConfig

    hints = typing.get_type_hints(TuneforgeConfig)
    found = [f"{section}.{key}" for section in ROOT_SECTIONS
             if key in {f.name for f in dataclasses.fields(hints[section])}]
    return f" (did you mean '{found[0]}'?)" if len(found) == 1 else ""


def run_dir_data_problems(run_dir, selected: Iterable[tuple]) -> list:
    """A :class:`~tuneforge.host.components.Problem` for each data folder the run directory ``run_dir``
    is (inside) of: the existing folders named by the ``DATA_FILES`` fields (:mod:`tuneforge.host.paths`)
    of the ``selected`` components (``(config key, Component)`` pairs, e.g. ``("data", <files>)``)."""
    from tuneforge.host.paths import declared_data_fields, path_values

    named = [(f"{key}.{field}", path) for key, component in selected if component is not None
             for field in declared_data_fields(type(component.config))
             for path in path_values(getattr(component.config, field, None))]
    return _inside_problems(run_dir, named)


def composed_run_dir_data_problems(config, plugins) -> list:
    """:func:`run_dir_data_problems` of a composed (not yet validated) config with its ``hydra`` node, as
    ``tuneforge train`` has it before Hydra makes the run directory (:mod:`tuneforge.host.hydra_dirs`):
    the run directory is ``run_dir``, else ``hydra.run.dir``; each selected component's ``DATA_FILES``
    values are read from its node.  What cannot be read (an interpolation that fails, a component no
    plugin provides) is left to the validation, which reports it."""
    from omegaconf import DictConfig, OmegaConf

    from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS
    from tuneforge.host.paths import _absolute, declared_data_fields, path_values, setting_path

    try:
        run_dir = config.get("run_dir") or OmegaConf.select(config, "hydra.run.dir")
        nodes = [(group, config.get(group), group) for group in SINGLE_GROUPS]
        nodes += [(f"{group}.{key}", node, group) for group in MULTIPLE_GROUPS
                  for key, node in (config.get(group) or {}).items()]
        named = []
        for key, node, group in nodes:
            if not isinstance(node, DictConfig) or not isinstance(node.get("name"), str):
                continue
            spec = plugins[group].get(node.name)
            for field in declared_data_fields(spec.config):
                value = node.get(field)
                value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                named += [(f"{key}.{field}", _absolute(path, True)) for path in path_values(value)]
    except Exception:  # noqa: BLE001 - validation names it, one line
        return []
    return _inside_problems(setting_path(run_dir) if run_dir else None, named)


def _inside_problems(run_dir, named: Iterable[tuple]) -> list:
    """A Problem for each ``(config key, path)`` of ``named`` that is an existing folder holding ``run_dir``."""
    from tuneforge.host.components import Problem

    if not run_dir:
        return []
    run = os.path.realpath(str(run_dir))
    problems: list = []
    for key, path in named:
        folder = os.path.realpath(path) if path and os.path.isdir(path) else None
        if folder is None or not (run == folder or run.startswith(folder.rstrip(os.sep) + os.sep)):
            continue
        problems.append(Problem(key, "", line=(
            f"the run directory {run_dir} is inside the data folder {key}={path}: the run would read its own "
            f"files as data and change the folder's content hash; put run_dir (or hydra.run.dir) outside {path}")))
    return problems


def check_run_dir_outside_data(run_dir, components) -> None:
    """:func:`run_dir_data_problems` of a validated run (a :class:`~tuneforge.host.components.RunConfig`)
    whose run directory is ``run_dir`` (Hydra's output directory when ``run_dir`` is not set), as a
    ``ConfigError`` naming each."""
    problems = run_dir_data_problems(run_dir, selected_components(components))
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))


def selected_components(found) -> list:
    """``(config key, Component)`` of every selected component: ``found`` is a RunConfig, or the dict of
    group -> Component (or key -> Component for the list groups) that validation builds."""
    from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS

    get = found.get if isinstance(found, Mapping) else (lambda group: getattr(found, group, None))
    pairs = [(group, get(group)) for group in SINGLE_GROUPS]
    for group in MULTIPLE_GROUPS:
        pairs += [(f"{group}.{key}", component) for key, component in (get(group) or {}).items()]
    return pairs



"""A user's own config folders (``--config-dir``, ``hydra.searchpath``) next to tuneforge's built-in one.

Hydra searches the app's config package (``pkg://tuneforge.conf``, i.e. ``conf/``) before the folders
a user adds, so a user file at the path of a built-in file (``config.yaml``, ``trainer/smoke.yaml``,
``experiment/legal_citations.yaml``) would be silently ignored: :func:`check_user_configs` refuses
that before anything runs.  Component configs (``adapter/lora``, ``model/tiny``) are no files but
ConfigStore entries, which Hydra searches last, so a user file of that name does replace them.

A run's saved ``config.yaml`` copied under another name is a complete config without a defaults
list; :func:`saved_run_args` composes it on top of tuneforge's root config with the run's own
component choices, so ``--config-dir <dir> --config-name <name>`` re-runs it.

The rest turns Hydra's errors about a user's file into one line naming the file (and line):
:func:`explain_user_file_error`, :func:`defaults_cycle`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tuneforge.errors import ConfigError

#: the name the composed config of a saved run's config file is stored under (:func:`saved_run_args`)
SAVED_RUN_CONFIG = "tuneforge_saved_run"
#: the user's file stored as SAVED_RUN_CONFIG by this command (named in errors instead of that name)
_SAVED_RUN_FILE: dict = {}
_GLOBAL_HEADER = re.compile(r"^\s*#\s*@package\s+_global_\s*$")


# -- where the user's config files are ---------------------------------------------------------------

def _flag_value(args: Sequence[str], names: tuple) -> Optional[str]:
    """The value of the last of Hydra's flags ``names`` in ``args`` (``-cd X`` or ``--config-dir=X``)."""
    value = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            value = args[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in names:
            value = arg.split("=", 1)[1]
    return value


def _without_flag(args: Sequence[str], names: tuple) -> list:
    """``args`` without Hydra's flags ``names`` and their values (``-cd X`` or ``--config-dir=X``)."""
    rest, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif arg.split("=", 1)[0] not in names:
            rest.append(arg)
    return rest


def config_dirs(args: Sequence[str] = (), overrides: Sequence[str] = ()) -> list:
    """The user's config folders: ``--config-dir``/``-cd`` among ``args`` and the ``file://`` (or plain)
    entries of a ``hydra.searchpath=[...]`` override, as absolute paths."""
    dirs = []
    given = _flag_value(args, ("--config-dir", "-cd"))
    if given:
        dirs.append(Path(given).expanduser().absolute())
    searchpath = [o for o in overrides if o.lstrip("+").split("=", 1)[0].strip() == "hydra.searchpath"]
    if searchpath:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(searchpath[-1:])
        except Exception:  # Hydra says what is wrong with it when it composes
            return dirs
        value = parsed[0].value()
        for entry in value if isinstance(value, list) else [value]:
            entry = str(entry)
            if entry.startswith("file://"):
                entry = entry[len("file://"):]
            elif "://" in entry:
                continue  # pkg://: another package's configs
            dirs.append(Path(entry).expanduser().absolute())
    return dirs


def config_dir_as_searchpath(args: Sequence[str]) -> list:
    """``args`` with Hydra's ``--config-dir X`` (``-cd X``, ``--config-dir=X``) as the override
    ``hydra.searchpath=[file://<X absolute>]`` (added to one already given), for the commands that compose
    the config with Hydra's compose API (``data show``, ``plan``, ``eval``, ``config``, ``train --help``),
    which has no such flag: they then read the user's config folder as ``train`` does."""
    given = _flag_value(args, ("--config-dir", "-cd"))
    if given is None:
        return list(args)
    rest = _without_flag(args, ("--config-dir", "-cd"))
    entry = "file://" + str(Path(given).expanduser().absolute())
    for i, arg in enumerate(rest):
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            listed = value.strip()
            inner = listed[1:-1].strip() if listed.startswith("[") and listed.endswith("]") else listed
            rest[i] = f"{key}=[{inner + ',' if inner else ''}{entry}]"
            return rest
    return [*rest, f"hydra.searchpath=[{entry}]"]


def user_preset_files(group: str, dirs: Iterable[Path]) -> dict:
    """``{name: file}`` of the presets a user's config folders hold for ``group`` (``<dir>/<group>/*.yaml``)."""
    found: dict = {}
    for folder in dirs:
        for path in sorted((Path(folder) / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def config_name(args: Sequence[str]) -> Optional[str]:
    """The ``--config-name``/``-cn`` among ``args`` (None: the root config)."""
    return _flag_value(args, ("--config-name", "-cn"))


def builtin_dir() -> Path:
    """tuneforge's own config folder (the package ``tuneforge.conf``)."""
    import tuneforge.conf

    return Path(tuneforge.conf.__file__).parent


def builtin_files() -> dict:
    """``{relative path: file}`` of every built-in config file."""
    root = builtin_dir()
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def locate(config_path: str, dirs: Iterable[Path]) -> Optional[Path]:
    """The file Hydra read for ``config_path`` (``experiment/typo``): the built-in one first, as Hydra."""
    for folder in (builtin_dir(), *dirs):
        path = Path(folder) / f"{config_path}.yaml"
        if path.is_file():
            return path
    return None


def _load(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _defaults_of(path: Path) -> list:
    data = _load(path)
    entries = data.get("defaults") if isinstance(data, dict) else None
    return entries if isinstance(entries, list) else []


def _is_global(path: Path) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return any(_GLOBAL_HEADER.match(line) for line in lines[:5])


def is_saved_run_config(data) -> bool:
    """Whether a file's YAML is a run's saved ``config.yaml``: a complete config without a defaults list."""
    return (isinstance(data, dict) and "defaults" not in data and isinstance(data.get("model"), dict)
            and "name" in data["model"])


# -- before Hydra runs ---------------------------------------------------------------------------------

def check_user_configs(dirs: Iterable[Path], config_name: Optional[str] = None) -> None:
    """A ``ConfigError`` (one line) when a user config folder holds a file at the path of a built-in one
    with other content: Hydra would read the built-in one and ignore the user's without a word.  A root
    ``config.yaml`` counts only when ``config_name`` (``--config-name``) is the root config's own."""
    from tuneforge.host.compose import CONFIG_NAME

    builtin = builtin_files()
    if (config_name or CONFIG_NAME).removesuffix(".yaml") != CONFIG_NAME:
        builtin.pop(f"{CONFIG_NAME}.yaml", None)  # another primary config (a saved run's, copied) is read
    for folder in dirs:
        if not folder.is_dir() or folder.resolve() == builtin_dir().resolve():
            continue
        for relative, ours in builtin.items():
            theirs = folder / relative
            if theirs.is_file() and theirs.read_bytes() != ours.read_bytes():
                raise ConfigError(_shadow_message(theirs, folder, relative))


def _shadow_message(theirs: Path, folder: Path, relative: str) -> str:
    said = (f"{theirs} is ignored: tuneforge's built-in {relative} has the same name, and Hydra reads "
            "tuneforge's config folder before yours")
    group, _, file_name = relative.rpartition("/")
    stem = file_name[:-len(".yaml")]
    if not group:
        if is_saved_run_config(_load(theirs)):
            return (f"{said}; to re-run a run's saved config, copy it under another name and select that: "
                    f"cp {theirs} {folder / 'my_run.yaml'} && tuneforge train --config-dir {folder} "
                    "--config-name my_run")
        return (f"{said}; give it another name, e.g. {folder / f'my_{stem}.yaml'}, and select it with "
                f"--config-dir {folder} --config-name my_{stem}")
    plus = "+" if group == "experiment" else ""
    return (f"{said}; give it another name, e.g. {folder / group / f'my_{stem}.yaml'}, and select it with "
            f"{plus}{group}=my_{stem}")


def saved_run_args(args: Sequence[str], dirs: Sequence[Path]) -> list:
    """``args`` for Hydra: when ``--config-name`` selects a run's saved ``config.yaml`` (copied under
    another name into a user config folder), it is stored composed on tuneforge's root config, with the
    run's component choices (``- override model: <its model.name>`` ...) and its values on top, and
    ``--config-name`` names that instead; the run directory is the new run's, not the saved one."""
    name = config_name(args)
    if not name:
        return list(args)
    stem = name[:-len(".yaml")] if name.endswith(".yaml") else name
    found = next((Path(d) / f"{stem}.yaml" for d in dirs if (Path(d) / f"{stem}.yaml").is_file()), None)
    data = _load(found) if found is not None and not (builtin_dir() / f"{stem}.yaml").is_file() else None
    if not is_saved_run_config(data):
        return list(args)
    from hydra.core.config_store import ConfigStore

    from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS

    defaults: list = ["config"]
    for group in (*SINGLE_GROUPS, "strategy"):
        if isinstance(data.get(group), dict) and isinstance(data[group].get("name"), str):
            defaults.append({f"override {group}": data[group]["name"]})
    for group in MULTIPLE_GROUPS:
        if isinstance(data.get(group), dict):
            defaults.append({f"override {group}": [str(key) for key in data[group]]})
    values = {key: value for key, value in data.items() if key != "run_dir"}
    ConfigStore.instance().store(name=SAVED_RUN_CONFIG, node={"defaults": [*defaults, "_self_"], **values})
    _SAVED_RUN_FILE["path"] = found
    return [*_without_flag(args, ("--config-name", "-cn")), "--config-name", SAVED_RUN_CONFIG]


# -- Hydra's errors about a user's file ----------------------------------------------------------------

def defaults_cycle(dirs: Iterable[Path]) -> str:
    """One line for a defaults list that recurses without end (Hydra's RecursionError): the cycle of the
    user's files, found by following their defaults lists."""
    edges: dict = {}
    files: dict = {}
    for folder in dirs:
        for path in sorted(Path(folder).rglob("*.yaml")) if Path(folder).is_dir() else ():
            node = path.relative_to(folder).with_suffix("").as_posix()
            files.setdefault(node, path)
            edges.setdefault(node, [d for d in (_default_target(node, e) for e in _defaults_of(path)) if d])
    for start in sorted(edges):
        cycle = _find_cycle(start, edges, [])
        if cycle:
            shown = " -> ".join(f"{n} ({files[n]})" if n in files else n for n in cycle[:-1])
            if len(cycle) == 2:
                group, _, name = cycle[0].rpartition("/")
                return (f"{files[cycle[0]]} lists itself in its defaults list ('- {name}' in group '{group}' "
                        f"is this file, not tuneforge's built-in {cycle[0]}); a preset that extends a built-in "
                        f"needs another name, e.g. {files[cycle[0]].with_name(f'my_{name}.yaml')} with "
                        f"'- {name}' in its defaults list, selected with {group}=my_{name}")
            return (f"the defaults lists form a cycle: {shown} -> {cycle[-1]}; remove one of these entries "
                    "(a preset that extends a built-in needs another name than it)")
    return ("the config's defaults lists recurse without end (a config lists itself, directly or through "
            "others); a preset that extends a built-in needs another name than it")


def _default_target(node: str, entry) -> Optional[str]:
    """The config a defaults-list entry of ``node`` (``model/tiny``) selects (``model/tiny``), or None."""
    group = node.rpartition("/")[0]
    if isinstance(entry, str):
        if entry == "_self_":
            return None
        return entry.lstrip("/") if entry.startswith("/") else "/".join(p for p in (group, entry) if p)
    if isinstance(entry, dict) and len(entry) == 1:
        (key, value), = entry.items()
        key = str(key)
        if key.startswith("override ") or not isinstance(value, str):
            return None
        key = key.split("@", 1)[0].removeprefix("optional ").strip()
        where = key.lstrip("/") if key.startswith("/") else "/".join(p for p in (group, key) if p)
        return f"{where}/{value}"
    return None


def _find_cycle(node: str, edges: dict, path: list) -> Optional[list]:
    if node in path:
        return path[path.index(node):] + [node]
    for target in edges.get(node, ()):
        found = _find_cycle(target, edges, [*path, node])
        if found:
            return found
    return None


def key_line(path: Optional[Path], full_key: str) -> str:
    """``:<line>`` of ``full_key``'s last key in the file (after its parents' lines where they are
    there), or ``""`` when it is not found."""
    if path is None:
        return ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    found, start = None, 0
    for part in full_key.split("."):
        pattern = re.compile(rf"(^|[\s{{,]){re.escape(part)}\s*:")
        at = next((i for i in range(start, len(lines))
                   if pattern.search(lines[i]) and not lines[i].lstrip().startswith("#")), None)
        if at is not None:
            found, start = at, at
    return f":{found + 1}" if found is not None else ""


def multiple_values_error(text: str, dirs: Iterable[Path]) -> Optional[str]:
    """Hydra's "Multiple values for model. To override a value use 'override model: x'" naming the file."""
    found = re.search(r"Multiple values for (\S+?)\. To override a value use 'override ([^:]+): ([^']+)'", text)
    if not found:
        return None
    group, _, choice = found.groups()
    for folder in dirs:
        for path in sorted(Path(folder).rglob("*.yaml")) if Path(folder).is_dir() else ():
            for entry in _defaults_of(path):
                if (isinstance(entry, dict) and len(entry) == 1 and str(next(iter(entry))).lstrip("/") == group
                        and str(next(iter(entry.values()))) == choice):
                    key = next(iter(entry))
                    return (f"{path}: its defaults list chooses '{group}' again ('- {key}: {choice}'), which "
                            f"the root config already chooses; replace the choice with '- override {key}: {choice}'")
    return (f"'{group}' is chosen twice in a defaults list; replace the choice with "
            f"'- override /{group}: {choice}'")


def _explain_saved_run_error(error, unknown_key_line) -> str:
    full_key = getattr(error, "full_key", None) or ""
    if isinstance(error, KeyError) and full_key:
        return unknown_key_line(full_key, error).split(";")[0]
    return str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__


def explain_user_file_error(config_path: str, error, dirs: Sequence[Path], unknown_key_line) -> str:
    """One line for an OmegaConf ``error`` raised while Hydra merged the file of ``config_path``
    (``experiment/typo``): what is wrong, the file (and line), and what to write.  ``unknown_key_line``
    formats an unknown key as on the command line (:func:`tuneforge.host.compose.unknown_key_line`)."""
    from tuneforge.host.components import MULTIPLE_GROUPS

    if config_path == SAVED_RUN_CONFIG and _SAVED_RUN_FILE.get("path") is not None:
        return (f"{_explain_saved_run_error(error, unknown_key_line)} in {_SAVED_RUN_FILE['path']} (a run's saved "
                "config: it keeps its components' settings, so override values, not components; for another "
                "component write a config of your own)")
    path = locate(config_path, dirs)
    where = str(path) if path is not None else f"'{config_path}'"
    group = config_path.rpartition("/")[0]
    message = str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__
    full_key = getattr(error, "full_key", None) or ""
    object_type = getattr(error, "object_type", None)
    root = getattr(object_type, "__name__", "") == "TuneforgeConfig"
    data = _load(path) if path is not None else None
    if "not a subclass of" in message:
        name = config_path.rpartition("/")[2]
        candidates = [p for d in dirs for p in sorted((Path(d) / group).glob("*.yaml")) if _is_global(p)]
        culprit = next((p for p in candidates if name in str(_defaults_of(p))),
                       candidates[0] if candidates else None)
        return (f"{culprit or where} starts with '# @package _global_', so it and its defaults ({config_path}) land "
                f"at the root of the config, where a {group} preset does not fit; leave that line out of a "
                f"{group} preset (only experiment files need it)")
    if "Cannot merge DictConfig with ListConfig" in message:
        lists = [key for key in MULTIPLE_GROUPS if isinstance(data, dict) and isinstance(data.get(key), list)]
        if lists:
            key = lists[0]
            choice = ", ".join(str(v) for v in data[key])
            return (f"'{key}: [{choice}]' in {where}{key_line(path, key)} sets a list group as a value; list groups "
                    f"are chosen in the file's defaults list: '- override /{key}: [{choice}]'")
    if isinstance(error, KeyError) and full_key:
        parent, _, leaf = full_key.rpartition(".")
        if root and not parent and group and full_key == group.replace("/", "."):
            what = "holds a YAML list" if isinstance(data, list) else "has no '# @package _global_' header"
            return (f"{where} {what}: a{'n' if group[0] in 'aeiou' else ''} {group} file needs "
                    "'# @package _global_' as its first line and root keys under it (trainer: {max_steps: 1}); "
                    f"without it Hydra puts its settings under '{group}', which is no setting")
        if group and parent == group.replace("/", ".") and leaf == group.rpartition("/")[2]:
            return (f"the keys of {where}{key_line(path, full_key)} are already inside '{parent}' (it is a {group} "
                    f"preset): write them at the top level of the file, without '{leaf}:'")
        if root and group and group != "experiment" and path is not None and _is_global(path):
            return (f"{where} starts with '# @package _global_', so its keys are root keys and '{full_key}' is "
                    f"none; leave that line out of a {group} preset (only experiment files need it)")
        return unknown_key_line(full_key, error, f" in {where}{key_line(path, full_key)}")
    if full_key:
        return f"bad value for '{full_key}' in {where}{key_line(path, full_key)}: {message}"
    return f"{where}: {message}"


def empty_list_group_warnings(overrides: Sequence[str], dirs: Sequence[Path]) -> list:
    """Warnings for a selected user file that sets a list group to ``{}`` (``baselines: {}``), which
    merges nothing: the default components still run."""
    from tuneforge.host.components import MULTIPLE_GROUPS

    warnings = []
    for override in overrides:
        if "=" not in override or override.startswith("~"):
            continue
        group, value = override.lstrip("+").split("=", 1)
        for folder in dirs:
            path = Path(folder) / group / f"{value.strip()}.yaml"
            data = _load(path) if "/" not in value and path.is_file() else None
            for key in MULTIPLE_GROUPS if isinstance(data, dict) else ():
                if data.get(key) == {}:
                    warnings.append(f"'{key}: {{}}' in {path}{key_line(path, key)} changes nothing (the default "
                                    f"{key} still run); to run none write '- override /{key}: []' in its "
                                    "defaults list")
    return warnings

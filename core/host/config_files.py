"""A user's own config folders (``--config-dir``, ``hydra.searchpath``) next to tuneforge's built-in one.

Hydra searches the app's config package (``pkg://tuneforge.conf``, i.e. ``conf/``) before the folders
a user adds, so a user file at the path of a built-in file (``config.yaml``, ``trainer/smoke.yaml``,
``experiment/legal_citations.yaml``) would be silently ignored: :func:`check_user_configs` refuses
that before anything runs.  Component configs (``adapter/lora``, ``model/tiny``) are no files but
ConfigStore entries, which Hydra searches last, so a user file of that name does replace them.

``--config-dir`` is one folder (:func:`given_config_dir`: two different ones, a file or a missing
folder are one line each, for ``train`` as for the compose-API commands, which get it as a quoted
``hydra.searchpath`` entry, :func:`config_dir_as_searchpath`).

A run's saved ``config.yaml`` copied under another name is a complete config without a defaults
list; :func:`saved_run_args` composes it on top of tuneforge's root config with the run's own
component choices, so ``--config-dir <dir> --config-name <name>`` re-runs it.  Its ``run_dir`` is the
saved run's and is not read: the re-run's directory is chosen as any run's (``run_dir=``, else a new
one); one edited to another folder is a warning saying so.  An ``evidence.seeds=N`` run has a saved
config per seed (``seed-<seed>/config.yaml``): the first seed's with ``evidence.seeds=N`` is the command.

The rest turns Hydra's errors about a user's file into one line naming the file (and line) and key:
:func:`explain_user_file_error`, :func:`defaults_cycle`, :func:`in_saved_run_file`.
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
#: a key the saved config does not set (:func:`in_saved_run_file`)
_ABSENT = object()
_GLOBAL_HEADER = re.compile(r"^\s*#\s*@package\s+_global_\s*$")


# -- where the user's config files are ---------------------------------------------------------------

def _flag_values(args: Sequence[str], names: tuple) -> list:
    """The values of Hydra's flags ``names`` in ``args`` (``-cd X`` or ``--config-dir=X``), in order."""
    values = []
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            values.append(args[i + 1])
        elif "=" in arg and arg.split("=", 1)[0] in names:
            values.append(arg.split("=", 1)[1])
    return values


def _flag_value(args: Sequence[str], names: tuple) -> Optional[str]:
    """The value of the last of Hydra's flags ``names`` in ``args`` (``-cd X`` or ``--config-dir=X``)."""
    values = _flag_values(args, names)
    return values[-1] if values else None


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


#: Hydra's flag for a user's config folder, long and short
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def searchpath_entry(folder) -> str:
    """``file://<folder>`` as an entry of a ``hydra.searchpath=[...]`` override that Hydra's override grammar
    reads back exactly: a folder of letters, digits and ``_./-`` as it is, any other (a space, ``é``, ``,``,
    quotes) a quoted string (:func:`tuneforge.host.paths.override_value`; Hydra takes the entry as it is,
    so ``${`` stays unescaped)."""
    from tuneforge.host.paths import override_value, quoted_override_string

    text = str(folder)
    if override_value(text) == text:
        return f"file://{text}"
    return quoted_override_string(f"file://{text}", interpolation=False)


def given_config_dir(args: Sequence[str]) -> Optional[Path]:
    """The ``--config-dir``/``-cd`` among ``args`` as an absolute path (None: not given).  A ``ConfigError``
    (one line) when it is given twice with two folders (Hydra would read the last only), names a file, or
    no folder at all."""
    import shlex

    given = list(dict.fromkeys(Path(v).expanduser().absolute() for v in _flag_values(args, CONFIG_DIR_FLAGS)))
    if not given:
        return None
    if len(given) > 1:
        more = ",".join(searchpath_entry(folder) for folder in given[1:])
        raise ConfigError(f"--config-dir is given {len(given)} times ({', '.join(str(f) for f in given)}), and "
                          "Hydra would read the last one only; give one --config-dir and the other folders as "
                          f"hydra.searchpath: --config-dir {shlex.quote(str(given[0]))} "
                          f"{shlex.quote(f'hydra.searchpath=[{more}]')}")
    folder = given[0]
    if folder.is_file():
        raise ConfigError(f"--config-dir {folder} is a file; --config-dir takes the folder that holds your config "
                          f"files{_file_as_selection(folder)}")
    if not folder.is_dir():
        raise ConfigError(f"--config-dir {folder}: no such folder; give the folder that holds your config files "
                          "(e.g. conf, with conf/model/my_tiny.yaml, conf/experiment/my_run.yaml)")
    return folder


def _file_as_selection(path: Path) -> str:
    """How a config file given as ``--config-dir`` is selected from its folder (``""`` for no YAML file)."""
    if path.suffix not in (".yaml", ".yml"):
        return ""
    import shlex

    from tuneforge.host.components import MULTIPLE_GROUPS, SINGLE_GROUPS

    group = path.parent.name
    groups = {*SINGLE_GROUPS, *MULTIPLE_GROUPS, "strategy"} | {p.name for p in builtin_dir().iterdir() if p.is_dir()}
    if group in groups and path.suffix == ".yaml":
        plus = "+" if group == "experiment" else ""
        return f"; to select this one: --config-dir {shlex.quote(str(path.parent.parent))} {plus}{group}={path.stem}"
    return f"; to select this one: --config-dir {shlex.quote(str(path.parent))} --config-name {path.stem}"


def _absolute_config_dir(args: Sequence[str]) -> list:
    """``args`` with the value of each ``--config-dir``/``-cd`` the absolute folder it names."""
    given = given_config_dir(args)
    result = list(args)
    for i, arg in enumerate(result):
        if given is not None and arg in CONFIG_DIR_FLAGS and i + 1 < len(result):
            result[i + 1] = str(given)
        elif given is not None and arg.split("=", 1)[0] in CONFIG_DIR_FLAGS and "=" in arg:
            result[i] = f"{arg.split('=', 1)[0]}={given}"
    return result


def config_dirs(args: Sequence[str] = (), overrides: Sequence[str] = ()) -> list:
    """The user's config folders: ``--config-dir``/``-cd`` among ``args`` (:func:`given_config_dir`) and the
    ``file://`` (or plain) entries of a ``hydra.searchpath=[...]`` override, as absolute paths; an entry
    that is a file is a ``ConfigError`` (one line)."""
    dirs = []
    given = given_config_dir(args)
    if given is not None:
        dirs.append(given)
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
            folder = Path(entry).expanduser().absolute()
            if folder.is_file():
                raise ConfigError(f"hydra.searchpath entry {folder} is a file; hydra.searchpath lists folders that "
                                  f"hold config files{_file_as_selection(folder)}")
            dirs.append(folder)
    return dirs


def config_dir_as_searchpath(args: Sequence[str]) -> list:
    """``args`` with Hydra's ``--config-dir X`` (``-cd X``, ``--config-dir=X``) as the override
    ``hydra.searchpath=[file://<X absolute>]`` (added to one already given; quoted as Hydra's grammar needs,
    :func:`searchpath_entry`), for the commands that compose the config with Hydra's compose API
    (``data show``, ``plan``, ``eval``, ``config``, ``train --help``), which has no such flag: they then read
    the user's config folder as ``train`` does.  A bad ``--config-dir`` is a ``ConfigError``
    (:func:`given_config_dir`)."""
    given = given_config_dir(args)
    if given is None:
        return list(args)
    rest = _without_flag(args, CONFIG_DIR_FLAGS)
    entry = searchpath_entry(given)
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
    ``--config-name`` names that instead; the run directory is the new run's, not the saved one.  The
    ``--config-dir`` is the absolute folder :func:`given_config_dir` checked (``~`` expanded, which Hydra
    does not do)."""
    args = _absolute_config_dir(args)
    _SAVED_RUN_FILE.clear()
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
    values = {key: value for key, value in data.items() if key != "run_dir"}  # the saved run's (see below)
    ConfigStore.instance().store(name=SAVED_RUN_CONFIG, node={"defaults": [*defaults, "_self_"], **values})
    _SAVED_RUN_FILE.update(path=found, data=data)
    warning = _saved_run_dir_warning(args, found, data)
    if warning:
        import logging

        logging.getLogger("tuneforge").warning("%s", warning)
    return [*_without_flag(args, ("--config-name", "-cn")), "--config-name", SAVED_RUN_CONFIG]


def _saved_run_dir_warning(args: Sequence[str], found: Path, data: dict) -> Optional[str]:
    """A warning when the saved config's ``run_dir`` was edited (it names no run's directory) and the
    command line chooses none: a re-run's directory is chosen as any run's (``run_dir=`` on the command
    line, else a new one), never by the file, whose ``run_dir`` is the saved run's own: re-running into it
    would resume (or, ``resume=never``, move aside) that run."""
    saved = data.get("run_dir")
    if not isinstance(saved, str) or not saved.strip() or (Path(saved).expanduser() / "config.yaml").is_file():
        return None  # unset, or a run's own directory (the saved run's): the re-run gets a new one, as documented
    chosen = ("run_dir", "hydra.run.dir", "hydra.sweep.dir")
    if {"-m", "--multirun"} & set(args) or any(a.lstrip("+").split("=", 1)[0] in chosen for a in args):
        return None
    import shlex

    from tuneforge.host.paths import override_value

    return (f"run_dir: {saved} in {found}{key_line(found, 'run_dir')} is not used: a re-run of a saved config gets "
            "a new run directory, as a run without run_dir= does (the file's run_dir is the saved run's); to train "
            f"in {saved}, give it on the command line: {shlex.quote('run_dir=' + override_value(saved))}")


def in_saved_run_file(message: str, overrides: Sequence[str]) -> str:
    """``message`` (a refusal of the composed config, one ``<key>: <problem>`` a line) with the file and
    line of each key that the run's saved config re-run by this command sets (and the command line does
    not): ``optim.scheduler: must be one of ... (in <file>:<line>)``."""
    path, data = _SAVED_RUN_FILE.get("path"), _SAVED_RUN_FILE.get("data")
    if path is None:
        return message
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    lines = []
    for line in message.splitlines():
        key = re.match(r"([A-Za-z_][\w.]*): ", line)
        node = data
        for part in key.group(1).split(".") if key else ():
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if key and node is not _ABSENT and key.group(1) not in given:
            line = f"{line} (in {path}{key_line(path, key.group(1))})"
        lines.append(line)
    return "\n".join(lines)


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
    there; its first key at the top level of the file where it is there), or ``""`` when it is not found."""
    if path is None:
        return ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    found, start = None, 0
    for n, part in enumerate(full_key.split(".")):
        patterns = [re.compile(rf"(^|[\s{{,]){re.escape(part)}\s*:")]
        if n == 0:  # a root key (seed) before a section's key of the same name (model.seed)
            patterns.insert(0, re.compile(rf"^{re.escape(part)}\s*:"))
        at = next((i for pattern in patterns for i in range(start, len(lines))
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


def _saved_run_error(error, unknown_key_line) -> str:
    """One line for an OmegaConf ``error`` in a run's saved config (re-run with ``--config-name``): the key,
    the file and line, and what is valid."""
    path, data = _SAVED_RUN_FILE["path"], _SAVED_RUN_FILE.get("data")
    full_key = getattr(error, "full_key", None) or ""
    message = str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__
    if isinstance(error, KeyError) and full_key:
        return (f"{unknown_key_line(full_key, error).split(';')[0]} in {path}{key_line(path, full_key)} (a run's "
                "saved config: it keeps its components' settings, so override values, not components; for "
                "another component write a config of your own)")
    if full_key:
        return f"bad value for '{full_key}' in {path}{key_line(path, full_key)}: {message}{_takes(error, full_key)}"
    listed = [key for key, value in (data.items() if isinstance(data, dict) else ()) if isinstance(value, list)]
    if listed and ("ListConfig" in message or "list is not a subclass of" in message):
        from tuneforge.host.components import MULTIPLE_GROUPS

        key = listed[0]
        if key in MULTIPLE_GROUPS:
            chosen = ", ".join(str(v) for v in data[key])
            mapping = ", ".join(f"{v}: {{}}" for v in data[key])
            return (f"'{key}: [{chosen}]' in {path}{key_line(path, key)} is a list; in a run's saved config {key} "
                    f"is a mapping of each chosen one to its settings: '{key}: {{{mapping}}}' ({{}}: its defaults)")
        return (f"'{key}' in {path}{key_line(path, key)} is a list; in a run's saved config '{key}' is a mapping "
                f"of settings ({key}: {{...}}), as the run saved it")
    return f"{path}: {message}"


def _takes(error, full_key: str) -> str:
    """``; <key> takes <type>`` (as ``train --help`` writes it) from the dataclass field the error's key is
    (``""`` when unknown)."""
    import dataclasses
    import typing

    from tuneforge.host.config_docs import type_name

    object_type = getattr(error, "object_type", None)
    if not (isinstance(object_type, type) and dataclasses.is_dataclass(object_type)):
        return ""
    try:
        kind = typing.get_type_hints(object_type).get(full_key.rpartition(".")[2])
    except Exception:  # an annotation that does not resolve: say nothing more
        return ""
    return f"; {full_key} takes {type_name(kind)}" if kind not in (None, typing.Any) else ""


def explain_user_file_error(config_path: str, error, dirs: Sequence[Path], unknown_key_line) -> str:
    """One line for an OmegaConf ``error`` raised while Hydra merged the file of ``config_path``
    (``experiment/typo``): what is wrong, the file (and line), and what to write.  ``unknown_key_line``
    formats an unknown key as on the command line (:func:`tuneforge.host.compose.unknown_key_line`)."""
    from tuneforge.host.components import MULTIPLE_GROUPS

    if config_path == SAVED_RUN_CONFIG and _SAVED_RUN_FILE.get("path") is not None:
        return _saved_run_error(error, unknown_key_line)
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
        return f"bad value for '{full_key}' in {where}{key_line(path, full_key)}: {message}{_takes(error, full_key)}"
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

"""From command-line overrides to a composed config and loaded plugins.

Plugins must be loaded before Hydra composes the config (their config
dataclasses become group options), so the plugin switches
(``plugins.disable``, ``plugins.enable``, ``plugins.autoload``) are read from
the overrides and the environment first.  The config is composed once: by
``hydra.main`` for ``tuneforge train`` (:mod:`tuneforge.commands.train`), or by
:func:`compose` (Hydra's compose API) for code that runs without the CLI.
Composition errors become one-line ``ConfigError`` messages
(:func:`explain_composition_error`); the composed config is then checked by
:mod:`tuneforge.host.components`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional, Sequence

from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.host.plugin_manager import PluginSelection, Plugins, create_plugin_manager, unknown_choice_note

CONFIG_MODULE = "tuneforge.conf"
CONFIG_NAME = "config"


def plugin_selection(overrides: Sequence[str]) -> PluginSelection:
    """The plugin switches named in ``overrides`` merged with the environment's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra.errors import OverrideParseException

    values = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(override_parse_error(exc)) from None
    for override in parsed:
        key = override.key_or_group
        if key in ("plugins.disable", "plugins.enable", "plugins.autoload"):
            values[key.split(".")[1]] = override.value()
    for key in ("disable", "enable"):
        if key in values and not isinstance(values[key], list):
            values[key] = [values[key]]
    return PluginSelection.from_env(disable=values.get("disable", ()), enable=values.get("enable", ()),
                                    autoload=values.get("autoload"))


def _override_key(override: str) -> str:
    """The key or group an override string sets, without its ``+``/``++``/``~`` prefix and ``@package``:
    a cheap first look that decides whether Hydra's parser (about 1 ms per override) has to run."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0].strip()


def override_parse_error(exc) -> str:
    """One line for Hydra's ``OverrideParseException``: the override, what is wrong in it, what to write.

    Hydra's message has several lines (a caret under the bad character, a
    "See https://hydra.cc/..." link, sometimes "Error parsing override '<it>'"
    before the cause); they become ``cannot parse override '<it>': <cause>``.
    """
    override = getattr(exc, "override", "") or ""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("See https://")]
    if lines and lines[0].startswith("LexerNoViableAltException: "):
        caret = next((line for line in lines[1:] if line.strip() == "^"), None)
        position = len(caret) - len("LexerNoViableAltException: ") - 1 if caret else -1
        char = override[position] if 0 <= position < len(override) else ""
        cause = f"unexpected character {char!r} at position {position + 1}" if char else "unexpected character"
        if char in "'\"" and override.count(char) % 2:
            cause += " (an unclosed quote)"
    else:
        cause = " ".join(line.strip() for line in lines if not line.startswith("Error parsing override"))
    cause = cause or "not valid override syntax"
    shown = override.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")  # keep it one line
    return (f"cannot parse override '{shown}': {cause}; write key=value, group=choice or key=[a,b], and "
            "quote values with special characters: 'key=\"a,b\"' (see docs/plugins.md, 'Override values')")


def load_plugins(overrides: Sequence[str] = (), extra_plugins: Iterable = ()) -> Plugins:
    """Load plugins for a run with these overrides, register their configs and the host's resolvers."""
    from tuneforge.host.schema import register_configs, register_resolvers

    plugins = create_plugin_manager(plugin_selection(overrides), extra_plugins)
    register_configs(plugins)
    register_resolvers()
    return plugins


def sets_list_group(overrides: Sequence[str]) -> bool:
    """Whether an override sets a list group (``evaluators=[...]``, ``+callbacks=[...]``)."""
    from tuneforge.host.components import MULTIPLE_GROUPS

    return any(_override_key(o) in MULTIPLE_GROUPS for o in overrides)


def keep_only_listed_components(cfg, overrides: Sequence[str]) -> None:
    """Make a list group that the overrides set (``evaluators=[exact_match]``) hold exactly those components.

    An experiment adds components with absolute defaults (``- /evaluators/forgetting``),
    which Hydra merges after the command line's choice (and a list group cannot be
    overridden inside a defaults list), so ``evaluators=[exact_match]`` would still run
    the experiment's other evaluators.  Those are removed from ``cfg`` here, with a
    warning naming them; additions (``+evaluators=...``) and sweeps are left alone.
    """
    import logging

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, open_dict

    from tuneforge.host.components import MULTIPLE_GROUPS

    if not sets_list_group(overrides):
        return
    parsed = OverridesParser.create().parse_overrides(list(overrides))  # Hydra composed with them: they parse
    last = {}  # a group set twice: Hydra takes the last; a later +group=[...] adds to it
    for override in parsed:
        group = override.key_or_group
        if (group not in MULTIPLE_GROUPS or override.package is not None or override.is_delete()
                or override.is_sweep_override() or (override.is_add() and group not in last)):
            continue
        value = override.value()
        names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        last[group] = [*last[group], *names] if override.is_add() else names
    for group, listed in last.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        extra = [str(key) for key, entry in node.items()  # nameless leftovers: see components.py
                 if str(key) not in listed and isinstance(entry, DictConfig) and "name" in entry]
        if not extra:
            continue
        with open_dict(node):
            for key in extra:
                del node[key]
        logging.getLogger("tuneforge").warning(
            "%s=[%s] on the command line: %s dropped (selected by the experiment's defaults)", group,
            ",".join(listed), ", ".join(extra))


def compose(overrides: Sequence[str] = (), plugins: Optional[Plugins] = None, choices: Optional[dict] = None):
    """Compose the config with Hydra's compose API (no working-directory change, no run dir).

    With ``plugins`` the result is also validated (a ``ConfigError`` names
    every problem); :func:`run_train` validates it itself.  A ``choices`` dict
    receives each config group's chosen file as Hydra resolved it (``model:
    mytiny`` for a user's preset whose ``name`` is ``tiny``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from tuneforge.host.schema import register_resolvers

    register_resolvers()
    dirs = check_config_dirs((), overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides),
                                return_hydra_config=choices is not None)
        if choices is not None:
            from omegaconf import open_dict

            choices.update({group: chosen for group, chosen in cfg.hydra.runtime.choices.items()
                            if not group.startswith("hydra/")})
            with open_dict(cfg):
                del cfg["hydra"]
        keep_only_listed_components(cfg, overrides)
    except Exception as exc:
        line = explain_config_error(exc, overrides, dirs)
        if line is None:
            raise
        raise ConfigError(line) from (None if _recursion(exc) else exc)
    finally:
        GlobalHydra.instance().clear()
    if plugins is not None:
        from tuneforge.host.components import run_components

        run_components(cfg, plugins)
    return cfg


def yaml_syntax_error(exc: BaseException) -> Optional[str]:
    """One line for a YAML syntax error in a config file (an experiment, a preset, a ``--config-dir``
    file) found in ``exc`` or its causes: ``<file>:<line>:<column>: invalid YAML: <problem> (<context>
    at line L, column C)``; None when ``exc`` is not one."""
    import yaml

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            mark = exc.problem_mark
            where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}"
            context = ""
            if exc.context and exc.context_mark is not None:
                context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
            return f"{where}: invalid YAML: {exc.problem or 'syntax error'}{context}"
        if isinstance(exc, yaml.YAMLError):
            return f"invalid YAML: {(str(exc).splitlines() or ['syntax error'])[0]}"
        exc = exc.__cause__ or exc.__context__
    return None


def check_config_dirs(args: Sequence[str], overrides: Sequence[str]) -> list:
    """The user's config folders (``--config-dir`` among ``args``, ``hydra.searchpath`` among ``overrides``),
    checked before Hydra composes: a file a built-in one shadows is a ``ConfigError``; a selected file that
    sets a list group to ``{}`` (it changes nothing) a warning (:mod:`tuneforge.host.config_files`)."""
    import logging

    from tuneforge.host.config_files import check_user_configs, config_dirs, config_name, empty_list_group_warnings

    dirs = config_dirs(args, overrides)
    check_user_configs(dirs, config_name(args))
    for warning in empty_list_group_warnings(overrides, dirs):
        logging.getLogger("tuneforge").warning("%s", warning)
    return dirs


def explain_config_error(exc: BaseException, overrides: Sequence[str] = (), config_dirs: Sequence = ()) -> Optional[str]:
    """One line for an error raised while composing the config: a YAML syntax error, a defaults list that
    recurses without end, or a Hydra/OmegaConf composition error; None for any other error."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if _recursion(exc):
        from tuneforge.host.config_files import defaults_cycle

        return defaults_cycle(config_dirs)
    line = yaml_syntax_error(exc)
    if line is None and isinstance(exc, (HydraException, OmegaConfBaseException)):
        line = explain_composition_error(exc, overrides, config_dirs)
    return line


def _recursion(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was caused by) a RecursionError: Hydra following a defaults-list cycle."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RecursionError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def explain_composition_error(exc: Exception, overrides: Sequence[str] = (), config_dirs: Sequence = ()) -> str:
    """One line for a Hydra/OmegaConf composition error: the key or choice, and what is valid.

    The valid keys of an unknown key's node come from the error itself (the
    node and its dataclass), not from composing again; ``overrides`` is not
    needed for that any more and is accepted for existing callers.  An error in
    a config file (an experiment, a preset in ``config_dirs``) names the file
    (:func:`tuneforge.host.config_files.explain_user_file_error`).
    """

    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        return override_parse_error(exc)
    text = str(exc)
    cause = str(exc.__cause__ or "")
    in_file = _user_file_error(exc, config_dirs)
    if in_file:
        return in_file
    missing = re.search(r"Could not (?:find|load) '([^']+)/([^']+)'", text)
    if missing:
        group, choice = missing.groups()
        valid = _group_choices(group, config_dirs)
        return (f"unknown choice '{choice}' for '{group}'{did_you_mean(choice, valid)}; "
                f"valid: {', '.join(valid) or '(none installed)'}{unknown_choice_note(choice, valid)}")
    key = re.search(r"full_key: (\S+)", cause)
    if "not in" in cause and key:
        return unknown_key_line(key.group(1), exc.__cause__)
    if key:
        problem = cause.splitlines()[0]
        return f"bad value for '{key.group(1)}': {problem}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()
                    and not line.startswith(("Config search path", "\tprovider=")))


def unknown_key_line(full_key: str, cause, where: str = "") -> str:
    """``unknown config key 'trainer.max_stepz'<where> (did you mean 'max_steps'?); valid keys of trainer:
    ...``: the valid keys from the OmegaConf error ``cause`` (:func:`_valid_keys`)."""
    from tuneforge.host.schema import COMPONENT_GROUPS

    parent, _, leaf = full_key.rpartition(".")
    valid = _valid_keys(cause)
    if parent.split(".")[0] in COMPONENT_GROUPS:
        valid = [k for k in valid if k != "name"]  # the choice itself: set with <group>=<choice>
    return (f"unknown config key '{full_key}'{where}{did_you_mean(leaf, valid)}; valid keys"
            f"{' of ' + parent if parent else ''}: {', '.join(valid)}")


def _user_file_error(exc: BaseException, config_dirs: Sequence) -> Optional[str]:
    """One line naming the config file for Hydra's "In '<config>': <Error> raised while composing config"
    (the OmegaConf error is the exception's context) and "Multiple values for <group>"; None otherwise."""
    from omegaconf.errors import OmegaConfBaseException

    from tuneforge.host.config_files import explain_user_file_error, multiple_values_error

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for i, link in enumerate(chain):
        found = re.match(r"In '([^']+)': \w+ raised while composing config:", str(link))
        error = next((e for e in chain[i + 1:] if isinstance(e, OmegaConfBaseException)), None)
        if found and error is not None:
            return explain_user_file_error(found.group(1), error, list(config_dirs), unknown_key_line)
        multiple = multiple_values_error(str(link), config_dirs)
        if multiple:
            return multiple
    return None


def _group_choices(group: str, config_dirs: Sequence = ()) -> list:
    """The choices of ``group``: components, built-in presets and the presets of the user's ``config_dirs``."""
    from hydra.core.config_store import ConfigStore

    from tuneforge.host.config_files import user_preset_files
    from hydra.core.global_hydra import GlobalHydra
    from hydra import initialize_config_module

    names = set(ConfigStore.instance().list(group)) if group in ConfigStore.instance().repo else set()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            names |= set(GlobalHydra.instance().config_loader().get_group_options(group))
    finally:
        GlobalHydra.instance().clear()
    names |= set(user_preset_files(group, config_dirs))
    return sorted({n[:-5] if n.endswith(".yaml") else n for n in names})


def _valid_keys(cause) -> list:
    """The keys of the node an unknown key was set on: its dataclass's fields, else the node's keys."""
    object_type = getattr(cause, "object_type", None)
    if isinstance(object_type, type) and dataclasses.is_dataclass(object_type):
        return sorted(f.name for f in dataclasses.fields(object_type))
    node = getattr(cause, "parent_node", None)
    return sorted(str(k) for k in node.keys() if k != "hydra") if hasattr(node, "keys") else []

"""From command-line overrides to a composed config and loaded plugins.

Plugins must be loaded before Hydra composes the config (their config
dataclasses become group options), so the plugin switches
(``plugins.disable``, ``plugins.enable``, ``plugins.autoload``) are read from
the overrides and the environment first.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.host.plugin_manager import PluginSelection, Plugins, create_plugin_manager

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
        bad = str(exc).splitlines()[0].split(": ", 1)[-1]
        raise ConfigError(f"cannot parse override {bad}; write key=value, group=choice or key=[a,b] "
                          "(quote the whole argument in the shell)") from None
    for override in parsed:
        key = override.key_or_group
        if key in ("plugins.disable", "plugins.enable", "plugins.autoload"):
            values[key.split(".")[1]] = override.value()
    for key in ("disable", "enable"):
        if key in values and not isinstance(values[key], list):
            values[key] = [values[key]]
    return PluginSelection.from_env(disable=values.get("disable", ()), enable=values.get("enable", ()),
                                    autoload=values.get("autoload"))


def load_plugins(overrides: Sequence[str] = (), extra_plugins: Iterable = ()) -> Plugins:
    """Load plugins for a run with these overrides and register their configs with Hydra."""
    from tuneforge.host.schema import register_configs

    plugins = create_plugin_manager(plugin_selection(overrides), extra_plugins)
    register_configs(plugins)
    return plugins


def compose(overrides: Sequence[str] = (), plugins: Optional[Plugins] = None):
    """Compose the config with Hydra's compose API (no working-directory change, no run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(explain_composition_error(exc, overrides)) from exc
    finally:
        GlobalHydra.instance().clear()
    if plugins is not None:
        validate(cfg, plugins)
    return cfg


def explain_composition_error(exc: Exception, overrides: Sequence[str] = ()) -> str:
    """One line for a Hydra/OmegaConf composition error: the key or choice, and what is valid."""
    text = str(exc)
    cause = str(exc.__cause__ or "")
    missing = re.search(r"Could not (?:find|load) '([^']+)/([^']+)'", text)
    if missing:
        group, choice = missing.groups()
        valid = _group_choices(group)
        return (f"unknown choice '{choice}' for '{group}'{did_you_mean(choice, valid)}; "
                f"valid: {', '.join(valid) or '(none installed)'}")
    key = re.search(r"full_key: (\S+)", cause)
    if "not in" in cause and key:
        full_key = key.group(1)
        parent, _, leaf = full_key.rpartition(".")
        valid = _valid_keys(parent, overrides)
        return (f"unknown config key '{full_key}'{did_you_mean(leaf, valid)}; valid keys"
                f"{' of ' + parent if parent else ''}: {', '.join(valid)}")
    if key:
        problem = cause.splitlines()[0]
        return f"bad value for '{key.group(1)}': {problem}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()
                    and not line.startswith(("Config search path", "\tprovider=")))


def _group_choices(group: str) -> list:
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra import initialize_config_module

    names = set(ConfigStore.instance().list(group)) if group in ConfigStore.instance().repo else set()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            names |= set(GlobalHydra.instance().config_loader().get_group_options(group))
    finally:
        GlobalHydra.instance().clear()
    return sorted({n[:-5] if n.endswith(".yaml") else n for n in names})


def _valid_keys(parent: str, overrides: Sequence[str]) -> list:
    """Keys of the node ``parent`` in the config composed from the group choices alone."""
    choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0] and not o.startswith("+")]
    try:
        cfg = compose(choices)
    except ConfigError:
        cfg = compose()
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(node.keys()) if hasattr(node, "keys") else []


def validate(cfg, plugins: Plugins) -> None:
    """Checks Hydra cannot make: every selected component exists and no blocked plugin is in use."""
    from omegaconf import OmegaConf

    OmegaConf.resolve(cfg)
    for group in ("model", "data", "adapter", "loss"):
        _check_component(plugins, group, group, cfg[group])
    for group in ("evaluators", "callbacks", "baselines"):
        for key, node in (cfg.get(group) or {}).items():
            _check_component(plugins, group, f"{group}.{key}", node)
    late = [name for name in cfg.plugins.disable if name in plugins.infos]
    if late:
        raise ConfigError(f"plugins.disable={late} was set in a config file, after those plugins were "
                          "imported; block them on the command line or with TUNEFORGE_DISABLE_PLUGINS")


def _check_component(plugins: Plugins, group: str, path: str, node) -> None:
    """The node names a registered component and has only that component's keys
    (``+key=value`` overrides bypass Hydra's own check)."""
    from tuneforge.host.schema import named_config_class

    if "name" not in node:
        raise ConfigError(f"'{path}' has no 'name'; select a component with {group}=<name>, "
                          f"valid: {', '.join(plugins[group].names())}")
    spec = plugins[group].get(node.name)
    valid = [f.name for f in dataclasses.fields(named_config_class(spec))]
    for key in node.keys():
        if key not in valid:
            raise ConfigError(f"unknown config key '{path}.{key}' for {group} '{spec.name}'"
                              f"{did_you_mean(str(key), valid)}; valid keys: {', '.join(valid)}")


def run_train(cfg, plugins: Plugins, run_dir: Optional[str] = None, context=None) -> dict:
    """Validate ``cfg`` and train into ``cfg.run_dir`` (else ``run_dir``); ``context``: the
    :class:`~tuneforge.RunContext` of this process, detected by ``train`` when None."""
    from tuneforge.training.run import train

    validate(cfg, plugins)
    target = cfg.run_dir or run_dir
    if not target:
        raise ConfigError("no run directory: set run_dir=<dir>")
    return train(cfg, plugins, Path(target), context=context)

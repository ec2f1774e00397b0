"""From command-line overrides to a composed config and loaded plugins.

Plugins must be loaded before Hydra composes the config (their config
dataclasses become group options), so the plugin switches
(``plugins.disable``, ``plugins.enable``, ``plugins.autoload``) are read from
the overrides and the environment first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from tuneforge.errors import ConfigError
from tuneforge.plugin_manager import PluginSelection, Plugins, create_plugin_manager

CONFIG_MODULE = "tuneforge.conf"
CONFIG_NAME = "config"


def plugin_selection(overrides: Sequence[str]) -> PluginSelection:
    """The plugin switches named in ``overrides`` merged with the environment's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
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
    from tuneforge.config import register_configs

    plugins = create_plugin_manager(plugin_selection(overrides), extra_plugins)
    register_configs(plugins)
    return plugins


def compose(overrides: Sequence[str] = (), plugins: Optional[Plugins] = None):
    """Compose the config with Hydra's compose API (no working-directory change, no run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    if plugins is not None:
        validate(cfg, plugins)
    return cfg


def validate(cfg, plugins: Plugins) -> None:
    """Checks Hydra cannot make: every selected component exists and no blocked plugin is in use."""
    from omegaconf import OmegaConf

    OmegaConf.resolve(cfg)
    for group in ("model", "data", "adapter", "loss"):
        plugins[group].get(cfg[group].name)
    for group in ("evaluators", "callbacks"):
        for key, node in cfg[group].items():
            plugins[group].get(node.name)
    late = [name for name in cfg.plugins.disable if name in plugins.infos]
    if late:
        raise ConfigError(f"plugins.disable={late} was set in a config file, after those plugins were "
                          "imported; block them on the command line or with TUNEFORGE_DISABLE_PLUGINS")


def run_train(cfg, plugins: Plugins, run_dir: Optional[str] = None) -> dict:
    from tuneforge.run import train

    validate(cfg, plugins)
    target = cfg.run_dir or run_dir
    if not target:
        raise ConfigError("no run directory: set run_dir=<dir>")
    return train(cfg, plugins, Path(target))

"""Plugin discovery and the component registries.

Plugins are modules advertised in the ``tuneforge`` entry-point group; the
built-ins in ``tuneforge.plugins`` are found the same way.  Loading is
isolated per entry point so that a broken plugin is reported by name and
distribution, and blocked plugins are never imported.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pluggy

from tuneforge import hookspecs
from tuneforge.errors import PluginError, did_you_mean
from tuneforge.specs import SPEC_KINDS

ENTRY_POINT_GROUP = "tuneforge"
DISABLE_ENV = "TUNEFORGE_DISABLE_PLUGINS"
AUTOLOAD_ENV = "TUNEFORGE_PLUGINS_AUTOLOAD"
OWN_DISTRIBUTION = "tuneforge"


@dataclass(frozen=True)
class PluginInfo:
    """What is known about one registered plugin."""

    name: str
    distribution: str
    version: str
    module: str


class _TuneforgePluginManager(pluggy.PluginManager):
    """Treats every ``tuneforge_*`` function as a hook implementation.

    Without this a misspelt hook (``tuneforge_adaptors``) would be ignored in
    silence; with it ``check_pending`` names it.
    """

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("tuneforge_"):
            method = getattr(plugin, name, None)
            if callable(method):
                return {}
        return opts


@dataclass
class PluginSelection:
    """Which entry points to load: a block list and the autoload switch.

    ``disable`` names are matched against entry-point names before import.
    With ``autoload`` off only tuneforge's own plugins and those in
    ``enable`` are loaded.
    """

    disable: list = field(default_factory=list)
    enable: list = field(default_factory=list)
    autoload: bool = True

    @classmethod
    def from_env(cls, disable: Iterable[str] = (), enable: Iterable[str] = (),
                 autoload: Optional[bool] = None) -> "PluginSelection":
        env_disable = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
        env_autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower()
        if autoload is None:
            autoload = env_autoload not in ("0", "false", "no", "off")
        return cls(disable=sorted(set(env_disable) | set(disable)), enable=list(enable),
                   autoload=autoload)


def _dist_of(entry_point) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "<unknown distribution>", "?"
    return dist.metadata["Name"], dist.version


def create_plugin_manager(selection: Optional[PluginSelection] = None,
                          extra_plugins: Iterable[Any] = ()) -> "Plugins":
    """Discover, import and register plugins, then verify them against the hook specs.

    ``extra_plugins`` are objects registered directly (used by
    :mod:`tuneforge.testing` and by embedding applications); they are named
    after their ``__name__`` or class, and always registered (block lists
    and autoload do not apply to them).  A passed plugin is never registered
    twice when it is also installed (see :func:`_passed_replaces`): an entry
    point whose module *is* a passed module (same module name) is not loaded
    at all, and the passed module is registered in its place, under the entry
    point's name and distribution; an entry point that loads an object
    identical to a passed one counts as that plugin too.
    """
    selection = selection or PluginSelection.from_env()
    pm = _TuneforgePluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    blocked: list[str] = []
    extras = list(extra_plugins)

    entry_points = sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP),
                          key=lambda ep: (_dist_of(ep)[0] != OWN_DISTRIBUTION, ep.name))
    for ep in entry_points:
        dist_name, dist_version = _dist_of(ep)
        passed = _passed_replaces(ep, extras)
        if passed is not None:  # the module under test, also installed: register it once, as installed
            extras = [p for p in extras if p is not passed]
            _register(pm, passed, ep.name)
            infos[ep.name] = PluginInfo(ep.name, dist_name, dist_version, ep.value)
            continue
        if ep.name in selection.disable:
            blocked.append(ep.name)
            continue
        if not selection.autoload and dist_name != OWN_DISTRIBUTION and ep.name not in selection.enable:
            continue
        if ep.name in infos:
            other = infos[ep.name]
            raise PluginError(
                f"two plugins are named '{ep.name}': from distributions "
                f"'{other.distribution}' and '{dist_name}'; uninstall one or block it with "
                f"{DISABLE_ENV}={ep.name}"
            )
        try:
            module = ep.load()
        except Exception as exc:  # the plugin's own bug: report it by name
            raise PluginError(
                f"plugin '{ep.name}' (distribution '{dist_name} {dist_version}', "
                f"entry point '{ep.value}') failed to import: {type(exc).__name__}: {exc}. "
                f"Block it with {DISABLE_ENV}={ep.name}"
            ) from exc
        _register(pm, module, ep.name)
        infos[ep.name] = PluginInfo(ep.name, dist_name, dist_version, ep.value)
        extras = [p for p in extras if p is not module]  # the same object passed in: already registered

    for plugin in extras:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(pm, plugin, name)
        infos[name] = PluginInfo(name, "<registered in-process>", "", repr(plugin))

    unknown_enabled = [n for n in selection.enable if n not in infos]
    if unknown_enabled:
        raise PluginError(f"plugins.enable names {unknown_enabled} but no such entry point "
                          f"is installed; installed: {sorted(infos)}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        hook = str(exc).split("'")[1] if "'" in str(exc) else str(exc)
        raise PluginError(f"plugin '{name}' implements an unknown hook '{hook}'; valid hooks: "
                          f"{', '.join(_hook_names())}") from exc
    return Plugins(pm, infos, blocked)


def _passed_replaces(entry_point, extras: list) -> Any:
    """The passed module that ``entry_point`` would import (entry point ``pkg.mod``, module named ``pkg.mod``)."""
    if ":" in entry_point.value:
        return None
    target = entry_point.value.strip()
    return next((p for p in extras if isinstance(p, types.ModuleType) and p.__name__ == target), None)


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("tuneforge_"))


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' does not match the tuneforge hook API: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin '{name}' cannot be registered: {exc}") from exc


class Registry:
    """Components of one kind (e.g. all adapters), by name, with their origin plugin."""

    def __init__(self, spec_class: type):
        self.spec_class = spec_class
        self.group, self.hook_name, self.multiple = SPEC_KINDS[spec_class]
        self._specs: dict[str, Any] = {}
        self._origin: dict[str, PluginInfo] = {}

    def add(self, spec: Any, origin: PluginInfo) -> None:
        if not isinstance(spec, self.spec_class):
            raise PluginError(
                f"plugin '{origin.name}' returned {type(spec).__name__} from {self.hook_name}; "
                f"expected {self.spec_class.__name__}")
        if spec.name in self._specs:
            first = self._origin[spec.name]
            raise PluginError(
                f"two {spec.kind}s are named '{spec.name}': one from plugin '{first.name}' "
                f"(distribution '{first.distribution}'), one from plugin '{origin.name}' "
                f"(distribution '{origin.distribution}'); block one with {DISABLE_ENV}")
        self._specs[spec.name] = spec
        self._origin[spec.name] = origin

    def get(self, name: str) -> Any:
        try:
            return self._specs[name]
        except KeyError:
            raise PluginError(
                f"unknown {self.spec_class.kind} '{name}'{did_you_mean(name, self._specs)}; "
                f"valid choices for '{self.group}': {sorted(self._specs)}") from None

    def origin(self, name: str) -> PluginInfo:
        return self._origin[name]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self):
        return iter(self._specs.values())


class Plugins:
    """The plugin manager plus one registry per component kind."""

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo], blocked: list[str]):
        self.pm = pm
        self.hook = pm.hook
        self.infos = infos
        self.blocked = blocked
        self.registries: dict[str, Registry] = {}
        for spec_class in SPEC_KINDS:
            registry = Registry(spec_class)
            hook = getattr(pm.hook, registry.hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                result = impl.function() or ()
                for spec in result:
                    registry.add(spec, infos[impl.plugin_name])
            self.registries[registry.group] = registry

    def __getitem__(self, group: str) -> Registry:
        return self.registries[group]

    def contributions(self, plugin_name: str) -> dict[str, list[str]]:
        """Component names each kind got from one plugin (for ``tuneforge plugins``)."""
        out: dict[str, list[str]] = {}
        for group, registry in self.registries.items():
            names = [n for n in registry.names() if registry.origin(n).name == plugin_name]
            if names:
                out[group] = names
        return out

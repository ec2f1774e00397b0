"""Plugin discovery and the component registries.

Plugins are modules advertised in the ``tuneforge`` entry-point group; the
built-ins in ``tuneforge.plugins`` are found the same way.  Loading is
isolated per entry point so that a broken plugin is reported by name and
distribution, and blocked plugins are never imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.metadata as importlib_metadata
import inspect
import os
import re
import types
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import pluggy

from tuneforge import hookspecs
from tuneforge.errors import PluginError, closest, did_you_mean
from tuneforge.host.guard import DISABLE_ENV, OWN_DISTRIBUTION, describe_plugin, is_own, plugin_error, set_origin
from tuneforge.host.spec_checks import arguments_not_passed, spec_problem
from tuneforge.specs import SPEC_KINDS

ENTRY_POINT_GROUP = "tuneforge"
AUTOLOAD_ENV = "TUNEFORGE_PLUGINS_AUTOLOAD"
#: the distribution of a plugin passed in as an object (``extra_plugins``): no entry point, not blockable
IN_PROCESS = "<registered in-process>"


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


def _with_distributions(entry_points) -> list:
    """``(entry point, (distribution, version))`` for each of ``entry_points``, reading each distribution's
    metadata once (tuneforge's own plugins are 19 entry points of one distribution)."""
    read: dict = {}  # id(distribution) -> (distribution, (name, version)); the distribution kept alive
    pairs = []
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        if id(dist) not in read:
            read[id(dist)] = (dist, _dist_of(ep))
        pairs.append((ep, read[id(dist)][1]))
    return pairs


def create_plugin_manager(selection: Optional[PluginSelection] = None,
                          extra_plugins: Iterable[Any] = (), tolerate_broken: bool = False) -> "Plugins":
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

    A plugin that fails to import, implements an unknown hook or takes an
    argument its hook does not pass, raises in a registration hook, returns
    something that is not a list of specs (:func:`returned_specs`), or collides
    with another plugin's name (:func:`name_clash`) is *broken*: a one-line
    :class:`PluginError` naming it (:mod:`tuneforge.host.guard`).  By default the first broken plugin is
    raised; with ``tolerate_broken`` (``tuneforge plugins``) broken plugins are
    left out and listed in :attr:`Plugins.broken` with their reasons, and the
    others load.  Entry points in a near-miss group (``tuneforge.plugins``,
    ``tuneforge_plugins`` ...) are never loaded; they are listed in
    :attr:`Plugins.misplaced`.
    """
    selection = selection or PluginSelection.from_env()
    pm = _TuneforgePluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    broken: dict[str, str] = {}
    blocked: list[str] = []
    extras = list(extra_plugins)
    all_entry_points = importlib_metadata.entry_points()
    misplaced = _misplaced_entry_points(all_entry_points)

    entry_points = sorted(_with_distributions(all_entry_points.select(group=ENTRY_POINT_GROUP)),
                          key=lambda pair: (pair[1][0] != OWN_DISTRIBUTION, pair[0].name, pair[1][0]))
    for ep, (dist_name, dist_version) in entry_points:
        info = PluginInfo(ep.name, dist_name, dist_version, ep.value)
        passed = _passed_replaces(ep, extras)
        if passed is not None:  # the module under test, also installed: register it once, as installed
            extras = [p for p in extras if p is not passed]
            _register(pm, passed, info, infos, broken)
            continue
        if ep.name in selection.disable:
            blocked.append(ep.name)
            continue
        if not selection.autoload and dist_name != OWN_DISTRIBUTION and ep.name not in selection.enable:
            continue
        if ep.name in infos:
            broken[f"{ep.name} ({dist_name})"] = name_clash(infos[ep.name], info)  # both names stay visible
            continue
        try:
            module = ep.load()
        except Exception as exc:  # the plugin's own bug: report it by name
            broken[ep.name] = str(plugin_error(info, f"importing entry point '{ep.value}'", exc))
            continue
        _register(pm, module, info, infos, broken)
        extras = [p for p in extras if p is not module]  # the same object passed in: already registered

    for plugin in extras:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(pm, plugin, PluginInfo(name, IN_PROCESS, "", repr(plugin)), infos, broken)

    unknown_enabled = [n for n in selection.enable if n not in infos and n not in broken]
    if unknown_enabled:
        raise PluginError(f"plugins.enable names {unknown_enabled} but no such entry point "
                          f"is installed; installed: {sorted(infos)}")
    _drop_unknown_hooks(pm, infos, broken)
    plugins = Plugins(pm, infos, blocked, broken=broken, misplaced=misplaced)
    if plugins.broken and not tolerate_broken:
        raise PluginError(next(iter(plugins.broken.values())))
    return plugins


#: entry-point groups that are not ``tuneforge`` but look meant for it, normalised (lower case, letters only)
def _is_near_miss_group(group: str) -> bool:
    letters = "".join(ch for ch in group.lower() if ch.isalpha())
    if group == ENTRY_POINT_GROUP or group == "pytest11":
        return False
    return letters.startswith(ENTRY_POINT_GROUP) or bool(
        difflib.get_close_matches(letters, [ENTRY_POINT_GROUP, ENTRY_POINT_GROUP + "plugins"], n=1, cutoff=0.8))


def _misplaced_entry_points(all_entry_points) -> list:
    """``(group, name, value, distribution)`` of every entry point in a near-miss group: never loaded."""
    found = []
    for group in sorted(all_entry_points.groups):
        if _is_near_miss_group(group):
            for ep in all_entry_points.select(group=group):
                found.append((group, ep.name, ep.value, _dist_of(ep)[0]))
    return found


def _snake(distribution: str) -> str:
    """A distribution's name as an entry-point name part (``acme-adapters`` -> ``acme_adapters``)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", distribution).lower()


def name_clash(first: PluginInfo, second: PluginInfo) -> str:
    """The one line for two entry points of one name (the first one loaded, the second left out).

    Blocking by name (``TUNEFORGE_DISABLE_PLUGINS``) would block both, so it is never the advice: when
    one is tuneforge's own, the other distribution must rename its entry point or be uninstalled."""
    where = f"the [project.entry-points.{ENTRY_POINT_GROUP}] table of its pyproject.toml"
    if first.distribution == OWN_DISTRIBUTION:
        return (f"plugin '{second.name}' of distribution '{second.distribution}' has the name of tuneforge's own "
                f"plugin '{first.name}', so it is not loaded; rename its entry point in group "
                f"'{ENTRY_POINT_GROUP}' (in {where}, e.g. {_snake(second.distribution)}_{second.name} = "
                f"\"{second.module}\") or uninstall {second.distribution}")
    return (f"two plugins are named '{first.name}': from distributions '{first.distribution}' and "
            f"'{second.distribution}'; uninstall one, or rename the entry point of one in group "
            f"'{ENTRY_POINT_GROUP}' ({where}); {DISABLE_ENV}={first.name} would block both")


def _drop_unknown_hooks(pm: pluggy.PluginManager, infos: dict, broken: dict) -> None:
    """Every plugin implementing a ``tuneforge_*`` hook that does not exist (a misspelling) is broken."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            hook = str(exc).split("'")[1] if "'" in str(exc) else str(exc)
            info = infos.get(name, name)
            broken[name] = (f"{describe_plugin(info)} implements an unknown hook '{hook}'"
                            f"{did_you_mean(hook, _hook_names())}; valid hooks: {', '.join(_hook_names())}"
                            f"{_block_hint(info) if isinstance(info, PluginInfo) else ''}")
            pm.unregister(exc.plugin)
            infos.pop(name, None)


def _passed_replaces(entry_point, extras: list) -> Any:
    """The passed module that ``entry_point`` would import (entry point ``pkg.mod``, module named ``pkg.mod``)."""
    if ":" in entry_point.value:
        return None
    target = entry_point.value.strip()
    return next((p for p in extras if isinstance(p, types.ModuleType) and p.__name__ == target), None)


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("tuneforge_"))


def _register(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo, infos: dict, broken: dict) -> None:
    """Register ``plugin`` as ``info.name``; one that does not fit the hook API is broken instead."""
    name = info.name
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        broken[name] = hook_api_mismatch(plugin, info, exc)
        return
    except ValueError as exc:
        broken[name] = f"{describe_plugin(info)} cannot be registered: {' '.join(str(exc).split())}{_block_hint(info)}"
        return
    infos[name] = info


def hook_api_mismatch(plugin: Any, info: PluginInfo, exc: pluggy.PluginValidationError) -> str:
    """The one line for a plugin pluggy refused: a hook implementation taking an argument its hook does not
    pass names the hook, those arguments and the hook's own; another refusal is pluggy's text on one line."""
    for hook in _hook_names():
        function = getattr(plugin, hook, None)
        if not callable(function):
            continue
        valid = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        unknown = [arg for arg in _required_arguments(function) if arg not in valid]
        if unknown:
            described = f"{', '.join(valid) or 'none'} (any subset, by these names)"
            problem = arguments_not_passed(f"hook {hook}", unknown, valid, described, "hook")
            return f"{describe_plugin(info)}: {problem}{_block_hint(info)}"
    return (f"{describe_plugin(info)} does not match the tuneforge hook API: {' '.join(str(exc).split())}"
            f"{_block_hint(info)}")


def _required_arguments(function: Any) -> list:
    """The parameters pluggy passes by name: positional ones without a default (``self`` of a bound
    method excluded), as pluggy's own check reads them."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def returned_specs(returned: Any, registry: "Registry", origin: PluginInfo) -> list:
    """What one registration hook returned, as a list: a list, tuple or other iterable passes (its items are
    checked by :meth:`Registry.check`); None, a lone spec, a mapping or a string is a :class:`PluginError`
    naming the plugin, its distribution and the hook, never read as "no components"."""
    if isinstance(returned, Iterable) and not isinstance(returned, (str, bytes, Mapping)):
        return list(returned)
    what = "None" if returned is None else (
        f"a single {type(returned).__name__} (not in a list)" if isinstance(returned, registry.spec_class)
        else type(returned).__name__)
    raise PluginError(f"{describe_plugin(origin)}: registration hook {registry.hook_name} returned {what}; "
                      f"{registry.expected()}{_block_hint(origin)}")


def component_clash(kind: str, name: str, first: PluginInfo, second: PluginInfo) -> str:
    """The one line for two components of one kind and name; the way out never blocks tuneforge's own plugin
    (that would take every component it gives away)."""
    both = (f"two {kind}s are named '{name}': one from plugin '{first.name}' (distribution "
            f"'{first.distribution}'), one from plugin '{second.name}' (distribution '{second.distribution}')")
    third_party = [o for o in (first, second) if o.distribution != OWN_DISTRIBUTION]
    if not third_party:
        return both
    blocks = " or ".join(f"{DISABLE_ENV}={o.name}" for o in third_party if o.distribution != IN_PROCESS)
    way_out = f"rename the {kind} of plugin '{third_party[-1].name}'"
    if blocks:
        way_out += f" or block {'that plugin' if len(third_party) == 1 else 'a plugin'} with {blocks}"
    return f"{both}; {way_out}"


def _block_hint(origin: PluginInfo) -> str:
    """``"; block it with ..."`` for an installed third-party plugin (tuneforge's own are never to be blocked,
    and a block list does not apply to a plugin passed in-process)."""
    if is_own(origin) or origin.distribution == IN_PROCESS:
        return ""
    return f"; block it with {DISABLE_ENV}={origin.name}"


@contextlib.contextmanager
def _spec_fields_named():
    """A spec built with a field it does not have (``BaselineSpec(..., describ=...)``): the ``TypeError``
    says which field was meant and the spec's fields, not only Python's "unexpected keyword argument"."""
    try:
        yield
    except TypeError as exc:
        found = re.match(r"(\w+Spec)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(exc))
        spec_class = {cls.__name__: cls for cls in SPEC_KINDS}.get(found.group(1)) if found else None
        if spec_class is None:
            raise
        fields = [f.name for f in dataclasses.fields(spec_class)]
        raise TypeError(f"tuneforge.{spec_class.__name__} has no field '{found.group(2)}'"
                        f"{did_you_mean(found.group(2), fields)}; its fields: {', '.join(fields)}") from exc


class Registry:
    """Components of one kind (e.g. all adapters), by name, with their origin plugin."""

    def __init__(self, spec_class: type):
        self.spec_class = spec_class
        self.group, self.hook_name, self.multiple = SPEC_KINDS[spec_class]
        self._specs: dict[str, Any] = {}
        self._origin: dict[str, PluginInfo] = {}

    def check(self, spec: Any, origin: PluginInfo) -> None:
        """Raise :class:`PluginError` when ``spec`` is not of this kind or its name is taken."""
        if not isinstance(spec, self.spec_class):
            raise PluginError(
                f"{describe_plugin(origin)}: registration hook {self.hook_name} returned a list holding "
                f"{type(spec).__name__}; {self.expected()}{_block_hint(origin)}")
        if spec.name in self._specs:
            first = self._origin[spec.name]
            raise PluginError(component_clash(spec.kind, spec.name, first, origin))
        problem = spec_problem(spec)  # a config attribute that is no field, a callable the host cannot call
        if problem is not None:
            raise PluginError(f"{describe_plugin(origin)}: {problem}{_block_hint(origin)}")

    def expected(self) -> str:
        """What the registration hook of this kind must return, as the end of an error line."""
        return f"it must return a list of tuneforge.{self.spec_class.__name__} (an empty list for none)"

    def add(self, spec: Any, origin: PluginInfo) -> None:
        self.check(spec, origin)
        self._specs[spec.name] = spec
        self._origin[spec.name] = origin

    def get(self, name: str) -> Any:
        try:
            return self._specs[name]
        except KeyError:
            raise PluginError(
                f"unknown {self.spec_class.kind} '{name}'{did_you_mean(name, self._specs)}; "
                f"valid choices for '{self.group}': {sorted(self._specs)}{misplaced_note()}") from None

    def origin(self, name: str) -> PluginInfo:
        return self._origin[name]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self):
        return iter(self._specs.values())


#: the near-miss entry points of the last plugin load, for the note on an unknown choice
_LAST_MISPLACED: list = []


def unknown_choice_note(name: str, valid) -> str:
    """What to add to "unknown choice '<name>'": :func:`misplaced_note` when an entry point was registered
    under a near-miss group; else, unless ``name`` looks like a typo of a valid choice (a close match that
    is not part of it: ``lorra`` for ``lora``, not ``adamw_warm`` for ``adamw``), where a plugin's choice
    comes from, since a package installed without its entry point is the usual cause."""
    misplaced = misplaced_note()
    if misplaced:
        return misplaced
    close = closest(name, valid)
    if close and close not in name:
        return ""
    return (f"; a plugin's choice is listed once its package is installed with an entry point in group "
            f"'{ENTRY_POINT_GROUP}' (tuneforge plugins lists the plugins loaded)")


def misplaced_note() -> str:
    """``"; note: ..."`` naming entry points registered under a near-miss group (never loaded), or ``""``."""
    if not _LAST_MISPLACED:
        return ""
    shown = ", ".join(f"'{name}' of '{dist}' in group '{group}'" for group, name, _value, dist in _LAST_MISPLACED)
    return (f"; note: entry point {shown} is not loaded: wrong group (tuneforge loads the entry-point group "
            f"'{ENTRY_POINT_GROUP}')")


class Plugins:
    """The plugin manager plus one registry per component kind.

    ``broken``: ``{plugin name: one-line reason}`` of the plugins left out
    (see :func:`create_plugin_manager`); ``misplaced``: ``(group, name,
    value, distribution)`` of entry points in a near-miss group.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo], blocked: list[str],
                 broken: Optional[dict] = None, misplaced: Iterable = ()):
        self.pm = pm
        self.hook = pm.hook
        self.infos = infos
        self.blocked = blocked
        self.broken: dict[str, str] = dict(broken or {})
        self.misplaced = list(misplaced)
        _LAST_MISPLACED[:] = self.misplaced
        self.registries: dict[str, Registry] = {SPEC_KINDS[spec_class][0]: Registry(spec_class)
                                                for spec_class in SPEC_KINDS}
        for plugin_name, plugin in list(pm.list_name_plugin()):
            if plugin_name not in infos:
                continue
            origin = infos[plugin_name]
            try:
                contributed = self._registered_specs(plugin_name, origin)
                for registry, spec in contributed:
                    registry.check(spec, origin)
                    if sum(1 for r, s in contributed if r is registry and s.name == spec.name) > 1:
                        raise PluginError(f"plugin '{plugin_name}' returned two {spec.kind}s named '{spec.name}'")
            except PluginError as exc:
                self.broken[plugin_name] = str(exc)
                pm.unregister(plugin)
                del infos[plugin_name]
                continue
            for registry, spec in contributed:
                registry.add(spec, origin)
                set_origin(spec, origin)

    def _registered_specs(self, plugin_name: str, origin: PluginInfo) -> list:
        """``(registry, spec)`` for every spec one plugin's registration hooks return, each hook guarded."""
        from tuneforge.host.guard import plugin_code

        found = []
        for registry in self.registries.values():
            hook = getattr(self.pm.hook, registry.hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                with plugin_code(origin, f"registration hook {registry.hook_name}"), _spec_fields_named():
                    found += [(registry, spec) for spec in returned_specs(impl.function(), registry, origin)]
        return found

    def __getitem__(self, group: str) -> Registry:
        return self.registries[group]

    def call_lifecycle_hook(self, hook_name: str, **kwargs) -> None:
        """Call the lifecycle hook ``hook_name`` with ``kwargs`` on every plugin implementing it, in
        pluggy's order (last registered first), each implementation as plugin code of its own plugin
        (:mod:`tuneforge.host.guard`), with the arguments its signature names."""
        from tuneforge.host.guard import plugin_code

        hook = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        if any(getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False) for impl in impls):
            with plugin_code(None, f"hook {hook_name}", unknown_too=True):  # wrappers: pluggy calls, plugin unknown
                hook(**kwargs)
            return
        for impl in reversed(impls):
            origin = self.infos.get(impl.plugin_name) or impl.plugin_name
            with plugin_code(origin, f"hook {hook_name}"):
                impl.function(*[kwargs[name] for name in impl.argnames])

    def contributions(self, plugin_name: str) -> dict[str, list[str]]:
        """Component names each kind got from one plugin (for ``tuneforge plugins``)."""
        out: dict[str, list[str]] = {}
        for group, registry in self.registries.items():
            names = [n for n in registry.names() if registry.origin(n).name == plugin_name]
            if names:
                out[group] = names
        return out

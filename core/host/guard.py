"""The one guard around every call into plugin code.

A plugin's bug (an exception that is not a :class:`~tuneforge.TuneforgeError`)
becomes a one-line :class:`~tuneforge.PluginError` naming the plugin, its
distribution, the component, the hook or phase, and the exception's type and
message, with the way out::

    plugin 'myplug' (distribution 'myplug 0.1.0'): evaluator 'judge', evaluate: ValueError: bad input;
    block it with TUNEFORGE_DISABLE_PLUGINS=myplug, or rerun with --debug for the traceback

The original exception stays attached (``__cause__``), so ``--debug`` shows
where it happened.  A ``TuneforgeError`` a plugin raises on purpose (a
``ConfigError`` refusing a value, a ``DataError`` naming a file and line) is
already one line for the user and passes unchanged, as do ``KeyboardInterrupt``
and ``SystemExit``.  tuneforge's own plugins (distribution ``tuneforge``) are
not wrapped: their errors are tuneforge's and keep their own handling; nor is a
spec that was never registered (no plugin to name, e.g. one built in a test).

Every call site goes through :func:`plugin_code` (a context manager) or
:func:`call_plugin`; :func:`guard_lightning_callback` puts every Lightning hook
of a plugin's callback behind it.

What plugin code returns is checked where the host depends on it (a :class:`Returns`
given to :func:`spec_call` or :func:`guarded_function`): a wrong value is the same
kind of one line, saying what came back and what is valid, for every plugin::

    plugin 'myplug' (distribution 'myplug 0.1.0'): dataset 'qa', load returned list; it must return
    tuneforge.data.DataSplits (train, validation and held-out splits), e.g. from tuneforge.data.prepare_splits
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tuneforge.errors import PluginError, TuneforgeError

DISABLE_ENV = "TUNEFORGE_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "tuneforge"


#: the attribute the host sets on every registered spec: the ``PluginInfo`` of the plugin that returned it
ORIGIN_ATTRIBUTE = "_tuneforge_origin"


def set_origin(spec: Any, origin) -> None:
    """Record on ``spec`` (a frozen dataclass) which plugin registered it (not a field: equality, ``repr``
    and the config are unchanged)."""
    object.__setattr__(spec, ORIGIN_ATTRIBUTE, origin)


def origin_of(spec: Any):
    """The ``PluginInfo`` of the plugin that registered ``spec``; None for a spec never registered."""
    return getattr(spec, ORIGIN_ATTRIBUTE, None)


@dataclass(frozen=True)
class Returns:
    """What a plugin callable must return.  ``problem(result)`` describes a wrong result as it would follow
    "returned" (e.g. ``"None"``, ``"list"``), or gives None for a valid one; ``expected`` is what is
    valid, as it would follow "it must return"."""

    problem: Callable[[Any], Optional[str]]
    expected: str


def type_name(value: Any) -> str:
    """``value``'s type as a result is described: ``None``, ``list``, ``tuple of 3`` ..."""
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters: a value plugin code gave, in an error."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def instance_of(types, expected: str) -> Returns:
    """A :class:`Returns` accepting instances of ``types`` (a type or a tuple of types)."""
    return Returns(lambda result: None if isinstance(result, types) else type_name(result), expected)


def checked_result(origin, where: str, result: Any, returns: Optional[Returns]) -> Any:
    """``result`` of plugin code at ``where``, or the one-line :class:`PluginError` when ``returns`` says it
    is wrong (for every plugin: a wrong return is never a deliberate ``TuneforgeError``)."""
    if returns is not None:
        problem = returns.problem(result)
        if problem is not None:
            raise PluginError(f"{describe_plugin(origin)}: {where} returned {problem}; it must return "
                              f"{returns.expected}")
    return result


def spec_call(spec: Any, phase: str, function: Callable, *args, returns: Optional[Returns] = None,
              **kwargs) -> Any:
    """``function(*args, **kwargs)`` (one of ``spec``'s callables) as plugin code of the plugin that
    registered ``spec``, named ``<kind> '<name>', <phase>``; its result checked against ``returns``."""
    where = f"{spec.kind} '{spec.name}', {phase}"
    with plugin_code(origin_of(spec), where):
        result = function(*args, **kwargs)
    return checked_result(origin_of(spec), where, result, returns)


def describe_plugin(origin) -> str:
    """``plugin 'x' (distribution 'dist 1.0')`` for a :class:`~tuneforge.host.plugin_manager.PluginInfo`
    (or a plain plugin name)."""
    if origin is None:
        return "plugin code"
    if isinstance(origin, str):
        return f"plugin '{origin}'"
    dist = f"{origin.distribution} {origin.version}".strip()
    return f"plugin '{origin.name}' (distribution '{dist}')"


def hint(origin) -> str:
    """What the user can do about a broken plugin (blocking it, unless it is tuneforge's own: that would
    take all its components away)."""
    name = origin if isinstance(origin, str) else getattr(origin, "name", None)
    block = f"block it with {DISABLE_ENV}={name}, or " if name and not is_own(origin) else ""
    return f"{block}rerun with --debug for the traceback"


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the message's other lines left out)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}{' ...' if len(lines) > 1 else ''}"


def plugin_error(origin, where: str, exc: BaseException) -> PluginError:
    """The one-line :class:`PluginError` for ``exc`` raised by plugin code at ``where`` (component and
    hook or phase, e.g. ``"evaluator 'judge', evaluate"``)."""
    return PluginError(f"{describe_plugin(origin)}: {where}: {exception_line(exc)}; {hint(origin)}")


def is_own(origin) -> bool:
    """Whether ``origin`` is one of tuneforge's own plugins (not wrapped, see the module docstring)."""
    return getattr(origin, "distribution", None) == OWN_DISTRIBUTION


@contextlib.contextmanager
def plugin_code(origin, where: str, unknown_too: bool = False):
    """Run the ``with`` body as plugin code of ``origin`` (a ``PluginInfo`` or a plugin name) at ``where``.

    ``origin`` None (a spec used without being registered, e.g. built directly in a test) leaves
    exceptions as they are, unless ``unknown_too`` (plugin code whose plugin pluggy does not say)."""
    try:
        yield
    except TuneforgeError:
        raise
    except Exception as exc:
        if is_own(origin) or (origin is None and not unknown_too):
            raise
        raise plugin_error(origin, where, exc) from exc


def call_plugin(origin, where: str, function: Callable, *args, **kwargs) -> Any:
    """``function(*args, **kwargs)`` as plugin code (see :func:`plugin_code`)."""
    with plugin_code(origin, where):
        return function(*args, **kwargs)


def guarded_function(origin, where: str, function: Optional[Callable],
                     returns: Optional[Returns] = None) -> Optional[Callable]:
    """``function`` wrapped so that each call is plugin code and its result is checked against ``returns``
    (None stays None; own plugins and unregistered ones unwrapped unless there is a result to check)."""
    if function is None or (returns is None and (origin is None or is_own(origin))):
        return function

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        with plugin_code(origin, where):
            result = function(*args, **kwargs)
        return checked_result(origin, where, result, returns)

    return guarded


#: the methods of a Lightning ``Callback`` the trainer calls (hooks and checkpoint state)
def _lightning_hook_names() -> list:
    from lightning.pytorch import Callback

    return [name for name, value in vars(Callback).items()
            if callable(value) and (name.startswith("on_") or name in
                                    ("setup", "teardown", "state_dict", "load_state_dict"))]


def guard_lightning_callback(callback: Any, origin, component: str) -> Any:
    """Put every Lightning hook that ``callback``'s class overrides behind the guard, on the instance
    itself (its class, ``isinstance`` and ``state_key`` stay as they are).  ``on_exception`` is left
    alone: it runs while an error is already being handled."""
    if origin is None or is_own(origin):
        return callback
    from lightning.pytorch import Callback

    if not isinstance(callback, Callback):
        return callback
    for name in _lightning_hook_names():
        if name == "on_exception" or getattr(type(callback), name, None) is getattr(Callback, name):
            continue
        bound = getattr(callback, name)
        setattr(callback, name, guarded_function(origin, f"{component}, Lightning hook {name}", bound))
    return callback

"""What the host checks of a spec when its plugin registers it, before any command uses it.

* Its config class: a public class attribute that is not a dataclass field (``r = 8``, no type
  annotation) is almost always a field meant; it would be left out of the config keys and of
  ``tuneforge config show`` in silence (:func:`config_class_problem`).
* The callables the host calls with what their signature takes (:func:`tuneforge.calling.call_accepting`:
  a callback's ``build`` and ``on_run_end``, a logger's ``build``, an evaluator's ``evaluate``, a
  baseline's ``rewrite``): a required parameter the host never passes (``on_run_end(cfg, metrics)``)
  would fail only when the host calls it, after the whole run (:func:`callable_problem`).

Each gives the end of a one-line error; :class:`tuneforge.host.plugin_manager.Registry` names the plugin.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Optional

from tuneforge.errors import did_you_mean
from tuneforge.host.guard import shown


@dataclass(frozen=True)
class HostCall:
    """How the host calls one spec callable: ``positional`` always, positionally; then
    ``optional_positional`` as far as the signature has room; then each of ``keywords`` by name where
    the signature accepts it."""

    positional: tuple = ()
    optional_positional: tuple = ()
    keywords: tuple = ()

    def names(self) -> list:
        return [*self.positional, *self.optional_positional, *self.keywords]

    def described(self) -> str:
        """The valid arguments, as they end an error line."""
        if not self.positional and not self.optional_positional:
            return f"{', '.join(self.keywords)} (any subset, by these names)"
        text = f"{', '.join(self.positional)} (positional, in this order)"
        if self.optional_positional:
            text += f", then optionally {', '.join(self.optional_positional)} (positional)"
        if self.keywords:
            text += f", then any of {', '.join(self.keywords)} (by these names)"
        return text


def host_calls() -> dict:
    """``{spec class: {callable field: HostCall}}`` of the spec callables the host calls through
    :func:`~tuneforge.calling.call_accepting` (core/training/run.py, core/training/loggers.py,
    core/evaluation/runner.py, core/evaluation/baselines.py)."""
    from tuneforge.specs import BaselineSpec, CallbackSpec, EvaluatorSpec, LoggerSpec

    build = HostCall(("config",), ("context",))
    return {
        CallbackSpec: {"build": build,
                       "on_run_end": HostCall(keywords=("config", "metrics", "status", "run_dir", "context"))},
        LoggerSpec: {"build": build},
        EvaluatorSpec: {"evaluate": HostCall(("model", "tokenizer", "examples", "config"),
                                             keywords=("evaluation", "context"))},
        BaselineSpec: {"rewrite": HostCall(("model", "tokenizer", "train", "held_out", "config"),
                                           keywords=("seed", "chat_template", "context", "info", "build_retriever")),
                       "answer": HostCall(("train", "held_out", "config"), keywords=("seed", "context", "info"))},
    }


def arguments_not_passed(subject: str, unknown: list, valid: list, described: str, passer: str) -> str:
    """``<subject> takes argument 'cfg' (did you mean 'config'?), which the <passer> does not pass; valid
    arguments of <callable>: <described>``: one line for a lifecycle hook or a spec callable."""
    shown_args = ", ".join(f"'{arg}'{did_you_mean(arg, valid)}" for arg in unknown)
    callable_name = subject.rpartition(" ")[2]
    return (f"{subject} takes {'arguments' if len(unknown) > 1 else 'argument'} {shown_args}, which the {passer} "
            f"does not pass; valid arguments of {callable_name}: {described}")


def unpassed_parameters(function: Any, call: HostCall) -> list:
    """The parameters of ``function`` that need a value the host never gives when it calls it as
    ``call`` says: positional ones beyond what is passed positionally, without a default, and not
    passed by name; keyword-only ones without a default, not passed by name.  Empty when the
    signature cannot be read."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    filled = len(call.positional) + len(call.optional_positional)
    unpassed = [p.name for p in positional[filled:] if p.default is p.empty
                and not (p.kind is p.POSITIONAL_OR_KEYWORD and p.name in call.keywords)]
    return unpassed + [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty
                       and p.name not in call.keywords]


def _positional_room(function: Any) -> Optional[int]:
    """How many positional arguments ``function`` takes (None: any number, or unreadable)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return len([p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])


def callable_problem(spec: Any) -> Optional[str]:
    """Why one of ``spec``'s callables cannot take what the host passes it, or None."""
    for field_name, call in host_calls().get(type(spec), {}).items():
        function = getattr(spec, field_name, None)
        if function is None:
            continue
        subject = f"{spec.kind} '{spec.name}', {field_name}"
        room = _positional_room(function)
        if room is not None and room < len(call.positional):
            return (f"{subject} takes {room} positional argument{'' if room == 1 else 's'}, but the host passes "
                    f"{len(call.positional)}; valid arguments of {field_name}: {call.described()}")
        unknown = unpassed_parameters(function, call)
        if unknown:
            return arguments_not_passed(subject, unknown, call.names(), call.described(), "host")
    return None


def _suggested(name: str, value: Any) -> str:
    """The annotated field ``name = value`` was probably meant to be."""
    from omegaconf import MISSING

    if value is None:
        return f"{name}: Optional[...] = None"
    if isinstance(value, str) and value == MISSING:
        return f"{name}: <type> = MISSING"
    if isinstance(value, (list, dict, set)):
        kind = type(value).__name__
        factory = kind if not value else f"lambda: {shown(value, 40)}"
        return f"{name}: {kind} = field(default_factory={factory})"
    return f"{name}: {type(value).__name__} = {shown(value, 40)}"


def unannotated_attributes(config: type) -> list:
    """``(name, value)`` of the public class attributes of ``config`` (and its dataclass bases) that are
    not dataclass fields and not annotated (``ClassVar``): plain values, not ALL_CAPS constants, not
    methods, classes, properties or other descriptors."""
    annotated: set = set()
    for klass in config.__mro__:
        annotated.update(vars(klass).get("__annotations__", {}))
    found, seen = [], set()
    for klass in config.__mro__:
        if "__dataclass_fields__" not in vars(klass):  # a plain base (object, a mixin): no fields meant
            continue
        for name, value in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("_") or name.isupper() or name in annotated or callable(value) \
                    or hasattr(type(value), "__get__") or hasattr(type(value), "__set__"):
                continue
            found.append((name, value))
    return found


def config_class_problem(spec: Any) -> Optional[str]:
    """Why ``spec.config`` would lose a field in silence (an attribute without a type annotation), or None."""
    config = spec.config
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return None  # refused by the spec itself
    found = unannotated_attributes(config)
    if not found:
        return None
    written = " and ".join(f"'{name} = {shown(value, 40)}'" for name, value in found)
    fields = "it is not a config field" if len(found) == 1 else "they are not config fields"
    return (f"config class {config.__name__} of {spec.kind} '{spec.name}': {written} "
            f"{'has' if len(found) == 1 else 'have'} no type annotation, so {fields}; write "
            f"{', '.join(repr(_suggested(name, value)) for name, value in found)} (or ClassVar[...] for a constant)")


def spec_problem(spec: Any) -> Optional[str]:
    """The first problem :func:`config_class_problem` or :func:`callable_problem` finds in ``spec``."""
    return config_class_problem(spec) or callable_problem(spec)

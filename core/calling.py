"""Calling plugin code written before an argument existed: pass each argument only where the
callable's signature has room for it (re-exported by :mod:`tuneforge.specs`)."""

from __future__ import annotations

import inspect
from typing import Callable


def call_accepting(function: Callable, *args, optional_args: tuple = (), optional_args_if_unreadable: bool = False,
                   named_only: tuple = (), **optional):
    """Call a plugin's callable with what its signature takes: the one way the host calls plugin code
    written before an argument existed, so arguments can be added later.

    - ``args``: always passed, positionally.
    - ``optional_args``: passed positionally after ``args`` as far as the signature has room
      (positional parameters beyond ``args``, all of them with ``*args``); e.g. a callback's
      ``build(config)`` or ``build(config, context)``:
      ``call_accepting(build, config, optional_args=(context,))``.
    - ``optional`` keywords: each passed when ``function`` accepts it (:func:`accepts_keyword`: a
      parameter of that name, not positional-only, or ``**kwargs``); those named in ``named_only``
      only to a parameter of that name (``**kwargs`` alone does not get them).
    - a signature that cannot be read (some builtins): ``args`` only, plus ``optional_args`` when
      ``optional_args_if_unreadable`` (a callable whose documented form includes them).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): pass only what is documented
        return function(*args, *optional_args) if optional_args_if_unreadable else function(*args)
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        room = len(optional_args)
    else:
        room = len([p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) - len(args)
    keywords = {key: value for key, value in optional.items()
                if _accepts(parameters, key, via_kwargs=key not in named_only)}
    return function(*args, *optional_args[:max(room, 0)], **keywords)


def accepts_keyword(function: Callable, name: str, via_kwargs: bool = True) -> bool:
    """Whether :func:`call_accepting` passes the keyword ``name`` to ``function``: it has a parameter of
    that name that is not positional-only, or (``via_kwargs``) it takes ``**kwargs``.  False when the
    signature cannot be read."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    return _accepts(parameters, name, via_kwargs)


def _accepts(parameters: list, name: str, via_kwargs: bool) -> bool:
    return any((p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               or (via_kwargs and p.kind is p.VAR_KEYWORD) for p in parameters)

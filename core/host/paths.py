"""Path settings made absolute once, where the config is validated, so every writer and reader agrees.

A run directory must be usable from anywhere: ``tuneforge eval run_dir=...``
from another working directory reads the run's ``config.yaml``, so the paths in
it are absolute.  And ``~`` must mean the home folder for every writer (Hydra's
output folder, the checkpoints, ``metrics.csv`` ...), not a folder named ``~``.
:func:`absolute_component_paths` and :func:`setting_path` are the one place
where both happen; :func:`tuneforge.host.components.run_components` calls them
on the resolved config before any component config is built, so the typed
configs, ``config.yaml`` and the checkpoint identity all hold the same
absolute paths.

Which values are paths:

* the root ``run_dir`` and a ``resume`` that names a checkpoint;
* the fields a component's config class lists in ``DATA_FILES`` (a
  ``ClassVar``, e.g. ``("path", "val_path")``; a value may also be a list, or a
  mapping of names to paths or lists of them), when their value starts with
  ``~``, ``.`` or ``/`` or names an existing file or folder (a hub dataset
  name stays as it is); these are also the files whose content hashes
  identify the run's data (:mod:`tuneforge.training.data_files`);
* any other string field of a component that starts with ``~``, or that names
  an existing file or folder relative to the working directory and looks like
  a path (it holds a ``/`` or a file suffix such as ``train.tsv``).
"""

from __future__ import annotations

import os
from typing import Any

#: the ``ClassVar`` of a component config class naming its data-file fields
DATA_FILES_ATTRIBUTE = "DATA_FILES"
#: ``resume`` values that are not paths
RESUME_WORDS = ("auto", "never", "none", "false", "")


def setting_path(value: str) -> str:
    """``value`` with ``~`` expanded, as an absolute path (symbolic links kept as written)."""
    return os.path.abspath(os.path.expanduser(str(value)))


def unquoted(value: str) -> str:
    """A command-line value with one level of matching quotes taken off, as Hydra's override grammar reads
    a quoted value: ``"/runs/a b"`` and ``'/runs/a b'`` give ``/runs/a b``; inside them a backslash escapes
    only a quote (or the backslashes before one, and before the closing quote), so ``"a\\"b"`` gives
    ``a"b``.  Anything else is returned as it is, so ``run_dir=/runs/a`` and ``run_dir="/runs/a"`` name
    the same directory in every command (``train`` hands the value to Hydra, which takes the quotes off)."""
    import re

    text = str(value)
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "'\"":
        return text
    quote = text[0]
    inner = text[1:-1]
    # Hydra's rule (hydra.core.override_parser.overrides_visitor._unescape_quoted_string): a run of
    # backslashes followed by the quote (or by the closing quote, i.e. the end) is halved
    return re.sub(r"(\\+)(%s|\Z)" % re.escape(quote),
                  lambda m: m.group(1)[: len(m.group(1)) // 2] + m.group(2), inner)


def argument_path(value: str) -> str:
    """A path given on the command line (``run_dir=``, ``out=``): :func:`unquoted`, then
    :func:`setting_path` (``~`` expanded, absolute)."""
    return setting_path(unquoted(value))


#: characters a path may hold and still be written unquoted in a Hydra override (``/runs/a_b-1.2``)
_PLAIN_OVERRIDE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")


def override_value(path) -> str:
    """``path`` as the value of a Hydra override (``hydra.run.dir=<it>``) that reads back exactly as
    ``path``: an absolute path of letters, digits and ``_./-`` as it is; anything else (spaces, ``é``,
    ``,``, ``=``, quotes, backslashes ...) a double-quoted string with Hydra's escapes (a quote, and the
    backslashes before a quote or the end, get a backslash each; ``${`` is escaped for OmegaConf)."""
    text = str(path)
    if text.startswith("/") and set(text) <= _PLAIN_OVERRIDE_CHARS:
        return text
    return quoted_override_string(text)


def quoted_override_string(text: str, quote: str = '"', interpolation: bool = True) -> str:
    """``text`` as a quoted string of Hydra's override grammar (``quote``: ``"`` or ``'``) that reads back
    as ``text`` (:func:`unquoted` too, but for the ``${`` escape): the quote, and a run of backslashes
    before a quote or at the end, get a backslash each; ``${`` is escaped so that OmegaConf keeps it
    literal (``interpolation=False``: not, for a value Hydra takes as it is and OmegaConf never resolves,
    an entry of ``hydra.searchpath``)."""
    import re

    def escaped(match) -> str:  # backslashes before a quote or the end doubled, the quote escaped
        return match.group(1) * 2 + ("\\" if match.group(2) else "") + match.group(2)

    text = re.sub(r"(\\*)(%s|\Z)" % re.escape(quote), escaped, str(text))
    return quote + (text.replace("${", "\\${") if interpolation else text) + quote


def looks_like_path(value: Any) -> bool:
    """True for a string that starts with ``~``, or that names an existing file or folder (relative to the
    working directory) and holds a ``/`` or a file suffix."""
    if not isinstance(value, str) or not value or "://" in value or "${" in value or value == "???":
        return False
    if value.startswith("~"):
        return True
    if os.path.isabs(value):
        return False
    name = os.path.basename(value.rstrip("/"))
    return (os.sep in value or "/" in value or "." in name.strip(".")) and os.path.exists(value)


def declared_data_fields(config_class) -> tuple:
    """The field names a component config class lists in ``DATA_FILES`` (empty when none)."""
    return tuple(getattr(config_class, DATA_FILES_ATTRIBUTE, ()) or ())


def absolute_component_paths(node, config_class) -> None:
    """Rewrite the path values of one component's config ``node`` (a resolved ``DictConfig``) in place:
    the ``DATA_FILES`` fields when set, and every other top-level string that :func:`looks_like_path`."""
    from omegaconf import open_dict

    from omegaconf import DictConfig, ListConfig

    def declared_items(value):
        """A declared field's list, or mapping of names to paths or lists of them, with each path absolute."""
        if isinstance(value, DictConfig):
            return {name: declared_items(item) for name, item in value.items()}
        if isinstance(value, ListConfig):
            return [declared_items(item) for item in value]
        return _absolute(value, True) if isinstance(value, str) else value

    declared = set(declared_data_fields(config_class))
    with open_dict(node):
        for key in list(node.keys()):
            if key == "name":
                continue
            value = node.get(key)
            if isinstance(value, str):
                node[key] = _absolute(value, str(key) in declared)
            elif isinstance(value, (ListConfig, DictConfig)) and str(key) in declared:
                node[key] = declared_items(value)


def _absolute(value: str, declared: bool) -> str:
    """``value`` as an absolute path when it is one (see the module docstring), else unchanged.  A
    declared data field's value is a path when it starts with ``~``, ``.`` or ``/`` or exists (a hub
    dataset name stays as it is)."""
    if not value or value == "???" or "://" in value or "${" in value:
        return value
    if looks_like_path(value) or (declared and (value.startswith((".", "/", "~")) or os.path.exists(value))):
        return setting_path(value)
    return value


def absolute_root_paths(resolved) -> None:
    """``run_dir``, ``init_from`` and a checkpoint path in ``resume`` of the resolved root config, in place."""
    from omegaconf import open_dict

    with open_dict(resolved):
        if resolved.get("run_dir"):
            resolved.run_dir = setting_path(resolved.run_dir)
        if resolved.get("init_from"):
            resolved.init_from = setting_path(resolved.init_from)
        resume = resolved.get("resume")
        if isinstance(resume, str) and resume not in RESUME_WORDS:
            resolved.resume = setting_path(resume)


def path_values(value) -> list:
    """The strings of a declared data-file field's value: itself, a list's items, a mapping's values (each a
    string or a list), in order."""
    from collections.abc import Mapping

    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [item for nested in value.values() for item in path_values(nested)]
    if isinstance(value, (list, tuple)):
        return [item for nested in value for item in path_values(nested)]
    return []

"""Field documentation of config dataclasses, read from one source: the class docstring.

The convention (documented in docs/plugins.md): in a config dataclass's
docstring, each field is described on a line ``<field>: <what it does>``;
continuation lines are indented deeper than the field line.  Free text before,
between and after field blocks is the component's description::

    @dataclass
    class BitFitConfig:
        \"\"\"Train only the bias terms.

        lr_scale: multiply the learning rate of the biases by this.
        include_norms: also train the normalisation layers' weights
            (their bias when they have none).
        \"\"\"

        lr_scale: float = 1.0
        include_norms: bool = False

:func:`describe_fields` gives ``FieldDoc`` rows (name, type, default, doc);
``tuneforge config show``, ``tuneforge train --help`` and the generated
component reference in docs/plugins.md are all built from it, and a test
fails when a built-in field has no doc.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Optional

_FIELD_LINE = re.compile(r"^(?P<indent>\s*)``?(?P<name>[A-Za-z_][A-Za-z0-9_]*)``?\s*:\s+(?P<text>\S.*)$"
                         r"|^(?P<indent2>\s*)(?P<name2>[A-Za-z_][A-Za-z0-9_]*):\s+(?P<text2>\S.*)$")


@dataclass(frozen=True)
class FieldDoc:
    """One config key: its name, type (as written), default (as shown on the command line) and doc."""

    name: str
    type: str
    default: str
    doc: str

    @property
    def summary(self) -> str:
        """The doc's first sentence (for tables)."""
        match = re.match(r"(.+?[.;])(\s|$)", self.doc)
        return match.group(1) if match else self.doc


_CALLABLE_LINE = re.compile(r"^(?P<indent>\s*)``(?P<name>[A-Za-z_][A-Za-z0-9_]*)\(.*?``")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: doc}`` of ``cls`` and its dataclass bases (subclass wins), from the class docstring
    (``field: doc`` lines, or a line that starts with ``field(args) -> result`` in double backquotes for callables) and from
    ``#: doc`` comments right above a field's annotation."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in inspect.getmro(cls) if dataclasses.is_dataclass(k)]):
        names = {f.name for f in dataclasses.fields(klass)}
        docs.update(_comment_docs(klass, names))
        docs.update(_parse(inspect.getdoc(klass) or "", names))
    return docs


def _comment_docs(cls: type, names: set) -> dict[str, str]:
    """``#: doc`` comment lines directly above ``name: type = default`` lines in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs, pending = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*:", stripped)
        if match and match.group(1) in names and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs


def _parse(docstring: str, names: set) -> dict[str, str]:
    return parse_field_lines(docstring, names)[0]


def parse_field_lines(docstring: str, names: set) -> tuple[dict[str, str], set]:
    """``({field: doc}, indices of the docstring lines those docs were read from})``: a field's doc starts
    at its ``field: doc`` (or ````field(args)```` ) line and runs to the end of its paragraph, through
    the lines indented at least as deep."""
    docs: dict[str, str] = {}
    consumed: set = set()
    current: Optional[str] = None
    current_indent = 0
    for index, line in enumerate(docstring.splitlines()):
        match = _FIELD_LINE.match(line)
        name = match and (match.group("name") or match.group("name2"))
        called = _CALLABLE_LINE.match(line)
        if match and name in names:
            current = name
            current_indent = len(match.group("indent") or match.group("indent2") or "")
            docs[name] = (match.group("text") or match.group("text2")).strip()
        elif called and called.group("name") in names and called.group("name") not in docs:
            current = called.group("name")
            current_indent = len(called.group("indent"))
            docs[current] = line.strip()
        elif current and line.strip() and len(line) - len(line.lstrip()) >= current_indent:
            docs[current] += " " + line.strip()  # a field's doc runs to the end of its paragraph
        else:
            current = None
            continue
        consumed.add(index)
    return docs, consumed


def type_name(annotation: Any) -> str:
    """A short readable type: ``int``, ``Optional[str]``, ``list``, ``Any``."""
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    return re.sub(r"\bNoneType\b", "None", text)


def default_text(field: dataclasses.Field) -> str:
    """The default as a user would write it in an override (``null``, ``true``, ``[a, b]``, ``???``)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "???"
    return _yaml_scalar(value)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, str) and value.startswith("/"):
        return _package_relative(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in value.items()) + "}"
    return str(value)


def describe_fields(cls: type, skip: tuple = ("name",)) -> list[FieldDoc]:
    """Every field of the config dataclass ``cls`` with its type, default and doc ('' when undocumented)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    return [FieldDoc(f.name, type_name(hints.get(f.name, f.type)), default_text(f), docs.get(f.name, ""))
            for f in dataclasses.fields(cls) if f.name not in skip]


def description(cls: type) -> str:
    """The first paragraph of the class docstring (the component's one-line description)."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def format_fields(prefix: str, cls: type, skip: tuple = ("name",)) -> str:
    """Plain-text lines ``  <prefix>.<field>  <type> = <default>  <doc>`` for terminals
    (``<field>`` alone when ``prefix`` is empty: the root config's own keys)."""
    rows = describe_fields(cls, skip)
    if not rows:
        return "  (no settings)"
    keys = {row.name: f"{prefix}.{row.name}" if prefix else row.name for row in rows}
    width = max(len(key) for key in keys.values())
    lines = []
    for row in rows:
        lines.append(f"  {keys[row.name]:<{width}}  {row.type} = {row.default}")
        if row.doc:
            lines.append(f"  {'':<{width}}    {row.doc}")
    return "\n".join(lines)


def markdown_table(cls: type, skip: tuple = ("name",)) -> str:
    """A Markdown table of the fields of ``cls``: key, type, default, doc."""
    lines = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for row in describe_fields(cls, skip=skip):
        cells = [f"`{row.name}`", f"`{row.type}`", f"`{row.default}`", row.doc or "(undocumented)"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _package_relative(path: str) -> str:
    """A default that is a file shipped in a tuneforge package, shown as ``${pkg:<package>/<file>}``
    (the same on every machine) instead of this installation's absolute path."""
    import importlib.util
    from pathlib import Path

    for package in ("tuneforge.plugins", "tuneforge.conf", "tuneforge"):
        spec = importlib.util.find_spec(package)
        root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
        if root is not None:
            try:
                return "${pkg:" + package + "/" + Path(path).relative_to(root).as_posix() + "}"
            except ValueError:
                continue
    return path

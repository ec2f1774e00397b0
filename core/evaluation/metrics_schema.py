"""The JSON Schema of ``metrics.json``, generated from its typed model (:mod:`tuneforge.evaluation.metrics_file`).

``docs/metrics.schema.json`` is this module's output, and a test keeps the two equal; regenerate it with::

    python -m tuneforge.evaluation.metrics_schema --write docs/metrics.schema.json

Each ``TypedDict`` becomes a definition under ``$defs`` (its docstring's free
text the description, its ``key: what it holds`` lines the keys'
descriptions); a closed section allows no other key, an *open* one
(:func:`~tuneforge.evaluation.metrics_file.open_section`) does.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from typing import Any, Union

from tuneforge.evaluation import metrics_file
from tuneforge.evaluation.metrics_file import SCHEMA_VERSION, RunMetrics

#: the schema's ``$id`` (where the file lives in the repository)
SCHEMA_ID = "docs/metrics.schema.json"
_SCALARS = {str: {"type": "string"}, bool: {"type": "boolean"}, int: {"type": "integer"},
            float: {"type": "number"}, type(None): {"type": "null"}}


def metrics_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of ``metrics.json``, from :class:`RunMetrics` and its sections."""
    definitions: dict = {}
    root = _typed_dict(RunMetrics, definitions)
    root["properties"]["schema_version"] = {"const": SCHEMA_VERSION,
                                            "description": root["properties"]["schema_version"]["description"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "tuneforge metrics.json", **root, "$defs": dict(sorted(definitions.items()))}


def _is_typed_dict(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, dict) and hasattr(kind, "__required_keys__")


def _typed_dict(cls: type, definitions: dict) -> dict:
    """The object schema of one ``TypedDict``; its nested sections go into ``definitions``."""
    from tuneforge.host.config_docs import parse_field_lines

    hints = typing.get_type_hints(cls, vars(metrics_file))
    docstring = inspect.getdoc(cls) or ""
    docs, consumed = parse_field_lines(docstring, set(hints))
    free = " ".join(line.strip() for i, line in enumerate(docstring.splitlines()) if i not in consumed and line.strip())
    properties = {}
    for name, kind in hints.items():
        properties[name] = dict(_schema_of(kind, definitions), **({"description": docs[name]} if name in docs else {}))
    schema: dict = {"type": "object", "description": free, "properties": properties,
                    "additionalProperties": bool(getattr(cls, "__open_section__", False))}
    required = sorted(cls.__required_keys__)
    if required:
        schema["required"] = required
    return schema


def _schema_of(kind: Any, definitions: dict) -> dict:
    """The schema of one annotation: scalars, ``Optional``/``Union``, ``List``, ``Dict[str, X]``, ``Any``,
    and section classes (a ``$ref`` to their definition)."""
    if kind is Any:
        return {}
    if kind in _SCALARS:
        return dict(_SCALARS[kind])
    if _is_typed_dict(kind):
        if kind.__name__ not in definitions:
            definitions[kind.__name__] = {}  # a placeholder against recursion
            definitions[kind.__name__] = _typed_dict(kind, definitions)
        return {"$ref": f"#/$defs/{kind.__name__}"}
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        return {"anyOf": [_schema_of(argument, definitions) for argument in arguments]}
    if origin is list:
        return {"type": "array", "items": _schema_of(arguments[0], definitions)}
    if origin is dict and arguments[0] is str:
        return {"type": "object", "additionalProperties": _schema_of(arguments[1], definitions)}
    raise TypeError(f"metrics.json model: no JSON Schema for the annotation {kind!r}")


def schema_text() -> str:
    """:func:`metrics_json_schema` as the text of ``docs/metrics.schema.json``."""
    return json.dumps(metrics_json_schema(), indent=2) + "\n"


def main(argv: list) -> int:
    """``--write <file>`` writes the schema there; without arguments it is printed."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        with open(argv[1], "w", encoding="utf-8") as handle:
            handle.write(schema_text())
        return 0
    if argv:
        print("usage: python -m tuneforge.evaluation.metrics_schema [--write docs/metrics.schema.json]",
              file=sys.stderr)
        return 2
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

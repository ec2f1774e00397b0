"""A small JSON Schema checker for the tests: the subset ``docs/metrics.schema.json`` uses (``$ref`` into
``$defs``, ``type``, ``const``, ``anyOf``, ``properties``, ``required``, ``additionalProperties``, ``items``),
so that the suite checks every ``metrics.json`` it produces without a ``jsonschema`` dependency."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "metrics.schema.json"

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def schema_problems(value, schema: dict, root: dict | None = None, where: str = "") -> list[str]:
    """``["<json path>: <what is wrong>"]`` of ``value`` against ``schema`` (empty when it validates)."""
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return schema_problems(value, root["$defs"][name], root, where)
    here = where or "(top)"
    if "const" in schema and value != schema["const"]:
        return [f"{here}: {value!r} is not {schema['const']!r}"]
    if "anyOf" in schema:
        options = [schema_problems(value, option, root, where) for option in schema["anyOf"]]
        if all(options):
            return [f"{here}: matches none of: " + " | ".join("; ".join(o) for o in options)]
        return []
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{here}: {type(value).__name__} {json.dumps(value)[:60]} is not of type {kind}"]
    problems: list[str] = []
    if kind == "object":
        properties = schema.get("properties", {})
        problems += [f"{here}: the required key {key!r} is missing" for key in schema.get("required", [])
                     if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                problems += schema_problems(item, properties[key], root, f"{where}.{key}")
            elif extra is False:
                problems.append(f"{here}: the key {key!r} is not in the schema (known: {', '.join(properties)})")
            elif isinstance(extra, dict):
                problems += schema_problems(item, extra, root, f"{where}.{key}")
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            problems += schema_problems(item, schema["items"], root, f"{where}[{index}]")
    return problems


def metrics_file_problems(path: Path, schema: dict | None = None) -> list[str]:
    """The problems of the ``metrics.json`` at ``path`` against ``docs/metrics.schema.json`` (or ``schema``)."""
    schema = schema if schema is not None else json.loads(SCHEMA_FILE.read_text())
    return schema_problems(json.loads(Path(path).read_text()), schema)


def produced_metrics_problems(folder: Path, schema: dict | None = None) -> list[str]:
    """``"<file>: <problem>"`` for every ``metrics.json`` under ``folder`` that tuneforge wrote in the current
    layout (``schema_version`` equal to the schema's) and that does not validate.  Files without that
    version are left alone: tests write older (version 0) and unreadable files on purpose."""
    schema = schema if schema is not None else json.loads(SCHEMA_FILE.read_text())
    version = schema["properties"]["schema_version"]["const"]
    problems = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(value, dict) and value.get("schema_version") == version:
            problems += [f"{path}: {problem}" for problem in schema_problems(value, schema)]
    return problems

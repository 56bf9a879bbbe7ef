"""Tenant HTTP tools' ``parameters``: JSON Schema, draft 2020-12, checked when written and applied
to the model's arguments when the tool is called.

Written (``check_tool_schema``): the schema must be valid against the draft's meta-schema, describe
an object (``"type": "object"``: what the model sends, and what Claude and OpenAI require of a tool),
and keep to what runs safely on the box every tenant shares. So a ``pattern`` is a regex RE2 takes
(runtime.control.patterns: linear time, whatever the argument), ``patternProperties`` is refused
(the validator would match its keys with Python's backtracking ``re``), a ``$ref`` points inside the
schema (``#/$defs/...``: nothing is fetched, ever), and nesting is bounded. Errors name the JSON path
of the bad part, e.g. ``$.properties.party_size.maximum: 'eight' is not of type 'number'``.

Called (``argument_validator``): the same draft, with ``pattern`` on RE2 and no reference that
leaves the schema. ``format`` is an annotation, as the draft says (not checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.exceptions import best_match
from referencing import Registry

from runtime.control.patterns import PatternError, check_pattern, compile_pattern

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_DEPTH = 32  # nesting of the schema's JSON: deep enough for any tool, shallow for the validator's recursion
MAX_REMEMBERED = 4096
_PROBLEMS: dict[bytes, str | None] = {}  # sha256 of the schema's canonical JSON -> schema_problem
_TYPES = "array, boolean, integer, null, number, object, string"

# Where a 2020-12 schema holds subschemas: one, a list of them, or a map of them.
_ONE = ("additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties")
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


class ToolSchemaError(ValueError):
    """A tool parameter schema that is not valid JSON Schema or not one the runtime can apply."""


def check_tool_schema(schema: Any) -> None:
    """Raise ToolSchemaError (naming the JSON path) unless ``schema`` is a usable object schema."""
    problem = schema_problem(schema)
    if problem is None and schema.get("type") != "object":
        problem = '$.type: the parameters are an object: set "type": "object" (and its "properties")'
    if problem is not None:
        raise ToolSchemaError(problem)


def schema_problem(schema: Any) -> str | None:
    """Why the runtime cannot apply ``schema`` to arguments (``$.path: reason``), or None.
    Remembered by the schema's digest: a check takes about a millisecond, and every agent view
    and every tool call asks again about the same few schemas."""
    if not isinstance(schema, Mapping):
        return "$: a tool's parameters are a JSON Schema object"
    try:
        key = hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()
    except (orjson.JSONEncodeError, TypeError):  # nested past what orjson writes: refused at once below
        return _problem(schema)
    if key not in _PROBLEMS:
        if len(_PROBLEMS) >= MAX_REMEMBERED:
            _PROBLEMS.clear()
        _PROBLEMS[key] = _problem(schema)
    return _PROBLEMS[key]


def _problem(schema: Mapping[str, Any]) -> str | None:
    if (deep := _too_deep(schema)) is not None:
        return f"{deep}: the schema nests deeper than {MAX_DEPTH} levels"
    if schema.get("$schema", DIALECT) not in (DIALECT, DIALECT + "#"):
        return f"$.$schema: tool schemas are JSON Schema draft 2020-12 ({DIALECT}); leave $schema out or set that"
    try:
        error = best_match(_meta_validator().iter_errors(schema))
    except RecursionError:
        return "$: the schema nests too deep to check"
    if error is not None:
        return f"{error.json_path}: {_meta_message(error)}"
    for path, sub in _subschemas(schema, "$"):
        if "patternProperties" in sub:
            return (f"{path}.patternProperties: not supported in tool schemas (list the argument names "
                    "under properties)")
        for keyword in ("$ref", "$dynamicRef"):
            ref = sub.get(keyword)
            if isinstance(ref, str) and not _resolves(schema, ref):
                return (f"{path}.{keyword}: {ref!r} does not point inside this schema (use #/$defs/NAME; "
                        "nothing is fetched)")
    return None


def argument_validator(schema: Mapping[str, Any]) -> Any:
    """A validator of a tool's arguments against its schema (``iter_errors``); ToolSchemaError when
    the schema cannot be applied (a version stored before schemas were checked)."""
    problem = schema_problem(schema)
    if problem is not None:
        raise ToolSchemaError(problem)
    # An empty registry: a reference outside the schema fails instead of being fetched.
    return _argument_validator_class()(schema, registry=Registry())


@lru_cache(maxsize=1)
def _meta_validator() -> Any:
    regex = FormatChecker(formats=())
    regex.checks("regex", raises=PatternError)(lambda value: not isinstance(value, str) or _schema_pattern(value))
    return Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=regex)


def _schema_pattern(value: str) -> bool:
    check_pattern(value, ignore_case=False)  # JSON Schema patterns are case-sensitive
    return True


def _meta_message(error: ValidationError) -> str:
    if error.validator == "format" and isinstance(error.cause, PatternError):
        return str(error.cause)
    if error.validator == "anyOf" and error.path and error.path[-1] == "type":
        return f"{error.instance!r} is not a JSON Schema type ({_TYPES})"
    return error.message


@lru_cache(maxsize=1)
def _argument_validator_class() -> Any:
    return validators.extend(Draft202012Validator, {"pattern": _pattern_on_re2})


def _pattern_on_re2(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and compile_pattern(pattern, ignore_case=False).search(instance) is None:
        shown = instance if len(instance) <= 60 else instance[:60] + "..."
        yield ValidationError(f"{shown!r} does not match {pattern!r}")


def _too_deep(value: Any) -> str | None:
    """The JSON path of the first place nested deeper than MAX_DEPTH, without recursing."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path
        if isinstance(item, Mapping):
            stack.extend((v, _child(path, k), depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    return None


def _subschemas(schema: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(schema, Mapping):
        return  # true / false
    yield path, schema
    for key in _ONE:
        if key in schema:
            yield from _subschemas(schema[key], _child(path, key))
    for key in _LIST:
        for i, sub in enumerate(schema.get(key) or ()):
            yield from _subschemas(sub, f"{_child(path, key)}[{i}]")
    for key in _MAP:
        for name, sub in (schema.get(key) or {}).items():
            yield from _subschemas(sub, _child(_child(path, key), name))


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if name.replace("_", "a").replace("$", "a").isalnum() else f"{path}[{name!r}]"


def _resolves(root: Mapping[str, Any], ref: str) -> bool:
    """A reference within the schema: ``#`` with a JSON pointer that exists, or an anchor name."""
    if not ref.startswith("#"):
        return False
    if not ref.startswith("#/"):
        return True  # "#" (the root) or "#name" ($anchor: checked when applied)
    node: Any = root
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True

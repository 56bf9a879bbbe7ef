"""A tool call's arguments against the tool's JSON Schema (draft 2020-12), before the tool runs.

Models often send numbers as strings ("2") or integers as 2.0, and null for an optional argument
they have no value for: those are coerced first (following ``properties`` and ``items``), as the
tools expect. Then the whole schema applies (runtime.control.tool_schemas: ``maximum``, ``pattern``
on RE2, ``enum``, nested objects...). Problems are worded for the model, which reads them and
asks the caller again; the tool does not run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jsonschema.exceptions import UnknownType
from referencing.exceptions import Unresolvable

from runtime.control.tool_schemas import ToolSchemaError, argument_validator

MAX_PROBLEMS = 5
MAX_NUMBER_CHARS = 50  # a longer "number" stays a string (and fails its type): int() of 5,000 digits raises
MAX_PROBLEM_CHARS = 200


def check_arguments(schema: Mapping[str, Any], arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(``arguments`` coerced, problems); no problems: the tool may run with the coerced arguments."""
    try:
        coerced = _coerce(schema, arguments)
        errors = list(argument_validator(schema).iter_errors(coerced))
    except ToolSchemaError as exc:  # stored before schemas were checked: flagged in the agent's warnings
        return arguments, [f"the tool's parameter schema cannot be applied ({exc}); it needs fixing in the agent"]
    except RecursionError:  # a $ref cycle, or arguments nested for ever
        return arguments, ["the arguments nest too deep for the tool's parameter schema"]
    except (Unresolvable, UnknownType) as exc:  # an anchor that is not there, a type no draft has
        return arguments, [f"the tool's parameter schema cannot be applied ({type(exc).__name__}: {exc}"[:150]
                           + "); it needs fixing in the agent"]
    problems: list[str] = []
    for error in errors:
        for problem in _worded(error):
            if problem not in problems:
                problems.append(problem[:MAX_PROBLEM_CHARS])
    return coerced, problems[:MAX_PROBLEMS]


def _worded(error: Any) -> list[str]:
    path = _path(error.absolute_path)
    prefix = f"{path}." if path else ""
    value = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        return [f"{prefix}{name} is required" for name in value if name not in error.instance]
    if error.validator == "type":
        kinds = [value] if isinstance(value, str) else list(value)
        return [f"{path or 'the arguments'} must be {' or '.join(kinds)}"]
    if error.validator == "enum":
        return [f"{path} must be one of {value}"]
    if error.validator == "additionalProperties" and value is False and isinstance(error.instance, dict):
        known = error.schema.get("properties") or {}
        return [f"{prefix}{name} is not an argument of this tool" for name in error.instance if name not in known]
    return [f"{path}: {error.message}" if path else error.message]


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _coerce(schema: Any, value: Any) -> Any:
    """Numeric strings and whole floats to the numbers the schema asks for; nulls in objects dropped
    (an optional argument left out; a required one is then reported missing)."""
    if not isinstance(schema, Mapping):
        schema = {}
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ()) if isinstance(kinds, list) else []
    value = _coerce_scalar(value, kinds)
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        return {k: _coerce(props.get(k), v) for k, v in value.items() if v is not None}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_coerce(schema["items"], v) for v in value]
    return value


def _coerce_scalar(value: Any, kinds: list[str]) -> Any:
    if "integer" in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and "string" not in kinds and len(value) <= MAX_NUMBER_CHARS:
        text = value.strip()
        if "integer" in kinds and text.lstrip("-").isdigit():
            return int(text)
        if "number" in kinds:
            try:
                number = float(text)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
    return value

"""What a stored agent version holds that today's checks refuse, and what a call does about it.

Versions written by an earlier release load as they were stored (``AgentConfig.from_stored``);
the parts that cannot run are left out of calls. The agent view lists them (``warnings``) so the
tenant sees what to fix; the next settings change must fix them, as any write is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.control.patterns import PatternError, compile_pattern
from runtime.control.tool_schemas import schema_problem


def version_warnings(config: Mapping[str, Any]) -> list[str]:
    """``field: what happens`` for each part of a stored config that calls leave out."""
    warnings: list[str] = []
    rules = config.get("rules") or {}
    for name, slot in (rules.get("slots") or {}).items():
        _pattern(warnings, f"rules.slots.{name}.pattern", (slot or {}).get("pattern"))
    for i, intent in enumerate(rules.get("intents") or ()):
        for j, pattern in enumerate((intent or {}).get("patterns") or ()):
            _pattern(warnings, f"rules.intents.{i}.patterns.{j}", pattern)
    for i, tool in enumerate(config.get("http_tools") or ()):
        # What stops the tool's calls (runtime.tools.arguments); a write checks more (e.g. "type": "object").
        if (problem := schema_problem((tool or {}).get("parameters", {}))) is not None:
            warnings.append(f"http_tools.{i}.parameters: the tool is not called until this is fixed: {problem}")
    return warnings


def _pattern(warnings: list[str], where: str, pattern: Any) -> None:
    if not isinstance(pattern, str):
        return
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        warnings.append(f"{where}: skipped: {exc}")

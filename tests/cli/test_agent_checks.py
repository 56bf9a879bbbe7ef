"""`voicectl agent` and issue 14: a regex RE2 cannot run or a tool schema that is not JSON Schema is
refused with the field (exit 2, no traceback); `agent show` flags what calls leave out of a version
stored before these checks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import Cli, cli, ready  # noqa: F401 (fixtures)


def test_agent_create_refuses_what_re2_and_json_schema_refuse(ready: Cli, tmp_path: Path):  # noqa: F811
    settings = tmp_path / "agent.json"
    settings.write_text(json.dumps({"rules": {"intents": [{"name": "book", "patterns": [r"(\w+) \1"]}]}}))
    result = ready("agent", "create", "--tenant", "acme", "--name", "b", "--prompt", "p", "-f", str(settings), code=2)
    assert "rules.intents.0.patterns.0: pattern" in result.output and "backreference" in result.output
    settings.write_text(json.dumps({"http_tools": [{"name": "book", "description": "d", "url": "https://t.example/",
                                                    "parameters": {"type": "objekt"}}]}))
    result = ready("agent", "create", "--tenant", "acme", "--name", "b", "--prompt", "p", "-f", str(settings), code=2)
    assert "http_tools.0.parameters: $.type: 'objekt' is not a JSON Schema type" in result.output


def test_agent_show_flags_a_stored_pattern_that_is_skipped(ready: Cli):  # noqa: F811
    shown = ready.json("agent", "show", "sales", "--tenant", "acme")
    assert shown["warnings"] == []

    async def store_a_lookahead(plane) -> None:  # as an earlier release could have
        row = await plane.store.agent_versions.find(tenant_id=shown["tenant_id"], agent_id=shown["id"], version=1)
        config = {**row["config"], "rules": {"intents": [{"name": "book", "patterns": [r"table(?=s)"]}]}}
        await plane.store.agent_versions.update(row["id"], {"config": config}, tenant_id=shown["tenant_id"])

    ready.plane(store_a_lookahead)
    output = ready("agent", "show", "sales", "--tenant", "acme").output
    assert "warning: rules.intents.0.patterns.0: skipped: pattern 'table(?=s)' uses a lookahead" in output
    (warning,) = ready.json("agent", "show", "sales", "--tenant", "acme")["warnings"]
    assert warning.startswith("rules.intents.0.patterns.0: skipped: ")

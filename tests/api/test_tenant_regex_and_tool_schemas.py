"""Issue 14 through the live API: a tenant cannot store a regex RE2 lacks the syntax for, nor a tool
parameter schema that is not valid JSON Schema (422 naming the field and the path); a version stored
before still shows, with what calls leave out of it in ``warnings``."""

from __future__ import annotations

from typing import Any

AGENT = {"name": "desk", "system_prompt": "be brief"}


def _field(body: dict[str, Any]) -> tuple[str, str]:
    assert body["error"] == "validation_error", body
    (error,) = body["details"]["errors"]
    return error["field"], error["message"]


async def test_a_pattern_re2_cannot_run_is_refused_naming_the_field(api):
    _, key = await api.tenant_with_key("acme")
    for patterns, words in (([r"(\w+) \1"], "backreference"), (["ok", r"book(?=ing)"], "lookahead"),
                            ([r"(?<!not )book"], "lookbehind")):
        rules = {"intents": [{"name": "book", "patterns": patterns, "reply": "Sure."}]}
        status, body, _ = await api.call("POST", "/api/v1/agents", key, json={**AGENT, "rules": rules})
        assert status == 422, body
        field, message = _field(body)
        assert field == f"rules.intents.0.patterns.{len(patterns) - 1}" and words in message and "RE2" in message
    slot = {"slots": {"ref": {"type": "text", "pattern": r"(?<=ref )\w+"}}}
    status, body, _ = await api.call("POST", "/api/v1/agents", key, json={**AGENT, "rules": slot})
    assert status == 422 and _field(body)[0] == "rules.slots.ref.pattern"
    # What backtracked for ever on `re` is linear on RE2: a tenant may store it.
    rules = {"intents": [{"name": "trap", "patterns": [r"(.|..)*~", r"(a|aa)*c", r"(\w|\w\w)*!"]}]}
    status, body, _ = await api.call("POST", "/api/v1/agents", key, json={**AGENT, "rules": rules})
    assert status == 201 and body["warnings"] == [], body


async def test_a_tool_schema_that_is_not_json_schema_is_refused_naming_the_path(api):
    _, key = await api.tenant_with_key("acme")

    def tool(parameters: Any) -> dict[str, Any]:
        return {"name": "book", "description": "book a table", "url": "https://tools.example/book",
                "parameters": parameters}

    status, body, _ = await api.call("POST", "/api/v1/agents", key,
                                     json={**AGENT, "http_tools": [tool({"type": "objekt"})]})
    assert status == 422
    assert _field(body) == ("http_tools.0.parameters", "$.type: 'objekt' is not a JSON Schema type "
                                                       "(array, boolean, integer, null, number, object, string)")
    good = {"type": "object", "properties": {"party_size": {"type": "integer", "maximum": 8}}}
    status, agent, _ = await api.call("POST", "/api/v1/agents", key, json={**AGENT, "http_tools": [tool(good)]})
    assert status == 201, agent
    bad = {"type": "object", "properties": {"party_size": {"type": "integer", "maximum": "eight"}}}
    status, body, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", key,
                                     json={"http_tools": [tool(bad)]})
    assert status == 422
    field, message = _field(body)
    assert field == "http_tools.0.parameters"
    assert message == "$.properties.party_size.maximum: 'eight' is not of type 'number'"


async def test_a_stored_version_that_calls_cannot_fully_run_shows_warnings(api):
    tenant_id, key = await api.tenant_with_key("acme")
    rules = {"intents": [{"name": "book", "keywords": ["book"], "patterns": ["table"], "reply": "Sure."}]}
    status, agent, _ = await api.call("POST", "/api/v1/agents", key, json={**AGENT, "rules": rules})
    assert status == 201 and agent["warnings"] == []
    # As an earlier release could have stored it: a lookahead, and a type JSON Schema does not have.
    store = api.control.store
    row = await store.agent_versions.find(tenant_id=tenant_id, agent_id=agent["id"], version=1)
    config = {**row["config"], "http_tools": [{"name": "book_api", "description": "d", "url": "https://t.example/",
                                               "timeout_s": 5.0, "parameters": {"type": "objekt"}}]}
    config["rules"]["intents"][0]["patterns"] = [r"table(?=s)"]
    await store.agent_versions.update(row["id"], {"config": config}, tenant_id=tenant_id)

    status, shown, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}", key)
    assert status == 200
    assert [w.split(": ")[0] for w in shown["warnings"]] == ["rules.intents.0.patterns.0", "http_tools.0.parameters"]
    assert "skipped" in shown["warnings"][0] and "lookahead" in shown["warnings"][0]
    status, version, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}/versions/1", key)
    assert status == 200 and version["warnings"] == shown["warnings"]
    status, page, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}/versions", key)
    assert status == 200 and page["items"][0]["warnings"] == shown["warnings"]
    # Renaming is not a settings change; a settings change must fix them (every write is checked).
    status, renamed, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", key, json={"name": "desk2"})
    assert status == 200 and renamed["warnings"] == shown["warnings"]
    status, body, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", key, json={"greeting": "Hi"})
    assert status == 422, body

"""Tenant HTTP tools' parameter schemas are JSON Schema (draft 2020-12), issue 14: refused when
written unless valid (naming the JSON path), applied whole to the model's arguments when called
(after today's coercion); a violation is a tool error the model reads and the request is not made."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import ValidationError

from runtime.control.schemas import AgentConfig
from runtime.control.schemas import HttpTool as HttpToolConfig
from runtime.control.version_warnings import version_warnings
from runtime.providers.base import ToolCall, ToolSpec
from runtime.tools.arguments import check_arguments
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.toolbox import CallToolBox
from tests.calls.support import insert_call, provision

BOOKING = {
    "type": "object",
    "properties": {
        "party_size": {"type": "integer", "minimum": 1, "maximum": 8},
        "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
        "seating": {"$ref": "#/$defs/seating"},
    },
    "required": ["party_size", "time"],
    "additionalProperties": False,
    "$defs": {"seating": {"enum": ["inside", "terrace"]}},
}


def tool(parameters: Any) -> dict[str, Any]:
    return {"name": "book", "description": "book a table", "url": "https://tools.example/book",
            "parameters": parameters}


# Written


@pytest.mark.parametrize(("parameters", "path", "words"), [
    ({"type": "objekt"}, "$.type", "'objekt' is not a JSON Schema type"),
    ({"type": "object", "properties": {"n": {"type": "integer", "maximum": "eight"}}},
     "$.properties.n.maximum", "'eight' is not of type 'number'"),
    ({"type": "object", "required": "name"}, "$.required", "is not of type 'array'"),
    ({"type": "object", "properties": {"n": {"minLength": -1}}}, "$.properties.n.minLength", "minimum of 0"),
    ({"type": "object", "properties": {"code": {"type": "string", "pattern": "^(?=x)"}}},
     "$.properties.code.pattern", "lookahead"),
    ({"type": "object", "properties": {"code": {"type": "string", "pattern": r"(\w)\1"}}},
     "$.properties.code.pattern", "backreference"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "$.patternProperties", "not supported"),
    ({"type": "object", "properties": {"x": {"$ref": "http://169.254.169.254/schema.json"}}},
     "$.properties.x.$ref", "does not point inside this schema"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "$.properties.x.$ref", "inside"),
    ({"type": "object", "$schema": "http://json-schema.org/draft-04/schema#"}, "$.$schema", "2020-12"),
    ({"type": "array"}, "$.type", '"type": "object"'),
    ({"properties": {}}, "$.type", '"type": "object"'),
])
def test_invalid_parameter_schemas_are_refused_naming_the_path(parameters, path, words):
    with pytest.raises(ValidationError) as refused:
        HttpToolConfig(**tool(parameters))
    (error,) = refused.value.errors()
    assert error["loc"] == ("parameters",)
    assert error["msg"].startswith(f"Value error, {path}: ") and words in error["msg"], error["msg"]


def test_a_schema_nested_too_deep_is_refused_before_the_validator_recurses():
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(ValidationError, match="nests deeper than 32 levels"):
        HttpToolConfig(**tool(deep))


def test_valid_schemas_are_kept_as_written():
    assert HttpToolConfig(**tool(BOOKING)).parameters == BOOKING
    assert HttpToolConfig(name="t", description="d", url="http://x/").parameters["type"] == "object"


# Called


@pytest.mark.parametrize(("arguments", "problems"), [
    ({"party_size": 4, "time": "19:30"}, []),
    ({"party_size": "4", "time": "19:30", "seating": "terrace"}, []),  # coerced, as before
    ({"party_size": 99, "time": "19:30"}, ["party_size: 99 is greater than the maximum of 8"]),
    ({"party_size": 0, "time": "19:30"}, ["party_size: 0 is less than the minimum of 1"]),
    ({"party_size": 2, "time": "7pm"}, ["time: '7pm' does not match '^([01][0-9]|2[0-3]):[0-5][0-9]$'"]),
    ({"party_size": 2, "time": "19:30", "seating": "roof"}, ["seating must be one of ['inside', 'terrace']"]),
    ({"party_size": 2, "time": "19:30", "dog": True}, ["dog is not an argument of this tool"]),
    ({"time": "19:30"}, ["party_size is required"]),
])
def test_arguments_are_checked_against_the_whole_schema(arguments, problems):
    checked, found = check_arguments(BOOKING, arguments)
    assert found == problems
    if not problems:
        assert checked["party_size"] == 4  # "4" is coerced


def test_argument_patterns_run_in_linear_time():
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a|aa)*c$"}}}
    started = time.perf_counter()
    _, problems = check_arguments(schema, {"code": "a" * 10_000})
    assert time.perf_counter() - started < 0.2
    assert problems == ["code: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' does not match '^(a|aa)*c$'"]


def test_a_huge_numeric_string_is_not_a_crash():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert check_arguments(schema, {"n": "9" * 5000})[1] == ["n must be integer"]


@dataclass
class RecordingTool:
    """A tool that only records its runs (the HTTP tool's request is what must not happen)."""

    spec: ToolSpec
    runs: list[dict[str, Any]]
    timeout_s: float = 2.0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.runs.append(arguments)
        return ToolResult({"booked": True})


@pytest_asyncio.fixture
async def schema_server():
    """Where a stored schema's remote $ref points: counts every request that reaches it."""
    received: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        received.append(f"{request.method} {request.path}")
        return web.json_response({"type": "string"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def _box(control, config: AgentConfig) -> tuple[CallToolBox, ToolContext, list[dict[str, Any]]]:
    """The call's toolbox with the version's HTTP tools as recorders."""
    world = await provision(control)
    call_id = await insert_call(control, world.tenant_id)
    runs: list[dict[str, Any]] = []

    async def emit(payload, batch=None):
        if batch is not None:
            await batch.commit()

    tools = {t.name: RecordingTool(ToolSpec(t.name, t.description, t.parameters), runs) for t in config.http_tools}
    return CallToolBox(tools, store=control.store, emit=emit), ToolContext(world.tenant_id, call_id), runs


async def test_a_violation_is_a_tool_error_and_the_tool_does_not_run(control):
    config = AgentConfig(system_prompt="x", http_tools=[tool(BOOKING)])
    box, ctx, runs = await _box(control, config)
    refused = await box.call(ToolCall("t1", "book", {"party_size": 99, "time": "19:30"}), ctx)
    assert refused.status == "error"
    assert refused.content["error"] == ("book was not run, its arguments are invalid: "
                                        "party_size: 99 is greater than the maximum of 8")
    assert runs == []
    done = await box.call(ToolCall("t2", "book", {"party_size": "8", "time": "19:30"}), ctx)
    assert done.status == "ok" and runs == [{"party_size": 8, "time": "19:30"}]
    rows, _ = await control.store.tool_calls.list(tenant_id=ctx.tenant_id, equals={"call_id": ctx.call_id})
    assert sorted(r["status"] for r in rows) == ["error", "ok"]


async def test_a_stored_schema_that_cannot_be_applied_stops_only_its_tool(control, schema_server):
    """Stored by a release that did not check schemas: the version loads and is flagged; calls to
    that tool are refused before it runs (nothing fetched for a remote $ref)."""
    url, received = schema_server
    bad = [{"type": "objekt"}, {"type": "object", "properties": {"x": {"$ref": f"{url}/schema.json"}}}]
    raw = AgentConfig(system_prompt="x", http_tools=[tool(BOOKING)]).model_dump()
    good = raw["http_tools"][0]
    raw["http_tools"] = [*({**good, "name": f"bad{i}", "parameters": p} for i, p in enumerate(bad)), good]
    with pytest.raises(ValidationError):
        AgentConfig.model_validate(raw)
    config = AgentConfig.from_stored(raw)
    box, ctx, runs = await _box(control, config)
    for name in ("bad0", "bad1"):
        result = await box.call(ToolCall("t", name, {"x": 1}), ctx)
        assert result.status == "error" and "parameter schema cannot be applied" in result.content["error"]
    assert runs == [] and received == []
    assert (await box.call(ToolCall("t", "book", {"party_size": 2, "time": "19:30"}), ctx)).status == "ok"
    warnings = version_warnings(raw)
    assert [w.split(":")[0] for w in warnings] == ["http_tools.0.parameters", "http_tools.1.parameters"]
    assert "not called until this is fixed" in warnings[0] and "$.type" in warnings[0]


def test_an_undecodable_argument_is_checked_not_a_crash():
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[a-z]+$"}}}
    assert check_arguments(schema, {"code": "ab\ud800"})[1] == ["code: 'ab\\ud800' does not match '^[a-z]+$'"]


def test_a_stored_schema_a_write_would_refuse_but_calls_can_apply_is_not_flagged():
    """Before schemas were checked, "type": "object" was not required: such a tool still runs."""
    raw = AgentConfig(system_prompt="x", http_tools=[tool(BOOKING)]).model_dump()
    raw["http_tools"][0]["parameters"] = {"properties": {"n": {"type": "integer", "maximum": 8}}}
    assert version_warnings(raw) == []
    assert check_arguments(raw["http_tools"][0]["parameters"], {"n": 9})[1] == ["n: 9 is greater than the maximum of 8"]

"""/api/v1/agents: agents and versions; changes create drafts, promote activates (admin)."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.errors import BadRequest, Forbidden
from runtime.control.models import Agent, AgentVersion
from runtime.control.rollouts import RolloutStart
from runtime.control.schemas import MAX_VERSION, AgentCreate, AgentUpdate, PromoteRequest


async def create_agent(ctx: Ctx) -> Agent:
    return await ctx.control.agents.create(ctx.tenant, ctx.body)


async def list_agents(ctx: Ctx):
    return await ctx.control.agents.list(ctx.tenant, ctx.page())


async def get_agent(ctx: Ctx) -> Agent:
    return await ctx.control.agents.get(ctx.tenant, ctx.param("agent_id"))


async def update_agent(ctx: Ctx) -> Agent:
    if ctx.body.gate_changes() and not ctx.principal.is_admin:
        raise Forbidden("only admin keys change an agent's evaluation gate", {"fields": sorted(ctx.body.gate_changes())})
    return await ctx.control.agents.update(ctx.tenant, ctx.param("agent_id"), ctx.body)


async def delete_agent(ctx: Ctx) -> None:
    await ctx.control.agents.delete(ctx.tenant, ctx.param("agent_id"))


async def list_versions(ctx: Ctx):
    return await ctx.control.agents.versions(ctx.tenant, ctx.param("agent_id"), ctx.page())


def _version(ctx: Ctx) -> int:
    raw = ctx.param("version")
    # ASCII digits only ("²".isdigit() is true), and few enough for int() to take.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not 1 <= int(raw) <= MAX_VERSION:
        raise BadRequest(f"version must be an integer 1..{MAX_VERSION}", {"version": raw})
    return int(raw)


async def get_version(ctx: Ctx) -> AgentVersion:
    return await ctx.control.agents.version(ctx.tenant, ctx.param("agent_id"), _version(ctx))


def who(ctx: Ctx) -> str:
    """Who made a change, as recorded: the API key's id."""
    return f"key {ctx.principal.key_id}" if ctx.principal is not None else "unknown"


async def promote(ctx: Ctx) -> Agent:
    body = ctx.body
    return await ctx.control.agents.promote(ctx.tenant, ctx.param("agent_id"), body.version, by=who(ctx),
                                            force=body.force, reason=body.reason)


async def start_rollout(ctx: Ctx) -> dict:
    return await ctx.control.rollouts.start(ctx.tenant, ctx.param("agent_id"), ctx.body, by=who(ctx))


async def rollout_status(ctx: Ctx) -> dict:
    return await ctx.control.rollouts.status(ctx.tenant, ctx.param("agent_id"))


async def stop_rollout(ctx: Ctx) -> dict:
    return await ctx.control.rollouts.stop(ctx.tenant, ctx.param("agent_id"), by=who(ctx))


ROUTES = [
    Route("GET", "/api/v1/agents", list_agents, "List agents", response=Agent, paged=True, query=PAGE,
          tag="agents"),
    Route("POST", "/api/v1/agents", create_agent, "Create an agent (version 1, active)", body=AgentCreate,
          status=201, response=Agent, tag="agents"),
    Route("GET", "/api/v1/agents/{agent_id}", get_agent, "Show an agent with its active configuration",
          response=Agent, tag="agents"),
    Route("PATCH", "/api/v1/agents/{agent_id}", update_agent,
          "Rename an agent and/or change settings (a settings change creates a draft version)",
          body=AgentUpdate, response=Agent, tag="agents"),
    Route("DELETE", "/api/v1/agents/{agent_id}", delete_agent, "Delete an agent (not while numbers route to it)",
          status=204, tag="agents", errors=(409,)),
    Route("GET", "/api/v1/agents/{agent_id}/versions", list_versions, "List an agent's versions",
          response=AgentVersion, paged=True, query=PAGE, tag="agents"),
    Route("GET", "/api/v1/agents/{agent_id}/versions/{version}", get_version, "Show one version",
          response=AgentVersion, tag="agents"),
    Route("POST", "/api/v1/agents/{agent_id}/promote", promote,
          "Make a version active (default: the latest); refused 409 evaluation_required while the gate is on "
          "and its evaluation is missing or below the threshold, unless force with a reason",
          auth="tenant_admin", body=PromoteRequest, response=Agent, tag="agents", errors=(409,)),
    Route("PUT", "/api/v1/agents/{agent_id}/rollout", start_rollout,
          "Start a percentage rollout of a version (gated as promotion is); 409 while one runs",
          auth="tenant_admin", body=RolloutStart, tag="agents", errors=(404, 409, 422)),
    Route("GET", "/api/v1/agents/{agent_id}/rollout", rollout_status,
          "The agent's running (else latest) rollout with both arms side by side", tag="agents"),
    Route("DELETE", "/api/v1/agents/{agent_id}/rollout", stop_rollout,
          "Stop the running rollout: every new call gets the promoted version", auth="tenant_admin", tag="agents"),
]

"""/api/v1/eval-suites and /api/v1/agents/{id}/evaluations: stored suites, evaluation runs."""

from __future__ import annotations

from pydantic import Field, model_validator

from runtime.api.appkeys import INSTANCE_ID, PIPELINE, SETTINGS
from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.api.evaluations import EVAL_JOBS, own_base_url
from runtime.api.routes.agents import who
from runtime.control.schemas import MAX_VERSION, Input
from runtime.evals.runner import Runner, plan
from runtime.evals.suite import MAX_SUITE_BYTES, load_suite
from runtime.evals.suites import Evaluation, StoredSuite, SuiteService, SuiteSummary, check_assets


class EvaluationRequest(Input):
    suite_id: str | None = Field(None, max_length=64, description="a stored suite (GET /api/v1/eval-suites)")
    suite: str | None = Field(None, max_length=MAX_SUITE_BYTES, description="or a suite's YAML, inline (no wav turns)")
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="default: the active version")
    calls: int = Field(1, ge=1, le=1000, description="calls per scenario")
    concurrency: int = Field(1, ge=1, le=100, description="calls at once")

    @model_validator(mode="after")
    def _one_suite(self) -> EvaluationRequest:
        if (self.suite_id is None) == (self.suite is None):
            raise ValueError("give exactly one of suite_id and suite")
        return self


def _suites(ctx: Ctx) -> SuiteService:
    return SuiteService(ctx.control.store)


async def list_suites(ctx: Ctx):
    return await _suites(ctx).list(ctx.tenant, ctx.page())


async def get_suite(ctx: Ctx) -> StoredSuite:
    return await _suites(ctx).get(ctx.tenant, ctx.param("suite_id"))


async def start_evaluation(ctx: Ctx) -> dict:
    body: EvaluationRequest = ctx.body
    app = ctx.request.app
    suites = _suites(ctx)
    if body.suite_id is not None:
        suite, assets = await suites.load(ctx.tenant, body.suite_id)
    else:
        suite, assets = load_suite(body.suite or "", where="suite"), {}
        check_assets(suite, assets, "suite")
    jobs = app[EVAL_JOBS]
    jobs.admit(ctx.tenant)
    try:
        run_plan = await plan(ctx.control.store, app[SETTINGS], tenant_id=ctx.tenant, agent_id=ctx.param("agent_id"),
                              version=body.version, suite=suite, suite_id=body.suite_id, assets=assets,
                              calls=body.calls, concurrency=body.concurrency, started_by=who(ctx))
        runner = Runner(ctx.control.store, ctx.control.credentials, app[PIPELINE].providers, ctx.control.events,
                        base_url=own_base_url(ctx.request), public_url=app[SETTINGS].server.public_url,
                        instance_id=app[INSTANCE_ID])
        row = await runner.start(run_plan)
    except BaseException:
        jobs.release(ctx.tenant)
        raise
    jobs.start(runner, row, run_plan)
    return {"id": row["id"], "status": "running", "agent_id": row["agent_id"], "version": row["agent_version"],
            "suite_id": row["suite_id"], "suite_sha256": row["suite_sha256"]}


async def list_evaluations(ctx: Ctx):
    return await _suites(ctx).evaluations(ctx.tenant, ctx.param("agent_id"), ctx.page())


async def get_evaluation(ctx: Ctx) -> Evaluation:
    return await _suites(ctx).evaluation(ctx.tenant, ctx.param("agent_id"), ctx.param("evaluation_id"))


ROUTES = [
    Route("GET", "/api/v1/eval-suites", list_suites, "List the tenant's stored evaluation suites (newest first)",
          response=SuiteSummary, paged=True, query=PAGE, tag="evaluations"),
    Route("GET", "/api/v1/eval-suites/{suite_id}", get_suite, "Show a stored suite with its YAML",
          response=StoredSuite, tag="evaluations"),
    Route("POST", "/api/v1/agents/{agent_id}/evaluations", start_evaluation,
          "Run a suite against a version of the agent: synthetic calls pinned to it (202; poll the evaluation)",
          body=EvaluationRequest, status=202, tag="evaluations", rate_class="outbound", errors=(404, 409, 422)),
    Route("GET", "/api/v1/agents/{agent_id}/evaluations", list_evaluations,
          "List the agent's evaluations (newest first)", response=Evaluation, paged=True, query=PAGE,
          tag="evaluations"),
    Route("GET", "/api/v1/agents/{agent_id}/evaluations/{evaluation_id}", get_evaluation,
          "Show one evaluation with its per-scenario results", response=Evaluation, tag="evaluations"),
]

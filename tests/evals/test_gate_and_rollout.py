"""The promotion gate and rollouts through the control plane, on both backends: who may promote
what, what is recorded and sent, how calls are routed while a rollout runs, and the scheduler's
verdict on a rollout's real call rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runtime.calls.routing import route_call
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.gate import EvaluationRequired
from runtime.control.rollouts import RolloutStart, in_rollout
from runtime.control.schemas import AgentCreate, AgentUpdate, NumberCreate, TenantCreate, TenantUpdate
from runtime.evals.suites import SuiteService
from runtime.ids import new_id, now_iso

SUITE = "name: gate\nscenarios: [{name: one, turns: [{say: hello}]}]\n"
NOON = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)


async def world(control):
    tenant = await control.tenants.create(TenantCreate(name=new_id("acme")))
    agent = await control.agents.create(tenant.id, AgentCreate(name="desk", system_prompt="Be brief."))
    await control.agents.update(tenant.id, agent.id, AgentUpdate(greeting="Hi from version two."))
    suite, _ = await SuiteService(control.store).add(tenant.id, SUITE)
    return tenant.id, agent.id, suite.id


async def evaluated(control, tenant_id: str, agent_id: str, version: int, suite_id: str, score: float,
                    status: str = "done", at: str | None = None) -> str:
    row_id = new_id("evl")
    await control.store.evaluations.insert({
        "id": row_id, "tenant_id": tenant_id, "agent_id": agent_id, "agent_version": version, "status": status,
        "score": score, "rubric": {}, "created_at": at or now_iso(), "suite_id": suite_id, "passed": score == 1.0,
        "results": []})
    return row_id


async def events(control, tenant_id: str, topic: str) -> list[dict]:
    rows, _ = await control.store.call_events.list(tenant_id=tenant_id, equals={"topic": topic}, limit=50)
    return [r["payload"] for r in rows]


async def test_the_gate_is_off_until_both_settings_are_set(control):
    tenant_id, agent_id, suite_id = await world(control)
    with pytest.raises(Invalid, match="needs both"):
        await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id=suite_id))
    with pytest.raises(Invalid, match="no suite"):
        await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id="sui_nope",
                                                             rollout_min_eval_score=0.9))
    agent = await control.agents.promote(tenant_id, agent_id, 2, by="cli test")  # gate off: anything goes
    assert agent.active_version == 2 and agent.active.promoted_by == "cli test" and agent.active.promote_forced is False


async def test_promotion_needs_a_good_enough_latest_evaluation_on_the_required_suite(control):
    tenant_id, agent_id, suite_id = await world(control)
    await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id=suite_id,
                                                         rollout_min_eval_score=0.9))
    with pytest.raises(EvaluationRequired) as missing:
        await control.agents.promote(tenant_id, agent_id, 2)
    assert missing.value.status == 409 and missing.value.code == "evaluation_required" and missing.value.exit_code == 4
    assert missing.value.details == {"required_suite_id": suite_id, "score": None, "threshold": 0.9, "version": 2,
                                     "evaluation_id": None}
    # A good score on another version, another suite or a run that failed does not count; the latest does.
    other, _ = await SuiteService(control.store).add(tenant_id, SUITE.replace("gate", "other"))
    await evaluated(control, tenant_id, agent_id, 1, suite_id, 1.0)
    await evaluated(control, tenant_id, agent_id, 2, other.id, 1.0)
    await evaluated(control, tenant_id, agent_id, 2, suite_id, 1.0, status="failed")
    await evaluated(control, tenant_id, agent_id, 2, suite_id, 1.0, at="2000-01-01T00:00:00.000000Z")
    low = await evaluated(control, tenant_id, agent_id, 2, suite_id, 0.5)
    with pytest.raises(EvaluationRequired) as below:
        await control.agents.promote(tenant_id, agent_id, 2)
    assert below.value.details == {"required_suite_id": suite_id, "score": 0.5, "threshold": 0.9, "version": 2,
                                   "evaluation_id": low}
    assert (await control.agents.get(tenant_id, agent_id)).active_version == 1
    await evaluated(control, tenant_id, agent_id, 2, suite_id, 0.95)
    assert (await control.agents.promote(tenant_id, agent_id, 2, by="key k1")).active_version == 2
    # Version 1, made by agent create, is never gated (going back to it needs no evaluation).
    assert (await control.agents.promote(tenant_id, agent_id, 1, by="key k1")).active_version == 1
    promoted = await events(control, tenant_id, "agent.promoted")
    assert [(e["version"], e["previous_version"], e["by"], e["forced"]) for e in promoted] == [
        (2, 1, "key k1", False), (1, 2, "key k1", False)]


async def test_an_admin_may_force_with_a_reason_which_is_recorded_and_sent(control):
    tenant_id, agent_id, suite_id = await world(control)
    await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id=suite_id,
                                                         rollout_min_eval_score=1.0))
    with pytest.raises(Invalid, match="needs a reason"):
        await control.agents.promote(tenant_id, agent_id, 2, force=True, reason="  ")
    agent = await control.agents.promote(tenant_id, agent_id, 2, by="key adm", force=True, reason="hotfix for a typo")
    assert (agent.active.promoted_by, agent.active.promote_forced, agent.active.promote_reason) == (
        "key adm", True, "hotfix for a typo")
    (event,) = await events(control, tenant_id, "agent.promoted")
    assert event == {"agent_id": agent_id, "version": 2, "previous_version": 1, "by": "key adm", "forced": True,
                     "reason": "hotfix for a typo"}


async def test_an_agent_overrides_the_tenant_gate(control):
    tenant_id, agent_id, suite_id = await world(control)
    other, _ = await SuiteService(control.store).add(tenant_id, SUITE.replace("gate", "strict"))
    await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id=suite_id,
                                                         rollout_min_eval_score=0.5))
    await control.agents.update(tenant_id, agent_id, AgentUpdate(rollout_required_suite_id=other.id,
                                                                 rollout_min_eval_score=0.99))
    with pytest.raises(Invalid, match="no suite"):
        await control.agents.update(tenant_id, agent_id, AgentUpdate(rollout_required_suite_id="sui_x"))
    await evaluated(control, tenant_id, agent_id, 2, suite_id, 1.0)  # the tenant's suite: not the one that counts
    with pytest.raises(EvaluationRequired) as refused:
        await control.agents.promote(tenant_id, agent_id, 2)
    assert refused.value.details["required_suite_id"] == other.id and refused.value.details["threshold"] == 0.99
    agent = await control.agents.update(tenant_id, agent_id, AgentUpdate(rollout_required_suite_id=None,
                                                                         rollout_min_eval_score=None))
    assert agent.latest_version == 2, "gate settings make no new version"
    assert (await control.agents.promote(tenant_id, agent_id, 2)).active_version == 2


async def number(control, tenant_id: str, agent_id: str, e164: str, pinned: int | None = None) -> None:
    await control.numbers.add(tenant_id, NumberCreate(e164=e164, provider="twilio", agent_id=agent_id,
                                                      pinned_version=pinned))


async def test_calls_follow_the_rollout_sticky_by_caller_and_pinned_numbers_stay_out(control):
    tenant_id, agent_id, _ = await world(control)
    await number(control, tenant_id, agent_id, "+15550170001")
    await number(control, tenant_id, agent_id, "+15550170002", pinned=1)
    status = await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=2, percent=50), by="cli t")
    rollout_id = status["id"]
    assert (status["status"], status["base_version"], status["candidate_version"]) == ("running", 1, 2)
    callers = [f"+1555020{n:04d}" for n in range(40)]
    for caller in callers:
        route = await route_call(control.store, "+15550170001", NOON, caller=caller)
        wanted = in_rollout(rollout_id, caller, 50)
        assert (route.version, route.rollout_arm, route.rollout_id) == (
            (2, "candidate", rollout_id) if wanted else (1, "base", rollout_id))
        again = await route_call(control.store, "+15550170001", NOON, caller=caller)
        assert again.version == route.version
        pinned = await route_call(control.store, "+15550170002", NOON, caller=caller)
        assert (pinned.version, pinned.rollout_id) == (1, None)
    assert 5 < sum(in_rollout(rollout_id, c, 50) for c in callers) < 35
    anonymous = await route_call(control.store, "+15550170001", NOON, caller=None)
    assert (anonymous.version, anonymous.rollout_id) == (1, None)
    await control.rollouts.stop(tenant_id, agent_id, by="cli t")
    assert (await route_call(control.store, "+15550170001", NOON, caller=callers[0])).rollout_id is None
    topics = [await events(control, tenant_id, t) for t in ("agent.rollout_started", "agent.rollout_stopped")]
    assert topics[0][0]["percent"] == 50 and topics[1][0]["reason"] == "stopped" and topics[1][0]["by"] == "cli t"


async def test_a_rollout_is_gated_refused_twice_and_checked(control):
    tenant_id, agent_id, suite_id = await world(control)
    with pytest.raises(Invalid, match="already the promoted"):
        await control.agents.promote(tenant_id, agent_id, 2, by="t")
        await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=2, percent=10), by="t")
    await control.agents.promote(tenant_id, agent_id, 1, by="t")
    with pytest.raises(NotFound):
        await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=7, percent=10), by="t")
    with pytest.raises(NotFound):
        await control.rollouts.status(tenant_id, agent_id)
    with pytest.raises(NotFound):
        await control.rollouts.stop(tenant_id, agent_id, by="t")
    await control.tenants.update(tenant_id, TenantUpdate(rollout_required_suite_id=suite_id,
                                                         rollout_min_eval_score=0.8))
    with pytest.raises(EvaluationRequired):
        await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=2, percent=10), by="t")
    await evaluated(control, tenant_id, agent_id, 2, suite_id, 0.8)
    await control.rollouts.start(tenant_id, agent_id, RolloutStart(
        version=2, percent=100, stop={"max_failure_rate": 0.4, "min_calls": 3}), by="t")
    with pytest.raises(Conflict, match="already has a running rollout"):
        await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=2, percent=10), by="t")
    running = await control.rollouts.running(tenant_id, agent_id)
    for status in ("ended", "failed"):  # two calls on the candidate: too few to judge
        await call_row(control, tenant_id, agent_id, 2, running["id"], status)
    assert await control.rollouts.check(running) == "wait"
    await call_row(control, tenant_id, agent_id, 2, running["id"], "failed")
    await call_row(control, tenant_id, agent_id, 1, running["id"], "ended", end_reason="transferred")
    assert await control.rollouts.check(running) == "revert"
    assert await control.rollouts.check(running) == "wait", "already ended: nothing more happens"
    status = await control.rollouts.status(tenant_id, agent_id)
    assert (status["status"], status["end_reason"]) == ("reverted", "breach")
    assert status["arms"]["candidate"] == {"version": 2, "calls": 3, "failures": 2, "transfers": 0,
                                           "p95_first_audio_ms": 900.0, "failure_rate": 0.6667, "transfer_rate": 0.0}
    assert status["arms"]["base"]["transfers"] == 1 and status["breach"]["tripped"] == ["failure_rate"]
    (reverted,) = await events(control, tenant_id, "agent.rollout_reverted")
    assert reverted == {"rollout_id": running["id"], "agent_id": agent_id, "candidate_version": 2, "base_version": 1,
                        "tripped": "failure_rate", "calls": 3, "failure_rate": 0.6667, "transfer_rate": 0.0,
                        "p95_first_audio_ms": 900.0}
    assert (await control.agents.get(tenant_id, agent_id)).active_version == 1


async def test_auto_promotion_and_a_promotion_that_ends_the_rollout(control):
    tenant_id, agent_id, _ = await world(control)
    await control.rollouts.start(tenant_id, agent_id, RolloutStart(
        version=2, percent=100, stop={"min_calls": 1}, auto_promote_after=2), by="t")
    running = await control.rollouts.running(tenant_id, agent_id)
    await call_row(control, tenant_id, agent_id, 2, running["id"], "ended")
    assert await control.rollouts.check(running) == "wait"
    await call_row(control, tenant_id, agent_id, 2, running["id"], "ended")
    assert await control.rollouts.check(running) == "promote"
    agent = await control.agents.get(tenant_id, agent_id)
    assert agent.active_version == 2 and agent.active.promoted_by == f"rollout {running['id']}"
    assert (await control.rollouts.status(tenant_id, agent_id))["status"] == "promoted"
    # A promotion while a rollout runs ends it: "promoted" when it was its candidate, else "superseded".
    await control.agents.update(tenant_id, agent_id, AgentUpdate(greeting="three"))
    await control.rollouts.start(tenant_id, agent_id, RolloutStart(version=3, percent=5), by="t")
    await control.agents.promote(tenant_id, agent_id, 1, by="t")
    status = await control.rollouts.status(tenant_id, agent_id)
    assert (status["status"], status["end_reason"]) == ("stopped", "superseded")
    reasons = [e["reason"] for e in await events(control, tenant_id, "agent.rollout_stopped")]
    assert reasons == ["promoted", "superseded"]


async def call_row(control, tenant_id: str, agent_id: str, version: int, rollout_id: str, status: str,
                   end_reason: str | None = None) -> None:
    now = now_iso()
    await control.store.voice_calls.insert({
        "id": new_id("call"), "tenant_id": tenant_id, "agent_id": agent_id, "agent_version": version,
        "provider": "twilio", "direction": "inbound", "status": status, "end_reason": end_reason,
        "started_at": now, "summary": {}, "latency": {"v2v": {"count": 2, "p50_ms": 700, "p95_ms": 900.0}},
        "metadata": {}, "trace_id": "tr", "created_at": now, "updated_at": now, "rollout_id": rollout_id})

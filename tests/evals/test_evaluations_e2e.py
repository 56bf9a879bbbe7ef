"""Evaluations, the gate and rollout end to end on both backends, with real calls over the Twilio
protocol to a live runtime (the demo's booking agent, the offline stack):

- a shipped suite passes against the demo agent, run by `voicectl eval run --json` in its own process;
- a draft that breaks a booking expectation fails its run (started through the API, run by the
  runtime against itself) and cannot be promoted while the gate is on, except forced with a reason;
- a rollout whose candidate breaches its stop condition reverts within one scheduler tick, and new
  calls go back to the promoted version.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from runtime.api.appkeys import CONTROL
from runtime.calls.rollout_watch import ROLLOUT_WATCH
from runtime.ids import parse_iso
from runtime.telephony.twilio.caller import TwilioCaller
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from voicectl.demo import provision

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "evals"
TICK_S = 0.5


@pytest_asyncio.fixture
async def demo(settings, tmp_path):
    async for made in _demo(settings):
        yield made


@pytest_asyncio.fixture
async def demo_one_local_call(settings, tmp_path):
    """The demo on a box whose local speech engines take one call at a time."""
    async for made in _demo(settings, local_calls=1):
        yield made


async def _demo(settings, **limits):
    built = with_overrides(settings, limits={**high_limits(), **limits}, rollout={"check_interval_s": TICK_S},
                           server={"shutdown_grace_s": 0.5})
    api, runner = await start_live_api(built)
    try:
        made = await provision(api.control)
        yield api, made, built
    finally:
        await stop_live_api(api, runner)


def write_config(settings, path: Path, port: int) -> Path:
    config = {"database": {"url": settings.database.url}, "secrets": {"backend": "cryptfile"},
              "security": {"egress": {"allow": list(settings.security.egress.allow)}},
              "server": {"host": "127.0.0.1", "port": port}}
    path.write_text(yaml.safe_dump(config))
    return path


def voicectl(config: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "voicectl", "--config", str(config), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=config.parent)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the next two tests run on both stores
async def test_a_shipped_suite_passes_against_the_demo_agent(demo_one_local_call, tmp_path):
    # Three at once on engines that take one call: the calls refused as busy are placed again as
    # the others end, so the run passes.
    api, made, settings = demo_one_local_call
    port = int(api.base_url.rsplit(":", 1)[1])
    config = write_config(settings, tmp_path / "config.yaml", port)
    suite = EXAMPLES / "escalation.yaml"
    proc = await asyncio.to_thread(voicectl, config, "eval", "run", str(suite), "--tenant", "demo", "--agent",
                                   "booking", "--concurrency", "3", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert set(report) >= {"evaluation_id", "agent_id", "version", "score", "passed", "scenarios"}
    assert (report["agent_id"], report["version"], report["score"], report["passed"]) == (made["agent_id"], 1, 1.0, True)
    names = [s["name"] for s in report["scenarios"]]
    assert names == [s["name"] for s in yaml.safe_load(suite.read_text())["scenarios"]]
    for scenario in report["scenarios"]:
        assert set(scenario) >= {"name", "passed", "failed_expectation", "excerpt", "first_audio_ms"}
        assert scenario["passed"] is True and scenario["failed_expectation"] is None
        assert 0 < scenario["first_audio_ms"] < 5000
    evaluation_id = report["evaluation_id"]

    # The calls are ordinary archived calls: newest first, tagged, their summaries written.
    key = made.get("runtime_key")
    status, page, _ = await api.call("GET", "/api/v1/calls?limit=100", api.admin_key, tenant_id=made["tenant_id"])
    assert status == 200, page
    placed = [c for c in page["items"] if c["metadata"].get("evaluation_id") == evaluation_id]
    tagged = [c for c in placed if c["status"] == "ended"]
    refused = [c for c in placed if c not in tagged]
    assert len(tagged) == 3 and key is None
    assert refused and all(c["end_reason"] == "busy" for c in refused), [(c["status"], c["end_reason"]) for c in refused]
    assert [c["created_at"] for c in page["items"]] == sorted((c["created_at"] for c in page["items"]), reverse=True)
    assert all(c["status"] == "ended" and c["summary"].get("media") for c in tagged)
    assert {c["id"] for c in tagged} == {s["call_id"] for s in report["scenarios"]}
    transferred = [c for c in tagged if c["end_reason"] == "transferred"]
    assert len(transferred) == 2, "asking for a person and pressing 0 transfer the call"
    for call in transferred:  # on the media side: a synthetic call has no Twilio call to redirect
        rows, _ = await api.control.store.call_events.list(
            tenant_id=made["tenant_id"], equals={"call_id": call["id"], "topic": "call.carrier_skipped"}, limit=5)
        assert [r["payload"] for r in rows] == [{"action": "transfer", "reason": "evaluation"}]

    status, stored, _ = await api.call("GET", f"/api/v1/agents/{made['agent_id']}/evaluations/{evaluation_id}",
                                       api.admin_key, tenant_id=made["tenant_id"])
    assert status == 200 and stored["status"] == "done" and stored["score"] == 1.0 and stored["passed"] is True
    assert stored["started_by"].startswith("cli") and stored["suite_sha256"] == report["suite_sha256"]
    events, _ = await api.control.store.call_events.list(tenant_id=made["tenant_id"],
                                                         equals={"topic": "agent.evaluated"}, limit=5)
    assert [e["payload"]["evaluation_id"] for e in events] == [evaluation_id]
    assert events[0]["payload"]["passed"] is True and events[0]["payload"]["scenarios"] == 3

    # A bad suite is exit 2 and a runtime that is not there exit 8, neither placing a call.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nscenarios:\n  - name: x\n    turns: [{say: hi, dtmf: '1'}]\n")
    proc = await asyncio.to_thread(voicectl, config, "eval", "run", str(bad), "--tenant", "demo", "--agent", "booking")
    assert proc.returncode == 2 and "line 4: scenarios[0].turns[0]: a turn does exactly one of" in proc.stderr
    proc = await asyncio.to_thread(voicectl, config, "eval", "run", str(suite), "--tenant", "demo", "--agent",
                                   "booking", "--url", "http://127.0.0.1:9")
    assert proc.returncode == 8 and "could not be reached" in proc.stderr, proc.stderr


def booking_scenario_only() -> str:
    """The first scenario of the shipped booking suite: a table for two, booked and confirmed."""
    data = yaml.safe_load((EXAMPLES / "booking.yaml").read_text())
    data["scenarios"] = data["scenarios"][:1]
    return yaml.safe_dump(data, sort_keys=False)


async def wait_done(api, made, evaluation_id: str, timeout: float = 150) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, row, _ = await api.call("GET", f"/api/v1/agents/{made['agent_id']}/evaluations/{evaluation_id}",
                                        api.admin_key, tenant_id=made["tenant_id"])
        assert status == 200, row
        if row["status"] != "running":
            return row
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.5)


async def test_a_draft_that_breaks_booking_fails_its_run_and_is_not_promoted_while_gated(demo):
    api, made, _ = demo
    tenant_id, agent_id = made["tenant_id"], made["agent_id"]
    # The draft forgets to book: the confirmation goes nowhere (create_booking is not among its tools).
    status, agent, _ = await api.call("GET", f"/api/v1/agents/{agent_id}", api.admin_key, tenant_id=tenant_id)
    tools = [t for t in agent["config"]["tools"] if t != "create_booking"]
    status, draft, _ = await api.call("PATCH", f"/api/v1/agents/{agent_id}", api.admin_key, tenant_id=tenant_id,
                                      json={"tools": tools, "note": "tidy the tool list"})
    assert status == 200 and draft["latest_version"] == 2
    from runtime.evals.suites import SuiteService

    suite, _ = await SuiteService(api.control.store).add(tenant_id, booking_scenario_only())
    status, _, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                  json={"rollout_required_suite_id": suite.id, "rollout_min_eval_score": 1.0})
    assert status == 200

    status, started, _ = await api.call("POST", f"/api/v1/agents/{agent_id}/evaluations", api.admin_key,
                                        tenant_id=tenant_id, json={"suite_id": suite.id, "version": 2})
    assert status == 202 and started["status"] == "running", started
    status, again, _ = await api.call("POST", f"/api/v1/agents/{agent_id}/evaluations", api.admin_key,
                                      tenant_id=tenant_id, json={"suite_id": suite.id, "version": 2})
    assert status == 409, "one run at a time per tenant"
    row = await wait_done(api, made, started["id"])
    assert row["status"] == "done" and row["passed"] is False and row["version"] == 2, row
    assert 0 < row["score"] < 1.0
    (scenario,) = row["scenarios"]
    assert scenario["status"] == "failed" and scenario["failed_expectation"].startswith("turn 2: "), scenario
    failed = [e["what"] for e in scenario["expectations"] if not e["met"]]
    assert any(w.startswith("turn 2: create_booking(party_size 2, time '19:00'") for w in failed), failed
    assert "table has just been taken" in scenario["excerpt"], "what the agent said where it failed"

    status, body, _ = await api.call("POST", f"/api/v1/agents/{agent_id}/promote", api.admin_key,
                                     tenant_id=tenant_id, json={"version": 2})
    assert status == 409 and body["error"] == "evaluation_required", body
    assert body["details"]["required_suite_id"] == suite.id and body["details"]["threshold"] == 1.0
    assert body["details"]["score"] == row["score"] and body["details"]["evaluation_id"] == row["id"]
    status, body, _ = await api.call("POST", f"/api/v1/agents/{agent_id}/promote", api.admin_key,
                                     tenant_id=tenant_id, json={"version": 2, "force": True,
                                                                "reason": "accepted: bookings move to the web form"})
    assert status == 200 and body["active_version"] == 2, body
    events, _ = await api.control.store.call_events.list(tenant_id=tenant_id, equals={"topic": "agent.promoted"})
    (promoted,) = [e["payload"] for e in events]
    assert promoted["forced"] is True and promoted["reason"] == "accepted: bookings move to the web form"
    assert promoted["by"].startswith("key ") and (promoted["version"], promoted["previous_version"]) == (2, 1)


async def test_a_rollout_that_breaches_its_stop_condition_reverts_within_one_tick(demo):
    api, made, _ = demo
    tenant_id, agent_id, number = made["tenant_id"], made["agent_id"], made["number"]
    # The candidate is "closed" all week and sends every caller to a person: its transfer rate is 100 %.
    status, _, _ = await api.call("PATCH", f"/api/v1/agents/{agent_id}", api.admin_key, tenant_id=tenant_id,
                                  json={"hours": {"schedule": {}}, "after_hours": {"mode": "transfer"}})
    assert status == 200
    status, rollout, _ = await api.call(
        "PUT", f"/api/v1/agents/{agent_id}/rollout", api.admin_key, tenant_id=tenant_id,
        json={"version": 2, "percent": 100, "stop": {"max_transfer_rate": 0.5, "min_calls": 2}})
    assert status == 200, rollout
    token = await api.control.credentials.secret(tenant_id, "twilio")
    cred = await api.control.store.credentials.find(tenant_id=tenant_id, provider="twilio")
    caller = TwilioCaller(api.base_url, cred["fields"]["account_sid"], token, http=api.http)

    async def call(from_: str) -> dict:
        call_sid, answer = await caller.dial(number, from_)
        if not answer.rejected:  # answered by the agent: a moment of the line, then hang up
            leg = await caller.open_stream(call_sid, answer)
            await leg.stream([b"\xff" * 160] * 10)
            await leg.stop(caller.account_sid, call_sid)
            await leg.wait_closed(10)
        for _ in range(100):
            rows, _ = await api.control.store.voice_calls.list(tenant_id=tenant_id,
                                                               equals={"provider_call_id": call_sid})
            if rows and rows[0]["status"] in ("ended", "failed"):
                return {**rows[0], "answer": answer.verbs}
            await asyncio.sleep(0.05)
        raise AssertionError("the call never ended")

    first = await call("+15550003001")
    assert (first["agent_version"], first["rollout_id"], first["end_reason"]) == (
        2, rollout["id"], "after_hours_transfer"), first
    assert first["metadata"]["rollout_arm"] == "candidate" and first["answer"] == ["Dial"]
    await asyncio.sleep(TICK_S * 2)  # a tick or two pass: one call is not enough to judge
    status, body, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/rollout", api.admin_key, tenant_id=tenant_id)
    assert body["status"] == "running" and body["arms"]["candidate"]["calls"] == 1
    second = await call("+15550003002")
    breached_at = parse_iso(second["ended_at"])
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status, body, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/rollout", api.admin_key,
                                         tenant_id=tenant_id)
        if body["status"] != "running":
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)
    assert (body["status"], body["end_reason"]) == ("reverted", "breach"), body
    lag = (parse_iso(body["ended_at"]) - breached_at).total_seconds()
    assert lag <= TICK_S + 0.5, f"reverted {lag:.2f} s after the breach: more than one tick ({TICK_S} s)"
    assert api.app[ROLLOUT_WATCH].ticks >= 2
    # Both arms side by side, and the numbers that tripped it.
    assert body["arms"]["candidate"] == {"version": 2, "calls": 2, "failures": 0, "transfers": 2,
                                         "p95_first_audio_ms": None, "failure_rate": 0.0, "transfer_rate": 1.0}
    assert body["arms"]["base"] == {"version": 1, "calls": 0, "failures": 0, "transfers": 0,
                                    "p95_first_audio_ms": None, "failure_rate": 0.0, "transfer_rate": 0.0}
    assert body["breach"]["tripped"] == ["transfer_rate"]
    events, _ = await api.control.store.call_events.list(tenant_id=tenant_id,
                                                         equals={"topic": "agent.rollout_reverted"})
    (reverted,) = [e["payload"] for e in events]
    assert (reverted["rollout_id"], reverted["tripped"], reverted["calls"], reverted["transfer_rate"]) == (
        rollout["id"], "transfer_rate", 2, 1.0)
    # New calls are the promoted version's again, the same caller included.
    third = await call("+15550003001")
    assert (third["agent_version"], third["rollout_id"], third["end_reason"]) == (1, None, "caller_hangup"), third
    assert (await api.app[CONTROL].agents.get(tenant_id, agent_id)).active_version == 1

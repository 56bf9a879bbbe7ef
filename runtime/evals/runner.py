"""An evaluation run: a suite's scenarios called against the running runtime, each call pinned to
the agent version under test, then scored.

``plan`` checks the request (agent, version, bounds) and ``Runner.start`` stores the evaluation
(``running``). ``Runner.run`` makes the callers' speech, then places the calls (``--calls`` times
each scenario, ``--concurrency`` at once) as real Twilio-protocol calls to the runtime at
``base_url``, each with a single-use pin (runtime.control.eval_pins). After each call it waits for
the call's archive (status, summary), reads back what the agent said, which tools it called and
whether it transferred, attributes each to the caller's turn it followed (by time), and checks the
expectations (runtime.evals.scoring). A call refused by admission control (the box's local speech
engines full, say, with ``--concurrency`` above their capacity) is placed again when one of the
run's calls has ended, or after ``BUSY_RETRY_S``, for up to ``BUSY_WAIT_S``; still refused then, it
is ``busy``, not failed.
At the end the row gets its score, results and the judge's grades, bookings and orders made by the
calls are deleted (an evaluation must not hold tables), and ``agent.evaluated`` is sent.

The CLI runs it in its own process against ``--url``; the API in the runtime against itself.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from runtime.config import Settings
from runtime.control import eval_pins
from runtime.control.errors import Invalid, NotFound
from runtime.evals import judge
from runtime.evals.caller import Line, ScriptResult, Voices, prepare, run_script
from runtime.evals.scoring import (
    GREETING,
    Check,
    Observation,
    Said,
    ToolUse,
    TurnHeard,
    check_scenario,
    excerpt,
    score,
)
from runtime.evals.suite import Scenario, Suite
from runtime.events.models import AgentEvaluated
from runtime.events.recorder import EventRecorder
from runtime.ids import new_id, now_iso
from runtime.providers.base import ProviderError
from runtime.store.store import Store
from runtime.telephony.twilio.bridge import EVAL_QUERY
from runtime.telephony.twilio.caller import TwilioCaller
from runtime.telephony.twilio.evals import PIN_QUERY

log = logging.getLogger("voicectl.evals")

VOICE_PATH = "/webhooks/twilio/voice"
ARCHIVE_WAIT_S = 15.0
BUSY_RETRY_S = 5.0  # a refused call is placed again when one of the run's calls ends, or after this
BUSY_WAIT_S = 300.0  # and given up as busy after this long
ACCOUNT_SID = "AC" + "e" * 32  # what the synthetic caller sends as its account (nothing checks it)


class SpeechUnavailable(Exception):
    """The caller's speech could not be made (the offline TTS missing or failing, a bad WAV)."""


class RuntimeUnreachable(Exception):
    """The runtime at ``base_url`` could not be reached (the CLI's exit 8)."""


@dataclass(frozen=True)
class RunPlan:
    tenant_id: str
    agent_id: str
    version: int
    suite: Suite
    suite_id: str | None
    assets: Mapping[str, bytes]
    calls: int
    concurrency: int
    started_by: str

    @property
    def total(self) -> int:
        return self.calls * len(self.suite.scenarios)


async def plan(store: Store, settings: Settings, *, tenant_id: str, agent_id: str, version: int | None, suite: Suite,
               suite_id: str | None, assets: Mapping[str, bytes], calls: int = 1, concurrency: int = 1,
               started_by: str) -> RunPlan:
    """Check a run before anything is placed: the agent and version exist, and the run is within the
    box's bounds (``evaluations``) and the tenant's concurrent-call limit."""
    agent = await store.agents.get(agent_id, tenant_id=tenant_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
    version = version or agent["active_version"] or agent["latest_version"]
    if await store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=version) is None:
        raise NotFound(f"agent {agent_id} has no version {version}", {"version": version})
    bounds = settings.evaluations
    if not 1 <= calls:
        raise Invalid("calls is at least 1", {"calls": calls})
    if calls * len(suite.scenarios) > bounds.max_calls:
        raise Invalid(f"{calls} x {len(suite.scenarios)} scenarios is more than the {bounds.max_calls} calls one "
                      "run may place (evaluations.max_calls)", {"calls": calls, "max_calls": bounds.max_calls})
    tenant = await store.tenants.get(tenant_id, tenant_id=tenant_id)
    limit = min(bounds.max_concurrency, int(tenant["max_concurrent_calls"]))
    if not 1 <= concurrency <= limit:
        raise Invalid(f"concurrency is 1 to {limit} (evaluations.max_concurrency and the tenant's "
                      "max_concurrent_calls)", {"concurrency": concurrency, "max": limit})
    return RunPlan(tenant_id, agent_id, version, suite, suite_id, dict(assets), calls, concurrency, started_by)


@dataclass
class ScenarioRun:
    scenario: Scenario
    run: int
    lines: list[Line] = field(default_factory=list)


class Runner:
    def __init__(self, store: Store, credentials: Any, chains: Any, events: EventRecorder, *, base_url: str,
                 public_url: str | None = None, voices: Voices | None = None, instance_id: str | None = None) -> None:
        self.store = store
        self.instance_id = instance_id  # the runtime instance running it (None: the CLI's own run)
        self.credentials = credentials  # for the judge's LLM credential
        self.chains = chains  # builds the judge's LLM (runtime.providers.chains.ProviderChains)
        self.events = events
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.voices = voices

    async def start(self, p: RunPlan) -> dict[str, Any]:
        if p.suite_id is None:  # a file run counts for the gate when the same content is stored
            found = await self.store.eval_suites.find(tenant_id=p.tenant_id, sha256=p.suite.sha256)
            p = _with_suite_id(p, found["id"] if found else None)
        row = {"id": new_id("evl"), "tenant_id": p.tenant_id, "agent_id": p.agent_id, "agent_version": p.version,
               "call_id": None, "status": "running", "score": None, "rubric": {}, "notes": None,
               "created_at": now_iso(), "suite_id": p.suite_id, "suite_name": p.suite.name,
               "suite_sha256": p.suite.sha256, "passed": None, "results": [], "calls": p.calls,
               "concurrency": p.concurrency, "error": None, "started_by": p.started_by, "finished_at": None,
               "instance_id": self.instance_id}
        return await self.store.evaluations.insert(row)

    async def run(self, row: dict[str, Any], p: RunPlan,
                  on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Place the calls, score them, store and announce the result; the final row."""
        voices = self.voices or Voices()
        try:
            runs = [ScenarioRun(s, n) for n in range(1, p.calls + 1) for s in p.suite.scenarios]
            prepared: dict[str, list[Line]] = {}
            for scenario in p.suite.scenarios:
                try:
                    prepared[scenario.name] = await prepare(scenario, voices, p.assets)
                except (ProviderError, ValueError) as exc:
                    raise SpeechUnavailable(f"the caller's lines of {scenario.name!r} could not be made: {exc}") from exc
            for item in runs:
                item.lines = prepared[item.scenario.name]
            judged = await judge.credential(self.credentials, p.tenant_id) if any(
                s.rubric for s in p.suite.scenarios) else None
            gate = asyncio.Semaphore(p.concurrency)
            results: list[dict[str, Any] | None] = [None] * len(runs)
            call_ids: list[str] = []

            ended = asyncio.Condition()  # one of the run's calls was answered and is over
            loop = asyncio.get_running_loop()

            async def one(index: int, item: ScenarioRun) -> None:
                give_up = loop.time() + BUSY_WAIT_S
                while True:
                    async with gate:
                        result = await self._call(row, p, item, call_ids, judged)
                    if result["status"] != "busy":
                        async with ended:
                            ended.notify_all()
                        break
                    if loop.time() >= give_up:
                        break
                    async with ended:
                        try:
                            await asyncio.wait_for(ended.wait(), BUSY_RETRY_S)
                        except TimeoutError:
                            pass
                results[index] = result
                if on_result is not None:
                    on_result(result)

            tasks = [asyncio.get_running_loop().create_task(one(i, item)) for i, item in enumerate(runs)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:  # one call could not be placed: neither are the others
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        except RuntimeUnreachable as exc:
            await self._fail(row, str(exc))
            raise
        except SpeechUnavailable as exc:
            await self._fail(row, str(exc))
            return await self.store.evaluations.get(row["id"], tenant_id=p.tenant_id)
        except Exception as exc:
            log.error("evaluation failed", exc_info=exc, extra={"evaluation_id": row["id"]})
            await self._fail(row, f"{type(exc).__name__}: {exc}")
            return await self.store.evaluations.get(row["id"], tenant_id=p.tenant_id)
        finally:
            if self.voices is None:
                await voices.aclose()
        return await self._finish(row, p, [r for r in results if r is not None], call_ids)

    async def _fail(self, row: dict[str, Any], error: str) -> None:
        await self.store.evaluations.set(row["id"], {"status": "failed", "error": error[:1000],
                                                     "finished_at": now_iso()}, tenant_id=row["tenant_id"])

    async def _call(self, row: dict[str, Any], p: RunPlan, item: ScenarioRun, call_ids: list[str],
                    judged: Any) -> dict[str, Any]:
        scenario = item.scenario
        pin_id, secret = await eval_pins.mint(self.store, tenant_id=p.tenant_id, evaluation_id=row["id"],
                                              agent_id=p.agent_id, version=p.version, scenario=scenario.name)
        path = f"{VOICE_PATH}?{EVAL_QUERY}={pin_id}&{PIN_QUERY}={secret}"
        to = await self._number(p)
        try:
            async with TwilioCaller(self.base_url, ACCOUNT_SID, secret, public_url=self.public_url) as caller:
                script = await run_script(caller, path, to, item.lines, scenario)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise RuntimeUnreachable(f"the runtime at {self.base_url} could not be reached ({type(exc).__name__}); "
                                     "is `voicectl serve` running there?") from None
        except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
            return _outcome(scenario, item.run, "error", None, [], f"the call broke off: {type(exc).__name__}",
                            None, None)
        if script.rejected == "busy":
            return _outcome(scenario, item.run, "busy", None, [], "refused as busy by admission control", None,
                            await self._call_id(pin_id, p.tenant_id))
        if script.rejected is not None:
            return _outcome(scenario, item.run, "error", None, [Check("call: answered", False, script.rejected)],
                            script.rejected, None, None)
        call = await self._archived(pin_id, p.tenant_id)
        if call is None:
            return _outcome(scenario, item.run, "error", None, [], "the runtime stored no call for the pin", None, None)
        call_ids.append(call["id"])
        seen = await self._observe(call, script)
        checks = check_scenario(scenario, seen)
        if script.timed_out:
            checks.append(Check(f"call: finished within {scenario.max_duration_s} s", False, "it did not"))
        grade = None
        if scenario.rubric:
            grade = await judge.grade(self.chains, judged, scenario.rubric, await self._transcript(call))
        return _outcome(scenario, item.run, None, seen, checks, None, grade, call["id"])

    async def _number(self, p: RunPlan) -> str:
        found = await self.store.phone_numbers.find(tenant_id=p.tenant_id, agent_id=p.agent_id)
        return found["e164"] if found is not None else "+15550000000"

    async def _call_id(self, pin_id: str, tenant_id: str) -> str | None:
        pin = await self.store.eval_pins.get(pin_id, tenant_id=tenant_id)
        return pin["call_id"] if pin is not None else None

    async def _archived(self, pin_id: str, tenant_id: str) -> dict[str, Any] | None:
        """The call once archived (ended or failed, its summary written)."""
        deadline = asyncio.get_running_loop().time() + ARCHIVE_WAIT_S
        while True:
            call_id = await self._call_id(pin_id, tenant_id)
            row = await self.store.voice_calls.get(call_id, tenant_id=tenant_id) if call_id else None
            if row is not None and row["status"] in ("ended", "failed"):
                return row
            if asyncio.get_running_loop().time() > deadline:
                return row
            await asyncio.sleep(0.1)

    async def _transcript(self, call: dict[str, Any]) -> list[tuple[str, str]]:
        rows, _ = await self.store.transcripts.list(tenant_id=call["tenant_id"], equals={"call_id": call["id"]},
                                                    limit=1000, count=False)
        return [(r["role"], r["text"]) for r in rows]

    async def _observe(self, call: dict[str, Any], script: ScriptResult) -> Observation:
        """What the store says happened, each item given the caller's turn it followed."""
        tenant_id, call_id = call["tenant_id"], call["id"]
        starts = [t.started_at for t in script.turns]

        def turn_of(at: str) -> int:
            return bisect.bisect_right(starts, at) - 1 if starts else GREETING

        transcripts, _ = await self.store.transcripts.list(tenant_id=tenant_id, equals={"call_id": call_id},
                                                           limit=1000, count=False)
        tools, _ = await self.store.tool_calls.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=1000,
                                                    count=False)
        transfers, _ = await self.store.call_events.list(
            tenant_id=tenant_id, equals={"call_id": call_id, "topic": "transfer.requested"}, limit=100, count=False)
        return Observation(
            call_id=call_id, status=call["status"], end_reason=call["end_reason"],
            hangup_by=call["hangup_by"] or script.hung_up_by,
            said=[Said(t["text"], turn_of(t["created_at"]), bool(t["interrupted"])) for t in transcripts
                  if t["role"] == "agent"],
            tools=[ToolUse(t["name"], t["arguments"] if isinstance(t["arguments"], dict) else {}, t["status"],
                           turn_of(t["created_at"])) for t in tools],
            transfers=[turn_of(e["created_at"]) for e in transfers],
            turns=[TurnHeard(t.first_audio_ms, t.talk_over_ms, t.speech) for t in script.turns])

    async def _finish(self, row: dict[str, Any], p: RunPlan, results: list[dict[str, Any]],
                      call_ids: list[str]) -> dict[str, Any]:
        checks = [c for r in results for c in r.pop("_checks")]
        total = score(checks)
        busy = sum(1 for r in results if r["status"] == "busy")
        failed = sum(1 for r in results if r["status"] in ("failed", "error"))
        passed = bool(results) and all(r["status"] == "passed" for r in results)
        rubric = {f"{r['name']}#{r['run']}" if p.calls > 1 else r["name"]: r.pop("judge")
                  for r in results if r.get("judge") is not None}
        for r in results:
            r.pop("judge", None)
        notes = (f"{len(results) - busy - failed} passed, {failed} failed, {busy} busy; "
                 f"{sum(c.met for c in checks)} of {len(checks)} expectations met")
        await self._release_bookings(p.tenant_id, call_ids)
        async with self.store.atomic() as tx:
            await tx.evaluations.set(row["id"], {
                "status": "done", "score": total, "passed": passed, "results": results, "rubric": rubric,
                "notes": notes, "finished_at": now_iso()}, tenant_id=p.tenant_id)
            staged = await self.events.stage(tx, p.tenant_id, AgentEvaluated(
                evaluation_id=row["id"], agent_id=p.agent_id, version=p.version, suite_id=row["suite_id"],
                suite_sha256=p.suite.sha256, score=total, passed=passed, scenarios=len(results), failed=failed,
                busy=busy))
        self.events.committed([staged])
        return await self.store.evaluations.get(row["id"], tenant_id=p.tenant_id)

    async def _release_bookings(self, tenant_id: str, call_ids: list[str]) -> None:
        """Bookings and orders the synthetic calls made are deleted: the tables are free again for
        the next real caller (and the next run)."""
        if call_ids:
            await self.store.delete_rows_of_calls(tenant_id, ("bookings", "orders"), call_ids)


def _with_suite_id(p: RunPlan, suite_id: str | None) -> RunPlan:
    return replace(p, suite_id=suite_id)


def _outcome(scenario: Scenario, run: int, status: str | None, seen: Observation | None, checks: list[Check],
             problem: str | None, grade: dict[str, Any] | None, call_id: str | None) -> dict[str, Any]:
    """One scenario run's result as stored and printed: {name, run, status, passed, failed_expectation,
    excerpt, first_audio_ms, call_id, expectations: [...]}."""
    failed = next((c for c in checks if not c.met), None)
    if status is None:
        status = "failed" if failed is not None else "passed"
    first_audio = [t.first_audio_ms for t in (seen.turns if seen else []) if t.speech and t.first_audio_ms is not None]
    if failed is not None:
        what = f"{failed.what} ({failed.detail})" if failed.detail else failed.what
        quote = excerpt(seen, failed.turn) if seen else ""
    else:
        what = problem if status != "passed" else None
        quote = excerpt(seen, None) if seen else ""
    return {
        "name": scenario.name, "run": run, "status": status,
        "passed": None if status == "busy" else status == "passed",
        "failed_expectation": what, "excerpt": quote,
        "first_audio_ms": max(first_audio) if first_audio else None, "call_id": call_id,
        "expectations": [{"what": c.what, "met": c.met, **({"detail": c.detail} if not c.met else {})}
                         for c in checks],
        "_checks": checks, "judge": grade,
    }

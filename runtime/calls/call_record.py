"""The operations record of a call, written once it has ended (after its conversation closed).

- ``outcome`` (a column, and ``summary.outcome``), from what the call did: ``booked``,
  ``ordered`` (create_booking / create_order succeeded), ``transferred``, ``callback_scheduled``,
  ``voicemail_left``, ``no_answer`` (an outbound call busy, not answered or canceled), ``failed``,
  ``abandoned`` (hung up by the caller before the agent spoke), else ``completed``.
- A follow-up: an inbound call that failed, or that the caller left before the agent spoke, or
  (``after_hours.callback``) that came after hours and was not transferred, puts its caller on
  the tenant's callback queue (runtime.control.callbacks), an after-hours one for the next opening.
- ``summary``: ``{text, outcome, intent, entities, sentiment, follow_up, media, analysis}`` beside
  what the bridges put there (``media``, ``livekit``, ``machine_detection``). Without a language
  model (the rules brain) the intent and entities are the brain's (its intents and slots) and
  the tools', the text is made from them and there is no sentiment. With one (the version's LLM
  chain has a cloud model), the rules summary is written first (``analysis.status: pending``),
  then the model's text, intent, entities, sentiment and follow-up note replace it (``done``), or
  the failure is recorded (``failed``: the rules summary stays). The session's ``analyst`` does
  that work (runtime.pipeline.call_analysis), bounded and off the call's path.
- A callback call (``session.callback_id``) reports to its task: answered or not.

Nothing here raises into the call: it has ended, and a failure is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runtime.calls.routing import next_opening
from runtime.control.callbacks import CallbackService
from runtime.control.errors import ControlError
from runtime.ids import now_iso

if TYPE_CHECKING:
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.calls")

OUTCOMES = ("booked", "ordered", "transferred", "callback_scheduled", "voicemail_left", "no_answer", "failed",
            "abandoned", "completed")
NOT_ANSWERED = ("busy", "no_answer", "canceled")
TRANSFERRED = ("transferred", "after_hours_transfer")
# Failures that are no missed caller of the tenant: nobody to call back.
NO_FOLLOW_UP = ("tenant_disabled", "unknown_number")
MAX_TOOL_ROWS = 200
MAX_TRANSCRIPT_ROWS = 1000
# Tools whose call says nothing of what the caller wanted.
_PLUMBING = ("end_call", "log_note")


@dataclass(frozen=True)
class CallFacts:
    """What the record is made from, read once the call has ended."""

    call_id: str
    tenant_id: str
    direction: str
    status: str
    end_reason: str | None
    hangup_by: str | None
    duration_ms: int | None
    agent_spoke: bool
    tools: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)


def decide_outcome(facts: CallFacts) -> str:
    ok = {t["name"] for t in facts.tools if t["status"] == "ok"}
    if "create_booking" in ok:
        return "booked"
    if "create_order" in ok:
        return "ordered"
    if facts.end_reason in TRANSFERRED:
        return "transferred"
    if "schedule_callback" in ok:
        return "callback_scheduled"
    if facts.end_reason == "voicemail_left":
        return "voicemail_left"
    if facts.status == "failed":
        return "no_answer" if facts.direction == "outbound" and facts.end_reason in NOT_ANSWERED else "failed"
    if not facts.agent_spoke and facts.hangup_by == "caller":
        return "abandoned"
    return "completed"


def tool_entities(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """What the tools made: booking and order references, the callback."""
    found: dict[str, Any] = {}
    for tool in tools:
        result = tool.get("result") if tool["status"] == "ok" else None
        if not isinstance(result, dict):
            continue
        if tool["name"] == "create_booking":
            found.update(booking_reference=result.get("reference"), booking_date=result.get("date"),
                         booking_time=result.get("time"), party_size=result.get("party_size"))
        elif tool["name"] == "create_order":
            found.update(order_reference=result.get("reference"), order_total=result.get("total"))
        elif tool["name"] == "schedule_callback":
            found["callback_id"] = result.get("callback_id")
    return {k: v for k, v in found.items() if v is not None}


def rules_text(facts: CallFacts, outcome: str, intent: str | None, entities: dict[str, Any]) -> str:
    """The summary text without a language model: the call in one line."""
    seconds = (facts.duration_ms or 0) // 1000
    length = f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
    parts = [f"{facts.direction.capitalize()} call, {length}"]
    if intent:
        parts.append(f"intent {intent}")
    detail = {"booked": entities.get("booking_reference"), "ordered": entities.get("order_reference"),
              "failed": facts.end_reason, "no_answer": facts.end_reason}.get(outcome)
    parts.append(f"outcome {outcome}" + (f" ({detail})" if detail else ""))
    used = [t["name"] for t in facts.tools if t["name"] not in _PLUMBING]
    if used:
        parts.append("tools " + ", ".join(dict.fromkeys(used)))
    return "; ".join(parts) + "."


class CallRecordWriter:
    """Writes the record of each ended call (see the module docstring)."""

    def __init__(self, callbacks: CallbackService) -> None:
        self.callbacks = callbacks
        self.store = callbacks.store

    async def record(self, session: CallSession) -> None:
        try:
            await self._record(session)
        except Exception:
            log.exception("writing the call's record failed", extra={"call_id": session.id})

    async def _record(self, session: CallSession) -> None:
        facts = await self._facts(session)
        outcome = decide_outcome(facts)
        follow_up = await self._follow_up(session, facts, outcome)
        notes = _notes(session)
        entities = {**(notes.get("entities") or {}), **tool_entities(facts.tools)}
        intent = notes.get("intent") or next((t["name"] for t in facts.tools
                                              if t["status"] == "ok" and t["name"] not in _PLUMBING), None)
        analyst = session.analyst
        summary = {
            **session.summary, "text": rules_text(facts, outcome, intent, entities), "outcome": outcome,
            "intent": intent, "entities": entities, "sentiment": None, "follow_up": follow_up,
            "analysis": {"by": "llm", "status": "pending", "provider": analyst.provider} if analyst is not None
            else {"by": "rules", "status": "done"},
        }
        await self._write(session, summary, outcome)
        if session.callback_id is not None:
            answered = session.connected_at is not None and facts.end_reason not in ("voicemail_left", "fax")
            await self.callbacks.call_ended(session.tenant_id, session.callback_id, session.id, answered=answered,
                                            outcome=outcome)
        if analyst is None:
            return
        facts = await self._with_transcript(facts)
        try:
            found = await analyst.analyze(facts, outcome)
        except Exception as exc:  # recorded, never raised: the rules summary stays
            status = "skipped" if type(exc).__name__ == "AnalysisSkipped" else "failed"
            log.warning("the call's analysis did not complete", extra={"call_id": session.id, "error": str(exc)[:300]})
            summary["analysis"] = {**summary["analysis"], "status": status, "error": str(exc)[:300]}
            await self._write(session, summary, outcome)
            return
        note = found.get("follow_up")
        summary.update(
            text=found.get("text") or summary["text"], intent=found.get("intent") or intent,
            entities={**entities, **(found.get("entities") or {})}, sentiment=found.get("sentiment"),
            follow_up={**follow_up, "needed": follow_up["needed"] or bool(note), "note": note},
            analysis={**summary["analysis"], "status": "done", "provider": found.get("provider", analyst.provider)},
        )
        await self._write(session, summary, outcome)

    async def _facts(self, session: CallSession) -> CallFacts:
        tools, _ = await self.store.tool_calls.list(tenant_id=session.tenant_id, equals={"call_id": session.id},
                                                    limit=MAX_TOOL_ROWS, count=False)
        return CallFacts(session.id, session.tenant_id, session.direction, session.state, session.end_reason,
                         session.hangup_by, session.final_duration_ms, session.agent_spoke, tools)

    async def _with_transcript(self, facts: CallFacts) -> CallFacts:
        rows, _ = await self.store.transcripts.list(tenant_id=facts.tenant_id, equals={"call_id": facts.call_id},
                                                    limit=MAX_TRANSCRIPT_ROWS, count=False)
        return CallFacts(**{**facts.__dict__, "transcript": rows})

    async def _follow_up(self, session: CallSession, facts: CallFacts, outcome: str) -> dict[str, Any]:
        """The call's callback task: one made now for a missed caller, else the one it asked for."""
        task = None
        wanted = self._missed(session, facts, outcome)
        if wanted is not None:
            source, reason, when = wanted
            try:
                task, _ = await self.callbacks.create(
                    session.tenant_id, number=session.from_number or "", reason=reason, source=source,
                    call_id=session.id, agent_id=session.route.agent_id if session.route else None, scheduled_at=when)
            except ControlError as exc:  # a number that is none (anonymous), a full queue
                log.info("no callback task for a missed call", extra={"call_id": session.id, "error": exc.message})
        if task is None:
            task = await self.callbacks.for_call(session.tenant_id, session.id)
        if task is None:
            return {"needed": False, "callback_id": None, "note": None}
        return {"needed": task["status"] in ("open", "scheduled", "in_progress"), "callback_id": task["id"],
                "note": task["reason"]}

    @staticmethod
    def _missed(session: CallSession, facts: CallFacts, outcome: str) -> tuple[str, str, datetime | None] | None:
        """(source, reason, when) of the follow-up a missed inbound caller gets, if any."""
        if session.direction != "inbound" or not session.from_number:
            return None
        route = session.route
        if route is not None and route.after_hours and route.config.after_hours.callback and outcome != "transferred":
            when = next_opening(route.config.hours, route.tenant.get("timezone") or "UTC", datetime.now(UTC))
            return "after_hours", "called after hours", when
        if outcome == "failed" and facts.end_reason not in NO_FOLLOW_UP:
            return "failed_call", f"the call failed ({facts.end_reason})", None
        if outcome == "abandoned":
            return "abandoned_call", "the caller hung up before the agent spoke", None
        return None

    async def _write(self, session: CallSession, summary: dict[str, Any], outcome: str) -> None:
        await self.store.voice_calls.set(session.id, {"summary": summary, "outcome": outcome, "updated_at": now_iso()},
                                         tenant_id=session.tenant_id)


def _notes(session: CallSession) -> dict[str, Any]:
    if session.brain_notes is None:
        return {}
    try:
        return session.brain_notes() or {}
    except Exception:
        log.exception("the brain's notes are unreadable", extra={"call_id": session.id})
        return {}


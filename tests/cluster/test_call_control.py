"""Live call control across instances: a call held by instance 2 is controlled through instances 1 and 3
(REST and the event socket), for its own tenant only; no holder is a 404, a silent one a 504, NATS
lost a 503 for remote calls while local ones still work."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime.api.appkeys import METRICS, TRACKER
from runtime.calls import tracker as tracker_module
from runtime.calls.integrator_sessions import Speaking
from runtime.cluster.link import CLUSTER
from runtime.cluster.remote_calls import REMOTE_CALLS
from tests.api.support import LiveApi, high_limits, start_live_api
from tests.calls.support import engine, provision
from tests.cluster.live_calls import Tenant, connected_call, tenant_with_key
from tests.cluster.support import (
    ClusterNames,
    NatsProxy,
    instance_settings,
    share_master_key,
    start_instances,
    stop_instances,
)


async def _stop(started: list[tuple[LiveApi, Any]]) -> None:
    """Hang up what is still live (shutting down would wait its grace for them), then stop."""
    for live, _ in started:
        for session in list(live.app[TRACKER].live.values()):
            await session.hangup("test_over")
    await stop_instances(started)


async def _status(live: LiveApi, call_id: str, tenant: Tenant) -> str:
    row = await live.control.store.voice_calls.get(call_id, tenant_id=tenant.id)
    return row["status"]


async def test_a_call_held_by_instance_2_is_controlled_through_instance_1(cluster_names: ClusterNames,
                                                                          tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2)
    (one, _), (two, _) = started
    try:
        acme = await tenant_with_key(one, "acme", "+15550100001")
        other = await tenant_with_key(one, "other", "+15550100002")
        session, heard, bridge = await connected_call(two, acme)
        call = f"/api/v1/calls/{session.id}"

        status, body, _ = await one.call("POST", f"{call}/say", acme.key, json={"text": "Your order is ready."})
        assert status == 202 and body == {"id": session.id, "queued": True, "interrupt": False}, body
        assert heard.lines == [("Your order is ready.", False, None)]
        status, body, _ = await one.call("PATCH", call, acme.key, json={"ai": "paused"})
        assert status == 200 and body == {"id": session.id, "status": "connected", "ai": "paused"}, body
        assert heard.paused
        # Bad input is refused by the instance the client reached, with the same answer as anywhere.
        status, body, _ = await one.call("POST", f"{call}/say", acme.key, json={"text": ""})
        assert status == 422 and body["error"] == "validation_error", body
        # Another tenant's key through instance 1: the call does not exist for it (the holder checks).
        for method, path, payload in (("POST", f"{call}/say", {"text": "hi"}), ("POST", f"{call}/hangup", {}),
                                      ("PATCH", call, {"ai": "on"})):
            status, body, _ = await one.call(method, path, other.key, json=payload)
            assert status == 404 and body["error"] == "not_found", (path, body)
        assert len(heard.lines) == 1 and heard.paused and session.live
        for odd in ("call_nope", "a.b", "*", "%3E", "a%20b"):  # no subject of these may reach NATS
            status, body, _ = await one.call("POST", f"/api/v1/calls/{odd}/hangup", acme.key, json={})
            assert status == 404 and body["error"] == "not_found", (odd, body)
        assert one.app[CLUSTER].connected

        status, body, _ = await one.call("POST", f"{call}/hangup", acme.key, json={"reason": "order_done"})
        assert status == 200 and body == {"id": session.id, "status": "ended", "end_reason": "order_done"}, body
        assert bridge.asked == [("hangup", "order_done")] and not session.live
        assert await _status(one, session.id, acme) == "ended"
        # Over: no instance holds it any more, and the answer is the one a single runtime gives.
        status, body, _ = await one.call("POST", f"{call}/say", acme.key, json={"text": "hi"})
        assert status == 409 and body["error"] == "call_ended", body

        session, heard, bridge = await connected_call(two, acme)
        status, body, _ = await one.call("POST", f"/api/v1/calls/{session.id}/transfer", acme.key,
                                         json={"to": "sip:desk@pbx.example.com"})
        assert status == 200 and body["status"] == "transferring", body
        assert bridge.asked == [("transfer", "sip:desk@pbx.example.com")]
    finally:
        await _stop(started)


async def test_sessions_are_created_listed_and_driven_from_any_instance(cluster_names: ClusterNames,
                                                                        tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3)
    (one, _), (two, _), (three, _) = started
    try:
        acme = await tenant_with_key(one, "acme", "+15550100001")
        other = await tenant_with_key(one, "other", "+15550100002")
        session, heard, _ = await connected_call(two, acme)

        status, speaking, _ = await three.call("POST", "/api/v1/speakings", acme.key,
                                               json={"reference_id": session.id})
        assert status == 201 and speaking["status"] == "active" and speaking["reference_id"] == session.id, speaking
        assert list(session.speakings) == [speaking["id"]]
        status, transcribe, _ = await three.call("POST", "/api/v1/transcribes", acme.key,
                                                 json={"reference_id": session.id, "direction": "both"})
        assert status == 201 and transcribe["direction"] == "both", transcribe

        for kind, made in (("speakings", speaking), ("transcribes", transcribe)):
            status, page, _ = await one.call("GET", f"/api/v1/{kind}", acme.key)
            assert status == 200 and page == {"items": [made], "total": 1}, page
            status, page, _ = await one.call("GET", f"/api/v1/{kind}", other.key)
            assert status == 200 and page == {"items": [], "total": 0}, page
            status, body, _ = await one.call("GET", f"/api/v1/{kind}/{made['id']}", acme.key)
            assert status == 200 and body == made, body
            status, body, _ = await one.call("GET", f"/api/v1/{kind}/{made['id']}", other.key)
            assert status == 404, body

        spk = f"/api/v1/speakings/{speaking['id']}"
        status, body, _ = await one.call("POST", f"{spk}/say", acme.key, json={"text": "First line."})
        assert status == 202 and body["said"] == 1, body
        status, body, _ = await one.call("POST", f"{spk}/say", other.key, json={"text": "Not yours."})
        assert status == 404, body

        # The event socket of instance 1 says and flushes on the session held by instance 2.
        async with one.http.ws_connect(f"{one.base_url}/api/v1/events/ws?token={acme.key}") as ws:
            for n in range(3):
                await ws.send_json({"type": "say", "speaking_id": speaking["id"], "text": f"Line {n}.", "ref": n})
            answers = [await ws.receive_json(timeout=5) for _ in range(3)]
            assert answers == [{"type": "ack", "ref": n} for n in range(3)], answers
            await ws.send_json({"type": "flush", "speaking_id": speaking["id"], "ref": "f"})
            assert await ws.receive_json(timeout=5) == {"type": "ack", "ref": "f"}
            await ws.send_json({"type": "say", "speaking_id": "spk_nope", "text": "hi", "ref": "x"})
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "error" and answer["error"] == "not_found", answer
        async with one.http.ws_connect(f"{one.base_url}/api/v1/events/ws?token={other.key}") as ws:
            await ws.send_json({"type": "say", "speaking_id": speaking["id"], "text": "Not yours.", "ref": 1})
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "error" and answer["error"] == "not_found", answer
        assert [line[0] for line in heard.lines] == ["First line.", "Line 0.", "Line 1.", "Line 2."]
        assert heard.flushes == 1

        status, body, _ = await one.call("POST", f"{spk}/stop", acme.key)
        assert status == 200 and body["status"] == "stopped", body
        status, body, _ = await one.call("POST", f"{spk}/say", acme.key, json={"text": "Too late."})
        assert status == 409 and body["error"] == "session_stopped", body
        status, body, _ = await one.call("POST", f"/api/v1/transcribes/{transcribe['id']}/stop", acme.key)
        assert status == 200 and body["status"] == "stopped", body

        # Once the call ends its sessions are still answered for by its instance (stopped, not unknown).
        status, speaking2, _ = await one.call("POST", "/api/v1/speakings", acme.key,
                                              json={"reference_id": session.id})
        assert status == 201, speaking2
        await session.hangup("done")
        status, body, _ = await three.call("GET", f"/api/v1/speakings/{speaking2['id']}", acme.key)
        assert status == 200 and body["status"] == "stopped", body
        status, body, _ = await three.call("POST", f"/api/v1/speakings/{speaking2['id']}/say", acme.key,
                                           json={"text": "hi"})
        assert status == 409 and body["error"] == "session_stopped", body
        status, page, _ = await one.call("GET", "/api/v1/speakings", acme.key)
        assert page == {"items": [], "total": 0}, page
    finally:
        await _stop(started)


class Silent:
    """A holder that takes requests and never answers them."""

    async def run_here(self, *_: Any) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Broken:
    """A holder whose operation fails with a bug."""

    async def run_here(self, *_: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")


async def test_a_holder_that_does_not_answer_is_a_504_and_lost_nats_a_503(cluster_names: ClusterNames,
                                                                          tmp_path: Path) -> None:
    proxy = await NatsProxy().start()
    nats = {"stream": cluster_names.stream, "subject_prefix": cluster_names.subject_prefix, "request_timeout_s": 0.5}
    settings = [instance_settings(cluster_names, tmp_path / f"i{n}", f"i{n}", nats_url=url, limits=high_limits(),
                                  events={"nats": {**nats, "url": url}})
                for n, url in ((1, proxy.url), (2, cluster_names.nats_url))]
    share_master_key(*settings)
    started = [await start_live_api(one) for one in settings]
    (one, _), (two, _) = started
    try:
        acme = await tenant_with_key(one, "acme", "+15550100001")
        held_by_two, heard, _ = await connected_call(two, acme)
        held_by_one, heard_here, _ = await connected_call(one, acme)
        remote = two.app[REMOTE_CALLS]
        answering, remote.ops = remote.ops, Silent()
        loop = asyncio.get_running_loop()
        began = loop.time()
        status, body, _ = await one.call("POST", f"/api/v1/calls/{held_by_two.id}/say", acme.key,
                                         json={"text": "hi"})
        assert status == 504 and body["error"] == "holder_timeout", body
        assert body["details"] == {"target_id": held_by_two.id, "timeout_s": 0.5}
        assert 0.5 <= loop.time() - began < 3.0
        metrics = one.app[METRICS].render().decode()
        assert 'voicectl_forwarded_call_ops_total{op="call.say",outcome="timeout"} 1.0' in metrics
        remote.ops = Broken()  # answered at once, as the same bug would be by the instance holding the call
        status, body, _ = await one.call("POST", f"/api/v1/calls/{held_by_two.id}/say", acme.key,
                                         json={"text": "hi"})
        assert status == 500 and body["error"] == "internal_error" and "Traceback" not in str(body), body
        remote.ops = answering  # the stuck operation does not hold up the next ones on that call
        status, body, _ = await one.call("POST", f"/api/v1/calls/{held_by_two.id}/say", acme.key,
                                         json={"text": "answered"})
        assert status == 202 and heard.lines == [("answered", False, None)], body

        proxy.cut()
        for _ in range(100):
            if not one.app[CLUSTER].connected:
                break
            await asyncio.sleep(0.05)
        status, body, _ = await one.call("POST", f"/api/v1/calls/{held_by_two.id}/say", acme.key,
                                         json={"text": "hi"})
        assert status == 503 and body["error"] == "cluster_unavailable", body
        status, body, _ = await one.call("GET", "/api/v1/speakings", acme.key)
        assert status == 503 and body["error"] == "cluster_unavailable", body
        # Its own calls need no NATS.
        status, body, _ = await one.call("POST", f"/api/v1/calls/{held_by_one.id}/say", acme.key,
                                         json={"text": "still here"})
        assert status == 202, body
        assert heard_here.lines == [("still here", False, None)] and len(heard.lines) == 1
    finally:
        await _stop(started)
        await proxy.stop()


async def test_one_instance_in_cluster_mode_answers_as_a_single_runtime(cluster_names: ClusterNames,
                                                                        tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 1)
    (one, _), = started
    try:
        acme = await tenant_with_key(one, "acme", "+15550100001")
        session, heard, _ = await connected_call(one, acme)
        status, speaking, _ = await one.call("POST", "/api/v1/speakings", acme.key, json={"reference_id": session.id})
        assert status == 201, speaking
        status, page, _ = await one.call("GET", "/api/v1/speakings", acme.key)
        assert page == {"items": [speaking], "total": 1}, page
        status, body, _ = await one.call("POST", "/api/v1/calls/call_nope/say", acme.key, json={"text": "hi"})
        assert status == 404 and body["error"] == "not_found", body
        status, body, _ = await one.call("GET", "/api/v1/speakings/spk_nope", acme.key)
        assert status == 404 and body["error"] == "not_found", body
    finally:
        await _stop(started)


@dataclass
class Holdings:
    changes: list[tuple[str, str]] = field(default_factory=list)

    def hold(self, target_id: str) -> None:
        self.changes.append(("hold", target_id))

    def release(self, target_id: str) -> None:
        self.changes.append(("release", target_id))

    def ended(self, session_id: str) -> None:
        self.changes.append(("ended", session_id))


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_tracker_tells_which_calls_and_sessions_it_holds_and_which_ended(
        control, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "ENDED_SESSIONS_KEPT", 1)
    world = await provision(control)
    tracker = engine(control)
    tracker.holdings = holdings = Holdings()
    call = await tracker.open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")
    transcribe = await call.start_transcribe("in")
    speaking = Speaking(call.id, call.tenant_id, "in", None, None, None)
    call.add_speaking(speaking)
    assert holdings.changes == [("hold", call.id), ("hold", transcribe.id), ("hold", speaking.id)]
    await call.end("done")
    # The call is released at once; its sessions are kept a while (the tracker's own list: here one).
    assert holdings.changes[3:] == [("release", call.id), ("ended", transcribe.id), ("ended", speaking.id)]
    assert list(tracker.ended_sessions) == [speaking.id]


def test_peers_reach_the_latest_ended_sessions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from runtime.cluster import remote_calls

    monkeypatch.setattr(remote_calls, "ENDED_SESSIONS_HELD", 2)
    remote = remote_calls.RemoteCalls(None, None, None, 1.0, CollectorRegistry())  # type: ignore[arg-type]
    for session_id in ("spk_a", "spk_b", "spk_c"):
        remote.ended(session_id)
    assert remote._changes.qsize() == 1 and remote._changes.get_nowait() == (False, "spk_a")

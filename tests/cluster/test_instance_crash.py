"""``kill -9`` of one instance mid-call: after its lease a survivor ends its calls ``instance_lost``,
exactly once; the calls on the other instances keep their pacing; no committed event is lost and
webhook deliveries continue."""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from pathlib import Path

import aiohttp

from runtime.audio import write_wav
from runtime.config import build_settings
from runtime.control.plane import ControlPlane
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.twilio.caller import CallerStream, TwilioCaller
from tests.cluster.processes import ProcessCluster, provision
from tests.cluster.support import ClusterNames
from tests.events.test_webhook_outage import Receiver

LEASE_S = 2
CALLS_PER_INSTANCE = 2
SILENCE = b"\xff" * 160  # one 20 ms mu-law frame of silence


def speech_like_clip(path: Path, seconds: float = 60.0, rate: int = 8000) -> Path:
    """A long tone with a slow swell: the agent's greeting plays it, so every call carries audio throughout."""
    samples = array("h", (int(6000 * (0.6 + 0.4 * math.sin(n / rate * 3)) * math.sin(2 * math.pi * 330 * n / rate))
                          for n in range(int(seconds * rate))))
    write_wav(path, samples.tobytes(), rate)
    return path


async def keep_talking(leg: CallerStream) -> None:
    """The caller's line: a silent frame every 20 ms until the call ends."""
    anchor = time.monotonic()
    n = 0
    while not leg.closed.is_set():
        n += 1
        await asyncio.sleep(max(0.0, anchor + n * 0.020 - time.monotonic()))
        try:
            await leg.media(SILENCE)
        except (ConnectionError, RuntimeError):
            return


def largest_gap_ms(arrivals: list[float], start: float, end: float) -> float:
    window = [t for t in arrivals if start <= t <= end]
    return max((b - a for a, b in zip(window, window[1:], strict=False)), default=math.inf) * 1000


async def test_kill_9_ends_the_instances_calls_instance_lost_and_spares_the_rest(cluster_names: ClusterNames,
                                                                                 tmp_path: Path) -> None:
    prov = await provision(cluster_names, tmp_path)
    receiver = await Receiver().up()
    cluster = await ProcessCluster(cluster_names, tmp_path).start(
        3, clip=speech_like_clip(tmp_path / "clip.wav"), server={"lease_s": LEASE_S})
    control = await ControlPlane.open(build_settings(
        {"database": {"url": cluster_names.schema_url},
         "secrets": {"backend": "database", "master_key_file": str(cluster.master_key)}}, tmp_path))
    tasks: list[asyncio.Task] = []
    legs: dict[str, list[CallerStream]] = {}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(f"{cluster.instances[0].url}/api/v1/webhooks", json={
                    "url": f"{receiver.url}/hook", "events": ["voice.call.*"]},
                    headers={"Authorization": f"Bearer {prov.key}"}) as resp:
                assert resp.status == 201, await resp.text()
            for instance in cluster.instances:
                caller = TwilioCaller(instance.url, prov.account_sid, prov.auth_token, http=http)
                for _ in range(CALLS_PER_INSTANCE):
                    call_sid, answer = await caller.dial(prov.number)
                    leg = await caller.open_stream(call_sid, answer)
                    legs.setdefault(instance.name, []).append(leg)
                    tasks.append(asyncio.create_task(keep_talking(leg)))
            for leg in (leg for group in legs.values() for leg in group):
                await asyncio.wait_for(leg.first_media.wait(), 15)
            await asyncio.sleep(1.0)  # every call in its steady state

            killed_at = time.monotonic()
            cluster.instances[1].kill()
            lost = {leg.result.call_sid for leg in legs["i2"]}
            rows: dict[str, dict] = {}
            while time.monotonic() < killed_at + LEASE_S + 2 + 5:
                found, _ = await control.store.voice_calls.list(tenant_id=ALL_TENANTS, limit=100, count=False)
                rows = {r["provider_call_id"]: r for r in found}
                if all(rows[sid]["status"] == "failed" for sid in lost):
                    break
                await asyncio.sleep(0.1)
            ended_after = time.monotonic() - killed_at
            for sid in lost:
                assert rows[sid]["status"] == "failed" and rows[sid]["end_reason"] == "instance_lost", rows[sid]
            assert ended_after <= LEASE_S + 2, f"the lost calls ended {ended_after:.1f} s after the kill"
            for name, group in legs.items():  # each call was held where it was placed
                assert {rows[leg.result.call_sid]["instance_id"] for leg in group} == {name}
            await asyncio.sleep(1.5)  # both survivors have looked again meanwhile
            (reaped,) = await control.store.db.fetchall("SELECT reaped_by FROM instances WHERE id = 'i2'")
            assert reaped["reaped_by"] in ("i1", "i3")

            # The survivors' calls: still live, and their audio kept its 20 ms pacing through the loss.
            for name in ("i1", "i3"):
                for leg in legs[name]:
                    assert rows[leg.result.call_sid]["status"] == "connected", \
                        rows[leg.result.call_sid]
                    assert not leg.closed.is_set()
                    gap = largest_gap_ms(leg.result.arrivals, killed_at - 0.5, time.monotonic())
                    assert gap < 100, f"{name}: a {gap:.0f} ms gap in its audio while i2 was lost"

            # No committed event lost: per call, sequence numbers without holes; one failure per lost call.
            for sid, row in rows.items():
                events, _ = await control.store.call_events.list(
                    tenant_id=ALL_TENANTS, equals={"call_id": row["id"]}, limit=500, count=False)
                seqs = sorted(e["seq"] for e in events)
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (sid, seqs)
                failures = [e for e in events if e["topic"] == "voice.call.failed"]
                assert len(failures) == (1 if sid in lost else 0), (sid, failures)
                assert not any(e["topic"] == "voice.call.completed" for e in events), sid

            # Webhook deliveries continue: the survivors deliver the lost calls' failures.
            lost_ids = {rows[sid]["id"] for sid in lost}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                delivered = {r["body"] for r in receiver.arrived("/hook")}
                if sum(b"voice.call.failed" in b and any(i.encode() in b for i in lost_ids) for b in delivered) == len(lost):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the lost calls' failures were not delivered by webhook")
        finally:
            for task in tasks:
                task.cancel()
            for leg in (leg for group in legs.values() for leg in group):
                await leg.close()
            await control.close()
            cluster.stop()
            await receiver.down()

"""`voicectl instances`: the runtimes registered on the database, live or with an expired lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from runtime.ids import iso
from tests.cli.test_cli import Cli, cli, ready  # noqa: F401 - the fixtures

__all__ = ["cli", "ready"]


def _register(ready: Cli, instance_id: str, heartbeat: datetime, lease_s: float, **extra: Any) -> None:
    async def make(plane: Any) -> None:
        await plane.store.register_instance({
            "id": instance_id, "host": "box-1", "port": 8080, "pid": 4242, "version": "0.1.0",
            "started_at": iso(heartbeat), "heartbeat_at": iso(heartbeat),
            "expires_at": iso(heartbeat + timedelta(seconds=lease_s)), "lease_s": lease_s, "live_calls": 3,
            "local_calls": 1, "max_calls": 200, "load": 0.42, "accepting": True, "reaped_by": None,
            "reaped_at": None, **extra})

    ready.plane(make)


def test_instances_lists_live_and_expired_runtimes(ready: Cli) -> None:
    assert "no runtime has registered" in ready("instances").stdout
    assert ready.json("instances") == {"items": [], "total": 0}
    now = datetime.now(UTC)
    _register(ready, "box-1:8080", now, 10)
    _register(ready, "box-1:8081", now - timedelta(seconds=30), 10, reaped_by="box-1:8080")
    data = ready.json("instances")
    assert data["total"] == 2
    live, lost = data["items"]
    assert live["id"] == "box-1:8080" and live["state"] == "live" and live["live_calls"] == 3
    assert live["local_calls"] == 1 and live["load"] == 0.42 and 0 <= live["heartbeat_age_s"] < 10
    assert lost["state"] == "lease expired" and lost["reaped_by"] == "box-1:8080"
    assert lost["heartbeat_age_s"] >= 30
    table = ready("instances").stdout
    assert "box-1:8080" in table and "lease expired (reaped by box-1:8080)" in table and "0.42" in table

"""voicectl instances: the runtimes sharing this database, their calls, load and leases."""

from __future__ import annotations

from typing import Any

from voicectl.common import JsonOpt, print_page, run


def instances(as_json: JsonOpt = False) -> None:
    """List the runtimes (`voicectl serve` processes) on this database: live and local-engine calls,
    CPU load (1.0 = one core), age of the last heartbeat, and state: live, or lease expired (its
    calls are failed by a surviving instance, reason instance_lost)."""

    async def go(plane: Any) -> list[Any]:
        from runtime.cluster.instances import list_instances

        return await list_instances(plane.store)

    views = run(go)
    result = {"items": [v.to_dict() for v in views], "total": len(views)}
    print_page(
        result, as_json,
        ["id", "state", "host", "port", "pid", "live calls", "local calls", "max calls", "load", "heartbeat",
         "lease", "accepting", "version"],
        [[v.id, v.state + (f" (reaped by {v.reaped_by})" if v.reaped_by else ""), v.host, v.port, v.pid,
          v.live_calls, v.local_calls, v.max_calls, f"{v.load:.2f}", f"{v.heartbeat_age_s:.1f}s ago",
          f"{v.lease_s:g}s", v.accepting, v.version] for v in views],
        title="instances", empty="no runtime has registered on this database (is `voicectl serve` running?)",
    )

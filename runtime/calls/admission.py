"""Concurrent-call limits that hold across instances (cluster mode): a tenant's and the cluster's.

A new call's row (with voice.call.started) is written in a transaction that then takes a
PostgreSQL advisory lock (per tenant, or cluster-wide when ``limits.max_calls_cluster`` is set)
and counts the other live calls of instances whose lease is valid, before it commits: two
instances admitting at once queue on the lock, and the second, counting after the first's commit,
sees the first's call. Taken after the writes, the lock is held only for the count and the commit.
The call's own row is its reservation, so nothing else is counted or released; a refused call's
row is stored already failed (CallSession.refuse), so it never holds a slot, and a burst admits
exactly the limit. Calls of a lost instance stop counting when its lease runs out. A tenant's daily
outbound cap is counted under the same lock, so two instances cannot both place its last call.
``limits.max_calls`` stays per instance (the tracker's in-process count).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime.calls.routing import RouteRejected
from runtime.ids import now_iso
from runtime.store.store import Tables

CLUSTER_SCOPE = "*"  # the advisory lock's key when the whole cluster is capped (tenant ids never are "*")


@dataclass(frozen=True)
class DailyOutbound:
    """A tenant's daily cap on outbound calls: ``limit`` calls created at or after ``since``."""

    limit: int
    since: str


class ClusterAdmission:
    def __init__(self, max_calls_cluster: int | None) -> None:
        self.max_calls_cluster = max_calls_cluster

    def check(self, call_id: str, tenant_id: str, tenant_limit: int, number_id: str | None = None,
              daily_outbound: DailyOutbound | None = None) -> Callable[[Tables], Awaitable[None]]:
        """What runs in the transaction that stores the tenant's new call ``call_id``, before it
        commits: RouteRejected (as the tracker's own limits answer) when the cluster or the tenant
        is at its limit without that call; for an outbound call with ``daily_outbound``, also when
        the tenant has placed its calls for the day (``daily_outbound_limit``)."""
        capped = self.max_calls_cluster is not None

        async def admit(tx: Tables) -> None:
            # One lock, so no two admissions wait for each other's second lock.
            await tx.lock_admission(CLUSTER_SCOPE if capped else tenant_id)
            live = await tx.cluster_live_calls(tenant_id, now_iso(), whole_cluster=capped, besides=call_id)
            if capped and live["total"] >= self.max_calls_cluster:
                raise RouteRejected("busy", "the cluster is at its call limit", tenant_id, number_id)
            if live["tenant"] >= tenant_limit:
                raise RouteRejected("tenant_call_limit", "the tenant is at its concurrent-call limit", tenant_id,
                                    number_id)
            if daily_outbound is not None and await tx.count_outbound_since(
                    tenant_id, daily_outbound.since, besides=call_id) >= daily_outbound.limit:
                raise RouteRejected("daily_outbound_limit", "the tenant has placed its outbound calls for today",
                                    tenant_id, number_id)

        return admit

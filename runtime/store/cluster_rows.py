"""The rows of a cluster (runtime.cluster): every runtime's instance row and lease, the live calls
the lost ones left, and the count admission takes across instances. Not a tenant's rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.store.base import Executor, Row
from runtime.store.tables import decode, encode

if TYPE_CHECKING:
    from runtime.store.tables import Table

# The statuses of a live call, as literals: the partial index voice_calls_live has the same
# predicate, so the planner can use it (it cannot match parameters).
LIVE_STATUS_SQL = "('queued', 'dialing', 'ringing', 'connected', 'transferring')"

_ADMISSION_LOCK = 0x766F6963  # "voic": the advisory-lock class of call admissions


class ClusterRows:
    executor: Executor
    voice_calls: Table  # Tables' own tables
    instances: Table

    async def register_instance(self, row: dict[str, Any]) -> None:
        """This instance's row, new or replacing the one a previous run with its id left (a lease
        claimed by a survivor is then cleared: the id is alive again)."""
        values = encode(self.instances.spec, row)
        keys = tuple(values)
        updates = ", ".join(f"{k} = excluded.{k}" for k in keys if k != "id")
        await self.executor.execute(
            f"INSERT INTO instances ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}", tuple(values.values()))

    async def renew_instance(self, instance_id: str, changes: dict[str, Any]) -> bool:
        """Renew the lease with ``changes``; False when the row is gone or a survivor claimed it."""
        values = encode(self.instances.spec, changes)
        sets = ", ".join(f"{k} = ?" for k in values)
        return await self.executor.execute(
            f"UPDATE instances SET {sets} WHERE id = ? AND reaped_by IS NULL",
            (*values.values(), instance_id)) == 1

    async def delete_instance(self, instance_id: str) -> None:
        await self.executor.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    async def claim_expired_instances(self, reaper_id: str, now: str) -> list[str]:
        """Instances whose lease ran out before ``now``, claimed for ``reaper_id``: each is claimed by
        one caller only (the condition is re-checked on the row as it is written)."""
        rows = await self.executor.fetchall(
            "UPDATE instances SET reaped_by = ?, reaped_at = ? WHERE reaped_by IS NULL AND expires_at < ? "
            "AND id <> ? RETURNING id", (reaper_id, now, now, reaper_id))
        return [r["id"] for r in rows]

    async def delete_instances_reaped_before(self, before: str) -> int:
        return await self.executor.execute(
            "DELETE FROM instances WHERE reaped_at IS NOT NULL AND reaped_at < ?", (before,))

    async def live_calls_of_lost_instances(self, limit: int) -> list[Row]:
        """Calls still live whose instance was claimed by a survivor (or whose claimer died before
        it failed them all), or whose instance is gone (it stopped without ending them)."""
        rows = await self.executor.fetchall(
            "SELECT c.* FROM voice_calls c LEFT JOIN instances i ON i.id = c.instance_id "
            f"WHERE c.instance_id IS NOT NULL AND c.status IN {LIVE_STATUS_SQL} "
            "AND (i.id IS NULL OR i.reaped_by IS NOT NULL) ORDER BY c.created_at LIMIT ?",
            (limit,))
        return [decode(self.voice_calls.spec, r) for r in rows]

    async def fail_evaluations_of_lost_instances(self, now: str) -> int:
        """Running evaluations whose instance was claimed by a survivor or is gone: failed, once."""
        return await self.executor.execute(
            "UPDATE evaluations SET status = 'failed', error = 'the instance running it was lost', finished_at = ? "
            "WHERE status = 'running' AND instance_id IS NOT NULL AND instance_id NOT IN "
            "(SELECT id FROM instances WHERE reaped_by IS NULL)", (now,))

    async def live_calls_left_by(self, instance_id: str | None, limit: int) -> list[Row]:
        """Live calls held by ``instance_id`` (None: by no instance, i.e. rows from before instances)."""
        where = "instance_id IS NULL" if instance_id is None else "instance_id = ?"
        rows = await self.executor.fetchall(
            f"SELECT * FROM voice_calls WHERE {where} AND status IN {LIVE_STATUS_SQL} ORDER BY created_at LIMIT ?",
            (limit,) if instance_id is None else (instance_id, limit))
        return [decode(self.voice_calls.spec, r) for r in rows]

    async def lock_admission(self, scope: str) -> None:
        """Serialise call admissions of ``scope`` (a tenant, or the whole cluster) until the
        transaction ends. SQLite's single writer already runs one transaction at a time."""
        if self.executor.dialect == "postgres":
            await self.executor.fetchval("SELECT pg_advisory_xact_lock(?, hashtext(?))", (_ADMISSION_LOCK, scope))

    async def cluster_live_calls(self, tenant_id: str, now: str, *, whole_cluster: bool,
                                 besides: str | None = None) -> Row:
        """Live calls on instances whose lease is valid at ``now``, other than ``besides``:
        ``tenant`` (the tenant's) and, with ``whole_cluster``, ``total`` (everyone's; else 0)."""
        if whole_cluster:
            sql = ("SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN c.tenant_id = ? THEN 1 ELSE 0 END), 0) AS tenant "
                   "FROM voice_calls c JOIN instances i ON i.id = c.instance_id "
                   f"WHERE c.status IN {LIVE_STATUS_SQL} AND i.expires_at >= ? AND i.reaped_by IS NULL AND c.id <> ?")
        else:
            sql = ("SELECT 0 AS total, COUNT(*) AS tenant FROM voice_calls c JOIN instances i ON i.id = c.instance_id "
                   f"WHERE c.tenant_id = ? AND c.status IN {LIVE_STATUS_SQL} AND i.expires_at >= ? "
                   "AND i.reaped_by IS NULL AND c.id <> ?")
        row = await self.executor.fetchone(sql, (tenant_id, now, besides or ""))
        return {"total": int(row["total"] or 0), "tenant": int(row["tenant"] or 0)} if row else {"total": 0, "tenant": 0}


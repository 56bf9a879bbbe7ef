"""Every runtime registers its lease, SQLite too; what a restart fails depends on who can share the database."""

from __future__ import annotations

from runtime.api.appkeys import INSTANCE_ID
from runtime.store.tables import ALL_TENANTS
from tests.api.support import start_live_api, stop_live_api
from tests.calls.support import insert_call, provision


async def test_the_runtime_registers_its_lease_and_removes_it_at_a_clean_stop(settings):
    api, runner = await start_live_api(settings)
    try:
        rows, _ = await api.control.store.instances.list(tenant_id=ALL_TENANTS)
        assert [r["id"] for r in rows] == [api.app[INSTANCE_ID]]
        assert rows[0]["lease_s"] == settings.server.lease_s and rows[0]["accepting"] is True
        assert rows[0]["expires_at"] > rows[0]["heartbeat_at"] and rows[0]["reaped_by"] is None
    finally:
        await stop_live_api(api, runner)
    api, runner = await start_live_api(settings)
    try:
        await runner.cleanup()  # the app's clean stop; the control plane stays open to look
        rows, _ = await api.control.store.instances.list(tenant_id=ALL_TENANTS)
        assert rows == []
    finally:
        await stop_live_api(api, runner)


async def test_a_restart_fails_calls_of_other_instances_only_where_it_is_the_only_runtime(settings, backend):
    api, runner = await start_live_api(settings)
    try:
        world = await provision(api.control)
        other = await insert_call(api.control, world.tenant_id, status="connected", instance_id="elsewhere:8080")
    finally:
        await stop_live_api(api, runner)
    api, runner = await start_live_api(settings)  # the restart
    try:
        row = await api.control.store.voice_calls.get(other, tenant_id=world.tenant_id)
        # SQLite has one runtime: a call of any other id is a previous run's. On PostgreSQL it may be a
        # live peer's: only the reaper fails it, once that peer's lease runs out.
        assert row["status"] == ("connected" if backend == "postgres" else "failed")
    finally:
        await stop_live_api(api, runner)

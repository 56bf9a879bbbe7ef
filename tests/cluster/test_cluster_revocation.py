"""Revoking a key or disabling a tenant through one instance closes that key's or tenant's event
sockets on every instance within 1 s."""

from __future__ import annotations

from pathlib import Path

from tests.api.test_events_ws_revocation import _closed_within, _key_id, _socket
from tests.cluster.support import ClusterNames, start_instances, stop_instances


async def test_a_key_revoked_or_a_tenant_disabled_on_one_instance_closes_sockets_on_the_others(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3)
    one, two, three = (live for live, _ in started)
    try:
        revoked_tenant, revoked_key = await one.tenant_with_key("revoked")
        disabled_tenant, disabled_key = await one.tenant_with_key("disabled")
        kept_tenant, kept_key = await one.tenant_with_key("kept")
        on_two = await _socket(two, revoked_key)
        on_three = await _socket(three, disabled_key)
        kept = await _socket(three, kept_key)

        key_id = await _key_id(one, revoked_tenant, revoked_key)
        status, body, _ = await one.call("DELETE", f"/api/v1/auth/api-keys/{key_id}", one.admin_key)
        assert status in (200, 204), body
        code, waited, _ = await _closed_within(on_two, 1.0)
        assert code == 4401 and waited <= 1.0, (code, waited)

        status, body, _ = await one.call("PATCH", f"/api/v1/tenants/{disabled_tenant}", one.admin_key,
                                         json={"status": "disabled"})
        assert status == 200, body
        code, waited, _ = await _closed_within(on_three, 1.0)
        assert code == 4403 and waited <= 1.0, (code, waited)

        code, _, _ = await _closed_within(kept, 0.6)  # another tenant's socket streams on
        assert code is None and not kept.closed
        for ws in (on_two, on_three, kept):
            await ws.close()
    finally:
        await stop_instances(started)

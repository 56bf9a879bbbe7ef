"""voicectl goto set-client-secret|delete-client-secret: the secret of a GoTo OAuth client.

GoTo's token endpoint takes the OAuth client in Basic auth (client id and secret). The appliance's
client is ``telephony.goto.client_id`` in the config; a tenant with its own GoTo app puts
``client_id`` on its ``goto`` credential. Either secret goes to the keyring (never the config file
or the database), read from stdin or a hidden prompt, and is never printed.
"""

from __future__ import annotations

from typing import Any

from voicectl.common import JsonOpt, MaybeTenantOpt, new_app, print_json, resolve_tenant, run, say
from voicectl.credential import read_required_secret

app = new_app("GoTo Connect OAuth client secrets (kept in the keyring, never printed).")


async def _ref(plane: Any, tenant: str | None) -> tuple[str, str]:
    """The keyring entry of the client secret, and whose it is."""
    from runtime.telephony.goto.api import APPLIANCE_CLIENT_SECRET_REF, tenant_client_secret_ref

    if tenant is None:
        return APPLIANCE_CLIENT_SECRET_REF, "the appliance's GoTo OAuth client"
    tenant_id = await resolve_tenant(plane, tenant)
    return tenant_client_secret_ref(tenant_id), f"tenant {tenant_id}'s own GoTo OAuth client"


@app.command("set-client-secret")
def set_client_secret(tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Store the client secret of telephony.goto.client_id (or, with --tenant, of the client_id on
    that tenant's goto credential); read from stdin or a hidden prompt.

    \b
    Example:
      printf %s "$GOTO_CLIENT_SECRET" | voicectl goto set-client-secret
    """
    secret = read_required_secret("goto", "OAuth client secret")

    async def go(plane: Any) -> dict[str, Any]:
        ref, whose = await _ref(plane, tenant)
        await plane.secrets.set(ref, secret)
        return {"stored": True, "ref": ref, "whose": whose}

    result = run(go)
    if as_json:
        print_json(result)
    else:
        say(f"stored the client secret of {result['whose']} in the keyring")


@app.command("delete-client-secret")
def delete_client_secret(tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a GoTo OAuth client secret from the keyring (the appliance's, or --tenant's own)."""

    async def go(plane: Any) -> dict[str, Any]:
        ref, whose = await _ref(plane, tenant)
        await plane.secrets.delete(ref)
        return {"deleted": True, "ref": ref, "whose": whose}

    result = run(go)
    if as_json:
        print_json(result)
    else:
        say(f"deleted the client secret of {result['whose']}")

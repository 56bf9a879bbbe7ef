"""voicectl livekit set-secret|delete-secret: the appliance's own LiveKit API secret.

The appliance's LiveKit project is ``telephony.livekit.url`` and ``api_key`` in the config; its
secret goes to the keyring (never the config file), read from stdin or a hidden prompt. Tenants
with their own project use ``voicectl credential set livekit`` instead.
"""

from __future__ import annotations

from typing import Any

from voicectl.common import JsonOpt, new_app, print_json, run, say
from voicectl.credential import read_required_secret

app = new_app("The appliance's LiveKit API secret (kept in the keyring, never printed).")


@app.command("set-secret")
def set_secret(as_json: JsonOpt = False) -> None:
    """Store the API secret of telephony.livekit.api_key; read from stdin or a hidden prompt.

    \b
    Example:
      printf %s "$LIVEKIT_API_SECRET" | voicectl livekit set-secret
    """
    secret = read_required_secret("livekit", "API secret")

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.telephony.livekit.server import APPLIANCE_SECRET_REF

        await plane.secrets.set(APPLIANCE_SECRET_REF, secret)
        return {"stored": True, "ref": APPLIANCE_SECRET_REF}

    result = run(go)
    if as_json:
        print_json(result)
    else:
        say("stored the appliance's LiveKit API secret in the keyring")


@app.command("delete-secret")
def delete_secret(as_json: JsonOpt = False) -> None:
    """Remove the appliance's LiveKit API secret from the keyring."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.telephony.livekit.server import APPLIANCE_SECRET_REF

        await plane.secrets.delete(APPLIANCE_SECRET_REF)
        return {"deleted": True}

    result = run(go)
    if as_json:
        print_json(result)
    else:
        say("deleted the appliance's LiveKit API secret")

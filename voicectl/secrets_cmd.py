"""voicectl secrets copy: carry every stored secret from the configured backend to another.

Before a box joins a cluster (several runtimes on one PostgreSQL, ``secrets.backend: database``),
its credentials and webhook secrets live in its own keyring; ``copy --to database`` seals them into
the database, then the config switches to ``secrets.backend: database``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl.common import EXIT_CONFIG, JsonOpt, errors, fail, load_settings, new_app, print_json, run, say

app = new_app("Stored secrets: copy them to another backend (e.g. into the database for a cluster).")


@app.command("copy")
def copy(
    to: Annotated[str, typer.Option("--to", help="Where to copy them: database, cryptfile or keyring.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy every secret the database names (credentials, webhook signing secrets, GoTo and LiveKit
    client secrets) from secrets.backend to --to; the source keeps them.

    \b
    Example (before setting secrets.backend: database):
      voicectl secrets copy --to database
    """
    if to not in ("database", "cryptfile", "keyring"):
        fail(f"--to must be database, cryptfile or keyring, not {to!r}", EXIT_CONFIG)
    with errors():
        settings = load_settings()
    if settings.secrets.backend == to:
        fail(f"secrets.backend is already {to}: nothing to copy", EXIT_CONFIG)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.secret_values import open_secret_store
        from runtime.telephony.goto.api import APPLIANCE_CLIENT_SECRET_REF, tenant_client_secret_ref
        from runtime.telephony.livekit.server import APPLIANCE_SECRET_REF

        target_settings = settings.model_copy(update={"secrets": settings.secrets.model_copy(update={"backend": to})})
        target = open_secret_store(target_settings, plane.store.db)
        copied, missing = 0, []
        named = await plane.store.named_secret_refs()
        # Those that may or may not be set: each tenant's own GoTo client, the appliance's GoTo and LiveKit.
        optional = [*map(tenant_client_secret_ref, await plane.store.tenant_ids()), APPLIANCE_CLIENT_SECRET_REF,
                    APPLIANCE_SECRET_REF]
        for ref in [*named, *optional]:
            value = await plane.secrets.get(ref)
            if value is None:
                if ref in named:
                    missing.append(ref)
                continue
            await target.set(ref, value)
            copied += 1
        return {"copied": copied, "missing": missing, "from": plane.secrets.description, "to": target.description}

    result = run(go, settings=settings)
    if as_json:
        print_json(result)
        return
    say(f"copied {result['copied']} secret(s) from {result['from']} to {result['to']}")
    for ref in result["missing"]:
        say(f"  not in the source (set it again after switching): {ref}")
    if to == "database":
        say("now set secrets.backend: database in the config (every runtime of the database needs the same master key)")

"""voicectl doctor: check the providers a tenant's agents use (credential, reachable, key accepted)."""

from __future__ import annotations

from typing import Any

import typer

from voicectl.common import (
    JsonOpt,
    TenantOpt,
    load_settings,
    print_json,
    print_table,
    resolve_tenant,
    run,
    say,
)

# Some provider is not usable: calls would fall back (or fail) until it is fixed.
EXIT_PROVIDER_PROBLEM = 9


def doctor(tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """Check each provider the tenant's agents name (and each AI credential it holds): credential
    present, server reachable, key accepted; and, for a GoTo credential, the scopes its token
    carries. Prints a table; no secret is ever printed. Exit code 9 when any is not usable."""
    settings = load_settings()

    async def go(plane: Any) -> list[dict[str, Any]]:
        from runtime.providers.doctor import diagnose

        tenant_id = await resolve_tenant(plane, tenant)
        rows = [check.to_dict() for check in await diagnose(plane, settings, tenant_id)]
        return rows + await _telephony(plane, settings, tenant_id)

    results = run(go, settings=settings)
    if as_json:
        print_json({"tenant": tenant, "ok": all(r["ok"] for r in results), "providers": results})
    elif not results:
        say("No providers to check: the tenant has no agent with an active version and no AI credentials.")
    else:
        print_table(["modality", "provider", "server / model", "used by", "credential", "status", "detail"],
                    [[r["modality"], r["provider"], " ".join(p for p in (r["base_url"], r["model"]) if p) or "default",
                      ", ".join(r["used_by"]) or "-", r["credential"], r["status"], r["detail"]] for r in results])
    if not all(r["ok"] for r in results):
        raise typer.Exit(EXIT_PROVIDER_PROBLEM)


async def _telephony(plane: Any, settings: Any, tenant_id: str) -> list[dict[str, Any]]:
    """Rows for the carriers the tenant has credentials for: Twilio needs an https public URL (its
    media streams are wss:// only); GoTo, the scopes its token carries."""
    rows = []
    if await plane.store.credentials.find(tenant_id=tenant_id, provider="twilio") is not None:
        from runtime.telephony.twilio.bridge import INSECURE_STREAM_WARNING, streams_can_be_secure

        ok = streams_can_be_secure(settings)
        rows.append({"provider": "twilio", "modality": "telephony", "base_url": settings.server.public_url,
                     "model": None, "used_by": [], "credential": "set", "status": "ok" if ok else "misconfigured",
                     "ok": ok, "detail": "media streams over wss://" if ok else INSECURE_STREAM_WARNING})
    if await plane.store.credentials.find(tenant_id=tenant_id, provider="goto") is None:
        return rows
    from runtime.telephony.goto.scopes import check_scopes

    found = await check_scopes(plane, settings, tenant_id)
    return rows + [{"provider": "goto", "modality": "telephony", "base_url": settings.telephony.goto.api_base_url,
             "model": None, "used_by": [], "credential": "set", "status": found.status, "ok": found.status == "ok",
             "detail": found.detail, "missing_scopes": list(found.missing)}]

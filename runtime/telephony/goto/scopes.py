"""Does a tenant's GoTo token carry the scopes the bridge needs? (for `voicectl doctor`)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.control.errors import NotFound
from runtime.telephony.goto.api import REQUIRED_SCOPES, GotoApiError, TokenCache, api_for, open_account


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    status: str  # ok | missing credential | token refused | missing scopes
    detail: str
    missing: tuple[str, ...] = ()


async def check_scopes(plane: Any, settings: Any, tenant_id: str) -> ScopeCheck:
    """Refresh the tenant's token once and compare the granted scopes with REQUIRED_SCOPES."""
    try:
        account = await open_account(plane.credentials, tenant_id, settings)
    except NotFound as exc:
        return ScopeCheck("missing credential", exc.message)
    async with aiohttp.ClientSession() as http:
        api = api_for(settings, account, http, TokenCache(), plane.credentials)
        try:
            granted = await api.scopes()
        except GotoApiError as exc:
            return ScopeCheck("token refused", exc.message[:300])
    missing = tuple(scope for scope in REQUIRED_SCOPES if scope not in granted)
    if missing:
        # Call events need a super-admin's token; web calls need webrtc.v1.*.
        return ScopeCheck("missing scopes", "missing: " + ", ".join(missing), missing)
    return ScopeCheck("ok", "scopes: " + ", ".join(REQUIRED_SCOPES))

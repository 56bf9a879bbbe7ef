"""`voicectl doctor`: can this tenant's calls reach the engines its agents name?

For every provider in the fallback chains of the tenant's active agent versions, and every AI
provider it holds a credential for: is the credential there, is the server reachable, is the key
accepted. Cloud adapters answer with their own ``check()`` (a cheap authenticated request); the
offline engines with their model files (hash-checked) or binary. No secret is ever part of a
result: errors are described by kind and status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from runtime.config import Settings
from runtime.control.pagination import PageRequest
from runtime.control.plane import ControlPlane
from runtime.control.schemas import AgentConfig, ProviderChoice
from runtime.providers import registry
from runtime.providers.base import ProviderError, RetryPolicy
from runtime.providers.chains import ProviderChains
from runtime.providers.registry import MODALITIES, MissingCredential
from runtime.providers.voice_profile import apply_voice_profile

CHECK_TIMEOUT_S = 10.0
# What a failed check's kind means to an operator.
VERDICTS = {"auth": "key refused", "unavailable": "unreachable", "timeout": "no answer in time",
            "rate_limit": "rate limited", "server": "server error", "protocol": "unexpected answer",
            "bad_request": "request refused"}


@dataclass(slots=True)
class ProviderCheck:
    provider: str
    modality: str
    used_by: list[str] = field(default_factory=list)  # agent names whose chains include it
    credential: str = "-"  # set | missing | not needed
    status: str = "ok"  # ok | key refused | unreachable | missing credential | ...
    detail: str = ""
    # The version's own server and model when it names them (else the credential's or appliance's).
    base_url: str | None = None
    model: str | None = None

    @property
    def target(self) -> str:
        return " ".join(part for part in (self.base_url, self.model) if part)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "modality": self.modality, "base_url": self.base_url, "model": self.model,
                "used_by": self.used_by, "credential": self.credential, "status": self.status, "ok": self.ok,
                "detail": self.detail}


async def diagnose(plane: ControlPlane, settings: Settings, tenant_id: str) -> list[ProviderCheck]:
    chains = ProviderChains(settings)
    # One check per provider and server: two versions naming different servers get two rows.
    checks: dict[tuple[str, str, str | None, str | None], tuple[ProviderCheck, ProviderChoice | None]] = {}
    offset = 0
    while True:
        agents = await plane.agents.list(tenant_id, PageRequest(limit=200, offset=offset))
        for agent in agents.items:
            if not agent.active or not agent.active.config:
                continue
            config = AgentConfig.from_stored(agent.active.config)
            if config.voice_profile_id:
                config = apply_voice_profile(
                    config, await plane.store.voice_profiles.get(config.voice_profile_id, tenant_id=tenant_id))
            for modality in MODALITIES:
                for position, name in enumerate(chains.chain(config, modality)):
                    # As in a call, the version's base_url, model and options belong to its first choice.
                    choice = chains.first_choice(config, modality) if position == 0 else None
                    url, model = (choice.base_url, choice.model) if choice is not None else (None, None)
                    check, _ = checks.setdefault((modality, name, url, model),
                                                 (ProviderCheck(name, modality, base_url=url, model=model), choice))
                    check.used_by.append(agent.name)
        offset += len(agents.items)
        if not agents.items or offset >= agents.total:
            break
    for entry in registry.PROVIDERS:  # credentials held but not (yet) used by an agent
        if entry.credential is None or any(key[:2] == (entry.modality, entry.name) for key in checks):
            continue
        if await plane.store.credentials.find(tenant_id=tenant_id, provider=entry.credential_name) is not None:
            checks[(entry.modality, entry.name, None, None)] = (ProviderCheck(entry.name, entry.modality), None)
    results = list(checks.values())
    await asyncio.gather(*(_run(plane, chains, tenant_id, check, choice) for check, choice in results))
    return sorted((check for check, _ in results),
                  key=lambda c: (MODALITIES.index(c.modality), c.provider, c.target))


async def _run(plane: ControlPlane, chains: ProviderChains, tenant_id: str, check: ProviderCheck,
               choice: ProviderChoice | None) -> None:
    entry = registry.find(check.modality, check.provider)
    if entry is None:
        check.status, check.detail = "unknown provider", f"no {check.provider} {check.modality} adapter in this build"
        return
    credential = None
    if entry.credential is None:
        check.credential = "not needed"
    else:
        credential = await plane.credentials.for_engine(tenant_id, entry.credential_name)
        if credential is None:
            check.credential = "missing" if entry.credential.secret_required else "not set (optional)"
        else:
            check.credential = "set" if credential.secret else "fields only"
    policy = RetryPolicy(retries=0, first_byte_timeout_s=CHECK_TIMEOUT_S)
    try:
        # Offline engines are built apart from any call's (a check never loads a model).
        engine = ProviderChains(chains.settings).engine(check.modality, check.provider, choice,
                                                         credential=credential, policy=policy)
    except MissingCredential as exc:
        check.status = "missing credential"
        check.detail = f"{exc}: voicectl credential set --tenant T {entry.credential_name}"
        return
    except registry.MissingExtra as exc:  # the package is not installed here
        check.status, check.detail = "not installed", str(exc)[:300]
        return
    except ValueError as exc:  # a setting the adapter refuses (a bad URL): this row, not the others
        check.status, check.detail = "misconfigured", str(exc)[:200]
        return
    try:
        detail = await asyncio.wait_for(engine.check(), CHECK_TIMEOUT_S)
        check.detail = detail or ""
    except ProviderError as exc:
        if entry.offline:
            check.status, check.detail = "unavailable", str(exc)[:200]
        else:
            check.status = VERDICTS.get(exc.kind, exc.kind)
            check.detail = exc.detail or (f"HTTP {exc.status}" if exc.status else exc.kind)
    except TimeoutError:
        check.status, check.detail = "no answer in time", f"nothing within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # an adapter bug must not hide the other rows
        check.status, check.detail = "check failed", type(exc).__name__
    finally:
        await engine.aclose()

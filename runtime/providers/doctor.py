"""`voicectl doctor`: can this tenant's calls reach the engines its agents name?

For every provider in the fallback chains of the tenant's active agent versions, and every AI
provider it holds a credential for: is the credential there, is the server reachable, is the key
accepted. Cloud adapters answer with their own ``check()`` (a cheap authenticated request); the
offline engines with their model files (hash-checked) or binary. No secret is ever part of a
result: errors are described by kind and status.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import Any

from runtime.config import Settings
from runtime.control.pagination import PageRequest
from runtime.control.plane import ControlPlane
from runtime.providers.base import ProviderError, RetryPolicy
from runtime.providers.chains import MODALITIES, OFFLINE_CHOICES, ProviderRegistry
from runtime.providers.cloud import CLOUD, SECRET_REQUIRED, MissingCredential, ProviderCredential, build
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
    registry = ProviderRegistry(settings)
    # One check per provider and server: two versions naming different servers get two rows.
    checks: dict[tuple[str, str, str | None, str | None], ProviderCheck] = {}
    offset = 0
    while True:
        agents = await plane.agents.list(tenant_id, PageRequest(limit=200, offset=offset))
        for agent in agents.items:
            config = agent.active.config if agent.active else None
            if not config:
                continue
            if config.get("voice_profile_id"):
                config = apply_voice_profile(
                    config, await plane.store.voice_profiles.get(config["voice_profile_id"], tenant_id=tenant_id))
            for modality in MODALITIES:
                for position, name in enumerate(registry.chain(config, modality)):
                    # As in a call, the version's base_url and model belong to its first choice.
                    choice = (config.get(modality) or {}) if position == 0 else {}
                    url, model = choice.get("base_url"), choice.get("model")
                    check = checks.setdefault((modality, name, url, model),
                                              ProviderCheck(name, modality, base_url=url, model=model))
                    check.used_by.append(agent.name)
        offset += len(agents.items)
        if not agents.items or offset >= agents.total:
            break
    for modality, names in CLOUD.items():  # credentials held but not (yet) used by an agent
        for name in sorted(names):
            if await plane.store.credentials.find(tenant_id=tenant_id, provider=name) is not None and not any(
                    key[:2] == (modality, name) for key in checks):
                checks.setdefault((modality, name, None, None), ProviderCheck(name, modality))
    results = list(checks.values())
    await asyncio.gather(*(_run(plane, settings, registry, tenant_id, check) for check in results))
    return sorted(results, key=lambda c: (MODALITIES.index(c.modality), c.provider, c.target))


async def _run(plane: ControlPlane, settings: Settings, registry: ProviderRegistry, tenant_id: str,
               check: ProviderCheck) -> None:
    if check.provider in CLOUD.get(check.modality, ()):
        await _cloud(plane, settings, tenant_id, check)
    elif check.provider in OFFLINE_CHOICES.get(check.modality, ()):
        check.credential = "not needed"
        await _offline(check)
    else:
        check.status, check.detail = "unknown provider", f"no {check.provider} {check.modality} adapter in this build"


async def _cloud(plane: ControlPlane, settings: Settings, tenant_id: str, check: ProviderCheck) -> None:
    row = await plane.store.credentials.find(tenant_id=tenant_id, provider=check.provider)
    secret = await plane.credentials.secret(tenant_id, check.provider) if row is not None else None
    credential = ProviderCredential(dict(row.get("fields") or {}), secret) if row is not None else None
    if credential is None:
        check.credential = "missing" if check.provider in SECRET_REQUIRED else "not set (optional)"
    else:
        check.credential = "set" if secret else "fields only"
    policy = RetryPolicy(retries=0, first_byte_timeout_s=CHECK_TIMEOUT_S)
    choice = {"base_url": check.base_url, "model": check.model}
    try:
        engine = build(check.modality, check.provider, settings.providers, choice, credential, policy)
    except MissingCredential as exc:
        check.status, check.detail = "missing credential", f"{exc}: voicectl credential set --tenant T {check.provider}"
        return
    except ValueError as exc:  # a setting the adapter refuses (a bad URL): this row, not the others
        check.status, check.detail = "misconfigured", str(exc)[:200]
        return
    try:
        await asyncio.wait_for(engine.check(), CHECK_TIMEOUT_S)  # type: ignore[union-attr]
    except ProviderError as exc:
        check.status = VERDICTS.get(exc.kind, exc.kind)
        check.detail = f"HTTP {exc.status}" if exc.status else exc.kind
    except TimeoutError:
        check.status, check.detail = "no answer in time", f"nothing within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # an adapter bug must not hide the other rows
        check.status, check.detail = "check failed", type(exc).__name__
    finally:
        await engine.aclose()


async def _offline(check: ProviderCheck) -> None:
    from runtime.providers import models

    try:
        if check.provider == "local" and check.modality == "stt":
            await asyncio.to_thread(models.verified_dir, models.WHISPER_TINY_EN)
            check.detail = models.WHISPER_TINY_EN.name
        elif check.provider == "local" and check.modality == "tts":
            try:
                await asyncio.to_thread(models.verified_dir, models.PIPER_JOE_MEDIUM)
                check.detail = models.PIPER_JOE_MEDIUM.name
            except ProviderError:
                if shutil.which("espeak-ng") is None:
                    raise
                check.detail = "piper voice unusable: espeak-ng speaks instead"
        elif check.provider == "pocketsphinx":
            import pocketsphinx  # noqa: F401

            check.detail = "pocketsphinx"
        else:
            check.detail = "built in"
    except (ProviderError, ImportError) as exc:
        check.status, check.detail = "unavailable", str(exc)[:200]

"""The conversation engine of one runtime process: builds a call's ``Conversation`` from its
route (engines, tools, turn settings) for whichever bridge carries the call.

Shared per process: the provider registry (offline models loaded once), the pipeline's
Prometheus metrics, and one HTTP client for tenant HTTP tools.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from runtime.calls.outbound import has_placeholders, render
from runtime.calls.routing import CallRoute
from runtime.calls.session import CallSession
from runtime.control.plane import ControlPlane
from runtime.control.schemas import AgentConfig
from runtime.egress.aiohttp_client import guarded_session
from runtime.events.models import ProviderFailedOver
from runtime.pipeline.call_analysis import AnalysisGate, attach
from runtime.pipeline.conversation import Conversation
from runtime.pipeline.line_cache import LineCache
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.transport import Transport
from runtime.pipeline.vad import default_vad
from runtime.providers import registry
from runtime.providers.base import TextToSpeech
from runtime.providers.chains import ProviderChains
from runtime.providers.failover import Failover
from runtime.providers.registry import ProviderCredential
from runtime.providers.voice_profile import apply_voice_profile
from runtime.tools.toolbox import CallToolBox

log = logging.getLogger("voicectl.pipeline")


class ConversationEngine:
    def __init__(self, providers: ProviderChains, control: ControlPlane, registry: CollectorRegistry) -> None:
        self.providers = providers
        self.control = control
        self.metrics = PipelineMetrics(registry)
        self.greetings = LineCache()
        self._http: aiohttp.ClientSession | None = None
        # Post-call summaries with the tenant's LLM: how many run at once on this runtime.
        self.analysis = AnalysisGate(providers.settings.analysis)

    async def start(self, warm_up: bool = True) -> None:
        # Tenant HTTP tools: connections only where security.egress lets tenants' URLs go.
        self._http = guarded_session(self.control.egress, timeout=aiohttp.ClientTimeout(total=60))
        if warm_up:
            await self.providers.warm_up()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.providers.aclose()

    async def local_load(self, route: CallRoute) -> float:
        """What the routed call takes of the local engines' budget (its voice profile applied)."""
        return self.providers.local_load(await self._profiled(route))

    async def _profiled(self, route: CallRoute) -> AgentConfig:
        config = route.config
        if config.voice_profile_id:
            profile = await self.control.store.voice_profiles.get(config.voice_profile_id, tenant_id=route.tenant_id)
            config = apply_voice_profile(config, profile)
        return config

    async def speaking_voice(self, session: CallSession, conversation: Conversation, *, provider: str | None,
                             voice_id: str | None, language: str | None) -> tuple[TextToSpeech | None, str]:
        """The TTS engine of a speaking session that names another provider, voice or language than
        its call's version (None: the call's own chain) and the provider's name. The engine lives as
        long as the call. ValueError: a choice that cannot be made (a 422 naming it)."""
        route = session.route
        if route is None:
            raise ValueError(f"call {session.id} has no agent version")
        config = await self._profiled(route)
        current = self.providers.first_choice(config, "tts")
        name = provider or current.provider or ""
        entry = registry.find("tts", name)
        if entry is None:
            raise ValueError(f"provider: unknown TTS provider {name!r}; known: {', '.join(registry.names('tts'))}")
        same = name == current.provider
        if same and voice_id in (None, current.option_values.get("voice")) and language in (None, config.language):
            return None, name
        if voice_id is not None and not entry.capabilities.voices:
            raise ValueError(f"voice_id: {name} has one voice; leave voice_id unset")
        fields: dict[str, Any] = current.model_dump(exclude_none=True) if same else {}
        fields = {**fields, "provider": name, "fallback": []}
        if voice_id is not None:
            fields["voice"] = voice_id
        try:
            choice = type(current).model_validate(fields)
            choice.check("tts")
            choice.options_for(entry)
        except ValidationError as exc:
            raise ValueError(f"voice_id: {exc.errors()[0]['msg']}") from None
        credential = None
        if entry.credential is not None:
            credential = await self.control.credentials.for_engine(session.tenant_id, entry.credential_name)
            if credential is None:
                raise ValueError(f"provider: the tenant has no {entry.credential_name} credential")
        agent = config.model_copy(update={"tts": choice, "language": language or config.language})
        engine = self.providers.engine("tts", name, choice, credential=credential, agent=agent,
                                       timezone=route.tenant.get("timezone") or "UTC",
                                       transport_rate=conversation.transport.rate)
        if not entry.offline:  # a client of its own: released with the call
            conversation.closers.append(engine.aclose)
        return engine, name

    async def conversation(self, session: CallSession, transport: Transport, **overrides: Any) -> Conversation:
        """A ready (not started) conversation for a routed call."""
        route = session.route
        if route is None:
            raise ValueError(f"call {session.id} has no route: nothing to converse with")
        timezone = route.tenant.get("timezone") or "UTC"
        secrets, store, tenant_id = self.control.credentials, self.control.store, session.tenant_id
        config = await self._profiled(route)
        conversation: Conversation | None = None

        async def credential(provider: str) -> ProviderCredential | None:
            return await secrets.for_engine(tenant_id, provider)

        def failed_over(switch: Failover) -> None:
            self.metrics.failovers.labels(switch.modality, switch.from_provider, switch.to_provider).inc()
            payload = ProviderFailedOver(modality=switch.modality, from_provider=switch.from_provider,
                                         to_provider=switch.to_provider, reason=switch.reason)
            if conversation is not None:
                conversation.emit(payload)  # in order with the call's other events

        chosen = await self.providers.for_call(config, timezone=timezone, transport_rate=transport.rate,
                                               credentials=credential, report=failed_over)
        for sub in chosen.substitutions:
            self.metrics.failovers.labels(sub.modality, sub.wanted, sub.used).inc()
            await session.emit(ProviderFailedOver(modality=sub.modality, from_provider=sub.wanted,
                                                  to_provider=sub.used, reason=sub.reason))
        attach(session, chosen, config, chains=self.providers, gate=self.analysis, timezone=timezone,
               credentials=credential)
        toolbox = CallToolBox.for_call(config, store=store, emit=session.emit, timezone=timezone,
                                       http=self._http, signing_secret=lambda t: secrets.secret(t, "tools"),
                                       callbacks=self.control.callbacks)
        settings = ConversationSettings.from_route(route, **{**_call_texts(session, route), **overrides})
        conversation = Conversation(session, stt=chosen.stt, llm=chosen.llm, tts=chosen.tts, transport=transport,
                                    settings=settings, vad=default_vad(transport.rate), toolbox=toolbox,
                                    metrics=self.metrics)
        conversation.closers.append(chosen.aclose)
        if not has_placeholders(route.greeting):  # a greeting with the call's variables is its own
            # The voice a greeting is cached under: the tenant's (a cloned voice is its account's), the
            # version's TTS choice after its voice profile, and the engine this call really got.
            voice = (tenant_id, config.tts.model_dump_json(), chosen.tts.provider_name)
            conversation.voice.greet_from(self.greetings, voice)
        return conversation


def _call_texts(session: CallSession, route: CallRoute) -> dict[str, Any]:
    """The greeting and prompt with the call's variables (an outbound call's; none for inbound, so
    a placeholder says nothing). An outbound call that waits to learn who answered holds its
    greeting back (runtime.calls.outbound)."""
    outbound = session.outbound
    variables = outbound.variables if outbound is not None else {}
    greeting = None if outbound is not None and outbound.holds_greeting else render(route.greeting, variables)
    return {"greeting": greeting, "system_prompt": render(route.system_prompt, variables)}

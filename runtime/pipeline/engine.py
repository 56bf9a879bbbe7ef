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

from runtime.calls.session import CallSession
from runtime.control.plane import ControlPlane
from runtime.events.models import ProviderFailedOver
from runtime.pipeline.conversation import Conversation
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.transport import Transport
from runtime.pipeline.vad import default_vad
from runtime.providers.registry import ProviderRegistry
from runtime.tools.toolbox import CallToolBox

log = logging.getLogger("voicectl.pipeline")


class ConversationEngine:
    def __init__(self, providers: ProviderRegistry, control: ControlPlane, registry: CollectorRegistry) -> None:
        self.providers = providers
        self.control = control
        self.metrics = PipelineMetrics(registry)
        self._http: aiohttp.ClientSession | None = None

    async def start(self, warm_up: bool = True) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        if warm_up:
            await self.providers.warm_up()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.providers.aclose()

    async def conversation(self, session: CallSession, transport: Transport, **overrides: Any) -> Conversation:
        """A ready (not started) conversation for a routed call."""
        route = session.route
        if route is None:
            raise ValueError(f"call {session.id} has no route: nothing to converse with")
        config = route.config
        timezone = route.tenant.get("timezone") or "UTC"
        chosen = self.providers.for_call(config, timezone=timezone)
        for sub in chosen.substitutions:
            await session.emit(ProviderFailedOver(modality=sub.modality, from_provider=sub.wanted,
                                                  to_provider=sub.used, reason=sub.reason))
        secrets = self.control.credentials
        toolbox = CallToolBox.for_call(config, store=self.control.store, emit=session.emit, timezone=timezone,
                                       http=self._http, signing_secret=lambda t: secrets.secret(t, "tools"))
        return Conversation(session, stt=chosen.stt, llm=chosen.llm, tts=chosen.tts, transport=transport,
                            settings=ConversationSettings.from_route(route, **overrides),
                            vad=default_vad(transport.rate), toolbox=toolbox, metrics=self.metrics)

"""ControlPlane: opens the store and secrets from settings and bundles the services."""

from __future__ import annotations

from runtime.config import Settings
from runtime.control.agents import AgentService
from runtime.control.bookings import BookingReadService
from runtime.control.callbacks import CallbackPolicy, CallbackService
from runtime.control.calls import CallReadService
from runtime.control.credentials import CredentialService
from runtime.control.keys import KeyService
from runtime.control.numbers import NumberService
from runtime.control.rollouts import RolloutService
from runtime.control.secret_values import open_secret_store
from runtime.control.tenants import TenantService
from runtime.control.voices import VoiceProfileService
from runtime.control.webhooks import WebhookService
from runtime.egress.policy import EgressPolicy
from runtime.events.recorder import EventRecorder
from runtime.secrets import SecretStore
from runtime.store import migrate as migrations
from runtime.store.base import open_database
from runtime.store.store import Store


class ControlPlane:
    def __init__(self, store: Store, secrets: SecretStore, egress: EgressPolicy | None = None,
                 callbacks: CallbackPolicy | None = None) -> None:
        self.store = store
        self.secrets = secrets
        # Where tenants' URLs may point (security.egress); the strictest policy unless given.
        self.egress = egress or EgressPolicy()
        # Events of the control plane (an agent promoted, a rollout reverted); the runtime sets its bus.
        self.events = EventRecorder()
        self.tenants = TenantService(store, secrets)
        self.keys = KeyService(store)
        self.agents = AgentService(store, self.egress, self.events)
        self.rollouts = RolloutService(store, self.events)
        self.voices = VoiceProfileService(store)
        self.numbers = NumberService(store)
        self.credentials = CredentialService(store, secrets, self.egress)
        self.webhooks = WebhookService(store, secrets, self.egress)
        self.calls = CallReadService(store)
        self.callbacks = CallbackService(store, policy=callbacks)
        self.bookings = BookingReadService(store)

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> ControlPlane:
        db = open_database(
            settings.database_url,
            readers=settings.database.sqlite_readers,
            pool_min=settings.database.pool_min,
            pool_max=settings.database.pool_max,
        )
        await db.connect()
        try:
            if migrate:
                await migrations.migrate(db)
            secrets = open_secret_store(settings, db)
        except BaseException:
            await db.close()
            raise
        return cls(Store(db), secrets, settings.security.egress.policy,
                   CallbackPolicy.from_settings(settings.callbacks))

    async def close(self) -> None:
        await self.store.db.close()

"""The runtime's signing keys, derived from the master key.

Each purpose gets its own key (runtime.secrets.derive_key: HKDF-SHA256 with a label per purpose), so
a key leaked from one use says nothing about another, and every instance holding the operator's one master key
derives the same keys: a browser token minted by one instance verifies on any other, and on the
same instance after a restart.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.secrets import SecretsError, derive_key, read_master_key

if TYPE_CHECKING:
    from runtime.config import Settings

log = logging.getLogger("voicectl.keys")

KEY_BYTES = 32
# The derivation labels: one per purpose, never reused for another.
BROWSER_TOKENS = "browser tokens"
STREAM_TOKENS = "stream tokens"
OUTBOUND_REFS = "twilio outbound call refs"


@dataclass(frozen=True, slots=True)
class SigningKeys:
    browser_tokens: bytes
    stream_tokens: bytes
    outbound_refs: bytes  # the ``ref`` in the voice Url of an outbound Twilio call
    from_master_key: bool = True

    @classmethod
    def derive(cls, master_key: str) -> SigningKeys:
        return cls(derive_key(master_key, BROWSER_TOKENS), derive_key(master_key, STREAM_TOKENS),
                   derive_key(master_key, OUTBOUND_REFS))

    @classmethod
    def per_process(cls) -> SigningKeys:
        """Random keys: tokens die with the process (a box whose secrets live in an OS keyring and
        that has no master key)."""
        return cls(secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES),
                   from_master_key=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningKeys:
        """Derived from the master key ($VOICECTL_MASTER_KEY or the master-key file). Without one a
        single runtime falls back to per-process keys; in cluster mode SecretsError (every instance
        must accept every other's tokens)."""
        try:
            return cls.derive(read_master_key(settings.master_key_path))
        except SecretsError as exc:
            if settings.cluster_mode:
                raise SecretsError(f"cluster mode needs the master key on every instance: {exc}") from None
            log.warning("no master key: browser tokens are signed with a per-process key and a restart "
                        "invalidates them", extra={"error": str(exc)})
            return cls.per_process()

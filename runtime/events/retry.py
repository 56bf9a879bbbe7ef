"""When a failed webhook delivery is tried again, and when it is given up.

Time is the stop rule: a delivery is retried until ``retry_for_s`` after its retries began (the
event, or its redelivery), so a receiver may be down that long without losing an event; the
last attempt falls on the deadline. ``attempts`` is an optional cap on top. Waits are exponential
backoff with full jitter: uniform over 0 .. min(cap, first * 2^(n-1)); ``Retry-After`` (429/503)
replaces the jitter, still capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.config import WebhookDeliverySettings

# 2^62 s is far beyond any cap; a larger exponent would only overflow the float conversion.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class RetryPolicy:
    retry_for_s: float
    backoff_cap_s: float
    attempts: int | None = None
    first_delay_s: float = 1.0

    @classmethod
    def from_settings(cls, config: WebhookDeliverySettings, first_delay_s: float = 1.0) -> RetryPolicy:
        return cls(config.retry_for_s, config.backoff_cap_s, config.attempts, first_delay_s)

    def backoff(self, attempt: int, jitter: float, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based); ``jitter`` is uniform in [0, 1)."""
        if retry_after is not None:
            return min(self.backoff_cap_s, retry_after)
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return jitter * min(self.backoff_cap_s, self.first_delay_s * 2**exponent)

    def next_delay(self, attempt: int, elapsed_s: float, jitter: float,
                   retry_after: float | None = None) -> float | None:
        """Seconds until the attempt after failed ``attempt``, ``elapsed_s`` after the retries
        began; None when the delivery is given up."""
        if self.attempts is not None and attempt >= self.attempts:
            return None
        left = self.retry_for_s - elapsed_s
        if left <= 0:
            return None
        return min(self.backoff(attempt, jitter, retry_after), left)

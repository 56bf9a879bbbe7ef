"""What a webhook redelivery selects: one event, the deliveries since a time, or the failed ones.

Shared by ``POST /api/v1/webhooks/{id}/redeliver`` and ``voicectl webhook redeliver``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import Field, field_validator, model_validator

from runtime.control.schemas import Input

_DURATION = re.compile(r"(?:\d{1,9}\s*[smhdw]\s*)+")
_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
SINCE_HELP = "expected an ISO-8601 time (e.g. 2025-01-31T08:00:00Z; no zone: UTC) or a duration before now (2h, 30m, 1d)"


def parse_since(value: str, now: datetime | None = None) -> str:
    """``value`` (ISO-8601, or a duration such as 2h, 30m, 1d, 1h30m before ``now``) as a stored
    timestamp (fixed-width ISO-8601 UTC)."""
    text = value.strip()
    try:
        if _DURATION.fullmatch(text):
            seconds = sum(int(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
            when = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        else:
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{value!r} is not a time: {SINCE_HELP}") from None
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class WebhookRedeliver(Input):
    """Exactly one of ``event_id``, ``since`` or ``failed: true``."""

    event_id: str | None = Field(None, min_length=1, max_length=100, description="one event's delivery")
    since: str | None = Field(None, description="deliveries created at or after this time: ISO-8601 (no zone: UTC) "
                                                "or a duration before now such as 2h, 30m, 1d")
    failed: bool = Field(False, description="every delivery that failed for good, was skipped or is held")

    @field_validator("since")
    @classmethod
    def _since(cls, value: str | None) -> str | None:
        return None if value is None else parse_since(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> WebhookRedeliver:
        chosen = [self.event_id is not None, self.since is not None, self.failed]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of event_id, since, failed (true)")
        return self

"""Identifiers and timestamps shared by every plane."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """A prefixed random id such as ``ten_4k2j...``: 80 bits, readable in logs."""
    raw = secrets.randbits(80)
    chars = []
    for _ in range(16):
        raw, digit = divmod(raw, 36)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"


def now_iso() -> str:
    """UTC timestamp with a fixed width so strings sort like times in both backends."""
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"  # as strftime("...%S.%fZ"), faster


def parse_iso(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    """``moment`` as the store's fixed-width UTC timestamp (what now_iso gives for now)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

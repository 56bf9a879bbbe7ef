"""Page parameters and the list envelope {"items", "total", "limit", "offset"}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from runtime.control.errors import BadRequest

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_OFFSET = 2**63 - 1  # the largest OFFSET both backends take


@dataclass(frozen=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(cls, limit: Any = None, offset: Any = None) -> PageRequest:
        try:
            lim = DEFAULT_LIMIT if limit in (None, "") else int(limit)
            off = 0 if offset in (None, "") else int(offset)
        except (TypeError, ValueError):
            raise BadRequest("limit and offset must be integers", {"limit": limit, "offset": offset}) from None
        if not 1 <= lim <= MAX_LIMIT or not 0 <= off <= MAX_OFFSET:
            # The raw values: a parsed int beyond 64 bits cannot be serialised into the error body.
            raise BadRequest(f"limit must be 1..{MAX_LIMIT} and offset 0..{MAX_OFFSET}",
                             {"limit": limit, "offset": offset})
        return cls(lim, off)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [i.to_dict() if hasattr(i, "to_dict") else i for i in self.items],
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
        }

"""The sample restaurant pack: check_availability, create_booking, create_order.

The runtime answers these itself, from the ``bookings`` and ``orders`` tables, scoped to the
calling tenant. The capacity model is deliberately simple (``BookingPolicy``): the day is cut into
30-minute slots from opening until the last seating; each slot has a fixed number of tables; a
booking holds one table of the slot its time falls in, whatever the party size (up to
``max_party``). Times are the tenant's local time; dates are ISO (YYYY-MM-DD).
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from runtime.ids import new_id, now_iso
from runtime.providers.base import ToolSpec
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.builtin import error_result, obj

# Menu of the sample pack: name -> price in cents.
MENU: dict[str, int] = {
    "margherita": 1100,
    "marinara": 950,
    "diavola": 1300,
    "quattro formaggi": 1350,
    "garlic bread": 550,
    "tiramisu": 650,
    "lemonade": 350,
}
CURRENCY = "USD"
MAX_ORDER_LINES = 20
MAX_QTY = 20
# Without 0/O and 1/I: a reference is read out over the phone.
_REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_INSERT_ATTEMPTS = 12


@dataclass(frozen=True, slots=True)
class BookingPolicy:
    opens: str = "17:00"
    closes: str = "23:00"  # the last seating is one slot before
    slot_minutes: int = 30
    tables_per_slot: int = 10
    max_party: int = 8
    alternatives: int = 3

    def slots(self) -> list[str]:
        start, end = _minutes(self.opens), _minutes(self.closes)
        return [_hhmm(m) for m in range(start, end, self.slot_minutes)]

    def slot_of(self, hhmm: str) -> str:
        m = _minutes(hhmm)
        return _hhmm(m - (m - _minutes(self.opens)) % self.slot_minutes)

    @property
    def hours_text(self) -> str:
        return f"open {self.opens}-{self.closes}, last seating {self.slots()[-1]}"


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def new_reference() -> str:
    return "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(6))


class BadInput(ValueError):
    """An argument the model sent is unusable; its message goes back to the model."""


def parse_day(value: Any) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise BadInput(f"date {value!r} is not a date like 2025-06-01") from None


def parse_time(value: Any) -> str:
    match = _HHMM.match(str(value).strip())
    if not match:
        raise BadInput(f"time {value!r} is not a 24-hour time like 19:30")
    return f"{int(match[1]):02d}:{match[2]}"


@dataclass(slots=True)
class BookingPack:
    """The pack's shared state for one call: the store, the tenant's clock and the policy."""

    store: Store
    timezone: str = "UTC"
    policy: BookingPolicy = BookingPolicy()
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def now_local(self) -> datetime:
        return self.clock().astimezone(ZoneInfo(self.timezone)).replace(tzinfo=None)

    def tools(self) -> dict[str, Any]:
        return {"check_availability": CheckAvailability(self), "create_booking": CreateBooking(self),
                "create_order": CreateOrder(self)}

    async def taken(self, tenant_id: str, day: date) -> dict[str, set[int]]:
        """Slot -> table numbers booked on ``day`` (this tenant's bookings only)."""
        rows, _ = await self.store.bookings.list(
            tenant_id=tenant_id, equals={"day": day.isoformat(), "status": "confirmed"}, limit=100_000, count=False)
        out: dict[str, set[int]] = {}
        for row in rows:
            out.setdefault(row["slot"], set()).add(int(row["table_no"]))
        return out

    def _open_slots(self, day: date, taken: dict[str, set[int]]) -> list[str]:
        now = self.now_local()
        return [s for s in self.policy.slots()
                if datetime.combine(day, datetime.strptime(s, "%H:%M").time()) > now
                and len(taken.get(s, ())) < self.policy.tables_per_slot]

    async def availability(self, tenant_id: str, day: date, hhmm: str, party_size: int,
                           taken: dict[str, set[int]] | None = None) -> dict[str, Any]:
        """The check_availability answer; ``taken``: the day's booked tables, when already read."""
        policy = self.policy
        answer: dict[str, Any] = {"date": day.isoformat(), "time": hhmm, "party_size": party_size}
        if party_size > policy.max_party:
            return {**answer, "available": False, "reason": "party_too_large", "alternatives": [],
                    "message": f"bookings are for up to {policy.max_party} people; larger groups talk to staff"}
        now = self.now_local()
        if day < now.date():
            return {**answer, "available": False, "reason": "past", "alternatives": [],
                    "message": "that date has passed"}
        if taken is None:
            taken = await self.taken(tenant_id, day)
        free = self._open_slots(day, taken)
        slot = policy.slot_of(hhmm) if policy.opens <= hhmm < policy.closes else None
        if slot is not None and slot in free:
            left = policy.tables_per_slot - len(taken.get(slot, ()))
            return {**answer, "available": True, "tables_left": left, "alternatives": []}
        if slot is None:
            reason, message = "closed", f"we are {policy.hours_text}"
        elif datetime.combine(day, datetime.strptime(slot, "%H:%M").time()) <= now:
            reason, message = "past", "too late to book that time"
        else:
            reason, message = "full", f"no table left at {hhmm} on {day.isoformat()}"
        target = _minutes(hhmm)
        nearest = sorted(free, key=lambda s: (abs(_minutes(s) - target), s))[: policy.alternatives]
        return {**answer, "available": False, "reason": reason, "message": message, "alternatives": sorted(nearest)}


def _booking_args(arguments: dict[str, Any]) -> tuple[date, str, int]:
    day, hhmm = parse_day(arguments["date"]), parse_time(arguments["time"])
    party_size = int(arguments["party_size"])
    if party_size < 1:
        raise BadInput("party_size must be at least 1")
    return day, hhmm, party_size


_WHEN = {
    "date": {"type": "string", "description": "the day, YYYY-MM-DD, in the restaurant's time zone"},
    "time": {"type": "string", "description": "24-hour local time, HH:MM, e.g. 19:30"},
    "party_size": {"type": "integer", "description": "number of people, at least 1"},
}


@dataclass(slots=True)
class CheckAvailability:
    pack: BookingPack
    timeout_s: float = 5.0

    @property
    def spec(self) -> ToolSpec:
        p = self.pack.policy
        return ToolSpec(
            "check_availability",
            f"Check whether a table is free. The restaurant is {p.hours_text}; parties of up to {p.max_party}. "
            "Answers available true/false; when false, a reason (full, closed, past, party_too_large) and up "
            "to three alternative times that day. Check before offering to book.",
            obj(_WHEN, ("date", "time", "party_size")),
        )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            day, hhmm, party_size = _booking_args(arguments)
        except BadInput as exc:
            return error_result(str(exc))
        return ToolResult(await self.pack.availability(ctx.tenant_id, day, hhmm, party_size))


@dataclass(slots=True)
class CreateBooking:
    pack: BookingPack
    timeout_s: float = 5.0

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            "create_booking",
            "Book a table once the caller has agreed to the date, time and party size (check availability "
            "first). Answers a booking reference of six letters and digits: read it out to the caller. "
            "Without a name the booking is kept under the caller's number.",
            obj({
                **_WHEN,
                "name": {"type": "string", "description": "the name for the booking, if the caller gave one"},
                "phone": {"type": "string", "description": "a contact number, if different from the caller's"},
            }, ("date", "time", "party_size")),
        )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            day, hhmm, party_size = _booking_args(arguments)
        except BadInput as exc:
            return error_result(str(exc))
        pack, policy = self.pack, self.pack.policy
        name = str(arguments.get("name") or "").strip()[:100] or None
        phone = str(arguments.get("phone") or "").strip()[:32] or ctx.caller
        for _ in range(_INSERT_ATTEMPTS):
            taken = await pack.taken(ctx.tenant_id, day)
            check = await pack.availability(ctx.tenant_id, day, hhmm, party_size, taken)
            if not check["available"]:
                return error_result(f"not booked: {check['message']}", reason=check["reason"],
                                    alternatives=check["alternatives"])
            slot = policy.slot_of(hhmm)
            free = [n for n in range(1, policy.tables_per_slot + 1) if n not in taken.get(slot, set())]
            row = {
                "id": new_id("bkg"), "tenant_id": ctx.tenant_id, "call_id": ctx.call_id, "reference": new_reference(),
                "day": day.isoformat(), "time": hhmm, "slot": slot, "table_no": free[0], "party_size": party_size,
                "name": name, "phone": phone, "status": "confirmed", "created_at": now_iso(),
            }
            try:
                await pack.store.bookings.insert(row)
            except UniqueViolation:  # another call took that table (or, rarely, the reference): look again
                continue
            return ToolResult({
                "booking_id": row["id"], "reference": row["reference"], "date": row["day"], "time": hhmm,
                "party_size": party_size, "name": name or phone,
            })
        return error_result("not booked: the slot kept changing while booking; try again")


@dataclass(slots=True)
class CreateOrder:
    pack: BookingPack
    timeout_s: float = 5.0

    @property
    def spec(self) -> ToolSpec:
        menu = ", ".join(f"{name} ({cents / 100:.2f})" for name, cents in MENU.items())
        return ToolSpec(
            "create_order",
            f"Place a pickup order. Menu ({CURRENCY}): {menu}. Answers an order reference and the total: "
            "read both out to the caller.",
            obj({
                "items": {"type": "array", "description": "what to order", "items": obj({
                    "name": {"type": "string", "description": "a menu item"},
                    "qty": {"type": "integer", "description": "how many, 1 to 20"},
                }, ("name",))},
                "pickup_time": {"type": "string", "description": "24-hour local time HH:MM, if the caller said"},
                "name": {"type": "string", "description": "the caller's name, if given"},
            }, ("items",)),
        )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            lines = _order_lines(arguments["items"])
            pickup = parse_time(arguments["pickup_time"]) if arguments.get("pickup_time") else None
        except BadInput as exc:
            return error_result(str(exc), menu=list(MENU))
        total = sum(line["line_cents"] for line in lines)
        items = [{"name": line["name"], "qty": line["qty"]} for line in lines]
        row = {
            "id": new_id("ord"), "tenant_id": ctx.tenant_id, "call_id": ctx.call_id, "reference": new_reference(),
            "items": items, "total_cents": total, "currency": CURRENCY, "pickup_time": pickup,
            "name": str(arguments.get("name") or "").strip()[:100] or None, "phone": ctx.caller,
            "status": "placed", "created_at": now_iso(),
        }
        for _ in range(3):
            try:
                await self.pack.store.orders.insert(row)
                break
            except UniqueViolation:  # a reference already used by this tenant
                row["reference"] = new_reference()
        else:
            return error_result("the order could not be saved; try again")
        return ToolResult({
            "order_id": row["id"], "reference": row["reference"], "items": items,
            "total": f"{total / 100:.2f}", "currency": CURRENCY, "pickup_time": pickup,
        })


def menu_item(name: Any) -> str | None:
    key = " ".join(str(name).lower().split())
    for candidate in (key, key.removesuffix("s"), key.removesuffix("es")):
        if candidate in MENU:
            return candidate
    return None


def _order_lines(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise BadInput("items must be a non-empty list of {name, qty}")
    if len(items) > MAX_ORDER_LINES:
        raise BadInput(f"at most {MAX_ORDER_LINES} different items per order")
    counts: Counter[str] = Counter()
    for item in items:
        if not isinstance(item, dict):
            raise BadInput("each item is an object {name, qty}")
        name = menu_item(item.get("name", ""))
        if name is None:
            raise BadInput(f"{item.get('name')!r} is not on the menu")
        qty = item.get("qty", 1)
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise BadInput(f"qty of {name} must be a whole number from 1 to {MAX_QTY}")
        counts[name] += qty
    if any(qty > MAX_QTY for qty in counts.values()):
        raise BadInput(f"at most {MAX_QTY} of one item")
    return [{"name": n, "qty": q, "line_cents": MENU[n] * q} for n, q in counts.items()]

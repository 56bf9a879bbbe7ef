"""Toll-fraud bounds as functions: country codes, default prefixes, the tenant's day, start slots."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runtime.calls.dial_limits import OutboundPacer, allowed_prefixes, country_code, day_start, prefix_allowed
from runtime.calls.outbound import render


@pytest.mark.parametrize(("number", "code"), [
    ("+15550107000", "+1"), ("+74951234567", "+7"), ("+442071838750", "+44"), ("+4930123456", "+49"),
    ("+353112345678", "+353"), ("+97145551234", "+971"), ("+8613812345678", "+86"), ("+85221234567", "+852"),
    ("+27211234567", "+27"), ("+2341234567", "+234"),
])
def test_country_codes_are_the_prefix_free_itu_codes(number: str, code: str) -> None:
    assert country_code(number) == code


def test_default_prefixes_are_the_tenants_country_codes_and_configured_ones_replace_them() -> None:
    assert allowed_prefixes(None, ["+15550107000", "+15550107001", "+442071838750"]) == ["+1", "+44"]
    assert allowed_prefixes(None, []) == []  # no numbers: nowhere (and no from number either)
    assert allowed_prefixes(["+1415"], ["+442071838750"]) == ["+1415"]
    assert prefix_allowed("+14155550100", ["+1415"]) and not prefix_allowed("+18095550100", ["+1415"])


def test_the_day_starts_at_midnight_in_the_tenants_time_zone() -> None:
    now = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
    assert day_start("UTC", now) == "2026-03-01T00:00:00.000000Z"
    assert day_start("America/New_York", now) == "2026-02-28T05:00:00.000000Z"  # still the 28th there
    assert day_start("Asia/Tokyo", now) == "2026-02-28T15:00:00.000000Z"


def test_start_slots_hold_both_the_box_and_the_tenant_pace() -> None:
    now = [100.0]
    pacer = OutboundPacer(box_cps=2, tenant_cps=1, clock=lambda: now[0])
    assert [pacer.reserve("a") for _ in range(3)] == [100.0, 101.0, 102.0]  # a tenant: 1 per second
    assert pacer.reserve("b") == 102.5  # the box: 2 per second, after a's slots
    now[0] = 200.0
    assert (pacer.reserve("c"), pacer.reserve("d"), pacer.reserve("c")) == (200.0, 200.5, 201.0)


def test_variables_fill_placeholders_and_missing_ones_say_nothing() -> None:
    assert render("Hi {{ name }}, table for {{party}}.", {"name": "Ada", "party": 2}) == "Hi Ada, table for 2."
    assert render("Hi {{name}}{{title}}.", {"name": "Bo"}) == "Hi Bo."
    assert render("Confirmed: {{ok}}", {"ok": True}) == "Confirmed: yes"
    assert render("{{ not a name }} {x} {{1x}}", {}) == "{{ not a name }} {x} {{1x}}"
    assert render(None, {"a": 1}) is None

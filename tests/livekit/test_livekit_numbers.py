"""Dialled numbers as LiveKit SIP reports them: ``sip.trunkPhoneNumber`` is the raw user part of the
INVITE's To URI (livekit/protocol sip/sip.go), so carriers' variants reach the webhook as sent and
are read as E.164 before routing; national formats need the trunks' country."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError, build_settings
from runtime.telephony.livekit.numbers import caller_id, candidates
from tests.livekit.support import API_KEY, API_SECRET, NUMBER, start_world, stop_world


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("raw, country, first", [
    ("+15550107100", None, "+15550107100"),
    ("15550107100", None, "+15550107100"),  # the carrier dropped the "+"
    ("tel:+1-555-010-7100", None, "+15550107100"),
    ("sip:+15550107100@sip.carrier.example;user=phone", None, "+15550107100"),
    ("+1 (555) 010-7100", None, "+15550107100"),
    ("1.555.010.7100", None, "+15550107100"),
    ("(555) 010-7100", "US", "+15550107100"),
    ("5550107100", "us", "+15550107100"),
    ("15550107100", "US", "+15550107100"),
    ("011 44 20 7946 0000", "US", "+442079460000"),
    ("030 1234567", "DE", "+49301234567"),
    ("0049 30 1234567", "DE", "+49301234567"),
    ("4930123456", "DE", "+4930123456"),
    ("06 1234 5678", "IT", "+390612345678"),  # Italy keeps the 0 after the country code
    ("02 9374 4000", "AU", "+61293744000"),
])
def test_carrier_variants_read_as_e164(raw, country, first) -> None:
    assert candidates(raw, country)[0] == first


@pytest.mark.parametrize("raw", ["", "anonymous", "+", "12ab34", "sip:desk@pbx.example.com", "0" * 200, "+0123456789"])
def test_what_is_no_number_has_no_reading(raw) -> None:
    assert candidates(raw) == []


def test_a_national_number_without_a_country_is_read_as_international_only() -> None:
    assert candidates("(555) 010-7100") == ["+5550107100"]  # LiveKit's own NormalizeNumber reading
    assert candidates("(555) 010-7100", "US") == ["+15550107100", "+5550107100"]


def test_the_caller_id_is_e164_where_it_can_be_and_as_sent_otherwise() -> None:
    assert caller_id("15550109999") == "+15550109999"
    assert caller_id("anonymous") == "anonymous"
    assert caller_id(None) is None


def test_the_config_knows_the_countries_whose_numbering_plans_the_bridge_knows() -> None:
    from runtime.config import TRUNK_COUNTRIES
    from runtime.telephony.livekit.numbers import COUNTRIES

    assert set(COUNTRIES) == TRUNK_COUNTRIES


def test_an_unknown_default_country_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown country 'XX'"):
        build_settings({"telephony": {"livekit": {"default_country": "XX"}}}, tmp_path)
    assert build_settings({"telephony": {"livekit": {"default_country": "de"}}},
                          tmp_path).telephony.livekit.default_country == "DE"


# Against the runtime: the call is routed to the tenant's number whatever form the carrier used.


@pytest.mark.parametrize("dialled", ["15550107100", "tel:+1-555-010-7100", "sip:+15550107100@sip.carrier.example",
                                     "+1 (555) 010-7100", "(555) 010-7100", "555.010.7100"])
async def test_carrier_variants_of_the_dialled_number_route_to_the_tenants_number(settings, dialled) -> None:
    world = await start_world(settings, room_double=True, livekit={"default_country": "US"})
    try:
        status, data = await world.sip_joins("variant-room", "sip_v", dialled=dialled, caller="15550109999")
        assert status == 200 and data["call_id"], data
        row = await world.api.control.store.voice_calls.get(data["call_id"], tenant_id=world.tenant_id)
        assert (row["to_number"], row["from_number"], row["agent_id"]) == (NUMBER, "+15550109999", world.agent_id)
        assert row["number_id"] is not None
    finally:
        await stop_world(world)


async def test_the_tenants_livekit_credential_names_its_trunks_country(settings) -> None:
    world = await start_world(settings, room_double=True)  # no default country
    try:
        status, data = await world.sip_joins("no-country", "sip_n", dialled="(555) 010-7100")
        assert status == 404 and data["details"]["number"] == "+5550107100", data  # unreadable as national
        status, body, _ = await world.api.call(
            "PUT", "/api/v1/credentials/livekit", world.api.admin_key, tenant_id=world.tenant_id,
            json={"fields": {"url": world.peer.url, "api_key": API_KEY, "country": "US"}, "secret": API_SECRET})
        assert status == 200, body
        status, data = await world.sip_joins("with-country", "sip_c", dialled="(555) 010-7100")
        assert status == 200 and data["call_id"], data
        await world.sip_leaves("with-country", "sip_c")
        row = await world.final(data["call_id"])
        assert row["to_number"] == NUMBER and row["summary"]["livekit"]["dialled"] == "(555) 010-7100"
    finally:
        await stop_world(world)

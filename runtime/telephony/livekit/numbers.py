"""Dialled numbers as LiveKit SIP reports them -> E.164 candidates for routing.

``sip.trunkPhoneNumber`` is the raw user part of the INVITE's ``To`` URI (livekit/protocol
sip/sip.go: ``attrs[livekit.AttrSIPTrunkNumber] = call.To.User``): LiveKit only normalises numbers
to match trunks (livekit/protocol livekit/sip.go ``NormalizeNumber``: drop `` -()``, add a leading
``+``), never the attribute. Carriers send "+15550107100", "15550107100", "5550107100", visual
separators (RFC 3966: ``-.()``), or a national number with its trunk prefix ("030 1234567").
Routing needs exact E.164, so ``candidates`` lists every reading of a raw number, most likely
first; the caller routes the first that is a known number. A national number (no ``+``, no
country code) is only read with a country: the LiveKit project's (credential field ``country``)
or ``telephony.livekit.default_country``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
SEPARATORS = re.compile(r"[\s\-.()/]")  # RFC 3966 visual separators, and spaces
MAX_RAW = 128


@dataclass(frozen=True)
class Country:
    code: str  # the country calling code, digits
    trunk: str  # the national (trunk) prefix dropped after the code ("" where none is dialled)
    idd: str  # the international call prefix dialled from this country


# ISO 3166 alpha-2 -> numbering plan (ITU-T E.164 assignments and national plans).
COUNTRIES: dict[str, Country] = {
    "US": Country("1", "1", "011"), "CA": Country("1", "1", "011"), "PR": Country("1", "1", "011"),
    "GB": Country("44", "0", "00"), "IE": Country("353", "0", "00"), "DE": Country("49", "0", "00"),
    "AT": Country("43", "0", "00"), "CH": Country("41", "0", "00"), "FR": Country("33", "0", "00"),
    "BE": Country("32", "0", "00"), "NL": Country("31", "0", "00"), "LU": Country("352", "", "00"),
    "ES": Country("34", "", "00"), "PT": Country("351", "", "00"), "IT": Country("39", "", "00"),
    "DK": Country("45", "", "00"), "NO": Country("47", "", "00"), "SE": Country("46", "0", "00"),
    "FI": Country("358", "0", "00"), "PL": Country("48", "", "00"), "CZ": Country("420", "", "00"),
    "GR": Country("30", "", "00"), "TR": Country("90", "0", "00"), "IL": Country("972", "0", "00"),
    "AE": Country("971", "0", "00"), "ZA": Country("27", "0", "00"), "IN": Country("91", "0", "00"),
    "SG": Country("65", "", "000"), "HK": Country("852", "", "001"), "JP": Country("81", "0", "010"),
    "AU": Country("61", "0", "0011"), "NZ": Country("64", "0", "00"), "MX": Country("52", "", "00"),
    "BR": Country("55", "0", "00"),
}


def country(name: str | None) -> Country | None:
    return COUNTRIES.get(name.upper()) if name else None


def check_country(name: str | None) -> str | None:
    """``name`` upper-cased, or ValueError naming the countries known."""
    if name is None:
        return None
    if name.upper() not in COUNTRIES:
        raise ValueError(f"unknown country {name!r}; known: {', '.join(sorted(COUNTRIES))}")
    return name.upper()


def _user_part(raw: str) -> str:
    """The number in ``raw``: a ``tel:``/``sip:``/``sips:`` URI's user part without parameters."""
    text = raw.strip().strip("<>")
    lowered = text.lower()
    for scheme in ("tel:", "sips:", "sip:"):
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            break
    text = text.split("@", 1)[0]
    return text.split(";", 1)[0]


def candidates(raw: str, country_name: str | None = None) -> list[str]:
    """Every E.164 reading of ``raw``, most likely first; [] when it is no phone number."""
    if not raw or len(raw) > MAX_RAW:
        return []
    number = SEPARATORS.sub("", _user_part(raw))
    plus = number.startswith("+")
    digits = number[1:] if plus else number
    if not digits.isdigit():
        return []
    found: list[str] = []
    if plus:
        found.append("+" + digits)
    else:
        plan = country(country_name)
        if plan is not None:
            if digits.startswith(plan.idd):
                found.append("+" + digits[len(plan.idd):])
            if plan.code == "1" and len(digits) == 10:  # NANP: ten digits without the leading 1
                found.append("+1" + digits)
            elif plan.trunk and digits.startswith(plan.trunk):
                found.append("+" + plan.code + digits[len(plan.trunk):])
        found.append("+" + digits)  # the country code without its "+" (what LiveKit's NormalizeNumber assumes)
        if plan is not None and not plan.trunk:
            found.append("+" + plan.code + digits)  # a national number where no trunk prefix is dialled
    unique: list[str] = []
    for item in found:
        if E164.match(item) and item not in unique:
            unique.append(item)
    return unique


def caller_id(raw: str | None, country_name: str | None = None) -> str | None:
    """The caller's number for the call row: its first E.164 reading, else as sent (e.g. "anonymous")."""
    if not raw:
        return None
    found = candidates(raw, country_name)
    return found[0] if found else raw[:64]

"""The egress policy: which URLs a tenant may store and which addresses a connection may use."""

from __future__ import annotations

import ipaddress

import pytest

from runtime.config import ConfigError, build_settings
from runtime.egress.policy import (
    REFUSED,
    WEB_AND_SOCKETS,
    EgressPolicy,
    EgressRefused,
    UrlRefused,
    ip_literal,
    refused,
)

STRICT = EgressPolicy()

# Every spelling of a denied address the issue names, and the ones the system resolver also takes.
DENIED_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:5432/",
    "http://127.1/",  # short form
    "http://127.0.1/",
    "http://2130706433/",  # decimal
    "http://0x7f000001/",  # hex
    "http://0x7f.1/",
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",
    "http://127.000.000.001/",
    "http://0/",
    "http://0.0.0.0:8080/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://100.100.100.200/",  # Alibaba metadata
    "http://224.0.0.1/",  # multicast
    "http://255.255.255.255/",
    "http://localhost/",
    "http://localhost:5432/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://metadata/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",  # the name clients send is "localhost"
    "http://１２７．０．０．１/",  # fullwidth digits and dots: 127.0.0.1
]


@pytest.mark.parametrize("url", DENIED_URLS)
def test_denied_destinations_are_refused_when_stored(url):
    with pytest.raises(UrlRefused):
        STRICT.check_url(url, WEB_AND_SOCKETS)


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/voice",
    "http://93.184.216.34:8080/x",
    "https://[2606:4700::1111]/",
    "wss://api.elevenlabs.io",
    "http://8.8.8.8/",
    "https://münchen.example/",
])
def test_public_destinations_may_be_stored(url):
    assert STRICT.check_url(url, WEB_AND_SOCKETS) == url


@pytest.mark.parametrize(("url", "words"), [
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com:70/_x", "scheme 'gopher'"),
    ("ftp://example.com/", "scheme 'ftp'"),
    ("example.com/hook", "scheme none"),
    ("https://user:pass@example.com/", "user name or password"),
    ("https://token@example.com/", "user name or password"),
    ("http://127.0.0.1\\@example.com/", "backslashes"),
    ("http://example.com:99999/", "port"),
    ("http://example.com:0/", "port"),
    ("http:///nohost", "no host"),
    ("http://%31%32%37.0.0.1/", "not a valid host name"),
])
def test_the_form_of_a_url(url, words):
    with pytest.raises(UrlRefused, match=words):
        STRICT.check_url(url)


def test_websocket_schemes_only_where_asked():
    with pytest.raises(UrlRefused, match="expected http or https"):
        STRICT.check_url("wss://example.com/")
    assert STRICT.check_url("wss://example.com/", WEB_AND_SOCKETS)


@pytest.mark.parametrize(("host", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"), ("example.com", None), ("cafe", None), ("1.2.3.4 x", None),
])
def test_ip_literals_in_every_spelling_the_resolver_takes(host, address):
    found = ip_literal(host)
    assert (str(found) if found is not None else None) == address


def test_connect_time_check_of_the_address_a_name_resolved_to():
    assert STRICT.permits("hooks.example.com", 443, "93.184.216.34")
    assert not STRICT.permits("rebind.example.com", 443, "127.0.0.1")
    assert not STRICT.permits("rebind.example.com", 443, "::ffff:10.0.0.1")
    assert not STRICT.permits("localhost", 80, "93.184.216.34")  # a local name, wherever it resolves
    assert not STRICT.permits("x.example.com", 80, "not an address")


def test_the_allow_list_opens_exactly_what_it_names():
    policy = EgressPolicy.from_entries(["10.1.2.0/24", "localhost:8080", "[::1]:9000", "127.0.0.1:11434"])
    assert policy.check_url("http://10.1.2.3:9/")
    assert policy.check_url("http://localhost:8080/")
    assert policy.check_url("http://[::1]:9000/")
    assert policy.check_url("http://127.1:11434/v1")  # the same address, another spelling
    for url in ("http://10.1.3.1/", "http://localhost:8081/", "http://[::1]:9001/", "http://127.0.0.1:11435/",
                "http://127.0.0.2:11434/"):
        with pytest.raises(UrlRefused):
            policy.check_url(url)
    assert policy.permits("minio.internal", 9000, "10.1.2.7")  # in the network, any name and port
    assert not policy.permits("minio.internal", 9000, "10.1.3.7")
    assert policy.permits("localhost", 8080, "127.0.0.1")
    assert not policy.permits("localhost", 8081, "127.0.0.1")


def test_refusals_say_nothing_about_the_target():
    error = EgressRefused()
    assert str(error) == REFUSED and isinstance(error, OSError)
    try:
        try:
            raise error
        except OSError as inner:
            raise RuntimeError("Cannot connect to host 127.0.0.1:5432") from inner
    except RuntimeError as outer:
        assert refused(outer)
    assert not refused(ConnectionRefusedError(111, "refused"))


def test_security_egress_allow_in_the_config(tmp_path):
    settings = build_settings({"security": {"egress": {"allow": ["10.0.0.0/8", "127.0.0.1", "MinIO.lan:9000",
                                                                  "[::1]:80"]}}}, tmp_path)
    assert settings.security.egress.allow == ["10.0.0.0/8", "127.0.0.1/32", "minio.lan:9000", "[::1]:80"]
    policy = settings.security.egress.policy
    assert ipaddress.ip_network("10.0.0.0/8") in policy.networks and ("minio.lan", 9000) in policy.endpoints
    assert build_settings({}, tmp_path).security.egress.policy == STRICT
    for bad in ("10.0.0.0/33", "example.com", "host:http", "host:70000", "bad host:80"):
        with pytest.raises(ConfigError, match="security.egress.allow"):
            build_settings({"security": {"egress": {"allow": [bad]}}}, tmp_path)

"""The CLI's outbound settings: a tenant's prefixes and daily cap, an agent's voicemail message."""

from __future__ import annotations

from tests.cli.test_cli import Cli, cli, ready  # noqa: F401 - the fixtures

__all__ = ["cli", "ready"]


def test_tenant_outbound_settings_and_the_agents_voicemail_message(ready: Cli) -> None:
    tenant = ready.json("tenant", "show", "acme")
    assert (tenant["outbound_allowed_prefixes"], tenant["max_outbound_per_day"]) == (None, 100)
    tenant = ready.json("tenant", "update", "acme", "--outbound-prefix", "+1 415", "--outbound-prefix", "+44",
                        "--max-outbound-per-day", "20")
    assert (tenant["outbound_allowed_prefixes"], tenant["max_outbound_per_day"]) == (["+1415", "+44"], 20)
    tenant = ready.json("tenant", "update", "acme", "--default-outbound-prefixes")
    assert tenant["outbound_allowed_prefixes"] is None and tenant["max_outbound_per_day"] == 20
    assert "not a dialling prefix" in ready("tenant", "update", "acme", "--outbound-prefix", "44", code=2).stderr
    ready("tenant", "update", "acme", "--outbound-prefix", "+44", "--default-outbound-prefixes", code=2)
    made = ready.json("tenant", "create", "calls-out", "--outbound-prefix", "+49", "--max-outbound-per-day", "0")
    assert (made["outbound_allowed_prefixes"], made["max_outbound_per_day"]) == (["+49"], 0)
    agent = ready.json("agent", "update", "sales", "--tenant", "acme", "--voicemail-message",
                       "Hi {{name}}, call us back.")
    draft = ready.json("agent", "versions", "sales", "--tenant", "acme")["items"][-1]
    assert agent["latest_version"] == 2 and draft["config"]["voicemail_message"] == "Hi {{name}}, call us back."


def test_calls_list_filters_by_direction(ready: Cli) -> None:
    assert ready.json("calls", "list", "--tenant", "acme", "--direction", "outbound")["items"] == []
    assert "direction must be inbound or outbound" in ready("calls", "list", "--tenant", "acme", "--direction",
                                                            "sideways", code=2).stderr

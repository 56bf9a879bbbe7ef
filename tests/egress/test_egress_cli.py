"""The CLI writes tenants' URLs through the same check: a readable refusal, exit 2; `voicectl init`
writes no exception, and an operator adds one in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import Cli


def test_the_cli_refuses_denied_urls_and_init_allows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    cli = Cli(tmp_path / "conf" / "config.yaml")
    cli.json("init")
    assert "security" not in cli.config.read_text()
    cli.json("tenant", "create", "acme")
    hook = cli("webhook", "create", "--tenant", "acme", "--url", "http://2130706433:5432/", code=2)
    assert hook.stderr.startswith("error: url: 2130706433 is a loopback address (127.0.0.1);")
    model = cli("credential", "set", "--tenant", "acme", "openai", "--field", "base_url=http://[::1]:11434/v1",
                "--no-secret", code=2)
    assert model.stderr.startswith("error: fields.base_url: ::1 is a loopback address (::1);")
    # The operator opens one exception: exactly that one.
    monkeypatch.setenv("VOICECTL_SECURITY__EGRESS__ALLOW", "[127.0.0.1:11434]")
    cli("credential", "set", "--tenant", "acme", "openai", "--field", "base_url=http://127.0.0.1:11434/v1",
        "--no-secret")
    cli("credential", "set", "--tenant", "acme", "openai", "--field", "base_url=http://127.0.0.1:11435/v1",
        "--no-secret", code=2)

"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import Cli


@pytest.fixture
def cli(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """A config made by `voicectl init` (secrets in the encrypted file)."""
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    cli = Cli(tmp_path / "conf" / "config.yaml")
    cli.json("init")
    return cli

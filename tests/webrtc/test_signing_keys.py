"""Token keys derived from the master key: the same on every runtime that has it, one per purpose."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime.config import build_settings
from runtime.control.errors import Unauthorized
from runtime.secrets import SecretsError, write_master_key
from runtime.signing_keys import SigningKeys
from runtime.telephony.webrtc.tokens import BrowserGrant, BrowserTokens


def _grant() -> BrowserGrant:
    return BrowserGrant("ten_1", "key_1", None, "+15550100000", int(time.time()) + 60)


def test_two_runtimes_with_one_master_key_accept_each_others_browser_tokens(tmp_path: Path) -> None:
    first = build_settings({}, tmp_path / "a")
    write_master_key(first.master_key_path)
    second = build_settings({}, tmp_path / "b")
    second.master_key_path.parent.mkdir(parents=True, exist_ok=True)
    second.master_key_path.write_bytes(first.master_key_path.read_bytes())
    second.master_key_path.chmod(0o600)
    keys = SigningKeys.from_settings(first)
    assert keys == SigningKeys.from_settings(second)  # and the same after a restart
    assert keys.browser_tokens != keys.stream_tokens and keys.from_master_key
    token = BrowserTokens(keys.browser_tokens).mint(_grant())
    assert BrowserTokens(SigningKeys.from_settings(second).browser_tokens).verify(token).tenant_id == "ten_1"

    other = build_settings({}, tmp_path / "c")
    write_master_key(other.master_key_path)  # another master key: another cluster
    with pytest.raises(Unauthorized):
        BrowserTokens(SigningKeys.from_settings(other).browser_tokens).verify(token)


def test_without_a_master_key_one_runtime_signs_per_process_and_a_cluster_refuses(tmp_path: Path) -> None:
    alone = build_settings({}, tmp_path)
    first, second = SigningKeys.from_settings(alone), SigningKeys.from_settings(alone)
    assert not first.from_master_key and first != second
    cluster = build_settings({"database": {"url": "postgresql://postgres@127.0.0.1:5432/test"},
                              "events": {"nats": {"url": "nats://127.0.0.1:4222"}}}, tmp_path)
    with pytest.raises(SecretsError, match="master key"):
        SigningKeys.from_settings(cluster)

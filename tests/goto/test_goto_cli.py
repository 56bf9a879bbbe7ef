"""`voicectl number add --provider goto` against a local GoTo peer and a live runtime on the same
database: the peer validates the webhook URL (OPTIONS) against the runtime, as GoTo does."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from runtime.config import load_settings
from tests.api.support import start_live_api, stop_live_api
from tests.cli.test_cli import Cli
from tests.goto.support import ACCOUNT_KEY, CLIENT_ID, REFRESH_TOKEN, GotoPeer, call_event


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest_asyncio.fixture
async def setup(tmp_path, monkeypatch):
    """An initialised config with tenant acme and agent sales, a GoTo peer and a runtime serving
    that config's database; the CLI is pointed at both through the environment."""
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    cli = Cli(tmp_path / "conf" / "config.yaml")
    await asyncio.to_thread(cli.json, "init")
    await asyncio.to_thread(cli.json, "tenant", "create", "acme")
    await asyncio.to_thread(cli.json, "agent", "create", "--tenant", "acme", "--name", "sales", "--prompt", "Sell.")
    peer = GotoPeer()
    await peer.start()
    monkeypatch.setenv("VOICECTL_SERVER__SHUTDOWN_GRACE_S", "0.2")  # live calls end at once on teardown
    api, runner = await start_live_api(load_settings(cli.config))
    monkeypatch.setenv("VOICECTL_SERVER__PUBLIC_URL", api.base_url)
    monkeypatch.setenv("VOICECTL_TELEPHONY__GOTO__API_BASE_URL", peer.url)
    monkeypatch.setenv("VOICECTL_TELEPHONY__GOTO__AUTH_URL", peer.token_url)
    try:
        yield cli, peer, api
    finally:
        await stop_live_api(api, runner)
        await peer.stop()


async def run(cli: Cli, *args: str, code: int = 0, input: str | None = None):
    return await asyncio.to_thread(cli, *args, code=code, input=input)


async def set_credential(cli: Cli, secret: str = REFRESH_TOKEN) -> None:
    await run(cli, "credential", "set", "--tenant", "acme", "goto", "--field", f"client_id={CLIENT_ID}",
              "--field", f"account_key={ACCOUNT_KEY}", input=secret + "\n")


ADD = ("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "goto")


async def stored(api) -> tuple[list, list]:
    numbers = await api.control.store.db.fetchall("SELECT e164 FROM phone_numbers")
    channels = await api.control.store.db.fetchall("SELECT status, channel_id FROM goto_channels")
    return [r["e164"] for r in numbers], channels


async def test_missing_credential_and_public_url_are_readable_errors(setup, monkeypatch) -> None:
    cli, peer, api = setup
    result = await run(cli, *ADD, "+15550108000", code=3)
    assert result.stderr.startswith("error: this tenant has no goto credential: set it with `voicectl credential set")
    await set_credential(cli)
    monkeypatch.delenv("VOICECTL_SERVER__PUBLIC_URL")
    result = await run(cli, *ADD, "+15550108000", code=5)
    assert result.stderr.startswith("error: server.public_url is not set: GoTo must be given")
    assert await stored(api) == ([], [])
    assert peer.requests == [] and peer.token_requests == []


@pytest.mark.parametrize("refusal, message", [
    ({"subscription": (403, {"errorCode": "FORBIDDEN", "message": "missing scope"})},
     "error: GoTo call-events subscription failed (HTTP 403): "),
    ({"channel": (500, {"errorCode": "INTERNAL"})}, "error: GoTo notification channel creation failed (HTTP 500): "),
    ({"token": (401, {"error": "invalid_client", "error_description": "Bad client"})},
     "error: GoTo OAuth token refresh failed (HTTP 401): invalid_client: Bad client"),
])
async def test_goto_refusals_exit_8_and_store_nothing(setup, refusal, message) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    peer.refuse.update(refusal)
    result = await run(cli, *ADD, "+15550108000", code=8)
    assert result.stderr.splitlines()[-1].startswith(message), result.stderr
    assert REFRESH_TOKEN not in result.output
    assert await stored(api) == ([], [])


async def test_number_add_registers_the_channel_once_and_calls_arrive(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    result = await run(cli, *ADD, "+15550108000", "--json")
    added = json.loads(result.stdout)
    assert added["e164"] == "+15550108000" and added["goto"]["registered"] is True
    assert added["goto"]["channel_id"].startswith("Webhook.")
    assert peer.validations == [200]  # GoTo's OPTIONS reached the runtime and the token was known
    assert "warning: server.public_url is not https" in result.stderr
    [url] = peer.webhook_urls
    assert url.startswith(api.base_url + "/webhooks/goto/")
    token = url.rsplit("/", 1)[1]
    assert token not in result.output and REFRESH_TOKEN not in result.output
    subscription = peer.calls_to("/call-events/v1/subscriptions")[0]["json"]
    assert subscription == {"channelId": added["goto"]["channel_id"],
                            "accountKeys": [{"id": ACCOUNT_KEY, "events": ["STARTING", "ACTIVE", "ENDING"]}]}

    # A call event at the registered URL opens a call in the runtime.
    status, body, _ = await api.call("POST", url.removeprefix(api.base_url),
                                     json=call_event("conv-cli", "STARTING", 1, dialled="+15550108000"))
    assert status == 200 and body["status"] == "opened", body

    # A second number reuses the channel: no new GoTo requests.
    before = len(peer.requests)
    result = await run(cli, *ADD, "+15550108001")
    assert "goto: the tenant's notification channel Webhook." in result.stdout
    assert "is already registered" in result.stdout
    assert len(peer.requests) == before

    # --goto-new-channel replaces it: the old URL is refused from then on.
    result = await run(cli, *ADD, "+15550108002", "--goto-new-channel")
    assert "goto: registered notification channel Webhook." in result.stdout
    assert len(peer.webhook_urls) == 2 and peer.webhook_urls[1] != url
    status, _, _ = await api.call("POST", url.removeprefix(api.base_url),
                                  json=call_event("conv-old", "STARTING", 1))
    assert status == 404
    numbers, channels = await stored(api)
    assert numbers == ["+15550108000", "+15550108001", "+15550108002"]
    assert [c["status"] for c in channels] == ["active"]


async def test_an_already_routed_number_is_refused_before_goto_is_asked(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    await run(cli, "number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio", "+15550108000")
    result = await run(cli, *ADD, "+15550108000", code=4)
    assert result.stderr == "error: +15550108000 is already routed\n"
    assert peer.token_requests == [] and peer.requests == []

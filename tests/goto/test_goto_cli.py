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
from tests.goto.support import (
    ACCOUNT_KEY,
    CLIENT_ID,
    CLIENT_SECRET,
    EXTENSION,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
    GotoPeer,
    call_event,
)


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
    monkeypatch.setenv("VOICECTL_TELEPHONY__GOTO__WEBRTC_BASE_URL", peer.url)
    monkeypatch.setenv("VOICECTL_TELEPHONY__GOTO__CLIENT_ID", CLIENT_ID)
    try:
        yield cli, peer, api
    finally:
        await stop_live_api(api, runner)
        await peer.stop()


async def run(cli: Cli, *args: str, code: int = 0, input: str | None = None):
    return await asyncio.to_thread(cli, *args, code=code, input=input)


async def set_credential(cli: Cli, secret: str = REFRESH_TOKEN) -> None:
    """The tenant's goto credential, and the appliance's OAuth client secret (as an operator sets them)."""
    await run(cli, "credential", "set", "--tenant", "acme", "goto", "--field", f"account_key={ACCOUNT_KEY}",
              "--field", f"organization_id={ORGANIZATION_ID}", "--field", f"extension={EXTENSION}",
              input=secret + "\n")
    result = await run(cli, "goto", "set-client-secret", input=CLIENT_SECRET)
    assert result.stdout == "stored the client secret of the appliance's GoTo OAuth client in the keyring\n"
    assert CLIENT_SECRET not in result.output


ADD = ("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "goto")


async def stored(api) -> tuple[list, list]:
    numbers = await api.control.store.db.fetchall("SELECT e164 FROM phone_numbers")
    channels = await api.control.store.db.fetchall("SELECT status, channel_id, device_id, extension FROM goto_channels")
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
    assert REFRESH_TOKEN not in result.output and CLIENT_SECRET not in result.output
    assert await stored(api) == ([], [])


async def test_a_refused_device_keeps_the_channel_and_the_next_try_completes_it(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    peer.refuse["extension"] = (403, {"errorCode": "FORBIDDEN", "message": "not an extension of this organization"})
    result = await run(cli, *ADD, "+15550108000", code=8)
    assert result.stderr.splitlines()[-1].startswith("error: GoTo web-call extension registration failed (HTTP 403)")
    numbers, [channel] = await stored(api)
    assert numbers == [] and channel["status"] == "active" and channel["device_id"] is None
    assert peer.devices == {}  # the device without its extension was deleted again
    del peer.refuse["extension"]
    await run(cli, *ADD, "+15550108000")
    numbers, [again] = await stored(api)
    assert numbers == ["+15550108000"] and again["channel_id"] == channel["channel_id"]
    assert peer.device_for(EXTENSION)[0] == again["device_id"] and len(peer.webhook_urls) == 1


async def test_refused_call_events_leave_the_number_working_through_the_device(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    peer.refuse["subscription"] = (403, {"errorCode": "FORBIDDEN", "message": "super admin required"})
    result = await run(cli, *ADD, "+15550108000")
    assert "warning: goto call events not subscribed (refused: GoTo call-events subscription failed (HTTP 403)" \
        in result.stderr
    assert f"in GoTo's admin, route the number to extension {EXTENSION}" in result.stdout
    numbers, [channel] = await stored(api)
    assert numbers == ["+15550108000"] and channel["device_id"] == peer.device_for(EXTENSION)[0]


async def test_client_secret_commands(setup) -> None:
    cli, peer, api = setup
    result = await run(cli, "goto", "set-client-secret", code=2, input="")
    assert result.stderr.startswith("error: no goto OAuth client secret given: pipe it on stdin")
    result = await run(cli, "goto", "set-client-secret", "--tenant", "acme", "--json", input="tenant-secret")
    data = json.loads(result.stdout)
    assert data["stored"] is True and data["ref"].endswith("/goto/client_secret") and "tenant-secret" not in result.output
    assert await api.control.secrets.get(data["ref"]) == "tenant-secret"
    result = await run(cli, "goto", "delete-client-secret", "--tenant", "acme")
    assert result.stdout.startswith("deleted the client secret of tenant ")
    assert await api.control.secrets.get(data["ref"]) is None


async def test_number_add_registers_the_channel_once_and_calls_arrive(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    result = await run(cli, *ADD, "+15550108000", "--json")
    added = json.loads(result.stdout)
    goto = added["goto"]
    assert added["e164"] == "+15550108000" and goto["registered"] is True and goto["call_events"] == "subscribed"
    assert goto["channel_id"].startswith("Webhook.")
    assert peer.validations == [200]  # GoTo's OPTIONS reached the runtime and the token was known
    assert "warning: server.public_url is not https" in result.stderr
    [url] = peer.webhook_urls
    assert url.startswith(api.base_url + "/webhooks/goto/")
    token = url.rsplit("/", 1)[1]
    assert token not in result.output and REFRESH_TOKEN not in result.output
    subscription = peer.calls_to("/call-events/v1/subscriptions")[0]["json"]
    assert subscription == {"channelId": goto["channel_id"],
                            "accountKeys": [{"id": ACCOUNT_KEY, "events": ["STARTING", "ACTIVE", "ENDING"]}]}
    device_id, device = peer.device_for(EXTENSION)
    assert (goto["device_id"], goto["extension"], goto["device_registered"]) == (device_id, EXTENSION, True)
    assert device["incoming"] == device["session"] == goto["channel_id"]

    # A call event at the registered URL opens a call in the runtime.
    status, body, _ = await api.call("POST", url.removeprefix(api.base_url),
                                     json=call_event("conv-cli", "STARTING", 1, company="+15550108000"))
    assert status == 200 and body["status"] == "opened", body

    # A second number reuses the channel and the device: no new GoTo requests.
    before = len(peer.requests)
    result = await run(cli, *ADD, "+15550108001")
    assert "goto: the tenant's notification channel Webhook." in result.stdout
    assert "is already registered" in result.stdout and f"extension {EXTENSION} already registered" in result.stdout
    assert len(peer.requests) == before

    # --goto-new-channel replaces it: a new channel and device; the old ones are deleted at GoTo,
    # and the old URL is refused from then on.
    result = await run(cli, *ADD, "+15550108002", "--goto-new-channel")
    assert "goto: registered notification channel Webhook." in result.stdout
    assert f"goto: deleted the old channel {goto['channel_id']} and its device at GoTo" in result.stdout
    assert len(peer.webhook_urls) == 2 and peer.webhook_urls[1] != url
    assert list(peer.channels) != [goto["channel_id"]] and len(peer.channels) == 1
    new_device, _ = peer.device_for(EXTENSION)
    assert new_device != device_id and list(peer.devices) == [new_device]
    status, _, _ = await api.call("POST", url.removeprefix(api.base_url),
                                  json=call_event("conv-old", "STARTING", 1))
    assert status == 404
    numbers, channels = await stored(api)
    assert numbers == ["+15550108000", "+15550108001", "+15550108002"]
    assert [(c["status"], c["device_id"]) for c in channels] == [("active", new_device)]

    # Removing the tenant's GoTo numbers: the last one takes the device with it.
    for number in ("+15550108000", "+15550108001"):
        result = await run(cli, "number", "remove", number, "--tenant", "acme")
        assert "web-call device" not in result.stdout
    result = await run(cli, "number", "remove", "+15550108002", "--tenant", "acme")
    assert f"goto: deleted the web-call device {new_device}" in result.stdout
    assert peer.devices == {}
    _, [channel] = await stored(api)
    assert channel["device_id"] is None and channel["status"] == "active"


async def test_an_already_routed_number_is_refused_before_goto_is_asked(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    await run(cli, "number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio", "+15550108000")
    result = await run(cli, *ADD, "+15550108000", code=4)
    assert result.stderr == "error: +15550108000 is already routed\n"
    assert peer.token_requests == [] and peer.requests == []


async def test_doctor_names_the_scopes_the_tenants_token_lacks(setup) -> None:
    cli, peer, api = setup
    await set_credential(cli)
    result = await run(cli, "doctor", "--tenant", "acme", "--json")
    [goto] = [r for r in json.loads(result.stdout)["providers"] if r["provider"] == "goto"]
    assert goto["ok"] is True and goto["missing_scopes"] == [] and goto["modality"] == "telephony"
    peer.scopes = "webrtc.v1.write call-events.v1.notifications.manage"
    result = await run(cli, "doctor", "--tenant", "acme", "--json", code=9)
    [goto] = [r for r in json.loads(result.stdout)["providers"] if r["provider"] == "goto"]
    assert goto["status"] == "missing scopes"
    assert goto["missing_scopes"] == ["call-events.v1.events.read", "webrtc.v1.read", "users.v1.lines.read"]
    assert REFRESH_TOKEN not in result.output and CLIENT_SECRET not in result.output

"""GoTo's OAuth and REST client against a local peer that follows the documented shapes."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from runtime.control.errors import NotFound
from runtime.control.schemas import CredentialSet, TenantCreate
from runtime.telephony.goto.api import (
    APPLIANCE_CLIENT_SECRET_REF,
    EXPIRY_MARGIN_S,
    GotoAccount,
    GotoApi,
    GotoApiError,
    OAuthClient,
    TokenCache,
    open_account,
    tenant_client_secret_ref,
)
from tests.api.support import with_overrides
from tests.goto.support import (
    ACCOUNT_KEY,
    CLIENT_ID,
    CLIENT_SECRET,
    EXTENSION,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
    goto_settings,
)

FIELDS = {"account_key": ACCOUNT_KEY, "organization_id": ORGANIZATION_ID, "extension": EXTENSION}
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


@pytest.fixture
def backend() -> str:
    return "sqlite"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def account(refresh: str = REFRESH_TOKEN, account_key: str = ACCOUNT_KEY,
            client: OAuthClient = OAuthClient(CLIENT_ID, CLIENT_SECRET)) -> GotoAccount:
    return GotoAccount("ten_x", account_key, ORGANIZATION_ID, EXTENSION, client, refresh, dict(FIELDS))


async def test_access_token_is_cached_until_shortly_before_expiry(peer) -> None:
    clock = Clock()
    tokens = TokenCache(clock)
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, tokens)
        await api.ringing("wc-1")
        await api.ringing("wc-2")
        assert len(peer.token_requests) == 1
        # "Refresh an access token": the client in Basic auth, the form only grant_type and refresh_token.
        assert peer.token_requests[0] == {"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN,
                                          "authorization": BASIC}
        clock.now += 3600 - EXPIRY_MARGIN_S - 1
        await api.ringing("wc-3")
        assert len(peer.token_requests) == 1
        clock.now += 2
        await api.ringing("wc-4")
        assert len(peer.token_requests) == 2
    assert all(r["authorized"] for r in peer.requests)


async def test_a_revoked_access_token_is_refreshed_once_and_the_request_retried(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, TokenCache())
        await api.ringing("wc-1")
        peer.revoked |= peer.issued
        await api.ringing("wc-2")
    assert len(peer.token_requests) == 2
    assert [r["authorized"] for r in peer.requests] == [True, False, True]


async def test_a_rotated_refresh_token_is_handed_over_for_storage(peer) -> None:
    stored: list[str] = []

    async def on_rotated(token: str) -> None:
        stored.append(token)

    peer.rotate_to = "goto-refresh-token-two"
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, TokenCache(), on_rotated=on_rotated)
        await api.ringing("wc-1")
        peer.revoked |= peer.issued  # the next refresh must use the new refresh token
        await api.ringing("wc-2")
    assert stored == ["goto-refresh-token-two"]
    assert [f["refresh_token"] for f in peer.token_requests] == [REFRESH_TOKEN, "goto-refresh-token-two"]


async def test_a_rotation_is_stored_once_and_neither_token_refreshes_again(peer) -> None:
    stored: list[str] = []

    async def on_rotated(token: str) -> None:
        stored.append(token)

    peer.rotate_to = "goto-refresh-token-two"
    tokens = TokenCache()
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, tokens, on_rotated=on_rotated)
        await api.ringing("wc-1")
        await api.ringing("wc-2")
        # Other instances: one still holding the old refresh token, one opened with the new one.
        old = GotoApi(peer.url, peer.token_url, account(), http, tokens, on_rotated=on_rotated)
        await old.ringing("wc-3")
        new = GotoApi(peer.url, peer.token_url, account("goto-refresh-token-two"), http, tokens,
                      on_rotated=on_rotated)
        await new.ringing("wc-4")
    assert stored == ["goto-refresh-token-two"]
    assert len(peer.token_requests) == 1
    assert all(r["authorized"] for r in peer.requests)


async def test_refused_refresh_token_is_a_readable_error_without_the_token(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account("not-the-refresh-token"), http, TokenCache())
        with pytest.raises(GotoApiError) as exc:
            await api.ringing("wc-1")
    assert exc.value.message == "GoTo OAuth token refresh failed (HTTP 400): invalid_grant: Invalid refresh token"
    assert "not-the-refresh-token" not in exc.value.message
    assert exc.value.exit_code == 8 and exc.value.status == 502


async def test_channel_and_subscription_follow_the_documented_shapes(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, TokenCache())
        # The peer validates the URL with OPTIONS: point it at itself (the token route answers 405).
        with pytest.raises(GotoApiError, match="notification channel creation failed \\(HTTP 400\\)"):
            await api.create_channel("voicectl-ten_x", peer.url + "/oauth/token")
        assert peer.validations == [405]
        accounts = await api.subscribe_call_events("Webhook.abc")
        assert accounts == [{"id": ACCOUNT_KEY, "status": 200, "message": "Success"}]
        other = GotoApi(peer.url, peer.token_url, account(account_key="999"), http, TokenCache())
        with pytest.raises(GotoApiError, match="call-events subscription failed \\(HTTP 403\\): account 999"):
            await other.subscribe_call_events("Webhook.abc")
    sub = peer.calls_to("/call-events/v1/subscriptions")[0]["json"]
    assert sub == {"channelId": "Webhook.abc", "accountKeys": [{"id": ACCOUNT_KEY,
                                                                "events": ["STARTING", "ACTIVE", "ENDING"]}]}
    channel = peer.calls_to("/notification-channel/v1/channels/voicectl-ten_x")[0]["json"]
    assert channel == {"channelType": "Webhook", "webhookChannelData": {"webhook": {"url": peer.url + "/oauth/token"}}}


async def test_web_call_paths_and_answer_body(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, TokenCache())
        await api.ringing("wc/1")
        await api.answer("wc/1", "v=0\r\n", "Webhook.abc")
        await api.reject("wc-2")
        await api.hangup("wc-3")
    assert [(r["method"], r["path"]) for r in peer.requests] == [
        ("POST", "/web-calls/v1/calls/wc%2F1/ringing"), ("POST", "/web-calls/v1/calls/wc%2F1/answer"),
        ("POST", "/web-calls/v1/calls/wc-2/reject"), ("DELETE", "/web-calls/v1/calls/wc-3")]
    assert peer.requests[1]["json"] == {"sdp": "v=0\r\n", "inCallChannelId": "Webhook.abc"}


@pytest.mark.parametrize("status", [404, 405])
async def test_a_hangup_goto_does_not_take_is_quiet(peer, caplog, status: int) -> None:
    """The assumed DELETE unsupported, or the call already gone: logged, not raised."""
    peer.refuse["hangup"] = (status, {"errorCode": "NOT_FOUND"})
    async with aiohttp.ClientSession() as http:
        with caplog.at_level("INFO", logger="voicectl.goto"):
            await GotoApi(peer.url, peer.token_url, account(), http, TokenCache()).hangup("wc-9")
    quiet = [r for r in caplog.records if r.name == "voicectl.goto" and "hang-up" in r.getMessage()]
    assert [(r.levelname, r.status) for r in quiet] == [("INFO", status)]


async def test_a_hangup_goto_fails_still_raises(peer) -> None:
    peer.refuse["hangup"] = (500, {"errorCode": "INTERNAL"})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(GotoApiError, match="web-call hang-up failed \\(HTTP 500\\)"):
            await GotoApi(peer.url, peer.token_url, account(), http, TokenCache()).hangup("wc-9")


async def test_unreachable_goto_is_a_readable_error() -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi("http://127.0.0.1:9", "http://127.0.0.1:9/oauth/token", account(), http, TokenCache(),
                      timeout_s=2)
        with pytest.raises(GotoApiError) as exc:
            await api.ringing("wc-1")
    assert exc.value.message.startswith("GoTo OAuth token refresh failed (no answer): cannot reach")


async def test_refresh_with_a_wrong_client_secret_is_refused_by_name(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(client=OAuthClient(CLIENT_ID, "wrong")), http, TokenCache())
        with pytest.raises(GotoApiError) as exc:
            await api.ringing("wc-1")
    assert exc.value.message == "GoTo OAuth token refresh failed (HTTP 401): invalid_client: Bad client credentials"
    assert "wrong" not in exc.value.message


async def test_device_and_extension_follow_the_documented_shapes(peer) -> None:
    async with aiohttp.ClientSession() as http:
        api = GotoApi(peer.url, peer.token_url, account(), http, TokenCache(), webrtc_base_url=peer.url)
        peer.channels["Webhook.abc"] = "http://127.0.0.1:9/unused"
        device_id = await api.create_device("Webhook.abc", {"appId": "voicectl"})
        await api.add_extension(device_id)
        await api.delete_device(device_id)
        await api.delete_device(device_id)  # gone already: done
    device = peer.calls_to("/web-calls/v1/devices")[0]["json"]
    assert device == {"clientInformation": {"appId": "voicectl"},
                      "callbackReference": {"incomingCallChannelId": "Webhook.abc",
                                            "sessionManagementChannelId": "Webhook.abc"}}
    extension = peer.calls_to(f"/web-calls/v1/devices/{device_id}/extensions")[0]["json"]
    assert extension == {"organizationId": ORGANIZATION_ID, "extensions": [{"number": EXTENSION}]}


async def test_open_account_needs_fields_refresh_token_and_a_client(control, settings) -> None:
    tenant = await control.tenants.create(TenantCreate(name="acme"))
    with pytest.raises(NotFound, match="no goto credential: set it with `voicectl credential set"):
        await open_account(control.credentials, tenant.id, settings)
    await control.credentials.set(tenant.id, "goto", CredentialSet(fields=FIELDS, secret=REFRESH_TOKEN))
    # A credential stored before organization_id and extension were required.
    row = await control.store.credentials.find(tenant_id=tenant.id, provider="goto")
    await control.store.credentials.update(row["id"], {"fields": {"client_id": "x", "account_key": ACCOUNT_KEY}},
                                           tenant_id=tenant.id)
    with pytest.raises(NotFound, match="lacks organization_id, extension"):
        await open_account(control.credentials, tenant.id, settings)
    await control.credentials.set(tenant.id, "goto", CredentialSet(fields=FIELDS, secret=REFRESH_TOKEN))
    with pytest.raises(NotFound, match="no GoTo OAuth client: set telephony.goto.client_id"):
        await open_account(control.credentials, tenant.id, settings)
    appliance = with_overrides(settings, telephony={"goto": {"client_id": CLIENT_ID}})
    with pytest.raises(NotFound, match="has no secret in the keyring: run `voicectl goto set-client-secret`"):
        await open_account(control.credentials, tenant.id, appliance)
    await control.secrets.set(APPLIANCE_CLIENT_SECRET_REF, CLIENT_SECRET)
    opened = await open_account(control.credentials, tenant.id, appliance)
    assert (opened.client, opened.account_key, opened.extension, opened.refresh_token) == (
        OAuthClient(CLIENT_ID, CLIENT_SECRET), ACCOUNT_KEY, EXTENSION, REFRESH_TOKEN)
    # A tenant with its own GoTo app: its client_id, and its own secret (not the appliance's).
    await control.credentials.set(tenant.id, "goto", CredentialSet(fields={**FIELDS, "client_id": "own-app"},
                                                                   secret=REFRESH_TOKEN))
    with pytest.raises(NotFound, match="set-client-secret --tenant T"):
        await open_account(control.credentials, tenant.id, appliance)
    await control.secrets.set(tenant_client_secret_ref(tenant.id), "own-secret")
    opened = await open_account(control.credentials, tenant.id, appliance)
    assert opened.client == OAuthClient("own-app", "own-secret")


async def test_api_for_stores_a_rotated_refresh_token_in_the_keyring(control, settings, peer) -> None:
    from runtime.telephony.goto.api import api_for

    built = goto_settings(settings, peer)
    await control.secrets.set(APPLIANCE_CLIENT_SECRET_REF, CLIENT_SECRET)
    tenant = await control.tenants.create(TenantCreate(name="acme"))
    await control.credentials.set(tenant.id, "goto", CredentialSet(fields=FIELDS, secret=REFRESH_TOKEN))
    peer.rotate_to = "goto-refresh-token-rotated"
    async with aiohttp.ClientSession() as http:
        api = api_for(built, await open_account(control.credentials, tenant.id, built), http,
                      TokenCache(), control.credentials)
        await api.ringing("wc-1")
    assert await control.credentials.secret(tenant.id, "goto") == "goto-refresh-token-rotated"
    cred = await control.credentials.get(tenant.id, "goto")
    assert cred.fields == FIELDS

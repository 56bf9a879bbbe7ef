"""Control-plane services over a real store and secret store, on both backends."""

from __future__ import annotations

import pytest

from runtime.control.credentials import secret_ref
from runtime.control.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from runtime.control.pagination import PageRequest
from runtime.control.schemas import (
    AgentCreate,
    AgentUpdate,
    ApiKeyCreate,
    CredentialSet,
    NumberCreate,
    NumberUpdate,
    TenantCreate,
    TenantUpdate,
    WebhookCreate,
    WebhookUpdate,
)
from runtime.store.store import ALL_SPECS

PAGE = PageRequest()


async def all_db_text(control) -> str:
    """Every value in every table, as one string (to prove a secret is not in the database)."""
    chunks = []
    for spec in ALL_SPECS:
        for row in await control.store.db.fetchall(f"SELECT * FROM {spec.name}"):
            chunks.extend(str(v) for v in row.values())
    return "\n".join(chunks)


async def make_tenant(control, name: str = "acme"):
    return await control.tenants.create(TenantCreate(name=name))


async def make_agent(control, tenant_id: str, name: str = "front-desk", **extra):
    return await control.agents.create(tenant_id, AgentCreate(name=name, system_prompt="Be helpful.", **extra))


# Tenants


async def test_tenant_crud(control):
    tenant = await control.tenants.create(
        TenantCreate(name="acme", timezone="Europe/Berlin", recording_enabled=True, metadata={"plan": "pro"})
    )
    assert tenant.id.startswith("ten_") and tenant.status == "active"
    assert tenant.recording_enabled is True and tenant.metadata == {"plan": "pro"}
    assert await control.tenants.get(tenant.id) == tenant

    updated = await control.tenants.update(
        tenant.id, TenantUpdate(max_concurrent_calls=3, max_call_duration_s=120, recording_enabled=False,
                                retention_days=7)
    )
    assert (updated.max_concurrent_calls, updated.max_call_duration_s, updated.recording_enabled,
            updated.retention_days) == (3, 120, False, 7)
    assert updated.timezone == "Europe/Berlin"
    disabled = await control.tenants.update(tenant.id, TenantUpdate(status="disabled"))
    assert disabled.status == "disabled"

    await make_tenant(control, "globex")
    page = await control.tenants.list(PAGE)
    assert page.total == 2 and sorted(t.name for t in page.items) == ["acme", "globex"]

    await control.tenants.delete(tenant.id)
    with pytest.raises(NotFound):
        await control.tenants.get(tenant.id)
    with pytest.raises(NotFound):
        await control.tenants.delete(tenant.id)
    assert (await control.tenants.list(PAGE)).total == 1


async def test_tenant_name_conflict_and_resolve(control):
    acme = await make_tenant(control, "acme")
    globex = await make_tenant(control, "globex")
    with pytest.raises(Conflict):
        await make_tenant(control, "acme")
    with pytest.raises(Conflict):
        await control.tenants.update(globex.id, TenantUpdate(name="acme"))
    assert (await control.tenants.resolve("acme")).id == acme.id
    assert (await control.tenants.resolve(acme.id)).id == acme.id
    with pytest.raises(NotFound):
        await control.tenants.resolve("initech")


async def test_tenant_input_validation():
    with pytest.raises(ValueError):
        TenantCreate(name="x", timezone="Mars/Olympus")
    with pytest.raises(ValueError):
        TenantCreate(name="x", max_call_duration_s=1)


# API keys


async def test_keys_prefixes_hashing_and_authentication(control):
    tenant = await make_tenant(control)
    admin, admin_key = await control.keys.create(ApiKeyCreate(scope="admin"))
    runtime, runtime_key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
    assert admin_key.startswith("vk_admin_") and runtime_key.startswith("vk_rt_")
    assert admin.tenant_id is None and runtime.tenant_id == tenant.id

    text = await all_db_text(control)
    assert admin_key not in text and runtime_key not in text
    assert admin_key[len("vk_admin_"):] not in text and runtime_key[len("vk_rt_"):] not in text

    principal = await control.keys.authenticate(admin_key)
    assert principal.is_admin and principal.tenant_id is None and principal.key_id == admin.id
    principal = await control.keys.authenticate(runtime_key)
    assert principal.scope == "runtime" and principal.tenant_id == tenant.id and not principal.is_admin
    touched = await control.store.api_keys.get(runtime.id, tenant_id=tenant.id)
    assert touched["last_used_at"] is not None

    for bad in ("", "nope", "vk_rt_" + "x" * 40, runtime_key + "x", runtime_key[:-1]):
        with pytest.raises(Unauthorized):
            await control.keys.authenticate(bad)


async def test_revoked_key_is_refused_at_once(control):
    tenant = await make_tenant(control)
    record, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
    await control.keys.authenticate(key)
    revoked = await control.keys.revoke(record.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthorized):
        await control.keys.authenticate(key)
    # Revoking twice keeps the first timestamp.
    assert (await control.keys.revoke(record.id)).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await control.keys.revoke("key_missing")


async def test_disabled_tenant_key_is_forbidden(control):
    tenant = await make_tenant(control)
    _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
    await control.tenants.update(tenant.id, TenantUpdate(status="disabled"))
    with pytest.raises(Forbidden):
        await control.keys.authenticate(key)
    await control.tenants.update(tenant.id, TenantUpdate(status="active"))
    assert (await control.keys.authenticate(key)).tenant_id == tenant.id


async def test_key_list_shows_prefix_and_last4_not_hash(control):
    tenant = await make_tenant(control)
    other = await make_tenant(control, "globex")
    record, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id, name="ci"))
    await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=other.id))
    page = await control.keys.list(PAGE, tenant_id=tenant.id)
    assert page.total == 1
    item = page.items[0].to_dict()
    assert item["prefix"] == key[: len("vk_rt_") + 4] and item["last4"] == key[-4:]
    assert "key_hash" not in item and key not in str(item)
    assert {"scope", "created_at", "last_used_at", "name"} <= set(item)

    await control.keys.revoke(record.id)
    assert (await control.keys.list(PAGE, tenant_id=tenant.id)).total == 0
    assert (await control.keys.list(PAGE, tenant_id=tenant.id, include_revoked=True)).total == 1


async def test_key_scope_rules(control):
    with pytest.raises(ValueError):
        ApiKeyCreate(scope="runtime")
    with pytest.raises(ValueError):
        ApiKeyCreate(scope="admin", tenant_id="ten_x")
    with pytest.raises(NotFound):
        await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id="ten_missing"))


# Agents


async def test_agent_versions_promote_and_rollback(control):
    tenant = await make_tenant(control)
    agent = await make_agent(control, tenant.id, greeting="Hello!")
    assert agent.active_version == 1 and agent.latest_version == 1
    assert agent.active.status == "active" and agent.active.config["greeting"] == "Hello!"

    updated = await control.agents.update(tenant.id, agent.id, AgentUpdate(greeting="Hi there", note="friendlier"))
    assert updated.latest_version == 2 and updated.active_version == 1
    assert updated.active.config["greeting"] == "Hello!"
    v2 = await control.agents.version(tenant.id, agent.id, 2)
    assert v2.status == "draft" and v2.note == "friendlier"
    assert v2.config["greeting"] == "Hi there" and v2.config["system_prompt"] == "Be helpful."

    promoted = await control.agents.promote(tenant.id, agent.id)
    assert promoted.active_version == 2 and promoted.active.config["greeting"] == "Hi there"
    assert (await control.agents.version(tenant.id, agent.id, 1)).status == "retired"

    rolled_back = await control.agents.promote(tenant.id, agent.id, 1)
    assert rolled_back.active_version == 1 and rolled_back.latest_version == 2
    assert rolled_back.active.config["greeting"] == "Hello!"
    versions = await control.agents.versions(tenant.id, agent.id, PAGE)
    assert versions.total == 2
    assert [(v.version, v.status) for v in versions.items] == [(1, "active"), (2, "retired")]

    with pytest.raises(NotFound):
        await control.agents.promote(tenant.id, agent.id, 9)

    # A rename alone makes no version.
    renamed = await control.agents.update(tenant.id, agent.id, AgentUpdate(name="reception"))
    assert renamed.name == "reception" and renamed.latest_version == 2
    assert (await control.agents.resolve(tenant.id, "reception")).id == agent.id


async def test_agent_name_conflict_and_tenant_isolation(control):
    tenant = await make_tenant(control)
    other = await make_tenant(control, "globex")
    agent = await make_agent(control, tenant.id)
    with pytest.raises(Conflict):
        await make_agent(control, tenant.id)
    second = await make_agent(control, tenant.id, "night-shift")
    with pytest.raises(Conflict):
        await control.agents.update(tenant.id, second.id, AgentUpdate(name="front-desk"))
    assert (await control.agents.get(tenant.id, second.id)).name == "night-shift"
    # Same name in another tenant is fine; another tenant cannot see the agent.
    await make_agent(control, other.id)
    with pytest.raises(NotFound):
        await control.agents.get(other.id, agent.id)
    assert (await control.agents.list(tenant.id, PAGE)).total == 2


async def test_agent_invalid_update_and_refs(control):
    tenant = await make_tenant(control)
    agent = await make_agent(control, tenant.id)
    with pytest.raises(Invalid):
        await control.agents.update(tenant.id, agent.id, AgentUpdate(voice_profile_id="vpf_missing"))
    assert (await control.agents.get(tenant.id, agent.id)).latest_version == 1
    with pytest.raises(Invalid):
        await make_agent(control, tenant.id, "other", voice_profile_id="vpf_missing")


async def test_agent_delete_blocked_while_routed(control):
    tenant = await make_tenant(control)
    agent = await make_agent(control, tenant.id)
    number = await control.numbers.add(
        tenant.id, NumberCreate(e164="+15551230001", provider="twilio", agent_id=agent.id)
    )
    with pytest.raises(Conflict):
        await control.agents.delete(tenant.id, agent.id)
    await control.numbers.remove(tenant.id, number.id)
    await control.agents.delete(tenant.id, agent.id)
    with pytest.raises(NotFound):
        await control.agents.get(tenant.id, agent.id)


# Numbers


async def test_number_normalisation_and_validation(control):
    tenant = await make_tenant(control)
    agent = await make_agent(control, tenant.id)
    number = await control.numbers.add(
        tenant.id, NumberCreate(e164="+1 (555) 123-0001", provider="twilio", agent_id=agent.id, label="main")
    )
    assert number.e164 == "+15551230001"
    assert (await control.numbers.resolve(tenant.id, "+15551230001")).id == number.id
    assert (await control.store.number_by_e164("+15551230001"))["tenant_id"] == tenant.id
    for bad in ("15551230001", "+0555123", "+1555", "+1234567890123456", "+1555abc0001", ""):
        with pytest.raises(ValueError):
            NumberCreate(e164=bad, provider="twilio", agent_id=agent.id)
    with pytest.raises(ValueError):
        NumberCreate(e164="+15551230002", provider="skype", agent_id=agent.id)
    with pytest.raises(Invalid):
        await control.numbers.add(tenant.id, NumberCreate(e164="+15551230002", provider="twilio", agent_id="agt_x"))


async def test_number_unique_across_tenants_without_leaking(control):
    acme = await make_tenant(control)
    globex = await make_tenant(control, "globex")
    acme_agent = await make_agent(control, acme.id)
    globex_agent = await make_agent(control, globex.id)
    await control.numbers.add(acme.id, NumberCreate(e164="+15551230001", provider="twilio", agent_id=acme_agent.id))
    with pytest.raises(Conflict) as excinfo:
        await control.numbers.add(
            globex.id, NumberCreate(e164="+1 555 123 0001", provider="goto", agent_id=globex_agent.id)
        )
    exposed = excinfo.value.message + str(excinfo.value.details)
    assert acme.id not in exposed and "acme" not in exposed and acme_agent.id not in exposed
    # Same-tenant duplicate gives the same answer.
    with pytest.raises(Conflict) as again:
        await control.numbers.add(
            acme.id, NumberCreate(e164="+15551230001", provider="twilio", agent_id=acme_agent.id)
        )
    assert again.value.message == excinfo.value.message
    # Another tenant can neither see nor route to it.
    assert (await control.numbers.list(globex.id, PAGE)).total == 0
    with pytest.raises(Invalid):
        await control.numbers.add(
            globex.id, NumberCreate(e164="+15551230009", provider="twilio", agent_id=acme_agent.id)
        )


async def test_number_pinned_version(control):
    tenant = await make_tenant(control)
    agent = await make_agent(control, tenant.id)
    with pytest.raises(Invalid):
        await control.numbers.add(
            tenant.id, NumberCreate(e164="+15551230001", provider="twilio", agent_id=agent.id, pinned_version=2)
        )
    number = await control.numbers.add(
        tenant.id, NumberCreate(e164="+15551230001", provider="twilio", agent_id=agent.id, pinned_version=1)
    )
    assert number.pinned_version == 1
    with pytest.raises(Invalid):
        await control.numbers.update(tenant.id, number.id, NumberUpdate(pinned_version=2))
    await control.agents.update(tenant.id, agent.id, AgentUpdate(greeting="v2"))
    assert (await control.numbers.update(tenant.id, number.id, NumberUpdate(pinned_version=2))).pinned_version == 2
    unpinned = await control.numbers.update(tenant.id, number.id, NumberUpdate(pinned_version=None))
    assert unpinned.pinned_version is None
    with pytest.raises(Invalid):
        await control.numbers.update(tenant.id, number.id, NumberUpdate(agent_id=None))
    with pytest.raises(ValueError):
        NumberCreate(e164="+15551230002", provider="twilio", agent_id=agent.id, pinned_version=0)


# Credentials


async def test_credential_required_fields_per_provider(control):
    tenant = await make_tenant(control)
    with pytest.raises(Invalid):
        await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={}, secret="tok"))
    with pytest.raises(Invalid):
        await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={"account_sid": "AC1"}))
    with pytest.raises(Invalid):
        await control.credentials.set(
            tenant.id, "twilio", CredentialSet(fields={"account_sid": "AC1", "bogus": "x"}, secret="tok")
        )
    with pytest.raises(Invalid):
        await control.credentials.set(tenant.id, "goto", CredentialSet(fields={"client_id": "c"}, secret="r"))
    with pytest.raises(NotFound):
        await control.credentials.set(tenant.id, "skype", CredentialSet(secret="x"))
    # Providers without a required secret.
    chatterbox = await control.credentials.set(
        tenant.id, "chatterbox", CredentialSet(fields={"base_url": "http://127.0.0.1:4123"})
    )
    assert chatterbox.secret_set is False
    openai = await control.credentials.set(tenant.id, "openai", CredentialSet())
    assert openai.secret_set is False
    assert (await control.credentials.list(tenant.id, PAGE)).total == 2


async def test_credential_secret_lives_in_keyring_only(control):
    tenant = await make_tenant(control)
    secret = "s3cr3t-twilio-auth-token-9f8e7d"
    cred = await control.credentials.set(
        tenant.id, "twilio", CredentialSet(fields={"account_sid": "AC123"}, secret=secret)
    )
    assert cred.secret_set is True and cred.fields == {"account_sid": "AC123"}
    assert secret not in str(cred.to_dict())
    assert secret not in await all_db_text(control)
    ref = secret_ref(tenant.id, "twilio")
    assert await control.secrets.get(ref) == secret
    assert await control.credentials.secret(tenant.id, "twilio") == secret
    assert control.secrets.description.startswith("cryptfile:")

    # Update without a new secret keeps it.
    kept = await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={"account_sid": "AC456"}))
    assert kept.secret_set is True and kept.fields == {"account_sid": "AC456"} and kept.id == cred.id
    assert await control.secrets.get(ref) == secret
    # A new secret replaces it.
    await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={"account_sid": "AC456"}, secret="new"))
    assert await control.secrets.get(ref) == "new"
    control.secrets.forget_cached()
    assert await control.credentials.secret(tenant.id, "twilio") == "new"

    await control.credentials.delete(tenant.id, "twilio")
    assert await control.secrets.get(ref) is None
    with pytest.raises(NotFound):
        await control.credentials.get(tenant.id, "twilio")


# Webhooks


async def test_webhook_secret_shown_once_and_rotation(control):
    tenant = await make_tenant(control)
    config, signing = await control.webhooks.create(
        tenant.id, WebhookCreate(url="https://example.com/hook", events=["voice.call.*", "call.connected"])
    )
    assert signing.startswith("whsec_") and config.active is True
    assert config.events == ["voice.call.*", "call.connected"]
    assert "secret_ref" not in config.to_dict() and signing not in str(config.to_dict())
    assert signing not in await all_db_text(control)
    assert await control.webhooks.signing_secret(tenant.id, config.id) == signing

    rotated, new_signing = await control.webhooks.rotate_secret(tenant.id, config.id)
    assert new_signing != signing and new_signing.startswith("whsec_")
    control.secrets.forget_cached()
    assert await control.webhooks.signing_secret(tenant.id, config.id) == new_signing
    assert rotated.updated_at >= config.updated_at

    updated = await control.webhooks.update(tenant.id, config.id, WebhookUpdate(active=False, events=["*"]))
    assert updated.active is False and updated.events == ["*"]
    with pytest.raises(Invalid):
        await control.webhooks.update(tenant.id, config.id, WebhookUpdate(events=["call.conected"]))

    await control.webhooks.delete(tenant.id, config.id)
    assert await control.secrets.get(config.secret_ref) is None
    with pytest.raises(NotFound):
        await control.webhooks.get(tenant.id, config.id)


async def test_webhook_unknown_event_pattern_rejected(control):
    tenant = await make_tenant(control)
    with pytest.raises(Invalid):
        await control.webhooks.create(tenant.id, WebhookCreate(url="https://example.com/h", events=["call.typo"]))
    with pytest.raises(ValueError):
        WebhookCreate(url="ftp://example.com/h")
    assert (await control.webhooks.list(tenant.id, PAGE)).total == 0


# Tenant deletion


async def test_tenant_delete_removes_rows_and_keyring_secrets(control):
    doomed = await make_tenant(control)
    kept = await make_tenant(control, "globex")
    refs = {}
    for tenant in (doomed, kept):
        agent = await make_agent(control, tenant.id)
        await control.numbers.add(
            tenant.id,
            NumberCreate(e164="+1555123000" + ("1" if tenant is doomed else "2"), provider="twilio",
                         agent_id=agent.id),
        )
        await control.credentials.set(tenant.id, "deepgram", CredentialSet(secret=f"dg-{tenant.name}"))
        webhook, _ = await control.webhooks.create(tenant.id, WebhookCreate(url="https://example.com/h"))
        _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
        refs[tenant.id] = (secret_ref(tenant.id, "deepgram"), webhook.secret_ref, key)

    await control.tenants.delete(doomed.id)

    cred_ref, hook_ref, key = refs[doomed.id]
    assert await control.secrets.get(cred_ref) is None and await control.secrets.get(hook_ref) is None
    with pytest.raises(Unauthorized):
        await control.keys.authenticate(key)
    assert doomed.id not in await all_db_text(control)

    cred_ref, hook_ref, key = refs[kept.id]
    assert await control.secrets.get(cred_ref) == "dg-globex" and await control.secrets.get(hook_ref)
    assert (await control.keys.authenticate(key)).tenant_id == kept.id

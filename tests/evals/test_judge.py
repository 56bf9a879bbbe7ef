"""The LLM judge: a rubric graded 1-5 with a reason through the real Anthropic SDK against the
local Messages API peer, with the tenant's credential; skipped with a stated reason without one;
an answer that is not a grade is an error, never a score."""

from __future__ import annotations

import pytest

from peers.anthropic_server import AnthropicServer, text_reply
from runtime.config import build_settings
from runtime.control.schemas import CredentialSet, TenantCreate
from runtime.evals import judge
from runtime.providers.chains import ProviderChains

KEY = "sk-ant-judge-0123456789"
TRANSCRIPT = [("agent", "Hello, Trattoria Demo."), ("caller", "A table for two at seven."),
              ("agent", "I have a table for two at 7 PM tomorrow. Shall I book it?")]


@pytest.mark.parametrize(("text", "expected"), [
    ('{"score": 4, "reason": "Read back, not confirmed."}', (4, "Read back, not confirmed.")),
    ('Sure! {"score": 5.0, "reason": "ok"} Hope that helps.', (5, "ok")),
])
def test_a_grade_is_read_from_the_answer(text, expected) -> None:
    assert judge.parse_grade(text) == expected


@pytest.mark.parametrize("text", ["Four out of five.", '{"score": 6, "reason": "x"}', '{"score": "4"}',
                                  '{"score": true}', "{not json}"])
def test_anything_else_is_not_a_grade(text) -> None:
    with pytest.raises(ValueError):
        judge.parse_grade(text)


async def test_the_rubric_is_graded_with_the_tenants_llm_credential(control, tmp_path) -> None:
    tenant = await control.tenants.create(TenantCreate(name="judged"))
    assert await judge.credential(control.credentials, tenant.id) is None
    skipped = await judge.grade(None, None, "Polite?", TRANSCRIPT)
    assert skipped == {"status": "skipped", "reason": judge.NO_CREDENTIAL}
    async with AnthropicServer(api_key=KEY) as server:
        settings = build_settings({"providers": {"anthropic": {"base_url": server.base_url}},
                                   "security": {"egress": {"allow": ["127.0.0.1/32"]}}}, tmp_path)
        await control.credentials.set(tenant.id, "anthropic", CredentialSet(secret=KEY))
        found = await judge.credential(control.credentials, tenant.id)
        assert found is not None and found[0] == "anthropic"
        chains = ProviderChains(settings)
        server.push(text_reply('{"score": 4, "reason": "It read the booking back but did not confirm it."}'))
        graded = await judge.grade(chains, found, "The agent reads the booking back.", TRANSCRIPT)
        assert graded == {"status": "graded", "score": 4, "reason": "It read the booking back but did not confirm it.",
                          "provider": "anthropic"}
        (request,) = server.message_requests
        system = request.body["system"]
        system = system if isinstance(system, str) else system[0]["text"]  # a cacheable block
        assert system.startswith("You grade a phone call")
        prompt = request.body["messages"][0]["content"]
        prompt = prompt if isinstance(prompt, str) else prompt[0]["text"]
        assert "Rubric:\nThe agent reads the booking back." in prompt and "caller: A table for two at seven." in prompt
        server.push(text_reply("I would say it was fine."))
        bad = await judge.grade(chains, found, "Polite?", TRANSCRIPT)
        assert bad["status"] == "error" and "JSON object" in bad["reason"]
        await chains.aclose()

"""The optional LLM judge: a scenario's ``judge.rubric`` graded 1-5, with a reason, by an LLM the
tenant has a credential for (anthropic, else openai). Its grade is stored with the evaluation
(``rubric``), apart from the score, which only the expectations make. Without such a credential the
rubric is skipped, and the evaluation says why.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from runtime.providers.base import LlmRequest, Message, ProviderError, TextDelta
from runtime.providers.registry import MissingExtra, ProviderCredential

JUDGE_PROVIDERS = ("anthropic", "openai")
MAX_TRANSCRIPT_CHARS = 20_000
SYSTEM = (
    "You grade a phone call between a caller and a voice agent against a rubric. Read the transcript and "
    "the rubric, then answer with only a JSON object, nothing else: "
    '{"score": <an integer from 1 (fails the rubric) to 5 (fully meets it)>, "reason": "<one or two sentences>"}'
)
NO_CREDENTIAL = "skipped: the tenant has no LLM credential (anthropic or openai) to grade the rubric with"
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def prompt(rubric: str, transcript: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"{role}: {text}" for role, text in transcript)[-MAX_TRANSCRIPT_CHARS:]
    return f"Rubric:\n{rubric}\n\nTranscript:\n{lines or '(nothing was said)'}"


def parse_grade(text: str) -> tuple[int, str]:
    """The judge's answer: (score 1-5, reason); ValueError when it is not that."""
    match = _OBJECT.search(text)
    if match is None:
        raise ValueError("the judge did not answer with a JSON object")
    try:
        data = orjson.loads(match.group(0))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the judge's answer is not JSON: {exc}") from None
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, float) and score.is_integer():
        score = int(score)
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        raise ValueError(f"the judge's score {score!r} is not an integer from 1 to 5")
    return score, str(data.get("reason") or "")[:1000]


async def credential(credentials: Any, tenant_id: str) -> tuple[str, ProviderCredential] | None:
    for name in JUDGE_PROVIDERS:
        found = await credentials.for_engine(tenant_id, name)
        if found is not None:
            return name, found
    return None


async def grade(chains: Any, found: tuple[str, ProviderCredential] | None, rubric: str,
                transcript: list[tuple[str, str]]) -> dict[str, Any]:
    """The rubric's grade: {status: graded, score, reason, provider}, {status: skipped, reason}, or
    {status: error, reason}."""
    if found is None:
        return {"status": "skipped", "reason": NO_CREDENTIAL}
    name, cred = found
    try:
        engine = chains.engine("llm", name, credential=cred)
    except (MissingExtra, ValueError) as exc:
        return {"status": "skipped", "reason": f"skipped: the {name} judge cannot be built here ({exc})"}
    request = LlmRequest(system=SYSTEM, messages=(Message("user", prompt(rubric, transcript)),), max_tokens=300,
                         temperature=0.0)
    try:
        text = "".join([e.text async for e in engine.stream(request) if isinstance(e, TextDelta)])
        score, reason = parse_grade(text)
    except (ProviderError, ValueError) as exc:
        return {"status": "error", "reason": str(exc)[:500], "provider": name}
    finally:
        await engine.aclose()
    return {"status": "graded", "score": score, "reason": reason, "provider": name}

"""voicectl call: place a synthetic call over the Twilio protocol against a running runtime.

The webhook is signed with the number's tenant's twilio credential from the local keyring
(or ``--auth-token``), exactly as Twilio signs it; each ``--say`` line is spoken with the
local TTS when the agent stops talking. The live transcript and tool calls are read from
the store as the runtime writes them, and the per-turn latency table is printed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from voicectl.common import (
    cli_invocation,
    errors,
    fail,
    load_settings,
    print_json,
    print_table,
    run_async,
    say,
)

POLL_S = 0.25
CALL_FAILED = 8  # the runtime was unreachable, refused the call, or it did not finish


async def _credential(plane: Any, number: str, account_sid: str | None, auth_token: str | None) -> tuple[str, str]:
    """(account_sid, auth_token) to sign with: the options, else the number's tenant's twilio credential."""
    from runtime.telephony.twilio.rest import PLACEHOLDER_ACCOUNT_SID
    if auth_token:
        return account_sid or PLACEHOLDER_ACCOUNT_SID, auth_token
    row = await plane.store.number_by_e164(number)
    if row is None:
        fail(f"no tenant has the number {number}: pass --auth-token to call it anyway", 3)
    token = await plane.credentials.secret(row["tenant_id"], "twilio")
    cred = await plane.store.credentials.find(tenant_id=row["tenant_id"], provider="twilio")
    if not token or cred is None:
        fail(f"the tenant of {number} has no twilio credential: set one with "
             "`voicectl credential set --tenant T twilio`, or pass --auth-token", 3)
    return account_sid or cred["fields"].get("account_sid") or PLACEHOLDER_ACCOUNT_SID, token


async def _speak_lines(texts: list[str], wavs: list[Path]) -> list[tuple[str, Any]]:
    from runtime.audio import Audio, read_wav

    lines: list[tuple[str, Any]] = [(f"<{p.name}>", read_wav(p)) for p in wavs]
    if texts:
        from runtime.providers import registry

        try:  # the caller's voice is the offline piper TTS
            registry.get("tts", "local").needs.require("voicectl call --say")
        except registry.MissingExtra as exc:
            fail(f"{exc}; or pass recorded lines with --wav", 2)
        from runtime.providers.tts.local import PiperTTS

        tts = PiperTTS()
        for text in texts:
            pcm, rate = bytearray(), 22050
            async for chunk in tts.synthesize(text):
                pcm += chunk.pcm
                rate = chunk.rate
            lines.append((text, Audio(bytes(pcm), rate)))
        await tts.aclose()
    return lines


class CallWatcher:
    """Reads the call's transcripts and tool calls from the store while it runs, printing new ones."""

    def __init__(self, plane: Any, call_sid: str, live: bool) -> None:
        self.plane, self.call_sid, self.live = plane, call_sid, live
        self.call: dict[str, Any] | None = None
        self.seen_transcripts: set[str] = set()
        self.seen_tools: set[str] = set()

    async def find_call(self) -> dict[str, Any] | None:
        if self.call is None:
            rows = await self.plane.store.db.fetchall(
                "SELECT id, tenant_id FROM voice_calls WHERE provider = 'twilio' AND provider_call_id = ?",
                (self.call_sid,))
            self.call = dict(rows[0]) if rows else None
        return self.call

    async def poll(self) -> None:
        call = await self.find_call()
        if call is None:
            return
        store = self.plane.store
        for row in await _rows(store.transcripts, call):
            if row["id"] not in self.seen_transcripts:
                self.seen_transcripts.add(row["id"])
                if self.live:
                    cut = " [interrupted]" if row["interrupted"] else ""
                    say(f"{row['role']:>9}: {row['text']}{cut}")
        for row in await _rows(store.tool_calls, call):
            if row["id"] not in self.seen_tools:
                self.seen_tools.add(row["id"])
                if self.live:
                    say(f"     tool: {row['name']}({_args(row['arguments'])}) -> {row['status']}")

    async def run(self) -> None:
        import asyncio

        while True:
            try:
                await self.poll()
            except Exception as exc:  # a busy store must not end the call
                if self.live:
                    say(f"(reading the call log failed: {exc})", err=True)
            await asyncio.sleep(POLL_S)


async def _rows(table: Any, call: dict[str, Any]) -> list[dict[str, Any]]:
    rows, _ = await table.list(tenant_id=call["tenant_id"], equals={"call_id": call["id"]}, limit=1000, count=False)
    return rows


def _args(arguments: Any) -> str:
    if isinstance(arguments, dict):
        return ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return str(arguments)


async def place(settings: Any, number: str, url: str, texts: list[str], wavs: list[Path], from_: str,
                account_sid: str | None, auth_token: str | None, *, quiet_ms: int, timeout_s: float,
                as_json: bool) -> dict[str, Any]:
    import asyncio

    import aiohttp

    from runtime.control.plane import ControlPlane
    from runtime.telephony.scripted_caller import scripted_call
    from runtime.telephony.twilio.caller import TwilioCaller

    plane = await ControlPlane.open(settings, migrate=False)
    try:
        sid, token = await _credential(plane, number, account_sid, auth_token)
        lines = await _speak_lines(texts, wavs)
        public = settings.server.public_url or url
        watcher: CallWatcher | None = None
        watch_task: asyncio.Task[None] | None = None

        def dialled(call_sid: str) -> None:
            nonlocal watcher, watch_task
            watcher = CallWatcher(plane, call_sid, live=not as_json)
            watch_task = asyncio.get_running_loop().create_task(watcher.run())

        async with TwilioCaller(url, sid, token, public_url=public) as caller:
            try:
                result = await asyncio.wait_for(
                    scripted_call(caller, number, lines, from_=from_, quiet_s=quiet_ms / 1000, on_dial=dialled),
                    timeout_s)
            except TimeoutError:
                fail(f"the call did not finish within {timeout_s:g} s", CALL_FAILED)
            except (aiohttp.ClientError, OSError) as exc:
                fail(f"cannot reach the runtime at {url} ({exc}); is `voicectl serve` running there?", CALL_FAILED)
            finally:
                if watch_task is not None:
                    watch_task.cancel()
        if result.call.answer.rejected:
            fail(f"the runtime rejected the call ({result.call.answer.status}): "
                 f"{result.call.answer.text.strip()[:300]}", CALL_FAILED)
        assert watcher is not None
        call = await watcher.find_call()
        if call is None:
            fail("the runtime answered but stored no call row", CALL_FAILED)
        # The runtime archives the call right after the stream stops: wait briefly for the final row.
        for _ in range(40):
            row = await plane.store.voice_calls.get(call["id"], tenant_id=call["tenant_id"])
            if row and row["status"] in ("ended", "failed"):
                break
            await asyncio.sleep(0.1)
        await watcher.poll()
        tenant_id = call["tenant_id"]
        transcripts = await _rows(plane.store.transcripts, call)
        tools = await _rows(plane.store.tool_calls, call)
        return {
            "call_id": call["id"],
            "tenant_id": tenant_id,
            "status": row["status"] if row else None,
            "end_reason": row["end_reason"] if row else None,
            "hung_up_by": result.hung_up_by,
            "transcript": [{"role": t["role"], "text": t["text"], "start_ms": t["start_ms"], "end_ms": t["end_ms"],
                            "interrupted": bool(t["interrupted"])} for t in transcripts],
            "tool_calls": [{"name": t["name"], "arguments": t["arguments"], "result": t["result"],
                            "status": t["status"], "latency_ms": t["latency_ms"]} for t in tools],
            "latency": (row or {}).get("latency") or {},
            "caller_turns": [{"text": t.text, "voice_to_voice_ms": _round(t.voice_to_voice_ms)}
                             for t in result.turns],
        }
    finally:
        await plane.close()


async def chat(settings: Any, number: str, lines: list[str], from_: str, *, as_json: bool,
               timeout_s: float) -> dict[str, Any]:
    """``--text``: a typed chat through the same conversation engine (runtime.pipeline.text_chat)."""
    from runtime.calls.routing import RouteRejected
    from runtime.control.plane import ControlPlane
    from runtime.pipeline.text_chat import text_chat

    def show(role: str, text: str) -> None:
        if not as_json:
            say(f"{role:>9}: {text}")

    plane = await ControlPlane.open(settings, migrate=False)
    try:
        try:
            call_id = await text_chat(plane, settings, number, lines, from_number=from_, reply_timeout_s=timeout_s,
                                      on_utterance=show)
        except RouteRejected as exc:
            fail(f"{number}: {exc.message} ({exc.reason})", 3 if exc.reason == "unknown_number" else 4)
        rows = await plane.store.db.fetchall("SELECT tenant_id FROM voice_calls WHERE id = ?", (call_id,))
        call = {"id": call_id, "tenant_id": rows[0]["tenant_id"]}
        row = await plane.store.voice_calls.get(call_id, tenant_id=call["tenant_id"])
        transcripts = await _rows(plane.store.transcripts, call)
        tools = await _rows(plane.store.tool_calls, call)
        return {
            "call_id": call_id, "tenant_id": call["tenant_id"], "status": row["status"],
            "end_reason": row["end_reason"], "hung_up_by": row["hangup_by"] or "caller",
            "transcript": [{"role": t["role"], "text": t["text"], "interrupted": bool(t["interrupted"])}
                           for t in transcripts],
            "tool_calls": [{"name": t["name"], "arguments": t["arguments"], "result": t["result"],
                            "status": t["status"], "latency_ms": t["latency_ms"]} for t in tools],
            "latency": row.get("latency") or {}, "caller_turns": [],
        }
    finally:
        await plane.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def call(
    number: Annotated[str, typer.Argument(help="The number to call (E.164), e.g. +15550100001.")],
    url: Annotated[str | None, typer.Option("--url", help="The runtime's base URL "
                                            "(default: http://server.host:server.port from the config).")] = None,
    say_: Annotated[list[str] | None, typer.Option("--say", help="A line to speak when the agent stops talking "
                                                   "(repeat for several).")] = None,
    wav: Annotated[list[Path] | None, typer.Option("--wav", help="A WAV file to play as a line (repeatable; "
                                                   "played before the --say lines).", exists=True,
                                                   dir_okay=False)] = None,
    from_: Annotated[str, typer.Option("--from", help="The caller's number.")] = "+15550001111",
    account_sid: Annotated[str | None, typer.Option("--account-sid", help="Twilio account SID to send "
                                                    "(default: the credential's).")] = None,
    auth_token: Annotated[str | None, typer.Option("--auth-token", envvar="VOICECTL_TWILIO_AUTH_TOKEN",
                                                   help="Sign with this auth token instead of the tenant's "
                                                   "credential from the keyring.")] = None,
    quiet_ms: Annotated[int, typer.Option("--quiet-ms", help="Agent silence that counts as 'done talking'.",
                                          min=200, max=5000)] = 900,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds.")] = 120.0,
    text: Annotated[bool, typer.Option("--text", help="A typed chat instead of a call: no audio, the --say "
                                       "lines (or lines from stdin) go to the agent as text; archived as a call "
                                       "with provider chat. Runs here, against the store.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object when the call ends.")] = False,
) -> None:
    """Place a synthetic call to NUMBER over the Twilio protocol and show the conversation."""
    with errors():
        settings = load_settings()
        if text:
            lines = list(say_ or [])
            if not lines and not sys.stdin.isatty():
                lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
            result = run_async(chat(settings, number, lines, from_, as_json=as_json, timeout_s=timeout))
            if as_json:
                print_json(result)
            else:
                print_summary(result, cli_invocation())
            return
        base = (url or f"http://{_connect_host(settings.server.host)}:{settings.server.port}").rstrip("/")
        if not base.startswith(("http://", "https://")):
            fail(f"--url must be an http(s) URL, not {base!r}", 2)
        if not as_json:
            say(f"calling {number} at {base} ...")
        result = run_async(place(settings, number, base, list(say_ or []), list(wav or []), from_, account_sid,
                                  auth_token, quiet_ms=quiet_ms, timeout_s=timeout,
                                 as_json=as_json))
    if as_json:
        print_json(result)
        return
    print_summary(result, cli_invocation())


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def print_summary(result: dict[str, Any], voicectl: str = "voicectl") -> None:
    """``voicectl``: how to invoke the CLI in the hints (``cli_invocation()``)."""
    say(f"call {result['call_id']}: {result['status']} ({result['end_reason']}), hung up by {result['hung_up_by']}")
    latency = result["latency"]
    if latency:
        columns = ("count", "p50_ms", "p95_ms", "max_ms")
        print_table(["stage", *columns], [[stage, *(values.get(c) for c in columns)]
                                          for stage, values in latency.items() if isinstance(values, dict)],
                    title="latency per turn (ms)")
    if result["tool_calls"]:
        print_table(["tool", "arguments", "status", "ms"],
                    [[t["name"], _args(t["arguments"]), t["status"], t["latency_ms"]] for t in result["tool_calls"]],
                    title="tool calls")
    turns = [t for t in result["caller_turns"] if t["voice_to_voice_ms"] is not None]
    if turns:
        print_table(["caller said", "voice to voice (ms)"], [[t["text"], t["voice_to_voice_ms"]] for t in turns],
                    title="as the caller heard it")
    say(f"stored: {voicectl} calls show {result['call_id']} --tenant {result['tenant_id']}")

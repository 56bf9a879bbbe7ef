"""voicectl calls place|hangup|transfer|say|pause|resume: place an outbound call and control a live
call through the runtime's API.

A live call is held by the running runtime, so these commands call its API (``--url``, default the
config's host and port) with a runtime key (``--key`` or ``$VOICECTL_API_KEY``), or an admin key
with ``--tenant`` (sent as X-Tenant-ID). Exit codes: 2 bad input (422), 3 no such call or agent,
4 the call has ended (or is not connected, or the carrier is not set up), 1 a limit reached (429),
7 the key was refused, 8 the runtime could not be reached (or is busy; or, with several instances,
the instance holding the call could not be reached: 503 cluster_unavailable, 504 holder_timeout).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_CONFLICT,
    EXIT_RUNTIME_UNREACHABLE,
    EXIT_USAGE,
    JsonOpt,
    errors,
    fail,
    load_settings,
    print_json,
    run_async,
    say,
)

CallArg = Annotated[str, typer.Argument(help="The call id (call_...).", show_default=False)]
UrlOpt = Annotated[str | None, typer.Option("--url", help="The runtime's base URL (default: "
                                            "http://server.host:server.port from the config).", show_default=False)]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Runtime key, or admin key with --tenant "
                                            "(default: $VOICECTL_API_KEY).", show_default=False)]
TenantIdOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id, sent as X-Tenant-ID "
                                                 "(with an admin key).", show_default=False)]
# HTTP status -> exit code (the CLI's usual ones: 3 not found, 4 conflict, 7 unauthorised).
EXIT_BY_STATUS = {404: 3, 409: EXIT_CONFLICT, 401: 7, 403: 7, 422: EXIT_USAGE, 400: EXIT_USAGE, 429: 1,
                  503: EXIT_RUNTIME_UNREACHABLE, 504: EXIT_RUNTIME_UNREACHABLE}


def _base(url: str | None) -> str:
    if url:
        base = url
    else:
        with errors():
            settings = load_settings()
        host = settings.server.host if settings.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        base = f"http://{host}:{settings.server.port}"
    if not base.startswith(("http://", "https://")):
        fail(f"--url must be an http(s) URL, not {base!r}", EXIT_USAGE)
    return base.rstrip("/")


async def _send(base: str, key: str, tenant: str | None, method: str, path: str, body: dict[str, Any]) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    if tenant:
        headers["X-Tenant-ID"] = tenant
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
                http.request(method, base + path, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None) if resp.content_length != 0 else {}
            return resp.status, data
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        fail(f"the runtime at {base} could not be reached ({type(exc).__name__}); is `voicectl serve` running "
             "and is --url right?", EXIT_RUNTIME_UNREACHABLE)


def _control(call_id: str, method: str, path: str, body: dict[str, Any], url: str | None, key: str | None,
             tenant: str | None, as_json: bool, done: str) -> None:
    call_api(method, f"/api/v1/calls/{call_id}{path}", body, url, key, tenant, as_json, lambda _: done)


def call_api(method: str, path: str, body: dict[str, Any], url: str | None, key: str | None, tenant: str | None,
              as_json: bool, done: Any) -> None:
    api_key = key or os.environ.get("VOICECTL_API_KEY")
    if not api_key:
        fail("pass --key or set VOICECTL_API_KEY to a runtime key (or an admin key with --tenant)", EXIT_USAGE)
    base = _base(url)
    status, data = run_async(_send(base, api_key, tenant, method, path, body))
    if status >= 300:
        message = data.get("message") if isinstance(data, dict) else None
        fail(message or f"the runtime answered HTTP {status}", EXIT_BY_STATUS.get(status, 1))
    if as_json:
        print_json(data)
    else:
        say(done(data))


def _variables(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var takes NAME=VALUE, not {pair!r}", EXIT_USAGE)
        out[name] = value
    return out


def register(app: typer.Typer) -> None:
    """Add the live-call commands to ``voicectl calls``."""

    @app.command("place")
    def place(
        to: Annotated[str, typer.Option("--to", help="The number to call (E.164).", show_default=False)],
        from_: Annotated[str, typer.Option("--from", help="One of the tenant's numbers (E.164): caller id and "
                                           "route.", show_default=False)],
        agent: Annotated[str | None, typer.Option("--agent", help="Agent id (default: the from number's "
                                                  "agent).")] = None,
        var: Annotated[list[str] | None, typer.Option("--var", metavar="NAME=VALUE", help="A variable for "
                                                      "{{NAME}} in the prompt and greeting (repeatable).")] = None,
        machine_detection: Annotated[str, typer.Option("--machine-detection", help="off, detect, or voicemail "
                                                       "(leave the agent's voicemail_message on a machine).")] = "off",
        timeout: Annotated[int, typer.Option("--timeout", help="Seconds to let it ring.")] = 30,
        url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Place an outbound call (queued; its carrier dials it at the box's pace)."""
        body: dict[str, Any] = {"to": to, "from": from_, "variables": _variables(var),
                                "machine_detection": machine_detection, "timeout_s": timeout}
        if agent is not None:
            body["agent_id"] = agent
        call_api("POST", "/api/v1/calls", body, url, key, tenant, as_json,
                  lambda data: f"placed {data['id']} ({data['status']})")

    @app.command("hangup")
    def hangup(call_id: CallArg, reason: Annotated[str, typer.Option("--reason", help="End reason stored on the "
                                                                     "call.")] = "api_hangup",
               url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None, as_json: JsonOpt = False) -> None:
        """Hang up a live call."""
        _control(call_id, "POST", "/hangup", {"reason": reason}, url, key, tenant, as_json,
                 f"hung up {call_id} ({reason})")

    @app.command("transfer")
    def transfer(call_id: CallArg, to: Annotated[str, typer.Option("--to", help="E.164 number or sip: URI.")],
                 url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None,
                 as_json: JsonOpt = False) -> None:
        """Transfer a connected call (cold, through its bridge)."""
        _control(call_id, "POST", "/transfer", {"to": to}, url, key, tenant, as_json,
                 f"transferring {call_id} to {to}")

    @app.command("say")
    def say_(call_id: CallArg, text: Annotated[str, typer.Argument(help="What the agent says.")],
             interrupt: Annotated[bool, typer.Option("--interrupt", help="Cut what the agent is saying "
                                                     "(default: say it after).")] = False,
             url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None, as_json: JsonOpt = False) -> None:
        """The agent says a line on a live call, as its own."""
        _control(call_id, "POST", "/say", {"text": text, "interrupt": interrupt}, url, key, tenant, as_json,
                 f"queued on {call_id}")

    @app.command("pause")
    def pause(call_id: CallArg, url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None,
              as_json: JsonOpt = False) -> None:
        """Pause the agent: it stays silent while the call, transcription and recording go on."""
        _control(call_id, "PATCH", "", {"ai": "paused"}, url, key, tenant, as_json, f"agent paused on {call_id}")

    @app.command("resume")
    def resume(call_id: CallArg, url: UrlOpt = None, key: KeyOpt = None, tenant: TenantIdOpt = None,
               as_json: JsonOpt = False) -> None:
        """Let the agent answer again."""
        _control(call_id, "PATCH", "", {"ai": "on"}, url, key, tenant, as_json, f"agent resumed on {call_id}")

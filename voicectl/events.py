"""voicectl events tail: live events of a tenant over the runtime's WebSocket (/api/v1/events/ws).

Only typer and voicectl.common at module level (``voicectl --help`` stays fast);
aiohttp, asyncio, orjson and rich are imported when the command runs.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME_UNREACHABLE,
    EXIT_USAGE,
    fail,
    new_app,
    say,
)

app = new_app("Live events: follow a tenant's calls as they happen (needs a running `voicectl serve`).")

EXIT_UNAUTHORIZED = 7
CLOSE_TOO_SLOW = 4008
CLOSE_TRY_AGAIN = 1013  # an instance of a cluster that lost NATS: reconnect (maybe elsewhere)


def _short(data: dict[str, Any], width: int = 80) -> str:
    parts = []
    for key, value in data.items():
        if value is None or value == "" or value == {} or value == []:
            continue
        text = value if isinstance(value, str) else repr(value)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


def _ws_url(url: str) -> str:
    base = url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    elif not base.startswith(("ws://", "wss://")):
        fail(f"--url must start with http:// or https://, got {url!r}", EXIT_USAGE)
    return base + "/api/v1/events/ws"


# After a lost connection: 1 s, doubling to 30 s, between tries (seed 001's advice to clients).
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0
# Close codes that mean "stop": the key was revoked or the tenant disabled.
FINAL_CLOSES = {4401: EXIT_UNAUTHORIZED, 4403: EXIT_UNAUTHORIZED}


class _Lost(Exception):
    """The connection went away after it had worked: reconnect."""


async def _tail(url: str, key: str, topics: list[str], call_id: str | None, as_json: bool,
                count: int | None, base: str | None = None, *, sleep: Any = None) -> int:
    """``url``: the WebSocket's; ``base``: the runtime's URL as the user gave it (for messages).
    A runtime that cannot be reached at first exits 8; once connected, a lost connection is
    retried with backoff and the subscription sent again."""
    import asyncio

    sleep = sleep or asyncio.sleep
    state = {"seen": 0, "connected": False}
    delay = RECONNECT_FIRST_S
    while True:
        try:
            return await _follow(url, key, topics, call_id, as_json, count, base, state)
        except _Lost as lost:
            say(f"{lost}; reconnecting in {delay:g} s", err=True)
            await sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


async def _follow(url: str, key: str, topics: list[str], call_id: str | None, as_json: bool,
                  count: int | None, base: str | None, state: dict[str, Any]) -> int:
    import aiohttp
    import orjson

    console = None
    if not as_json:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers, heartbeat=30) as ws:
            state["connected"] = True
            subscribe: dict[str, Any] = {"type": "subscribe", "topics": topics}
            if call_id:
                subscribe["call_id"] = call_id
            await ws.send_str(orjson.dumps(subscribe).decode())
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                message = orjson.loads(msg.data)
                kind = message.get("type")
                if kind == "error":
                    say(f"error: {message.get('message')}", err=True)
                    return EXIT_USAGE
                if kind == "subscribed" and console is not None:
                    where = f" of call {call_id}" if call_id else ""
                    say(f"following {', '.join(message['topics'])}{where} (Ctrl-C to stop)", err=True)
                if kind != "event":
                    continue
                event = message["event"]
                if as_json:
                    sys.stdout.write(orjson.dumps(event).decode() + "\n")
                    sys.stdout.flush()
                else:
                    from rich.text import Text

                    line = Text()
                    line.append((event.get("ts") or "")[11:23], style="dim")
                    line.append("  ")
                    line.append(f"{event['topic']:<22}", style="bold cyan")
                    line.append("  ")
                    line.append(f"{event.get('call_id') or '-':<21}", style="magenta")
                    line.append("  ")
                    line.append(_short(event.get("data") or {}))
                    console.print(line)
                state["seen"] += 1
                if count is not None and state["seen"] >= count:
                    return 0
            code = ws.close_code
            if code in FINAL_CLOSES:
                say(f"error: the runtime closed the subscription (code {code}: the key was revoked or the "
                    "tenant disabled)", err=True)
                return FINAL_CLOSES[code]
            if code == CLOSE_TOO_SLOW:
                raise _Lost("the runtime dropped this subscriber (too slow to read events)")
            if code == CLOSE_TRY_AGAIN:
                raise _Lost("the runtime lost NATS (code 1013: try again later)")
            raise _Lost(f"connection closed by the runtime (code {code})")
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 401:
            say("error: invalid or missing API key (use --key or VOICECTL_API_KEY)", err=True)
            return EXIT_UNAUTHORIZED
        if exc.status == 403:
            say("error: refused: events need an active tenant's runtime key (not an admin key)", err=True)
            return EXIT_UNAUTHORIZED
        if state["connected"]:
            raise _Lost(f"the runtime refused the reconnection (HTTP {exc.status})") from None
        if exc.status == 429:
            say("error: rate limited; try again shortly", err=True)
            return EXIT_ERROR
        if exc.status == 503:
            say(f"error: the runtime at {base or url} cannot serve events right now (HTTP 503: it has lost NATS "
                "in cluster mode); try again shortly or another instance", err=True)
            return EXIT_RUNTIME_UNREACHABLE
        say(f"error: the runtime at {base or url} refused the WebSocket (HTTP {exc.status}); "
            "is --url a voicectl runtime?", err=True)
        return EXIT_RUNTIME_UNREACHABLE
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        if state["connected"]:
            raise _Lost(f"lost the runtime at {base or url} ({detail})") from None
        # The same exit code and words as `voicectl call` for a runtime that is not there.
        say(f"error: cannot reach the runtime at {base or url} ({detail}); is `voicectl serve` running there?",
            err=True)
        return EXIT_RUNTIME_UNREACHABLE


@app.command("tail")
def tail(
    call: Annotated[str | None, typer.Option("--call", help="Only events of this call id.", show_default=False)] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", metavar="PATTERN", help="Topic or glob, e.g. voice.call.* (repeatable; default: *).",
                     show_default=False),
    ] = None,
    url: Annotated[str, typer.Option("--url", help="Base URL of the runtime.")] = "http://127.0.0.1:8080",
    key: Annotated[
        str | None,
        typer.Option("--key", help="Tenant runtime key (default: $VOICECTL_API_KEY).", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line instead of rendered lines.")] = False,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Exit after this many events.", show_default=False)
    ] = None,
) -> None:
    """Follow a tenant's events live (one line per event).

    Exits 8 when the runtime cannot be reached at --url (as `voicectl call` does).
    """
    api_key = key or os.environ.get("VOICECTL_API_KEY")
    if not api_key:
        fail("pass --key or set VOICECTL_API_KEY to a tenant runtime key", EXIT_USAGE)
    ws_url = _ws_url(url)
    import asyncio

    try:
        code = asyncio.run(_tail(ws_url, api_key, list(topic or ["*"]), call, as_json, count, url.rstrip("/")))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if code:
        raise typer.Exit(code)

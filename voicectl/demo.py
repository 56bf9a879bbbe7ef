"""voicectl demo: provision a demo tenant, agent, number and credential; show the API answering.

Idempotent: a second run finds what the first made. Without --provision-only it
also creates a runtime key, starts ``voicectl serve`` on a free loopback port,
waits for /readyz, calls GET /api/v1/agents with the key, prints the answer and
stops the server.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from voicectl.call import place as _place
from voicectl.common import config_path, errors, fail, load_settings, print_json, run, run_async, say
from voicectl.init import ConfigOpt, initialise

TENANT = "demo"
AGENT = "booking"
NUMBER = "+15550100001"
PROMPT = (
    "You are the phone assistant of Trattoria Demo, a small restaurant. You book tables. "
    "Ask for the day, the time, the number of guests and a name for the booking, check availability, "
    "then read the booking back and confirm it. Keep every answer short and friendly. "
    "If the caller wants anything else, offer to transfer them to a person."
)
GREETING = "Hello, thanks for calling Trattoria Demo! How can I help you?"
TOOLS = ["check_availability", "create_booking", "create_order", "transfer_to_human", "end_call", "log_note"]
ESCALATION = "+15550100099"
# What the demo caller says, each line when the agent has stopped talking. Tomorrow: a table at seven
# today is in the past after 7 PM in the demo business's time zone, and the demo must book at any hour.
CALLER_LINES = ("I'd like to book a table for two tomorrow at seven.", "Yes please.", "No thanks, goodbye.")
CALLER_NUMBER = "+15550001111"
READY_TIMEOUT_S = 60.0


async def provision(plane: Any) -> dict[str, Any]:
    """Find or create the demo tenant, agent, number and twilio credential."""
    import secrets

    from runtime.control.errors import NotFound
    from runtime.control.schemas import AgentCreate, CredentialSet, NumberCreate, TenantCreate
    from runtime.telephony.twilio.rest import PLACEHOLDER_ACCOUNT_SID

    made: list[str] = []
    try:
        tenant = await plane.tenants.resolve(TENANT)
    except NotFound:
        tenant = await plane.tenants.create(TenantCreate(name=TENANT))
        made.append("tenant")
    try:
        agent = await plane.agents.resolve(tenant.id, AGENT)
    except NotFound:
        from runtime.providers.llm.rules import DEMO_BOOKING_RULES

        agent = await plane.agents.create(tenant.id, AgentCreate(
            name=AGENT, system_prompt=PROMPT, greeting=GREETING, llm={"provider": "rules"}, tools=TOOLS,
            rules=DEMO_BOOKING_RULES, escalation_target=ESCALATION, dtmf_tools={"0": "transfer_to_human"},
        ))
        made.append("agent")
    try:
        number = await plane.numbers.resolve(tenant.id, NUMBER)
    except NotFound:
        number = await plane.numbers.add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=agent.id))
        made.append("number")
    try:
        await plane.credentials.get(tenant.id, "twilio")
    except NotFound:
        # A local stand-in: the placeholder account SID (the bridge never asks Twilio's API about its
        # calls) and a random auth token (local calls are signed with it).
        await plane.credentials.set(tenant.id, "twilio", CredentialSet(
            fields={"account_sid": PLACEHOLDER_ACCOUNT_SID}, secret=secrets.token_hex(16),
        ))
        made.append("credential")
    return {"tenant_id": tenant.id, "agent_id": agent.id, "number": number.e164, "created": made}


async def _runtime_key(plane: Any, tenant_id: str) -> str:
    from runtime.control.schemas import ApiKeyCreate

    _, key = await plane.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant_id, name="demo"))
    return key


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _log_tail(log: Any, lines: int = 20) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _served(path: Path) -> Iterator[str]:
    """`voicectl serve` on a free loopback port, ready (GET /readyz answered 200); yields its base URL."""
    import signal
    import subprocess
    import tempfile
    import time
    import urllib.error

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "voicectl", "--config", str(path.resolve()), "serve",
               "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if server.poll() is not None:
                    fail(f"voicectl serve exited with code {server.returncode}:\n{_log_tail(log)}")
                try:
                    status, _ = _get(f"{base}/readyz", timeout=2.0)
                    if status == 200:
                        break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    fail(f"voicectl serve was not ready after {READY_TIMEOUT_S:.0f} s:\n{_log_tail(log)}")
                time.sleep(0.2)
            yield base
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _show_api(base: str, runtime_key: str) -> dict[str, Any]:
    """GET /api/v1/agents with the runtime key; returns what it saw."""
    import json

    status, body = _get(f"{base}/api/v1/agents", {"Authorization": f"Bearer {runtime_key}"})
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body.decode(errors="replace")
    if status != 200:
        fail(f"GET /api/v1/agents answered {status}: {answer}")
    return {"server": base, "status": status, "agents": answer}


def demo(
    config: ConfigOpt = None,
    provision_only: Annotated[
        bool, typer.Option("--provision-only", help="Only provision; do not start the server.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")] = False,
) -> None:
    """Provision a demo tenant, booking agent, number and credential, then show the API answering.

    Runs `voicectl init` first when the config file does not exist.
    """
    with errors():
        path = config_path(config)
        output: dict[str, Any] = {}
        if not path.exists():
            made = initialise(path)
            output["admin_key"] = made["admin_key"]
            if not as_json:
                say(f"initialised {made['config']} (database {made['database']})")
                say(f"admin key: {made['admin_key']}")
                say("  store it now: it is not shown again", err=True)
        settings = load_settings(str(path))
        output.update(run(provision, settings=settings))
        if not as_json:
            say(f"tenant {TENANT} ({output['tenant_id']}), agent {AGENT} ({output['agent_id']}), "
                f"number {output['number']}" + (f"; created: {', '.join(output['created'])}" if output["created"]
                                                else "; all there already"))
        if not provision_only:
            key = run(lambda plane: _runtime_key(plane, output["tenant_id"]), settings=settings)
            output["runtime_key"] = key
            if not as_json:
                say("starting voicectl serve ...")
            with _served(path) as base:
                output.update(_show_api(base, key))
                if not as_json:
                    say(f"the runtime answers at {base}; placing a call to {output['number']} ...")
                output["call"] = run_async(_place(
                    settings, output["number"], base, list(CALLER_LINES), [], CALLER_NUMBER, None, None,
                    quiet_ms=900, timeout_s=120.0, as_json=as_json))
    if as_json:
        print_json(output)
        return
    if not provision_only:
        from voicectl.call import print_summary
        from voicectl.common import cli_invocation

        cli = cli_invocation(path)
        print_summary(output["call"], cli)
        say(f"server stopped. All calls: {cli} calls list --tenant {TENANT}; "
            f"run the runtime yourself: {cli} serve")

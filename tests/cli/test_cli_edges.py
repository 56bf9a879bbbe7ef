"""CLI edges a newcomer hits: a port already in use on `serve`, empty stdin on `credential set`,
`events tail` with no runtime, and the command hints printed after a call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.test_cli import Cli
from tests.cli.test_cli_subprocess import voicectl_command
from voicectl.cli import app


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    monkeypatch.setenv("VOICECTL_SECURITY__EGRESS__ALLOW", "[127.0.0.1/32]")  # tenant URLs may name local servers
    cli = Cli(tmp_path / "conf" / "config.yaml")
    cli.json("init")
    cli.json("tenant", "create", "acme")
    return cli


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# serve: a port in use is reported at once, before the speech models load


def test_serve_on_a_port_in_use_exits_10_at_once_without_loading_models(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    env.update(VOICECTL_SECRETS__BACKEND="cryptfile", VOICECTL_CONFIG=str(tmp_path / "config.yaml"))
    subprocess.run([*voicectl_command(), "init", "--json"], env=env, capture_output=True, check=True, timeout=120)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run([*voicectl_command(), "serve", "--port", str(port)], env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: the port is already in use")
    assert "--port" in proc.stderr and "server.port" in proc.stderr and "Traceback" not in proc.stderr
    # Nothing was started: no log line (the runtime logs "voicectl serving" and the models it loads).
    assert "voicectl serving" not in proc.stderr and "loaded" not in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_serve_refuses_an_address_that_is_not_this_machines(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.api.server as server

    monkeypatch.setattr(server, "run", lambda *a, **k: pytest.fail("the runtime must not start"))
    result = cli("serve", "--host", "192.0.2.1", "--port", str(_closed_port()), code=10)  # TEST-NET-1
    assert "192.0.2.1 is not an address of this machine" in result.stderr


def test_serve_maps_a_bind_lost_after_the_check_to_exit_10(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may take the port while the models load: the same message and code."""
    import errno

    import runtime.api.server as server

    def taken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 9): in use")

    monkeypatch.setattr(server, "run", taken)
    result = cli("serve", "--port", str(_closed_port()), code=10)
    assert "already in use" in result.stderr


# credential set: empty stdin is refused; the output says which secret is stored


def test_credential_set_refuses_empty_stdin_and_says_when_the_secret_is_kept(cli: Cli) -> None:
    tenant_id = cli.json("tenant", "show", "acme")["id"]

    def secret() -> str | None:
        return cli.plane(lambda plane: plane.credentials.secret(tenant_id, "twilio"))

    sid = "--field", "account_sid=AC" + "1" * 32
    first = cli("credential", "set", "--tenant", "acme", "twilio", *sid, input="token-one\n")
    assert "secret stored: yes (the new one)" in first.stdout and "replacing" not in first.stdout

    # `printf %s "$UNSET" | voicectl credential set ...`: refused, the stored secret untouched.
    for empty in ("", "\n", "  \n"):
        refused = cli("credential", "set", "--tenant", "acme", "twilio", *sid, input=empty, code=2)
        assert refused.stderr.startswith("error: stdin is empty: no secret (the twilio auth token) to store")
        assert "--no-secret to keep the stored one" in refused.stderr
        assert refused.stdout == ""
    assert secret() == "token-one"

    # Fields only, on purpose: said plainly.
    kept = cli("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "2" * 32,
               "--no-secret")
    assert "secret stored: yes (the one stored before, kept: no new secret was given)" in kept.stdout
    assert secret() == "token-one"
    assert cli.json("credential", "show", "twilio", "--tenant", "acme")["fields"]["account_sid"] == "AC" + "2" * 32

    replaced = cli("credential", "set", "--tenant", "acme", "twilio", *sid, input="token-two")
    assert "secret stored: yes (the new one, replacing the old one)" in replaced.stdout
    assert secret() == "token-two"
    as_json = cli.json("credential", "set", "--tenant", "acme", "twilio", *sid, "--no-secret")
    assert as_json["secret_set"] is True and as_json["secret_updated"] is False
    assert cli.json("credential", "set", "--tenant", "acme", "twilio", *sid, input="t3")["secret_updated"] is True

    # A required secret never stored: refused without a way around it.
    missing = cli("credential", "set", "--tenant", "acme", "deepgram", code=2)
    assert "stdin is empty" in missing.stderr and "--no-secret" not in missing.stderr
    # An optional one: --no-secret stores the credential without it.
    optional = cli("credential", "set", "--tenant", "acme", "openai", code=2)
    assert "--no-secret to store the credential without one" in optional.stderr
    none = cli("credential", "set", "--tenant", "acme", "openai", "--field", "base_url=http://127.0.0.1:11434/v1",
               "--no-secret")
    assert "secret stored: no" in none.stdout


# events tail: no runtime -> exit 8, as `voicectl call`


def test_events_tail_without_a_runtime_exits_8_like_call(cli: Cli) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    tail = cli("events", "tail", "--url", url, "--key", "vk_rt_" + "x" * 40, code=8)
    assert tail.stderr.startswith(f"error: cannot reach the runtime at {url} (")
    assert tail.stderr.rstrip().endswith("is `voicectl serve` running there?")
    cli.json("agent", "create", "--tenant", "acme", "--name", "desk", "--prompt", "x")
    cli.json("number", "add", "--tenant", "acme", "--agent", "desk", "--provider", "twilio", "+15551230001")
    call = cli("call", "+15551230001", "--url", url, "--auth-token", "t", "--say", "hi", code=8)
    assert f"cannot reach the runtime at {url}" in call.stderr and "is `voicectl serve` running there?" in call.stderr


# The hint after a call: the CLI as it was run, with the config it used


def test_the_hint_after_a_call_names_the_cli_path_and_config(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicectl.demo import provision

    cli.plane(provision)
    monkeypatch.setattr(sys, "argv", [".venv/bin/voicectl", "call"])
    chat = cli("call", "+15550100001", "--text", "--say", "no thanks, goodbye")
    hint = [line for line in chat.stdout.splitlines() if line.startswith("stored: ")]
    assert hint and hint[0].startswith(f"stored: .venv/bin/voicectl --config {cli.config} calls show call_"), hint
    call_id, tenant = hint[0].split("calls show ", 1)[1].split(" --tenant ")
    shown = CliRunner().invoke(app, ["--config", str(cli.config), "calls", "show", call_id, "--tenant", tenant,
                                     "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == call_id

"""The installed ``voicectl`` as a real subprocess: start-up time, imports, the flow, the demo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "voicectl"
HEAVY = ("runtime", "pydantic", "rich", "aiohttp", "asyncpg", "yaml", "keyring", "sqlite_utils", "asyncio")


def voicectl_command() -> list[str]:
    """The console script of this venv, else ``python -m voicectl``."""
    return [str(BIN)] if BIN.exists() else [sys.executable, "-m", "voicectl"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    environ["VOICECTL_SECRETS__BACKEND"] = "cryptfile"
    environ["VOICECTL_CONFIG"] = str(tmp_path / "config.yaml")
    environ.pop("COLUMNS", None)
    return environ


def run(env: dict[str, str], *args: str, input: str | None = None, code: int = 0,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*voicectl_command(), *args], input=input if input is not None else "", capture_output=True, text=True,
        env=env, cwd=cwd, timeout=120,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == code, f"voicectl {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc


def run_json(env: dict[str, str], *args: str, input: str | None = None) -> dict:
    return json.loads(run(env, *args, "--json", input=input).stdout)


def test_help_is_fast() -> None:
    command = [*voicectl_command(), "--help"]
    subprocess.run(command, capture_output=True, check=True, timeout=60)  # warm the bytecode cache
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        timings.append(time.perf_counter() - start)
        assert proc.returncode == 0 and "Usage" in proc.stdout
    best, median = min(timings), sorted(timings)[len(timings) // 2]
    print(f"\nvoicectl --help: best {best * 1000:.0f} ms, median {median * 1000:.0f} ms")
    assert median < 1.5, f"voicectl --help took {median:.2f} s"


# The provider registry is a list of names: the CLI reads its choices from it, and nothing else of the runtime.
NAME_ONLY = {"runtime", "runtime.providers", "runtime.providers.registry"}


def test_importing_the_cli_loads_nothing_heavy() -> None:
    code = (
        "import sys, voicectl.cli\n"
        f"heavy, allowed = {HEAVY!r}, {NAME_ONLY!r}\n"
        "print(sorted({m for m in sys.modules if m.split('.')[0] in heavy and m not in allowed}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]", f"import voicectl.cli pulled in {proc.stdout.strip()}"


def test_python_dash_m_and_version(env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "voicectl", "--version"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("voicectl ")


def test_missing_config_exits_5(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(env, "tenant", "list", code=5)
    assert "config file not found" in proc.stderr and "voicectl init" in proc.stderr
    # Without VOICECTL_CONFIG: ./config.yaml of the working directory.
    del env["VOICECTL_CONFIG"]
    proc = run(env, "tenant", "list", code=5, cwd=tmp_path)
    assert "config.yaml" in proc.stderr


def test_provisioning_flow_in_subprocesses(env: dict[str, str], tmp_path: Path) -> None:
    init = run_json(env, "init")
    assert init["admin_key"].startswith("vk_admin_")
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "master.key").exists()
    assert "already exists" in run(env, "init", code=4).stderr

    tenant = run_json(env, "tenant", "create", "acme")
    key = run_json(env, "key", "create", "--scope", "runtime", "--tenant", "acme")
    assert key["key"].startswith("vk_rt_") and key["tenant_id"] == tenant["id"]
    agent = run_json(env, "agent", "create", "--tenant", "acme", "--name", "sales", "--prompt", "You sell.",
                     "--greeting", "Hi there")
    number = run_json(env, "number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio",
                      "+15551230001")
    assert number["agent_id"] == agent["id"]

    # The secret is piped on stdin and appears in no output.
    secret = "sub-proc-secret-9c8b7a6f"
    outputs = []
    proc = run(env, "credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "a" * 32,
               input=secret + "\n")
    outputs += [proc.stdout, proc.stderr]
    for args in (["credential", "list", "--tenant", "acme"], ["credential", "show", "twilio", "--tenant", "acme",
                                                              "--json"]):
        proc = run(env, *args)
        outputs += [proc.stdout, proc.stderr]
    assert all(secret not in out for out in outputs)
    assert all(secret.encode() not in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())

    # Error cases.
    assert run(env, "tenant", "show", "nope", code=3).stderr == "error: no tenant with id or name 'nope'\n"
    assert "E.164" in run(env, "number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio",
                          "12345", code=2).stderr
    assert "already routed" in run(env, "number", "add", "--tenant", "acme", "--agent", "sales", "--provider",
                                   "goto", "+15551230001", code=4).stderr

    # Drafts and promote by id alone; revoke.
    run_json(env, "agent", "update", agent["id"], "--greeting", "Welcome")
    assert run_json(env, "agent", "promote", agent["id"])["active_version"] == 2
    assert run_json(env, "key", "revoke", key["id"])["revoked_at"]
    assert run_json(env, "db", "migrate")["applied"] == []

    # Human tables render in a pipe (no terminal) without folding ids.
    listed = run(env, "agent", "list", "--tenant", "acme").stdout
    assert agent["id"] in listed


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_demo_runs_init_serves_and_books_a_table_over_a_real_call(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(env, "demo", "--json")
    data = json.loads(proc.stdout)
    assert data["admin_key"].startswith("vk_admin_") and data["runtime_key"].startswith("vk_rt_")
    assert data["number"] == "+15550100001" and data["status"] == 200
    agents = data["agents"]["items"]
    assert [(a["id"], a["name"]) for a in agents] == [(data["agent_id"], "booking")]
    call = data["call"]
    assert call["status"] == "ended" and call["hung_up_by"] == "agent", call
    assert [t["name"] for t in call["tool_calls"]] == ["check_availability", "create_booking", "end_call"]
    assert call["tool_calls"][1]["arguments"]["party_size"] == 2
    assert [t["role"] for t in call["transcript"]].count("caller") == 3
    assert call["latency"]["v2v"]["count"] >= 3
    port = int(data["server"].rsplit(":", 1)[1])
    assert _port_is_free(port), "the demo left its server running"
    # The call is in the archive; a second run finds everything it provisioned.
    listed = run_json(env, "calls", "list", "--tenant", "demo")
    assert [c["id"] for c in listed["items"]] == [call["call_id"]]
    again = run_json(env, "demo", "--provision-only")
    assert again["agent_id"] == data["agent_id"] and "admin_key" not in again

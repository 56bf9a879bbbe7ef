"""The voicectl CLI in-process through typer's CliRunner.

Each test works in its own tmp_path config; secrets use the encrypted-file
backend. The provisioning flow also runs against PostgreSQL (VOICECTL_DATABASE__URL
with a schema of its own, dropped afterwards by conftest's db_url fixture).
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from voicectl.cli import app

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """Invoke voicectl with --config PATH; check the exit code and that no traceback escaped."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, code: int | None = 0) -> Any:
        result = self.runner.invoke(app, ["--config", str(self.config), *args], input=input)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"voicectl {' '.join(args)} raised {result.exception!r}\n{result.output}"
        )
        assert "Traceback" not in result.output
        if code is not None:
            assert result.exit_code == code, (
                f"voicectl {' '.join(args)}: exit {result.exit_code}, expected {code}\n{result.output}"
            )
        return result

    def json(self, *args: str, input: str | None = None) -> Any:
        result = self(*args, "--json", input=input)
        return json.loads(result.stdout)

    def plane(self, fn: Any) -> Any:
        """Run ``fn(control_plane)`` against the same config (for checks the CLI does not show)."""
        from runtime.config import load_settings
        from runtime.control.plane import ControlPlane

        settings = load_settings(self.config)

        async def main() -> Any:
            plane = await ControlPlane.open(settings)
            try:
                return await fn(plane)
            finally:
                await plane.close()

        return asyncio.run(main())


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    return Cli(tmp_path / "conf" / "config.yaml")


@pytest.fixture
def ready(cli: Cli) -> Cli:
    """An initialised config with tenant acme, agent sales and a number."""
    cli.json("init")
    cli.json("tenant", "create", "acme")
    cli.json("agent", "create", "--tenant", "acme", "--name", "sales", "--prompt", "You sell tickets.")
    cli.json("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio", "+15551230001")
    return cli


# init


def test_init_exact_form_writes_config_database_and_master_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    config = tmp_path / "site" / "config.yaml"
    runner = CliRunner()
    result = runner.invoke(app, ["init", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["admin_key"].startswith("vk_admin_")
    assert data["config"] == str(config.resolve())
    assert data["database"] == f"sqlite:///{config.parent.resolve()}/voicectl.db"
    assert data["schema_version"] >= 1
    assert config.exists()
    assert (config.parent / "voicectl.db").exists()
    key_file = config.parent / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = config.read_text()
    assert "sqlite:///voicectl.db" in text and "backend: auto" in text

    # The admin key works (and is the only place it is ever shown).
    cli = Cli(config)
    principal = cli.plane(lambda plane: plane.keys.authenticate(data["admin_key"]))
    assert principal.is_admin
    assert data["admin_key"] not in cli("key", "list").output


def test_init_refuses_to_overwrite_unless_forced(cli: Cli) -> None:
    first = cli.json("init")
    before = cli.config.read_text()
    result = cli("init", code=4)
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert cli.config.read_text() == before
    second = cli.json("init", "--force")
    assert second["admin_key"] != first["admin_key"]
    # The database was kept: both admin keys are there.
    assert cli.json("key", "list")["total"] == 2


def test_init_human_output_prints_the_key_once(cli: Cli) -> None:
    result = cli("init")
    keys = re.findall(r"vk_admin_\w+", result.output)
    assert len(keys) == 1
    assert "not shown again" in result.stderr


def test_init_leaves_no_config_behind_when_the_database_is_unreachable(cli: Cli, monkeypatch) -> None:
    monkeypatch.setenv("VOICECTL_DATABASE__URL", "postgresql://postgres@127.0.0.1:1/nothing")
    result = cli("init", code=6)
    assert result.stderr.startswith("error: database unavailable")
    assert not cli.config.exists()


# The full provisioning flow, on both backends


def test_provisioning_flow(cli: Cli, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECTL_DATABASE__URL", db_url)
    init = cli.json("init")
    assert init["database"].split("?")[0] == db_url.split("?")[0]

    tenant = cli.json("tenant", "create", "acme", "--timezone", "Europe/Berlin", "--max-concurrent-calls", "3",
                      "--max-call-duration", "600", "--recording", "--retention-days", "7")
    assert tenant["id"].startswith("ten_")
    assert (tenant["timezone"], tenant["max_concurrent_calls"], tenant["max_call_duration_s"],
            tenant["recording_enabled"], tenant["retention_days"]) == ("Europe/Berlin", 3, 600, True, 7)
    assert cli.json("tenant", "show", "acme")["id"] == tenant["id"]
    assert cli.json("tenant", "show", tenant["id"])["name"] == "acme"
    assert [t["name"] for t in cli.json("tenant", "list")["items"]] == ["acme"]

    runtime_key = cli.json("key", "create", "--scope", "runtime", "--tenant", "acme")
    assert runtime_key["key"].startswith("vk_rt_") and runtime_key["tenant_id"] == tenant["id"]
    admin_key = cli.json("key", "create", "--scope", "admin")
    assert admin_key["key"].startswith("vk_admin_") and admin_key["tenant_id"] is None
    listed = cli.json("key", "list", "--tenant", "acme")["items"]
    assert [k["id"] for k in listed] == [runtime_key["id"]]
    assert "key" not in listed[0] and "key_hash" not in listed[0]
    assert listed[0]["prefix"] == runtime_key["key"][: len(listed[0]["prefix"])]
    assert listed[0]["last4"] == runtime_key["key"][-4:]

    voice = cli.json("voice", "create", "--tenant", "acme", "--name", "warm", "--speed", "1.1")
    agent = cli.json("agent", "create", "--tenant", "acme", "--name", "sales", "--prompt", "You sell tickets.",
                     "--greeting", "Hello!", "--language", "de", "--llm", "rules", "--voice-profile", "warm",
                     "--tool", "end_call", "--tool", "transfer_to_human", "--escalation", "+15550009999",
                     "--max-duration", "300")
    assert agent["id"].startswith("agt_")
    assert agent["active_version"] == agent["latest_version"] == 1
    config = agent["config"]
    assert config["system_prompt"] == "You sell tickets." and config["greeting"] == "Hello!"
    assert config["language"] == "de" and config["llm"]["provider"] == "rules"
    assert config["voice_profile_id"] == voice["id"]
    assert config["tools"] == ["end_call", "transfer_to_human"]
    assert config["escalation_target"] == "+15550009999" and config["max_duration_s"] == 300
    assert [a["id"] for a in cli.json("agent", "list", "--tenant", "acme")["items"]] == [agent["id"]]

    number = cli.json("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio",
                      "+15551230001")
    assert number["id"].startswith("num_") and number["e164"] == "+15551230001"
    assert number["agent_id"] == agent["id"]
    assert cli.json("number", "show", "+15551230001")["id"] == number["id"]
    assert [n["e164"] for n in cli.json("number", "list", "--tenant", tenant["id"])["items"]] == ["+15551230001"]

    secret = "flow-secret-4d1c9e"
    cred = cli.json("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "0" * 32,
                    input=secret + "\n")
    assert cred["secret_set"] is True and secret not in json.dumps(cred)

    hook = cli.json("webhook", "create", "--tenant", "acme", "--url", "https://example.com/hook",
                    "--event", "voice.call.*")
    assert hook["signing_secret"].startswith("whsec_")
    assert "signing_secret" not in cli.json("webhook", "show", hook["id"])

    assert cli.json("calls", "list", "--tenant", "acme")["items"] == []
    assert cli.json("db", "status")["up_to_date"] is True

    # Tenant isolation as the runtime sees it: the runtime key belongs to acme.
    principal = cli.plane(lambda plane: plane.keys.authenticate(runtime_key["key"]))
    assert principal.tenant_id == tenant["id"] and not principal.is_admin

    # Deleting the tenant takes everything with it.
    cli("tenant", "delete", "acme", "--yes")
    assert cli.json("tenant", "list")["items"] == []
    cli("number", "show", "+15551230001", code=3)


# Error cases: clear messages, right exit codes, never a traceback


def test_unknown_tenant_exits_3(ready: Cli) -> None:
    for args in (["tenant", "show", "nope"], ["agent", "list", "--tenant", "nope"],
                 ["key", "create", "--scope", "runtime", "--tenant", "nope"],
                 ["number", "list", "--tenant", "nope"]):
        result = ready(*args, code=3)
        assert result.stderr == "error: no tenant with id or name 'nope'\n"
        assert result.stdout == ""


def test_invalid_e164_exits_2(ready: Cli) -> None:
    result = ready("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio", "555-1234",
                   code=2)
    assert result.stderr.startswith("error: e164: '555-1234' is not an E.164 number")


def test_duplicate_number_exits_4_even_across_tenants(ready: Cli) -> None:
    result = ready("number", "add", "--tenant", "acme", "--agent", "sales", "--provider", "twilio", "+15551230001",
                   code=4)
    assert result.stderr == "error: +15551230001 is already routed\n"
    ready.json("tenant", "create", "other")
    ready.json("agent", "create", "--tenant", "other", "--name", "x", "--prompt", "p")
    # Spaces and dashes are compacted before the uniqueness check.
    result = ready("number", "add", "--tenant", "other", "--agent", "x", "--provider", "goto", "+1 555-123-0001",
                   code=4)
    assert "already routed" in result.stderr


def test_missing_config_exits_5_and_mentions_init(cli: Cli) -> None:
    result = cli("tenant", "list", code=5)
    assert "config file not found" in result.stderr and "voicectl init" in result.stderr


def test_invalid_config_and_env_exit_5(ready: Cli, monkeypatch) -> None:
    monkeypatch.setenv("VOICECTL_SERVER__PORT", "99999")
    result = ready("tenant", "list", code=5)
    assert "server.port" in result.stderr


def test_schema_validation_errors_name_the_field(ready: Cli) -> None:
    result = ready("tenant", "create", "x", "--max-concurrent-calls", "0", code=2)
    assert result.stderr.startswith("error: max_concurrent_calls:")
    result = ready("tenant", "create", "y", "--timezone", "Mars/Olympus", code=2)
    assert "unknown time zone" in result.stderr
    result = ready("agent", "create", "--tenant", "acme", "--name", "t", "--prompt", "p", "--tool", "fly", code=2)
    assert "unknown built-in tools" in result.stderr
    result = ready("agent", "create", "--tenant", "acme", "--name", "t", code=2)
    assert "system prompt" in result.stderr
    result = ready("agent", "create", "--tenant", "acme", "--name", "t", "--prompt", "p", "--tts", "chatterbx", code=2)
    assert "unknown tts provider 'chatterbx'; known: local, espeak, chatterbox" in result.stderr
    result = ready("voice", "create", "--tenant", "acme", "--name", "v", "--provider", "elevenlab", code=2)
    assert "unknown tts provider 'elevenlab'" in result.stderr
    result = ready("key", "create", "--scope", "admin", "--tenant", "acme", code=2)
    assert "admin keys belong to no tenant" in result.stderr
    result = ready("key", "create", "--scope", "runtime", code=2)
    assert "--tenant" in result.stderr
    result = ready("webhook", "create", "--tenant", "acme", "--url", "ftp://x", code=2)
    assert result.stderr.startswith("error: url:")


def test_conflicts_exit_4(ready: Cli) -> None:
    assert "already exists" in ready("tenant", "create", "acme", code=4).stderr
    assert "already exists" in ready("agent", "create", "--tenant", "acme", "--name", "sales", "--prompt", "p",
                                     code=4).stderr
    # An agent that still answers a number cannot be deleted.
    assert "phone number" in ready("agent", "delete", "sales", "--tenant", "acme", code=4).stderr


def test_database_unavailable_exits_6(ready: Cli, monkeypatch) -> None:
    monkeypatch.setenv("VOICECTL_DATABASE__URL", "postgresql://postgres@127.0.0.1:1/nothing")
    result = ready("tenant", "list", code=6)
    assert result.stderr.startswith("error: database unavailable")


def test_secrets_errors_exit_5(ready: Cli) -> None:
    key_file = ready.config.parent / "master.key"
    key_file.chmod(0o644)
    result = ready("credential", "list", "--tenant", "acme", code=5)
    assert "chmod 600" in result.stderr
    key_file.chmod(0o600)


# Credentials: the secret comes from stdin and never appears in any output


def test_credential_set_reads_stdin_and_never_prints_the_secret(ready: Cli) -> None:
    secret = "tok-7f3a9b2c5d1e-SECRET"
    outputs = []
    result = ready("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "1" * 32,
                   input=secret + "\n")
    outputs.append(result.output)
    assert "secret stored: yes" in result.stdout
    outputs.append(ready("credential", "set", "--tenant", "acme", "twilio", "--field",
                         "account_sid=AC" + "1" * 32, "--json", input=secret).output)
    for args in (["credential", "list", "--tenant", "acme"], ["credential", "list", "--tenant", "acme", "--json"],
                 ["credential", "show", "twilio", "--tenant", "acme"],
                 ["credential", "show", "twilio", "--tenant", "acme", "--json"]):
        outputs.append(ready(*args).output)
    for output in outputs:
        assert secret not in output
    shown = ready.json("credential", "show", "twilio", "--tenant", "acme")
    assert shown["fields"] == {"account_sid": "AC" + "1" * 32} and shown["secret_set"] is True

    # It reached the keyring, exactly.
    tenant_id = ready.json("tenant", "show", "acme")["id"]
    assert ready.plane(lambda plane: plane.credentials.secret(tenant_id, "twilio")) == secret
    # And not the database or the config folder in plaintext.
    for path in ready.config.parent.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

    # Empty stdin is refused (an unset variable is not a secret); --no-secret keeps the stored one.
    empty = ready("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "2" * 32, code=2)
    assert "stdin is empty" in empty.stderr and "--no-secret" in empty.stderr
    kept = ready("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "2" * 32,
                 "--no-secret")
    assert "kept" in kept.stdout
    assert ready.plane(lambda plane: plane.credentials.secret(tenant_id, "twilio")) == secret

    ready("credential", "delete", "twilio", "--tenant", "acme")
    ready("credential", "show", "twilio", "--tenant", "acme", code=3)
    assert ready.plane(lambda plane: plane.credentials.secret(tenant_id, "twilio")) is None


def test_credential_required_and_optional_secrets(ready: Cli) -> None:
    result = ready("credential", "set", "--tenant", "acme", "deepgram", code=2)
    assert "secret" in result.stderr and "stdin" in result.stderr
    assert ready.json("credential", "set", "--tenant", "acme", "openai", "--no-secret")["secret_set"] is False
    result = ready("credential", "set", "--tenant", "acme", "twilio", "--field", "nope", code=2)
    assert "KEY=VALUE" in result.stderr
    result = ready("credential", "set", "--tenant", "acme", "twilio", "--field", "colour=blue", input="x", code=2)
    assert "no field" in result.stderr
    result = ready("credential", "set", "--tenant", "acme", "telegraph", input="x", code=3)
    assert "unknown provider" in result.stderr


# Keys


def test_key_revoke_takes_effect_at_once(ready: Cli) -> None:
    created = ready.json("key", "create", "--scope", "runtime", "--tenant", "acme", "--name", "ci")
    assert ready.plane(lambda plane: plane.keys.authenticate(created["key"])).tenant_id == created["tenant_id"]
    revoked = ready.json("key", "revoke", created["id"])
    assert revoked["revoked_at"] is not None
    listed = ready.json("key", "list")["items"]
    assert created["id"] not in [k["id"] for k in listed]
    with_revoked = {k["id"]: k for k in ready.json("key", "list", "--all")["items"]}
    assert with_revoked[created["id"]]["revoked_at"] == revoked["revoked_at"]

    from runtime.control.errors import Unauthorized

    with pytest.raises(Unauthorized):
        ready.plane(lambda plane: plane.keys.authenticate(created["key"]))
    assert "revoked key" in ready("key", "revoke", created["id"]).stdout  # idempotent
    assert ready("key", "revoke", "key_doesnotexist", code=3).stderr.startswith("error: API key")


def test_key_list_table_shows_prefix_last4_scope_created_last_used(ready: Cli) -> None:
    created = ready.json("key", "create", "--scope", "runtime", "--tenant", "acme")
    out = ready("key", "list").stdout
    for heading in ("prefix", "last4", "scope", "created", "last used"):
        assert heading in out
    assert created["key"][-4:] in out and created["key"] not in out


# Agents: changes make drafts, promote activates


def test_agent_update_creates_draft_and_promote_activates_it(ready: Cli) -> None:
    agent = ready.json("agent", "show", "sales", "--tenant", "acme")
    updated = ready.json("agent", "update", agent["id"], "--prompt", "You sell concert tickets.",
                         "--llm-model", "tiny", "--note", "better prompt")
    assert (updated["active_version"], updated["latest_version"]) == (1, 2)
    assert updated["config"]["system_prompt"] == "You sell tickets."  # calls still use version 1
    versions = ready.json("agent", "versions", agent["id"])["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "active"), (2, "draft")]
    assert versions[1]["note"] == "better prompt"
    assert versions[1]["config"]["llm"]["model"] == "tiny"

    # promote AGENT_ID without --tenant: the tenant is found from the id.
    promoted = ready.json("agent", "promote", agent["id"])
    assert promoted["active_version"] == 2
    assert promoted["config"]["system_prompt"] == "You sell concert tickets."
    out = ready("agent", "promote", agent["id"], "--version", "1").stdout
    assert "version 1 is active" in out
    statuses = [(v["version"], v["status"]) for v in ready.json("agent", "versions", agent["id"])["items"]]
    assert statuses == [(1, "active"), (2, "retired")]

    # A rename alone makes no version; an empty update is refused.
    renamed = ready.json("agent", "update", "sales", "--tenant", "acme", "--name", "sales-2")
    assert renamed["name"] == "sales-2" and renamed["latest_version"] == 2
    assert "nothing to change" in ready("agent", "update", agent["id"], code=2).stderr
    assert ready("agent", "promote", agent["id"], "--version", "9", code=3).stderr.startswith("error:")
    assert "pass --tenant" in ready("agent", "show", "sales-2", code=3).stderr


def test_agent_settings_from_files(ready: Cli, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Long prompt from a file.")
    settings = tmp_path / "agent.yaml"
    settings.write_text("hours:\n  schedule:\n    mon: ['09:00-17:00']\nturn:\n  endpointing_silence_ms: 700\n")
    agent = ready.json("agent", "create", "--tenant", "acme", "--name", "filed", "--prompt-file", str(prompt),
                       "--file", str(settings))
    assert agent["config"]["system_prompt"] == "Long prompt from a file."
    assert agent["config"]["hours"] == {"schedule": {"mon": ["09:00-17:00"]}}
    assert agent["config"]["turn"]["endpointing_silence_ms"] == 700
    bad = tmp_path / "bad.yaml"
    bad.write_text("hours:\n  schedule:\n    funday: ['09:00-17:00']\n")
    result = ready("agent", "create", "--tenant", "acme", "--name", "bad", "--prompt", "p", "--file", str(bad),
                   code=2)
    assert "hours.schedule" in result.stderr and "funday" in result.stderr


# Other nouns


def test_tenant_update_disable_enable_delete(ready: Cli) -> None:
    updated = ready.json("tenant", "update", "acme", "--max-concurrent-calls", "5", "--no-recording")
    assert updated["max_concurrent_calls"] == 5 and updated["recording_enabled"] is False
    assert ready.json("tenant", "disable", "acme")["status"] == "disabled"
    assert "is active" in ready("tenant", "enable", "acme").stdout
    # Delete asks first; "n" keeps it.
    result = ready("tenant", "delete", "acme", input="n\n", code=1)
    assert "Delete tenant acme" in result.output
    assert ready.json("tenant", "show", "acme")["name"] == "acme"
    ready("tenant", "delete", "acme", input="y\n")
    ready("tenant", "show", "acme", code=3)


def test_voice_profiles(ready: Cli) -> None:
    created = ready.json("voice", "create", "--tenant", "acme", "--name", "calm", "--provider", "chatterbox",
                         "--voice-id", "v-9", "--language", "en", "--speed", "0.9")
    assert created["provider"] == "chatterbox" and created["speed"] == 0.9
    assert ready.json("voice", "show", "calm", "--tenant", "acme")["id"] == created["id"]
    assert ready.json("voice", "update", created["id"], "--speed", "1.3")["speed"] == 1.3
    assert [v["name"] for v in ready.json("voice", "list", "--tenant", "acme")["items"]] == ["calm"]
    assert ready("voice", "create", "--tenant", "acme", "--name", "x", "--speed", "9", code=2).stderr.startswith(
        "error: speed:")
    ready("voice", "delete", created["id"])
    ready("voice", "show", created["id"], code=3)


def test_numbers_update_and_remove(ready: Cli) -> None:
    ready.json("agent", "create", "--tenant", "acme", "--name", "support", "--prompt", "You help.")
    moved = ready.json("number", "update", "+15551230001", "--agent", "support", "--label", "main line")
    support = ready.json("agent", "show", "support", "--tenant", "acme")
    assert moved["agent_id"] == support["id"] and moved["label"] == "main line"
    assert ready.json("number", "update", moved["id"], "--pinned-version", "1")["pinned_version"] == 1
    assert ready.json("number", "update", moved["id"], "--unpin")["pinned_version"] is None
    assert "no version 5" in ready("number", "update", moved["id"], "--pinned-version", "5", code=2).stderr
    ready("number", "remove", "+15551230001")
    assert ready.json("number", "list", "--tenant", "acme")["items"] == []
    ready("number", "remove", "+15551230001", code=3)


def test_webhooks_secret_shown_once_and_rotated(ready: Cli) -> None:
    result = ready("webhook", "create", "--tenant", "acme", "--url", "https://example.com/h", "--event",
                   "transcript.*", "--description", "crm")
    secrets = re.findall(r"whsec_[\w-]+", result.stdout)
    assert len(secrets) == 1
    hook = ready.json("webhook", "list", "--tenant", "acme")["items"][0]
    assert hook["events"] == ["transcript.*"] and "secret_ref" not in hook
    assert secrets[0] not in ready("webhook", "show", hook["id"]).output
    rotated = ready.json("webhook", "rotate-secret", hook["id"])
    assert rotated["signing_secret"] != secrets[0]
    updated = ready.json("webhook", "update", hook["id"], "--inactive", "--event", "*")
    assert updated["active"] is False and updated["events"] == ["*"]
    assert "match no topic" in ready("webhook", "update", hook["id"], "--event", "nope.*", code=2).stderr
    ready("webhook", "delete", hook["id"])
    ready("webhook", "show", hook["id"], code=3)


def test_calls_read_commands(ready: Cli) -> None:
    assert ready.json("calls", "list", "--tenant", "acme") == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert "no calls yet" in ready("calls", "list", "--tenant", "acme").stdout
    assert ready("calls", "show", "call_nope", code=3).stderr == "error: no call with id 'call_nope'\n"


def test_human_tables_do_not_interpret_markup(ready: Cli) -> None:
    ready.json("tenant", "create", "[bold]x[/bold]")
    assert "[bold]x[/bold]" in ready("tenant", "list").stdout


def test_list_paging(ready: Cli) -> None:
    for name in ("b", "c", "d"):
        ready.json("tenant", "create", name)
    page = ready.json("tenant", "list", "--limit", "2", "--offset", "1")
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (4, 2, 1, 2)
    assert "showing 2-3 of 4" in ready("tenant", "list", "--limit", "2", "--offset", "1").stdout
    assert "limit must be" in ready("tenant", "list", "--limit", "500", code=2).stderr


# db, config, serve, demo


def test_db_migrate_is_idempotent(cli: Cli) -> None:
    cli.config.parent.mkdir(parents=True)
    cli.config.write_text("database: {url: 'sqlite:///fresh.db'}\nsecrets: {backend: cryptfile}\n")
    status = cli.json("db", "status")
    assert status["current"] == 0 and status["pending"] and status["up_to_date"] is False
    cli("db", "status", "--check", code=1)
    first = cli.json("db", "migrate")
    assert first["applied"] and first["up_to_date"] is True
    second = cli.json("db", "migrate")
    assert second["applied"] == [] and second["current"] == first["current"]
    assert "nothing to do" in cli("db", "migrate").stdout
    cli("db", "status", "--check")


def test_config_check_good_and_bad_files(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("server: {port: 9000}\ndatabase: {url: 'sqlite:///x.db'}\n")
    result = cli("config", "check", str(good))
    assert result.stdout.startswith(f"OK: {good} is valid")
    data = cli.json("config", "check", str(good))
    assert data["ok"] is True and data["server"] == "127.0.0.1:9000"
    assert data["database"] == f"sqlite:///{tmp_path}/x.db"

    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 99999}\ndatabse: {url: x}\n")
    result = cli("config", "check", str(bad), code=5)
    assert "server.port" in result.stderr and "databse" in result.stderr and "unknown key" in result.stderr
    assert "not valid YAML" in cli("config", "check", str(_write(tmp_path / "y.yaml", "a: [")), code=5).stderr
    assert "not found" in cli("config", "check", str(tmp_path / "missing.yaml"), code=5).stderr

    # Without FILE: the --config file.
    cli.json("init")
    assert cli.json("config", "check")["config"] == str(cli.config.resolve())


def test_config_show_redacts_the_database_password(cli: Cli, monkeypatch) -> None:
    cli.json("init")
    monkeypatch.setenv("VOICECTL_DATABASE__URL", "postgresql://app:hunter2@db.example:5432/voice")
    out = cli("config", "show").stdout
    assert "hunter2" not in out and "app:***@db.example" in out
    assert cli.json("config", "show")["database"]["url"] == "postgresql://app:***@db.example:5432/voice"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_serve_passes_host_and_port(ready: Cli, monkeypatch) -> None:
    import runtime.api.server as server

    seen: dict[str, Any] = {}

    def fake_run(settings: Any, host: str | None = None, port: int | None = None) -> None:
        seen.update(settings=settings, host=host, port=port)

    monkeypatch.setattr(server, "run", fake_run)
    monkeypatch.setattr("voicectl.serve.check_can_listen", lambda host, port: None)  # tests/cli/test_cli_edges.py
    ready("serve", "--host", "0.0.0.0", "--port", "9123")
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 9123)
    assert seen["settings"].base_dir == ready.config.parent.resolve()
    ready("serve")
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8080)
    assert ready("serve", "--port", "70000", code=2).exit_code == 2


def test_demo_provision_only_is_idempotent(cli: Cli) -> None:
    first = cli.json("demo", "--provision-only")
    assert first["admin_key"].startswith("vk_admin_")  # init ran: the config did not exist
    assert first["number"] == "+15550100001"
    assert set(first["created"]) == {"tenant", "agent", "number", "credential"}
    second = cli.json("demo", "--provision-only")
    assert "admin_key" not in second and second["created"] == []
    assert (second["tenant_id"], second["agent_id"]) == (first["tenant_id"], first["agent_id"])
    agent = cli.json("agent", "show", "booking", "--tenant", "demo")
    assert agent["config"]["llm"]["provider"] == "rules" and agent["config"]["greeting"]
    cred = cli.json("credential", "show", "twilio", "--tenant", "demo")
    assert re.fullmatch(r"AC[0-9a-f]{32}", cred["fields"]["account_sid"]) and cred["secret_set"]


def test_call_text_chats_with_the_demo_agent_and_archives_it(cli: Cli) -> None:
    cli.json("demo", "--provision-only")
    chat = cli.json("call", "+15550100001", "--text", "--say", "A table for two tomorrow at seven please",
                    "--say", "yes please", "--say", "no thanks, goodbye")
    assert chat["status"] == "ended" and chat["hung_up_by"] == "agent" and chat["end_reason"] == "agent_ended"
    said = [(t["role"], t["text"]) for t in chat["transcript"]]
    assert said[0][0] == "agent" and said[1] == ("caller", "A table for two tomorrow at seven please")
    assert [t["name"] for t in chat["tool_calls"]] == ["check_availability", "create_booking", "end_call"]
    assert chat["tool_calls"][1]["arguments"]["party_size"] == 2
    assert chat["tool_calls"][1]["arguments"]["time"] == "19:00"
    shown = cli.json("calls", "show", chat["call_id"], "--tenant", "demo")
    assert shown["provider"] == "chat" and shown["status"] == "ended"
    # Lines from stdin work the same; an unknown number is a clear error.
    piped = cli.json("call", "+15550100001", "--text", input="hello\nno thanks, goodbye\n")
    assert [t["role"] for t in piped["transcript"]][:2] == ["agent", "caller"]
    assert "is not routed" in cli("call", "+15559999999", "--text", "--say", "hi", code=3).output
    # A call to a runtime that is not there: a readable error and exit code 8.
    down = cli("call", "+15550100001", "--url", "http://127.0.0.1:9", "--say", "hi", code=8)
    assert "cannot reach the runtime at http://127.0.0.1:9" in down.output


# Help, completion and the README


def test_help_and_completion_options() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("--install-completion", "--show-completion", "--config", "tenant", "agent", "serve"):
        assert word in result.stdout


def registered_commands() -> list[str]:
    """Every leaf command of the typer app as 'voicectl <group> <command>' or 'voicectl <command>'."""
    import typer.main

    root = typer.main.get_command(app)
    found: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        else:
            found.append(" ".join(["voicectl", *path]))

    walk(root, [])
    return sorted(found)


def test_registered_commands_cover_the_nouns() -> None:
    commands = registered_commands()
    for expected in ("voicectl init", "voicectl tenant create", "voicectl key revoke", "voicectl agent promote",
                     "voicectl number add", "voicectl credential set", "voicectl webhook rotate-secret",
                     "voicectl db migrate", "voicectl config check", "voicectl serve", "voicectl calls show",
                     "voicectl demo", "voicectl voice create"):
        assert expected in commands


def test_every_command_is_in_the_readme_cli_reference() -> None:
    """README.md's CLI reference section names every registered command as `voicectl <group> <command>`."""
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing (it needs a CLI reference section)"
    text = readme.read_text()
    match = re.search(r"^(#+)\s+[^\n]*\bCLI\b[^\n]*$", text, re.MULTILINE)
    assert match, "README.md has no heading with 'CLI' in it (the CLI reference section)"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}}\s", rest, re.MULTILINE)
    section = rest[: end.start()] if end else rest
    missing = [c for c in registered_commands() if not re.search(re.escape(c) + r"(?![\w-])", section)]
    assert not missing, f"commands missing from README.md's CLI reference: {missing}"


def test_doctor_checks_the_chains_of_the_tenants_agents(ready: Cli) -> None:
    """Offline engines pass on their hash-checked models; a cloud provider without the tenant's
    credential is reported, not crashed on, and the exit code says something is not usable."""
    report = ready.json("doctor", "--tenant", "acme")
    rows = {(r["modality"], r["provider"]): r for r in report["providers"]}
    assert report["ok"] is True and set(rows) == {("stt", "local"), ("llm", "rules"), ("tts", "local")}
    assert rows[("stt", "local")]["used_by"] == ["sales"] and rows[("stt", "local")]["status"] == "ok"
    ready("agent", "update", "sales", "--tenant", "acme", "--llm", "anthropic")
    ready("agent", "promote", "sales", "--tenant", "acme")
    result = ready("doctor", "--tenant", "acme", code=9)
    assert "anthropic" in result.stdout and "missing credential" in result.stdout
    report = json.loads(ready("doctor", "--tenant", "acme", "--json", code=9).stdout)
    anthropic = next(r for r in report["providers"] if r["provider"] == "anthropic")
    assert anthropic["credential"] == "missing" and not anthropic["ok"] and report["ok"] is False
    ready("doctor", "--tenant", "nobody", code=3)


def test_doctor_says_twilio_needs_an_https_public_url(ready: Cli, monkeypatch) -> None:
    """Twilio opens media streams over wss:// only (error 31922 for ws://): the URL comes from
    server.public_url, so a tenant with Twilio and no https public URL would have every call end."""
    ready("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "0" * 32,
          input="auth-token\n")
    report = json.loads(ready("doctor", "--tenant", "acme", "--json", code=9).stdout)
    [twilio] = [r for r in report["providers"] if r["provider"] == "twilio"]
    assert twilio["status"] == "misconfigured" and "wss" not in twilio["detail"] and "31922" in twilio["detail"]
    monkeypatch.setenv("VOICECTL_SERVER__PUBLIC_URL", "https://voice.example.com")
    report = ready.json("doctor", "--tenant", "acme")
    [twilio] = [r for r in report["providers"] if r["provider"] == "twilio"]
    assert twilio["ok"] is True and report["ok"] is True

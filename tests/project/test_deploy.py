"""deploy/: the systemd unit, the nginx and Caddy examples, checked by their own tools.

A missing tool skips a test on a developer's box; in CI (CI=true) it fails, since
.ci/run installs nginx, caddy and systemd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from runtime.config import Settings, build_settings, env_overrides

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "voicectl.service"
NGINX_SITE = DEPLOY / "nginx" / "voicectl.conf"
CADDYFILE = DEPLOY / "Caddyfile"
IN_CI = os.environ.get("CI") == "true"
EXEC = "/opt/voicectl/.venv/bin/voicectl"


def need(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        for folder in ("/usr/sbin", "/sbin", "/usr/bin"):
            if os.access(f"{folder}/{tool}", os.X_OK):
                found = f"{folder}/{tool}"
                break
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{tool} is not installed (.ci/run installs it)")
    pytest.skip(f"{tool} is not installed")


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


# --- systemd unit --------------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> values in order (keys may repeat, e.g. Environment)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def unit_with_existing_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary swapped for /bin/true (same arguments)."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    copy = tmp_path / "voicectl.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true "))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = need("systemd-analyze")
    result = run(tool, "verify", str(unit_with_existing_binary(tmp_path)))
    output = (result.stdout + result.stderr).strip()
    # verify exits 0 on unknown keys and bad values ("Unknown key ..., ignoring"), so
    # any output at all is a finding.
    assert result.returncode == 0 and output == "", output


def test_unit_verify_complains_only_about_the_missing_venv(tmp_path):
    tool = need("systemd-analyze")
    result = run(tool, "verify", str(UNIT))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if os.access(EXEC, os.X_OK):
        assert result.returncode == 0 and not lines, lines
    else:
        assert lines, "expected systemd-analyze to notice the missing ExecStart binary"
        assert all(EXEC in line and "not executable" in line for line in lines), lines


def test_unit_hardening_exposure_stays_low(tmp_path):
    tool = need("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    result = run(tool, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit))
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert overall, result.stdout + result.stderr
    # 0 = fully locked down, 10 = unprotected; 2.0 leaves a margin over today's figure.
    assert result.returncode == 0 and float(overall.group(1)) <= 2.0, overall.group(0)


def test_unit_settings():
    entries = unit_entries(UNIT.read_text())
    one = {key: values[-1] for key, values in entries.items()}
    assert one["Service.ExecStart"] == f"{EXEC} --config /etc/voicectl/config.yaml serve"
    assert one.get("Service.User") == "voicectl" or one.get("Service.DynamicUser") == "yes"
    assert one["Service.StateDirectory"] == "voicectl"
    assert one["Service.StateDirectoryMode"] == "0700"  # the database, keyring and recordings: the service's only
    assert one["Service.WorkingDirectory"] == "/var/lib/voicectl"
    assert one["Service.LoadCredential"] == "master.key:/etc/voicectl/master.key"
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.KillSignal"] == "SIGTERM"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "LockPersonality",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
    ):
        assert one[f"Service.{key}"] == "yes", key
    assert one["Service.ProtectSystem"] == "strict"
    assert set(one["Service.RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in entries["Service.SystemCallFilter"]

    # Stop: systemd waits longer than voicectl's own drain.
    stop = one["Service.TimeoutStopSec"]
    assert stop.isdigit() and int(stop) > Settings().server.shutdown_grace_s + 5

    # Every VOICECTL_* override names a real key with a valid value, and puts the
    # state under /var/lib/voicectl and the master key in the credentials folder.
    environ = dict(value.split("=", 1) for value in entries["Service.Environment"])
    environ = {k: v.replace("%d", "/run/credentials/voicectl.service") for k, v in environ.items()}
    overrides = env_overrides({k: v for k, v in environ.items() if k.startswith("VOICECTL_")})
    settings = build_settings(overrides, Path("/etc/voicectl"), source=str(UNIT))
    assert settings.master_key_path == Path("/run/credentials/voicectl.service/master.key")
    assert settings.database_url == "sqlite:////var/lib/voicectl/voicectl.db"
    assert settings.keyring_path.parent == Path("/var/lib/voicectl")
    assert settings.recording_dir.is_relative_to("/var/lib/voicectl")
    assert settings.secrets.backend == "cryptfile"


def test_unit_command_line_parses_with_the_cli():
    """ExecStart's arguments are ones the real CLI accepts (click rejects unknown options before --help)."""
    command = unit_entries(UNIT.read_text())["Service.ExecStart"][-1].split()
    assert command[0] == EXEC
    result = run(sys.executable, "-m", "voicectl", *command[1:], "--help", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage: " in result.stdout and " serve" in result.stdout


# --- nginx ---------------------------------------------------------------------------------


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voice.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("voice.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def nginx_setup(tmp_path: Path, *, ports: tuple[int, int, int] | None = None) -> Path:
    """A minimal nginx.conf in tmp_path that includes (a copy of) the example site.

    The copy only swaps the certificate paths for a self-signed pair and, with
    ports=(https, http, upstream), the listen and upstream ports for loopback ones.
    """
    cert, key = self_signed_cert(tmp_path)
    site = NGINX_SITE.read_text()
    site, n_cert = re.subn(r"(?m)^(\s*ssl_certificate)\s+\S+;", rf"\1 {cert};", site)
    site, n_key = re.subn(r"(?m)^(\s*ssl_certificate_key)\s+\S+;", rf"\1 {key};", site)
    assert n_cert == 1 and n_key == 1
    if ports:
        https, http, upstream = ports
        replacements = [
            (r"(?m)^\s*listen \[::\]:\d+[^;]*;\n", ""),
            (r"(?m)^(\s*)listen 443 ssl;", rf"\g<1>listen 127.0.0.1:{https} ssl;"),
            (r"(?m)^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{http};"),
            (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream};"),
        ]
        for pattern, repl in replacements:
            site, count = re.subn(pattern, repl, site)
            assert count, pattern
    (tmp_path / "voicectl.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "logs").mkdir(exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {tmp_path / "nginx.pid"};
error_log {tmp_path / "logs" / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path / "logs" / "access.log"};
{temp}
    include {tmp_path / "voicectl.conf"};
}}
"""
    )
    return conf


def nginx_args(nginx: str, tmp_path: Path, conf: Path) -> list[str]:
    return [nginx, "-p", f"{tmp_path}/", "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf)]


def test_nginx_example_passes_nginx_t(tmp_path):
    nginx = need("nginx")
    conf = nginx_setup(tmp_path)
    result = run(*nginx_args(nginx, tmp_path, conf), "-t")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "test is successful" in output, output
    assert "[warn]" not in output and "[emerg]" not in output, output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert proc.poll() is None, "nginx exited early"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


async def test_nginx_example_proxies_http_and_websockets(tmp_path):
    """A live nginx with the example site in front of a stand-in upstream."""
    nginx = need("nginx")

    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "headers": dict(request.headers)})

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(
            {"path": request.path, "forwarded_proto": request.headers.get("X-Forwarded-Proto")}
        )
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application()
    app.router.add_get("/media/{stream}", ws_echo)
    app.router.add_get("/api/v1/events/ws", ws_echo)
    app.router.add_route("*", "/{tail:.*}", echo_headers)
    runner = web.AppRunner(app)
    await runner.setup()
    upstream = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream).start()

    https, http = free_port(), free_port()
    conf = nginx_setup(tmp_path, ports=(https, http, upstream))
    proc = subprocess.Popen(
        [*nginx_args(nginx, tmp_path, conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_for_port(https, proc)
        base = f"https://127.0.0.1:{https}"
        host = {"Host": "voice.example.com"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/webhooks/twilio/voice", data={"CallSid": "CA1"}, headers=host, ssl=False
            ) as resp:
                assert resp.status == 200
                seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
            assert seen["host"] == "voice.example.com"
            assert seen["x-forwarded-proto"] == "https"
            assert seen["x-forwarded-host"] == "voice.example.com"
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-real-ip"] == "127.0.0.1"
            assert "upgrade" not in seen.get("connection", "").lower()

            for path in ("/media/twilio", "/api/v1/events/ws"):
                async with session.ws_connect(f"{base}{path}", headers=host, ssl=False) as ws:
                    hello = await ws.receive_json(timeout=5)
                    assert hello == {"path": path, "forwarded_proto": "https"}
                    await ws.send_str("frame")
                    assert await ws.receive_str(timeout=5) == "echo:frame"

            # Plain HTTP redirects to HTTPS; metrics are served to the box itself.
            async with session.get(
                f"http://127.0.0.1:{http}/api/v1/agents", headers=host, allow_redirects=False
            ) as resp:
                assert resp.status == 301
                assert resp.headers["Location"] == "https://voice.example.com/api/v1/agents"
            async with session.get(f"{base}/metrics", headers=host, ssl=False) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        await runner.cleanup()
    errors = [line for line in stderr.decode().splitlines() if "[emerg]" in line or "[alert]" in line]
    assert not errors, errors


# --- Caddy ---------------------------------------------------------------------------------


def test_caddyfile_example_validates(tmp_path):
    caddy = need("caddy")
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    result = run(
        caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile", env=env, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Valid configuration" in output, output
    assert "not formatted" not in output, output
    assert "127.0.0.1:8080" in CADDYFILE.read_text()


# --- the template unit: one runtime per port ------------------------------------------------

TEMPLATE = DEPLOY / "voicectl@.service"


def template_instance(tmp_path: Path, port: int = 8081) -> Path:
    """The template as instance ``voicectl@PORT.service`` with ExecStart's binary swapped for /bin/true."""
    text = TEMPLATE.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    copy = tmp_path / f"voicectl@{port}.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true "))
    return copy


def test_template_unit_passes_systemd_analyze(tmp_path):
    tool = need("systemd-analyze")
    unit = template_instance(tmp_path)
    result = run(tool, "verify", str(unit))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output
    result = run(tool, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit))
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert overall and float(overall.group(1)) <= 2.0, result.stdout + result.stderr


def test_template_unit_is_the_unit_per_port_without_sqlite():
    single, template = unit_entries(UNIT.read_text()), unit_entries(TEMPLATE.read_text())
    assert template["Service.ExecStart"] == [f"{EXEC} --config /etc/voicectl/config.yaml serve --port %i"]
    assert "%i" in template["Unit.Description"][0]
    # Same user, state, credentials, stop handling and hardening as the single unit ...
    differs = {"Unit.Description", "Unit.After", "Service.ExecStart", "Service.Environment"}
    assert {k: v for k, v in template.items() if k not in differs} == \
        {k: v for k, v in single.items() if k not in differs}
    # ... but no SQLite database (several runtimes need PostgreSQL, set in the config or a drop-in)
    # and the secrets sealed in it, where every instance reads them.
    environ = dict(value.split("=", 1) for value in template["Service.Environment"])
    overrides = env_overrides({k: v.replace("%d", "/run/credentials") for k, v in environ.items()
                               if k.startswith("VOICECTL_")})
    assert build_settings(overrides, Path("/etc/voicectl"), source=str(TEMPLATE)).secrets.backend == "database"
    assert "VOICECTL_DATABASE__URL" not in environ
    del environ["VOICECTL_SECRETS__BACKEND"]
    assert set(environ.items()) < set(dict(v.split("=", 1) for v in single["Service.Environment"]).items())


def test_template_command_line_parses_with_the_cli():
    command = unit_entries(TEMPLATE.read_text())["Service.ExecStart"][-1].replace("%i", "8081").split()
    result = run(sys.executable, "-m", "voicectl", *command[1:], "--help", cwd=ROOT)
    assert result.returncode == 0 and "--workers" in result.stdout, result.stdout + result.stderr

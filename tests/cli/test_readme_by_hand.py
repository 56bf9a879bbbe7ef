"""README.md's "By hand" block, run verbatim with bash in a fresh folder, as a newcomer would
paste it in the repository root after `make install`: it must keep working.

The block is the fenced ``sh`` block between ``<!-- by-hand:begin ... -->`` and
``<!-- by-hand:end -->``. It is written to a file unchanged and run with ``bash -e -o pipefail``
(the first failing command fails the test), in a temporary folder whose ``.venv`` is this
interpreter's virtualenv. The environment holds no Twilio token and no VOICECTL_* setting except
the encrypted-file secrets backend (so a developer's desktop keyring is never written to). The
block starts ``voicectl serve`` in the background on 127.0.0.1:8080 and stops it itself; whatever
is left of its process group is killed afterwards, pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PORT = 8080  # the block's own (the config `init` writes)
TIMEOUT_S = 150.0  # a hung block (e.g. a runtime that never gets ready) fails instead of hanging the suite


def by_hand_block() -> str:
    match = re.search(r"<!-- by-hand:begin[^>]*-->\n```sh\n(.*?)\n```\n<!-- by-hand:end -->", README, re.DOTALL)
    assert match, "README.md lost its by-hand block markers (<!-- by-hand:begin --> ```sh ... ``` <!-- by-hand:end -->)"
    return match.group(1) + "\n"


def sample_agent_lines() -> list[str]:
    """The agent's lines of the sample transcript the README shows after the block."""
    after = README.split("<!-- by-hand:end -->", 1)[1]
    sample = re.search(r"```text\n(.*?)\n\s*```", after, re.DOTALL)
    assert sample, "the README's sample transcript after the by-hand block is missing"
    lines = [line.strip() for line in sample.group(1).splitlines()]
    return [line for line in lines if line.startswith("agent:")]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_the_block_is_self_contained() -> None:
    """What a newcomer copies: the repository's CLI, no placeholder to fill in, no credential
    from outside (the block sets its own made-up token), the server started and stopped."""
    block = by_hand_block()
    commands = [line.split("  #")[0].strip() for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for command in commands:
        assert not re.search(r"(^|[\s|;&(])voicectl\b", command), f"use .venv/bin/voicectl: {command}"
        assert "..." not in command and "<" not in command, f"a placeholder to fill in: {command}"
    exported = block.index("export TWILIO_AUTH_TOKEN=")
    assert exported < block.index('"$TWILIO_AUTH_TOKEN"'), "the block must set the token it uses"
    assert any(c.startswith(".venv/bin/voicectl serve &") for c in commands)
    assert any("call +15551230001 --url http://127.0.0.1:8080" in c for c in commands)
    assert any("calls list --tenant acme" in c for c in commands)
    assert commands[-1].startswith("kill $SERVE_PID")


@pytest.mark.slow
def test_the_by_hand_block_runs_verbatim(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "voicectl").exists():
        _unavailable(f"no voicectl console script in {venv}/bin (run `make install`)")
    if shutil.which("curl") is None:
        _unavailable("curl is not installed")
    if _port_in_use(PORT):
        _unavailable(f"port {PORT} is in use on 127.0.0.1: the README's block serves there")

    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    script = tmp_path / "by-hand.sh"
    script.write_text(by_hand_block())
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_") and k != "TWILIO_AUTH_TOKEN"}
    env["VOICECTL_SECRETS__BACKEND"] = "cryptfile"
    env.pop("COLUMNS", None)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"

    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", script.name], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(proc.pid)
    elapsed = time.monotonic() - started
    output, errors = out.read_text(errors="replace"), err.read_text(errors="replace")
    print(f"\nREADME by-hand block: exit {code} after {elapsed:.1f} s")
    report = f"\n--- stdout\n{output[-6000:]}\n--- stderr\n{errors[-6000:]}"
    assert code is not None, f"the block did not finish within {TIMEOUT_S:.0f} s{report}"
    assert code == 0, f"the block failed (exit {code}){report}"
    assert "Traceback" not in output + errors, report

    # init: the four files the README names, and the admin key shown once.
    for name in ("config.yaml", "voicectl.db", "master.key", "secrets.cfg"):
        assert (tmp_path / name).exists(), f"init did not write {name}"
    assert re.search(r"^admin key: vk_admin_\w+", output, re.MULTILINE), report
    assert "stored twilio credential" in output and "secret stored: yes (the new one)" in output, report
    # The API answered with the runtime key the block kept in $KEY.
    assert '"name":"desk"' in output, report
    # The call: the greeting, the rules brain's answers as the README shows them, and the archive.
    said = [line.strip() for line in output.splitlines()]
    for line in sample_agent_lines():
        assert line in said, f"the README's sample line {line!r} is not what the agent said{report}"
    assert any(line.startswith("caller:") and "open tonight" in line.lower() for line in said), report
    assert re.search(r"^call call_\w+: ended ", output, re.MULTILINE), report
    hint = re.search(r"^stored: (\S*voicectl --config \S+ calls show (call_\w+) --tenant ten_\w+)$", output,
                     re.MULTILINE)
    assert hint, f"no runnable `stored:` hint after the call{report}"
    listed = output[hint.end():]  # `calls list --tenant acme` comes next
    assert "+15551230001" in listed and hint.group(2) in listed, report

    # The hint printed after the call works as it is (the right CLI path and config).
    assert hint.group(1).startswith(".venv/bin/voicectl "), hint.group(1)
    shown = subprocess.run(["bash", "-c", hint.group(1)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0 and "Acme, hello!" in shown.stdout, shown.stdout + shown.stderr

    # The block stopped its runtime.
    deadline = time.monotonic() + 10
    while _port_in_use(PORT) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _port_in_use(PORT), "the runtime the block started is still serving"


def _kill_group(pgid: int) -> None:
    """Whatever the block left running (its background `serve` if it failed before `kill`)."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

"""`serve --workers N`: the supervisor (voicectl/workers.py) with a trivial app on one port, and
what `serve` refuses. The supervisor runs in a child process (it owns the stop signals there)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from runtime.config import build_settings
from tests.cli.test_cli import Cli
from tests.conftest import POSTGRES_BASE_URL
from voicectl.workers import local_shares, worker_count, worker_settings

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _supervise(port: int, count: int, mode: str, marks: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.cli.worker_apps", str(port), str(count), mode, str(marks)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _answers(port: int, timeout_s: float = 30.0, want: int = 2, exclude: frozenset[int] = frozenset()
                   ) -> dict[int, int]:
    """worker index -> pid, from fresh connections (SO_REUSEPORT spreads them), once ``want``
    workers (none of the pids in ``exclude``) have answered."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    body = await resp.json()
            if body["pid"] not in exclude:
                seen[body["worker"]] = body["pid"]
        except (aiohttp.ClientError, TimeoutError):
            await _pause()
        if len(seen) >= want:
            return seen
    raise AssertionError(f"only {seen} answered within {timeout_s} s")


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_a_killed_one_comes_back_and_sigterm_stops_all(tmp_path: Path) -> None:
    port = _free_port()
    parent = _supervise(port, 2, "serve", tmp_path)
    try:
        first = await _answers(port)
        assert set(first) == {1, 2} and len(set(first.values())) == 2
        os.kill(first[2], signal.SIGKILL)
        again = await _answers(port, exclude=frozenset({first[2]}))
        assert again[1] == first[1], "the other worker kept serving"
        assert again[2] != first[2], "worker 2 was started again"
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=30)
        assert parent.returncode == 0, err
        assert "worker died: restarting it" in err
        for pid in again.values():
            assert (tmp_path / f"stopped-{pid}").exists(), "each worker stopped gracefully"
            assert not _alive(pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_each_worker_reaches_itself_on_its_own_loopback_url(tmp_path: Path) -> None:
    """What a worker calls itself (an evaluation's voice webhook, then its media socket) must reach
    that worker: through the shared port the kernel hands each connection to either."""
    from aiohttp.test_utils import make_mocked_request

    from runtime.api.appkeys import SELF_URL
    from runtime.api.evaluations import own_base_url

    port = _free_port()
    parent = _supervise(port, 2, "serve", tmp_path)
    try:
        own: dict[int, str] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            deadline = time.monotonic() + 30
            while len(own) < 2 and time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as resp:
                        body = await resp.json()
                    own[body["pid"]] = body["self_url"]
                except aiohttp.ClientError:
                    await _pause()
            assert len(own) == 2 and len(set(own.values())) == 2, own
            for pid, url in own.items():
                assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{port}"), url
                for _ in range(10):  # fresh connections each time: always the same worker
                    async with http.get(url + "/") as resp:
                        assert (await resp.json())["pid"] == pid
    finally:
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=30)
    app = aiohttp.web.Application()
    app[SELF_URL] = "http://127.0.0.1:4321"
    assert own_base_url(make_mocked_request("POST", "/api/v1/evaluations", app=app)) == "http://127.0.0.1:4321"


async def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    port = _free_port()
    parent = _supervise(port, 2, "serve", tmp_path)
    try:
        workers = await _answers(port)
        parent.send_signal(signal.SIGINT)
        parent.communicate(timeout=30)
        assert parent.returncode == 0
        assert all((tmp_path / f"stopped-{pid}").exists() for pid in workers.values())
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize(("mode", "code", "said"), [
    ("crash", 1, "worker keeps dying"),
    ("fatal", 10, "a restart cannot mend"),
])
def test_workers_that_keep_dying_stop_the_parent_non_zero(tmp_path: Path, mode: str, code: int, said: str) -> None:
    parent = _supervise(_free_port(), 2, mode, tmp_path)
    try:
        _, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == code, err
    assert said in err
    assert ("worker died: restarting it" in err) == (mode == "crash"), "a fatal exit is not retried"


def test_worker_count_and_local_shares() -> None:
    assert worker_count("1") == 1 and worker_count("auto", cores=6) == 6 and worker_count(" AUTO ", cores=1) == 1
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(ValueError):
            worker_count(bad)
    assert local_shares(8, 2) == [4, 4] and local_shares(9, 2) == [5, 4] and sum(local_shares(13, 4)) == 13
    assert local_shares(2, 4) == [1, 1, 1, 1], "each worker gets at least one"


def test_each_worker_has_its_own_instance_id_and_local_share(tmp_path: Path) -> None:
    named = build_settings({"server": {"instance_id": "box-1"}, "limits": {"local_calls": 9}}, tmp_path)
    first, second = (worker_settings(named, 8080, index, 2) for index in (1, 2))
    assert (first.instance_id(8080), second.instance_id(8080)) == ("box-1-w1", "box-1-w2")
    assert (first.limits.local_calls, second.limits.local_calls) == (5, 4)
    default = worker_settings(build_settings({}, tmp_path), 9000, 3, 4)
    assert default.instance_id(9000) == f"{socket.gethostname()}:9000-w3"
    box = build_settings({}, tmp_path)
    assert default.limits.local_calls == max(1, box.limits.local_capacity(box.providers.local.stt_model) // 4)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import runtime.api.server as server

    calls: list[dict] = []
    monkeypatch.setattr(server, "run", lambda settings, **kw: calls.append(kw))
    monkeypatch.setattr("voicectl.workers.run_workers",
                        lambda *a, **k: pytest.fail("no workers may start while cluster mode is refused"))
    return calls


def test_one_worker_serves_as_before(cli: Cli, started: list[dict]) -> None:
    port = _free_port()
    cli("serve", "--port", str(port), "--workers", "1")
    assert started == [{"host": "127.0.0.1", "port": port}]


def test_workers_on_sqlite_are_refused(cli: Cli, started: list[dict]) -> None:
    result = cli("serve", "--port", str(_free_port()), "--workers", "2", code=5)
    assert "--workers 2 needs PostgreSQL" in result.stderr and "SQLite" in result.stderr
    assert not started


def test_workers_without_cluster_mode_are_refused(cli: Cli, started: list[dict],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    result = cli("serve", "--port", str(_free_port()), "--workers", "3", code=5)
    assert "needs cluster mode (events.nats.url) so workers share events and limits" in result.stderr


def test_workers_with_a_nats_url_meet_the_cluster_refusal(cli: Cli, started: list[dict],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__STORAGE", "async+redis://127.0.0.1:6379/0")
    result = cli("serve", "--port", str(_free_port()), "--workers", "2", code=5)
    assert "cluster mode" in result.stderr and "needs PostgreSQL" not in result.stderr


@pytest.mark.parametrize("value", ["0", "lots", "-1"])
def test_a_bad_worker_count_is_a_usage_error(cli: Cli, started: list[dict], value: str) -> None:
    result = cli("serve", "--workers", value, code=2)
    assert "--workers" in result.output


def test_redis_rate_limits_unreachable_at_start_exit_5(cli: Cli, started: list[dict],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__STORAGE", f"async+redis://127.0.0.1:{_free_port()}/0")
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "limits.rate_limits.storage: Redis at redis://127.0.0.1:" in result.stderr
    assert "is unreachable" in result.stderr and not started


def test_the_port_check_binds_as_workers_do_and_sees_another_group_of_workers() -> None:
    import typer

    from voicectl.serve import check_can_listen

    with socket.socket() as other:  # another `serve --workers N` already on the port
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(typer.Exit) as refused:
            check_can_listen("127.0.0.1", port, reuse_port=True)
        assert refused.value.exit_code == 10
    check_can_listen("127.0.0.1", _free_port(), reuse_port=True)

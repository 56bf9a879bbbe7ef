"""Shared fixtures: a database URL per backend, settings with a master key, a ControlPlane.

The store and control suites run unchanged on SQLite and PostgreSQL through the
``backend`` fixture. PostgreSQL is the server at 127.0.0.1:5432 (database ``test``,
user ``postgres``, trust auth); each test gets its own schema, dropped afterwards.
When that server is unreachable the Postgres cases skip locally and FAIL in CI.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import threading
from pathlib import Path

import pytest
import pytest_asyncio

from peers.loopback import LOOPBACK_ALLOW
from runtime.config import Settings, build_settings
from runtime.control.plane import ControlPlane
from runtime.secrets import write_master_key

POSTGRES_BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _run_async(coro_factory) -> object:
    """Run a coroutine to completion on a private loop in a thread (safe inside async tests)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


@functools.lru_cache(maxsize=1)
def _postgres_probe() -> str | None:
    """None when the server answers, else why not."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_BASE_URL, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        _run_async(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None


def postgres_available() -> bool:
    return _postgres_probe() is None


@pytest.fixture(scope="session")
def require_postgres() -> None:
    """Skip (locally) or fail (CI=true) when the PostgreSQL test server is unreachable."""
    reason = _postgres_probe()
    if reason is None:
        return
    message = f"PostgreSQL test server at {POSTGRES_BASE_URL} is unreachable ({reason})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_voicectl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VOICECTL_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("VOICECTL_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("require_postgres")
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/voicectl.db"
        return
    url = f"{POSTGRES_BASE_URL}?schema=t_{secrets.token_hex(6)}"
    yield url
    from runtime.store.postgres import PostgresDatabase

    _run_async(lambda: PostgresDatabase(url).drop_schema())


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # The local peers (webhook receivers, tool endpoints, model servers) listen on loopback.
    built = build_settings({"database": {"url": db_url}, "secrets": {"backend": "cryptfile"},
                            "security": {"egress": {"allow": list(LOOPBACK_ALLOW)}}}, tmp_path)
    write_master_key(built.master_key_path)
    return built


@pytest_asyncio.fixture
async def control(settings: Settings):
    plane = await ControlPlane.open(settings)
    try:
        yield plane
    finally:
        await plane.close()


@pytest_asyncio.fixture
async def api(settings: Settings):
    """A live API server on a loopback port (rate limits raised), with an admin key."""
    from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides

    live, runner = await start_live_api(with_overrides(settings, limits=high_limits()))
    try:
        yield live
    finally:
        await stop_live_api(live, runner)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist hands its workers the controller's terminal width as COLUMNS; the CLI reads it
    # when stdout is not a terminal. Workers see what a serial run sees.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.pop("COLUMNS", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # As `voicectl serve` does after its loop: a LiveKit room connect still retrying in the SDK's
    # native thread must not call back into a finalizing interpreter (that aborts the run).
    from runtime.telephony.livekit.room import release_sdk

    release_sdk()

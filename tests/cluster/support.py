"""Cluster tests: several in-process instances on one Postgres schema and one NATS stream.

NATS JetStream is the machine's server at 127.0.0.1:4222 and PostgreSQL the one at 127.0.0.1:5432:
a test needing either fails when it is missing (no skip). Each test gets its own stream and
subject prefix (deleted after) and its own Postgres schema, so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import Settings, build_settings
from runtime.secrets import write_master_key
from tests.conftest import LOOPBACK_ALLOW, POSTGRES_BASE_URL

NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class ClusterNames:
    """One test's share of the machine's servers."""

    schema_url: str  # postgresql://...?schema=t_...
    stream: str
    subject_prefix: str
    nats_url: str = NATS_URL


def new_cluster_names() -> ClusterNames:
    token = secrets.token_hex(5)
    return ClusterNames(f"{POSTGRES_BASE_URL}?schema=t_{token}", f"VT_{token}", f"vt{token}")


async def delete_stream(names: ClusterNames) -> None:
    import nats
    from nats.js.errors import NotFoundError

    client = await nats.connect(names.nats_url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(names.stream)
    finally:
        await client.close()


def instance_settings(names: ClusterNames, base_dir: Path, instance_id: str, nats_url: str | None = None,
                      **sections: dict[str, Any]) -> Settings:
    """Settings of one instance: the shared schema and stream, its own folder and id. ``nats_url``:
    reach NATS through a ``NatsProxy`` to cut it."""
    base_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "database": {"url": names.schema_url},
        "secrets": {"backend": "database"},  # what cluster mode requires
        "security": {"egress": {"allow": list(LOOPBACK_ALLOW)}},
        "server": {"instance_id": instance_id},
        "events": {"nats": {"url": nats_url or names.nats_url, "stream": names.stream,
                            "subject_prefix": names.subject_prefix}},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    return build_settings(data, base_dir)


def share_master_key(first: Settings, *others: Settings) -> None:
    """Every instance of a cluster has the operator's one master key."""
    write_master_key(first.master_key_path)
    key = first.master_key_path.read_bytes()
    for other in others:
        other.master_key_path.parent.mkdir(parents=True, exist_ok=True)
        other.master_key_path.write_bytes(key)
        other.master_key_path.chmod(0o600)


@dataclass
class NatsProxy:
    """A TCP relay to NATS that a test can cut (every connection closed, new ones refused) and restore:
    "NATS lost mid-run" without stopping the machine's server."""

    upstream: tuple[str, int] = ("127.0.0.1", 4222)
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _pipes: set[asyncio.StreamWriter] = field(default_factory=set)
    _cut: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> NatsProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes -= {writer, up_writer}

    def cut(self) -> None:
        self._cut = True
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()

    def restore(self) -> None:
        self._cut = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def start_instances(names: ClusterNames, tmp_path: Path, count: int, **sections: dict[str, Any]):
    """``count`` live instances (i1, i2, ...) of one cluster, each with its own admin key, on loopback ports."""
    from tests.api.support import high_limits, start_live_api

    # local_calls: the instances run instant engines; the budget of the offline models is not under test.
    sections = {**sections, "limits": {**high_limits(), "local_calls": 100, **sections.get("limits", {})}}
    settings = [instance_settings(names, tmp_path / f"i{n}", f"i{n}", **sections) for n in range(1, count + 1)]
    share_master_key(*settings)
    started = []
    for one in settings:  # one after another: the first migrates the schema
        started.append(await start_live_api(one))
    return started


async def stop_instances(started) -> None:
    from tests.api.support import stop_live_api

    for live, runner in reversed(started):
        await stop_live_api(live, runner)


async def open_call(live: Any, world: Any, **extra: Any) -> Any:
    """An inbound Twilio call to ``world``'s number, opened on instance ``live`` as its bridge would."""
    from runtime.api.appkeys import TRACKER

    return await live.app[TRACKER].open_call(to_number=world.e164, from_number="+15550000001", provider="twilio",
                                             **extra)

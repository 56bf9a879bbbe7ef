"""Cluster instances as real processes (for ``kill -9``): the real app with instant test engines.

Each instance is ``python bench/fake_engines.py --config FILE`` (the same app as ``voicectl serve``,
its speech engines answer at once, no model load), so three of them fit two cores. They share the
test's Postgres schema, NATS stream and master key; each has its own port, state folder and id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from runtime.config import RATE_CLASSES
from tests.cluster.support import ClusterNames

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def instance_config(names: ClusterNames, name: str, port: int, master_key: Path, **sections: dict[str, Any]) -> dict:
    big = {"limit": 1_000_000_000, "window_s": 60}
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "instance_id": name, "shutdown_grace_s": 1},
        "database": {"url": names.schema_url},
        "secrets": {"backend": "database", "master_key_file": str(master_key)},
        "events": {"nats": {"url": names.nats_url, "stream": names.stream, "subject_prefix": names.subject_prefix}},
        "limits": {"max_calls": 1000, "rate_limits": {"runtime": {c: big for c in RATE_CLASSES}}},
        "security": {"egress": {"allow": ["127.0.0.1/32"]}},
        "logging": {"level": "warning", "format": "json"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


@dataclass
class InstanceProcess:
    name: str
    folder: Path
    port: int
    proc: subprocess.Popen | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def start(self, config: dict, clip: Path | None = None) -> None:
        """``clip``: the WAV every agent sentence is spoken with (a long one keeps audio flowing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "fake_engines.py"), "--config", str(path),
                                      *(["--clip", str(clip)] if clip else [])],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder, env=env)

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """``kill -9``: no shutdown, no deregistration, sockets cut by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class ProcessCluster:
    """``count`` instances i1..iN of the test's cluster, started together (the schema migrated first)."""

    names: ClusterNames
    root: Path
    instances: list[InstanceProcess] = field(default_factory=list)

    @property
    def master_key(self) -> Path:
        return self.root / "master.key"

    async def start(self, count: int, clip: Path | None = None, **sections: dict[str, Any]) -> ProcessCluster:
        for n in range(1, count + 1):
            instance = InstanceProcess(f"i{n}", self.root / f"i{n}", free_port())
            instance.start(instance_config(self.names, instance.name, instance.port, self.master_key, **sections),
                           clip)
            self.instances.append(instance)
        await asyncio.gather(*(one.ready() for one in self.instances))
        return self

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()


@dataclass(frozen=True)
class Provisioned:
    tenant_id: str
    key: str  # the tenant's runtime key
    number: str
    account_sid: str
    auth_token: str


async def provision(names: ClusterNames, root: Path, number: str = "+15550107000") -> Provisioned:
    """Migrate the schema, write the cluster's master key, and make one tenant with a runtime key and a
    Twilio number answered by a greeting agent, before any instance starts."""
    from runtime.config import build_settings
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import AgentCreate, ApiKeyCreate, CredentialSet, NumberCreate, TenantCreate
    from runtime.secrets import write_master_key

    root.mkdir(parents=True, exist_ok=True)
    settings = build_settings({"database": {"url": names.schema_url},
                               "secrets": {"backend": "database", "master_key_file": str(root / "master.key")}},
                              root)
    write_master_key(settings.master_key_path)
    account_sid, auth_token = "AC" + "c" * 32, "cluster-test-auth-token"
    control = await ControlPlane.open(settings)
    try:
        tenant = await control.tenants.create(TenantCreate(name="cluster"))
        _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
        agent = await control.agents.create(tenant.id, AgentCreate(name="front-desk", system_prompt="be brief",
                                                                   greeting="Hello, front desk."))
        await control.numbers.add(tenant.id, NumberCreate(e164=number, provider="twilio", agent_id=agent.id))
        await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={"account_sid": account_sid},
                                                                         secret=auth_token))
    finally:
        await control.close()
    return Provisioned(tenant.id, key, number, account_sid, auth_token)

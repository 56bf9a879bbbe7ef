"""Shared by bench/calls.py and bench/webhooks.py: a throw-away runtime with a Twilio tenant,
served by `voicectl serve` pinned to core 0 (the load generator goes to core 1)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import (  # noqa: E402  (bench/api.py's orchestration helpers)
    GENERATOR_CORE,
    REPO,
    SERVER_CORE,
    _free_port,
    _log,
    _pinned,
    _server_env,
    _stop,
    _wait_ready,
)

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-twilio-auth-token"
NUMBER = "+15550170000"
__all__ = ["GENERATOR_CORE", "REPO", "SERVER_CORE", "Runtime", "proc_cpu_s", "proc_rss_kb", "_log", "_pinned",
           "_stop"]


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _provision(config: Path, agent: dict[str, Any], interim_hook: str | None = None) -> None:
    from runtime.config import load_settings
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import AgentCreate, CredentialSet, NumberCreate, TenantCreate, WebhookCreate
    from runtime.secrets import write_master_key
    from runtime.store.tables import ALL_TENANTS

    settings = load_settings(config, environ={})
    write_master_key(settings.master_key_path)
    control = await ControlPlane.open(settings)
    try:
        tenant = await control.tenants.create(TenantCreate(name="bench-twilio"))
        await control.store.tenants.update(tenant.id, {"max_concurrent_calls": 1_000_000}, tenant_id=ALL_TENANTS)
        made = await control.agents.create(tenant.id, AgentCreate(**{"name": "bench", "system_prompt": "bench",
                                                                     **agent}))
        await control.numbers.add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=made.id))
        await control.credentials.set(tenant.id, "twilio", CredentialSet(fields={"account_sid": ACCOUNT_SID},
                                                                         secret=AUTH_TOKEN))
        if interim_hook:  # a subscriber of transcript.interim: the offline STT decodes partials for it
            await control.webhooks.create(tenant.id, WebhookCreate(url=interim_hook, events=["transcript.interim"]))
    finally:
        await control.close()


class Runtime:
    """The runtime on a fresh SQLite state dir, pinned to SERVER_CORE, with one tenant, number and
    agent (``agent``: AgentCreate fields over a plain default). ``instant``: the same app with
    bench/fake_engines.py's instant engines instead of `voicectl serve`'s offline stack; their
    TTS speaks ``clip`` (bench/calls.py: the agent's greeting plays it, so every call has
    outbound audio), else a tone."""

    def __init__(self, pin: bool = True, twilio: dict[str, Any] | None = None, *, instant: bool = False,
                 clip: Path | None = None, agent: dict[str, Any] | None = None,
                 webrtc: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 providers: dict[str, Any] | None = None, interim_hook: str | None = None) -> None:
        self.pin = pin
        self.interim_hook = interim_hook  # a URL taking the tenant's transcript.interim webhooks
        self.providers = providers or {}  # providers keys (bench/pipeline.py: local.stt_model)
        self.limits = limits or {}  # extra limits keys (bench/overload.py: local_calls)
        self.twilio = twilio or {}  # extra telephony.twilio keys
        self.webrtc = webrtc or {}  # telephony.webrtc keys (bench/webrtc.py)
        self.instant, self.clip = instant or clip is not None, clip
        self.agent = agent or {}
        self.tmp = tempfile.TemporaryDirectory(prefix="voicectl-bench-")
        self.state = Path(self.tmp.name)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.instance_id = f"bench-{self.state.name}"  # this run's own: another runtime on the port is not it
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Runtime:
        import yaml

        from runtime.config import RATE_CLASSES

        big = {"limit": 1_000_000_000, "window_s": 60}
        config = {
            "server": {"host": "127.0.0.1", "port": self.port, "shutdown_grace_s": 1, "instance_id": self.instance_id},
            "database": {"url": "sqlite:///voicectl.db"},
            "secrets": {"backend": "cryptfile", "master_key_file": "master.key"},
            "limits": {"max_calls": 1_000_000, "rate_limits": {"runtime": {
                name: big for name in RATE_CLASSES}}, **self.limits},
            "telephony": {"twilio": {"api_base_url": "http://127.0.0.1:9", **self.twilio}, "webrtc": self.webrtc},
            "logging": {"level": "warning", "format": "json"},
            "providers": self.providers,
            "security": {"egress": {"allow": [urlsplit(self.interim_hook).netloc] if self.interim_hook else []}},
        }
        path = self.state / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        asyncio.run(_provision(path, self.agent, self.interim_hook))
        if self.instant:
            serve = [sys.executable, str(REPO / "bench" / "fake_engines.py"), "--config", str(path),
                     *(["--clip", str(self.clip)] if self.clip else [])]
        else:
            serve = [sys.executable, "-m", "voicectl", "serve", "--config", str(path)]
        cmd, preexec = _pinned(serve, SERVER_CORE if self.pin else None)
        log_path = self.state / "server.log"
        self.log_file = open(log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                     preexec_fn=preexec, env=_server_env())
        _wait_ready(self.url + "/readyz", self.proc, 90, log_path, self.instance_id)
        print(f"server pid {self.proc.pid} on core {SERVER_CORE if self.pin else '-'}", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        _stop(self.proc)
        self.log_file.close()
        self.tmp.cleanup()

    def generator(self, script: Path, spec: str) -> subprocess.Popen:
        cmd, preexec = _pinned([sys.executable, str(script), "--generator"], GENERATOR_CORE if self.pin else None)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                preexec_fn=preexec)
        assert proc.stdin is not None
        proc.stdin.write(spec)
        proc.stdin.close()
        return proc


def stall_figures(url: str) -> dict[str, Any]:
    """The runtime's own stall series from /metrics (runtime/web/stalls.py): GC passes by
    generation with the slowest bucket reached, and event-loop wake-ups over 20 ms late."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "voicectl_gc_pause_seconds":
            for sample in family.samples:
                gen = sample.labels.get("generation")
                if sample.name.endswith("_count"):
                    out[f"gc{gen}_passes"] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    out[f"gc{gen}_total_ms"] = round(sample.value * 1000, 1)
                elif sample.name.endswith("_bucket") and sample.labels["le"] == "0.02":
                    out[f"gc{gen}_within_20ms"] = int(sample.value)
        elif family.name == "voicectl_event_loop_stalls":
            out["loop_stalls_over_20ms"] = int(next(s.value for s in family.samples if s.name.endswith("_total")))
        elif family.name == "voicectl_event_loop_lag_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["le"] == "0.01":
                    out["loop_wakeups_within_10ms"] = int(sample.value)
                elif sample.name.endswith("_count"):
                    out["loop_wakeups"] = int(sample.value)
    for gen in range(3):
        if f"gc{gen}_passes" in out:
            out[f"gc{gen}_over_20ms"] = out[f"gc{gen}_passes"] - out.pop(f"gc{gen}_within_20ms", 0)
    return out

"""Which runtime packages may import which: layers point down, and a new direction fails here.

The layers, top to bottom: ``api`` (HTTP), ``telephony`` (bridges), ``web`` (HTTP glue both use),
``pipeline`` and ``tools`` (the conversation), ``calls``, ``recording``, ``events``, ``control``,
``providers``, ``store``, and the leaves (``audio``: codecs and resampling; ``config``, ``ids``,
``secrets``, ``logs``, ``one_per``; ``files``: the modes of what the product creates). ``DOWNWARD``
is what the code does today; ``UPWARD`` are the imports that point up and are to be removed. The
test is a ratchet: a new direction fails, and so does a listed one that no longer exists (take it
off the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

DOWNWARD: dict[str, set[str]] = {
    "api": {"calls", "cluster", "config", "control", "evals", "events", "ids", "logs", "pipeline", "providers",
            "recording", "signing_keys", "store", "telephony", "web"},
    # Evaluations place synthetic calls through a bridge's caller side: above the bridges.
    "evals": {"audio", "config", "control", "events", "ids", "providers", "store", "telephony"},
    "telephony": {"audio", "calls", "cluster", "config", "control", "egress", "events", "ids", "one_per", "pipeline",
                  "signing_keys", "store", "web"},
    "pipeline": {"audio", "calls", "control", "egress", "events", "ids", "one_per", "providers", "tools"},
    "tools": {"control", "egress", "events", "ids", "providers", "store"},
    "calls": {"control", "events", "ids", "recording", "store"},
    "recording": {"audio", "control", "egress", "files", "ids", "providers", "store"},  # providers: the registry's optional extras
    "events": {"config", "egress", "ids", "secrets", "store"},
    "control": {"config", "egress", "events", "ids", "providers", "secrets", "store"},
    "providers": {"audio", "config", "egress"},
    # Cluster mode (several runtimes on PostgreSQL + NATS): start-up checks, the relay that carries
    # the bus's events between instances (the bus only knows its Relay protocol), live call control
    # served to and forwarded from peers (runtime.calls.live_ops run over NATS), and instances'
    # leases with the reaper of lost ones' calls.
    "cluster": {"calls", "config", "control", "events", "ids", "secrets", "store"},
    "web": {"config"},  # JSON responses, metrics registry, rate limits: beneath the API and the bridges
    "store": {"files", "ids"},
    "config": {"egress", "providers"},  # the provider registry's names and settings models (no adapters)
    "logs": {"config"},
    "secrets": {"config", "files"},
    "signing_keys": {"config", "secrets"},  # token keys derived from the master key
}
# Upward imports that exist today, to be removed.
UPWARD: dict[str, set[str]] = {
    # The rules brain's schemas, the agent config the chains read and the doctor's control plane:
    # control validates versions against the registry, so the two import each other.
    "providers": {"control"},
}


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in RUNTIME.rglob("*.py"):
        parts = path.relative_to(RUNTIME).parts
        source = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("runtime.") and (target := name.split(".")[1]) != source:
                    edges.setdefault(source, set()).add(target)
    return edges


def test_imports_between_runtime_packages_only_go_the_allowed_ways() -> None:
    allowed = {source: DOWNWARD.get(source, set()) | UPWARD.get(source, set())
               for source in set(DOWNWARD) | set(UPWARD)}
    edges = _edges()
    new = {source: sorted(targets - allowed.get(source, set())) for source, targets in edges.items()
           if targets - allowed.get(source, set())}
    assert not new, f"imports in a direction not allowed (layers point down): {new}"
    gone = {source: sorted(targets - edges.get(source, set())) for source, targets in allowed.items()
            if targets - edges.get(source, set())}
    assert not gone, f"these directions are gone: take them off the lists in this test: {gone}"

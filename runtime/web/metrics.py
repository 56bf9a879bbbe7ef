"""Prometheus metrics of the HTTP layer, in a registry per app (tests run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.web.stalls import GcPauses, LoopLag


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Constant 1 labelled with this runtime's instance id, so scrapes of several instances tell apart.
        self.instance = Gauge("voicectl_instance_info", "This runtime's instance id", ("instance_id",),
                              registry=self.registry)
        self.requests = Counter(
            "voicectl_http_requests", "HTTP requests by route and status",
            ("method", "route", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "voicectl_http_request_duration_seconds", "HTTP request handling time",
            ("route",), registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.auth_failures = Counter(
            "voicectl_auth_failures", "Requests refused for a missing or invalid key", registry=self.registry
        )
        self.rate_limited = Counter(
            "voicectl_rate_limited", "Requests refused by a rate limit", ("route_class",), registry=self.registry
        )
        # Observed only in a served process (runtime/api/server.py installs them).
        self.gc_pauses = GcPauses(self.registry)
        self.loop_lag = LoopLag(self.registry)

    def name_instance(self, instance_id: str) -> None:
        self.instance.clear()
        self.instance.labels(instance_id=instance_id).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one proxy, in a registry of its own.

A private :class:`CollectorRegistry` per app keeps two proxies in one
process (tests, benchmarks) from sharing counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["ProxyMetrics"]

# Blocked mass is a probability; most steps sit near 0, alerts near 1.
MASS_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "guardrail_proxy_requests",
            "Chat-completion requests, by policy and HTTP status.",
            ["policy", "status"],
            registry=self.registry,
        )
        self.blocked_calls = Counter(
            "guardrail_proxy_blocked_calls",
            "Tool calls withheld because they failed post-validation.",
            ["policy"],
            registry=self.registry,
        )
        self.blocked_mass = Histogram(
            "guardrail_proxy_blocked_mass",
            "Per-request maximum of the probability mass the mask blocked "
            "(embedded engine only; vLLM writes it to its own audit log).",
            ["policy"],
            buckets=MASS_BUCKETS,
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "guardrail_proxy_policy_reloads",
            "Policy folder reloads, by result (applied or rejected).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "guardrail_proxy_errors",
            "Requests that ended in an error, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "guardrail_proxy_request_seconds",
            "Time from request received to response ready.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

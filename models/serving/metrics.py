"""Prometheus metrics of one server (prometheus-client), in a registry of its own so two apps in one process
(tests, the main job) never share counters."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/admin/reload",
          "/admin/flush")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics", "route_label"]


def route_label(path: str) -> str:
    """A bounded label: the route, ``/v1/models/{id}`` for a model id, ``other`` for anything else."""
    if path in ROUTES:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class ServerMetrics:
    """Requests by route and status, latency, tokens, admission, capture, and what is served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmops_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("llmops_request_seconds", "Request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.completion_tokens = Counter("llmops_completion_tokens", "Completion tokens generated", registry=r)
        self.prompt_tokens = Counter("llmops_prompt_tokens", "Prompt tokens received", registry=r)
        self.generation_seconds = Counter("llmops_generation_seconds", "Seconds spent generating", registry=r)
        self.ttft = Histogram("llmops_time_to_first_token_seconds", "From a request's arrival to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("llmops_engine_queued", "Sequences waiting for a row of the running batch", registry=r)
        self.running = Gauge("llmops_engine_batch_size", "Sequences in the running batch", registry=r)
        self.in_flight = Gauge("llmops_requests_in_flight", "Completion requests admitted (generating or waiting)",
                               registry=r)
        self.rejected = Counter("llmops_requests_rejected", "Requests refused before generating, by reason",
                                ["reason"], registry=r)
        self.served = Gauge("llmops_served_info", "1 for the version and variant served", ["version", "variant"],
                            registry=r)
        self.capture_backlog = Gauge("llmops_capture_backlog_records", "Captured records not yet in the store",
                                     registry=r)
        self.capture_spool = Gauge("llmops_capture_spool_bytes", "Bytes in the capture spool", registry=r)

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = route_label(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self, refresh: Callable[[ServerMetrics], None]) -> bytes:
        """The exposition text, after ``refresh`` sets the gauges read from the app's state."""
        refresh(self)
        return generate_latest(self.registry)

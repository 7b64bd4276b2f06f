"""
The Prometheus exposition of the runtime's numbers, made at scrape time.

Nothing is counted here: a collector reads what the runtime already keeps
(the pool's numbers, its worker events, C{ctx.requests}) whenever
C{prometheus_client} asks, into a registry of the plugin's own (never the
process-wide default one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format every Prometheus reads (what C{generate_latest} writes)."""

# pool.metrics() key -> (metric name, kind, help, scale)
_POOL: tuple[tuple[str, str, str, str, float], ...] = (
    ("activeWorkers", "buntime_pool_active_workers", "gauge", "Workers running", 1),
    ("ephemeralQueueDepth", "buntime_pool_ephemeral_queue_depth", "gauge",
     "Requests waiting for an ephemeral worker", 1),
    ("memoryUsageMB", "buntime_pool_memory_bytes", "gauge",
     "Resident memory of every worker", 1024 * 1024),
    ("avgResponseTimeMs", "buntime_pool_avg_response_seconds", "gauge",
     "Mean time of the last 100 worker requests", 0.001),
    ("uptimeMs", "buntime_pool_uptime_seconds", "gauge", "Time since the pool started", 0.001),
    ("totalRequests", "buntime_pool_requests", "counter", "Requests sent to workers", 1),
    ("hits", "buntime_pool_hits", "counter", "Requests that found a warm worker", 1),
    ("misses", "buntime_pool_misses", "counter", "Requests that had to wait for a worker", 1),
    ("evictions", "buntime_pool_evictions", "counter", "Workers evicted to make room", 1),
    ("totalWorkersCreated", "buntime_pool_workers_created", "counter", "Workers started", 1),
    ("totalWorkersFailed", "buntime_pool_workers_failed", "counter", "Workers that failed", 1),
    ("totalWorkersRetired", "buntime_pool_workers_retired", "counter", "Workers retired", 1),
)  # fmt: skip

_EVENTS = {
    # worker event -> (metric name, help, labelled by reason)
    "started": ("buntime_worker_starts", "Workers that started and became ready", False),
    "start_failed": ("buntime_worker_start_failures", "Workers that failed to start", False),
    "crashed": ("buntime_worker_crashes", "Workers that died while serving, by reason", True),
    "retired": ("buntime_worker_retirements", "Workers retired, by reason", True),
}


def status_label(status_class: int) -> str:
    """C{2} -> C{"2xx"}."""
    return f"{status_class}xx"


class RuntimeCollector:
    """A C{prometheus_client} collector over a pool view and request outcomes."""

    def __init__(self, pool: Any, requests: Any) -> None:
        self.pool = pool
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        if self.pool is not None:
            yield from _pool(self.pool.metrics())
            yield _workers(self.pool.worker_stats())
            events = getattr(self.pool, "worker_events", None)
            yield from _events(events() if events is not None else ())
        if self.requests is not None:
            yield from _http(self.requests)


def _pool(numbers: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, kind, text, scale in _POOL:
        value = numbers.get(key)
        if not isinstance(value, int | float):
            continue
        family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
        yield family(name, text, value=value * scale)


def worker_list(stats: Mapping[str, Any] | Iterable[Any] | None) -> list[Mapping[str, Any]]:
    """Per-worker stats as a list, whether the pool gives a list or a mapping."""
    if isinstance(stats, Mapping):
        return [s for s in stats.values() if isinstance(s, Mapping)]
    return [s for s in stats or () if isinstance(s, Mapping)]


def _workers(stats: Any) -> Metric:
    family = GaugeMetricFamily("buntime_pool_workers", "Workers by status", labels=["status"])
    by_status = Counter(str(w.get("status", "unknown")) for w in worker_list(stats))
    for status, count in sorted(by_status.items()):
        family.add_metric([status], count)
    return family


def _events(events: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for event, (name, text, by_reason) in _EVENTS.items():
        labels = ["app", "reason"] if by_reason else ["app"]
        families[event] = CounterMetricFamily(name, text, labels=labels)
    for item in events:
        event = str(item.get("event"))
        family = families.get(event)
        if family is None:
            continue
        values = [str(item.get("app", ""))]
        if _EVENTS[event][2]:
            values.append(str(item.get("reason", "")))
        family.add_metric(values, float(item.get("count", 0)))
    yield from families.values()


def _http(requests: Any) -> Iterator[Metric]:
    labels = ["app", "method", "status"]
    counts = CounterMetricFamily("buntime_http_requests", "HTTP requests answered", labels=labels)
    latency = HistogramMetricFamily(
        "buntime_http_request_duration_seconds",
        "Time from a request's arrival to the end of its answer",
        labels=labels,
    )
    bounds = [floatToGoString(bound / 1000) for bound in requests.bounds_ms] + ["+Inf"]
    for row in requests.rows():
        values = [row.app, row.method, status_label(row.status_class)]
        counts.add_metric(values, row.count)
        latency.add_metric(values, list(zip(bounds, row.buckets, strict=True)), row.sum_ms / 1000)
    yield counts
    yield latency


def registry_for(pool: Any, requests: Any) -> CollectorRegistry:
    """A registry of its own holding one L{RuntimeCollector}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(pool, requests))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in C{registry}."""
    return generate_latest(registry)

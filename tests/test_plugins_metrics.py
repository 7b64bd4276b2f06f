"""
The metrics built-in: on by default, its JSON routes, the Prometheus
exposition (parsed with prometheus_client's own parser), the event stream
driven by a clock, its page, and switching it off.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from test_plugins_service import make_service
from test_plugins_support import FakePool, write_plugin
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from buntime.builtins.metrics.snapshot import Window, http_numbers, quantile
from buntime.http import Request
from buntime.plugins.discovery import BUILTINS_DIR
from buntime.plugins.outcomes import RequestOutcomes

METRICS = "@buntime/plugin-metrics"


async def started(tmp_path, **kwargs):
    kwargs.setdefault("reactor", Clock())
    service = make_service(tmp_path, builtins_dir=BUILTINS_DIR, **kwargs)
    service.startService()
    await service.when_loaded()
    return service


def metrics_plugin(service):
    [plugin] = [p for p in service.registry.plugins if p.name == METRICS]
    return plugin


def families(text: str) -> dict:
    """Metric families by name, from the exposition text."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, name: str) -> dict:
    """C{{frozenset(labels): value}} of the samples called C{name}."""
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == name}


@pytest_twisted.ensureDeferred
async def test_enabled_by_default_at_metrics(tmp_path):
    service = await started(tmp_path)
    plugin = metrics_plugin(service)
    assert plugin.base == "/metrics"
    assert plugin.context.logger.context == "plugin:metrics"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_snapshot(tmp_path):
    pool = FakePool()
    service = await started(tmp_path, pool=pool)
    response = await service.registry.route(Request("GET", "/metrics/api/"))
    assert response.status == 200
    assert response.headers.get("content-type") == "application/json"
    assert json.loads(response.body) == {"pool": pool.metrics(), "workers": pool.worker_stats()}
    pool.numbers["totalRequests"] = 8
    again = await service.registry.route(Request("GET", "/metrics/api/"))
    assert json.loads(again.body)["pool"]["totalRequests"] == 8
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stats(tmp_path):
    pool = FakePool()
    pool.workers.append({"status": "idle"})
    service = await started(tmp_path, pool=pool)
    service.requests.record("hello@1.0.0", "GET", 200, 4.0)
    service.requests.record("hello@1.0.0", "POST", 503, 8.0)
    service.requests.record(None, "GET", 404, 3.0)
    response = await service.registry.route(Request("GET", "/metrics/api/stats"))
    found = json.loads(response.body)
    assert found["pool"] == pool.metrics()
    assert found["sseClients"] == 0
    assert found["workers"]["total"] == 3
    assert found["workers"]["byStatus"] == {"active": 1, "idle": 2}
    http = found["http"]
    assert {k: http[k] for k in ("total", "avgMs", "byStatus", "byApp", "errors")} == {
        "total": 3,
        "avgMs": 5.0,
        "byStatus": {"2xx": 1, "4xx": 1, "5xx": 1},
        "byApp": {"hello@1.0.0": 2, "unknown": 1},
        "errors": 1,
    }
    assert http["errorRate"] == pytest.approx(1 / 3, abs=1e-4)
    assert http["boundsMs"] == list(service.requests.bounds_ms)
    assert http["buckets"][0] == 2 and http["buckets"][1] == 3 and http["buckets"][-1] == 3
    # 3 requests: 2 under 5 ms, 1 in (5, 10]; interpolated in their bucket
    assert http["latencyMs"] == {"p50": 3.75, "p95": 9.25, "p99": 9.85}
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stats_show_each_apps_workers_with_their_state(tmp_path):
    pool = FakePool()
    pool.workers = [
        {"id": "w1", "app": "hello", "version": "1.0.0", "status": "active", "inFlight": 2},
        {"id": "w2", "app": "hello", "version": "1.0.0", "status": "active", "inFlight": 0},
        {"id": "w3", "app": "hello", "version": "0.9.0", "status": "stopping", "inFlight": 1},
        {"id": "w4", "app": "todo", "version": "2.0.0", "status": "starting", "key": "/srv"},
        {"id": "w5", "app": "todo", "version": "2.0.0", "status": "idle", "inFlight": 0},
        {"id": "w6", "app": "once", "version": "1.0.0", "status": "ephemeral", "inFlight": 1},
    ]
    service = await started(tmp_path, pool=pool)
    response = await service.registry.route(Request("GET", "/metrics/api/stats"))
    workers = json.loads(response.body)["workers"]
    assert workers["byState"] == {"busy": 2, "idle": 1, "ready": 1, "retiring": 1, "starting": 1}
    hello = workers["byApp"]["hello"]
    assert hello["total"] == 3
    assert hello["byState"] == {"busy": 1, "ready": 1, "retiring": 1}
    assert [(w["id"], w["state"]) for w in hello["workers"]] == [
        ("w3", "retiring"),
        ("w1", "busy"),
        ("w2", "ready"),
    ]
    todo = workers["byApp"]["todo"]["workers"]
    assert todo[0] == {"id": "w4", "version": "2.0.0", "state": "starting", "status": "starting"}
    assert "key" not in todo[0]  # a worker's directory is not shown
    assert workers["byApp"]["once"]["byState"] == {"busy": 1}
    await service.stopService()


def test_quantiles_from_cumulative_buckets():
    bounds = (10.0, 100.0)
    assert quantile(bounds, [0, 0, 0], 0.5) is None
    assert quantile(bounds, [10, 10, 10], 0.5) == 5.0
    assert quantile(bounds, [0, 10, 10], 0.5) == 55.0
    assert quantile(bounds, [5, 5, 10], 0.99) == 100.0  # past the last bound: that bound
    assert quantile(bounds, [1, 2, 2], 0.99) == pytest.approx(98.2)


def test_a_window_gives_the_rates_between_two_summaries():
    window = Window()
    outcomes = RequestOutcomes()
    assert window.rates(10.0, http_numbers(outcomes)) is None
    for _ in range(18):
        outcomes.record("a@1", "GET", 200, 3.0)
    outcomes.record("a@1", "GET", 500, 300.0)
    outcomes.record("a@1", "GET", 500, 300.0)
    rates = window.rates(12.0, http_numbers(outcomes))
    assert rates == {
        "seconds": 2.0,
        "requests": 20,
        "rps": 10.0,
        "errors": 2,
        "errorRate": 0.1,
        "latencyMs": {"p50": pytest.approx(2.778, abs=1e-3), "p95": 375.0, "p99": 475.0},
    }
    # nothing in the next window: no rate, no percentiles
    quiet = window.rates(13.0, http_numbers(outcomes))
    assert quiet["rps"] == 0.0 and quiet["latencyMs"] == {"p50": None, "p95": None, "p99": None}


@pytest_twisted.ensureDeferred
async def test_worker_stats_as_a_mapping(tmp_path):
    class MappingPool(FakePool):
        def worker_stats(self):
            return {"w1": {"status": "active"}, "w2": {"status": "active"}}

    service = await started(tmp_path, pool=MappingPool())
    response = await service.registry.route(Request("GET", "/metrics/api/stats"))
    workers = json.loads(response.body)["workers"]
    assert (workers["total"], workers["byStatus"]) == (2, {"active": 2})
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_a_pool(tmp_path):
    service = await started(tmp_path, pool=None)
    response = await service.registry.route(Request("GET", "/metrics/api/"))
    assert response.status == 503
    assert json.loads(response.body)["error"]["code"] == "NO_POOL"
    service.requests.record("a@1.0.0", "GET", 200, 1.0)
    response = await service.registry.route(Request("GET", "/metrics/api/prometheus"))
    found = families(response.body.decode())
    assert "buntime_pool_active_workers" not in found
    assert "buntime_http_requests" in found
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_unknown_paths_fall_through(tmp_path):
    service = await started(tmp_path)
    assert await service.registry.route(Request("GET", "/metrics/nothing")) is None
    assert await service.registry.route(Request("POST", "/metrics/api/")) is not None
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_switched_off_by_an_override_manifest(tmp_path):
    write_plugin(tmp_path, "metrics", {"name": METRICS, "enabled": False})
    service = await started(tmp_path)
    assert METRICS not in [p.name for p in service.registry.plugins]
    assert await service.registry.route(Request("GET", "/metrics/api/")) is None
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_moved_by_an_override_manifest(tmp_path):
    write_plugin(tmp_path, "metrics", {"name": METRICS, "base": "/stats"})
    service = await started(tmp_path)
    response = await service.registry.route(Request("GET", "/stats/api/"))
    assert response.status == 200
    assert await service.registry.route(Request("GET", "/metrics/api/")) is None
    await service.stopService()


# -- the page ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_page(tmp_path):
    service = await started(tmp_path)
    response = await service.registry.route(Request("GET", "/metrics/"))
    assert response.status == 200
    assert response.headers.get("content-type") == "text/html; charset=utf-8"
    page = response.body.decode()
    assert "<!doctype html>" in page and "dashboard.js" in page
    assert "//" not in page.replace("://www.w3.org", "")  # nothing from another host
    script = await service.registry.route(Request("GET", "/metrics/ui/dashboard.js"))
    assert script.status == 200
    assert script.headers.get("content-type") == "text/javascript; charset=utf-8"
    assert "/api/sse" in script.body.decode() and "frameSDK" in script.body.decode()
    style = await service.registry.route(Request("GET", "/metrics/ui/dashboard.css"))
    assert style.headers.get("content-type") == "text/css; charset=utf-8"
    for missing in ("/metrics/ui/nope.js", "/metrics/ui/index.html", "/metrics/ui/..%2Fplugin.py"):
        assert await service.registry.route(Request("GET", missing)) is None, missing
    menu = await service.registry.route(Request("GET", "/metrics", {"host": "rt.test"}))
    assert menu.status in (301, 308)
    assert menu.headers.get("location").endswith("/metrics/")
    await service.stopService()


# -- Prometheus --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_prometheus_exposition_parses(tmp_path):
    service = await started(tmp_path)
    requests = service.requests
    requests.record("hello@1.0.0", "GET", 200, 3.0)
    requests.record("hello@1.0.0", "GET", 201, 30.0)
    requests.record("hello@1.0.0", "GET", 500, 20_000.0)
    requests.record(None, "GET", 404, 1.0)
    requests.record(None, "BREW", 404, 1.0)
    response = await service.registry.route(Request("GET", "/metrics/api/prometheus"))
    assert response.status == 200
    assert response.headers.get("content-type").startswith("text/plain; version=0.0.4")
    found = families(response.body.decode())

    counted = samples(found["buntime_http_requests"], "buntime_http_requests_total")
    hello = {("app", "hello@1.0.0"), ("method", "GET")}
    assert counted == {
        frozenset({*hello, ("status", "2xx")}): 2,
        frozenset({*hello, ("status", "5xx")}): 1,
        frozenset({("app", "unknown"), ("method", "GET"), ("status", "4xx")}): 1,
        frozenset({("app", "unknown"), ("method", "OTHER"), ("status", "4xx")}): 1,
    }
    latency = found["buntime_http_request_duration_seconds"]
    assert latency.type == "histogram"
    ok = frozenset({*hello, ("status", "2xx")})
    buckets = samples(latency, "buntime_http_request_duration_seconds_bucket")
    ok_buckets = {le: buckets[ok | {("le", le)}] for le in ("0.005", "0.025", "0.05", "+Inf")}
    assert ok_buckets == {"0.005": 1, "0.025": 1, "0.05": 2, "+Inf": 2}
    sums = samples(latency, "buntime_http_request_duration_seconds_sum")
    assert sums[ok] == pytest.approx(0.033)
    slow = frozenset({*hello, ("status", "5xx")})
    assert buckets[slow | {("le", "10.0")}] == 0
    assert buckets[slow | {("le", "+Inf")}] == 1
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_prometheus_pool_and_worker_events(tmp_path):
    pool = FakePool()
    pool.numbers.update(memoryUsageMB=2, hits=5, uptimeMs=1500)
    service = await started(tmp_path, pool=pool)
    response = await service.registry.route(Request("GET", "/metrics/api/prometheus"))
    found = families(response.body.decode())
    assert found["buntime_pool_active_workers"].type == "gauge"
    assert found["buntime_pool_active_workers"].samples[0].value == 1
    assert found["buntime_pool_memory_bytes"].samples[0].value == 2 * 1024 * 1024
    assert found["buntime_pool_uptime_seconds"].samples[0].value == 1.5
    assert found["buntime_pool_hits"].type == "counter"
    assert found["buntime_pool_requests"].samples[0].value == 7
    workers = samples(found["buntime_pool_workers"], "buntime_pool_workers")
    assert workers == {frozenset({("status", "active")}): 1, frozenset({("status", "idle")}): 1}
    app = ("app", "hello@1.0.0")
    starts = samples(found["buntime_worker_starts"], "buntime_worker_starts_total")
    assert starts == {frozenset({app}): 2}
    crashes = samples(found["buntime_worker_crashes"], "buntime_worker_crashes_total")
    assert crashes == {frozenset({app, ("reason", "exited")}): 1}
    retired = samples(found["buntime_worker_retirements"], "buntime_worker_retirements_total")
    assert retired == {frozenset({app, ("reason", "ttl reached")}): 1}
    assert found["buntime_worker_start_failures"].samples == []
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_prometheus_uses_a_registry_of_its_own(tmp_path):
    service = await started(tmp_path)
    await service.registry.route(Request("GET", "/metrics/api/prometheus"))
    assert REGISTRY.get_sample_value("buntime_pool_active_workers") is None
    await service.stopService()


def test_request_outcomes_bound_their_labels():
    outcomes = RequestOutcomes()
    for index in range(3):
        outcomes.record(None, f"M{index}", 404, 1.0)
    [row] = outcomes.rows()
    assert (row.app, row.method, row.status_class, row.count) == ("unknown", "OTHER", 4, 3)


def test_request_outcomes_past_max_rows_share_one_app(monkeypatch):
    monkeypatch.setattr("buntime.plugins.outcomes.MAX_ROWS", 2)
    outcomes = RequestOutcomes()
    for index in range(5):
        outcomes.record(f"app{index}@1.0.0", "GET", 200, 1.0)
    outcomes.record("app0@1.0.0", "GET", 200, 1.0)
    counts = {row.app: row.count for row in outcomes.rows()}
    assert counts == {"app0@1.0.0": 2, "app1@1.0.0": 1, "other": 3}


# -- the event stream --------------------------------------------------------------


async def open_stream(service, path="/metrics/api/sse"):
    """The streamed response of C{path} and an iterator over its chunks."""
    pending = ensureDeferred(service.registry.route(Request("GET", path)))
    service.reactor.advance(0)
    response = await pending
    return response, response.body.__aiter__()


async def next_event(chunks) -> dict:
    """The next event's data, skipping comments."""
    while True:
        chunk = (await chunks.__anext__()).decode()
        if chunk.startswith("data: "):
            return json.loads(chunk[len("data: ") :])


@pytest_twisted.ensureDeferred
async def test_sse_sends_a_snapshot_every_interval(tmp_path):
    write_plugin(tmp_path, "metrics", {"name": METRICS, "sseInterval": 250})
    service = await started(tmp_path)
    clock = service.reactor
    response, chunks = await open_stream(service)
    assert response.status == 200
    assert response.headers.get("content-type") == "text/event-stream; charset=utf-8"
    first = await next_event(chunks)
    assert first["sseClients"] == 1 and first["http"]["total"] == 0
    assert first["rate"] is None  # no window before the second event
    waiting = ensureDeferred(next_event(chunks))
    clock.advance(0.2)
    assert not waiting.called
    service.requests.record("a@1.0.0", "GET", 200, 1.0)
    clock.advance(0.05)
    second = await waiting
    assert second["http"]["total"] == 1
    assert second["rate"]["requests"] == 1 and second["rate"]["rps"] == 4.0
    assert second["rate"]["latencyMs"]["p50"] == 2.5  # one request under 5 ms
    await chunks.aclose()  # the client goes away
    assert metrics_plugin(service).provider.streams == set()
    assert clock.getDelayedCalls() == []  # no timer left running
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_interval_from_the_environment(tmp_path):
    service = await started(tmp_path, environ={"METRICS_SSE_INTERVAL": "2000"})
    assert metrics_plugin(service).provider.sse_interval == 2.0
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_streams_end_when_the_runtime_stops(tmp_path):
    service = await started(tmp_path)
    _, chunks = await open_stream(service)
    await next_event(chunks)
    service.runtime_stopping()
    with pytest.raises(StopAsyncIteration):
        while True:
            await chunks.__anext__()
    assert service.reactor.getDelayedCalls() == []
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_streams_end_on_shutdown(tmp_path):
    service = await started(tmp_path)
    _, chunks = await open_stream(service)
    await next_event(chunks)
    await service.stopService()
    with pytest.raises(StopAsyncIteration):
        while True:
            await chunks.__anext__()


@pytest_twisted.ensureDeferred
async def test_sse_to_a_client_that_does_not_read_keeps_little(tmp_path):
    """
    A client that stops reading its event stream pauses it: what waits for
    it stays bounded (the channel's high water), not one summary per tick
    for as long as it stays connected; once it reads again, events go on.
    """
    write_plugin(tmp_path, "metrics", {"name": METRICS, "sseInterval": 100})
    service = await started(tmp_path)
    clock = service.reactor
    _, chunks = await open_stream(service)
    await next_event(chunks)
    for _ in range(5000):  # 500 s of a client that reads nothing
        clock.advance(0.1)
    waiting = 0
    while True:
        read = ensureDeferred(chunks.__anext__())
        if not read.called:
            break
        waiting += len(read.result)
    assert 0 < waiting < 512 * 1024
    clock.advance(0.1)
    assert (await read).startswith(b"data: ")  # the stream goes on once read again
    await chunks.aclose()
    assert clock.getDelayedCalls() == []
    await service.stopService()

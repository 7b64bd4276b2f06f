"""
The metrics and logs built-ins through a real runtime (C{twistd -n
buntime}) serving a real app: the Prometheus exposition parsed with
prometheus_client's parser after real requests, event streams read for two
events and dropped (the runtime lets go of them), the logs API (query,
filter, add, clear), both pages, and a stop that does not wait for open
streams.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import wait_until, within, write_app
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

pytestmark = pytest.mark.e2e

HELLO = """
    import asyncio

    gate = asyncio.Event()

    def hello(request):
        print("hello from the worker", flush=True)
        return {"hello": "world"}

    def broken(request):
        raise RuntimeError("broken on purpose")

    async def hold(request):
        await asyncio.wait_for(gate.wait(), 60)
        return {"held": True}

    async def release(request):
        gate.set()
        return {"released": True}

    routes = {"/": hello, "/broken": broken, "/hold": hold, "/release": release}
"""


@pytest.fixture
def apps(tmp_path):
    write_app(tmp_path, "hello", "1.0.0", files={"app.py": HELLO})
    return tmp_path


async def start(runtimes, apps, **env):
    return await runtimes.start(worker_dirs=[str(apps)], env={"METRICS_SSE_INTERVAL": "200", **env})


async def text(response) -> str:
    import treq

    return (await treq.content(response)).decode()


class EventReader(Protocol):
    """Asks for an event stream; C{enough} fires once C{wanted} events have arrived."""

    def __init__(self, path: str, wanted: int) -> None:
        self.path, self.wanted = path, wanted
        self.received = b""
        self.enough: Deferred[list[str]] = Deferred()

    def connectionMade(self) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.transport.write(request.encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        events = [line for line in self.received.decode().splitlines() if line.startswith("data:")]
        if len(events) >= self.wanted and not self.enough.called:
            self.enough.callback(events)


async def two_events_then_drop(reactor: Any, port: int, path: str, poke=None) -> list[str]:
    """Read two events of C{path}, then drop the connection (C{poke}: make events happen)."""
    reader = EventReader(path, 2)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
    assert b"text/event-stream" in await wait_for_head(reactor, reader)
    if poke is not None:
        await poke()
    events = await within(reactor, reader.enough, 10)
    reader.transport.abortConnection()
    return events


async def wait_for_head(reactor: Any, reader: EventReader) -> bytes:
    assert await wait_until(reactor, lambda: b"\r\n\r\n" in reader.received, 10)
    return reader.received.split(b"\r\n\r\n")[0].lower()


def families(exposition: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(exposition)}


def value(family, name: str, **labels: str) -> float | None:
    for sample in family.samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


@pytest_twisted.ensureDeferred
async def test_prometheus_after_real_requests(runtimes, apps):
    proc = await start(runtimes, apps)
    for _ in range(3):
        response = await proc.get("/hello/")
        assert response.code == 200
        await text(response)
    response = await proc.get("/hello/broken")
    assert response.code == 500
    await text(response)
    response = await proc.get("/no-such-app/")
    assert response.code == 404
    await text(response)

    response = await proc.get("/metrics/api/prometheus")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    found = families(await text(response))
    requests = found["buntime_http_requests"]
    hello = {"app": "hello@1.0.0", "method": "GET"}
    assert value(requests, "buntime_http_requests_total", **hello, status="2xx") == 3
    assert value(requests, "buntime_http_requests_total", **hello, status="5xx") == 1
    assert value(requests, "buntime_http_requests_total", app="unknown", status="4xx") >= 1
    latency = found["buntime_http_request_duration_seconds"]
    name = "buntime_http_request_duration_seconds"
    assert value(latency, f"{name}_count", **hello, status="2xx") == 3
    assert value(latency, f"{name}_bucket", **hello, status="2xx", le="+Inf") == 3
    assert value(latency, f"{name}_sum", **hello, status="2xx") > 0
    starts = found["buntime_worker_starts"]
    assert value(starts, "buntime_worker_starts_total", app="hello@1.0.0") == 1
    assert value(found["buntime_pool_active_workers"], "buntime_pool_active_workers") == 1
    assert value(found["buntime_pool_requests"], "buntime_pool_requests_total") == 4


@pytest_twisted.ensureDeferred
async def test_stats_show_a_busy_worker_and_latency_percentiles(runtimes, apps):
    from twisted.internet import reactor

    proc = await start(runtimes, apps)
    await text(await proc.get("/hello/"))

    async def hello_workers() -> dict:
        found = await proc.json(await proc.get("/metrics/api/stats"))
        return found["workers"]["byApp"].get("hello", {})

    held = proc.get("/hello/hold")  # stays in flight until released
    busy: dict = {}
    for _ in range(200):
        busy = await hello_workers()
        if busy.get("byState") == {"busy": 1}:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert busy["byState"] == {"busy": 1}
    [worker] = busy["workers"]
    assert (worker["state"], worker["status"], worker["inFlight"]) == ("busy", "active", 1)
    assert worker["version"] == "1.0.0" and "key" not in worker
    await text(await proc.get("/hello/release"))
    assert (await proc.json(await within(reactor, held, 30))) == {"held": True}
    ready = await hello_workers()
    assert ready["byState"] == {"ready": 1} and ready["workers"][0]["inFlight"] == 0

    http = (await proc.json(await proc.get("/metrics/api/stats")))["http"]
    assert http["byApp"]["hello@1.0.0"] == 3  # /, /hold, /release
    latency = http["latencyMs"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


@pytest_twisted.ensureDeferred
async def test_a_requests_task_holds_the_runtime_and_the_worker_lines(runtimes, apps):
    from twisted.internet import reactor

    proc = await start(runtimes, apps)
    response = await proc.get("/hello/", headers={"x-request-id": ["e2e-follow-1"]})
    await text(response)

    async def entries(query: str) -> list[dict]:
        return (await proc.json(await proc.get(f"/logs/api/?{query}")))["entries"]

    found: list[dict] = []
    for _ in range(200):  # the worker's output arrives on its own channel
        found = await entries("request_id=e2e-follow-1")
        if any(e["context"].startswith("worker:") for e in found):
            break
        await deferLater(reactor, 0.05, lambda: None)
    [task] = {e["task_uuid"] for e in found}  # one task across runtime and worker
    in_task = await entries(f"task={task}")
    contexts = {e["context"] for e in in_task}
    assert contexts == {"runtime", "worker:hello@1.0.0"}
    messages = [e["message"] for e in in_task]
    assert "hello from the worker" in messages
    assert any(m.startswith("GET /hello/ 200") for m in messages)
    assert any(e["level"] == "debug" for e in in_task)  # a task shows all its levels
    assert await entries("task=no-such-task") == []


@pytest_twisted.ensureDeferred
async def test_pages_are_html(runtimes, apps):
    proc = await start(runtimes, apps)
    for path in ("/metrics/", "/logs/", "/metrics", "/logs"):
        response = await proc.get(path)  # the menu paths redirect to the pages
        assert response.code == 200, path
        assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
        assert "<!doctype html>" in await text(response)
    for path, kind in (
        ("/metrics/ui/chart.js", "text/javascript"),
        ("/logs/ui/viewer.css", "text/css"),
    ):
        response = await proc.get(path)
        assert response.code == 200, path
        assert response.headers.getRawHeaders("content-type")[0].startswith(kind)
        await text(response)


@pytest_twisted.ensureDeferred
async def test_metrics_stream_two_events_then_the_client_leaves(runtimes, apps):
    from twisted.internet import reactor

    proc = await start(runtimes, apps)
    port = int(proc.url.rsplit(":", 1)[1])
    events = await two_events_then_drop(reactor, port, "/metrics/api/sse")
    first, second = (json.loads(event[len("data:") :]) for event in events)
    assert first["sseClients"] == 1 and "pool" in first and "http" in first
    assert second["pool"]["uptimeMs"] > first["pool"]["uptimeMs"]

    async def clients() -> int:
        response = await proc.get("/metrics/api/stats")
        return (await proc.json(response))["sseClients"]

    for _ in range(50):
        if await clients() == 0:
            break
    assert await clients() == 0  # the runtime let go of the stream and its timer
    ended = await proc.wait_for_log(
        lambda m: m.get("path") == "/metrics/api/sse" and m.get("action_status") == "succeeded"
    )
    assert ended["aborted"] is True


@pytest_twisted.ensureDeferred
async def test_logs_query_filter_add_and_clear(runtimes, apps):
    proc = await start(runtimes, apps)
    response = await proc.get("/hello/")
    await text(response)
    response = await proc.get("/hello/broken")
    await text(response)

    async def entries(query: str) -> list[dict]:
        response = await proc.get(f"/logs/api/?{query}")
        assert response.code == 200
        return (await proc.json(response))["entries"]

    for _ in range(50):  # the worker's output arrives on its own channel
        found = await entries("search=hello+from+the+worker")
        if found:
            break
    assert found and found[-1]["context"].startswith("worker:hello")  # a worker's output
    requests = await entries("search=%2Fhello%2F&limit=50")
    assert any(e["message"].startswith("GET /hello/ 200") for e in requests)
    errors = await entries("level=error")
    assert errors and all(e["level"] == "error" for e in errors)
    assert any("/hello/broken" in e["message"] for e in errors)
    assert [e["id"] for e in requests] == sorted(e["id"] for e in requests)  # newest last

    entry = {"message": "deployed v2", "level": "warn", "fields": {"by": "ci"}}
    response = await proc.request("POST", "/logs/api/", json=entry)
    assert response.code == 201
    await text(response)
    [added] = await entries("level=warn&search=deployed+v2")
    assert added["fields"] == {"by": "ci"} and added["context"] == "plugin:logs"

    response = await proc.get("/logs/api/stats")
    stats = await proc.json(response)
    assert stats["entries"] > 0 and stats["maxEntries"] == 1000
    response = await proc.request("POST", "/logs/api/clear")
    assert (await proc.json(response))["ok"] is True
    assert await entries("search=deployed+v2") == []


@pytest_twisted.ensureDeferred
async def test_logs_stream_two_events_then_the_client_leaves(runtimes, apps):
    from twisted.internet import reactor

    proc = await start(runtimes, apps, LOGS_SSE_INTERVAL="100")
    port = int(proc.url.rsplit(":", 1)[1])

    async def poke() -> None:
        for _ in range(2):
            response = await proc.get("/hello/")
            await text(response)

    events = await two_events_then_drop(reactor, port, "/logs/api/sse?search=hello", poke)
    records = [json.loads(event[len("data:") :]) for event in events]
    assert all("hello" in json.dumps(record).lower() for record in records)
    assert records[0]["id"] < records[1]["id"]

    async def clients() -> int:
        response = await proc.get("/logs/api/stats")
        return (await proc.json(response))["sseClients"]

    for _ in range(50):
        if await clients() == 0:
            break
    assert await clients() == 0


@pytest_twisted.ensureDeferred
async def test_open_streams_do_not_hold_up_a_stop(runtimes, apps):
    from twisted.internet import reactor

    proc = await start(runtimes, apps)
    port = int(proc.url.rsplit(":", 1)[1])
    readers = [EventReader("/metrics/api/sse", 1000), EventReader("/logs/api/sse", 1000)]
    for reader in readers:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        await wait_for_head(reactor, reader)
    started = reactor.seconds()
    assert await proc.stop() in (0, -15)
    assert reactor.seconds() - started < 10  # not the 30 s shutdown cap

"""
The logs built-in: its ring (size, ids, queries; nothing formatted until
read), fed from eliot while it is loaded, its API (query, stats, add,
clear), the event stream driven by a clock, its page, and its settings.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from eliot import start_action
from test_plugins_service import make_service
from test_plugins_support import write_plugin
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from buntime.builtins.logs.ring import Filter, LogRing, level_of
from buntime.http import Request
from buntime.logs import log
from buntime.plugins.discovery import BUILTINS_DIR

LOGS = "@buntime/plugin-logs"
SAME_ORIGIN = {
    "host": "rt.localhost",
    "origin": "http://rt.localhost",
    "content-type": "application/json",
}


def message(text: str, level: str = "info", **fields) -> dict:
    return {"level": level, "message": text, "timestamp": 1.0, **fields}


# -- the ring --------------------------------------------------------------------------


def test_the_ring_keeps_the_last_max_entries_with_their_ids():
    ring = LogRing(max_entries=3)
    ring.destination(message("m0"))  # what eliot calls: the deque's own append
    ring.take(message("m1"))
    assert [(r["id"], r["message"]) for r in ring.query(Filter(), 10)] == [(1, "m0"), (2, "m1")]
    for index in range(2, 5):
        ring.take(message(f"m{index}"))
    assert len(ring) == 3
    found = ring.query(Filter(), limit=10)
    assert [(r["id"], r["message"]) for r in found] == [(3, "m2"), (4, "m3"), (5, "m4")]
    assert ring.total == 5
    assert [r["id"] for r in ring.since(3)] == [4, 5]
    assert [r["id"] for r in ring.since(0)] == [3, 4, 5]
    assert list(ring.since(5)) == []


def test_messages_dropped_unread_get_no_id():
    ring = LogRing(max_entries=2)
    ring.take(message("read"))
    ring.sync()
    for index in range(5):
        ring.take(message(f"burst {index}"))
    found = ring.query(Filter(), limit=10)
    assert [(r["id"], r["message"]) for r in found] == [(2, "burst 3"), (3, "burst 4")]


def test_the_ring_formats_only_when_read():
    formatted: list = []

    def format(item):
        formatted.append(item)
        return dict(item)

    ring = LogRing(max_entries=10, format=format)
    logged = message("kept as it is")
    ring.take(logged)
    assert formatted == []
    [record] = ring.query(Filter(), limit=1)
    assert formatted == [logged] and "id" not in logged and record["id"] == 1


def test_the_ring_keeps_every_level_and_reads_filter_them():
    ring = LogRing(format=lambda m: {"level": level_of(m), **m})
    ring.take(message("debug", "debug"))
    ring.take(message("info"))
    ring.take(message("careful", "warn"))
    ring.take({"action_type": "x", "action_status": "failed", "timestamp": 1.0})
    ring.take({"action_type": "x", "action_status": "started", "timestamp": 1.0})
    assert [r["level"] for r in ring.query(Filter(), 10)] == [
        "debug",
        "info",
        "warn",
        "error",
        "debug",
    ]
    assert [r["level"] for r in ring.query(Filter(level="warn"), 10)] == ["warn", "error"]
    assert ring.stats()["byLevel"] == {"debug": 2, "info": 1, "warn": 1, "error": 1}


def test_queries_by_level_text_and_limit():
    ring = LogRing()
    ring.take(message("GET /a 200", path="/a"))
    ring.take(message("worker crashed", "error", app="todo"))
    ring.take(message("GET /b 404", "warn", path="/b"))
    ring.take(message("GET /c 200", path="/c"))
    assert [r["message"] for r in ring.query(Filter(level="warn"), 10)] == [
        "worker crashed",
        "GET /b 404",
    ]
    assert [r["message"] for r in ring.query(Filter(search="TODO"), 10)] == ["worker crashed"]
    assert [r["message"] for r in ring.query(Filter(search="get"), 2)] == [
        "GET /b 404",
        "GET /c 200",
    ]
    assert ring.clear() == 4
    assert ring.query(Filter(), 10) == []
    ring.take(message("after"))
    assert [r["id"] for r in ring.query(Filter(), 10)] == [5]
    assert ring.stats() == {
        "entries": 1,
        "maxEntries": 1000,
        "minLevel": "info",
        "total": 5,
        "byLevel": {"debug": 0, "info": 1, "warn": 0, "error": 0},
    }


def test_queries_by_task_and_request_id():
    ring = LogRing()
    ring.take(message("GET /a", "debug", task_uuid="t1", request_id="r1"))
    ring.take(message("hello from the app", task_uuid="t1", request_id="r1", context="worker:a"))
    ring.take(message("routed", task_uuid="t1"))
    ring.take(message("GET /b", task_uuid="t2", request_id="r2"))
    ring.take(message("no task at all"))
    in_t1 = [r["message"] for r in ring.query(Filter(task="t1"), 10)]
    assert in_t1 == ["GET /a", "hello from the app", "routed"]
    by_id = [r["message"] for r in ring.query(Filter(request_id="r1", level="info"), 10)]
    assert by_id == ["hello from the app"]
    assert ring.query(Filter(task="t1", request_id="r2"), 10) == []
    assert [r["message"] for r in ring.since(2, Filter(task="t2"))] == ["GET /b"]


# -- the plugin -------------------------------------------------------------------------


async def started(tmp_path, **kwargs):
    kwargs.setdefault("reactor", Clock())
    service = make_service(tmp_path, builtins_dir=BUILTINS_DIR, **kwargs)
    service.startService()
    await service.when_loaded()
    return service


def logs_plugin(service):
    [plugin] = [p for p in service.registry.plugins if p.name == LOGS]
    return plugin.provider


async def call(service, method, path, headers=None, body=b""):
    # from this machine, as the runtime's front door sees a local client
    request = Request(method, path, headers or {}, body, remote_addr="127.0.0.1")
    response = await service.registry.route(request)
    return response.status, json.loads(response.body)


@pytest_twisted.ensureDeferred
async def test_on_by_default_and_fed_from_eliot_while_loaded(tmp_path):
    service = await started(tmp_path)
    plugin = next(p for p in service.registry.plugins if p.name == LOGS)
    assert (plugin.base, plugin.context.logger.context) == ("/logs", "plugin:logs")
    log("info", "test:logs:one", "one for the ring", app="hello")
    log("debug", "test:logs:quiet", "below the least level")
    status, body = await call(service, "GET", "/logs/api/?search=for+the+ring")
    assert status == 200
    [entry] = body["entries"]
    assert (entry["message"], entry["level"], entry["app"]) == ("one for the ring", "info", "hello")
    assert entry["context"] == "runtime" and entry["message_type"] == "test:logs:one"
    ring = logs_plugin(service).ring
    await service.stopService()
    kept = ring.sync()
    log("info", "test:logs:two", "after the plugin stopped")
    assert ring.sync() == kept


@pytest_twisted.ensureDeferred
async def test_secrets_never_come_out(tmp_path):
    service = await started(tmp_path)
    log(
        "info",
        "test:logs:headers",
        "a request's headers",
        headers={"authorization": "Bearer s3cret", "accept": "*/*"},
        pairs=[("cookie", "session=s3cret"), ("x-api-key", "s3cret")],
    )
    response = await service.registry.route(Request("GET", "/logs/api/?search=request's"))
    assert b"s3cret" not in response.body
    [entry] = json.loads(response.body)["entries"]
    assert entry["headers"] == {"authorization": "[redacted]", "accept": "*/*"}
    assert entry["pairs"] == [["cookie", "[redacted]"], ["x-api-key", "[redacted]"]]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_query_limits_and_refusals(tmp_path):
    service = await started(tmp_path)
    for index in range(5):
        log("warn" if index % 2 else "info", "test:logs:n", f"number {index}")
    status, body = await call(service, "GET", "/logs/api/?search=number&limit=2")
    assert [e["message"] for e in body["entries"]] == ["number 3", "number 4"]  # newest last
    status, body = await call(service, "GET", "/logs/api/?search=number&level=warn")
    assert [e["message"] for e in body["entries"]] == ["number 1", "number 3"]
    status, body = await call(service, "GET", "/logs/api/?level=loud")
    assert (status, body["error"]["code"]) == (400, "INVALID_LEVEL")
    for wrong in ("many", "0", "-5", "1.5"):
        status, body = await call(service, "GET", f"/logs/api/?limit={wrong}")
        assert (status, body["error"]["code"]) == (400, "INVALID_LIMIT"), wrong
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_query_by_task_shows_every_level_of_it(tmp_path):
    service = await started(tmp_path)
    with start_action(action_type="test:logs:request") as action:
        log("debug", "test:logs:in", "a detail of the request", request_id="rq-1")
        log("info", "test:logs:in", "the request's answer", request_id="rq-1")
    log("info", "test:logs:out", "another request's line", request_id="rq-2")
    task = action.task_uuid
    status, body = await call(service, "GET", f"/logs/api/?task={task}")
    assert status == 200
    found = [e["message"] for e in body["entries"] if "message_type" in e]
    assert found == ["a detail of the request", "the request's answer"]
    assert {e["task_uuid"] for e in body["entries"]} == {task}
    # a level, when named, still holds
    status, body = await call(service, "GET", f"/logs/api/?task={task}&level=info")
    assert [e["message"] for e in body["entries"]] == ["the request's answer"]
    status, body = await call(service, "GET", "/logs/api/?request_id=rq-1")
    assert [e["message"] for e in body["entries"]] == [
        "a detail of the request",
        "the request's answer",
    ]
    assert body["entries"][0]["task_uuid"] == task
    status, body = await call(service, "GET", "/logs/api/?request_id=nobody")
    assert (status, body["entries"]) == (200, [])
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_add_stats_and_clear(tmp_path):
    service = await started(tmp_path)
    entry = {"message": "from the browser", "level": "warn", "fields": {"cookie": "c", "n": 1}}
    status, body = await call(
        service, "POST", "/logs/api/", SAME_ORIGIN, json.dumps(entry).encode()
    )
    assert status == 201 and body["ok"] is True
    status, found = await call(service, "GET", "/logs/api/?level=warn&search=browser")
    [added] = found["entries"]
    assert added["id"] == body["id"]
    assert (added["context"], added["source"]) == ("plugin:logs", "api")
    assert added["fields"] == {"cookie": "[redacted]", "n": 1}
    status, stats = await call(service, "GET", "/logs/api/stats")
    assert stats["byLevel"]["warn"] == 1 and stats["maxEntries"] == 1000
    assert stats["sseClients"] == 0 and stats["entries"] == stats["total"]
    status, body = await call(service, "POST", "/logs/api/clear", {"x-buntime-internal": "true"})
    assert status == 200 and body == {"ok": True, "cleared": stats["entries"]}
    status, found = await call(service, "GET", "/logs/api/?search=browser")
    assert found["entries"] == []
    await service.stopService()


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        (
            {**SAME_ORIGIN, "content-type": "text/plain"},
            b'{"message": "x"}',
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ({"host": "rt.localhost"}, b'{"message": "x"}', 403, "FORBIDDEN"),  # no Origin: no proof
        (SAME_ORIGIN, b"{nope", 400, "INVALID_JSON"),
        (SAME_ORIGIN, b"[1]", 400, "INVALID_ENTRY"),
        (SAME_ORIGIN, b'{"message": ""}', 400, "INVALID_ENTRY"),
        (SAME_ORIGIN, b'{"message": "x", "level": "loud"}', 400, "INVALID_LEVEL"),
        (SAME_ORIGIN, b'{"message": "x", "fields": [1]}', 400, "INVALID_ENTRY"),
        ({**SAME_ORIGIN, "origin": "https://evil.test"}, b'{"message": "x"}', 403, "FORBIDDEN"),
        (SAME_ORIGIN, b'{"message": "' + b"x" * 70_000 + b'"}', 413, "PAYLOAD_TOO_LARGE"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_adding_refuses(tmp_path, headers, body, status, code):
    service = await started(tmp_path)
    got, answer = await call(service, "POST", "/logs/api/", headers, body)
    assert (got, answer["error"]["code"]) == (status, code)
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_clearing_cross_site_is_refused(tmp_path):
    service = await started(tmp_path)
    headers = {"host": "rt.localhost", "origin": "https://evil.test"}
    status, body = await call(service, "POST", "/logs/api/clear", headers)
    assert (status, body["error"]["code"]) == (403, "FORBIDDEN")
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_settings_from_an_override_manifest_and_the_environment(tmp_path):
    write_plugin(tmp_path, "logs", {"name": LOGS, "maxEntries": 2, "minLevel": "warn"})
    service = await started(tmp_path, environ={"LOGS_SSE_INTERVAL": "1000"})
    plugin = logs_plugin(service)
    assert (plugin.ring.max_entries, plugin.ring.min_level) == (2, "warn")
    assert plugin.sse_interval == 1.0
    for index in range(3):
        log("warn", "test:logs:n", f"kept {index}")
    _, body = await call(service, "GET", "/logs/api/?search=kept")
    assert [e["message"] for e in body["entries"]] == ["kept 1", "kept 2"]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_switched_off_by_an_override_manifest(tmp_path):
    write_plugin(tmp_path, "logs", {"name": LOGS, "enabled": False})
    service = await started(tmp_path)
    assert LOGS not in [p.name for p in service.registry.plugins]
    assert await service.registry.route(Request("GET", "/logs/api/")) is None
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_page(tmp_path):
    service = await started(tmp_path)
    response = await service.registry.route(Request("GET", "/logs/"))
    assert response.status == 200
    assert response.headers.get("content-type") == "text/html; charset=utf-8"
    page = response.body.decode()
    assert "viewer.js" in page and "viewer.css" in page
    assert "//" not in page.replace("://www.w3.org", "")  # nothing from another host
    script = await service.registry.route(Request("GET", "/logs/ui/viewer.js"))
    assert script.status == 200
    assert script.headers.get("content-type") == "text/javascript; charset=utf-8"
    code = script.body.decode()
    assert "/api/sse" in code and "/api/clear" in code and "frameSDK" in code
    # a 404 from a plugin's routes lets the request go on (to apps): nothing answers here
    assert await service.registry.route(Request("GET", "/logs/ui/plugin.py")) is None
    await service.stopService()


# -- the event stream --------------------------------------------------------------------


async def open_stream(service, path, headers=None):
    pending = ensureDeferred(service.registry.route(Request("GET", path, headers or {})))
    service.reactor.advance(0)
    response = await pending
    return response, response.body.__aiter__()


async def next_events(chunks) -> list[tuple[int, dict]]:
    """The events of the next chunk that has any: (id, record)."""
    while True:
        chunk = (await chunks.__anext__()).decode()
        found = []
        for block in chunk.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "data" in lines:
                found.append((int(lines["id"]), json.loads(lines["data"])))
        if found:
            return found


@pytest_twisted.ensureDeferred
async def test_sse_streams_new_messages_every_interval(tmp_path):
    service = await started(tmp_path)
    clock = service.reactor
    log("info", "test:logs:old", "before the stream")
    response, chunks = await open_stream(service, "/logs/api/sse?level=warn")
    assert response.headers.get("content-type") == "text/event-stream; charset=utf-8"
    assert (await chunks.__anext__()).startswith(b":")  # the stream is open
    log("info", "test:logs:new", "not warn enough")
    log("warn", "test:logs:new", "new and loud")
    waiting = ensureDeferred(next_events(chunks))
    clock.advance(0.4)
    assert not waiting.called
    clock.advance(0.1)
    [(first_id, record)] = await waiting
    assert record["message"] == "new and loud" and record["id"] == first_id
    log("error", "test:logs:new", "worse")
    clock.advance(0.5)
    [(second_id, record)] = await next_events(chunks)
    assert (second_id, record["message"]) == (first_id + 1, "worse")
    assert logs_plugin(service).streams != set()
    await chunks.aclose()  # the client goes away
    assert logs_plugin(service).streams == set()
    assert clock.getDelayedCalls() == []  # no timer left running
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_goes_on_after_what_a_query_saw(tmp_path):
    service = await started(tmp_path)
    log("info", "test:logs:n", "seen by the query")
    _, body = await call(service, "GET", "/logs/api/?search=test")
    log("info", "test:logs:n", "between the query and the stream")
    _, chunks = await open_stream(service, f"/logs/api/sse?after={body['total']}")
    waiting = ensureDeferred(next_events(chunks))
    service.reactor.advance(0.5)
    assert waiting.called  # (without ?after= the stream starts now, and it would wait)
    [(_, record)] = await waiting
    assert record["message"] == "between the query and the stream"
    await chunks.aclose()
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_follows_one_task(tmp_path):
    service = await started(tmp_path)
    with start_action(action_type="test:logs:request") as action:
        pass
    _, chunks = await open_stream(service, f"/logs/api/sse?task={action.task_uuid}")
    assert (await chunks.__anext__()).startswith(b":")
    log("info", "test:logs:other", "not in the task")
    with action.context():
        log("debug", "test:logs:in", "later in the task")
    service.reactor.advance(0.5)
    [(_, record)] = await next_events(chunks)
    assert (record["message"], record["task_uuid"]) == ("later in the task", action.task_uuid)
    await chunks.aclose()
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sse_resumes_after_the_last_event_id(tmp_path):
    service = await started(tmp_path)
    for index in range(3):
        log("info", "test:logs:n", f"n{index}")
    ring = logs_plugin(service).ring
    ring.sync()
    headers = {"last-event-id": str(ring.total - 1)}
    _, chunks = await open_stream(service, "/logs/api/sse", headers)
    [(event_id, record)] = await next_events(chunks)
    assert (event_id, record["message"]) == (ring.total, "n2")
    service.runtime_stopping()  # the runtime stops: the stream ends
    with pytest.raises(StopAsyncIteration):
        while True:
            await chunks.__anext__()
    await service.stopService()
    assert service.reactor.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_sse_resumes_after_an_id_of_a_ring_that_is_gone(tmp_path):
    # A viewer reconnecting after a restart or a plugin reload (a new ring, its ids
    # from 1 again) sends the Last-Event-ID (and ?after=) of the old ring: what the
    # new ring holds is all new to it, and must be sent.
    service = await started(tmp_path)
    log("info", "test:logs:n", "after the reload")
    headers = {"last-event-id": "100000"}
    _, chunks = await open_stream(service, "/logs/api/sse?after=100000", headers)
    waiting = ensureDeferred(next_events(chunks))
    service.reactor.advance(0.5)
    assert waiting.called
    assert "after the reload" in [record["message"] for _, record in await waiting]
    log("info", "test:logs:n", "later still")
    service.reactor.advance(0.5)
    assert [record["message"] for _, record in await next_events(chunks)] == ["later still"]
    await chunks.aclose()
    await service.stopService()


@pytest.mark.parametrize("depth", [900, 5000])
@pytest_twisted.ensureDeferred
async def test_an_entry_nested_too_deep_is_refused_and_queries_go_on(tmp_path, depth):
    # fields nested so deep that formatting the record (or parsing the body) recurses
    # past Python's limit: a 400, never an entry that makes every later query a 500
    service = await started(tmp_path)
    body = b'{"message": "deep", "fields": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    status, answer = await call(service, "POST", "/logs/api/", SAME_ORIGIN, body)
    assert status == 400 and answer["error"]["code"] in ("INVALID_ENTRY", "INVALID_JSON")
    status, _ = await call(service, "GET", "/logs/api/?level=debug&search=deep")
    assert status == 200
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_plugin_reload_lets_go_of_the_previous_ring(tmp_path):
    # every reload made a new LogsPlugin (and ring of maxEntries messages) that the
    # runtime's "stopping" waiters kept alive until the process ended
    import gc
    import weakref

    service = await started(tmp_path)
    log("info", "test:logs:n", "kept by the first ring")
    old = weakref.ref(logs_plugin(service))
    await service.reload()
    await service.reload()
    assert logs_plugin(service) is not old()
    gc.collect()
    assert old() is None
    await service.stopService()

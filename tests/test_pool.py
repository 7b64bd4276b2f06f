"""
Worker pool policies (SPEC section 3), driven by a clock and fake workers:
no processes, no sleeping.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest
from attrs import evolve
from eliot.testing import LoggedAction
from fakes import ChildRequest, FakeLauncher, echo, hang, logged, read_all, result_of
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock

from buntime.http import Request, Response
from buntime.manifest import AppManifest
from buntime.pool.deps import InstallError
from buntime.pool.events import StartupFailed
from buntime.pool.pool import WorkerPool
from buntime.pool.state import PoolApp, PoolConfig

METRICS = {
    "activeWorkers",
    "avgResponseTimeMs",
    "evictions",
    "hitRate",
    "hits",
    "misses",
    "memoryUsageMB",
    "requestsPerSecond",
    "totalRequests",
    "totalWorkersFailed",
    "totalWorkersCreated",
    "totalWorkersRetired",
    "uptimeMs",
    "ephemeralQueueDepth",
}
WORKER_STATS = {
    "ageMs",
    "idleMs",
    "requestCount",
    "errorCount",
    "avgResponseTimeMs",
    "totalResponseTimeMs",
    "status",
    "inFlight",
    "pid",
    "rssMB",
}


class Gates:
    """Requests to C{/wait/<name>} are answered when the test opens that gate."""

    def __init__(self) -> None:
        self.gates: dict[str, Deferred] = {}

    def open(self, name: str) -> None:
        self.gates.setdefault(name, Deferred()).callback(None)

    async def __call__(self, request: ChildRequest) -> None:
        path = request.path.split("?")[0]
        if path.startswith("/wait/"):
            await self.gates.setdefault(path[len("/wait/") :], Deferred())
            request.start(200, [], f"done {path}".encode())
        elif path == "/hang":
            await hang(request)
        elif path == "/fail":
            request.error("ValueError: bad input")
        elif path == "/stream":
            request.start(200, [], b"a", end=False)
            await request.send(b"b")
            await request.send(b"c")
            request.end()
        else:
            await echo(request)


class Harness:
    """A pool of fake workers; C{memory} is their RSS in bytes by pid (a worker not in it: 0)."""

    def __init__(self, production: bool = False, startup: str = "ready", **config) -> None:
        self.clock = MemoryReactorClock()
        self.memory: dict[int, int | None] = {}
        self.memory_reads: list[int] = []
        self.gates = Gates()
        self.launcher = FakeLauncher(self.clock, handler=self.gates, startup=startup)
        settings = dict(
            pool_size=5,
            ephemeral_concurrency=2,
            ephemeral_queue=1,
            delay=0.1,
            production=production,
        )
        settings.update(config)
        self.pool = WorkerPool(self.clock, PoolConfig(**settings), self.launcher, rss=self._rss)
        self.pool.start()

    def _rss(self, pid: int) -> int | None:
        self.memory_reads.append(pid)
        return self.memory.get(pid, 0)

    def app(self, name: str = "hello", version: str = "1.0.0", dir: str | None = None, **manifest):
        manifest.setdefault("ttl", 60.0)
        manifest.setdefault("idle_timeout", 60.0)
        manifest.setdefault("timeout", 30.0)
        directory = dir or f"/apps/{name}@{version}"
        return PoolApp(
            key=directory,
            name=name,
            version=version,
            dir=directory,
            manifest=AppManifest(**manifest),
            env={"APP_DIR": directory},
        )

    def send(self, app: PoolApp, path: str = "/", method: str = "GET", body=b"") -> Deferred:
        d = self.pool.handle(app, Request(method, path, body=body), f"/{app.name}")
        self.launcher.settle()
        return d

    def get(self, app: PoolApp, path: str = "/") -> Response:
        return result_of(self.send(app, path))

    def advance(self, seconds: float) -> None:
        self.launcher.advance(seconds)

    @property
    def processes(self):
        return self.launcher.processes

    def received(self) -> list[str]:
        return [r.path for p in self.processes for r in p.child.received]


def error_of(response: Response) -> tuple[int, str, str]:
    assert isinstance(response.body, bytes)
    error = json.loads(response.body)["error"]
    return response.status, error["code"], error["message"]


# -- persistent workers ------------------------------------------------------


def test_no_clock_work_before_start():
    clock = MemoryReactorClock()
    launcher = FakeLauncher(clock)
    config = PoolConfig(
        pool_size=1, ephemeral_concurrency=1, ephemeral_queue=1, delay=0.1, production=False
    )
    WorkerPool(clock, config, launcher)
    assert clock.getDelayedCalls() == []


def test_persistent_worker_is_reused_and_cold_start_queues():
    h = Harness()
    app = h.app()
    first = h.pool.handle(app, Request("GET", "/a"), "/hello")
    second = h.pool.handle(app, Request("GET", "/b"), "/hello")  # while starting: queued
    h.launcher.settle()
    assert result_of(first).body == b"GET /a|"
    assert result_of(second).body == b"GET /b|"
    assert h.get(app, "/c").body == b"GET /c|"
    assert len(h.processes) == 1
    spec = h.processes[0].spec
    assert spec.env["APP_DIR"] == app.dir
    assert spec.env["WORKER_ID"] == spec.worker_id
    metrics = h.pool.metrics()
    assert (metrics["hits"], metrics["misses"], metrics["hitRate"]) == (1, 2, 33.33)


def test_the_caller_is_told_which_worker_serves_its_request():
    h = Harness()
    app = h.app()
    ids: list[str] = []
    cold = h.pool.handle(app, Request("GET", "/a"), "/hello", ids.append)  # queued
    h.launcher.settle()
    warm = h.pool.handle(app, Request("GET", "/b"), "/hello", ids.append)  # sent at once
    h.launcher.settle()
    assert result_of(cold).status == result_of(warm).status == 200
    assert ids == [h.processes[0].spec.worker_id] * 2


def test_lru_eviction():
    h = Harness(pool_size=2)
    a, b, c = h.app("a"), h.app("b"), h.app("c")
    h.get(a)
    h.get(b)
    h.advance(1)
    h.get(a)  # b is now the least recently used
    h.get(c)
    h.advance(1)
    assert [p.spec.app_dir for p in h.launcher.live] == [a.dir, c.dir]
    evicted = h.processes[1]
    assert evicted.child.terminates == 1
    assert h.pool.metrics()["evictions"] == 1
    assert h.pool.metrics()["totalWorkersRetired"] == 1


def test_eviction_keeps_an_app_asked_for_often():
    h = Harness(pool_size=2)
    hot, once, newer, newest = h.app("hot"), h.app("once"), h.app("newer"), h.app("newest")
    for _ in range(5):
        h.get(hot)
    h.advance(1)
    h.get(once)
    h.get(newer)  # plain LRU would retire hot, the least recently used
    h.advance(1)
    assert [p.spec.app_dir for p in h.launcher.live] == [hot.dir, newer.dir]
    h.get(newest)  # newer, asked for once, gives way again
    h.advance(1)
    assert [p.spec.app_dir for p in h.launcher.live] == [hot.dir, newest.dir]
    assert h.pool.metrics()["evictions"] == 2


def test_ttl_retires_after_draining():
    h = Harness()
    app = h.app(ttl=10, idle_timeout=10, timeout=5)
    h.get(app)
    h.advance(8)
    pending = h.send(app, "/wait/x")
    h.advance(2)  # age 10: retire, but a request is in flight
    process = h.processes[0]
    assert process.child.terminates == 0
    assert h.pool.worker_stats()[0]["status"] == "stopping"
    nxt = h.send(app, "/after")  # goes to a fresh worker
    assert len(h.processes) == 2
    assert result_of(nxt).body == b"GET /after|"
    h.gates.open("x")
    h.launcher.settle()
    assert result_of(pending).body == b"done /wait/x"
    assert process.child.terminates == 1
    h.advance(0.1)
    assert process.exit_code == 0
    assert h.pool.metrics()["totalWorkersRetired"] == 1
    retired = {"app": "hello@1.0.0", "event": "retired", "reason": "ttl reached", "count": 1}
    assert retired in h.pool.worker_events()


def test_drain_is_bounded_by_timeout():
    h = Harness()
    app = h.app(ttl=10, idle_timeout=10, timeout=3)
    pending = h.send(app, "/wait/never")
    assert not pending.called
    h.advance(2)  # the request itself times out at 3 s
    h.advance(1)
    assert result_of(pending).status == 504
    h.advance(7)
    assert h.processes[0].child.terminates == 1


def test_idle_hook_then_idle_retirement(eliot_logger):
    h = Harness()
    app = h.app(ttl=100, idle_timeout=10, timeout=5)
    h.get(app)
    process = h.processes[0]
    h.advance(4.9)
    assert process.child.idles == 0
    h.advance(0.1)  # checks every 5 s; idle >= idleTimeout / 2
    assert process.child.idles == 1
    assert h.pool.worker_stats()[0]["status"] == "idle"
    h.advance(5)
    assert process.child.idles == 1  # once
    assert process.child.terminates == 1
    h.advance(0.1)
    assert h.launcher.live == []
    assert [m["reason"] for m in logged(eliot_logger, "buntime:worker:retire", "started")] == [
        "idleTimeout reached"
    ]
    [ready] = logged(eliot_logger, "buntime:worker:start", "succeeded")
    assert ready["message"] == "Worker for hello@1.0.0 is ready" and ready["kind"] == "fake"
    assert len(logged(eliot_logger, "buntime:worker:retire", "succeeded")) == 1
    eliot_logger.validate()  # every message as its declared type says (buntime.logs.types)


def test_use_keeps_a_worker_from_idling_out():
    h = Harness()
    app = h.app(ttl=100, idle_timeout=10, timeout=5)
    for _ in range(6):
        h.get(app)
        h.advance(4)
    assert len(h.processes) == 1
    assert h.processes[0].child.terminates == 0


def test_max_requests_replacement_serves_the_queue():
    h = Harness()
    app = h.app(max_requests=1, max_concurrency=1)
    first = h.send(app, "/wait/a")
    second = h.send(app, "/wait/b")
    assert len(h.processes) == 2  # the first worker drains, a new one takes the queue
    assert [len(p.child.received) for p in h.processes] == [1, 1]
    h.gates.open("a")
    h.gates.open("b")
    h.advance(0.1)
    assert result_of(first).status == result_of(second).status == 200
    assert h.processes[0].exit_code == 0


def test_max_requests_recycles():
    h = Harness()
    app = h.app(max_requests=2)
    h.get(app, "/1")
    h.get(app, "/2")
    h.advance(0.1)
    assert h.processes[0].child.terminates == 1
    h.get(app, "/3")
    assert len(h.processes) == 2
    assert [r.path for r in h.processes[1].child.received] == ["/3"]


# -- timeouts --------------------------------------------------------------


def test_persistent_timeout_504_then_recycled_with_stack(eliot_logger):
    h = Harness()
    app = h.app(timeout=2, ttl=60, idle_timeout=60)
    for attempt in range(1, 4):
        d = h.send(app, "/hang")
        h.advance(2)
        assert error_of(result_of(d))[:2] == (504, "WORKER_TIMEOUT")
        assert h.processes[0].child.cancelled[-1] == attempt
    warnings = logged(eliot_logger, "buntime:pool:timeout")
    assert [m["level"] for m in warnings] == ["warn", "warn"]
    process = h.processes[0]
    assert process.signals == [signal.SIGUSR1]
    assert process.child.terminates == 0  # its stack is read first
    waiting = h.send(app, "/meanwhile")  # not sent to the stuck worker
    assert len(h.processes) == 1 and not waiting.called
    h.advance(0.2)
    assert result_of(waiting).body == b"GET /meanwhile|"  # from its replacement
    [explained] = [m for m in logged(eliot_logger, "buntime:pool:timeout") if m["level"] == "error"]
    assert "hello@1.0.0" in explained["message"] and "GET /hang" in explained["message"]
    assert explained["elapsed_ms"] == 2000
    assert explained["pid"] == process.pid
    assert 'File "/apps/slow/app.py", line 7 in handler' in explained["stack"]
    assert process.child.terminates == 1
    assert len(h.processes) == 2


def test_ephemeral_timeout_dumps_stack_then_kills(eliot_logger):
    h = Harness()
    app = h.app(ttl=0, timeout=1)
    d = h.send(app, "/hang")
    h.advance(1)
    assert error_of(result_of(d))[:2] == (504, "WORKER_TIMEOUT")
    process = h.processes[0]
    assert process.signals == [signal.SIGUSR1]
    h.advance(0.2)
    assert process.signals == [signal.SIGUSR1, signal.SIGKILL]
    assert process.exit_code == -signal.SIGKILL
    [line] = logged(eliot_logger, "buntime:pool:timeout")
    assert line["level"] == "error"
    assert line["method"] == "GET" and line["path"] == "/hang" and line["pid"] == process.pid
    assert line["elapsed_ms"] == 1000
    assert "line 7 in handler" in line["stack"]


# -- failures ----------------------------------------------------------------


def test_startup_failure_502_respawn_and_backoff(eliot_logger):
    h = Harness(startup="fail")
    app = h.app()
    status, code, message = error_of(h.get(app))
    assert (status, code) == (502, "WORKER_START_FAILED")
    [why] = logged(eliot_logger, "buntime:worker:start-failed")
    assert why["error"].startswith("ImportError") and why["detail"]
    [failed] = logged(eliot_logger, "buntime:worker:start", "failed")
    assert failed["task_level"][:-1] == why["task_level"][:-1]  # the reason, inside the action
    eliot_logger.validate()
    assert "hello@1.0.0" in message and "ImportError" in message
    error_of(h.get(app))  # the next request tries again at once
    assert len(h.processes) == 2
    assert error_of(h.get(app))[1] == "WORKER_START_FAILED"  # backing off: no new process
    assert len(h.processes) == 2
    h.advance(0.5)
    h.get(app)
    assert len(h.processes) == 3
    h.advance(0.5)
    h.get(app)  # the wait doubled to 1 s
    assert len(h.processes) == 3
    h.launcher.startup = "ready"
    h.advance(0.5)
    assert h.get(app).status == 200
    assert h.pool.metrics()["totalWorkersFailed"] == 3
    events = {(e["event"], e["reason"]): e["count"] for e in h.pool.worker_events()}
    assert events == {("start_failed", ""): 3, ("started", ""): 1}


def test_launcher_unavailable_answers_503_at_once():
    """A launch that fails at once (fork template down) answers now, not after timeout."""
    h = Harness(startup="unavailable")
    app = h.app(timeout=30.0)
    pending = h.send(app, "/")
    h.launcher.settle()
    assert pending.called  # not queued until the 30 s timeout
    response = result_of(pending)
    status, code, _message = error_of(response)
    assert (status, code) == (503, "WORKERS_UNAVAILABLE")
    assert response.headers.get("retry-after") == "1"
    h.launcher.startup = "ready"
    h.advance(0.5)
    assert h.get(app).status == 200


def test_a_launch_that_fails_at_once_is_a_start_failure_as_one_that_fails_later(eliot_logger):
    """Not a crash of a worker that never ran: counted and logged as the start failure it is."""
    h = Harness(startup="unavailable")
    assert error_of(h.get(h.app()))[:2] == (503, "WORKERS_UNAVAILABLE")
    events = {(e["event"], e["reason"]): e["count"] for e in h.pool.worker_events()}
    assert events == {("start_failed", ""): 1}
    [why] = logged(eliot_logger, "buntime:worker:start-failed")
    assert why["error"].startswith("worker could not be launched")


def test_a_launch_that_waited_for_the_template_in_vain_answers_503(eliot_logger):
    """The template down for longer than a launch waits is not the app's fault: no 502."""
    h = Harness(startup="down")
    app = h.app(timeout=30.0)
    pending = h.send(app, "/")
    h.advance(9.9)
    assert not pending.called
    h.advance(0.1)
    response = result_of(pending)
    status, code, message = error_of(response)
    assert (status, code) == (503, "WORKERS_UNAVAILABLE")
    assert "not ready within 10 s" in message
    assert response.headers.get("retry-after") == "1"
    [why] = logged(eliot_logger, "buntime:worker:start-failed")
    assert (
        why["error"] == "worker could not be launched: the fork template was not ready within 10 s"
    )
    h.launcher.startup = "ready"
    h.advance(0.5)
    assert h.get(app).status == 200


def test_production_hides_the_error():
    h = Harness(production=True, startup="fail")
    status, code, message = error_of(h.get(h.app()))
    assert (status, code) == (502, "WORKER_START_FAILED")
    assert "hello@1.0.0" in message and "ImportError" not in message


# -- a cold start's first request, sent ahead of the worker's Ready -----------------


def test_a_cold_start_sends_its_first_request_ahead_of_the_workers_ready():
    """No round trip: the request waits in the starting worker, not in the runtime."""
    h = Harness(startup="later")
    app = h.app()
    d = h.send(app, "/first")
    [process] = h.processes
    assert process.child.held and not process.child.received  # there before it is ready
    assert not d.called
    process.child.ready_now()
    h.launcher.settle()
    assert result_of(d).status == 200
    assert [r.path for r in process.child.received] == ["/first"]
    assert h.get(app).status == 200  # the worker is ready for the next one
    assert len(h.processes) == 1


def test_a_request_sent_ahead_waits_for_the_start_as_a_queued_one_would():
    """Up to C{timeout} for the worker (504 QUEUE_TIMEOUT); not a timeout of the worker's."""
    h = Harness(startup="later", ready_timeout=60)
    app = h.app(timeout=5)
    d = h.send(app)
    h.advance(4.9)
    assert not d.called
    h.advance(0.1)
    assert error_of(result_of(d))[:2] == (504, "QUEUE_TIMEOUT")
    [process] = h.processes
    process.child.ready_now()
    h.launcher.settle()
    [worker] = h.pool.worker_stats()
    assert (worker["status"], worker["errorCount"], worker["requestCount"]) == ("active", 0, 0)
    assert process.child.cancelled == [1]  # it never ran: told so, it drops it
    assert h.get(app).status == 200
    assert h.pool.worker_stats()[0]["requestCount"] == 1


def test_a_request_sent_ahead_has_its_whole_timeout_once_the_worker_is_ready():
    h = Harness(startup="later")
    app = h.app(timeout=5)
    d = h.send(app, "/wait/a")
    h.advance(4)
    h.processes[0].child.ready_now()
    h.advance(4.9)  # 8.9 s since it was sent, 4.9 s since the worker was ready
    assert not d.called
    h.advance(0.1)
    assert error_of(result_of(d))[:2] == (504, "WORKER_TIMEOUT")


def test_a_request_sent_ahead_to_a_worker_that_fails_to_start_gets_the_start_failure():
    h = Harness(startup="fail")
    app = h.app()
    d = h.send(app)
    status, code, message = error_of(result_of(d))
    assert (status, code) == (502, "WORKER_START_FAILED")
    assert "no module named app" in message


def test_a_request_sent_ahead_to_a_worker_retired_while_it_starts_goes_to_the_next():
    """Retired before it was ready: the request waits for the worker that replaces it."""
    h = Harness(startup="later")
    app = h.app()
    d = h.send(app)
    [first] = h.processes
    [worker] = h.pool._apps[app.key].workers
    h.pool._discard(h.pool._apps[app.key], worker, "memory", grace=0)
    h.launcher.settle()
    assert not d.called
    second = h.processes[-1]
    assert second is not first
    second.child.ready_now()
    h.launcher.settle()
    assert result_of(d).status == 200


def test_a_request_sent_ahead_to_a_worker_evicted_while_it_starts_keeps_the_pool_size():
    """
    Evicted for another app: the request waits in its app's queue, as a
    queued one would, rather than start a worker of its own in the room
    just made for the other app (two workers in a pool of one).
    """
    h = Harness(startup="later", pool_size=1)
    first = h.app("a", timeout=5)
    d = h.send(first)
    h.advance(3)
    h.send(h.app("b"))
    workers = [w for state in h.pool._apps.values() for w in state.workers]
    assert [w.name for w in workers] == ["b"]
    assert not d.called
    h.advance(1.9)
    assert not d.called
    h.advance(0.1)  # its timeout counts from its arrival, as a queued request's does
    assert error_of(result_of(d))[:2] == (504, "QUEUE_TIMEOUT")


def test_a_request_sent_ahead_to_a_worker_that_never_got_ready_is_not_counted_as_its():
    """The app never had it: as for one cancelled or timed out while the worker started."""
    h = Harness(startup="later")
    app = h.app()
    h.send(app)
    [worker] = h.pool._apps[app.key].workers
    assert worker.request_count == 1
    h.pool._discard(h.pool._apps[app.key], worker, "memory", grace=0)
    assert worker.request_count == 0


def test_a_request_sent_ahead_to_a_worker_that_fails_to_start_takes_a_free_worker_of_its_app():
    """
    Sent ahead to a second worker because the first was busy; the first is
    free by the time the second fails to start: the request goes to it,
    rather than wait in the queue (504 QUEUE_TIMEOUT) beside an idle worker.
    """
    h = Harness()
    app = h.app(max_instances=2, max_concurrency=1, timeout=5)
    busy = h.send(app, "/wait/a")
    h.launcher.startup = "later"
    d = h.send(app, "/x")
    _, second = h.processes
    assert second.child.held  # went ahead to the second worker
    h.gates.open("a")
    h.launcher.settle()
    assert result_of(busy).status == 200  # the first worker is free again
    second.child.callRemote(StartupFailed, error="ImportError: boom", detail="")
    h.launcher.settle()
    assert result_of(d).body == b"GET /x|"


def test_no_request_goes_ahead_of_a_ready_when_the_next_would_retire_the_worker():
    """maxRequests 1: retiring a worker that is still starting would end its start."""
    h = Harness(startup="later")
    app = h.app(max_requests=1)
    d = h.send(app)
    [process] = h.processes
    assert not process.child.held
    process.child.ready_now()
    h.launcher.settle()
    assert result_of(d).status == 200


def test_an_ephemeral_request_goes_ahead_of_its_workers_ready():
    h = Harness(startup="later")
    d = h.send(h.app("e", ttl=0))
    [process] = h.processes
    assert process.child.held
    process.child.ready_now()
    h.launcher.settle()
    assert result_of(d).status == 200


def test_an_ephemeral_request_sent_ahead_waits_for_its_workers_start_past_its_timeout():
    """
    The worker is its own: its request waits for it as long as a start may
    take (the ready timeout), then has its C{timeout}, as before it went ahead.
    """
    h = Harness(startup="later", ready_timeout=60)
    d = h.send(h.app("e", ttl=0, timeout=5))
    h.advance(8)
    assert not d.called
    h.processes[0].child.ready_now()
    h.launcher.settle()
    assert result_of(d).status == 200


def test_an_ephemeral_request_sent_ahead_has_its_timeout_once_its_worker_is_ready():
    h = Harness(startup="later", ready_timeout=60)
    d = h.send(h.app("e", ttl=0, timeout=5), "/hang")
    h.advance(8)
    h.processes[0].child.ready_now()
    h.advance(4.9)
    assert not d.called
    h.advance(0.1)
    assert error_of(result_of(d))[:2] == (504, "WORKER_TIMEOUT")


def test_an_ephemeral_request_whose_client_leaves_while_its_worker_starts_ended_early():
    h = Harness(startup="later")
    d = h.send(h.app("e", ttl=0))
    d.addErrback(lambda failure: failure.trap(CancelledError))
    d.cancel()
    h.launcher.settle()
    [retired] = [e for e in h.pool.worker_events() if e["event"] == "retired"]
    assert retired["reason"] == "request ended early"


def test_ready_timeout_is_a_failure():
    h = Harness(startup="hang", ready_timeout=30)
    app = h.app(timeout=60)
    d = h.send(app)
    h.advance(30)
    status, code, message = error_of(result_of(d))
    assert (status, code) == (502, "WORKER_START_FAILED")
    assert "ready within 30s" in message
    h.advance(0.1)
    assert h.launcher.live == []


def test_death_mid_request_is_502_and_next_request_respawns(eliot_logger):
    h = Harness()
    app = h.app()
    d = h.send(app, "/hang")
    h.processes[0].die(-9)
    h.launcher.settle()
    status, code, message = error_of(result_of(d))
    assert (status, code) == (502, "WORKER_CRASHED")
    assert "hello@1.0.0" in message
    assert h.get(app).status == 200
    assert len(h.processes) == 2
    metrics = h.pool.metrics()
    assert (metrics["totalWorkersFailed"], metrics["totalWorkersCreated"]) == (1, 2)
    assert h.pool.worker_events() == [
        {"app": "hello@1.0.0", "event": "crashed", "reason": "exited", "count": 1},
        {"app": "hello@1.0.0", "event": "started", "reason": "", "count": 2},
    ]
    # the crash is the first thing said in the retire action that follows it
    [retiring] = LoggedAction.of_type(eliot_logger.messages, "buntime:worker:retire")
    assert retiring.start_message["reason"] == "unhealthy" and retiring.succeeded
    [crash] = retiring.children
    assert crash.message["message_type"] == "buntime:worker:crash"
    assert crash.message["reason"] == "exited with code -9" and crash.message["level"] == "error"
    assert crash.message["pid"] == retiring.start_message["pid"]
    eliot_logger.validate()


def test_app_error_is_500():
    h = Harness()
    status, code, message = error_of(h.get(h.app(), "/fail"))
    assert (status, code) == (500, "APP_ERROR")
    assert "ValueError: bad input" in message


# -- capacity ------------------------------------------------------------------


def test_max_concurrency_per_worker():
    h = Harness()
    app = h.app(max_concurrency=2)
    a, _, c = (h.send(app, f"/wait/{n}") for n in "abc")
    assert h.received() == ["/wait/a", "/wait/b"]  # c waits for a free slot
    h.gates.open("a")
    h.launcher.settle()
    assert result_of(a).status == 200
    assert h.received() == ["/wait/a", "/wait/b", "/wait/c"]
    h.gates.open("b")
    h.gates.open("c")
    h.launcher.settle()
    assert result_of(c).body == b"done /wait/c"
    assert len(h.processes) == 1


def test_max_instances_scale_out():
    h = Harness()
    app = h.app(max_concurrency=5, max_instances=2)
    for n in range(4):
        h.send(app, f"/wait/{n}")
    assert len(h.processes) == 1
    h.send(app, "/wait/4")  # 4 of 5 slots busy: near full, a second instance starts
    assert len(h.processes) == 2
    assert [len(p.child.received) for p in h.processes] == [5, 0]  # it still had a slot
    h.send(app, "/wait/5")
    assert [len(p.child.received) for p in h.processes] == [5, 1]
    for n in range(6, 12):
        h.send(app, f"/wait/{n}")
    assert len(h.processes) == 2  # maxInstances
    assert [len(p.child.received) for p in h.processes] == [5, 5]
    assert h.pool.metrics()["activeWorkers"] == 2


def test_queue_full_503():
    h = Harness()
    app = h.app(max_concurrency=1, max_queue=1)
    h.send(app, "/wait/a")
    queued = h.send(app, "/wait/b")
    response = h.get(app, "/wait/c")
    assert error_of(response)[:2] == (503, "QUEUE_FULL")
    assert response.headers.get("retry-after") == "1"
    h.gates.open("a")
    h.gates.open("b")
    h.launcher.settle()
    assert result_of(queued).status == 200


def test_queue_wait_longer_than_timeout_504():
    h = Harness()
    app = h.app(max_concurrency=1, timeout=2, ttl=60)
    streaming = result_of(h.send(app, "/stream"))  # started, so no timeout; holds the slot
    h.advance(1)
    queued = h.send(app, "/wait/b")
    h.advance(1.9)
    assert not queued.called
    h.advance(0.1)
    assert error_of(result_of(queued))[:2] == (504, "QUEUE_TIMEOUT")
    assert h.received() == ["/stream"]
    assert read_all(h.launcher, streaming.body) == b"abc"


def test_queue_wait_during_a_slow_cold_start_504():
    h = Harness(startup="hang")
    d = h.send(h.app(timeout=2))
    h.advance(2)
    assert error_of(result_of(d))[:2] == (504, "QUEUE_TIMEOUT")


def test_cancelled_queued_request_is_never_run():
    h = Harness()
    app = h.app(max_concurrency=1)
    first = h.send(app, "/wait/a")
    queued = h.send(app, "/wait/b")
    queued.cancel()
    with pytest.raises(CancelledError):
        result_of(queued)
    h.gates.open("a")
    h.launcher.settle()
    assert result_of(first).status == 200
    assert h.received() == ["/wait/a"]


def test_cancelled_running_request_is_cancelled_in_the_worker():
    h = Harness()
    d = h.send(h.app(), "/hang")
    d.cancel()
    d.addErrback(lambda f: f.trap(CancelledError))
    h.launcher.settle()
    assert h.processes[0].child.cancelled == [1]


# -- ephemeral -------------------------------------------------------------------


def test_ephemeral_fresh_worker_per_request():
    h = Harness()
    app = h.app(ttl=0)
    assert h.get(app, "/1").body == b"GET /1|"
    assert h.get(app, "/2").body == b"GET /2|"
    assert len(h.processes) == 2
    h.advance(0.1)
    assert h.launcher.live == []
    assert [p.child.terminates for p in h.processes] == [1, 1]
    assert h.pool.metrics()["misses"] == 2


def test_ephemeral_worker_stops_after_the_body_streamed():
    h = Harness()
    response = h.get(h.app(ttl=0), "/stream")
    process = h.processes[0]
    h.advance(1)
    assert process.exit_code is None  # body not read yet
    assert read_all(h.launcher, response.body) == b"abc"
    h.advance(0.1)
    assert process.exit_code == 0


def test_ephemeral_concurrency_and_queue():
    h = Harness(ephemeral_concurrency=2, ephemeral_queue=1)
    app = h.app(ttl=0)
    a, _, c = (h.send(app, f"/wait/{n}") for n in "abc")
    assert len(h.processes) == 2
    assert h.pool.metrics()["ephemeralQueueDepth"] == 1
    full = h.get(app, "/wait/d")
    assert error_of(full)[:2] == (503, "QUEUE_FULL")
    assert full.headers.get("retry-after") == "1"
    h.gates.open("a")
    h.launcher.settle()
    assert result_of(a).status == 200
    assert len(h.processes) == 3  # c got the freed slot
    assert h.pool.metrics()["ephemeralQueueDepth"] == 0
    h.gates.open("b")
    h.gates.open("c")
    h.launcher.settle()
    assert result_of(c).body == b"done /wait/c"


def test_ephemeral_cancelled_queued_request_is_dropped():
    h = Harness(ephemeral_concurrency=1, ephemeral_queue=1)
    app = h.app(ttl=0)
    h.send(app, "/wait/a")
    queued = h.send(app, "/wait/b")
    queued.cancel()
    queued.addErrback(lambda f: f.trap(CancelledError))
    h.gates.open("a")
    h.launcher.settle()
    assert len(h.processes) == 1
    assert h.get(app, "/x").status == 200  # the slot came back


def test_ephemeral_startup_failure_frees_the_slot():
    h = Harness(ephemeral_concurrency=1, startup="fail")
    app = h.app(ttl=0)
    assert error_of(h.get(app))[1] == "WORKER_START_FAILED"
    h.launcher.startup = "ready"
    assert h.get(app).status == 200


def test_an_ephemeral_launch_that_fails_at_once_frees_the_slot():
    """The fork template unreachable at the launch: the fresh worker's slot comes back."""
    h = Harness(ephemeral_concurrency=1, ephemeral_queue=1, startup="unavailable")
    app = h.app(ttl=0, timeout=5)
    assert error_of(h.get(app))[:2] == (503, "WORKERS_UNAVAILABLE")
    h.launcher.startup = "ready"
    h.advance(1)  # past the backoff
    d = h.send(app)
    h.advance(5)
    assert result_of(d).status == 200


def noting_anew(asked: list[tuple[int, str]]) -> Callable[..., Deferred]:
    """A pool's C{again}: notes each request's refusal status and path, and answers it itself."""

    def again(refusal, request, base, served):
        asked.append((refusal.status, request.path))
        return succeed(Response.text("routed anew"))

    return again


def test_an_ephemeral_request_sent_ahead_when_its_app_is_retired_is_routed_anew():
    """
    Its fresh worker stopped before it was ready (the app replaced, a
    development reload), the request never reached the app: it is routed
    anew, as a persistent app's is, not answered 502 WORKER_CRASHED.
    """
    h = Harness(startup="later")
    app = h.app(ttl=0)
    asked: list[tuple[int, str]] = []
    again = noting_anew(asked)

    d = h.pool.handle(app, Request("GET", "/x"), "/hello", None, again)
    h.launcher.settle()
    assert h.processes[0].child.held
    h.pool.retire_app(app.dir)
    h.launcher.settle()
    assert result_of(d).body == b"routed anew"
    assert asked == [(503, "/x")]


# -- apps ------------------------------------------------------------------------


def test_name_version_collision_500(tmp_path):
    h = Harness()
    one, two = tmp_path / "one" / "hello@1.0.0", tmp_path / "two" / "hello" / "1.0.0"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    first = h.app(dir=str(one))
    second = h.app(dir=str(two))
    assert h.get(first).status == 200
    status, code, message = error_of(h.get(second))
    assert (status, code) == (500, "APP_COLLISION")
    assert str(one) in message and str(two) in message
    assert len(h.processes) == 1
    h.pool.retire_app(first.dir)
    assert h.get(second).status == 200


def test_collision_ends_when_the_first_directory_is_removed_by_hand(tmp_path):
    h = Harness()
    one, two = tmp_path / "one" / "hello@1.0.0", tmp_path / "two" / "hello" / "1.0.0"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    first, second = h.app(dir=str(one)), h.app(dir=str(two))
    assert h.get(first).status == 200
    assert error_of(h.get(second))[1] == "APP_COLLISION"
    one.rmdir()
    assert h.get(second).status == 200


def test_retire_app_drains_then_stops():
    h = Harness()
    app = h.app()
    pending = h.send(app, "/wait/a")
    retired = h.pool.retire_app(app.dir)
    h.launcher.settle()
    assert not retired.called and h.processes[0].child.terminates == 0
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(pending).status == 200
    assert result_of(retired) is None
    assert h.launcher.live == []


def test_a_request_waiting_for_a_retired_app_is_503_app_retired():
    h = Harness()
    app = h.app(max_concurrency=1, max_instances=1)
    busy = h.send(app, "/wait/a")
    waiting = h.send(app, "/x")
    assert not waiting.called  # queued behind the busy worker
    h.pool.retire_app(app.dir)
    refusal = result_of(waiting)
    status, code, message = error_of(refusal)
    assert (status, code) == (503, "APP_RETIRED")
    assert message == "hello@1.0.0 was replaced or removed"
    assert refusal.headers.get("retry-after") == "1"
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(busy).status == 200  # the one sent finishes on the old worker


def test_a_request_waiting_for_a_retired_app_is_answered_by_again():
    """
    A request retired while it waited (never sent to a worker) is given to
    the caller's C{again}, with the refusal it would get; the one already
    sent still finishes on the old worker.
    """
    h = Harness()
    app = h.app(max_concurrency=1, max_instances=1)
    asked = []

    def again(refusal, request, base, served):
        asked.append((refusal.status, request.path, base, served))
        return succeed(Response.text("routed anew"))

    busy = h.pool.handle(app, Request("GET", "/wait/a"), "/hello", None, again)
    h.launcher.settle()
    waiting = h.pool.handle(app, Request("GET", "/x"), "/hello", print, again)
    h.launcher.settle()
    h.pool.retire_app(app.dir)
    assert result_of(waiting).body == b"routed anew"
    assert asked == [(503, "/x", "/hello", print)]
    assert h.received() == ["/wait/a"]  # /x never reached a worker
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(busy).status == 200
    assert len(asked) == 1


def test_a_rerouted_request_is_counted_once():
    """
    A request routed anew (L{WorkerPool.reroute}) when its app is replaced
    while it waits is one request in the numbers: the first pass counts it
    (and the hit or miss it met) and times it from its arrival to the new
    copy's answer; the second pass counts nothing.
    """
    h = Harness()
    app = h.app(max_concurrency=1, max_instances=1)
    newer = h.app(version="1.0.1", max_concurrency=1, max_instances=1)

    def again(refusal, request, base, served):
        return h.pool.reroute(newer, request, base, served)

    busy = h.pool.handle(app, Request("GET", "/wait/a"), "/hello", None, again)
    h.launcher.settle()
    waiting = h.pool.handle(app, Request("GET", "/x"), "/hello", None, again)
    h.launcher.settle()
    before = h.pool.metrics()
    assert before["totalRequests"] == 2 and before["hits"] + before["misses"] == 2
    h.advance(1)
    h.pool.retire_app(app.dir)
    h.launcher.settle()
    assert result_of(waiting).body == b"GET /x|"
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(busy).status == 200
    after = h.pool.metrics()
    counted = ("totalRequests", "hits", "misses", "hitRate")
    assert {k: after[k] for k in counted} == {k: before[k] for k in counted}
    # two response times of 1s: /wait/a's, and /x's from its arrival (no third from its reroute)
    assert after["avgResponseTimeMs"] == 1000.0
    assert sorted(h.received()) == ["/wait/a", "/x"]


def test_an_ephemeral_request_waiting_for_a_slot_when_its_app_is_retired_is_routed_anew():
    """
    Waiting for one of the fresh workers' slots when its app is replaced,
    a request of an ephemeral app is routed anew once a slot frees, not
    served by a fresh worker of the old copy.
    """
    h = Harness(ephemeral_concurrency=1, ephemeral_queue=1)
    app = h.app(ttl=0)
    asked: list[tuple[int, str]] = []
    again = noting_anew(asked)

    busy = h.pool.handle(app, Request("GET", "/wait/a"), "/hello", None, again)
    h.launcher.settle()
    waiting = h.pool.handle(app, Request("GET", "/x"), "/hello", None, again)
    h.launcher.settle()
    h.pool.retire_app(app.dir)
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(busy).status == 200
    assert result_of(waiting).body == b"routed anew"
    assert asked == [(503, "/x")]
    assert len(h.processes) == 1 and h.received() == ["/wait/a"]
    assert h.get(h.app(ttl=0)).status == 200  # the slot came back


def test_auto_install_failure_is_500_and_retried():
    h = Harness()
    calls = []
    outcomes = [
        fail(InstallError("ERROR: No matching distribution found for nope==1")),
        succeed(None),
    ]

    class Installer:
        def ensure(self, app_dir):
            calls.append(app_dir)
            return outcomes.pop(0)

    h.pool._installer = Installer()
    app = h.app(auto_install=True)
    status, code, message = error_of(h.get(app))
    assert (status, code) == (500, "INSTALL_FAILED")
    assert "No matching distribution" in message
    assert h.processes == []
    assert h.get(app).status == 200
    assert h.get(app).status == 200
    assert calls == [app.dir, app.dir]


class HeldInstaller:
    """An installer whose installs finish when the test says (C{done.callback(None)})."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def ensure(self, app_dir: str) -> Deferred:
        return self.done


def test_a_request_waiting_for_its_app_s_install_when_the_app_is_retired_is_routed_anew():
    """
    A request that waited for its app's dependencies while the app was
    retired was never sent: C{again} answers it, as a queued one; no worker
    of the retired copy is started (it would serve the old code, and no
    check or stop would ever retire it).
    """
    h = Harness()
    installer = h.pool._installer = HeldInstaller()
    app = h.app(auto_install=True)
    asked = []

    def again(refusal, request, base, served):
        asked.append((refusal.status, request.path, base))
        return succeed(Response.text("routed anew"))

    waiting = h.pool.handle(app, Request("GET", "/x"), "/hello", None, again)
    plain = h.pool.handle(app, Request("GET", "/y"), "/hello")
    h.pool.retire_app(app.dir)
    installer.done.callback(None)
    h.launcher.settle()
    assert result_of(waiting).body == b"routed anew"
    assert asked == [(503, "/x", "/hello")]
    assert error_of(result_of(plain))[:2] == (503, "APP_RETIRED")
    assert h.processes == []


def test_a_request_waiting_for_its_app_s_install_when_the_pool_stops_starts_no_worker():
    h = Harness()
    installer = h.pool._installer = HeldInstaller()
    app = h.app(auto_install=True)
    waiting = h.pool.handle(app, Request("GET", "/x"), "/hello")
    stopped = h.pool.stop(1.0)
    installer.done.callback(None)
    h.launcher.settle()
    assert error_of(result_of(waiting))[:2] == (503, "SHUTTING_DOWN")
    assert result_of(stopped) is None
    assert h.processes == []


# -- lifecycle, hooks, numbers ---------------------------------------------------------


def test_hooks():
    h = Harness()
    events = []
    h.pool.on_worker_spawn.append(lambda w, app: events.append(("spawn", w.pid, app.name)))
    h.pool.on_worker_terminate.append(lambda w, app: events.append(("stop", w.pid, app.name)))
    h.pool.on_worker_spawn.append(lambda w, app: 1 / 0)  # a broken hook changes nothing
    app = h.app(ttl=0)
    assert h.get(app).status == 200
    pid = h.processes[0].pid
    assert events == [("spawn", pid, "hello"), ("stop", pid, "hello")]


def test_stop_retires_everything():
    h = Harness()
    app, other = h.app(max_concurrency=1), h.app("other")
    running = h.send(app, "/wait/a")
    queued = h.send(app, "/wait/b")
    h.get(other)
    h.processes[1].child.connectionLost = lambda reason: None  # will need SIGKILL
    stopped = h.pool.stop(deadline=10)
    h.launcher.settle()
    assert error_of(result_of(queued))[:2] == (503, "SHUTTING_DOWN")
    assert error_of(h.get(app))[:2] == (503, "SHUTTING_DOWN")
    h.gates.open("a")
    h.advance(0.1)
    assert result_of(running).status == 200
    assert result_of(stopped) is None
    assert [p.child.terminates for p in h.processes] == [1, 1]
    assert h.processes[1].signals == [signal.SIGKILL]
    assert h.launcher.live == []
    assert h.clock.getDelayedCalls() == []


def test_stop_kills_after_the_deadline():
    h = Harness()
    app = h.app(timeout=100, ttl=200, idle_timeout=200)
    h.send(app, "/hang")
    stopped = h.pool.stop(deadline=5)
    h.advance(5)
    assert result_of(stopped) is None
    assert h.processes[0].signals == [signal.SIGKILL]


def test_metrics():
    h = Harness()
    app = h.app()
    h.advance(1)
    h.clock.advance(0)
    d = h.send(app, "/wait/a")
    h.advance(0.5)
    h.gates.open("a")
    h.launcher.settle()
    result_of(d)
    h.get(app)
    h.advance(1.5)
    metrics = h.pool.metrics()
    assert set(metrics) == METRICS
    assert metrics == {
        "activeWorkers": 1,
        "avgResponseTimeMs": 250.0,
        "evictions": 0,
        "hitRate": 50.0,
        "hits": 1,
        "misses": 1,
        "memoryUsageMB": 0.0,
        "requestsPerSecond": 0.67,
        "totalRequests": 2,
        "totalWorkersFailed": 0,
        "totalWorkersCreated": 1,
        "totalWorkersRetired": 0,
        "uptimeMs": 3000,
        "ephemeralQueueDepth": 0,
    }
    [stats] = h.pool.worker_stats()
    assert WORKER_STATS <= set(stats)
    assert stats["requestCount"] == 2
    assert stats["idleMs"] == 1500
    assert stats["ageMs"] == 2000
    assert (stats["app"], stats["version"], stats["pid"]) == ("hello", "1.0.0", h.processes[0].pid)


def test_app_update_keeps_workers():
    """A new PoolApp for the same directory (e.g. a fresh env) reuses the worker."""
    h = Harness()
    app = h.app()
    h.get(app)
    h.get(evolve(app, env={"APP_DIR": app.dir, "X": "1"}))
    assert len(h.processes) == 1


def test_stop_while_workers_start(eliot_logger):
    h = Harness(startup="hang")
    ephemeral = h.send(h.app("e", ttl=0))
    persistent = h.send(h.app("p"))
    stopped = h.pool.stop()
    h.advance(0.1)
    assert result_of(stopped) is None
    assert result_of(ephemeral).status == 502
    assert error_of(result_of(persistent))[:2] == (503, "SHUTTING_DOWN")
    assert h.launcher.live == []
    stopped_early = logged(eliot_logger, "buntime:worker:start", "succeeded")
    assert {m["message"] for m in stopped_early} == {"Stopped before it was ready"}
    eliot_logger.validate()


def test_each_request_times_out_at_its_own_deadline():
    """One timer per worker: requests sent at different times expire at their own deadline."""
    h = Harness()
    app = h.app(timeout=5, ttl=60, idle_timeout=60, max_concurrency=10)
    first = h.send(app, "/wait/a")
    h.advance(2)
    second = h.send(app, "/wait/b")
    h.advance(2.9)  # first at 4.9 s, second at 2.9 s
    assert not first.called and not second.called
    h.advance(0.1)  # the first reaches 5 s
    assert error_of(result_of(first))[:2] == (504, "WORKER_TIMEOUT")
    assert not second.called
    h.advance(1.9)
    assert not second.called
    h.advance(0.1)  # the second reaches 5 s
    assert error_of(result_of(second))[:2] == (504, "WORKER_TIMEOUT")


def test_a_request_answered_in_time_does_not_time_out_later_ones_early():
    h = Harness()
    app = h.app(timeout=5, ttl=60, idle_timeout=60, max_concurrency=10)
    answered = h.send(app, "/wait/a")
    h.advance(3)
    late = h.send(app, "/wait/b")
    h.gates.open("a")
    h.launcher.settle()
    assert result_of(answered).body == b"done /wait/a"
    h.advance(2)  # the first request's deadline passes: nothing expires
    assert not late.called
    h.gates.open("b")
    h.launcher.settle()
    assert result_of(late).body == b"done /wait/b"
    h.advance(10)  # nothing left to expire; the worker keeps serving
    assert result_of(h.send(app, "/x")).status == 200


def test_changed_manifest_sets_the_checks_by_its_ttl_and_idle_timeout():
    """
    An app whose manifest changes (re-read from disk, same directory) is
    checked by its new ttl and idleTimeout: from ephemeral to persistent,
    and from a long idleTimeout to a short one.
    """
    h = Harness()
    ephemeral = h.app(ttl=0.0, idle_timeout=60.0, timeout=1.0)
    h.get(ephemeral)
    kept = h.app(ttl=4.0, idle_timeout=2.0, timeout=1.0)
    h.get(kept)
    persistent = h.processes[-1]
    h.advance(3)  # checks every 1 s: idle for 2 s, retired
    assert persistent.child.terminates == 1
    slow = h.app(name="slow", ttl=600.0, idle_timeout=60.0, timeout=1.0)
    h.get(slow)
    h.advance(1)  # the first check, at 30 s, is still far off
    h.get(h.app(name="slow", ttl=600.0, idle_timeout=2.0, timeout=1.0))
    h.advance(3)
    assert h.processes[-1].child.terminates == 1


def test_a_changed_manifest_ends_the_crash_backoff():
    """
    Fixing the manifest of a crash-looping app (say, the `env` its import
    needs) is tried on the next request, not after the backoff.
    """
    h = Harness(startup="fail")
    app = h.app()
    h.get(app)
    h.get(app)  # the second failure: backing off
    assert error_of(h.get(app))[1] == "WORKER_START_FAILED"
    assert len(h.processes) == 2
    h.launcher.startup = "ready"
    fixed = h.app(env={"NEEDED": "yes"})  # the manifest read again
    assert h.get(fixed).status == 200
    assert len(h.processes) == 3

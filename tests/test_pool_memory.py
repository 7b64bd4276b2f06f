"""
C{maxMemory}: a worker whose RSS is past the limit after a request is
recycled once its in-flight requests are done (a fake RSS source, a clock).
"""

from __future__ import annotations

import signal

from fakes import logged, result_of
from test_pool import Harness

MB = 1024 * 1024


def test_a_worker_past_max_memory_finishes_its_requests_then_is_replaced(eliot_logger):
    h = Harness()
    app = h.app(max_memory=100 * MB)
    assert h.get(app, "/1").status == 200
    first = h.processes[0]
    slow = h.send(app, "/wait/a")  # in flight while the limit is crossed
    h.memory[first.pid] = 150 * MB
    h.advance(0.1)
    assert h.get(app, "/2").status == 200  # the request after which RSS is read
    assert not slow.called
    assert first.child.terminates == 0 and first.exit_code is None, "not killed mid-flight"

    assert h.get(app, "/3").body == b"GET /3|"  # the next request: a fresh worker
    assert len(h.processes) == 2
    assert [r.path for r in h.processes[1].child.received] == ["/3"]

    h.gates.open("a")
    h.launcher.settle()
    assert result_of(slow).body == b"done /wait/a"
    h.advance(0.2)
    assert first.child.terminates == 1
    [line] = logged(eliot_logger, "buntime:pool:memory")
    assert line["level"] == "warn"
    assert (line["rss_mb"], line["limit_mb"], line["pid"]) == (150.0, 100.0, first.pid)
    assert "hello@1.0.0" in line["message"] and "maxMemory" in line["message"]
    [retire] = logged(eliot_logger, "buntime:worker:retire", "started")
    assert retire["reason"] == "memory"
    assert {"app": "hello@1.0.0", "event": "retired", "reason": "memory", "count": 1} in (
        h.pool.worker_events()
    )
    assert h.pool.metrics()["totalWorkersRetired"] == 1


def test_under_the_limit_the_worker_stays():
    h = Harness()
    app = h.app(max_memory=100 * MB)
    for step in range(5):
        h.memory[1001] = 100 * MB  # at the limit is not past it
        assert h.get(app, f"/{step}").status == 200
        h.advance(0.1)
    assert len(h.processes) == 1 and h.processes[0].child.terminates == 0


def test_rss_is_read_at_most_every_100_ms_per_worker():
    h = Harness()
    app = h.app(max_memory=100 * MB)
    for step in range(20):
        h.get(app, f"/{step}")
    assert h.memory_reads == [1001], "one read for 20 requests in the same instant"
    h.advance(0.05)
    h.get(app)
    assert len(h.memory_reads) == 1
    h.advance(0.05)
    h.get(app)
    assert len(h.memory_reads) == 2


def test_a_read_skipped_within_100_ms_is_made_when_they_are_up():
    """
    A request that grows the worker right after another (its read falls in
    the same 100 ms) is still seen: the next request goes to a fresh worker.
    """
    h = Harness()
    app = h.app(max_memory=100 * MB)
    assert h.get(app, "/warm").status == 200  # read: under the limit
    first = h.processes[0]
    h.advance(0.05)
    h.memory[first.pid] = 150 * MB
    assert h.get(app, "/grow").status == 200  # too soon for another read
    assert len(h.memory_reads) == 1
    h.advance(0.05)  # 100 ms after the last read: the skipped one is made
    assert len(h.memory_reads) == 2
    h.advance(0.2)
    assert first.child.terminates == 1
    assert h.get(app, "/next").body == b"GET /next|"
    assert [r.path for r in h.processes[1].child.received] == ["/next"]


def test_a_read_put_off_is_dropped_with_its_worker():
    """A retired worker's put-off read is cancelled: no timer holds it (and its app) on."""
    h = Harness()
    app = h.app(max_memory=100 * MB)
    h.get(app, "/1")
    h.get(app, "/2")  # within 100 ms of the first read: put off
    [worker] = h.pool._apps[app.key].workers
    assert worker.memory_recheck is not None and worker.memory_recheck.active()
    h.pool.retire_app(app.key)
    assert worker.memory_recheck is None
    assert not [call for call in h.clock.getDelayedCalls() if call.func == h.pool._checks._recheck]


def test_no_limit_no_reads_and_ephemeral_workers_are_not_read():
    h = Harness()
    for step in range(3):
        h.get(h.app(), f"/{step}")
        h.get(h.app("eph", ttl=0, max_memory=MB), f"/{step}")
        h.advance(0.1)
    assert h.memory_reads == []


def test_an_idle_worker_past_the_limit_is_retired_on_the_periodic_check(eliot_logger):
    h = Harness()
    app = h.app(max_memory=100 * MB, ttl=60, idle_timeout=20)
    h.get(app)
    worker = h.processes[0]
    h.advance(0.5)
    h.memory[worker.pid] = 101 * MB  # grew after its last request (a background thread)
    h.advance(10)  # checks run every min(ttl, idleTimeout) / 2
    h.advance(0.2)
    assert worker.child.terminates == 1
    [retire] = logged(eliot_logger, "buntime:worker:retire", "started")
    assert retire["reason"] == "memory"


def test_a_vanished_process_is_not_retired_for_memory():
    h = Harness()
    app = h.app(max_memory=100 * MB)
    h.memory[1001] = None  # /proc/<pid>/statm unreadable: the process is going
    for step in range(3):
        assert h.get(app, f"/{step}").status == 200
        h.advance(0.1)
    assert len(h.processes) == 1


# -- a WSGI call that cannot be stopped -------------------------------------------


def test_a_timed_out_wsgi_call_recycles_its_worker_at_once_with_its_stack(eliot_logger):
    """
    A WSGI request runs in a thread that a cancel cannot stop: at its first
    timeout the worker takes no more requests, its stack is logged, its other
    requests finish, and it is killed without C{on_terminate} (which would
    wait for the stuck call).
    """
    h = Harness()
    h.launcher.kind = "wsgi"
    app = h.app(timeout=2)
    stuck = h.send(app, "/hang")
    h.advance(1)
    other = h.send(app, "/wait/a")  # times out a second after the stuck one
    h.advance(1)
    assert result_of(stuck).status == 504
    worker = h.processes[0]
    assert worker.signals == [signal.SIGUSR1]
    waiting = h.send(app, "/meanwhile")  # not for the stuck worker
    h.advance(0.2)
    [line] = [m for m in logged(eliot_logger, "buntime:pool:timeout") if m["level"] == "error"]
    assert "line 7 in handler" in line["stack"] and line["pid"] == worker.pid
    assert "wsgi call" in line["message"]
    assert result_of(waiting).body == b"GET /meanwhile|"
    assert len(h.processes) == 2
    assert worker.exit_code is None, "its other request is still running"
    h.gates.open("a")
    h.advance(0.5)
    assert result_of(other).body == b"done /wait/a"
    assert worker.exit_code is not None and worker.child.terminates == 0
    [retire] = logged(eliot_logger, "buntime:worker:retire", "started")
    assert retire["reason"] == "timed out"


def test_other_kinds_keep_their_worker_after_one_timeout(eliot_logger):
    h = Harness()
    h.launcher.kind = "asgi"
    app = h.app(timeout=2)
    stuck = h.send(app, "/hang")
    h.advance(2)
    assert result_of(stuck).status == 504
    assert h.get(app, "/after").body == b"GET /after|"
    assert len(h.processes) == 1

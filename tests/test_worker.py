"""
The runtime side of one worker, over a real AMP connection (iosim) to a
fake worker: requests and responses, chunked bodies both ways, streaming
with backpressure, cancellation, timeouts and death.
"""

from __future__ import annotations

import os
import signal

import pytest
from fakes import ChildRequest, FakeLauncher, hang, logged, read_all, result_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from zope.interface.verify import verifyObject

from buntime.http import Request
from buntime.pool.commands import CHUNK_SIZE, StartRequest
from buntime.pool.events import ResponseStart
from buntime.pool.inflight import AppError, RequestTimedOut, WorkerGone
from buntime.pool.launch.launcher import ILauncher
from buntime.pool.output import QUIET, Write
from buntime.pool.status import ACTIVE, OFFLINE, STOPPING
from buntime.pool.worker import StartupError, Worker

MB = 1024 * 1024


def started(handler=None, startup: str = "ready") -> tuple[FakeLauncher, Worker]:
    clock = MemoryReactorClock()
    launcher = FakeLauncher(clock, startup=startup)
    if handler is not None:
        launcher.handler = handler
    worker = Worker(id="w1", app_key="/apps/hello", name="hello", version="1.0.0", clock=clock)
    worker.launch(launcher, "/apps/hello", {"APP_DIR": "/apps/hello"}, ready_timeout=30)
    launcher.settle()
    return launcher, worker


def child(launcher: FakeLauncher):
    return launcher.processes[-1].child


def test_fake_launcher_provides_the_interface():
    verifyObject(ILauncher, FakeLauncher(MemoryReactorClock()))


def test_ready_handshake():
    launcher, worker = started()
    assert result_of(worker.ready) is None
    assert worker.status == ACTIVE
    assert worker.pid == launcher.processes[0].pid
    assert worker.kind == "fake"
    spec = launcher.processes[0].spec
    assert (spec.worker_id, spec.app_dir) == ("w1", "/apps/hello")


def test_startup_failed():
    _, worker = started(startup="fail")
    with pytest.raises(StartupError) as info:
        result_of(worker.ready)
    assert "ImportError" in info.value.error
    assert info.value.detail.startswith("Traceback")
    assert not worker.healthy


def test_ready_timeout():
    launcher, worker = started(startup="hang")
    ready = worker.ready
    launcher.advance(29.9)
    assert not ready.called
    launcher.advance(0.2)
    with pytest.raises(StartupError, match="ready within 30s"):
        result_of(ready)


def test_request_and_response():
    launcher, worker = started()
    request = Request(
        "POST", "/api/x?q=1", headers={"x-a": "1"}, body=b"hello", remote_addr="10.0.0.1"
    )
    d = worker.request(request, "/hello@1", timeout=30)
    assert worker.in_flight == 1
    launcher.settle()
    response = result_of(d)
    assert response.status == 200
    assert response.headers.get("content-type") == "text/plain"
    assert response.body == b"POST /api/x?q=1|hello"
    seen = child(launcher).received[0]
    assert (seen.base, seen.remote, seen.headers) == ("/hello@1", "10.0.0.1", [["x-a", "1"]])
    assert worker.in_flight == 0
    assert (worker.request_count, worker.responded, worker.error_count) == (1, 1, 0)


def test_empty_bodies():
    async def empty(request: ChildRequest) -> None:
        assert await request.body() == b""
        request.start(204, [], b"", end=True)

    launcher, worker = started(empty)
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    launcher.settle()
    response = result_of(d)
    assert (response.status, response.body) == (204, b"")
    assert child(launcher).received[0].chunks == [b""]


def test_big_bodies_travel_in_chunks():
    """5 MB each way: no AMP value over the limit, every byte arrives."""
    payload = os.urandom(5 * MB)
    launcher, worker = started()
    d = worker.request(Request("PUT", "/upload", body=payload), "/hello", timeout=30)
    launcher.settle()
    seen = child(launcher).received[0]
    assert b"".join(seen.chunks) == payload
    assert max(len(c) for c in seen.chunks) <= CHUNK_SIZE
    assert len(seen.chunks) == -(-len(payload) // CHUNK_SIZE)
    response = result_of(d)
    assert read_all(launcher, response.body) == b"PUT /upload|" + payload


def test_streamed_request_body():
    async def upload():
        yield b"a" * (CHUNK_SIZE + 10)
        yield b""
        yield b"b"

    launcher, worker = started()
    d = worker.request(Request("POST", "/", body=upload()), "/hello", timeout=30)
    launcher.settle()
    response = result_of(d)
    assert read_all(launcher, response.body) == b"POST /|" + b"a" * (CHUNK_SIZE + 10) + b"b"


def test_a_value_over_the_amp_limit_fails_in_the_loopback():
    """The fake channel really serializes boxes, as a pipe would."""
    _, worker = started()
    with pytest.raises(amp.TooLong):
        worker.protocol.callRemote(StartRequest, rid=99, head="[]", body=b"x" * 70000)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3 * CHUNK_SIZE + 7), st.integers(min_value=0, max_value=3))
def test_bodies_round_trip(data, extra_chunks):
    body = data + b"z" * (extra_chunks * CHUNK_SIZE)
    launcher, worker = started()
    d = worker.request(Request("POST", "/", body=body), "/hello", timeout=30)
    launcher.settle()
    assert read_all(launcher, result_of(d).body) == b"POST /|" + body


def streaming(chunks: int, sent: list[int]):
    async def handler(request: ChildRequest) -> None:
        request.start(200, [("content-type", "text/event-stream")], b"first;", end=False)
        for i in range(chunks):
            if request.cancelled:
                return
            await request.send(f"chunk{i};".encode())
            sent.append(i)
        request.end()

    return handler


def test_streaming_response_with_backpressure():
    sent: list[int] = []
    launcher, worker = started(streaming(5, sent))
    d = worker.request(Request("GET", "/events"), "/hello", timeout=30)
    launcher.settle()
    response = result_of(d)
    assert response.headers.get("content-type") == "text/event-stream"
    body = response.body
    # Nothing read yet: the worker sent one chunk and waits for it to be taken.
    assert sent == []
    first = Deferred.fromCoroutine(body.__anext__())
    assert result_of(first) == b"first;"
    launcher.settle()
    assert sent == []
    second = Deferred.fromCoroutine(body.__anext__())
    assert result_of(second) == b"chunk0;"
    launcher.settle()
    assert sent == [0]  # taking one chunk let exactly one more through
    assert worker.in_flight == 1
    rest = read_all(launcher, body)
    assert rest == b"chunk1;chunk2;chunk3;chunk4;"
    assert sent == [0, 1, 2, 3, 4]
    assert worker.in_flight == 0


def test_response_error_before_start():
    async def broken(request: ChildRequest) -> None:
        request.error("ZeroDivisionError: division by zero")

    launcher, worker = started(broken)
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    launcher.settle()
    with pytest.raises(AppError, match="ZeroDivisionError"):
        result_of(d)
    assert worker.error_count == 1
    assert worker.in_flight == 0


def test_response_error_after_start_breaks_the_stream():
    async def broken(request: ChildRequest) -> None:
        request.start(200, [], b"part", end=False)
        request.error("boom")

    launcher, worker = started(broken)
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    launcher.settle()
    body = result_of(d).body
    assert result_of(Deferred.fromCoroutine(body.__anext__())) == b"part"
    with pytest.raises(AppError, match="boom"):
        result_of(Deferred.fromCoroutine(body.__anext__()))


def test_a_malformed_response_head_is_an_app_error():
    async def garbled(request: ChildRequest) -> None:
        request.child.callRemote(ResponseStart, rid=request.rid, head="[200,", body=b"")

    launcher, worker = started(garbled)
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    launcher.settle()
    with pytest.raises(AppError, match="malformed response head"):
        result_of(d)
    assert worker.in_flight == 0 and worker.healthy


def test_cancelling_the_request_cancels_it_in_the_worker():
    launcher, worker = started(hang)
    d = worker.request(Request("GET", "/slow"), "/hello", timeout=30)
    launcher.settle()
    d.cancel()
    launcher.settle()
    with pytest.raises(CancelledError):
        result_of(d)
    assert child(launcher).cancelled == [1]
    assert worker.in_flight == 0


def test_closing_the_stream_early_cancels_the_request():
    sent: list[int] = []
    launcher, worker = started(streaming(100, sent))
    d = worker.request(Request("GET", "/events"), "/hello", timeout=30)
    launcher.settle()
    body = result_of(d).body
    result_of(Deferred.fromCoroutine(body.__anext__()))
    result_of(Deferred.fromCoroutine(body.aclose()))
    launcher.settle()
    assert child(launcher).cancelled == [1]
    assert worker.in_flight == 0
    assert len(sent) <= 2  # the worker stopped once told to
    with pytest.raises(StopAsyncIteration):
        result_of(Deferred.fromCoroutine(body.__anext__()))


def test_timeout_cancels_and_fails():
    launcher, worker = started(hang)
    d = worker.request(Request("GET", "/slow"), "/hello", timeout=5)
    launcher.advance(4.9)
    assert not d.called
    launcher.advance(0.2)
    with pytest.raises(RequestTimedOut):
        result_of(d)
    assert child(launcher).cancelled == [1]
    assert (worker.consecutive_timeouts, worker.error_count, worker.in_flight) == (1, 1, 0)


def test_worker_death_fails_requests_in_flight_promptly():
    sent: list[int] = []

    async def handler(request: ChildRequest) -> None:
        if request.path == "/stream":
            await streaming(10, sent)(request)
        else:
            await hang(request)

    launcher, worker = started(handler)
    waiting = worker.request(Request("GET", "/hang"), "/hello", timeout=30)
    streamed = worker.request(Request("GET", "/stream"), "/hello", timeout=30)
    launcher.settle()
    body = result_of(streamed).body
    launcher.processes[0].die(-9)
    launcher.settle()  # no time passes
    with pytest.raises(WorkerGone):
        result_of(waiting)
    with pytest.raises(WorkerGone):
        read_all(launcher, body)
    assert worker.status == OFFLINE
    assert result_of(worker.exited) == -9


def test_request_to_a_dead_worker_fails_at_once():
    launcher, worker = started()
    launcher.processes[0].die(1)
    launcher.settle()
    with pytest.raises(WorkerGone):
        result_of(worker.request(Request("GET", "/"), "/hello", timeout=30))


def test_graceful_stop():
    launcher, worker = started(hang)
    d = worker.request(Request("GET", "/slow"), "/hello", timeout=30)
    launcher.settle()
    stopped = Deferred.fromCoroutine(worker.stop(delay=0.1, grace=2))
    launcher.settle()
    assert worker.status == STOPPING
    assert child(launcher).terminates == 0  # still draining
    launcher.advance(2.1)
    assert child(launcher).terminates == 1
    assert result_of(stopped) is None
    assert worker.status == OFFLINE
    with pytest.raises(WorkerGone):
        result_of(d)
    assert launcher.processes[0].signals == []  # it exited on its own


def test_stop_kills_a_worker_that_stays():
    launcher, worker = started()
    process = launcher.processes[0]
    process.child.connectionLost = lambda reason: None  # ignores its channel closing
    stopped = Deferred.fromCoroutine(worker.stop(delay=0.1, grace=2))
    launcher.settle()
    assert not stopped.called
    launcher.advance(0.1)
    assert process.signals == [signal.SIGKILL]
    assert result_of(stopped) is None


def test_output_is_tagged(eliot_logger):
    launcher, worker = started()
    worker.output_received(Write("stdout", "hello from print\n"))
    worker.output_received(Write("stderr", "a warning\n", raw=True))
    launcher.settle()
    output = logged(eliot_logger, "buntime:worker:output")
    assert [(m["stream"], m["level"], m["message"]) for m in output] == [
        ("stdout", "info", "hello from print"),
        ("stderr", "warn", "a warning"),
    ]
    assert all(m["worker_id"] == "w1" for m in output)
    assert {m["context"] for m in output} == {"worker:hello@1.0.0"}


def test_output_records_carry_the_request_id(eliot_logger):
    launcher, worker = started()
    for text in ["Traceback (most recent call last):\n", '  File "app.py", line 1, in f\n']:
        worker.output_received(Write("stderr", text, "req-1", 7))
    worker.output_received(Write("stdout", "outside\n", None, 7))
    worker.output_received(Write("stderr", "ValueError: boom\n", "req-1", 7))
    launcher.advance(QUIET)
    output = logged(eliot_logger, "buntime:worker:output")
    assert [(m["message"], m.get("request_id")) for m in output] == [
        ("outside", None),
        (
            'Traceback (most recent call last):\n  File "app.py", line 1, in f\nValueError: boom',
            "req-1",
        ),
    ]


def test_held_output_is_logged_when_the_process_exits(eliot_logger):
    launcher, worker = started()
    worker.output_received(Write("stdout", "no newline yet"))
    launcher.processes[0].die(0)
    launcher.settle()
    [message] = logged(eliot_logger, "buntime:worker:output")
    assert message["message"] == "no newline yet"


def test_dump_stack_collects_stderr(eliot_logger):
    launcher, worker = started()
    d = worker.dump_stack(0.2)
    launcher.advance(0.1)
    assert not d.called
    launcher.advance(0.1)
    stack = result_of(d)
    assert 'File "/apps/slow/app.py", line 7 in handler' in stack
    assert launcher.processes[0].signals == [signal.SIGUSR1]
    assert logged(eliot_logger, "buntime:worker:output") == []  # held back, not logged


def test_dump_stack_leaves_framed_stderr_alone(eliot_logger):
    """Only raw fd 2 lines (faulthandler's) are taken; what Python wrote is logged."""
    launcher, worker = started()
    d = worker.dump_stack(0.2)
    worker.output_received(Write("stderr", "an app warning\n", "req-2", 3))
    launcher.advance(0.2)
    assert "an app warning" not in result_of(d)
    [message] = logged(eliot_logger, "buntime:worker:output")
    assert (message["message"], message["request_id"]) == ("an app warning", "req-2")


def test_idle_is_sent():
    launcher, worker = started()
    worker.send_idle()
    launcher.settle()
    assert child(launcher).idles == 1
    assert worker.status == "idle"
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    assert worker.status == ACTIVE and not worker.idle_sent
    launcher.settle()
    result_of(d)


def test_stats_and_rss():
    launcher, worker = started()
    launcher.clock.advance(2)
    d = worker.request(Request("GET", "/"), "/hello", timeout=30)
    launcher.clock.advance(0.5)
    launcher.settle()
    result_of(d)
    launcher.clock.advance(1)
    stats = worker.stats()
    assert stats["ageMs"] == 3500
    assert stats["idleMs"] == 1000
    assert stats["requestCount"] == 1
    assert stats["avgResponseTimeMs"] == stats["totalResponseTimeMs"] == 500
    assert (stats["status"], stats["app"], stats["version"], stats["id"]) == (
        "active",
        "hello",
        "1.0.0",
        "w1",
    )
    assert stats["rssMB"] == 0.0  # the fake pid is not a real process
    worker.pid = os.getpid()
    assert worker.rss_mb() > 1


def test_stop_before_ready_fails_ready():
    launcher, worker = started(startup="hang")
    ready = worker.ready
    stopped = Deferred.fromCoroutine(worker.stop(delay=0.1, grace=1))
    launcher.advance(0.1)
    with pytest.raises(StartupError, match="stopped before it was ready"):
        result_of(ready)
    assert result_of(stopped) is None
    assert child(launcher).terminates == 0

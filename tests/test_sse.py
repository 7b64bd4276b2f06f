"""
L{buntime.sse}: Server-Sent Events on a twisted.web request, driven by a
clock: the headers, ticks every interval, keep-alive comments, the end of
the stream from either side, and no timer left behind.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from buntime.sse import KEEPALIVE, EventStream, event


def test_event_format():
    assert event("x") == b"data: x\n\n"
    assert event("a\nb", name="tick", event_id=7) == b"event: tick\nid: 7\ndata: a\ndata: b\n\n"


class StreamRequest(DummyRequest):
    """A DummyRequest that keeps a push producer (its own loops over a pull producer)."""

    producer = None

    def registerProducer(self, producer, streaming):
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def written(request: DummyRequest) -> list[bytes]:
    return [bytes(chunk) for chunk in request.written]


def test_ticks_every_interval_until_the_client_leaves():
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    values = iter(["one", None, b": raw\n\n", "four"])
    stream.every(2.0, lambda: next(values))
    closed: list[bool] = []
    stream.on_close.append(lambda: closed.append(True))
    done = stream.open()
    assert request.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/event-stream; charset=utf-8"
    ]
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    assert written(request) == [b": open\n\n", b"data: one\n\n"]
    clock.advance(2)  # None: nothing
    clock.advance(2)
    assert written(request)[2:] == [b": raw\n\n"]
    request.processingFailed(Failure(ConnectionDone("gone")))  # the client leaves
    assert stream.closed and closed == [True]
    assert clock.getDelayedCalls() == []
    stream.send("too late")
    assert len(written(request)) == 3
    assert not done.called  # the route's answer is over either way


def test_close_ends_the_answer():
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    stream.every(1.0, lambda: "tick")
    done = stream.open()
    results: list = []
    done.addCallback(results.append)
    stream.close()
    assert results == [None] and stream.closed
    assert clock.getDelayedCalls() == []
    stream.close()  # twice is fine


def test_cancelling_the_answer_closes_the_stream():
    """Klein cancels the route's Deferred when the client goes away."""
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    stream.every(1.0, lambda: "tick")
    done = stream.open()
    done.cancel()
    done.addErrback(lambda _: None)
    assert stream.closed and clock.getDelayedCalls() == []


def test_a_quiet_stream_sends_keepalive_comments():
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    stream.every(1.0, lambda: None)
    stream.open()
    clock.pump([1.0] * int(KEEPALIVE))
    assert written(request) == [b": open\n\n", b": keep-alive\n\n"]
    stream.close()


def test_a_failing_tick_ends_the_stream():
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    calls: list[int] = []

    def tick() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("broken tick")
        return "fine"

    stream.every(1.0, tick)
    done = stream.open()
    clock.advance(1)
    assert done.called and stream.closed
    assert clock.getDelayedCalls() == []


def test_ticks_wait_while_the_client_reads_too_slowly():
    """The stream is the request's producer: paused, it sends nothing (not even keep-alives)."""
    clock, request = Clock(), StreamRequest([b""])
    stream = EventStream(request, clock)
    count = iter(range(1, 1000))
    stream.every(1.0, lambda: str(next(count)))
    stream.open()
    assert request.producer is stream
    stream.pauseProducing()
    clock.pump([1.0] * int(KEEPALIVE * 2))
    assert written(request) == [b": open\n\n", b"data: 1\n\n"]
    stream.resumeProducing()
    clock.advance(1)
    assert written(request)[2:] == [b"data: 2\n\n"]
    stream.close()
    assert request.producer is None  # unregistered before the answer ends

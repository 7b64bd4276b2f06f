"""Request bodies as the worker receives them (L{buntime.pool.child.body})."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, threads

from buntime.pool.child.body import HIGH_WATER, BodyClosed, BodyReader


def results(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_complete_body() -> None:
    body = BodyReader.start(None, b"abc", more=False)
    assert body.complete and not body.exhausted
    assert results(body.next_chunk()) == [b"abc"]
    assert body.exhausted
    assert results(body.next_chunk()) == [None]


def test_chunks_arrive_later() -> None:
    body = BodyReader.start(None, b"a", more=True)
    assert results(body.next_chunk()) == [b"a"]
    waiting = results(body.next_chunk())
    assert waiting == []
    assert body.feed(b"b") is None
    assert waiting == [b"b"]
    end = results(body.next_chunk())
    body.finish()
    assert end == [None]


def test_read_all() -> None:
    body = BodyReader.start(None, b"a", more=True)
    everything = results(body.read_all())
    body.feed(b"b")
    body.feed(b"c")
    assert everything == []
    body.finish()
    assert everything == [b"abc"]
    assert results(BodyReader.start(None, b"", more=False).read_all()) == [b""]


def test_feeding_waits_above_high_water() -> None:
    body = BodyReader.start(None, b"", more=True)
    assert body.feed(b"x" * HIGH_WATER) is None
    paused = body.feed(b"y")
    assert paused is not None and not paused.called
    assert results(body.next_chunk()) == [b"x" * HIGH_WATER]
    assert paused.called


def test_abort() -> None:
    waiting = BodyReader.start(None, b"", more=True)
    reading = results(waiting.next_chunk())
    waiting.abort()
    assert reading[0].check(BodyClosed)

    body = BodyReader.start(None, b"", more=True)
    closed = results(body.when_closed())
    body.feed(b"x" * HIGH_WATER)
    paused = body.feed(b"x")
    body.abort()
    assert closed == [None]
    assert paused is not None and paused.called
    failed = results(body.next_chunk())
    assert failed[0].check(BodyClosed)
    assert body.feed(b"late") is None


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.integers(1, 64))
def test_file_reads_everything(pieces: list[bytes], size: int) -> None:
    body = BodyReader.start(None, b"", more=True)
    for piece in pieces:
        body.feed(piece)
    body.finish()
    file = body.as_file()
    read = b""
    while part := file.read(size):
        read += part
    assert read == b"".join(pieces)


def test_file_readline() -> None:
    body = BodyReader.start(None, b"one\ntw", more=True)
    body.feed(b"o\nthree")
    body.finish()
    assert list(body.as_file()) == [b"one\n", b"two\n", b"three"]


@pytest_twisted.ensureDeferred
async def test_blocking_read_from_a_thread() -> None:
    """A WSGI thread waits for chunks the reactor feeds, and releases the feeder."""
    body = BodyReader.start(reactor, b"", more=True)
    reading = threads.deferToThread(body.as_file().read)
    paused = body.feed(b"x" * (HIGH_WATER + 1))
    assert paused is not None
    await paused  # the thread took the chunk: the runtime may send more
    body.feed(b"end")
    body.finish()
    assert await reading == b"x" * (HIGH_WATER + 1) + b"end"


@pytest_twisted.ensureDeferred
async def test_blocking_read_of_a_cancelled_request() -> None:
    body = BodyReader.start(reactor, b"", more=True)
    reading = threads.deferToThread(body.read_blocking)
    reactor.callLater(0.01, body.abort)
    with pytest.raises(BodyClosed):
        await reading

"""A pushed body pulled as an async iterator (L{buntime.stream.PushedStream})."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred

from buntime.stream import PushedStream


def stream() -> tuple[PushedStream, list[str]]:
    closes: list[str] = []
    return PushedStream(lambda: closes.append("closed")), closes


def read(body: PushedStream) -> Deferred:
    return ensureDeferred(body.__anext__())


@given(st.lists(st.binary(max_size=20), max_size=8))
def test_chunks_come_out_as_fed(chunks: list[bytes]) -> None:
    body, closes = stream()
    for chunk in chunks:
        body.feed(chunk)
    body.end()
    out: list = []

    async def drain() -> None:
        out.extend([chunk async for chunk in body])

    ensureDeferred(drain()).addErrback(out.append)
    assert out == chunks
    assert closes == []


@pytest_twisted.ensureDeferred
async def test_a_read_waits_for_the_next_chunk() -> None:
    body, _ = stream()
    pending = read(body)
    assert not pending.called
    body.feed(b"one")
    assert await pending == b"one"
    ending = read(body)
    body.end()
    with pytest.raises(StopAsyncIteration):
        await ending


@pytest_twisted.ensureDeferred
async def test_an_ack_fires_when_its_chunk_is_taken() -> None:
    body, _ = stream()
    first, second = Deferred(), Deferred()
    body.feed(b"a", first)
    body.feed(b"b", second)
    assert not first.called
    assert await read(body) == b"a"
    assert first.called and not second.called
    assert await read(body) == b"b"
    assert second.called


@pytest_twisted.ensureDeferred
async def test_a_failure_comes_after_the_chunks_fed_before_it() -> None:
    body, closes = stream()
    body.feed(b"partial")
    body.fail(ValueError("broken"))
    assert await read(body) == b"partial"
    with pytest.raises(ValueError):
        await read(body)
    await body.aclose()
    assert closes == []  # it was over already


@pytest_twisted.ensureDeferred
async def test_aclose_acks_what_waits_drops_the_rest_and_calls_on_close_once() -> None:
    body, closes = stream()
    waiting = Deferred()
    body.feed(b"unread", waiting)
    await body.aclose()
    await body.aclose()
    assert waiting.called and body.closed
    late = Deferred()
    body.feed(b"late", late)
    assert late.called
    assert closes == ["closed"]
    with pytest.raises(StopAsyncIteration):
        await read(body)


def test_cancelling_a_read_closes_the_stream() -> None:
    body, closes = stream()
    pending = read(body)
    pending.cancel()
    pending.addErrback(lambda _: None)
    assert closes == ["closed"]


def test_after_the_end_aclose_does_not_call_on_close() -> None:
    body, closes = stream()
    body.end()
    ensureDeferred(body.aclose())
    assert closes == []


def test_acks_fire_with_the_stream_s_taken_value() -> None:
    class Answered(PushedStream):
        taken = {"answer": True}

    body = Answered(lambda: None)
    ack: Deferred = Deferred()
    body.feed(b"x", ack)
    read(body)
    seen: list = []
    ack.addCallback(seen.append)
    assert seen == [{"answer": True}]

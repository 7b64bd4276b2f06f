"""The in-memory twisted.web channel (L{buntime.memchannel}) and its producers."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from buntime.http import Request
from buntime.memchannel import MemoryChannel
from buntime.plugins.rendering import mount, render


class Recording(MemoryChannel):
    high_water = 10

    def __init__(self) -> None:
        super().__init__(site=None, peer="peer", host="host")
        self.seen: list[Any] = []

    def head_written(self, status: int, pairs: list[tuple[str, str]], reason: str | None) -> None:
        self.seen.append((status, pairs, reason))

    def request_done(self) -> None:
        self.seen.append("done")

    def connection_lost(self, reason: Failure) -> None:
        self.seen.append(reason.getErrorMessage())


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_headers_keep_only_the_resource_s_own_phrase() -> None:
    channel = Recording()
    headers = Headers({b"x-a": [b"1", b"2"]})
    channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    channel.writeHeaders(b"HTTP/1.1", b"200", b"Fine", headers)
    assert channel.seen == [
        (200, [("X-A", "1"), ("X-A", "2")], None),
        (200, [("X-A", "1"), ("X-A", "2")], "Fine"),
    ]
    assert (channel.getPeer(), channel.getHost(), channel.isSecure()) == ("peer", "host", False)
    assert channel.transport.getPeer() == "peer"


def test_a_streaming_producer_is_paused_over_high_water_until_the_reader_catches_up() -> None:
    channel = Recording()
    producer = Producer()
    channel.registerProducer(producer, True)
    channel.write(b"12345")
    channel.writeSequence([b"678", b"90"])
    assert producer.calls == []
    channel.write(b"!")
    channel.write(b"?")
    assert producer.calls == ["pause"]
    assert channel.take() == b"1234567890!?"
    channel.caught_up()
    channel.caught_up()
    assert producer.calls == ["pause", "resume"]


def test_a_pull_producer_is_asked_on_demand() -> None:
    channel = Recording()
    assert not channel.demand()
    producer = Producer()
    channel.registerProducer(producer, False)
    assert channel.demand()
    assert producer.calls == ["resume"]
    channel.stop_producing()
    assert producer.calls == ["resume", "stop"]
    channel.write(b"late")
    assert channel.take() == b""


def test_closing_before_the_end_is_a_lost_connection_after_it_nothing() -> None:
    channel = Recording()
    channel.transport.loseConnection()
    channel.requestDone(None)
    channel.loseConnection()
    assert channel.seen == [
        "Connection was closed cleanly: the app closed the connection.",
        "done",
    ]


class PullResource(Resource):
    isLeaf = True

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__()
        self.pieces = pieces

    def render_GET(self, request: Any) -> Any:
        pieces = list(self.pieces)

        class Pull:
            def resumeProducing(self) -> None:
                if pieces:
                    request.write(pieces.pop(0))
                else:
                    request.unregisterProducer()
                    request.finish()

            def stopProducing(self) -> None:
                pass

        request.registerProducer(Pull(), False)
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_rendering_a_pull_producer_streams_each_piece_as_it_is_read() -> None:
    clock = Clock()
    site = mount("/p", PullResource([b"one", b"two", b"three"]))
    pending = ensureDeferred(render(site, Request("GET", "/p/"), clock))
    clock.advance(0)
    response = await pending
    assert [chunk async for chunk in response.body] == [b"one", b"two", b"three"]


class PushResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        request.registerProducer(self.producer, True)
        request.write(b"x" * (MemoryChannel.high_water + 1))
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_rendering_pauses_a_push_producer_until_its_reader_catches_up() -> None:
    clock = Clock()
    resource = PushResource()
    resource.producer = producer = Producer()
    pending = ensureDeferred(render(mount("/s", resource), Request("GET", "/s/"), clock))
    clock.advance(0)
    response = await pending
    assert producer.calls == ["pause"]
    chunks = response.body.__aiter__()
    assert len(await chunks.__anext__()) == MemoryChannel.high_water + 1
    assert producer.calls == ["pause", "resume"]
    request = resource.requests[0]
    request.write(b"more")
    assert await chunks.__anext__() == b"more"
    await chunks.aclose()
    assert request._disconnected
    assert producer.calls == ["pause", "resume"]

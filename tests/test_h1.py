"""
The fast lane of the front door (L{buntime.web.h1}): requests read, answered
and written without twisted.web, and everything else handed to twisted.web.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure

from buntime.http import Response
from buntime.web.h1 import MAX_HEAD, PAUSE_BUFFERED, FrontChannel, parse_head

# -- parse_head ----------------------------------------------------------------


def test_a_plain_head_is_parsed():
    head = parse_head(
        b"POST /app/x?q=1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 5\r\n"
        b"X-Request-Id: abc\r\nConnection: close\r\nExpect: 100-continue\r\nX-A:  v \t"
    )
    assert head is not None
    assert (head.method, head.target, head.path) == ("POST", "/app/x?q=1", "/app/x")
    assert head.headers == [
        ("Host", "a:1"),
        ("Content-Length", "5"),
        ("Connection", "close"),
        ("Expect", "100-continue"),
        ("X-A", "v"),
    ]  # x-request-id is the front door's to set
    assert (head.length, head.close, head.expect, head.request_id) == (5, True, True, b"abc")


def test_defaults_of_a_head():
    head = parse_head(b"GET / HTTP/1.1\r\nHost: a")
    assert head is not None
    assert (head.length, head.close, head.expect, head.request_id) == (0, False, False, None)


@pytest.mark.parametrize(
    "block",
    [
        b"GET / HTTP/1.0\r\nHost: a",  # HTTP/1.0: twisted.web's
        b"GET http://a/ HTTP/1.1\r\nHost: a",  # absolute form
        b"OPTIONS * HTTP/1.1\r\nHost: a",
        b"get / HTTP/1.1\r\nHost: a",  # not an upper-case method
        b"GET  / HTTP/1.1\r\nHost: a",  # two spaces
        b"GET / HTTP/1.1\r\nHost: a\r\n folded",  # obs-fold
        b"GET / HTTP/1.1\r\nHost : a",  # a space before the colon
        b"GET / HTTP/1.1\r\nHost a",  # no colon
        b"GET / HTTP/1.1\nHost: a",  # a bare LF
        b"GET / HTTP/1.1\r\nHost: a\rb",  # a bare CR
        b"GET / HTTP/1.1\r\nHost: a\x00",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
        b"GET / HTTP/1.1\r\nContent-Length: -1",
        b"GET / HTTP/1.1\r\nContent-Length: 1 2",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade",
        b"GET / HTTP/1.1\r\nExpect: something-else",
        b"GET / HTTP/1.1" + b"\r\nX: y" * 501,
    ],
)
def test_unusual_heads_are_left_to_twisted_web(block):
    assert parse_head(block) is None


_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~", min_size=1
)
_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"))


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
    path=st.text("abcxyz/%?=&._-~019", max_size=40),
    headers=st.lists(st.tuples(_TOKEN, _VALUE), max_size=8),
)
def test_plain_heads_round_trip(method, path, headers):
    headers = [
        (name, value)
        for name, value in headers
        if name.lower()
        not in ("content-length", "transfer-encoding", "upgrade", "expect", "x-request-id")
    ]
    lines = [f"{method} /{path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    head = parse_head("\r\n".join(lines).encode("latin-1"))
    assert head is not None
    assert (head.method, head.target, head.headers) == (method, "/" + path, headers)


# -- a channel with fakes around it ----------------------------------------------


class State:
    def __init__(self) -> None:
        self.in_flight = 0

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1


class Inner(Protocol):
    """Stands for the twisted.web channel a handover builds."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Door:
    """A front door: C{answers} maps paths to responses (or Deferreds of them)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.answers: dict[str, Any] = {}
        self.seen: list[Any] = []
        self.failures: list[Failure] = []
        self.refuse = False

    def takes_directly(self, path: str) -> int | None:
        return None if path.startswith("/api") else self.limit

    def answer_fast(self, exchange: Any) -> bool:
        if self.refuse:
            return False
        self.seen.append(exchange)
        exchange.finished.addErrback(self.failures.append)  # before the channel's own
        answer = self.answers.get(exchange.head.path)
        if answer is None:
            answer = Response(200, {"content-type": "text/plain"}, b"body:" + exchange.body)
        if isinstance(answer, Deferred):
            answer.addCallback(exchange.respond, "rid-1")
        else:
            exchange.respond(answer, "rid-1")
        return True


class Site:
    def __init__(self, door: Door) -> None:
        self.resource = door
        self.reactor = Clock()
        self.timeOut = 60
        self.state = State()
        self.inners: list[Inner] = []

    def http_channel(self, addr: Any) -> Inner:
        inner = Inner()
        self.inners.append(inner)
        return inner


def connect(door: Door | None = None) -> tuple[FrontChannel, StringTransport, Site]:
    site = Site(door or Door())
    channel = FrontChannel(site, None)
    transport = StringTransportWithDisconnection()
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport, site


def responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """The (status line, headers, body) of each content-length response in C{data}."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        length = int(headers.get(b"content-length", b"0"))
        found.append((status, headers, data[:length]))
        data = data[length:]
    return found


GET = b"GET /app/ HTTP/1.1\r\nHost: x\r\n\r\n"


# -- reading ---------------------------------------------------------------------


def test_a_request_is_answered():
    channel, transport, site = connect()
    channel.dataReceived(GET)
    [(status, headers, body)] = responses(transport.value())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"x-request-id"] == b"rid-1"
    assert headers[b"content-type"] == b"text/plain"
    assert headers[b"content-length"] == b"5" and body == b"body:"
    assert b"server" in headers and b"date" in headers
    assert transport.connected and site.inners == []


def test_heads_and_bodies_split_anywhere():
    channel, transport, site = connect()
    request = b"POST /app/ HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabcdef" + GET
    for byte in range(len(request)):
        channel.dataReceived(request[byte : byte + 1])
    assert [r[2] for r in responses(transport.value())] == [b"body:abcdef", b"body:"]
    assert site.state.in_flight == 0


def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    door = Door()
    first, second = Deferred(), Deferred()
    door.answers = {"/one/": first, "/two/": second}
    channel, transport, _ = connect(door)
    channel.dataReceived(
        b"GET /one/ HTTP/1.1\r\n\r\nGET /two/ HTTP/1.1\r\n\r\nGET /three/ HTTP/1.1\r\n\r\n"
    )
    assert [e.head.path for e in door.seen] == ["/one/"]  # the rest wait
    first.callback(Response(200, {}, b"1"))
    assert [e.head.path for e in door.seen] == ["/one/", "/two/"]
    second.callback(Response(200, {}, b"2"))
    assert [r[2] for r in responses(transport.value())] == [b"1", b"2", b"body:"]


def test_reading_pauses_when_too_much_waits_behind_a_request():
    door = Door()
    door.answers = {"/slow/": Deferred()}
    channel, transport, _ = connect(door)
    channel.dataReceived(b"GET /slow/ HTTP/1.1\r\n\r\n")
    channel.dataReceived(GET * (PAUSE_BUFFERED // len(GET) + 1))
    assert transport.producerState == "paused"
    door.answers["/slow/"].callback(Response(200, {}, b""))
    assert transport.producerState == "producing"


def test_other_requests_are_handed_to_twisted_web_with_all_their_bytes():
    channel, transport, site = connect()
    api = b"GET /api/health HTTP/1.1\r\n\r\n"
    channel.dataReceived(GET + api + GET)
    [inner] = site.inners
    assert inner.transport is transport
    assert inner.received == api + GET  # from the first byte of the request it takes
    channel.dataReceived(b"more")
    assert inner.received.endswith(b"more")
    assert len(responses(transport.value())) == 1  # the one before the handover
    channel.connectionLost(Failure(ConnectionError("bye")))
    assert inner.lost is not None


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET /app/ HTTP/1.1\nHost: x\n\n",  # bare LFs: found by "\n\n"
        b"POST /app/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /app/ HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 10),  # an overlong head
    ],
)
def test_what_the_fast_lane_does_not_take_goes_to_twisted_web(request_bytes):
    channel, transport, site = connect()
    channel.dataReceived(request_bytes)
    [inner] = site.inners
    assert inner.received == request_bytes
    assert transport.value() == b""


def test_a_request_the_door_refuses_after_all_is_handed_over_whole():
    door = Door()
    door.refuse = True
    channel, _, site = connect(door)
    request = b"POST /app/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + GET
    channel.dataReceived(request)
    assert site.inners[0].received == request


def test_a_body_over_the_limit_is_refused_without_reading_it():
    channel, transport, site = connect(Door(limit=10))
    channel.dataReceived(
        b"POST /app/ HTTP/1.1\r\nContent-Length: 11\r\nX-Request-Id: mine-1\r\n\r\nab"
    )
    [(status, headers, body)] = responses(transport.value())
    assert status == b"HTTP/1.1 413 Payload Too Large"
    assert headers[b"x-request-id"] == b"mine-1"
    assert json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert not transport.connected
    assert channel.site.resource.seen == []
    assert site.state.in_flight == 0


def test_expect_continue_is_answered_only_while_the_body_is_missing():
    channel, transport, _ = connect()
    channel.dataReceived(
        b"POST /app/ HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"ok")
    assert responses(transport.value().split(b"\r\n\r\n", 1)[1])[0][2] == b"body:ok"
    transport.clear()
    channel.dataReceived(
        b"POST /app/ HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok"
    )
    assert b"100 Continue" not in transport.value()


def test_a_body_still_arriving_counts_as_in_flight():
    channel, _, site = connect()
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert site.state.in_flight == 1
    channel.dataReceived(b"cd")
    assert site.state.in_flight == 0
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    channel.connectionLost(Failure(ConnectionError()))
    assert site.state.in_flight == 0


def test_a_large_body_arrives_whole():
    channel, _, site = connect(Door(limit=10_000_000))
    body = bytes(range(256)) * 20_000
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
    for at in range(0, len(body), 65536):
        channel.dataReceived(body[at : at + 65536])
    [exchange] = site.resource.seen
    assert exchange.body == body


# -- writing -----------------------------------------------------------------------


def answer(response: Response, request: bytes = GET) -> bytes:
    door = Door()
    door.answers = {"/app/": response}
    channel, transport, _ = connect(door)
    channel.dataReceived(request)
    return transport.value()


def test_a_head_request_gets_the_length_but_no_body():
    data = answer(Response(200, {}, b"hello"), b"HEAD /app/ HTTP/1.1\r\n\r\n")
    assert data.endswith(b"content-length: 5\r\n\r\n")


def test_no_content_and_not_modified_have_no_body_or_length():
    for status in (204, 304):
        data = answer(Response(status, {"content-length": "9"}, b""))
        assert b"content-length" not in data.lower()
        assert data.endswith(b"\r\n\r\n")


def test_hop_by_hop_and_own_headers_of_the_app_are_not_passed_on():
    data = answer(
        Response(
            200,
            [
                ("Connection", "upgrade"),
                ("Keep-Alive", "1"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "x"),
                ("X-Request-Id", "app's"),
                ("Content-Length", "999"),
                ("X-Kept", "1"),
            ],
            b"ok",
        )
    )
    [(_, headers, body)] = responses(data)
    lowered = {name.lower() for name in headers}
    assert not lowered & {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
    assert headers[b"x-request-id"] == b"rid-1"
    assert headers[b"content-length"] == b"2" and body == b"ok"
    assert headers[b"X-Kept"] == b"1"


def test_line_breaks_in_header_values_cannot_split_the_response():
    data = answer(Response(200, {"x-evil": "a\r\nset-cookie: stolen=1"}, b""))
    assert b"\r\nset-cookie" not in data.lower()
    assert b"x-evil: a set-cookie: stolen=1" in data


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_a_stream_is_sent_chunked():
    data = answer(Response(200, {}, _chunks(b"ab", b"", b"cde")))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"


def test_a_stream_with_its_own_length_is_sent_as_is():
    data = answer(Response(200, {"content-length": "5"}, _chunks(b"ab", b"cde")))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 5" in head and b"chunked" not in head
    assert body == b"abcde"


def test_a_stream_waits_while_the_client_is_slow():
    gate: Deferred[None] = Deferred()

    async def stream():
        yield b"a"
        await gate
        yield b"b"

    door = Door()
    door.answers = {"/app/": Response(200, {}, stream())}
    channel, transport, _ = connect(door)
    channel.pauseProducing()
    channel.dataReceived(GET)
    assert transport.value().endswith(b"1\r\na\r\n")
    gate.callback(None)
    assert not transport.value().endswith(b"0\r\n\r\n")  # paused: waits
    channel.resumeProducing()
    assert transport.value().endswith(b"1\r\nb\r\n0\r\n\r\n")


def test_a_client_asking_to_close_is_closed_after_its_answer():
    data_channel, transport, _ = connect()
    data_channel.dataReceived(b"GET /app/ HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
    [(_, headers, _)] = responses(transport.value())
    assert headers[b"connection"] == b"close"
    assert not transport.connected


def test_a_lost_connection_fails_the_exchange_and_stops_its_stream():
    closed = []
    gate: Deferred[None] = Deferred()

    async def stream():
        try:
            yield b"a"
            await gate
            yield b"b"
        finally:
            closed.append(True)

    door = Door()
    door.answers = {"/app/": Response(200, {}, stream())}
    channel, transport, _ = connect(door)
    channel.dataReceived(GET)
    [exchange] = door.seen
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert len(door.failures) == 1 and exchange.gone
    written = transport.value()
    gate.callback(None)  # the app goes on: nothing more is written, the stream is closed
    assert transport.value() == written
    assert closed == [True]


def test_an_answer_for_a_client_already_gone_is_closed_unsent():
    closed = []

    class Stream:  # as the pool's streams: closing one tells the worker to stop
        def __aiter__(self):
            return self

        async def __anext__(self):
            return b"a"

        async def aclose(self):
            closed.append(True)

    late: Deferred[Response] = Deferred()
    door = Door()
    door.answers = {"/app/": late}
    channel, transport, _ = connect(door)
    channel.dataReceived(GET)
    channel.connectionLost(Failure(ConnectionError("gone")))
    late.callback(Response(200, {}, Stream()))
    assert transport.value() == b"" and closed == [True]


def test_an_idle_connection_times_out_but_not_one_with_a_request_in_flight():
    door = Door()
    door.answers = {"/slow/": Deferred()}
    channel, transport, site = connect(door)
    channel.dataReceived(b"GET /slow/ HTTP/1.1\r\n\r\n")
    site.reactor.advance(120)
    assert transport.connected  # answering takes as long as it takes
    door.answers["/slow/"].callback(Response(200, {}, b""))
    site.reactor.advance(59)
    assert transport.connected
    site.reactor.advance(1)
    assert not transport.connected


class Socket:
    """Takes at most C{room} bytes per send, then would block."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent = b""

    def send(self, data: bytes) -> int:
        if self.room == 0:
            raise BlockingIOError()
        taken = data[: self.room]
        self.room -= len(taken)
        self.sent += taken
        return len(taken)


class TCPish(StringTransportWithDisconnection):
    """What _write_now reads of a Twisted TCP transport: its write buffer."""

    dataBuffer = b""
    _tempDataLen = 0
    disconnecting = False


def direct(room: int, buffered: bytes = b"") -> tuple[Socket, TCPish]:
    site = Site(Door())
    channel = FrontChannel(site, None)
    transport = TCPish()
    transport.protocol = channel
    transport.dataBuffer = buffered
    channel.makeConnection(transport)
    sock = channel._socket = Socket(room)
    channel.dataReceived(GET)
    return sock, transport


def test_a_response_is_sent_at_once_when_nothing_waits():
    sock, transport = direct(room=10_000)
    assert sock.sent.startswith(b"HTTP/1.1 200 OK") and transport.value() == b""


def test_what_the_socket_cannot_take_now_waits_in_the_transport():
    sock, transport = direct(room=20)
    assert len(sock.sent) == 20
    assert responses(sock.sent + transport.value())[0][2] == b"body:"
    sock, transport = direct(room=0)  # would block: all of it waits
    assert sock.sent == b"" and transport.value().startswith(b"HTTP/1.1 200 OK")


def test_nothing_jumps_ahead_of_what_already_waits():
    sock, transport = direct(room=10_000, buffered=b"earlier")
    assert sock.sent == b"" and transport.value().startswith(b"HTTP/1.1 200 OK")

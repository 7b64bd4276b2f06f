"""
The fast lane of the front door (L{buntime.web.h1}): requests read, answered
and written without twisted.web, and everything else handed to twisted.web.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
from eliot.testing import LoggedAction
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure

from buntime._logging import REQUEST_ACTION
from buntime.http import Response
from buntime.web.api import CoreAPI
from buntime.web.exchange import MAX_HEAD, Exchange, parse_head
from buntime.web.frontdoor import FrontDoor
from buntime.web.h1 import PAUSE_BUFFERED, FrontChannel
from buntime.web.state import RuntimeState

# -- parse_head ----------------------------------------------------------------


def test_a_plain_head_is_parsed():
    head = parse_head(
        b"POST /app/x?q=1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 5\r\n"
        b"X-Request-Id: abc\r\nConnection: close\r\nExpect: 100-continue\r\nX-A:  v \t"
    )
    assert head is not None
    assert (head.method, head.target, head.path) == ("POST", "/app/x?q=1", "/app/x")
    assert list(head.headers) == [
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
    assert (head.method, head.target, list(head.headers)) == (method, "/" + path, headers)


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


class Turning(StringTransportWithDisconnection):
    """
    A transport whose C{value()} is what the client has at the end of the
    reactor turn: whole responses wait for it (see L{FrontChannel._write_soon}).
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def value(self) -> bytes:
        self.clock.advance(0)
        return super().value()


def connect(door: Door | None = None) -> tuple[FrontChannel, StringTransport, Site]:
    site = Site(door or Door())
    channel = FrontChannel(site, None)
    transport = Turning(site.reactor)
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
NEXT = b"GET /next/ HTTP/1.1\r\n\r\n"  # answered with the door's default


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
    """What _send_unsent reads of a Twisted TCP transport: its write buffer."""

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
    site.reactor.advance(0)  # the end of the turn
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


# -- more of parse_head ----------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"/app/a\tb", b"/app/\x01", b"/app/\x1b[0m", b"/app/\x7f", b"/app/caf\xe9", b"/app/\xff"],
)
def test_targets_with_control_or_non_ascii_bytes_are_left_to_twisted_web(target):
    # twisted.web refuses a target with a byte below "!" (400); the fast lane
    # must not answer what twisted.web would not, nor route on a path (a tab
    # in it) that Request.path then reads differently (urlsplit drops tabs).
    assert parse_head(b"GET " + target + b" HTTP/1.1\r\nHost: a") is None


@pytest.mark.parametrize(
    "lines",
    [
        b"Connection: keep-alive, close",
        b"Connection: close\r\nConnection: keep-alive",
        b"Connection: keep-alive\r\nConnection: close",
        b"connection: CLOSE",
    ],
)
def test_close_in_any_connection_header_closes(lines):
    # RFC 9110 7.6.1: Connection is a list; several field lines make one list.
    head = parse_head(b"GET /app/ HTTP/1.1\r\nHost: a\r\n" + lines)
    assert head is not None and head.close


@given(st.binary(max_size=300))
def test_parse_head_never_raises(block):
    head = parse_head(block)
    assert head is None or head.target.startswith("/")


_OWS = st.text(" \t", max_size=2)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    path=st.text("abcxyz/%?=&._-~019", max_size=40),
    headers=st.lists(st.tuples(_TOKEN, _VALUE, _OWS, _OWS), max_size=8),
    length=st.none() | st.integers(min_value=0, max_value=10**12),
    request_id=st.none() | st.text("abcdefXYZ0123456789-._:", min_size=1, max_size=40),
)
def test_plain_heads_round_trip_with_length_request_id_and_spaces(
    method, path, headers, length, request_id
):
    special = ("content-length", "transfer-encoding", "upgrade", "expect", "x-request-id")
    headers = [h for h in headers if h[0].lower() not in special]
    lines = [f"{method} /{path} HTTP/1.1"]
    lines += [f"{name}:{before}{value}{after}" for name, value, before, after in headers]
    if length is not None:
        lines.insert(1 + len(lines) // 2, f"Content-Length: {length}")
    if request_id is not None:
        lines.append(f"X-Request-Id: {request_id}")
    head = parse_head("\r\n".join(lines).encode("latin-1"))
    assert head is not None
    expected = [(name, value) for name, value, _, _ in headers]
    kept = [h for h in head.headers if h[0] != "Content-Length"]
    assert (head.method, head.target, head.path) == (method, "/" + path, "/" + path.split("?")[0])
    assert kept == expected  # in order, values without their surrounding spaces
    assert head.length == (length or 0)
    assert head.request_id == (None if request_id is None else request_id.encode())


# -- more of reading -------------------------------------------------------------

_REQUESTS = st.lists(
    st.one_of(
        st.builds(lambda n: ("GET", f"/app/{n}", b""), st.integers(0, 99)),
        st.builds(lambda n, body: ("POST", f"/app/{n}", body), st.integers(0, 99), st.binary()),
    ),
    min_size=1,
    max_size=5,
)


@given(requests=_REQUESTS, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_pipelined_requests_cut_anywhere_are_answered_in_order(requests, cuts):
    data = b"".join(
        b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (method.encode(), path.encode(), len(body), body)
        for method, path, body in requests
    )
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    channel, transport, site = connect()
    for start, end in itertools.pairwise(points):
        channel.dataReceived(data[start:end])
    assert [(e.head.method, e.head.target, e.body) for e in site.resource.seen] == requests
    assert [r[2] for r in responses(transport.value())] == [b"body:" + b for *_, b in requests]
    assert site.inners == [] and site.state.in_flight == 0


@given(st.binary(max_size=200))
def test_any_bytes_are_answered_or_handed_over_without_raising(data):
    channel, _, site = connect()
    channel.dataReceived(data)
    channel.dataReceived(b"\r\n\r\n")
    handed = b"".join(inner.received for inner in site.inners)
    assert handed == b"" or (data + b"\r\n\r\n").endswith(handed)


def test_three_pipelined_requests_wait_for_each_answer_in_turn():
    door = Door()
    answers = {f"/{n}/": Deferred() for n in ("one", "two", "three")}
    door.answers = dict(answers)
    channel, transport, _ = connect(door)
    channel.dataReceived(b"".join(b"GET %s HTTP/1.1\r\n\r\n" % p.encode() for p in answers))
    seen = lambda: [e.head.path for e in door.seen]  # noqa: E731
    assert seen() == ["/one/"] and transport.value() == b""
    answers["/one/"].callback(Response(200, {}, b"1"))
    assert seen() == ["/one/", "/two/"]
    assert [r[2] for r in responses(transport.value())] == [b"1"]
    answers["/two/"].callback(Response(200, {}, b"2"))
    assert seen() == ["/one/", "/two/", "/three/"]
    answers["/three/"].callback(Response(200, {}, b"3"))
    assert [r[2] for r in responses(transport.value())] == [b"1", b"2", b"3"]


def test_the_next_request_waits_for_the_end_of_a_streamed_answer():
    gate: Deferred[None] = Deferred()

    async def stream():
        yield b"a"
        await gate
        yield b"b"

    door = Door()
    door.answers = {"/stream/": Response(200, {}, stream())}
    channel, transport, _ = connect(door)
    channel.dataReceived(b"GET /stream/ HTTP/1.1\r\n\r\n" + GET)
    assert [e.head.path for e in door.seen] == ["/stream/"]
    gate.callback(None)
    assert [e.head.path for e in door.seen] == ["/stream/", "/app/"]
    first, _, second = transport.value().partition(b"0\r\n\r\n")
    assert first.endswith(b"1\r\na\r\n1\r\nb\r\n")
    assert responses(second)[0][2] == b"body:"


def test_a_refused_request_arriving_in_pieces_is_handed_over_whole():
    door = Door()
    door.refuse = True
    channel, transport, site = connect(door)
    request = b"POST /app/ HTTP/1.1\r\nContent-Length: 6\r\n\r\nabcdef" + GET
    for at in range(0, len(request), 7):
        channel.dataReceived(request[at : at + 7])
    [inner] = site.inners
    assert inner.received == request
    assert site.state.in_flight == 0 and transport.value() == b""
    channel.dataReceived(b"later")
    assert inner.received == request + b"later"


def test_a_handover_after_a_pause_resumes_reading():
    door = Door()
    door.answers = {"/slow/": Deferred()}
    channel, transport, site = connect(door)
    rest = b"GET /api/health HTTP/1.1\r\n\r\n" + GET * (PAUSE_BUFFERED // len(GET) + 1)
    channel.dataReceived(b"GET /slow/ HTTP/1.1\r\n\r\n" + rest)
    assert transport.producerState == "paused"
    door.answers["/slow/"].callback(Response(200, {}, b"s"))
    assert site.inners[0].received == rest
    assert transport.producerState == "producing"


def test_after_a_handover_the_fast_lane_never_times_out_the_connection():
    channel, transport, site = connect()
    channel.dataReceived(b"GET /api/health HTTP/1.1\r\n\r\n")
    site.reactor.advance(3600)
    assert transport.connected  # twisted.web's channel keeps its own time now


def test_a_slow_upload_times_out_and_is_no_longer_in_flight():
    channel, transport, site = connect()
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
    site.reactor.advance(59)
    channel.dataReceived(b"cd")  # each piece restarts the timeout
    site.reactor.advance(59)
    assert transport.connected and site.state.in_flight == 1
    site.reactor.advance(1)
    assert not transport.connected
    assert site.state.in_flight == 0 and site.resource.seen == []


def test_a_slow_head_times_out():
    channel, transport, site = connect()
    channel.dataReceived(b"GET /app/ HTTP/1.1\r\n")
    site.reactor.advance(60)
    assert not transport.connected and site.resource.seen == []


def test_nothing_after_a_request_asking_to_close_goes_to_the_door():
    door = Door()
    door.answers = {"/slow/": Deferred()}
    channel, transport, site = connect(door)
    channel.dataReceived(b"GET /slow/ HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
    door.answers["/slow/"].callback(Response(200, {}, b"s"))
    [(_, headers, body)] = responses(transport.value())
    assert headers[b"connection"] == b"close" and body == b"s"
    assert not transport.connected
    assert [e.head.path for e in door.seen] == ["/slow/"] and site.inners == []


# -- more of the body limit and 100-continue ---------------------------------------


def test_a_body_over_the_limit_is_logged_as_twisted_web_logs_it(eliot_logger):
    channel, transport, _ = connect(Door(limit=10))
    channel.dataReceived(
        b"POST /app/x?q=1 HTTP/1.1\r\nContent-Length: 11\r\nX-Request-Id: mine-2\r\n\r\n"
    )
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:body-rejected"
    ]
    assert logged["request_id"] == "mine-2" and logged["status"] == 413
    assert logged["message"] == "413 /app/x: Request body of 11 bytes exceeds the limit of 10"
    [(_, headers, body)] = responses(transport.value())
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {
        "error": {
            "code": "PAYLOAD_TOO_LARGE",
            "message": "Payload Too Large: Request body of 11 bytes exceeds the limit of 10",
        }
    }


def test_an_insane_request_id_on_a_413_gets_a_new_one():
    channel, transport, _ = connect(Door(limit=10))
    channel.dataReceived(
        b"POST /app/ HTTP/1.1\r\nContent-Length: 11\r\nX-Request-Id: no spaces, please\r\n\r\n"
    )
    [(status, headers, _)] = responses(transport.value())
    assert status == b"HTTP/1.1 413 Payload Too Large"
    assert uuid.UUID(headers[b"x-request-id"].decode()).version == 4


def test_a_body_over_the_limit_gets_no_100_continue():
    channel, transport, _ = connect(Door(limit=10))
    channel.dataReceived(
        b"POST /app/ HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()


def test_a_body_at_the_limit_is_taken():
    channel, transport, _ = connect(Door(limit=10))
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
    assert responses(transport.value())[0][2] == b"body:0123456789"


def test_a_body_over_the_limit_behind_a_request_is_refused_after_its_answer():
    door = Door(limit=10)
    door.answers = {"/slow/": Deferred()}
    channel, transport, _ = connect(door)
    channel.dataReceived(
        b"GET /slow/ HTTP/1.1\r\n\r\nPOST /app/ HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
    )
    assert transport.value() == b""
    door.answers["/slow/"].callback(Response(200, {}, b"s"))
    [(first, _, body), (second, _, _)] = responses(transport.value())
    assert (first, body) == (b"HTTP/1.1 200 OK", b"s")
    assert second == b"HTTP/1.1 413 Payload Too Large"
    assert not transport.connected and [e.head.path for e in door.seen] == ["/slow/"]


def test_100_continue_for_a_pipelined_request_comes_after_the_answer_before_it():
    door = Door()
    door.answers = {"/slow/": Deferred()}
    channel, transport, _ = connect(door)
    channel.dataReceived(
        b"GET /slow/ HTTP/1.1\r\n\r\n"
        b"POST /app/ HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b""
    door.answers["/slow/"].callback(Response(200, {}, b"s"))
    assert transport.value().endswith(b"\r\n\r\nsHTTP/1.1 100 Continue\r\n\r\n")
    channel.dataReceived(b"ok")
    assert transport.value().endswith(b"body:ok")


# -- more of writing -----------------------------------------------------------------


class Closing:
    """An async iterator of C{parts} that records how far it was read and its aclose."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)
        self.read = 0
        self.closed = False

    def __aiter__(self) -> Closing:
        return self

    async def __anext__(self) -> bytes:
        if self.read >= len(self.parts):
            raise StopAsyncIteration
        self.read += 1
        return self.parts[self.read - 1]

    async def aclose(self) -> None:
        self.closed = True


def test_a_head_request_for_a_stream_gets_the_apps_length_and_the_stream_is_closed():
    stream = Closing(b"hello")
    data = answer(
        Response(200, {"content-length": "5"}, stream), b"HEAD /app/ HTTP/1.1\r\n\r\n" + NEXT
    )
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length: 5" in head and b"chunked" not in head
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body: the next answer follows at once
    assert stream.read == 0 and stream.closed


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_and_not_modified_streams_have_no_framing(status):
    stream = Closing(b"never")
    data = answer(Response(status, {}, stream), GET + NEXT)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length" not in head and b"transfer-encoding" not in head
    assert stream.read == 0 and stream.closed
    assert responses(rest)[0][2] == b"body:"  # the next answer is not mistaken for a body


def test_a_head_request_for_an_empty_body_keeps_the_apps_length():
    data = answer(Response(200, {"Content-Length": "42"}, b""), b"HEAD /app/ HTTP/1.1\r\n\r\n")
    assert data.endswith(b"content-length: 42\r\n\r\n")


def test_headers_the_channel_writes_itself_are_not_doubled():
    data = answer(
        Response(
            200,
            [
                ("Date", "yesterday"),
                ("Server", "app"),
                ("TE", "trailers"),
                ("Trailer", "x"),
                ("Proxy-Connection", "keep-alive"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
            b"",
        )
    )
    lines = [line.lower() for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
    names = [line.split(b":")[0] for line in lines]
    assert names.count(b"date") == 1 and names.count(b"server") == 1
    assert b"date: yesterday" not in lines and b"server: app" not in lines
    assert not {b"te", b"trailer", b"proxy-connection"} & set(names)
    assert [line for line in lines if line.startswith(b"set-cookie")] == [
        b"set-cookie: a=1",
        b"set-cookie: b=2",
    ]


def test_line_breaks_anywhere_in_the_head_cannot_split_the_response():
    data = answer(
        Response(
            200,
            [("x-a", "1\rinjected: 1"), ("x-b", "2\ninjected: 2"), ("x-c\r\ninjected", "3")],
            b"",
        )
    )
    head = data.split(b"\r\n\r\n")[0]
    assert b"\ninjected" not in head and b"\rinjected" not in head
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")


def test_an_unknown_status_is_written_with_a_reason():
    data = answer(Response(599, {}, b"x"))
    assert data.startswith(b"HTTP/1.1 599 ")


def test_a_failing_stream_aborts_the_connection(eliot_logger):
    async def stream():
        yield b"a"
        raise RuntimeError("app broke")

    door = Door()
    door.answers = {"/app/": Response(200, {}, stream())}
    channel, transport, _ = connect(door)
    channel.dataReceived(GET + GET)
    assert not transport.connected
    assert not transport.value().endswith(b"0\r\n\r\n")  # never looks complete
    assert len(door.failures) == 1 and len(door.seen) == 1
    assert [m["error"] for m in eliot_logger.messages if "stream-failed" in m["message_type"]] == [
        "app broke"
    ]


def test_a_connection_lost_while_a_stream_waits_for_the_client_stops_it():
    stream = Closing(*[b"x"] * 100)
    door = Door()
    door.answers = {"/app/": Response(200, {}, stream)}
    channel, transport, _ = connect(door)
    channel.pauseProducing()
    channel.dataReceived(GET)
    assert stream.read == 1
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert stream.closed and stream.read <= 2
    assert len(door.failures) == 1 and not transport.value().endswith(b"0\r\n\r\n")


def test_stop_producing_stops_a_stream():
    stream = Closing(*[b"x"] * 100)
    door = Door()
    door.answers = {"/app/": Response(200, {}, stream)}
    channel, _, _ = connect(door)
    channel.pauseProducing()
    channel.dataReceived(GET)
    channel.stopProducing()
    assert stream.closed and stream.read <= 2


# -- with the real front door ------------------------------------------------------


class RealSite(Site):
    """A site whose resource is the real L{FrontDoor}, its direct step C{direct}."""

    def __init__(self, direct: Any, limit: int = 1000) -> None:
        self.reactor = Clock()
        self.timeOut = 60
        self.state = RuntimeState()  # type: ignore[assignment]
        self.inners = []

        def direct_step(request: Any, fields: dict) -> Any:
            fields["app"] = "app@1.0.0"
            return direct(request)

        self.resource = FrontDoor(  # type: ignore[assignment]
            clock=self.reactor,
            state=self.state,
            api=CoreAPI(state=self.state, api_base="/api"),
            direct=direct_step,
            claims=lambda path: None if path.startswith("/api") else limit,
        )


def real_connect(direct: Any) -> tuple[FrontChannel, StringTransport, RealSite]:
    site = RealSite(direct)
    channel = FrontChannel(site, None)
    transport = Turning(site.reactor)
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport, site


def test_with_the_real_door_the_request_id_is_echoed_and_logged(eliot_logger):
    seen = []

    def direct(request):
        seen.append(request)
        return succeed(Response.text("hi"))

    channel, transport, site = real_connect(direct)
    channel.dataReceived(b"GET /app/x?q=1 HTTP/1.1\r\nX-Request-Id: mine-9\r\n\r\n")
    [(status, headers, body)] = responses(transport.value())
    assert (status, headers[b"x-request-id"], body) == (b"HTTP/1.1 200 OK", b"mine-9", b"hi")
    [request] = seen
    assert request.headers.get_all("x-request-id") == ["mine-9"] and request.query == "q=1"
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    assert action.end_message["request_id"] == "mine-9"
    assert action.end_message["app"] == "app@1.0.0" and action.end_message["status"] == 200
    assert not action.end_message["aborted"]
    assert site.state.in_flight == 0


def test_with_the_real_door_a_client_leaving_cancels_the_work():
    cancelled: list[bool] = []
    channel, _, site = real_connect(lambda request: Deferred(lambda d: cancelled.append(True)))
    channel.dataReceived(GET)
    assert site.state.in_flight == 1 and cancelled == []
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert cancelled == [True] and site.state.in_flight == 0


def test_with_the_real_door_a_body_and_an_answer_count_as_in_flight_once():
    answer: Deferred[Response] = Deferred()
    channel, transport, site = real_connect(lambda request: answer)
    channel.dataReceived(b"POST /app/ HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert site.state.in_flight == 1  # the body arriving
    channel.dataReceived(b"cd")
    assert site.state.in_flight == 1  # the answer being made
    answer.callback(Response.text("done"))
    assert site.state.in_flight == 0 and responses(transport.value())[0][2] == b"done"


@pytest.mark.parametrize(
    "request_bytes, body",
    [(GET, "stream"), (b"HEAD /app/ HTTP/1.1\r\n\r\n", b"")],
)
def test_an_app_length_of_non_ascii_digits_does_not_hang_the_connection(request_bytes, body):
    # "\xb2" (superscript two, what an ASGI header byte 0xB2 decodes to) is
    # str.isdigit(), but not ASCII: write_response must neither raise nor
    # leave the connection without an answer and the request in flight.
    if body == "stream":
        body = Closing(b"ab")
    response = Response(200, {"content-length": "\xb2"}, body)
    channel, transport, site = real_connect(lambda request: succeed(response))
    channel.dataReceived(request_bytes)
    assert site.state.in_flight == 0
    assert transport.value().startswith(b"HTTP/1.1 ") or not transport.connected


def test_a_stream_cancelled_when_the_client_leaves_ends_quietly(eliot_logger):
    gate: Deferred[None] = Deferred()

    async def stream():
        yield b"a"
        await gate
        yield b"b"

    channel, _, _ = connect(Door())
    exchange = Exchange(channel, parse_head(b"GET /app/ HTTP/1.1"), b"", None)
    written = exchange.respond(Response(200, {}, stream()), "rid-1")
    assert written is not None and not written.called
    written.cancel()  # what the front door does when the client goes away
    assert written.called and written.result is None
    assert not [m for m in eliot_logger.messages if m.get("level") == "error"]


def test_a_stream_that_cannot_be_closed_is_logged(eliot_logger):
    class Broken:
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise StopAsyncIteration

        async def aclose(self):
            raise OSError("cannot close")

    channel, _, _ = connect(Door())
    exchange = Exchange(channel, parse_head(b"GET /app/ HTTP/1.1"), b"", None)
    exchange.gone = True
    written = exchange.respond(Response(200, {}, Broken()), "rid-1")
    assert written is not None and written.called and written.result is None
    [line] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:stream-failed"
    ]
    assert "cannot close" in line["error"]


def test_the_end_of_an_exchange_is_told_in_order_once(eliot_logger):
    channel, _, _ = connect(Door())
    exchange = Exchange(channel, parse_head(b"GET /app/ HTTP/1.1"), b"", None)
    told: list[Any] = []

    def broken(result: Any) -> None:
        raise RuntimeError("boom")

    exchange.on_end(lambda result, n: told.append((n, result)), 1)
    exchange.on_end(broken)
    exchange.on_end(lambda result, n: told.append((n, result)), 2)
    finished = exchange.finished
    exchange.done()
    exchange.lost(Failure(ConnectionError("late")))  # over already: nothing more
    exchange.on_end(lambda result, n: told.append((n, result)), 3)  # told at once
    assert told == [(1, None), (2, None), (3, None)] and finished.result is None
    [line] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:internal-error"
    ]
    assert "boom" in line["error"]


def test_a_lost_exchange_ends_with_the_failure():
    channel, _, _ = connect(Door())
    exchange = Exchange(channel, parse_head(b"GET /app/ HTTP/1.1"), b"", None)
    told: list[Any] = []
    exchange.on_end(told.append)
    failed = exchange.finished
    exchange.lost(Failure(ConnectionError("gone")))
    assert exchange.gone and told[0].check(ConnectionError)
    assert failed.called
    failed.addErrback(told.append)
    assert told[1].check(ConnectionError)


def test_a_head_sent_again_is_parsed_once_and_shared_unchanged():
    door = Door()
    channel, transport, _ = connect(door)
    head = b"GET /app/ HTTP/1.1\r\nHost: a\r\nX-Request-Id: same-id\r\n\r\n"
    channel.dataReceived(head + head)
    first, second = door.seen
    assert first.head is second.head  # one parse
    assert first.head.headers == (("Host", "a"),) and first.head.request_id == b"same-id"
    assert len(responses(transport.value())) == 2


# -- whole responses go out at the end of the reactor turn -------------------------


def written_now(transport: StringTransport) -> bytes:
    """What the transport holds, without letting the reactor turn end."""
    return StringTransport.value(transport)


def test_a_whole_response_waits_for_the_end_of_the_turn():
    channel, transport, site = connect()
    channel.dataReceived(GET)
    assert written_now(transport) == b""
    site.reactor.advance(0)
    [(status, _, body)] = responses(written_now(transport))
    assert (status, body) == (b"HTTP/1.1 200 OK", b"body:")


def test_the_responses_of_a_turn_go_out_together():
    door = Door()
    site = Site(door)
    transports = []
    for _ in range(3):
        channel = FrontChannel(site, None)
        transport = Turning(site.reactor)
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(GET)
        transports.append(transport)
    waiting = [call for call in site.reactor.getDelayedCalls() if call.getTime() == 0]
    assert len(waiting) == 1  # one end of turn for all of them
    site.reactor.advance(0)
    assert all(len(responses(written_now(t))) == 1 for t in transports)


def test_a_connection_closing_after_its_answer_sends_it_first():
    channel, transport, _ = connect()
    channel.dataReceived(b"GET /app/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert not transport.connected
    [(_, headers, _)] = responses(written_now(transport))
    assert headers[b"connection"] == b"close"


def test_an_answer_waiting_for_the_turn_goes_before_what_twisted_web_writes():
    channel, transport, site = connect()
    channel.dataReceived(GET + b"GET /api/health HTTP/1.1\r\n\r\n")
    assert site.inners and responses(written_now(transport))[0][2] == b"body:"


def test_an_answer_waiting_for_a_connection_lost_meanwhile_is_dropped():
    channel, transport, site = connect()
    channel.dataReceived(GET)
    channel.connectionLost(Failure(ConnectionError("gone")))
    site.reactor.advance(0)
    assert written_now(transport) == b""

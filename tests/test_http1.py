"""
The HTTP/1.1 connection layer (L{buntime.web.http1}), driven byte by byte
with no sockets (see C{tests/http1_client.py}): reading strictly and within
bounds, answering in order, framing an app's answer so it can never
desynchronise the connection, backpressure and timeouts.
"""

from __future__ import annotations

import uuid

import pytest
from http1_client import (
    Answer,
    BufferingTransport,
    Client,
    Door,
    Lingering,
    Stream,
    Transport,
    always,
    connect,
    echo,
    get,
    holding,
    post,
    serve,
)
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from buntime.http import Response
from buntime.web.http1 import HTTP1Connection, Limits

TIMEOUTS = Limits(header_timeout=10, idle_timeout=60)
"""The timer ticks every 5 s with these."""

BIG = Response(200, {}, b"x" * 100_000)

IDS = ["answered-at-once", "answered-later"]


def refused(data: bytes, status: int, door: Door | None = None, **limits: int) -> Answer:
    """The one answer to C{data}: the connection refuses it with C{status} (see L{refusal})."""
    client = connect(door, Limits(**limits))
    client.send(data)
    answer = refusal(client)
    assert answer.status == status
    return answer


def refusal(client: Client) -> Answer:
    """
    The one answer C{client} got, a refusal: a JSON error, then the close;
    the door never saw a request.
    """
    [answer] = client.answers()
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert answer.error["code"]
    assert client.door.seen == []
    assert client.closed
    assert client.state.in_flight == 0
    return answer


# -- reading requests -----------------------------------------------------------------


def test_a_request_is_answered_and_the_connection_stays_open():
    client = connect()
    client.send(get(b"/app/x?q=1", b"X-A: b"))
    [exchange] = client.door.seen
    head = exchange.head
    assert (head.method, head.target, head.path, head.version) == (
        "GET",
        "/app/x?q=1",
        "/app/x",
        "1.1",
    )
    assert head.headers == (("Host", "a"), ("X-A", "b"))
    [answer] = client.answers()
    assert (answer.status, answer.body) == (200, b"GET /app/x?q=1:")
    assert answer.headers["x-request-id"] == "rid-1"
    assert {"server", "date", "content-length"} <= answer.headers.keys()
    assert answer.headers["server"].startswith("buntime/")
    assert not client.closed


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (422, b"HTTP/1.1 422 Unprocessable Content\r\n"),  # not "Unknown Status" (RFC 9110)
        (413, b"HTTP/1.1 413 Content Too Large\r\n"),
        (418, b"HTTP/1.1 418 I'm a Teapot\r\n"),
        (599, b"HTTP/1.1 599 \r\n"),  # no phrase known: an empty one, as RFC 9112 allows
    ],
)
def test_an_answer_s_reason_phrase_is_the_standard_one(status, line):
    client = connect(Door(always(Response(status, {}, b""))))
    client.send(get(b"/x"))
    assert client.received().startswith(line)


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        ("Custom Thing", b"HTTP/1.1 299 Custom Thing\r\n"),
        ("", b"HTTP/1.1 299 \r\n"),
        ("Bad\r\nX-Injected: 1", b"HTTP/1.1 299 Bad  X-Injected: 1\r\n"),  # one line still
        ("caf\u00e9\u2603", b"HTTP/1.1 299 caf\xe9?\r\n"),
    ],
)
def test_an_app_s_own_reason_phrase_is_sent_and_cannot_split_the_head(reason, line):
    client = connect(Door(always(Response(299, {}, b"", reason))))
    client.send(get(b"/x"))
    data = client.received()
    assert data.startswith(line)
    assert b"\r\nX-Injected" not in data


def test_heads_and_bodies_split_at_any_byte_are_read_whole():
    client = connect()
    data = post(b"/up", b"abcdef") + get(b"/next")
    client.send(*(data[at : at + 1] for at in range(len(data))))
    assert [answer.body for answer in client.answers()] == [b"POST /up:abcdef", b"GET /next:"]
    assert client.state.in_flight == 0


def test_a_chunked_upload_reaches_the_door_whole_and_de_chunked():
    client = connect()
    client.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"a;ext=1\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    [exchange] = client.door.seen
    assert exchange.body == b"abc0123456789"
    assert (exchange.head.chunked, exchange.head.length) == (True, None)
    assert client.answers()[0].body == b"POST /up:abc0123456789"


def test_a_trailer_section_is_bounded_like_a_head_and_kept_by_no_one():
    client = connect()
    client.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    )
    for _ in range(20):  # 2 MB of trailer fields, and no end
        client.send((b"X-T: " + b"v" * 1000 + b"\r\n") * 100)
    assert refusal(client).status == 431
    assert client.connection._lines == []


def test_one_trailer_field_spread_over_reads_is_bounded_like_a_head():
    """llhttp gathers an unfinished field: the trailer section is bounded read by read too."""
    client = connect()
    client.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: "
    )
    client.send(*[b"v" * 100_000] * 20)  # 2 MB of one field's value, and no end
    assert refusal(client).status == 431


def test_a_chunked_body_in_many_reads_is_not_taken_for_a_trailer_section():
    body = UPLOAD[:200_000]
    client = connect(Door(limit=len(body)))
    framed = b"".join(chunks(body, 1000)) + b"0\r\n\r\n"
    client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(*(framed[at : at + 997] for at in range(0, len(framed), 997)))
    assert client.door.seen[0].body == body and not client.closed


def test_a_body_up_to_the_upload_size_arrives_whole():
    body = bytes(range(256)) * 1024  # 256 KiB: Limits.stream_body_over
    client = connect(Door(limit=len(body)))
    data = post(b"/up", body)
    client.send(*(data[at : at + 65536] for at in range(0, len(data), 65536)))
    assert client.door.seen[0].body == body


# -- uploads: bodies over Limits.stream_body_over are answered as they arrive ----------------

UPLOAD = bytes(range(256)) * 4096  # 1 MiB


def upload_client(reply=None, **limits) -> Client:
    return connect(Door(reply or holding("/up"), limit=10 * len(UPLOAD)), Limits(**limits))


def reading(stream) -> tuple[list[bytes], list[object]]:
    """Read C{stream} as its reader would: the chunks taken, and how it ended."""
    chunks: list[bytes] = []
    ended: list[object] = []

    async def read() -> None:
        try:
            async for chunk in stream:
                chunks.append(chunk)
        except Exception as error:
            ended.append(error)
        else:
            ended.append("end")

    ensureDeferred(read())
    return chunks, ended


def streamed_upload(client: Client, data: bytes) -> list[Answer]:
    """
    Send C{data} (a request whose body is L{UPLOAD}), checking that its
    exchange comes before the body is all there and that its body streams
    whole; answer it, send another request: the two answers.
    """
    client.send(data[:100_000])
    [exchange] = client.door.seen  # before the body is all here
    assert not isinstance(exchange.body, bytes)
    chunks, ended = reading(exchange.body)
    client.send(*(data[at : at + 65536] for at in range(100_000, len(data), 65536)))
    assert b"".join(chunks) == UPLOAD and ended == ["end"]
    exchange.respond(Response(200, {}, b"got it"))
    client.send(get(b"/next"))
    return client.answers()


def test_an_upload_is_answered_as_it_arrives_and_the_connection_goes_on():
    first, second = streamed_upload(upload_client(), post(b"/up", UPLOAD))
    assert (first.body, "close" in first.headers.get("connection", "")) == (b"got it", False)
    assert second.body == b"GET /next:"


def test_an_upload_no_one_reads_stops_the_reading_until_it_is_taken():
    client = upload_client()
    data = post(b"/up", UPLOAD)
    client.send(*(data[at : min(at + 65536, 600_000)] for at in range(0, 600_000, 65536)))
    assert client.transport.producerState == "paused"  # over 256 KiB wait, unread
    chunks, ended = reading(client.door.seen[0].body)
    assert client.transport.producerState == "producing"
    client.send(data[600_000:])
    assert b"".join(chunks) == UPLOAD and ended == ["end"]


def test_an_upload_answered_before_it_all_came_closes_the_connection_after_its_answer():
    client = upload_client(always(Response(401, {}, b"who are you?")))
    data = post(b"/up", UPLOAD)
    client.send(data[:100_000])
    _chunks, ended = reading(client.door.seen[0].body)
    [answer] = client.answers()
    assert (answer.status, answer.headers["connection"]) == (401, "close")
    assert isinstance(ended[0], ConnectionError)  # its reader learns the rest will not come
    client.send(data[100_000:200_000] + get(b"/ignored"))  # read and dropped
    assert len(client.door.seen) == 1


def test_an_upload_answered_unread_once_it_all_came_keeps_the_connection_going():
    """Its untaken chunks no longer hold the reading back once its exchange has ended."""
    client = upload_client()
    client.send(post(b"/up", UPLOAD) + get(b"/next"))
    assert client.transport.producerState == "paused"  # no one reads the upload
    client.door.seen[0].respond(Response(200, {}, b"did not read it"))
    assert client.transport.producerState == "producing"
    first, second = client.answers()
    assert first.headers.get("connection") != "close"
    assert (first.body, second.body) == (b"did not read it", b"GET /next:")


def test_over_tls_an_upload_answered_early_reads_on_so_the_close_can_finish():
    """TLS closes once the client's close_notify is read: the paused reading resumes."""
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import directlyProvides

    transport = Transport()
    directlyProvides(transport, ISSLTransport)
    transport.setTcpNoDelay = lambda on: None
    transport.loseConnection = lambda: setattr(transport, "disconnecting", True)
    client = connect(Door(holding("/up"), limit=10 * len(UPLOAD)), Limits(), transport=transport)
    data = post(b"/up", UPLOAD)
    client.send(*(data[at : at + 65536] for at in range(0, 600_000, 65536)))
    assert client.transport.producerState == "paused"
    client.door.seen[0].respond(Response(401, {}, b"no"))
    assert client.answers()[0].status == 401
    assert client.transport.producerState == "producing" and client.transport.disconnecting
    client.send(data[600_000:700_000] + get(b"/ignored"))  # dropped
    assert len(client.door.seen) == 1


def test_an_upload_waiting_for_its_turn_and_its_100_continue_is_not_timed_out():
    client = upload_client(holding("/slow", "/up"), idle_timeout=60)
    head = post(b"/up", UPLOAD, b"Expect: 100-continue")[: -len(UPLOAD)]
    client.send(get(b"/slow") + head)
    client.later(30)
    client.later(35)
    assert not client.transport.aborted and not client.closed
    client.door.seen[0].respond(Response(200, {}, b"slow"))
    reading(client.door.seen[1].body)  # its reader asks: the client may send
    assert client.received().count(b"100 Continue") == 1


def test_an_upload_answered_as_its_last_byte_is_read_makes_no_second_request():
    """A reader that answers inside the read that ends the body: one exchange, one answer."""
    client = upload_client()
    data = post(b"/up", UPLOAD)
    client.send(data[:100_000])
    [exchange] = client.door.seen

    async def read_then_answer() -> None:
        size = 0
        async for chunk in exchange.body:
            size += len(chunk)
            if size == len(UPLOAD):
                exchange.respond(Response(200, {}, b"all of it"))
                return

    ensureDeferred(read_then_answer())
    client.send(data[100_000:])
    assert [answer.body for answer in client.answers()] == [b"all of it"]
    assert len(client.door.seen) == 1 and list(client.connection._waiting) == []


def test_a_client_that_leaves_during_its_upload_fails_the_upload_for_its_reader():
    client = upload_client()
    client.send(post(b"/up", UPLOAD)[:100_000])
    _chunks, ended = reading(client.door.seen[0].body)
    client.transport.loseConnection()
    assert isinstance(ended[-1], ConnectionError)


def test_an_upload_that_stops_arriving_is_aborted_after_the_idle_timeout():
    client = upload_client(header_timeout=10, idle_timeout=60)
    client.send(post(b"/up", UPLOAD)[:100_000])
    _chunks, ended = reading(client.door.seen[0].body)
    client.later(55)
    assert ended == [] and not client.closed
    client.later(10)
    assert isinstance(ended[-1], TimeoutError) and client.transport.aborted


def test_an_upload_gets_its_100_continue_when_its_reader_first_asks_for_it():
    """As uvicorn sends it at the app's first receive(): behind other requests too."""
    client = upload_client(holding("/first", "/up"))
    head = post(b"/up", UPLOAD, b"Expect: 100-continue")[: -len(UPLOAD)]
    client.send(get(b"/first") + head)
    assert b"100 Continue" not in client.received()  # the client holds its body back
    client.door.seen[0].respond(Response(200, {}, b"first"))
    assert client.door.paths == ["/first", "/up"]
    assert b"100 Continue" not in client.received()  # its turn, but no one reads it yet
    client.later(65)
    assert not client.transport.aborted  # waiting for its 100 Continue is no stall
    chunks, ended = reading(client.door.seen[1].body)
    assert client.received().count(b"100 Continue") == 1
    client.send(UPLOAD)
    assert b"".join(chunks) == UPLOAD and ended == ["end"]


def test_an_upload_refused_before_it_is_read_gets_no_100_continue():
    """A hook's 401 answers an upload that asked first: the client never sends its body."""
    client = upload_client(always(Response(401, {}, b"who are you?")))
    client.send(post(b"/up", UPLOAD, b"Expect: 100-continue")[: -len(UPLOAD)])
    received = client.received()
    assert b"100 Continue" not in received and received.startswith(b"HTTP/1.1 401 ")


# -- chunked uploads: streamed once past Limits.stream_body_over, refused past the limit ----


def chunked_head(path: bytes = b"/up", *lines: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n%s\r\n" % (
        path,
        b"".join(line + b"\r\n" for line in lines),
    )


def chunks(data: bytes, size: int = 65536) -> list[bytes]:
    """C{data} in chunks of the chunked coding (no last chunk)."""
    return [b"%x\r\n%s\r\n" % (len(part), part) for part in _pieces(data, size)]


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def test_a_chunked_upload_is_answered_as_it_arrives_once_past_the_upload_size():
    client = upload_client()
    framed = chunks(UPLOAD)
    client.send(chunked_head(), *framed[:4])  # 256 KiB: not yet an upload
    assert client.door.seen == []
    client.send(framed[4])
    [exchange] = client.door.seen  # before the body is all here
    assert (exchange.head.chunked, isinstance(exchange.body, bytes)) == (True, False)
    got, ended = reading(exchange.body)
    client.send(*framed[5:], b"0\r\n\r\n" + get(b"/next"))
    assert b"".join(got) == UPLOAD and ended == ["end"]
    exchange.respond(Response(200, {}, b"got it"))
    first, second = client.answers()
    assert (first.body, first.headers.get("connection")) == (b"got it", None)
    assert second.body == b"GET /next:"
    assert client.state.in_flight == 0


def test_a_chunked_upload_no_one_reads_stops_the_reading_until_it_is_taken():
    client = upload_client()
    client.send(chunked_head(), *chunks(UPLOAD)[:10])
    assert client.transport.producerState == "paused"
    reading(client.door.seen[0].body)
    assert client.transport.producerState == "producing"


def half_limit_upload(transport: Transport | None = None):
    """
    A chunked upload whose path's limit is half of it, dispatched and being
    read: the client, its exchange, its framed chunks (the first 6 sent),
    what its reader took and how its read ended.
    """
    client = connect(Door(holding("/up"), limit=len(UPLOAD) // 2), Limits(), transport=transport)
    framed = chunks(UPLOAD)
    client.send(chunked_head(), *framed[:6])
    [exchange] = client.door.seen
    got, ended = reading(exchange.body)
    return client, exchange, framed, got, ended


def test_a_chunked_upload_past_its_limit_fails_for_its_reader_and_the_client_gets_413():
    client, exchange, framed, got, ended = half_limit_upload()
    client.send(*framed[6:9])  # past 512 KiB
    assert type(ended[-1]).__name__ == "BodyTooLarge"
    assert sum(map(len, got)) <= len(UPLOAD) // 2
    [answer] = client.answers()
    assert (answer.status, answer.headers["connection"]) == (413, "close")
    assert answer.error["code"] == "PAYLOAD_TOO_LARGE"
    assert answer.headers["x-request-id"] == "rid-1"
    exchange.respond(Response(500, {}, b"the app's answer to a broken body"))  # dropped
    client.send(*framed[9:], b"0\r\n\r\n" + get(b"/ignored"))
    assert len(client.answers()) == 1 and len(client.door.seen) == 1
    assert client.state.in_flight == 0


def test_a_chunked_upload_past_its_limit_while_waiting_its_turn_is_refused_in_its_turn():
    client = connect(Door(holding("/first", "/up"), limit=300 * 1024), Limits())
    client.send(get(b"/first") + chunked_head(), *chunks(UPLOAD)[:5])
    assert client.door.paths == ["/first"]
    client.door.seen[0].respond(Response(200, {}, b"first"))
    first, refusal = client.answers()
    assert (first.body, refusal.status) == (b"first", 413)
    assert client.door.paths == ["/first"]  # the upload never reached the door


def test_a_chunked_upload_past_its_limit_after_its_answer_began_closes_after_that_answer():
    client, exchange, framed, _got, ended = half_limit_upload()
    body = Stream()
    exchange.respond(Response(200, {}, body))
    body.give(b"started")
    client.send(*framed[6:9])
    assert type(ended[-1]).__name__ == "BodyTooLarge"
    body.give(None)
    [answer] = client.answers()
    assert (answer.status, answer.body, answer.headers["connection"]) == (200, b"started", "close")
    assert client.closed


class TcpTransport(Transport):
    """A TCP transport: a close while the client still sends lingers (half-closes)."""

    half_closed = False

    def __init__(self) -> None:
        super().__init__()
        alsoProvides(self, ITCPTransport)

    def setTcpNoDelay(self, on: bool) -> None:
        pass

    def loseWriteConnection(self) -> None:
        self.half_closed = True


def test_a_chunked_upload_past_its_limit_after_its_answer_began_lingers_over_tcp():
    """The client is still sending: a plain close could reset the answer (RFC 9112 §9.6)."""
    transport = TcpTransport()
    client, exchange, framed, _got, _ended = half_limit_upload(transport)
    body = Stream()
    exchange.respond(Response(200, {}, body))
    body.give(b"started")
    client.send(*framed[6:9])
    body.give(None)
    assert transport.half_closed


def test_malformed_chunks_of_an_upload_being_answered_fail_it_and_get_400():
    client = upload_client(header_timeout=10, idle_timeout=60)
    client.send(chunked_head(), *chunks(UPLOAD)[:5])  # 320 KiB: an upload
    [exchange] = client.door.seen
    _got, ended = reading(exchange.body)
    client.send(b"zz\r\n")  # an invalid chunk size
    assert isinstance(ended[-1], ConnectionError)
    [answer] = client.answers()
    assert (answer.status, answer.headers["connection"]) == (400, "close")
    assert answer.headers["x-request-id"] == "rid-1"
    assert client.state.in_flight == 0


def test_malformed_chunks_of_an_upload_waiting_its_turn_are_refused_in_its_turn():
    client = connect(Door(holding("/first", "/up"), limit=10 * len(UPLOAD)), Limits())
    client.send(get(b"/first") + chunked_head(), *chunks(UPLOAD)[:5])
    client.send(b"zz\r\n")
    client.door.seen[0].respond(Response(200, {}, b"first"))
    assert client.door.paths == ["/first"]  # a request known broken never reaches the door
    assert [answer.status for answer in client.answers()] == [200, 400]


def test_a_trailer_section_too_large_after_a_streamed_upload_fails_it_and_gets_431():
    client = upload_client()
    client.send(chunked_head(), *chunks(UPLOAD)[:5], b"0\r\n")
    _got, ended = reading(client.door.seen[0].body)
    client.send((b"X-T: " + b"v" * 1000 + b"\r\n") * 20)
    assert isinstance(ended[-1], ConnectionError)
    assert [answer.status for answer in client.answers()] == [431]


def test_trailers_after_an_upload_answered_within_their_read_are_not_kept():
    client = upload_client()
    framed = chunks(UPLOAD)
    client.send(chunked_head(), *framed[:5])
    [exchange] = client.door.seen

    async def read_then_answer() -> None:
        size = 0
        async for chunk in exchange.body:
            size += len(chunk)
            if size > 5 * 65536:  # in the next read: answered from within on_body
                exchange.respond(Response(200, {}, b"enough"))
                return

    ensureDeferred(read_then_answer())
    client.send(framed[5] + b"0\r\n" + (b"X-T: " + b"v" * 1000 + b"\r\n") * 1000)
    assert client.answers()[0].status == 200
    assert client.connection._lines == []


def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    client = connect(Door(holding("/one", "/two")))
    client.send(get(b"/one") + get(b"/two") + get(b"/three"))
    assert client.door.paths == ["/one"]  # the rest wait their turn
    client.door.seen[0].respond(Response(200, {}, b"1"))
    assert client.door.paths == ["/one", "/two"]
    client.door.seen[1].respond(Response(200, {}, b"2"))
    assert [answer.body for answer in client.answers()] == [b"1", b"2", b"GET /three:"]


def test_a_request_body_still_arriving_counts_as_in_flight():
    client = connect()
    client.send(post(b"/up", b"abcd")[:-2])
    assert client.state.in_flight == 1
    client.send(b"cd")
    assert client.state.in_flight == 0
    client.send(post(b"/up", b"abcd")[:-2])
    assert client.state.in_flight == 1
    client.transport.loseConnection()
    assert client.state.in_flight == 0


def test_an_absolute_form_target_gives_the_path_and_the_host():
    client = connect()
    client.send(b"GET http://h/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    [exchange] = client.door.seen
    assert (exchange.head.target, exchange.head.path) == ("/x?y=1", "/x")
    assert exchange.head.headers == (("host", "h"),)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([b"Host: a", b"Host: b"], id="two"),
        pytest.param([b"Host: a b"], id="invalid"),
        pytest.param([], id="missing"),
    ],
)
def test_an_absolute_form_target_does_not_excuse_a_bad_host(lines):
    refused(b"GET http://h/x HTTP/1.1\r\n%s\r\n" % b"".join(line + b"\r\n" for line in lines), 400)


@pytest.mark.parametrize("target", [b"http://h b/x", b"http://a@h/x", b"http:///x", b"ftp://h/x"])
def test_an_invalid_absolute_form_target_is_refused(target):
    refused(get(target), 400)


def test_http_1_0_needs_no_host():
    client = connect()
    client.send(b"GET /x HTTP/1.0\r\n\r\n")
    assert client.door.paths == ["/x"]
    assert client.answers()[0].status == 200


# -- request smuggling ------------------------------------------------------------------

HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" + HIDDEN, 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(HIDDEN), HIDDEN),
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN, 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s" % (len(HIDDEN) + 5, HIDDEN),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: x\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "te-identity",
        "te-identity-and-cl",
        "gzip-chunked",
        "chunked-gzip",
        "te-http-1.0",
        "cl-and-te",
        "te-twice",
    ],
)
def test_ambiguous_framing_is_refused_and_nothing_in_it_reaches_the_door(data, status):
    refused(data, status)


def test_a_request_inside_a_body_is_body():
    client = connect()
    client.send(post(b"/up", HIDDEN) + get(b"/next"))
    assert client.door.paths == ["/up", "/next"]
    assert client.door.seen[0].body == HIDDEN


# -- strict heads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [None, [b"a", b"a"], [b"a", b"b"], [b"a b"], [b"a/b"], [b"\xff"], [b"a@b"], [b"a:b:c"]],
    ids=["missing", "twice", "two", "space", "slash", "not-utf-8", "userinfo", "two-colons"],
)
def test_a_missing_repeated_or_invalid_host_is_refused(host):
    lines = b"".join(b"Host: %s\r\n" % value for value in host or [])
    refused(b"GET / HTTP/1.1\r\n%s\r\n" % lines, 400)


@pytest.mark.parametrize("host", [b"a", b"a.example:8080", b"[::1]:80", b"127.0.0.1", b"xn--d1a.b"])
def test_a_valid_host_is_taken(host):
    client = connect()
    client.send(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert client.door.paths == ["/"]


@pytest.mark.parametrize("length", [b"+5", b"-1", b"0x5", b"5, 5", b"1e2", b"5 5", b"abc", b""])
def test_an_invalid_content_length_is_a_400_not_a_413(length):
    refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\nabcde" % length, 400)


def test_a_content_length_of_5000_digits_is_answered_400():
    refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n" % (b"9" * 5000), 400)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (get(method=b"get"), 400),
        (get(method=b"Get"), 400),
        (get(b"/\x7f"), 400),
        (get(b"/\x80"), 400),
        (get(b"/\xff"), 400),
        (get(b"/", b"X: a\x01b"), 400),
        (get(b"/", b"X: a\x00b"), 400),
        (get(b"/", b"X: a\x7fb"), 400),
        (get(b"/", b"X: a", b" folded"), 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (get(b"x"), 400),
        (get(b"*"), 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        (get(b"a:443", method=b"CONNECT"), 501),
        (get(b"/", b"Expect: something-else"), 417),
        (get(b"/", b"Expect: 100-continue, x"), 417),
    ],
    ids=[
        "lower-case-method",
        "mixed-case-method",
        "target-7f",
        "target-80",
        "target-ff",
        "control-in-value",
        "nul-in-value",
        "del-in-value",
        "obs-fold",
        "space-before-colon",
        "bare-lf",
        "target-without-slash",
        "asterisk-not-options",
        "http-2.0",
        "http-0.9",
        "connect",
        "expect-other",
        "expect-more",
    ],
)
def test_what_rfc_9112_forbids_is_refused(data, status):
    refused(data, status)


def test_http_1_2_is_not_supported():
    refused(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505)


def test_options_asterisk_is_taken():
    client = connect()
    client.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [exchange.head.target for exchange in client.door.seen] == ["*"]


def test_a_target_over_the_limit_is_414():
    assert refused(get(b"/" + b"a" * 50), 414, max_target=50).error["code"] == "URI_TOO_LONG"
    client = connect(limits=Limits(max_target=50))
    client.send(get(b"/" + b"a" * 49))
    assert client.door.paths == ["/" + "a" * 49]


def test_a_header_section_over_max_head_bytes_is_431():
    answer = refused(get(b"/", b"X: " + b"y" * 300), 431, max_head=200)
    assert answer.error["code"] == "REQUEST_HEADER_FIELDS_TOO_LARGE"


def test_a_header_section_over_max_headers_lines_is_431():
    refused(get(b"/", *[b"X: y"] * 10), 431, max_headers=10)
    client = connect(limits=Limits(max_headers=10))
    client.send(get(b"/", *[b"X: y"] * 9))  # with Host: ten lines
    assert client.door.paths == ["/"]


def test_a_head_over_its_bounds_is_refused_before_its_end_arrives():
    client = connect(limits=Limits(max_head=200))
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX: ", *[b"y" * 1000] * 40)
    assert [answer.status for answer in client.answers()] == [431]
    assert client.closed


def test_heads_read_together_are_each_held_to_the_bounds_not_their_sum():
    client = connect(limits=Limits(max_target=50, max_head=200))
    client.send(get() * 100 + b"GET / HT")
    client.send(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert [answer.status for answer in client.answers()] == [200] * 101


# -- refusals ---------------------------------------------------------------------------


def test_a_refusal_is_a_json_error_with_a_code_and_the_clients_request_id():
    answer = refused(post(b"/up", b"x" * 11, b"X-Request-Id: mine-1"), 413, Door(limit=10))
    assert answer.error["code"] == "PAYLOAD_TOO_LARGE"
    assert answer.error["message"].startswith("Payload Too Large:")
    assert answer.headers["x-request-id"] == "mine-1"


def test_a_refusal_gets_a_new_request_id_for_an_insane_one():
    answer = refused(post(b"/up", b"x" * 11, b"X-Request-Id: a b"), 413, Door(limit=10))
    assert uuid.UUID(answer.headers["x-request-id"]).version == 4


def test_a_refusal_of_a_judged_head_carries_the_clients_request_id():
    answer = refused(b"GET / HTTP/1.1\r\nX-Request-Id: mine-2\r\n\r\n", 400)
    assert answer.headers["x-request-id"] == "mine-2"


def test_a_refusal_behind_a_request_waits_for_its_answer():
    client = connect(Door(holding("/slow")))
    client.send(get(b"/slow") + b"get / HTTP/1.1\r\n\r\n")
    assert client.received() == b""
    client.door.seen[0].respond(Response(200, {}, b"slow"))
    assert [answer.status for answer in client.answers()] == [200, 400]
    assert client.closed


# -- Connection: close and keep-alive --------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        [b"Connection: close"],
        [b"Connection: close,x"],
        [b"Connection: x, CLOSE"],
        [b"Connection: x", b"Connection: close"],
    ],
)
def test_close_in_any_connection_header_closes_after_the_answer(lines):
    client = connect()
    client.send(get(b"/first", *lines) + get(b"/second"))
    client.send(get(b"/third"))
    assert client.door.paths == ["/first"]
    [answer] = client.answers()
    assert answer.headers["connection"] == "close"
    assert client.closed


def test_nothing_is_read_after_a_request_that_closes():
    client = connect(Door(holding("/first")))
    client.send(get(b"/first", b"Connection: close") + get(b"/second"))
    assert client.transport.producerState == "paused"
    client.send(get(b"/third"))
    client.door.seen[0].respond(Response(200, {}, b""))
    assert client.door.paths == ["/first"]
    assert client.closed


def test_http_1_0_keep_alive_keeps_the_connection():
    client = connect()
    client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    client.send(b"GET /b HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    answers = client.answers()
    assert [answer.headers["connection"] for answer in answers] == ["keep-alive", "keep-alive"]
    assert not client.closed


def test_http_1_0_without_keep_alive_is_closed_after_its_answer():
    client = connect()
    client.send(b"GET /a HTTP/1.0\r\n\r\n" + b"GET /b HTTP/1.0\r\n\r\n")
    [answer] = client.answers()
    assert answer.headers["connection"] == "close"
    assert client.door.paths == ["/a"]
    assert client.closed


# -- 100 Continue -----------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expecting(path: bytes, length: int) -> bytes:
    """A head that waits for C{100 Continue} before its body of C{length} bytes."""
    return get(path, b"Content-Length: %d" % length, b"Expect: 100-continue", method=b"POST")


def test_100_continue_is_sent_when_the_body_is_wanted():
    client = connect()
    client.send(expecting(b"/up", 2))
    assert client.received() == CONTINUE
    client.send(b"ok")
    assert [answer.status for answer in client.answers()] == [100, 200]
    assert client.door.seen[0].body == b"ok"


def test_no_100_continue_for_a_body_over_the_limit():
    client = connect(Door(limit=10))
    client.send(expecting(b"/up", 11))
    assert [answer.status for answer in client.answers()] == [413]
    assert client.closed
    assert client.door.seen == []


@pytest.mark.parametrize("later", [False, True], ids=IDS)
def test_100_continue_for_a_pipelined_request_comes_after_the_answer_before_it(later):
    client = connect(Door(holding("/first") if later else echo))
    client.send(get(b"/first") + expecting(b"/up", 2))
    if later:
        assert client.received() == b""
        client.door.seen[0].respond(Response(200, {}, b"first"))
    assert [answer.status for answer in client.answers()] == [200, 100]
    client.send(b"ok")
    assert [answer.status for answer in client.answers()] == [200, 100, 200]


# -- writing answers --------------------------------------------------------------------


def answers_to(response: Response, *requests: bytes) -> Client:
    """A client that sent C{requests}; the first is answered with C{response}, the rest echoed."""
    door = Door()
    door.reply = lambda exchange: response if len(door.seen) == 1 else echo(exchange)
    client = connect(door)
    client.send(b"".join(requests))
    return client


def test_a_longer_body_than_declared_is_cut_to_the_declared_length_and_closes():
    client = answers_to(Response(200, {"content-length": "3"}, b"abcdef"), get(), get(b"/next"))
    [answer] = client.answers()
    assert (answer.headers["content-length"], answer.body) == ("3", b"abc")
    assert answer.headers["connection"] == "close"
    assert client.received().endswith(b"\r\n\r\nabc")
    assert client.closed
    assert client.door.paths == ["/"]


def test_a_shorter_body_than_declared_is_sent_then_the_connection_closes():
    client = answers_to(Response(200, {"content-length": "10"}, b"abc"), get(), get(b"/next"))
    assert client.received().endswith(b"content-length: 10\r\nconnection: close\r\n\r\nabc")
    [answer] = client.answers()
    assert not answer.complete
    assert client.closed
    assert client.door.paths == ["/"]


def test_an_apps_wrong_length_is_logged(eliot_logger):
    answers_to(Response(200, {"content-length": "3"}, b"abcdef"), get(b"/x")).received()
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:wrong-length"
    ]
    assert (logged["level"], logged["declared"]) == ("warn", 3)
    assert "/x" in logged["message"]


def test_a_stream_longer_than_declared_is_cut_and_closes():
    stream = Stream()
    client = answers_to(Response(200, {"content-length": "3"}, stream), get(), get(b"/n"))
    stream.give(b"ab")
    stream.give(b"cdef")
    assert client.received().endswith(b"content-length: 3\r\n\r\nabc")
    assert stream.closed
    assert client.closed
    assert client.door.paths == ["/"]


def test_a_stream_shorter_than_declared_closes():
    stream = Stream()
    client = answers_to(Response(200, {"content-length": "10"}, stream), get(), get(b"/n"))
    stream.give(b"ab")
    stream.give(None)
    assert client.received().endswith(b"content-length: 10\r\n\r\nab")
    assert client.closed
    assert client.door.paths == ["/"]


@pytest.mark.parametrize("body", [b"abc", b""])
def test_a_head_answer_keeps_the_apps_length_and_sends_no_body(body):
    client = answers_to(
        Response(200, {"content-length": "10"}, body), get(method=b"HEAD"), get(b"/n")
    )
    first, second = client.answers("HEAD")
    assert (first.headers["content-length"], first.body) == ("10", b"")
    assert second.body == b"GET /n:"
    assert not client.closed


def test_a_head_answer_of_a_stream_closes_the_stream_unsent():
    stream = Stream()
    client = answers_to(Response(200, {"content-length": "10"}, stream), get(method=b"HEAD"))
    assert client.received().endswith(b"content-length: 10\r\n\r\n")
    assert stream.closed
    assert not client.closed


def test_a_head_answer_without_a_length_gets_the_bodys():
    client = answers_to(Response(200, {}, b"hello"), get(method=b"HEAD"))
    [answer] = client.answers("HEAD")
    assert (answer.headers["content-length"], answer.body) == ("5", b"")


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_and_not_modified_have_no_body_or_length(status):
    client = answers_to(Response(status, {"content-length": "9"}, b""), get(), get(b"/n"))
    first, second = client.answers()
    assert first.status == status
    assert "content-length" not in first.headers and "transfer-encoding" not in first.headers
    assert second.body == b"GET /n:"


@pytest.mark.parametrize("status", [100, 101, 103, 199, 42, 1000])
def test_an_apps_interim_or_impossible_status_is_a_502(status):
    client = answers_to(Response(status, {"link": "</x>"}, b"ignored"), get(), get(b"/n"))
    first, second = client.answers()
    assert first.status == 502
    assert first.error["code"] == "BAD_GATEWAY"
    assert second.status == 200


def test_the_apps_reason_for_an_unknown_status_is_written():
    client = answers_to(Response(299, {}, b""), get())
    assert client.received().startswith(b"HTTP/1.1 299 ")


def test_hop_by_hop_headers_of_the_app_are_not_passed_on():
    app_headers = [
        ("Connection", "upgrade"),
        ("Keep-Alive", "1"),
        ("Proxy-Connection", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "x"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("X-Request-Id", "the app's"),
        ("Server", "app"),
        ("Date", "yesterday"),
        ("X-Kept", "1"),
    ]
    client = answers_to(Response(200, app_headers, b"ok"), get(), get(b"/n"))
    first, second = client.answers()
    names = [
        line.split(b":")[0].lower()
        for line in client.received().split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    ]
    assert sorted(names) == [b"content-length", b"date", b"server", b"x-kept", b"x-request-id"]
    assert first.headers["x-request-id"] == "rid-1"
    assert first.headers["server"] != "app"
    assert second.body == b"GET /n:"


def test_line_breaks_in_an_apps_headers_cannot_split_the_answer():
    response = Response(200, [("X-Evil", "a\r\nSet-Cookie: x=1"), ("X-Nul", "a\x00b\nc")], b"ok")
    client = answers_to(response, get())
    head = client.received().split(b"\r\n\r\n")[0]
    assert b"\r\nSet-Cookie" not in head and b"\x00" not in head
    [answer] = client.answers()
    assert "set-cookie" not in answer.headers
    assert answer.headers["x-evil"] == "a Set-Cookie: x=1"


def test_a_header_name_that_is_not_a_token_is_not_sent(eliot_logger):
    """A plugin's C{"Content-Length "} must not reach a client that would read it as the length."""
    names = ["Content-Length ", "Transfer-Encoding\t", "x:y", "", "bad name", "x-\u00e9"]
    response = Response(200, [*((name, "5") for name in names), ("x-kept", "1")], b"ok")
    client = answers_to(response, get())
    head = client.received().split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    assert sorted(line.split(b":")[0].lower() for line in head) == [
        b"content-length",
        b"date",
        b"server",
        b"x-kept",
        b"x-request-id",
    ]
    assert b"content-length: 2" in head
    [dropped] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:bad-header"
    ]
    assert dropped["names"] == names


def test_a_stream_is_sent_chunked_on_http_1_1():
    stream = Stream()
    client = answers_to(Response(200, {}, stream), get(), get(b"/n"))
    stream.give(b"ab")
    stream.give(b"")  # nothing to send: no chunk that would end the body
    stream.give(b"cd")
    assert client.door.paths == ["/"]  # the next waits for the end of the stream
    stream.give(None)
    first, second = client.answers()
    assert (first.headers["transfer-encoding"], first.body) == ("chunked", b"abcd")
    assert second.body == b"GET /n:"
    assert not client.closed


@pytest.mark.parametrize("lines", [[], [b"Connection: keep-alive"]])
def test_a_stream_without_a_length_on_http_1_0_ends_with_the_connection(lines):
    stream = Stream()
    request = b"GET / HTTP/1.0\r\n%s\r\n" % b"".join(line + b"\r\n" for line in lines)
    client = answers_to(Response(200, {}, stream), request)
    stream.give(b"ab")
    stream.give(None)
    [answer] = client.answers()
    assert "transfer-encoding" not in answer.headers and "content-length" not in answer.headers
    assert (answer.headers["connection"], answer.body) == ("close", b"ab")
    assert client.closed


def test_a_stream_with_its_own_length_is_sent_as_is():
    stream = Stream()
    client = answers_to(Response(200, {"content-length": "4"}, stream), get(), get(b"/n"))
    stream.give(b"ab")
    stream.give(b"cd")
    stream.give(None)
    first, second = client.answers()
    assert (first.headers["content-length"], first.body) == ("4", b"abcd")
    assert second.body == b"GET /n:"


def test_a_failing_stream_closes_the_connection_after_what_was_sent(eliot_logger):
    """Closed in order, not reset: the client reads the truncated answer (as under uvicorn)."""

    async def failing():
        yield b"ab"
        raise RuntimeError("boom")

    ends = []
    door = Door(lambda exchange: Response(200, {}, failing()))
    client = connect(door)
    client.send(get())
    door.seen[0].on_end(ends.append)
    [answer] = client.answers()
    assert (answer.body, answer.complete) == (b"ab", False)
    assert client.closed and not client.transport.aborted
    assert isinstance(ends[0], Failure)
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:stream-failed"
    ]
    assert "boom" in logged["error"]


# -- backpressure -----------------------------------------------------------------------


def test_a_client_that_does_not_read_is_not_read_and_is_aborted_after_the_idle_timeout():
    client = connect(Door(always(BIG)), TIMEOUTS)
    client.send(get() * 3)
    client.received()
    client.connection.pauseProducing()  # the transport's buffer is full: the peer does not read
    assert client.transport.producerState == "paused"
    client.send(get() * 3)  # already read when reading stopped
    client.received()
    assert len(client.door.seen) == 3
    client.later(55)
    assert not client.transport.aborted
    client.later(10)
    assert client.transport.aborted
    assert len(client.door.seen) == 3


def test_a_transport_whose_buffer_fills_stops_the_reading():
    client = connect(Door(always(BIG)), TIMEOUTS, transport=BufferingTransport())
    client.send(get())
    client.received()  # the answer goes out at the end of the turn and fills the buffer
    assert client.transport.producerState == "paused"
    client.send(get() * 5)  # already read when reading stopped
    client.received()
    assert len(client.door.seen) == 1
    client.later(65)
    assert client.transport.aborted


def test_a_client_that_reads_again_gets_what_waited():
    client = connect(Door(always(Response(200, {}, b"x"))), TIMEOUTS)
    client.connection.pauseProducing()
    client.send(get(b"/a") + get(b"/b"))
    assert client.door.seen == []
    client.later(30)
    client.connection.resumeProducing()
    assert client.door.paths == ["/a", "/b"]
    assert client.transport.producerState == "producing"
    client.later(50)  # the pause is over: no abort
    assert [answer.status for answer in client.answers()] == [200, 200]
    assert not client.transport.aborted


def test_reading_pauses_once_max_pipeline_requests_wait():
    client = connect(Door(holding("/slow")), Limits(max_pipeline=4))
    client.send(get(b"/slow"))
    client.send(*[get(b"/next")] * 3)
    assert client.transport.producerState == "producing"
    client.send(get(b"/next"))
    assert client.transport.producerState == "paused"
    client.door.seen[0].respond(Response(200, {}, b""))
    assert len(client.door.seen) == 5
    assert client.transport.producerState == "producing"


def test_pipelined_requests_in_one_read_are_not_all_answered_for_a_peer_that_does_not_read():
    limits = Limits(max_pipeline=4)
    client = connect(Door(always(BIG)), limits, transport=BufferingTransport())
    client.send(get() * 50)
    client.received()
    assert client.transport.producerState == "paused"
    assert len(client.door.seen) <= limits.max_pipeline


def test_a_stream_waits_while_the_client_does_not_read():
    stream = Stream()
    client = answers_to(Response(200, {}, stream), get())
    client.connection.pauseProducing()
    stream.give(b"ab")  # asked for before the pause: written, then the stream waits
    stream.give(b"cd")
    stream.give(None)
    assert client.received().endswith(b"\r\n\r\n2\r\nab\r\n")
    client.connection.resumeProducing()
    assert client.received().endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")


# -- timeouts ---------------------------------------------------------------------------


def test_a_head_trickled_byte_by_byte_gets_408_within_one_and_a_half_header_timeouts():
    client = connect(limits=TIMEOUTS)
    client.later(3.3)  # off the timer's beat
    started = client.clock.seconds()
    data = get(b"/", b"X-Slow: " + b"y" * 200)
    for at in range(len(data)):
        if client.closed:
            break
        client.send(data[at : at + 1])
        client.later(0.5)
    assert 10 <= client.clock.seconds() - started <= 15 + 0.5
    assert refusal(client).status == 408


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout():
    client = connect(limits=TIMEOUTS)
    client.later(59)
    assert not client.closed
    client.later(6)
    assert client.closed and not client.transport.aborted
    assert client.received() == b""


def test_an_idle_connection_after_an_answer_is_closed_after_the_idle_timeout():
    client = connect(limits=TIMEOUTS)
    client.later(30)
    client.send(get())
    client.later(55)
    assert not client.closed
    client.later(10)
    assert client.closed


def test_a_slow_answer_is_not_cut_by_the_idle_timeout():
    client = connect(Door(holding("/slow")), TIMEOUTS)
    client.send(get(b"/slow"))
    client.later(300)
    assert not client.closed
    client.door.seen[0].respond(Response(200, {}, b"late"))
    assert client.answers()[0].body == b"late"


def test_a_stream_is_not_cut_by_the_idle_timeout():
    stream = Stream()
    client = connect(Door(always(Response(200, {}, stream))), TIMEOUTS)
    client.send(get())
    for chunk in (b"a", b"b", b"c"):
        client.later(100)
        stream.give(chunk)
    stream.give(None)
    assert client.answers()[0].body == b"abc"
    assert not client.closed


def test_the_idle_timeout_counts_from_the_end_of_a_late_answer():
    client = connect(Door(holding("/slow")), TIMEOUTS)
    client.send(get(b"/slow"))
    client.later(100)
    client.door.seen[0].respond(Response(200, {}, b"late"))
    client.later(30)
    assert not client.closed


def test_a_slow_body_is_closed_after_the_idle_timeout_and_leaves_no_request_in_flight():
    client = connect(limits=TIMEOUTS)
    client.send(post(b"/up", b"abcd")[:-2])
    client.later(65)
    assert client.closed
    assert client.state.in_flight == 0
    assert client.door.seen == []


def test_a_client_that_does_not_take_its_last_answer_is_aborted():
    client = connect(limits=TIMEOUTS, transport=Lingering())
    client.send(get(b"/", b"Connection: close"))
    client.received()
    assert client.transport.disconnecting and not client.transport.aborted
    client.later(65)
    assert client.transport.aborted


# -- connections ------------------------------------------------------------------------


def test_past_max_connections_a_connection_gets_503_and_closing_one_frees_a_slot():
    factory = serve(limits=Limits(max_connections=2))
    first, second = connect(factory=factory), connect(factory=factory)
    third = connect(factory=factory)
    [answer] = third.answers()
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.error["code"] == "SERVICE_UNAVAILABLE"
    assert third.closed
    assert not first.closed and not second.closed
    first.transport.loseConnection()
    fourth = connect(factory=factory)
    assert isinstance(fourth.connection, HTTP1Connection)
    fourth.send(get())
    assert fourth.answers()[0].status == 200


def test_refused_and_timed_out_connections_free_their_slot():
    factory = serve(limits=Limits(max_connections=1, header_timeout=10, idle_timeout=60))
    connect(factory=factory).send(b"get / HTTP/1.1\r\n\r\n")
    idle = connect(factory=factory)
    idle.later(65)
    assert idle.closed
    assert factory.connections == 0


def test_losing_the_connection_ends_the_exchange_with_a_failure():
    ends = []
    client = connect(Door(holding("/slow")))
    client.send(get(b"/slow") + get(b"/next"))
    client.door.seen[0].on_end(ends.append)
    client.transport.loseConnection()
    [failure] = ends
    assert isinstance(failure, Failure)
    assert client.door.seen[0].gone
    client.door.seen[0].respond(Response(200, {}, b"late"))  # too late: nothing is written
    assert client.received() == b""
    assert client.door.paths == ["/slow"]


@pytest.mark.parametrize("paused", [False, True], ids=["sending", "waiting-for-the-client"])
def test_losing_the_connection_ends_a_stream_and_stops_it(paused):
    stream = Stream()
    ends = []
    client = answers_to(Response(200, {}, stream), get())
    client.door.seen[0].on_end(ends.append)
    if paused:
        client.connection.pauseProducing()
    stream.give(b"ab")
    client.transport.loseConnection()
    assert isinstance(ends[0], Failure)
    stream.give(b"late")
    assert stream.closed
    assert b"late" not in client.received()


def test_stop_producing_stops_a_stream():
    stream = Stream()
    client = answers_to(Response(200, {}, stream), get())
    client.connection.stopProducing()
    stream.give(b"ab")
    assert stream.closed
    assert not client.received().endswith(b"ab\r\n")


def test_an_answer_for_a_client_already_gone_closes_its_stream_unsent():
    stream = Stream()
    client = connect(Door(holding("/slow")))
    client.send(get(b"/slow"))
    client.transport.loseConnection()
    client.door.seen[0].respond(Response(200, {}, stream))
    assert stream.closed


# -- upgrades ---------------------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"


class Taker(Protocol):
    """The protocol a connection is handed over to."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@pytest.mark.parametrize("later", [False, True], ids=IDS)
def test_a_handed_over_connection_gives_the_protocol_the_head_and_what_followed(later):
    taker = Taker()
    door = Door(lambda exchange: None if later else exchange.hand_over(taker, b"HEAD\r\n\r\n"))
    client = connect(door, TIMEOUTS)
    client.send(UPGRADE + b"\r\n" + b"frame-1", b"frame-1b")
    if later:
        client.door.seen[0].hand_over(taker, b"HEAD\r\n\r\n")
    assert client.door.paths == ["/ws"]
    assert client.door.seen[0].head.upgrade
    assert taker.received == b"HEAD\r\n\r\nframe-1frame-1b"
    assert taker.transport is client.transport and client.transport.protocol is taker
    client.send(b"frame-2")
    assert taker.received.endswith(b"frame-2")
    assert client.transport.producerState == "producing"
    assert client.factory.connections == 0  # no longer an HTTP connection
    client.later(1000)  # nor timed out as one
    assert not client.closed
    assert client.received() == b""


@pytest.mark.parametrize("later", [False, True], ids=IDS)
def test_an_upgrade_answered_without_a_hand_over_lets_the_connection_go_on(later):
    client = connect(Door(holding("/ws") if later else echo))
    client.send(UPGRADE + b"\r\n" + get(b"/next"))
    if later:
        client.door.seen[0].respond(Response(404, {}, b"no"))
    assert client.door.paths == ["/ws", "/next"]
    assert [answer.status for answer in client.answers()] == [404 if later else 200, 200]
    assert client.transport.producerState == "producing"
    client.send(get(b"/third"))
    assert client.door.paths == ["/ws", "/next", "/third"]


# An upgrade request with a body is answered as a plain request: llhttp would
# take its body for the new protocol's bytes (never read, and parsed as the next
# request after the answer: smuggling).  Spring's RestClient and Ktor offer h2c
# on ordinary POSTs (uvicorn's issue 2722).

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n"


def upgrade_post(body: bytes, chunked: bool = False, upgrade: bytes = H2C) -> bytes:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\n" + upgrade
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:]))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "upgrade", [H2C, b"Connection: upgrade\r\nUpgrade: websocket\r\n"], ids=["h2c", "websocket"]
)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_an_upgrade_request_with_a_body_is_answered_as_a_plain_request(chunked, upgrade, split):
    inner = get(b"/smuggled")  # a body that reads as a request: never served as one
    data = upgrade_post(inner, chunked, upgrade) + get(b"/after")
    client = connect()
    client.send(*([data[at : at + 1] for at in range(len(data))] if split else [data]))
    assert client.door.paths == ["/x", "/after"]
    first = client.door.seen[0]
    assert (first.body, first.head.upgrade) == (inner, False)
    answers = client.answers("POST", "GET")
    assert [answer.body for answer in answers] == [b"POST /x:" + inner, b"GET /after:"]
    assert not client.closed
    client.send(get(b"/third"))
    assert client.door.paths == ["/x", "/after", "/third"]


def test_the_body_of_an_upgrade_request_keeps_its_limit():
    client = connect(Door(limit=10))
    client.send(upgrade_post(b"y" * 11, chunked=True))
    assert [answer.status for answer in client.answers("POST")] == [413]
    assert client.door.paths == []


def test_an_upgrade_request_with_a_large_body_is_an_upload():
    data = upgrade_post(UPLOAD).replace(b"/x", b"/up", 1)
    answers = streamed_upload(upload_client(), data)
    assert [answer.body for answer in answers] == [b"got it", b"GET /next:"]


def test_a_fragment_after_an_origin_form_target_is_dropped_before_the_body_limit_is_asked():
    # docs/http.md: the fragment is dropped; the body limit is the limit of the path
    # the request is routed by (/app), not of /app#x (which names no app)
    asked: list[str] = []
    door = Door(limit=10)
    door.body_limit = lambda path: asked.append(path) or 10  # type: ignore[method-assign]
    client = connect(door)
    client.send(post(b"/app#x", b"y" * 11))
    assert asked == ["/app"]
    assert [answer.status for answer in client.answers("POST")] == [413]
    client = connect()
    client.send(get(b"/app?q=1#x"))
    assert client.door.seen[0].head.target == "/app?q=1"


def test_no_100_continue_for_an_http_1_0_request():
    # RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be
    # ignored; §15.2: a server MUST NOT send a 1xx to an HTTP/1.0 client (h11 agrees)
    client = connect()
    client.send(b"POST /up HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert b"100 Continue" not in client.received()
    client.send(b"ok")
    assert b"100 Continue" not in client.received()
    assert client.door.seen[0].body == b"ok"

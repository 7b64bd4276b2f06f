"""
Reading requests on a client connection: llhttp's callbacks gather a head
(bounded: L{buntime.web.http1.limits.Limits}), judge it
(L{buntime.web.http1.head.judge}), check the body limit the front door gives
for its path (413 before a byte of body is read, or as soon as a chunked
body passes it), and queue the complete request as an L{Exchange} (or a
L{Refusal}) for its turn.  The L{RequestReading} side of an
L{buntime.web.http1.connection.HTTP1Connection}.

An upload (a body whose C{Content-Length} is over the limits'
C{stream_body_over}) is queued as soon as its head is read, its body a
L{PushedStream} fed as it arrives: whoever answers it (a worker app, the
proxy) reads it as it comes, and the connection stops reading while more
than L{UPLOAD_HIGH_WATER} bytes of it wait to be taken.  A chunked body
becomes an upload once more than C{stream_body_over} bytes of it have come
(a smaller one is queued whole); past its limit it fails with
L{BodyTooLarge} and the client gets 413, unless its answer has begun.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from attrs import define, evolve
from httptools import HttpParserUpgrade, HttpRequestParser
from twisted.internet.defer import Deferred

from buntime.stream import BodyTooLarge, PushedStream
from buntime.web.http1.exchange import Exchange
from buntime.web.http1.head import Head, Refusal, judge

if TYPE_CHECKING:
    from buntime.web.http1.connection import HTTP1Connection
    from buntime.web.http1.factory import Handler, HTTP1Factory
    from buntime.web.http1.limits import Limits

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
UPLOAD_HIGH_WATER = 256 * 1024
"""Bytes of an upload read and not yet taken by its reader past which reading stops."""
UPLOAD_LOW_WATER = UPLOAD_HIGH_WATER // 2
"""... and at or under which it goes on."""


class _Stop(Exception):
    """Raised in a parser callback: read nothing more on this connection."""


class RequestReading:
    """
    The reading side of an L{HTTP1Connection}: a mixin working on the
    connection's state (declared below for the type checker).
    """

    if TYPE_CHECKING:
        factory: HTTP1Factory
        _handler: Handler
        _limits: Limits
        _parser: HttpRequestParser
        _remote: str | None
        _remote_port: int | None
        _local: tuple[str, int] | None
        _secure: bool
        _target: list[bytes]
        _target_size: int
        _lines: list[tuple[bytes, bytes]]
        _head_size: int
        _head_since: float | None
        _head_bytes: int
        _trailer_bytes: int | None
        _idle_since: float
        _head: Head | None
        _body: list[bytes]
        _body_size: int
        _limit: int
        _uploading: bool
        _upload: PushedStream | None
        _counted: PushedStream | None
        _upload_unread: int
        _continued: bool
        _waiting: deque[Exchange | Refusal]
        _current: Exchange | None
        _held: list[bytes] | None
        _done_reading: bool
        _linger: bool
        _unread_body: Head | None

        def _refuse(self, refusal: Refusal) -> None: ...
        def _send_refusal(self, refusal: Refusal) -> None: ...
        def _write(self, data: bytes) -> None: ...
        def _flow(self) -> None: ...

    def _feed(self, data: bytes) -> None:
        """Parse C{data}: complete requests wait their turn, refusals too."""
        replayed = None
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            if self._unread_body is not None:
                replayed = rest  # read once out of this handler (llhttp's errors chain to it)
            else:  # for whoever takes the connection over, or parsed again after the answer
                self._held = [rest] if rest else []
        except _Stop:
            pass
        except Exception as error:
            refusal = error.__context__ if isinstance(error.__context__, Refusal) else None
            if isinstance(error.__context__, _Stop):
                pass
            elif refusal is not None:
                self._refuse(refusal)
            elif "HTTP version" in str(error):  # llhttp's word for a version it does not know
                self._refuse(Refusal(505, str(error)))
            else:
                self._refuse(Refusal(400, str(error) or "Malformed request"))
        else:
            self._bound_open_sections(len(data))
        if replayed is not None:
            self._replay_body(replayed)

    def _bound_open_sections(self, size: int) -> None:
        """
        After a read of C{size} bytes: a trailer section or a head that is
        still open is bounded read by read, as llhttp gathers a field whole.
        """
        trailing = self._trailer_bytes
        if trailing is not None:  # after a last chunk: a trailer section may be arriving
            # as a head's (below): from the read after the one its chunk header came in
            self._trailer_bytes = 0 if trailing < 0 else trailing + size
            if self._trailer_bytes > self._limits.max_head + 1024:
                self._refuse(Refusal(431, "The trailer section is too large"))
        if self._head_since is not None:  # a head still open after this read
            # begun in this read (-1): its bytes so far are no more than the read's,
            # and the callbacks counted them; from the next read on, count reads
            self._head_bytes = 0 if self._head_bytes < 0 else self._head_bytes + size
            limits = self._limits
            if self._head_bytes > limits.max_target + limits.max_head + 1024:
                self._refuse(Refusal(431, "The request head is too large"))

    def _replay_body(self, rest: bytes) -> None:
        """
        Read the body of the upgrade request just read (which is served as a
        plain request: see L{on_headers_complete}), C{rest} its first bytes
        and whatever follows: a fresh parser is given a head of its own
        framing the body as the client's does, then the client's bytes.  Its
        chunks, limits and trailers are then read as any body's, and the
        requests after it as any requests.
        """
        head, self._unread_body = self._unread_body, None
        assert head is not None
        self._head = head
        if head.chunked:
            framing = b"transfer-encoding: chunked"
        else:
            framing = b"content-length: %d" % (head.length or 0)
        self._parser = HttpRequestParser(_BodyReplay(self))
        self._feed(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest)

    # -- parser callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done_reading:
            raise _Stop()
        self._head_since = self._idle_since  # the time of this read
        self._head_bytes = -1
        self._target = []
        self._target_size = 0
        self._lines = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._target_size += len(url)
        if self._target_size > self._limits.max_target:
            raise Refusal(414, f"The request target is longer than {self._limits.max_target} bytes")
        self._target.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done_reading:  # answered early from within this read: the rest is dropped
            raise _Stop()
        if self._head is not None:  # a trailer field, after a chunked body: counted, dropped
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self._limits.max_head:
                raise Refusal(431, f"The trailer section is over {self._limits.max_head} bytes")
            return
        # judged whole in on_headers_complete; a head spread over reads is
        # bounded read by read (see _feed), one read by its size
        self._lines.append((name, value))
        self._head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        limits = self._limits
        count = len(self._lines)
        if self._head_size + 4 * count > limits.max_head or count > limits.max_headers:
            raise Refusal(
                431,
                f"The header section is over {limits.max_head} bytes or {limits.max_headers} lines",
            )
        parser = self._parser
        target = self._target[0] if len(self._target) == 1 else b"".join(self._target)
        head = judge(parser.get_method(), target, parser.get_http_version(), self._lines)
        if head.has_body and parser.should_upgrade():
            # llhttp takes what follows an upgrade request's head for the new
            # protocol's, and would leave its body unread (and read it as the
            # next request).  Such a request is served as a plain one, its
            # body read through a replay: a server may ignore an Upgrade
            # (RFC 9110 §7.8), and clients such as Spring's RestClient offer
            # h2c on every POST.  Only a request without a body is handed over.
            head = self._unread_body = evolve(head, upgrade=False)
        self._head_since = None
        self._lines = []
        self._head_size = 0  # from now on, the trailer section's (see on_header)
        self._head = head
        if not head.has_body:
            return
        limit = self._limit = self._handler.body_limit(head.path)
        if head.length is not None and head.length > limit:
            raise Refusal(413, f"Request body of {head.length} bytes exceeds the limit of {limit}")
        state = self.factory.state
        if state is not None:  # a shutdown waits for a body that is still arriving
            state.request_started()
            self._uploading = True
        self._continued = False
        uploaded = (
            head.length is not None and head.length > limits.stream_body_over and not head.upgrade
        )
        if head.expect and not uploaded and self._current is None and not self._waiting:
            self._continued = True
            self._write(CONTINUE)
        if uploaded:
            self._start_upload(head)
        if self._unread_body is not None:  # llhttp ends its message now: not the request's end
            self._head = None  # (L{on_message_complete} takes it for a refused one)

    def on_chunk_header(self) -> None:
        # the next bytes are the chunk's, or (after the last chunk) its trailer
        # section's, which llhttp gathers field by field: bounded read by read
        # until a chunk's body comes (see _feed)
        self._trailer_bytes = -1

    def on_body(self, data: bytes) -> None:
        self._trailer_bytes = None
        upload = self._upload
        size = len(data)
        if upload is not None:
            if self._head is not None and self._head.length is None:  # chunked: counted here
                self._body_size += size
                if self._body_size > self._limit:
                    self._too_large(upload)
            self._feed_upload(upload, data)
            return
        if self._done_reading:  # answered early from within this read: the rest is dropped
            raise _Stop()
        self._body_size += size
        if self._body_size > self._limit:
            raise Refusal(413, f"Request body exceeds the limit of {self._limit} bytes")
        self._body.append(data)
        head = self._head
        if (
            self._body_size > self._limits.stream_body_over
            and head is not None
            and not head.upgrade
        ):
            # a chunked body this large: an upload from now on
            body, self._body = self._body, []
            self._feed_upload(self._start_upload(head), b"".join(body))

    def _start_upload(self, head: Head) -> Upload:
        """
        Queue the request of C{head} with its body still to come (an upload,
        answered while it arrives: see the module's docstring); its 100
        Continue goes out when its reader first asks for it, as uvicorn's does.
        """
        upload = self._upload = self._counted = Upload(_ignore, wanted=self._upload_wanted)
        self._upload_unread = 0
        self._queue(head, upload)
        return upload

    def _feed_upload(self, upload: PushedStream, data: bytes) -> None:
        size = len(data)
        self._upload_unread += size
        taken: Deferred[object] = Deferred()
        taken.addCallback(self._upload_taken, size, upload)
        upload.feed(data, taken)
        if self._upload_unread > UPLOAD_HIGH_WATER:
            self._flow()

    def _too_large(self, upload: PushedStream) -> None:
        """A chunked upload passed its limit: L{BodyTooLarge} and 413 (see L{_break_upload})."""
        message = f"Request body exceeds the limit of {self._limit} bytes"
        self._break_upload(upload, Refusal(413, message), BodyTooLarge(message))
        raise _Stop()

    def _break_upload(self, upload: PushedStream, refusal: Refusal, error: Exception) -> None:
        """
        The upload being read ends badly (past its limit, or its chunks
        malformed): its reader gets C{error}, the client C{refusal} in its
        turn (unless its answer has begun: the connection then closes after
        that answer), and nothing more is read.
        """
        self._upload = None
        self._head = None
        self._body_size = 0
        self._done_reading = True
        self._uploaded()
        current = self._current
        waiting = [
            item for item in self._waiting if isinstance(item, Exchange) and item.body is upload
        ]
        exchange = waiting[0] if waiting else current
        if exchange is not None and exchange.body is upload:
            refusal.request_id, refusal.path = exchange.head.request_id, exchange.head.path
            if waiting:  # not its turn yet: the refusal takes its place
                self._waiting.remove(exchange)
                self._waiting.append(refusal)
            elif exchange.written:  # its answer has begun: the connection closes after it
                exchange.close = True
                self._linger = True  # the client may still be sending
            else:  # its answer, when it comes, is dropped
                refusal.request_id = exchange.request_id.encode() or refusal.request_id
                exchange.status, exchange.written = refusal.status, True
                self._current = None
                self._send_refusal(refusal)
                exchange.done()
        upload.fail(error)

    def on_message_complete(self) -> None:
        self._trailer_bytes = None
        head = self._head
        if head is None:  # a message it refused, or an upgrade whose body is still to be read
            return
        upload, self._upload = self._upload, None
        if upload is not None:  # queued with its head; its reader now reads to the end
            self._head, self._body_size = None, 0
            upload.end()
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._head, self._body, self._body_size = None, [], 0
            self._queue(head, body)
        self._uploaded()
        if head.close:
            self._done_reading = True  # what follows this request is never read

    def _queue(self, head: Head, body: bytes | PushedStream) -> None:
        """Queue the request of C{head} for its turn."""
        connection = cast("HTTP1Connection", self)  # the mixin is always one's
        self._waiting.append(
            Exchange(
                connection,
                head,
                body,
                self._remote,
                self._remote_port,
                self._local,
                self._secure,
            )
        )

    def _upload_wanted(self) -> None:
        """The upload's reader asks for its body: the client may send it now."""
        head = self._head
        if (
            self._upload is not None
            and head is not None
            and head.expect
            and not self._continued
            and not self._done_reading
        ):
            self._continued = True
            self._write(CONTINUE)

    def _upload_taken(self, _: object, size: int, upload: PushedStream) -> None:
        """The upload's reader took C{size} bytes: read on once it has room."""
        if upload is not self._counted:
            return  # its exchange has ended: it holds the connection back no more
        self._upload_unread -= size
        if self._upload_unread <= UPLOAD_LOW_WATER:
            self._flow()

    def _uploaded(self) -> None:
        if self._uploading:
            self._uploading = False
            self.factory.state.request_finished()


class _BodyReplay:
    """
    The callbacks of the parser reading an upgrade request's body (see
    L{RequestReading._replay_body}): the head it is given first only frames
    that body and is no request; from its end on, everything is the
    connection's.
    """

    def __init__(self, reading: RequestReading) -> None:
        self._reading = reading
        self._in_head = True

    def on_message_begin(self) -> None:
        if not self._in_head:
            self._reading.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._in_head:
            self._reading.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            self._reading.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._in_head:
            self._in_head = False  # the client's body comes next
        else:
            self._reading.on_headers_complete()

    def on_chunk_header(self) -> None:
        self._reading.on_chunk_header()

    def on_body(self, data: bytes) -> None:
        self._reading.on_body(data)

    def on_message_complete(self) -> None:
        self._reading.on_message_complete()


@define(eq=False)
class Upload(PushedStream):
    """An upload's body: L{PushedStream}, telling C{wanted} when its reader first asks."""

    _wanted: Callable[[], None] | None = None

    async def __anext__(self) -> bytes:
        wanted, self._wanted = self._wanted, None
        if wanted is not None:
            wanted()
        return await PushedStream.__anext__(self)


def _ignore() -> None:
    """An upload's reader left early: what still comes is dropped (the connection closes after)."""

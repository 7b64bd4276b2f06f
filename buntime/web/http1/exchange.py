"""One request on its connection, from its complete arrival to the end of its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure

from buntime.http import Response
from buntime.logs import log
from buntime.stream import PushedStream
from buntime.web.http1.head import Head

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocol

    from buntime.web.http1.connection import HTTP1Connection


class HandedOver(Exception):
    """The request's connection now belongs to another protocol (a WebSocket): not a disconnect."""


class Exchange:
    """
    A request as the front door takes it: its L{Head}, its C{body} (whole,
    or the stream of an upload still arriving),
    the client's C{remote} address and port, the C{local} address and port
    the connection came in on, whether it is C{secure} (TLS); L{respond} writes the answer and
    L{hand_over} gives the connection to another protocol.  It ends (see
    L{on_end}) once the answer is written, or when the connection is lost
    (or handed over) first.
    """

    __slots__ = (
        "_connection",
        "_ends",
        "_result",
        "_writing",
        "body",
        "close",
        "ended",
        "gone",
        "head",
        "local",
        "remote",
        "remote_port",
        "request_id",
        "secure",
        "status",
        "written",
    )

    def __init__(
        self,
        connection: HTTP1Connection,
        head: Head,
        body: bytes | PushedStream,
        remote: str | None,
        remote_port: int | None = None,
        local: tuple[str, int] | None = None,
        secure: bool = False,
    ) -> None:
        self._connection = connection
        self.head = head
        self.body = body
        self.remote = remote
        self.remote_port = remote_port
        self.local = local
        self.secure = secure  # it came over TLS
        self.request_id = ""  # the front door gives it
        self.close = head.close  # the connection ends after this answer
        self.status = 200
        self.gone = False
        self.written = False
        self.ended = False
        self._result: Failure | None = None
        self._writing: Deferred[None] | None = None
        self._ends: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def on_end(self, callback: Callable[..., object], *args: Any) -> None:
        """
        Call C{callback(result, *args)} when the exchange ends (at once if it
        has): C{result} is C{None} once the answer is written, or the
        L{Failure} of a connection lost (or handed over) first.
        """
        if self.ended:
            self._call(callback, args)
        else:
            self._ends.append((callback, args))

    def _end(self, result: Failure | None) -> None:
        if self.ended:
            return
        self.ended, self._result = True, result
        ends, self._ends = self._ends, []
        for callback, args in ends:
            try:
                callback(result, *args)
            except Exception as error:
                _end_failed(error)
        try:  # last: the connection goes on to the next request
            self._connection.exchange_ended(self)
        except Exception as error:
            _end_failed(error)

    def _call(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            callback(self._result, *args)
        except Exception as error:
            _end_failed(error)

    def respond(self, response: Response | None) -> Deferred[None] | None:
        """
        Write C{response}: C{None} once a body of bytes is written, or a
        Deferred that fires when a streamed body is.  A response for a
        client already gone (or an exchange already answered) is closed
        unsent; C{None} writes nothing (the exchange was handed over).
        """
        if response is None:
            return None
        if self.gone or self.written:
            aclose = getattr(response.body, "aclose", None)
            written = ensureDeferred(aclose()) if aclose is not None else None
        else:
            written = self._connection.write_response(self, response)
        if written is not None:
            written.addErrback(_stream_failed)
            self._writing = written
        return written

    def hand_over(self, protocol: IProtocol, head: bytes) -> None:
        """
        Give the connection to C{protocol} (a WebSocket's), which reads
        C{head} (the request head as it should see it), the body and all
        that follows on the connection.  The exchange ends with
        L{HandedOver}.
        """
        self.written = True
        self._connection.hand_over(self, protocol, head)

    def peer(self) -> Any:
        """The client's address (an C{IAddress})."""
        return self._connection.transport.getPeer()

    def lost(self, reason: Failure) -> None:
        """
        The connection went away (or was handed over) before the answer was
        written.  A body still streaming is told at once (its read is
        cancelled), not at its next chunk: a quiet stream (events, a
        worker's slow answer) lets go of what feeds it now.
        """
        self.gone = True
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.cancel()
        self._end(reason)

    def done(self) -> None:
        """The answer is written."""
        self._end(None)


def _end_failed(error: Exception) -> None:
    log(
        "error",
        "buntime:http:internal-error",
        "Unhandled error at the end of a request",
        error=repr(error),
    )


def _stream_failed(failure: Failure) -> None:
    """A streamed body ended early: cancelled (the client left), or an error to log."""
    if not failure.check(CancelledError):
        log(
            "error",
            "buntime:http:stream-failed",
            "Response stream failed",
            error=failure.getErrorMessage(),
        )

"""
AMP commands the runtime sends to a worker.

A request travels as one L{StartRequest} carrying the first chunk of its body
(often all of it), then, when C{more} is true, L{RequestBody} chunks and a
final L{RequestBodyEnd}.  The worker answers through the events in
L{buntime.pool.events}.  Request ids (C{rid}) are chosen by the runtime and
unique per worker connection.

A WebSocket upgrade is a request like any other until the app accepts it
(a 101 L{buntime.pool.events.ResponseStart}); then the client's messages
travel as L{WebSocketReceive} pieces and its close as L{WebSocketDisconnect},
the app's as L{buntime.pool.events.WebSocketSend} and
L{buntime.pool.events.WebSocketClose}, until the app's call returns
(L{buntime.pool.events.ResponseEnd}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from twisted.protocols import amp

from buntime._json import dumps, loads

CHUNK_SIZE = 60 * 1024
"""Largest body chunk in one AMP value (AMP's limit is 64 KiB minus a bit)."""


RequestHead = tuple[str, str, str, list[list[str]], str, bool, str, str]
"""C{(method, path, base, headers, remote, more, local, version)}: see L{StartRequest}."""


def address(host: str | None, port: int | None) -> str:
    """C{"ip:port"}, C{"[ipv6]:port"}, or the host alone without a port (C{""}: unknown)."""
    if not host:
        return ""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def request_head(
    method: str,
    path: str,
    base: str,
    headers: Iterable[tuple[str, str]],
    remote: str,
    more: bool,
    local: str = "",
    version: str = "1.1",
) -> str:
    """The C{head} of a L{StartRequest}: a JSON array of its fields in this order."""
    if not isinstance(headers, list | tuple):
        headers = list(headers)
    return dumps([method, path, base, headers, remote, more, local, version])


def parse_request_head(head: str) -> RequestHead:
    """The fields of a L{StartRequest} C{head}."""
    method, path, base, headers, remote, more, local, version = loads(head)
    return method, path, base, headers, remote, bool(more), local, version


class StartRequest(amp.Command):
    """
    Begin a request.  C{head} is everything but the body in one JSON value
    (one AMP key rather than eight: every key costs on both sides of every
    request; see L{request_head}): the method, the path with the app's base
    stripped and the query string kept, the base, the headers as
    C{[name, value]} pairs, the client address (see L{address}), C{more},
    true when body chunks follow, the address the runtime accepted the
    connection on (may be empty) and the client's HTTP version (C{"1.1"},
    C{"1.0"}).  C{body} is the first chunk of the body (often all of it).
    """

    arguments = [
        (b"rid", amp.Integer()),
        (b"head", amp.Unicode()),
        (b"body", amp.String()),
    ]
    requiresAnswer = False


class RequestBody(amp.Command):
    """One more chunk (at most L{CHUNK_SIZE} bytes) of a request body."""

    arguments = [(b"rid", amp.Integer()), (b"data", amp.String())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class RequestBodyEnd(amp.Command):
    """The request body is complete."""

    arguments = [(b"rid", amp.Integer())]
    requiresAnswer = False


class CancelRequest(amp.Command):
    """The client went away or the request timed out: stop working on it."""

    arguments = [(b"rid", amp.Integer())]
    requiresAnswer = False


class Idle(amp.Command):
    """The worker has been idle a while: call the app's C{on_idle} hook."""

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Terminate(amp.Command):
    """
    Stop: wait until no call to the app is in flight (what an app does after
    its response, such as an ASGI background task, included), call
    C{on_terminate} and the ASGI lifespan shutdown, answer, then exit once
    the connection closes.  The runtime bounds the wait by the app's
    C{timeout}.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class WebSocketReceive(amp.Command):
    """
    A piece (at most L{CHUNK_SIZE} bytes) of a message the client sent on a
    WebSocket the app accepted for request C{rid}: C{binary} or UTF-8 text,
    C{final} on the message's last piece.  The worker answers once the app
    can take more, so awaiting the answer is the runtime's backpressure.
    """

    arguments = [
        (b"rid", amp.Integer()),
        (b"data", amp.String()),
        (b"binary", amp.Boolean()),
        (b"final", amp.Boolean()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class WebSocketDisconnect(amp.Command):
    """The client closed the WebSocket of request C{rid} (or went away: C{code} 1006)."""

    arguments = [(b"rid", amp.Integer()), (b"code", amp.Integer()), (b"reason", amp.Unicode())]
    requiresAnswer = False

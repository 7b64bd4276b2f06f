"""
AMP commands a worker sends to the runtime: readiness, responses, WebSocket messages.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.protocols import amp

from buntime._json import dumps, loads
from buntime.http import Headers
from buntime.pool.commands import WebSocketDisconnect, WebSocketReceive


class Ready(amp.Command):
    """The app is imported (and its ASGI lifespan started): send requests."""

    arguments = [(b"pid", amp.Integer()), (b"kind", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class StartupFailed(amp.Command):
    """The app could not be loaded; C{error} is one line, C{detail} a traceback."""

    arguments = [(b"error", amp.Unicode()), (b"detail", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


def response_head(status: int, headers_json: str, end: bool, reason: str | None = None) -> str:
    """
    The C{head} of a L{ResponseStart}: the JSON array C{[status, headers,
    end]}, C{headers_json} being the JSON list of C{[name, value]} pairs,
    and the app's own C{reason} phrase last when it gave one.
    """
    head = f"[{int(status)},{headers_json},{'true' if end else 'false'}"
    return head + (f",{dumps(reason)}]" if reason is not None else "]")


def parse_response_head(head: str) -> tuple[int, list[list[str]], bool]:
    """C{(status, headers, end)} from a L{ResponseStart} C{head}."""
    status, headers, end, _ = _response_fields(head)
    return status, headers, end


def _response_fields(head: str) -> tuple[int, list[list[str]], bool, str | None]:
    """
    C{(status, headers, end, reason)} from a L{ResponseStart} C{head}
    (C{reason}: C{None} when the app gave none).  Raises C{ValueError} or
    C{TypeError} for a malformed head.
    """
    fields = loads(head)
    if type(fields) is not list or len(fields) not in (3, 4):
        raise ValueError(f"a response head of {len(fields)} fields")
    status, pairs, end = fields[:3]
    reason = fields[3] if len(fields) == 4 else None
    if reason is not None and type(reason) is not str:
        raise TypeError(f"reason phrase {reason!r}")
    return int(status), pairs, bool(end), reason


def _headers_of(pairs: list[list[str]]) -> Headers:
    items = []
    for pair in pairs:
        if type(pair) is not list or len(pair) != 2:
            break
        name, value = pair
        if type(name) is not str or type(value) is not str:
            break
        items.append((name, value))
    else:
        return Headers._of(tuple(items))
    return Headers([tuple(pair) for pair in pairs])  # converts, or refuses, the odd ones


def response_start(head: str) -> tuple[int, Headers, bool, str | None]:
    """
    L{parse_response_head} with the headers as L{Headers}, and the app's
    reason phrase (C{None}: none given).  Raises C{ValueError} or
    C{TypeError} for a malformed head.
    """
    status, pairs, end, reason = _response_fields(head)
    return status, _headers_of(pairs), end, reason


class ResponseStart(amp.Command):
    """
    The start of the response to request C{rid}: C{head} holds its status,
    headers and C{end} (see L{response_head}), C{body} the first body
    chunk.  C{end} true means the response is complete; otherwise
    L{ResponseBody} chunks and a L{ResponseEnd} follow.
    """

    arguments = [
        (b"rid", amp.Integer()),
        (b"head", amp.Unicode()),
        (b"body", amp.String()),
    ]
    requiresAnswer = False


class ResponseBody(amp.Command):
    """
    One more response chunk.  The runtime answers once the client can take
    more, so awaiting the answer is the worker's backpressure.
    """

    arguments = [(b"rid", amp.Integer()), (b"data", amp.String())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class ResponseEnd(amp.Command):
    """The response to C{rid} is complete."""

    arguments = [(b"rid", amp.Integer())]
    requiresAnswer = False


class ResponseError(amp.Command):
    """
    The app failed on C{rid}.  Before L{ResponseStart} the runtime answers
    the client with an error; after it, the client connection is aborted.
    """

    arguments = [(b"rid", amp.Integer()), (b"error", amp.Unicode())]
    requiresAnswer = False


class WebSocketSend(amp.Command):
    """
    A piece (at most 60 KiB) of a message the app sends on the WebSocket it
    accepted for request C{rid} (accepting is a L{ResponseStart} with status
    101): C{binary} or UTF-8 text, C{final} on the message's last piece.
    The runtime answers once the client can take more (backpressure).
    """

    arguments = WebSocketReceive.arguments  # the same piece of a message, the other way
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class WebSocketClose(amp.Command):
    """
    The app closes the WebSocket of request C{rid} with C{code} and
    C{reason}; a L{ResponseEnd} follows once the app's call returns.
    """

    arguments = WebSocketDisconnect.arguments  # a close, the other way
    requiresAnswer = False

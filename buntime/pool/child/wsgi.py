"""
WSGI apps (Flask, Django, Bottle, plain C{(environ, start_response)}
functions), each request in a thread of the worker's own pool.

A response whose size is known at once (a list, or a first chunk that
holds all of its C{Content-Length}) goes back in one piece; anything else
streams chunk by chunk as the app's iterable yields it, however small, the
thread waiting for the runtime to take each chunk.  A cancelled request stops at its next chunk (the
iterable is closed).  The pool's threads are never joined: a stuck request
must not keep the worker from exiting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextvars import copy_context
from typing import Any
from urllib.parse import unquote_to_bytes

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import blockingCallFromThread
from zope.interface import implementer

from buntime import __version__
from buntime.pool.child.adapter import IAdapter
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.threads import CallThreads
from buntime.pool.child.writer import ResponseWriter

THREADS = 10
"""Requests a WSGI worker runs at once; the others wait for a free thread."""

_SPECIAL_HEADERS = {"CONTENT_TYPE", "CONTENT_LENGTH"}
SERVER_SOFTWARE = f"buntime/{__version__}"


def _latin1_path(path: str) -> str:
    """A percent-encoded path as WSGI wants it: decoded bytes, as a latin-1 string."""
    return unquote_to_bytes(path).decode("latin-1")


def build_environ(request: IncomingRequest) -> dict[str, Any]:
    """The WSGI environ of C{request} (PEP 3333)."""
    host, port = request.server
    client = request.client
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.upper(),
        "SCRIPT_NAME": _latin1_path(request.base),
        "PATH_INFO": _latin1_path(request.path),
        "QUERY_STRING": request.query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version,  # as the client sent it
        "SERVER_SOFTWARE": SERVER_SOFTWARE,  # some apps (httpbin) want it for chunked uploads
        "REMOTE_ADDR": client[0] if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": request.body.as_file(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    if client and client[1]:
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in request.headers:
        if "_" in name:
            continue  # X_Foo would pass for X-Foo: drop it, as nginx and gunicorn do
        key = name.upper().replace("-", "_")
        if key not in _SPECIAL_HEADERS:
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


@define(eq=False)
class _Exchange:
    """One WSGI call, in its thread: what C{start_response} got, what went out."""

    writer: ResponseWriter
    send: Callable[..., Any]
    status: int | None = None
    reason: str | None = None
    headers: list[tuple[str, str]] = field(factory=list)
    sent: bool = False

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response called twice without exc_info")
        code, _, reason = str(status).partition(" ")
        self.status = int(code)
        self.reason = reason or None  # the app's own phrase as given; none: the standard one
        # without the whitespace around a value, as gunicorn sends it: Django
        # gives each Set-Cookie as " name=value" (SimpleCookie's output)
        self.headers = [(str(name), str(value).strip(" \t")) for name, value in headers]
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy C{write()} callable C{start_response} returns; also each streamed chunk."""
        if self.status is None:
            raise RuntimeError("WSGI app sent a body before calling start_response")
        headers, self.sent = (None if self.sent else self.headers), True
        self.send(self.writer, self.status, headers, bytes(data), self.reason)

    def content_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == "content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None


def _send(
    writer: ResponseWriter,
    status: int,
    headers: list | None,
    data: bytes,
    reason: str | None = None,
) -> Deferred:
    """Reactor side of a streamed chunk (C{headers} only with the first)."""
    if headers is not None and not writer.started:
        writer.start(status, headers, reason)
    return writer.write(data)


@implementer(IAdapter)
@define(eq=False)
class WsgiAdapter:
    """Runs a WSGI app in a pool of C{threads} threads."""

    app: Callable[..., Any]
    reactor: Any
    threads: int = THREADS
    kind: str = "wsgi"
    _pool: CallThreads = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._pool = CallThreads(self.reactor, self.threads, "buntime-wsgi")

    def startup(self) -> Deferred:
        return succeed(None)

    def shutdown(self) -> Deferred:
        return succeed(None)

    def close(self) -> None:
        """Stop the thread pool (tests; the worker just exits)."""
        self._pool.stop()

    def handle(self, request: IncomingRequest, writer: ResponseWriter) -> Deferred:
        environ = build_environ(request)
        # The thread runs in the request's context: what the app prints carries its id.
        context = copy_context()
        d = self._pool.call(context.run, self._call, environ, writer)
        d.addCallback(self._respond, writer)
        return d

    def _respond(self, whole: tuple | None, writer: ResponseWriter) -> Deferred | None:
        if whole is None:  # streamed from the thread
            return None
        return writer.respond(*whole)

    def _call(self, environ: dict, writer: ResponseWriter) -> tuple | None:
        """In a thread: run the app; give back the whole response, or C{None} once streamed."""
        exchange = _Exchange(writer, self._blocking(_send))
        result = self.app(environ, exchange.start_response)
        try:
            if isinstance(result, list | tuple):
                body = b"".join(result)
                if not exchange.sent:
                    return self._whole(exchange, body)
                exchange.write(body)
            else:
                whole = b""
                for chunk in result:
                    if not chunk:
                        continue
                    if not exchange.sent:
                        length = exchange.content_length()
                        if length is not None and len(chunk) >= length:
                            whole = chunk  # all of it at once: answered in one piece below
                            break
                    exchange.write(chunk)  # as the app yields it (a slow drip too)
                if not exchange.sent:
                    return self._whole(exchange, whole)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if exchange.status is None:
            raise RuntimeError("WSGI app did not call start_response")
        self._blocking(ResponseWriter.end)(writer)
        return None

    @staticmethod
    def _whole(exchange: _Exchange, body: bytes) -> tuple:
        if exchange.status is None:
            raise RuntimeError("WSGI app did not call start_response")
        return exchange.status, exchange.headers, body, exchange.reason

    def _blocking(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """C{function} called in the reactor thread, waiting for its Deferred."""

        def call(*args: Any) -> Any:
            return blockingCallFromThread(self.reactor, function, *args)

        return call

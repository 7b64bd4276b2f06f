"""
ASGI apps (Starlette, FastAPI, Django's ASGI handler, plain coroutines),
run natively on the worker's asyncio loop: every request is an asyncio task.

As the ASGI spec (and uvicorn behind a proxy) has it, C{root_path} is the
app's base and C{path} is the full path, base included; frameworks route on
the part after C{root_path} (Starlette, FastAPI, Django all do), so the app
routes as if mounted at C{/} while C{request.url} stays right.  Each C{http.response.body} with
C{more_body=True} goes to the runtime at once (Server-Sent Events); an empty
one sends the headers without waiting for the first event.  After the body,
C{receive()} waits for the end of the response or a cancel and then gives
C{http.disconnect}.

A WebSocket upgrade runs the app with the C{websocket} scope (ASGI spec
2.4; C{root_path} is the base, C{subprotocols} what the client offered):
C{websocket.accept} answers 101, C{websocket.close} before it 403, and the
messages travel whole (see L{buntime.pool.child.websocket}).  As under
uvicorn, the scope offers the C{websocket.http.response} extension: an app
may refuse the handshake with a response of its own (Starlette's
C{send_denial_response}, FastAPI's C{HTTPException} in a WebSocket route).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from twisted.internet.defer import Deferred
from zope.interface import implementer

from buntime.pool.child.adapter import IAdapter, on_loop
from buntime.pool.child.body import BodyClosed
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.websocket import SocketClosed, SocketInbox
from buntime.pool.child.writer import ResponseWriter


class LifespanFailed(Exception):
    """The app answered C{lifespan.startup.failed}."""


def is_asgi(app: object) -> bool:
    """Whether C{app} is an ASGI 3 callable: C{async def (scope, receive, send)}."""
    if inspect.isclass(app):
        return False
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the method itself is what we inspect
    return call is not None and inspect.iscoroutinefunction(call)


@define(eq=False)
class _Lifespan:
    """The ASGI lifespan protocol: startup before C{Ready}, shutdown on C{Terminate}."""

    app: Any
    loop: asyncio.AbstractEventLoop
    state: dict = field(factory=dict)
    supported: bool = True
    _events: asyncio.Queue | None = None
    _task: asyncio.Task | None = None
    _waiting: asyncio.Future | None = None
    _failure: str | None = None
    _started: bool = False

    async def startup(self) -> None:
        self._events = asyncio.Queue()
        self._task = self.loop.create_task(self._run())
        await self._exchange("lifespan.startup")
        if self._failure is not None:
            raise LifespanFailed(f"ASGI lifespan startup failed: {self._failure}")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._exchange("lifespan.shutdown")
        if self._failure is not None:
            print(f"ASGI lifespan shutdown failed: {self._failure}", file=sys.stderr)

    async def _exchange(self, event: str) -> None:
        assert self._events is not None and self._task is not None
        self._waiting = self.loop.create_future()
        await self._events.put({"type": event})
        await asyncio.wait({self._waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as error:
            if self._failure is not None:
                return
            if not self._started:
                # Raising before completing startup means "no lifespan here" (uvicorn's "auto").
                print(f"ASGI lifespan unsupported ({error!r}); going on", file=sys.stderr)
            else:
                print(f"ASGI lifespan failed: {error!r}", file=sys.stderr)
        finally:
            self.supported = False

    async def _receive(self) -> dict:
        assert self._events is not None
        return await self._events.get()

    async def _send(self, message: dict) -> None:
        kind = message.get("type", "")
        if kind.endswith(".failed"):
            self._failure = str(message.get("message", "")) or "no message"
        elif kind == "lifespan.startup.complete":
            self._started = True
        if kind.startswith("lifespan.") and self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)


@implementer(IAdapter)
@define(eq=False)
class AsgiAdapter:
    """Runs an ASGI app on C{loop}, the asyncio loop under the worker's reactor."""

    app: Any
    loop: asyncio.AbstractEventLoop
    kind: str = "asgi"
    _lifespan: _Lifespan = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._lifespan = _Lifespan(self.app, self.loop)

    def startup(self) -> Deferred:
        return Deferred.fromFuture(self.loop.create_task(self._lifespan.startup()))

    def shutdown(self) -> Deferred:
        return Deferred.fromFuture(self.loop.create_task(self._lifespan.shutdown()))

    def handle(self, request: IncomingRequest, writer: ResponseWriter) -> Deferred:
        if request.socket is not None:
            serving = self.serve_websocket(request, request.socket, writer)
        else:
            serving = self.serve(request, writer)
        return Deferred.fromFuture(self.loop.create_task(serving))

    def scope(self, request: IncomingRequest) -> dict:
        """The ASGI C{http} scope of C{request}."""
        path = request.base + request.path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method.upper(),
            "scheme": request.scheme,
            "path": unquote(path),
            "raw_path": path.encode("utf-8"),
            "query_string": request.query.encode("utf-8"),
            "root_path": unquote(request.base),
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers
            ],
            "client": request.client,
            "server": request.local_addr or request.server,  # the socket's, as uvicorn gives
            "state": dict(self._lifespan.state),
            "extensions": {},
        }

    async def serve(self, request: IncomingRequest, writer: ResponseWriter) -> None:
        """Run the app for one request."""
        body = request.body
        loop = self.loop
        body_done = False

        async def receive() -> dict:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await on_loop(body.next_chunk(), loop)
                except BodyClosed:
                    body_done = True
                    return {"type": "http.disconnect"}
                body_done = chunk is None or body.exhausted
                return {"type": "http.request", "body": chunk or b"", "more_body": not body_done}
            await on_loop(body.when_closed(), loop)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                writer.start(message["status"], message.get("headers", ()))
            elif kind == "http.response.body":
                data = bytes(message.get("body", b""))
                if message.get("more_body", False):
                    await on_loop(writer.write(data), loop)
                else:
                    await on_loop(writer.end(data), loop)
                    body.close()
            elif kind != "http.response.trailers":
                raise ValueError(f"unsupported ASGI message type {kind!r}")

        try:
            await self.app(self.scope(request), receive, send)
        finally:
            body.close()
        if not writer.started:
            raise RuntimeError("ASGI app returned without sending a response")
        if not writer.finished:
            raise RuntimeError("ASGI app returned before completing its response")

    def websocket_scope(self, request: IncomingRequest) -> dict:
        """The ASGI C{websocket} scope of C{request}: the C{http} one, less the method."""
        scope = self.scope(request)
        del scope["method"]
        scope["type"] = "websocket"
        scope["asgi"] = {"version": "3.0", "spec_version": "2.4"}
        scope["scheme"] = "wss" if request.scheme == "https" else "ws"
        scope["extensions"] = {"websocket.http.response": {}}
        offered = ",".join(
            value for name, value in request.headers if name.lower() == "sec-websocket-protocol"
        )
        scope["subprotocols"] = [token.strip() for token in offered.split(",") if token.strip()]
        return scope

    async def serve_websocket(
        self, request: IncomingRequest, socket: SocketInbox, writer: ResponseWriter
    ) -> None:
        """
        Run the app for one WebSocket (the ASGI C{websocket} scope).  Accepting
        is a 101 response, closing before that a 403 (as uvicorn answers), and
        a C{websocket.http.response} before that the app's own response.
        """
        session = _AsgiSocket(self.loop, socket, writer)
        try:
            await self.app(self.websocket_scope(request), session.receive, session.send)
        except SocketClosed:
            pass  # the client left while the app was sending: not the app's fault
        if not session.accepted:
            if session.responding and not session.closed:
                raise RuntimeError("ASGI app returned before completing its denial response")
            if not session.closed:
                raise RuntimeError("ASGI app returned without accepting or closing the WebSocket")
            return
        if not session.closed and socket.closed is None:
            writer.close_socket(1000, "")
        await on_loop(writer.end(), self.loop)


class _AsgiSocket:
    """One WebSocket as an ASGI app's C{receive} and C{send} see it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, socket: SocketInbox, writer: ResponseWriter
    ) -> None:
        self.loop = loop
        self.socket = socket
        self.writer = writer
        self.connected = self.accepted = self.closed = self.responding = False

    async def receive(self) -> dict:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        socket = self.socket
        message = await on_loop(socket.next(), self.loop)
        if isinstance(message, int):
            reason = socket.closed[1] if socket.closed is not None else ""
            return {"type": "websocket.disconnect", "code": message, "reason": reason}
        binary, data = message
        if binary:
            return {"type": "websocket.receive", "bytes": data}
        return {"type": "websocket.receive", "text": data.decode("utf-8")}

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if self.closed or self.socket.closed is not None:
            if kind == "websocket.close":
                return  # closing what the client closed: nothing to do
            raise SocketClosed(f"cannot send {kind!r}: the WebSocket is closed")
        if kind == "websocket.accept":
            await self._accept(message)
        elif kind == "websocket.send":
            await self._send(message)
        elif kind == "websocket.close":
            await self._close(message)
        elif kind.startswith("websocket.http.response."):
            await self._respond(message)
        else:
            raise ValueError(f"unsupported ASGI message type {kind!r}")

    async def _accept(self, message: dict) -> None:
        if self.accepted or self.responding:
            raise RuntimeError("the WebSocket is already accepted or answered")
        headers = [
            (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            for name, value in message.get("headers") or ()
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            headers.append(("sec-websocket-protocol", subprotocol))
        self.writer.start(101, headers)
        await on_loop(self.writer.write(b""), self.loop)
        self.accepted = True

    async def _send(self, message: dict) -> None:
        if not self.accepted:
            raise RuntimeError("websocket.send before websocket.accept")
        text = message.get("text")
        if text is not None:
            await on_loop(self.writer.send_message(text.encode("utf-8"), False), self.loop)
        else:
            await on_loop(self.writer.send_message(bytes(message["bytes"]), True), self.loop)

    async def _respond(self, message: dict) -> None:
        """The app refuses the handshake with a response of its own (instead of accepting)."""
        kind = message["type"]
        if self.accepted:
            raise RuntimeError(f"{kind} after websocket.accept")
        if kind == "websocket.http.response.start":
            if self.responding:
                raise RuntimeError("the denial response has already started")
            status = int(message["status"])
            if status < 200:
                raise ValueError(f"invalid status for a denial response: {status}")
            self.writer.start(status, message.get("headers") or ())
            self.responding = True
        elif kind == "websocket.http.response.body":
            if not self.responding:
                raise RuntimeError("websocket.http.response.body before its start")
            data = bytes(message.get("body", b""))
            if message.get("more_body", False):
                await on_loop(self.writer.write(data), self.loop)
            else:
                self.closed = True
                await on_loop(self.writer.end(data), self.loop)
        else:
            raise ValueError(f"unsupported ASGI message type {kind!r}")

    async def _close(self, message: dict) -> None:
        if self.responding:
            raise RuntimeError("websocket.close during a denial response")
        self.closed = True
        if self.accepted:
            code = int(message.get("code") or 1000)
            self.writer.close_socket(code, message.get("reason") or "")
        else:
            await on_loop(self.writer.respond(403, [], b""), self.loop)

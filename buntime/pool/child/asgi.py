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
        return Deferred.fromFuture(self.loop.create_task(self.serve(request, writer)))

    def scope(self, request: IncomingRequest) -> dict:
        """The ASGI C{http} scope of C{request}."""
        path = request.base + request.path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
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
            "server": request.server,
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

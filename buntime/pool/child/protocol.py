"""
The worker's end of the AMP channel: requests in, events out.

Each L{commands.StartRequest} gets a L{BodyReader} and a L{ResponseWriter}
and goes to the app's adapter; many run at once, each in its own context
whose output carries the request's C{x-request-id}.  An app exception is
logged (traceback on stderr) and reported as L{events.ResponseError}.

A call to the app is in flight until the app returns, which may be well
after its response went out (an ASGI background task, a WSGI iterable still
being closed): L{commands.Terminate} waits for every such call before the
app's C{on_terminate} and lifespan shutdown, as uvicorn and gunicorn do.
The runtime bounds that wait by the app's C{timeout}.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from buntime._json import dumps
from buntime.once import Once
from buntime.pool import commands, events
from buntime.pool.child.adapter import call
from buntime.pool.child.body import BodyClosed, BodyReader
from buntime.pool.child.loader import LoadedApp
from buntime.pool.child.memory import release_memory
from buntime.pool.child.output import in_request
from buntime.pool.child.output import request_id as output_request_id
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.websocket import GONE, SocketInbox, handshake_error, wants_websocket
from buntime.pool.child.writer import RequestCancelled, ResponseWriter
from buntime.pool.stream import fit_text
from buntime.pool.wire import FastAMP, responder


def one_line(error: BaseException) -> str:
    """C{error} as one line: C{"ValueError: bad input"}."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _survey(pairs: list[list[str]]) -> tuple[str | None, bool, bool]:
    """
    One pass over a request's header C{pairs}: its C{x-request-id}, whether
    it has an C{x-base} (a client's, dropped), whether it names an C{upgrade}.
    """
    request_id, based, upgrade = None, False, False
    for name, value in pairs:
        lowered = name.lower()
        if lowered == "x-request-id":
            if request_id is None:
                request_id = value
        elif lowered == "x-base":
            based = True
        elif lowered == "upgrade":
            upgrade = True
    return request_id, based, upgrade


def report(failure: Failure) -> str:
    """The traceback of C{failure} as Python prints it, chained exceptions included."""
    error = failure.value
    return "".join(traceback.format_exception(type(error), error, failure.getTracebackObject()))


@define(eq=False)
class _InFlight:
    body: BodyReader
    writer: ResponseWriter
    request_id: str | None = None
    done: Deferred | None = None
    cancelled: bool = False
    socket: SocketInbox | None = None


WEBSOCKET_UNSUPPORTED = (
    '{"error":{"code":"WEBSOCKET_UNSUPPORTED",'
    '"message":"WebSockets need an ASGI app; this is a %s app"}}'
)


class ChildProtocol(FastAMP):
    """
    Serves C{app} (set with L{serve} once loaded) to the runtime.
    C{on_lost} runs when the channel closes (the worker then exits),
    C{on_terminated} once C{Terminate} is answered.
    """

    def __init__(
        self,
        reactor: Any,
        loop: asyncio.AbstractEventLoop | None = None,
        on_lost: Callable[[], None] | None = None,
        on_terminated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.loop = loop
        self.app: LoadedApp | None = None
        self.low_memory = False
        self._on_lost = on_lost
        self._on_terminated = on_terminated
        self._requests: dict[int, _InFlight] = {}
        self._settled: Once | None = None
        self._held: list[bytes] | None = []
        """What came from the runtime before the app was loaded (see L{dataReceived})."""

    # -- startup -------------------------------------------------------------------

    def serve(self, app: LoadedApp) -> Deferred:
        """
        Start serving C{app}: tell the runtime it is C{Ready}, then take the
        requests it sent ahead of that, but those it cancelled meanwhile
        (their client left, or they timed out waiting for this start): the
        app never sees them (a WSGI call could not be stopped once begun).
        """
        self.app = app
        ready = self.callRemote(events.Ready, pid=os.getpid(), kind=app.kind)
        held, self._held = self._held, None
        if held:
            boxes: list[Any] = []
            # collected first, not run (on the instance: the usual path pays nothing)
            self.ampBoxReceived = boxes.append  # type: ignore[method-assign,assignment]
            try:
                super().dataReceived(b"".join(held))
            finally:
                del self.ampBoxReceived
            start, cancel = commands.StartRequest.commandName, commands.CancelRequest.commandName
            cancelled = {box.get(b"rid") for box in boxes if box.get(b"_command") == cancel}
            for box in boxes:
                if box.get(b"_command") != start or box.get(b"rid") not in cancelled:
                    super().ampBoxReceived(box)
        return ready

    def dataReceived(self, data: bytes) -> None:
        """
        The runtime's boxes; held until the app is loaded (L{serve}): the
        runtime may send a cold start's first request with the launch,
        ahead of the worker's C{Ready}.
        """
        held = self._held
        if held is not None and self.app is None:
            held.append(data)
            return
        super().dataReceived(data)

    def startup_failed(self, error: str, detail: str) -> Deferred:
        """
        Tell the runtime the app could not be loaded.  What it sent ahead is
        dropped (it fails those requests itself), and what comes next (the
        answer to this) is read.
        """
        self._held = None
        return self.callRemote(
            events.StartupFailed, error=fit_text(error, 4096), detail=fit_text(detail)
        )

    # -- requests ----------------------------------------------------------------

    @responder(commands.StartRequest)
    def start_request(self, rid: int, head: str, body: bytes) -> dict:
        try:
            method, path, base, pairs, remote, more, local, version = commands.parse_request_head(
                head
            )
        except (ValueError, TypeError):
            ResponseWriter(self, rid).fail(f"malformed request head: {head[:200]!r}")
            return {}
        reader = BodyReader.start(self.reactor, body, more)
        writer = ResponseWriter(self, rid)
        if self.app is None:
            writer.fail("the worker has no app loaded")
            return {}
        request_id, based, upgrade = _survey(pairs)
        socket = None
        if upgrade and wants_websocket(method, pairs):
            if self.app.kind != "asgi":
                body = (WEBSOCKET_UNSUPPORTED % self.app.kind).encode()
                writer.respond(501, [("content-type", "application/json")], body)
                return {}
            refused = handshake_error(pairs)
            if refused is not None:  # answered here, as uvicorn does: the app never sees it
                body = dumps({"error": {"code": "BAD_REQUEST", "message": refused}}).encode()
                headers = [("content-type", "application/json"), ("sec-websocket-version", "13")]
                writer.respond(400, headers, body)
                return {}
            socket = SocketInbox()
        inflight = _InFlight(reader, writer, request_id, socket=socket)
        self._requests[rid] = inflight
        # the app's base as it sees it: x-base is the runtime's, never the client's
        if based:
            pairs = [pair for pair in pairs if pair[0].lower() != "x-base"]
        pairs.append(["x-base", base])
        # the app's output, and the tasks and threads it starts, write for this request
        token = output_request_id.set(request_id)
        try:
            request = IncomingRequest(
                method, path, base, pairs, reader, remote, socket, local, version
            )
            done = self.app.adapter.handle(request, writer)
        except Exception:
            done = Deferred()
            done.errback()
        finally:
            output_request_id.reset(token)
        inflight.done = done
        done.addBoth(self._finished, rid, inflight)
        return {}

    @commands.RequestBody.responder
    def request_body(self, rid: int, data: bytes) -> dict | Deferred:
        inflight = self._requests.get(rid)
        waiting = inflight.body.feed(data) if inflight is not None else None
        if waiting is None:
            return {}
        return waiting.addCallback(lambda _: {})

    @responder(commands.RequestBodyEnd)
    def request_body_end(self, rid: int) -> dict:
        inflight = self._requests.get(rid)
        if inflight is not None:
            inflight.body.finish()
        return {}

    @commands.WebSocketReceive.responder
    def websocket_receive(
        self, rid: int, data: bytes, binary: bool, final: bool
    ) -> dict | Deferred:
        inflight = self._requests.get(rid)
        socket = inflight.socket if inflight is not None else None
        waiting = socket.feed(data, binary, final) if socket is not None else None
        if waiting is None:
            return {}
        return waiting.addCallback(lambda _: {})

    @responder(commands.WebSocketDisconnect)
    def websocket_disconnect(self, rid: int, code: int, reason: str) -> dict:
        inflight = self._requests.get(rid)
        if inflight is not None and inflight.socket is not None:
            inflight.socket.disconnect(code, reason)
        return {}

    @responder(commands.CancelRequest)
    def cancel_request(self, rid: int) -> dict:
        inflight = self._requests.get(rid)
        if inflight is not None:
            self._cancel(inflight)
        return {}

    def _cancel(self, inflight: _InFlight) -> None:
        inflight.cancelled = True
        inflight.writer.cancel()
        inflight.body.abort()
        if inflight.socket is not None:
            inflight.socket.disconnect(GONE)
        if inflight.done is not None:
            inflight.done.cancel()

    def _finished(self, result: object, rid: int, inflight: _InFlight) -> None:
        if self._requests.get(rid) is inflight:
            del self._requests[rid]
            if not self._requests and self._settled is not None:
                settled, self._settled = self._settled, None
                settled.fire(None)
        inflight.body.close()
        if isinstance(result, Failure):
            if inflight.cancelled and result.check(CancelledError, RequestCancelled, BodyClosed):
                return
            error = one_line(result.value)
            with in_request(inflight.request_id):
                sys.stderr.write(f"Request {rid} failed: {error}\n{report(result)}")
            inflight.writer.fail(error)
        elif not inflight.writer.finished and not inflight.cancelled:
            inflight.writer.fail("the app did not complete its response")

    # -- lifecycle -------------------------------------------------------------

    @commands.Idle.responder
    def idle(self) -> Deferred:
        d = self._hook("on_idle")
        if self.low_memory:
            d.addCallback(lambda _: release_memory())
        return d.addCallback(lambda _: {})

    def settled(self) -> Deferred:
        """Fires once no call to the app is in flight (work after a response included)."""
        if not self._requests:
            return succeed(None)
        if self._settled is None:
            self._settled = Once()
        return self._settled.wait()

    @commands.Terminate.responder
    def terminate(self) -> Deferred:
        d = self.settled()
        d.addCallback(lambda _: self._hook("on_terminate"))
        if self.app is not None:
            adapter = self.app.adapter
            d.addCallback(lambda _: adapter.shutdown())
            d.addErrback(self._log_failure, "ASGI lifespan shutdown")
        return d.addCallback(self._answer_terminate)

    def _answer_terminate(self, _: object) -> dict:
        if self._on_terminated is not None:
            self.reactor.callLater(0, self._on_terminated)
        return {}

    def _hook(self, name: str) -> Deferred:
        hook = self.app.hook(name) if self.app is not None else None
        if hook is None:
            return succeed(None)
        return call(hook, self.loop).addErrback(self._log_failure, name)

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        sys.stderr.write(f"{what} failed: {one_line(failure.value)}\n{report(failure)}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        for inflight in list(self._requests.values()):
            self._cancel(inflight)
        self._requests.clear()
        if self._on_lost is not None:
            self._on_lost()

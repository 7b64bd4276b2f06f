"""
The requests in flight on a worker: L{Worker.request} sends one as a
L{WorkerExchange} and fires with a L{Response} as soon as the worker starts
answering; a streamed body is a L{ResponseStream} whose consumer paces the
worker (backpressure).  The worker's answers (L{buntime.pool.channel}) land
here, in the L{InFlight} side of a L{buntime.pool.worker.Worker}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from attrs import define, field
from eliot import Action, current_action
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from buntime.http import Request, Response
from buntime.logs import log
from buntime.once import Once
from buntime.pool.commands import (
    CHUNK_SIZE,
    CancelRequest,
    RequestBody,
    RequestBodyEnd,
    StartRequest,
    address,
    request_head,
)
from buntime.pool.events import response_start
from buntime.pool.output import Assembler
from buntime.pool.status import ACTIVE, IDLE, OFFLINE, STARTING, STOPPING, WorkerStatus
from buntime.pool.websocket import WorkerSocket
from buntime.stream import PushedStream

if TYPE_CHECKING:
    from buntime.pool.channel import WorkerChannel


RECENT_ACTIONS = 64
"""Finished requests per worker whose eliot actions late app output still finds."""


class AppError(Exception):
    """The app failed on a request (the worker sent L{ResponseError})."""


class WorkerGone(Exception):
    """The worker process died (or its channel closed) with the request in flight."""


class RequestTimedOut(Exception):
    """The worker did not start answering within the request's timeout."""


class NotStarted(Exception):
    """
    A request sent to a worker ahead of its C{Ready} never reached the app:
    the worker did not become ready (C{timed_out}: not within the request's
    timeout, which then bounds its wait as a queue's would).  It may go to
    another worker.
    """

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


@define(eq=False)
class ResponseStream(PushedStream):
    """
    A streamed response body: a L{PushedStream} fed by L{ResponseBody} chunks.

    Each chunk's AMP answer is its C{ack}: it fires only when the consumer
    takes the chunk, so the worker produces no faster than the client reads.
    Call L{aclose} when the client goes away: the worker is told to stop.
    """

    taken: ClassVar[object] = MappingProxyType({})
    """The (empty) AMP answer; AMP copies it, so one read-only mapping does for all."""


@define(eq=False)
class WorkerExchange:
    """One request in flight on a worker; C{outcome} is set when it is finished."""

    rid: int
    method: str
    path: str
    started_at: float
    response: Deferred = field(repr=False)
    stream: ResponseStream | WorkerSocket | None = None
    deadline: float = float("inf")
    """When the request times out if its response has not started (see L{Worker._expire})."""
    started: bool = False
    outcome: str | None = None  # ok, error, cancelled, timeout, gone
    elapsed: float = 0.0
    request_id: str | None = None
    action: Action | None = None
    """The request's eliot action: what the worker says of it is logged there."""


class InFlight:
    """
    The requests side of a L{buntime.pool.worker.Worker}: sending requests,
    their deadlines and cancellation, and the worker's answers to them.  A
    mixin: the state it works on is the worker's (declared below for the
    type checker).
    """

    if TYPE_CHECKING:
        clock: IReactorTime
        status: WorkerStatus
        protocol: WorkerChannel
        ephemeral: bool
        request_count: int
        error_count: int
        responded: int
        total_response_time: float
        consecutive_timeouts: int
        last_used: float
        idle_sent: bool
        on_finished: list[Callable[[Any, WorkerExchange], object]]
        _exchanges: dict[int, WorkerExchange]
        _early: dict[int, float]
        _next_rid: int
        _expiry: IDelayedCall | None
        _recent: OrderedDict[str, Action]
        _output: Assembler
        _drained: Once | None
        _connected: bool

        @property
        def label(self) -> str: ...

        def tags(self) -> dict[str, object]: ...

    def request(self, request: Request, base: str, timeout: float) -> Deferred:
        """
        Send C{request} (its URL is the path inside the app, base stripped).
        Fires with the L{Response} once the worker starts answering; fails with
        L{AppError}, L{WorkerGone} or, after C{timeout} seconds without an
        answer, L{RequestTimedOut}.  Cancelling it cancels the request.

        A worker still starting takes it ahead of its C{Ready} (its channel
        must be up): C{timeout} then bounds the wait for the worker (not an
        ephemeral one's: its request waits for it as long as its start may
        take), and again its answer once it is ready; if it never is,
        L{NotStarted}.
        """
        now = self.clock.seconds()
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        response: Deferred = Deferred(lambda _: self._abandon(rid))
        exchange = WorkerExchange(
            rid, request.method, request.path, now, response, request_id=request.request_id
        )
        status = self.status
        if status in (STOPPING, OFFLINE) or not self._connected:
            response.errback(WorkerGone(f"worker {self.label} is {status}"))
            return response
        self._exchanges[rid] = exchange
        self.request_count += 1
        self.last_used = now
        self.idle_sent = False
        if status == IDLE:
            self.status = ACTIVE
        elif status == STARTING:
            self._early[rid] = timeout
        if status != STARTING or not self.ephemeral:  # (an ephemeral one's: once it is ready)
            # One timer per worker, for the earliest deadline, rather than one per request.
            exchange.deadline = now + timeout
            if self._expiry is None:
                self._expiry = self.clock.callLater(timeout, self._expire)
        exchange.action = current_action()
        try:
            rest = self._start(exchange, request, base)
        except Exception:
            self._send_failed(Failure(), exchange)
            return response
        if rest is not None:
            sending = Deferred.fromCoroutine(self._send_rest(exchange, rest))
            sending.addErrback(self._send_failed, exchange)
        return response

    def _start(self, exchange: WorkerExchange, request: Request, base: str) -> Any:
        """
        Send L{StartRequest} with the first chunk of the body; what is left
        to send (a view of the bytes or the stream), or C{None} if nothing.
        """
        query = request.query
        body = request.body
        first, rest = b"", None  # type: tuple[bytes, Any]
        if type(body) is bytes and len(body) <= CHUNK_SIZE:  # the usual
            first = body
        elif isinstance(body, bytes | bytearray | memoryview):
            if len(body) <= CHUNK_SIZE:
                first = bytes(body)
            else:
                whole = memoryview(bytes(body))
                first, rest = whole[:CHUNK_SIZE].tobytes(), whole[CHUNK_SIZE:]
        else:
            rest = body
        head = request_head(
            request.method,
            request.path + ("?" + query if query else ""),
            base,
            request.headers.items(),
            address(request.remote_addr, request.remote_port),
            rest is not None,
            address(*request.local_addr) if request.local_addr is not None else "",
            request.http_version,
        )
        self.protocol.callRemote(StartRequest, rid=exchange.rid, head=head, body=first)
        return rest

    async def _send_rest(self, exchange: WorkerExchange, rest: Any) -> None:
        if isinstance(rest, memoryview):
            await self._send_chunks(exchange, rest)
        else:
            async for chunk in rest:
                if not await self._send_chunks(exchange, memoryview(bytes(chunk))):
                    return
        if exchange.outcome is None:
            self.protocol.callRemote(RequestBodyEnd, rid=exchange.rid)

    async def _send_chunks(self, exchange: WorkerExchange, data: memoryview) -> bool:
        for offset in range(0, len(data), CHUNK_SIZE):
            if exchange.outcome is not None:
                return False
            piece = data[offset : offset + CHUNK_SIZE].tobytes()
            await self.protocol.callRemote(RequestBody, rid=exchange.rid, data=piece)
        return exchange.outcome is None

    def _send_failed(self, failure: Failure, exchange: WorkerExchange) -> None:
        """The request body could not be delivered (client upload broke, channel closed)."""
        if exchange.outcome is not None:
            return
        self.protocol.callRemote(CancelRequest, rid=exchange.rid)
        self.error_count += 1
        self._finish(exchange, "error")
        if exchange.stream is not None:
            exchange.stream.fail(AppError(failure.getErrorMessage()))
        else:
            exchange.response.errback(AppError(f"sending the request: {failure.getErrorMessage()}"))

    def _expire(self) -> None:
        """Time out the requests past their deadline; wait for the next deadline."""
        self._expiry = None
        now = self.clock.seconds()
        for exchange in [e for e in self._exchanges.values() if e.deadline <= now]:
            self._timed_out(exchange)
        upcoming = min((e.deadline for e in self._exchanges.values()), default=None)
        if upcoming is not None and upcoming != float("inf"):
            self._expiry = self.clock.callLater(max(0.0, upcoming - now), self._expire)

    def _timed_out(self, exchange: WorkerExchange) -> None:
        exchange.deadline = float("inf")
        if exchange.outcome is not None:
            return
        self.protocol.callRemote(CancelRequest, rid=exchange.rid)
        if exchange.rid in self._early:  # the worker is still starting: the app never had it
            self._finish(exchange, "cancelled")
            exchange.response.errback(
                NotStarted(f"worker {self.label} was not ready in time", timed_out=True)
            )
            return
        self.error_count += 1
        self.consecutive_timeouts += 1
        self._finish(exchange, "timeout")
        exchange.response.errback(
            RequestTimedOut(f"no response within {exchange.elapsed * 1000:.0f} ms")
        )

    def _abandon(self, rid: int) -> None:
        """The client went away: stop the worker's work on C{rid}."""
        exchange = self._exchanges.get(rid)
        if exchange is None:
            return
        if self._connected:
            self.protocol.callRemote(CancelRequest, rid=rid)
        self._finish(exchange, "cancelled")

    def _finish(self, exchange: WorkerExchange, outcome: str) -> None:
        if exchange.outcome is not None:
            return
        now = self.clock.seconds()
        exchange.outcome = outcome
        exchange.elapsed = now - exchange.started_at
        exchange.deadline = float("inf")
        self._exchanges.pop(exchange.rid, None)
        if self._early and self._early.pop(exchange.rid, None) is not None:
            self.request_count -= 1  # held by a worker still starting: the app never had it
        request_id = exchange.request_id
        if request_id is not None:
            if exchange.action is not None:
                recent = self._recent
                recent[request_id] = exchange.action
                if len(recent) > RECENT_ACTIONS:
                    recent.popitem(last=False)
            self._output.flush_request(request_id)  # in the log before the request's end
        self.last_used = now
        if not self._exchanges and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.fire(None)
        for listener in list(self.on_finished):
            try:
                listener(self, exchange)
            except Exception as error:
                _listener_failed(error)

    def _ready_for_early(self) -> None:
        """
        The worker is ready: the requests it took ahead of that have their
        C{timeout} again from now (L{_expire} finds the new deadlines).
        """
        early, self._early = self._early, {}
        now = self.clock.seconds()
        for rid, timeout in early.items():
            exchange = self._exchanges.get(rid)
            if exchange is not None:
                exchange.deadline = now + timeout
        if early and self._expiry is None:  # (an ephemeral worker's request had none)
            self._expiry = self.clock.callLater(min(early.values()), self._expire)

    def _fail_early(self, reason: str) -> None:
        """The worker will never be ready: the requests it took ahead fail (L{NotStarted})."""
        early, self._early = self._early, {}
        for rid in early:
            exchange = self._exchanges.get(rid)
            if exchange is None or exchange.outcome is not None:
                continue
            self.request_count -= 1  # the app never had it (as in L{_finish})
            self._finish(exchange, "gone")
            exchange.response.errback(NotStarted(reason))

    def response_started(self, rid: int, head: str, body: bytes) -> None:
        exchange = self._exchanges.get(rid)
        if exchange is None or exchange.started:
            return
        try:
            status, parsed, end, reason = response_start(head)
        except (ValueError, TypeError):
            self.response_failed(rid, f"malformed response head: {head[:200]!r}")
            return
        exchange.started = True
        exchange.deadline = float("inf")
        self.consecutive_timeouts = 0
        self.responded += 1
        self.total_response_time += self.clock.seconds() - exchange.started_at
        if end:
            self._finish(exchange, "ok")
            exchange.response.callback(Response(status, parsed, body, reason))
            return
        if status == 101:  # the app accepted a WebSocket
            socket = WorkerSocket(self.protocol.callRemote, rid, lambda: self._abandon(rid))
            exchange.stream = socket
            exchange.response.callback(Response(status, parsed, socket, reason))
            return
        stream = ResponseStream(lambda: self._abandon(rid))
        if body:
            stream.feed(body)
        exchange.stream = stream
        exchange.response.callback(Response(status, parsed, stream, reason))

    def response_body(self, rid: int, data: bytes) -> Deferred:
        exchange = self._exchanges.get(rid)
        stream = exchange.stream if exchange is not None else None
        if type(stream) is not ResponseStream or not data:
            return succeed({})
        ack: Deferred = Deferred()
        stream.feed(data, ack)
        return ack

    def socket_message(self, rid: int, data: bytes, binary: bool, final: bool) -> Deferred:
        """A piece of the app's message on its WebSocket, answered once the client can take more."""
        exchange = self._exchanges.get(rid)
        socket = exchange.stream if exchange is not None else None
        if type(socket) is not WorkerSocket:
            return succeed({})
        return socket.app_message(data, binary, final)

    def socket_closed(self, rid: int, code: int, reason: str) -> None:
        """The app closes its WebSocket."""
        exchange = self._exchanges.get(rid)
        socket = exchange.stream if exchange is not None else None
        if type(socket) is WorkerSocket:
            socket.app_closed(code, reason)

    def response_ended(self, rid: int) -> None:
        exchange = self._exchanges.get(rid)
        if exchange is None or exchange.stream is None:
            return
        self._finish(exchange, "ok")
        exchange.stream.end()

    def response_failed(self, rid: int, error: str) -> None:
        exchange = self._exchanges.get(rid)
        if exchange is None:
            return
        self.error_count += 1
        with exchange.action.context() if exchange.action is not None else nullcontext():
            log(
                "error",
                "buntime:worker:request-error",
                f"App {self.label} failed on a request",
                **self.tags(),
                request_id=exchange.request_id,
                method=exchange.method,
                path=exchange.path,
                error=error,
            )
        self._finish(exchange, "error")
        if exchange.stream is not None:
            exchange.stream.fail(AppError(error))
        else:
            exchange.response.errback(AppError(error))


def _listener_failed(error: Exception) -> None:
    log("error", "buntime:worker:listener", "A worker listener failed", error=repr(error))

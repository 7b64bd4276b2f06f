"""
One worker process as the runtime sees it: the AMP protocol that answers the
worker's events, and the state the pool keeps about it (status, counters,
requests in flight).

A request is one L{WorkerExchange}: L{Worker.request} sends it and fires with a
L{Response} as soon as the worker starts answering; a streamed body is a
L{ResponseStream} whose consumer paces the worker (backpressure).
"""

from __future__ import annotations

import os
import signal
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from attrs import define, field
from eliot import Action, current_action
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from buntime.http import Request, Response
from buntime.logs import log
from buntime.once import Once
from buntime.pool.commands import (
    CHUNK_SIZE,
    CancelRequest,
    Idle,
    RequestBody,
    RequestBodyEnd,
    StartRequest,
    Terminate,
    address,
    request_head,
)
from buntime.pool.events import (
    Ready,
    ResponseBody,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    StartupFailed,
    WebSocketClose,
    WebSocketSend,
    response_start,
)
from buntime.pool.launch.launcher import ILauncher, LaunchedProcess, LaunchSpec
from buntime.pool.output import Assembler, Record, Write
from buntime.pool.websocket import WorkerSocket
from buntime.pool.wire import FastAMP, responder
from buntime.stream import PushedStream


class WorkerStatus(StrEnum):
    """Where a worker is in its life: its C{status} in the pool's stats."""

    STARTING = "starting"
    ACTIVE = "active"
    IDLE = "idle"
    EPHEMERAL = "ephemeral"
    STOPPING = "stopping"
    OFFLINE = "offline"


STARTING, ACTIVE, IDLE, EPHEMERAL, STOPPING, OFFLINE = WorkerStatus
READY = frozenset({ACTIVE, IDLE, EPHEMERAL})
"""The states of a worker that takes requests."""
EARLY_FLUSH = 4
"""Requests the runtime sends a worker before it writes them out, even mid-turn."""
KILL_WAIT = 5.0
"""Seconds to wait for a process to go away after SIGKILL before giving up on it."""
RECENT_ACTIONS = 64
"""Finished requests per worker whose eliot actions late app output still finds."""


class StartupError(Exception):
    """The worker never became ready: C{error} is one line, C{detail} a traceback."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class AppError(Exception):
    """The app failed on a request (the worker sent L{ResponseError})."""


class WorkerGone(Exception):
    """The worker process died (or its channel closed) with the request in flight."""


class RequestTimedOut(Exception):
    """The worker did not start answering within the request's timeout."""


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


class WorkerChannel(FastAMP):
    """
    The runtime's end of a worker's AMP channel: answers L{buntime.pool.events}.
    Requests go out in fours at the latest: the worker starts on them while
    the runtime reads more.
    """

    flush_every = EARLY_FLUSH

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.clock = worker.clock

    @Ready.responder
    def got_ready(self, pid: int, kind: str) -> dict:
        self.worker.ready_received(pid, kind)
        return {}

    @StartupFailed.responder
    def got_startup_failed(self, error: str, detail: str) -> dict:
        self.worker.startup_failed(error, detail)
        return {}

    @responder(ResponseStart)
    def got_response_start(self, rid: int, head: str, body: bytes) -> dict:
        self.worker.response_started(rid, head, body)
        return {}

    @ResponseBody.responder
    def got_response_body(self, rid: int, data: bytes) -> Deferred:
        return self.worker.response_body(rid, data)

    @WebSocketSend.responder
    def got_websocket_send(self, rid: int, data: bytes, binary: bool, final: bool) -> Deferred:
        return self.worker.socket_message(rid, data, binary, final)

    @responder(WebSocketClose)
    def got_websocket_close(self, rid: int, code: int, reason: str) -> dict:
        self.worker.socket_closed(rid, code, reason)
        return {}

    @responder(ResponseEnd)
    def got_response_end(self, rid: int) -> dict:
        self.worker.response_ended(rid)
        return {}

    @responder(ResponseError)
    def got_response_error(self, rid: int, error: str) -> dict:
        self.worker.response_failed(rid, error)
        return {}

    def connectionMade(self) -> None:
        super().connectionMade()
        self.worker.channel_made()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.worker.channel_lost(reason)


@define(eq=False)
class Worker:
    """
    One worker process and what the pool knows about it.  C{ready} fires when
    the app is loaded (or fails with L{StartupError}); C{exited} with the exit
    code once the process is gone.  Listeners in C{on_finished} hear about
    every finished L{WorkerExchange}, those in C{on_gone} about the worker's end.
    """

    id: str
    app_key: str
    name: str
    version: str
    clock: IReactorTime = field(repr=False)
    ephemeral: bool = False
    status: WorkerStatus = STARTING
    pid: int | None = None
    launch_error: BaseException | None = None
    kind: str | None = None
    process: LaunchedProcess | None = field(default=None, repr=False)
    protocol: WorkerChannel = field(init=False, repr=False)
    created_at: float = field(init=False)
    last_used: float = field(init=False)
    request_count: int = 0
    error_count: int = 0
    responded: int = 0
    total_response_time: float = 0.0
    consecutive_timeouts: int = 0
    idle_sent: bool = False
    healthy: bool = True
    on_finished: list[Callable[[Worker, WorkerExchange], object]] = field(factory=list, repr=False)
    on_gone: list[Callable[[Worker, str], object]] = field(factory=list, repr=False)
    _ready: Once = field(factory=Once, repr=False)
    _exited: Once = field(factory=Once, repr=False)
    _drained: Once | None = field(default=None, repr=False)
    _exchanges: dict[int, WorkerExchange] = field(factory=dict, repr=False)
    _next_rid: int = 1
    _ready_timer: IDelayedCall | None = field(default=None, repr=False)
    _capture: list[str] | None = field(default=None, repr=False)
    _output: Assembler = field(init=False, repr=False)
    _recent: OrderedDict[str, Action] = field(factory=OrderedDict, repr=False)
    """The eliot actions of requests lately finished, by request id (what the app says late)."""
    _connected: bool = False
    _expiry: IDelayedCall | None = field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.protocol = WorkerChannel(self)
        self.created_at = self.last_used = self.clock.seconds()
        self._output = Assembler(self.clock, self._log_output)

    @property
    def ready(self) -> Deferred:
        """Fires with C{None} once the app is loaded, or fails with L{StartupError}."""
        return self._ready.wait()

    @property
    def exited(self) -> Deferred:
        """Fires with the exit code (C{None} if unknown) once the process is gone."""
        return self._exited.wait()

    @property
    def is_ready(self) -> bool:
        return self.status in READY

    @property
    def has_exited(self) -> bool:
        return self._exited.fired

    @property
    def in_flight(self) -> int:
        return len(self._exchanges)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    # -- lifecycle -------------------------------------------------------

    def launch(self, launcher: ILauncher, app_dir: str, env: Any, ready_timeout: float) -> None:
        """Start the process; C{ready} fails if the app is not loaded in C{ready_timeout}."""
        spec = LaunchSpec(worker_id=self.id, app_dir=app_dir, env=env)
        self._ready_timer = self.clock.callLater(
            ready_timeout, self._ready_timed_out, ready_timeout
        )
        try:
            d = launcher.launch(spec, self.protocol, self.output_received)
        except Exception:
            d = Deferred()
            d.errback()
        d.addCallbacks(self._launched, self._launch_failed)

    def _launched(self, process: LaunchedProcess) -> None:
        self.process = process
        self.pid = process.pid
        if self.status in (STOPPING, OFFLINE):  # given up on while it was being launched
            self.kill()
        process.exited.addBoth(self._process_exited)

    def _launch_failed(self, failure: Failure) -> None:
        self.launch_error = failure.value
        self._gone(f"could not be launched: {failure.getErrorMessage()}")
        self._exited.fire(None)

    def _ready_timed_out(self, seconds: float) -> None:
        self._ready_timer = None
        self._fail_startup(StartupError(f"worker did not report ready within {seconds:g}s"))

    def _fail_startup(self, error: StartupError) -> None:
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None
        if self.status == STARTING:
            self.healthy = False
            self._ready.fire(Failure(error))

    def ready_received(self, pid: int, kind: str) -> None:
        if self.status != STARTING:
            return
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None
        self.kind = kind
        if self.pid is None:
            self.pid = pid
        self.status = EPHEMERAL if self.ephemeral else ACTIVE
        self.last_used = self.clock.seconds()
        self._ready.fire(None)

    def startup_failed(self, error: str, detail: str) -> None:
        self._fail_startup(StartupError(error, detail))

    def channel_made(self) -> None:
        self._connected = True

    def channel_lost(self, reason: Failure) -> None:
        self._connected = False
        self._gone("closed its channel")

    def _process_exited(self, result: object) -> None:
        self._output.flush()
        code = result if isinstance(result, int) else None
        self._gone(f"exited with code {code}")
        self._close_channel()
        self._exited.fire(code)

    def _gone(self, reason: str) -> None:
        """The worker can serve nothing more: fail whatever waits on it."""
        if self.status == OFFLINE:
            return
        was_stopping = self.status == STOPPING
        self._fail_startup(StartupError(f"worker {reason} before it was ready"))
        self.status = OFFLINE
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        for exchange in list(self._exchanges.values()):
            self.error_count += 1
            error = WorkerGone(f"worker {self.label} (pid {self.pid}) {reason}")
            self._finish(exchange, "gone")
            if exchange.stream is not None:
                exchange.stream.fail(error)
            else:
                exchange.response.errback(error)
        if not was_stopping:
            self.healthy = False
        for listener in list(self.on_gone):
            _call(listener, self, reason)

    def _close_channel(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.loseConnection()

    def kill(self) -> None:
        """SIGKILL the process (if it is still there)."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        if self.process is None or self.has_exited:
            return
        try:
            self.process.signal(signum)
        except Exception as error:
            log(
                "debug",
                "buntime:worker:signal",
                "Could not signal worker",
                **self.tags(),
                signal=int(signum),
                error=str(error),
            )

    def send_idle(self) -> None:
        """Tell the app it has been idle a while (its C{on_idle} hook)."""
        self.idle_sent = True
        self.status = IDLE
        self.protocol.callRemote(Idle).addErrback(lambda _: None)

    async def stop(self, delay: float, grace: float) -> None:
        """
        Retire gracefully: let requests in flight finish (at most C{grace}
        seconds), send L{Terminate} (C{on_terminate}; at most C{grace}), close
        the channel, and SIGKILL the process if it is still there after C{delay}.
        """
        if self.status != OFFLINE:
            self._fail_startup(StartupError("worker was stopped before it was ready"))
            was_ready = self.is_ready
            self.status = STOPPING
            for exchange in self._exchanges.values():
                if type(exchange.stream) is WorkerSocket:
                    exchange.stream.retire()  # its client closes, then the app's call ends
            if self._exchanges:
                await self._bounded(self._drain_waiter(), grace)
            if was_ready and self._connected and self.status == STOPPING:
                await self._bounded(self.protocol.callRemote(Terminate), grace)
            self._close_channel()
        if self.process is None or await self._bounded(self._exited.wait(), delay):
            return
        self.kill()
        if not await self._bounded(self._exited.wait(), KILL_WAIT):
            log(
                "warn",
                "buntime:worker:unkillable",
                "Worker did not exit after SIGKILL",
                **self.tags(),
            )

    async def _bounded(self, d: Deferred, seconds: float) -> bool:
        """Wait for C{d} at most C{seconds}; C{True} when it fired successfully in time."""
        try:
            await d.addTimeout(seconds, self.clock)
        except Exception:
            return False
        return True

    def _drain_waiter(self) -> Deferred:
        if self._drained is None:
            self._drained = Once()
        return self._drained.wait()

    def dump_stack(self, wait: float) -> Deferred:
        """
        Ask the process for its Python stack (SIGUSR1; the child's faulthandler
        writes it to fd 2) and fire with the raw stderr lines seen in C{wait} seconds.
        """
        if self.process is None or self.status == OFFLINE:
            return succeed("")
        self._capture = []
        self.send_signal(signal.SIGUSR1)
        done: Deferred = Deferred()

        def collected() -> None:
            lines, self._capture = self._capture or [], None
            done.callback("\n".join(lines))

        self.clock.callLater(wait, collected)
        return done

    # -- requests --------------------------------------------------------

    def request(self, request: Request, base: str, timeout: float) -> Deferred:
        """
        Send C{request} (its URL is the path inside the app, base stripped).
        Fires with the L{Response} once the worker starts answering; fails with
        L{AppError}, L{WorkerGone} or, after C{timeout} seconds without an
        answer, L{RequestTimedOut}.  Cancelling it cancels the request.
        """
        now = self.clock.seconds()
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        response: Deferred = Deferred(lambda _: self._abandon(rid))
        exchange = WorkerExchange(
            rid, request.method, request.path, now, response, request_id=request.request_id
        )
        if self.status in (STOPPING, OFFLINE, STARTING) or not self._connected:
            response.errback(WorkerGone(f"worker {self.label} is {self.status}"))
            return response
        self._exchanges[rid] = exchange
        self.request_count += 1
        self.last_used = now
        self.idle_sent = False
        if self.status == IDLE:
            self.status = ACTIVE
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

    # -- output and logs ---------------------------------------------------

    @property
    def context(self) -> str:
        """The log context of what the app itself says: C{worker:<app>@<version>}."""
        return f"worker:{self.name}@{self.version}"

    def tags(self) -> dict[str, object]:
        """Fields that name this worker in log messages."""
        return {"app": self.name, "version": self.version, "worker_id": self.id, "pid": self.pid}

    def output_received(self, write: Write) -> None:
        """
        What the app wrote, to be logged once its record is complete; raw
        stderr lines are held back while a stack dump is read.
        """
        if self._capture is not None and write.raw and write.stream == "stderr":
            self._capture.append(write.text.rstrip("\n"))
            return
        self._output.feed(write)

    def _log_output(self, record: Record) -> None:
        fields: dict[str, object] = {}
        if record.request_id is not None:
            fields["request_id"] = record.request_id
        if record.continued:
            fields["continued"] = True
        with self._told_of(record.request_id):
            log(
                "warn" if record.stream == "stderr" else "info",
                "buntime:worker:output",
                record.text,
                context=self.context,
                **self.tags(),
                stream=record.stream,
                **fields,
            )

    def _told_of(self, request_id: str | None) -> AbstractContextManager[object]:
        """
        The eliot context of request C{request_id} (in flight, or lately
        finished): what the worker says of a request sits in its task.
        """
        action = self._recent.get(request_id) if request_id is not None else None
        if request_id is not None and action is None:
            for exchange in self._exchanges.values():
                if exchange.request_id == request_id:
                    action = exchange.action
                    break
        return action.context() if action is not None else nullcontext()

    # -- stats -------------------------------------------------------------

    def rss_mb(self) -> float:
        """Resident memory of the process in MB (0 when unknown)."""
        if self.pid is None or self.status == OFFLINE:
            return 0.0
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                pages = int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return round(pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024), 2)

    def stats(self) -> dict[str, object]:
        """Per-worker numbers as SPEC section 3 names them."""
        now = self.clock.seconds()
        total_ms = self.total_response_time * 1000
        return {
            "id": self.id,
            "app": self.name,
            "version": self.version,
            "key": self.app_key,
            "ageMs": round((now - self.created_at) * 1000),
            "idleMs": 0 if self._exchanges else round((now - self.last_used) * 1000),
            "requestCount": self.request_count,
            "errorCount": self.error_count,
            "avgResponseTimeMs": round(total_ms / self.responded, 2) if self.responded else 0.0,
            "totalResponseTimeMs": round(total_ms, 2),
            "status": self.status,
            "pid": self.pid,
            "rssMB": self.rss_mb(),
        }


def _call(listener: Callable[..., object], *args: object) -> None:
    """Run a listener; its failure is logged, never passed to the caller."""
    try:
        listener(*args)
    except Exception as error:
        _listener_failed(error)


def _listener_failed(error: Exception) -> None:
    log("error", "buntime:worker:listener", "A worker listener failed", error=repr(error))

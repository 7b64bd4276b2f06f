"""
Test doubles for the worker pool: a launcher whose "processes" are
in-memory AMP workers joined to the runtime's protocol with
L{twisted.test.iosim} (boxes are really serialized, so an oversized value
fails here as it would over a pipe), a manifest stand-in, and helpers to
drive the clock and read results synchronously.  (The C{eliot_logger}
fixture in C{conftest.py} captures logs.)
"""

from __future__ import annotations

import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from buntime.http import Body, read_body
from buntime.pool.commands import (
    CHUNK_SIZE,
    CancelRequest,
    Idle,
    RequestBody,
    RequestBodyEnd,
    StartRequest,
    Terminate,
    WebSocketDisconnect,
    WebSocketReceive,
    parse_request_head,
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
    response_head,
)
from buntime.pool.launch.launcher import ILauncher, LauncherUnavailable, LaunchSpec
from buntime.pool.output import Write

STACK = [
    "Thread 0x00007f (most recent call first):",
    '  File "/apps/slow/app.py", line 7 in handler',
]


@define(eq=False)
class ChildRequest:
    """One request as the fake worker sees it, with ways to answer it."""

    child: FakeChild
    rid: int
    method: str
    path: str
    base: str
    headers: list
    remote: str
    chunks: list[bytes] = field(factory=list)
    complete: bool = False
    cancelled: bool = False
    socket_in: list[tuple[bytes, bool, bool]] = field(factory=list)
    socket_closed: tuple[int, str] | None = None
    _waiters: list[Deferred] = field(factory=list)

    async def body(self) -> bytes:
        """The whole request body, once L{RequestBodyEnd} arrived."""
        if not self.complete:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            await waiter
        return b"".join(self.chunks)

    def completed(self) -> None:
        self.complete = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def start(self, status: int = 200, headers: Any = (), body: bytes = b"", end: bool = True):
        head = response_head(status, json.dumps([list(h) for h in headers]), end)
        self.child.callRemote(ResponseStart, rid=self.rid, head=head, body=body)

    def send(self, data: bytes) -> Deferred:
        """One more chunk; fires when the runtime's consumer took it."""
        return self.child.callRemote(ResponseBody, rid=self.rid, data=data)

    def end(self) -> None:
        self.child.callRemote(ResponseEnd, rid=self.rid)

    def error(self, message: str) -> None:
        self.child.callRemote(ResponseError, rid=self.rid, error=message)

    def socket_send(self, data: bytes, binary: bool = False, final: bool = True) -> Deferred:
        """A piece of a WebSocket message; fires when the runtime's client can take more."""
        return self.child.callRemote(
            WebSocketSend, rid=self.rid, data=data, binary=binary, final=final
        )

    def socket_close(self, code: int, reason: str = "") -> None:
        self.child.callRemote(WebSocketClose, rid=self.rid, code=code, reason=reason)

    async def respond(self, status: int = 200, headers: Any = (), body: bytes = b"") -> None:
        """Answer with C{body}, chunked as the real worker does."""
        first, rest = body[:CHUNK_SIZE], body[CHUNK_SIZE:]
        self.start(status, headers, first, end=not rest)
        if not rest:
            return
        for offset in range(0, len(rest), CHUNK_SIZE):
            await self.send(rest[offset : offset + CHUNK_SIZE])
        self.end()


Handler = Callable[[ChildRequest], Awaitable[None]]


async def echo(request: ChildRequest) -> None:
    """The default fake app: answers 200 with C{method path} and the request body."""
    body = await request.body()
    head = f"{request.method} {request.path}|".encode()
    await request.respond(200, [("content-type", "text/plain")], head + body)


async def hang(request: ChildRequest) -> None:
    """An app that never answers."""
    await Deferred()


class FakeChild(amp.AMP):
    """The worker end of the channel: a scripted app behind the real commands."""

    def __init__(self, process: FakeProcess, handler: Handler, startup: str) -> None:
        super().__init__()
        self.process = process
        self.handler = handler
        self.startup = startup
        self.requests: dict[int, ChildRequest] = {}
        self.received: list[ChildRequest] = []
        self.cancelled: list[int] = []
        self.idles = 0
        self.terminates = 0
        self.errors: list[Failure] = []
        self.hold_receives: list[Deferred] | None = None  # answers to WebSocketReceive held here
        self.held: list[bytes] = []

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.startup == "ready":
            self.callRemote(Ready, pid=self.process.pid, kind=self.process.launcher.kind)
        elif self.startup == "fail":
            self.callRemote(
                StartupFailed, error="ImportError: no module named app", detail="Traceback: ..."
            )

    def dataReceived(self, data: bytes) -> None:
        if self.startup != "ready":
            # a real worker holds what comes before its app is loaded (a
            # request sent ahead of its Ready) until it is (L{ready_now})
            self.held.append(data)
            return
        super().dataReceived(data)

    def ready_now(self) -> None:
        """A worker started C{later}: its app is loaded; Ready, then what it held."""
        self.startup = "ready"
        self.callRemote(Ready, pid=self.process.pid, kind=self.process.launcher.kind)
        held, self.held = b"".join(self.held), []
        if held:
            super().dataReceived(held)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.process.die(0)  # the real child exits when its channel closes

    @StartRequest.responder
    def start_request(self, rid, head, body):
        method, path, base, headers, remote, more, _, _ = parse_request_head(head)
        request = ChildRequest(self, rid, method, path, base, headers, remote)
        request.chunks.append(body)
        self.requests[rid] = request
        self.received.append(request)
        if not more:
            request.completed()
        Deferred.fromCoroutine(self.handler(request)).addErrback(self.errors.append)
        return {}

    @RequestBody.responder
    def request_body(self, rid, data):
        self.requests[rid].chunks.append(data)
        return {}

    @RequestBodyEnd.responder
    def request_body_end(self, rid):
        self.requests[rid].completed()
        return {}

    @WebSocketReceive.responder
    def websocket_receive(self, rid, data, binary, final):
        self.requests[rid].socket_in.append((data, binary, final))
        if self.hold_receives is not None:
            waiting: Deferred = Deferred()
            self.hold_receives.append(waiting)
            return waiting.addCallback(lambda _: {})
        return {}

    @WebSocketDisconnect.responder
    def websocket_disconnect(self, rid, code, reason):
        self.requests[rid].socket_closed = (code, reason)
        return {}

    @CancelRequest.responder
    def cancel_request(self, rid):
        self.cancelled.append(rid)
        if rid in self.requests:
            self.requests[rid].cancelled = True
        return {}

    @Idle.responder
    def idle(self):
        self.idles += 1
        return {}

    @Terminate.responder
    def terminate(self):
        self.terminates += 1
        return {}


@define(eq=False)
class FakeProcess:
    """A launched fake worker; provides what L{LaunchedProcess} provides."""

    pid: int
    spec: LaunchSpec
    launcher: FakeLauncher
    on_output: Callable[[Write], None]
    exited: Deferred = field(factory=Deferred)
    signals: list[int] = field(factory=list)
    child: FakeChild = field(default=None)
    pump: iosim.IOPump = field(default=None)
    exit_code: int | None = None
    stack: list[str] = field(factory=lambda: list(STACK))

    def signal(self, signum: int) -> None:
        if self.exit_code is not None:
            raise ProcessExitedAlready()
        self.signals.append(signum)
        if signum == signal.SIGUSR1:
            for line in self.stack:
                write = Write("stderr", line + "\n", raw=True)
                self.launcher.clock.callLater(0.05, self.on_output, write)
        elif signum in (signal.SIGKILL, signal.SIGTERM):
            self.die(-signum)

    def die(self, code: int) -> None:
        """The process ends: its channel closes and C{exited} fires."""
        if self.exit_code is not None:
            return
        self.exit_code = code
        if self.child.transport is not None:
            self.child.transport.loseConnection()
        self.launcher.clock.callLater(0, self.exited.callback, code)


@implementer(ILauncher)
@define(eq=False)
class FakeLauncher:
    """
    Launches L{FakeChild} workers on C{clock}.  C{startup} is what a new
    worker does first: C{ready}, C{fail} (StartupFailed), C{hang}, or
    C{later} (ready when its child's C{ready_now} is called);
    C{unavailable} makes C{launch} itself fail at once, C{down} after 10 s
    (as the fork launcher does while its template does not come back).
    """

    clock: MemoryReactorClock
    handler: Handler = echo
    startup: str = "ready"
    processes: list[FakeProcess] = field(factory=list)
    next_pid: int = 1000
    running: bool = False
    kind: str = "fake"
    """What the workers say they run (C{wsgi}, C{asgi} ...)."""

    def start(self) -> Deferred:
        self.running = True
        return succeed(None)

    def stop(self) -> Deferred:
        self.running = False
        return succeed(None)

    def launch(
        self, spec: LaunchSpec, protocol: amp.AMP, on_output: Callable[[Write], None]
    ) -> Deferred:
        if self.startup == "unavailable":  # a launcher that cannot start anything now
            return fail(LauncherUnavailable("the fork template exited with code -9"))
        if self.startup == "down":
            gone = LauncherUnavailable("the fork template was not ready within 10 s")
            waited: Deferred = Deferred()
            self.clock.callLater(10, waited.errback, gone)
            return waited
        self.next_pid += 1
        process = FakeProcess(self.next_pid, spec, self, on_output)
        process.child = FakeChild(process, self.handler, self.startup)
        process.pump = iosim.connect(
            process.child,
            iosim.FakeTransport(process.child, isServer=True),
            protocol,
            iosim.FakeTransport(protocol, isServer=False),
            greet=False,
            clock=self.clock,
        )
        self.processes.append(process)
        return succeed(process)

    def _pending(self) -> bool:
        for process in self.processes:
            for io in (process.pump.clientIO, process.pump.serverIO):
                if io.stream or (io.disconnecting and not io.disconnected):
                    return True
        now = self.clock.seconds()
        return any(call.getTime() <= now for call in self.clock.getDelayedCalls())

    def settle(self) -> None:
        """Deliver every AMP box and run every call due now, until nothing moves."""
        for _ in range(100_000):
            for process in list(self.processes):
                process.pump.pump()
            self.clock.advance(0)
            if not self._pending():
                return
        raise AssertionError("the fake workers never settled")

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass on the clock, settling along the way."""
        self.settle()
        self.clock.advance(seconds)
        self.settle()

    @property
    def live(self) -> list[FakeProcess]:
        return [p for p in self.processes if p.exit_code is None]


def result_of(d: Deferred) -> Any:
    """The result a Deferred already has (raising its failure)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def read_all(launcher: FakeLauncher, body: Body) -> bytes:
    """Read a (maybe streamed) body to the end, moving the fakes as needed."""
    d = Deferred.fromCoroutine(read_body(body))
    launcher.settle()
    return result_of(d)


def logged(logger: Any, message_type: str, status: str | None = None) -> list[dict]:
    """
    The messages of one type a L{eliot.MemoryLogger} captured; with
    C{status}, the C{started}, C{succeeded} or C{failed} messages of an action type.
    """
    if status is not None:
        return [
            m
            for m in logger.messages
            if m.get("action_type") == message_type and m.get("action_status") == status
        ]
    return [m for m in logger.messages if m.get("message_type") == message_type]

"""
The worker's AMP protocol against a runtime-side AMP peer, joined by a
loopback that really serializes boxes (L{buntime.pool.child.protocol}).

L{RuntimeSide} is also used by the other worker tests.
"""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.protocols.loopback import loopbackAsync
from zope.interface import implementer

from buntime.pool import commands, events
from buntime.pool.child.adapter import IAdapter
from buntime.pool.child.body import HIGH_WATER, BodyReader
from buntime.pool.child.loader import LoadedApp, load
from buntime.pool.child.protocol import ChildProtocol
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.writer import ResponseWriter
from buntime.pool.stream import CHUNK_SIZE, chunks


@define(eq=False)
class Answer:
    """What the runtime got for one request."""

    rid: int = 0
    status: int = 0
    headers: list = field(factory=list)
    body: bytearray = field(factory=bytearray)
    events: list[str] = field(factory=list)
    error: str | None = None
    started: Deferred = field(factory=Deferred)
    done: Deferred = field(factory=Deferred)


class RuntimeSide(amp.AMP):
    """The runtime's end of a worker channel, for tests: records every event."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[int, Answer] = {}
        self.ready: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.next_rid = 1

    def answer(self, rid: int) -> Answer:
        return self.answers.setdefault(rid, Answer())

    @events.Ready.responder
    def got_ready(self, pid: int, kind: str) -> dict:
        self.ready.callback((pid, kind))
        return {}

    @events.StartupFailed.responder
    def got_startup_failed(self, error: str, detail: str) -> dict:
        self.ready.errback(RuntimeError(f"{error}\n{detail}"))
        return {}

    @events.ResponseStart.responder
    def got_start(self, rid: int, head: str, body: bytes) -> dict:
        status, headers, end = events.parse_response_head(head)
        answer = self.answer(rid)
        answer.events.append("start+end" if end else "start")
        answer.status, answer.headers = status, headers
        answer.body += body
        answer.started.callback(answer)
        if end:
            answer.done.callback(answer)
        return {}

    @events.ResponseBody.responder
    def got_body(self, rid: int, data: bytes) -> dict:
        answer = self.answer(rid)
        answer.events.append(f"body {len(data)}")
        answer.body += data
        return {}

    @events.ResponseEnd.responder
    def got_end(self, rid: int) -> dict:
        answer = self.answer(rid)
        answer.events.append("end")
        answer.done.callback(answer)
        return {}

    @events.ResponseError.responder
    def got_error(self, rid: int, error: str) -> dict:
        answer = self.answer(rid)
        answer.events.append("error")
        answer.error = error
        answer.done.callback(answer)
        return {}

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes = b"",
        headers: list | None = None,
        base: str = "/app@1",
        stream: bool = False,
    ) -> Answer:
        """
        Send a request as the runtime does (a big body in chunks).  With
        C{stream}, only C{StartRequest} goes: the caller sends C{body} chunks and the end.
        """
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        answer = self.answer(rid)
        pieces = chunks(body)
        first = b"" if stream else (pieces.pop(0) if pieces else b"")
        head = commands.request_head(
            method,
            path,
            base,
            headers if headers is not None else [["host", "example.com"]],
            "10.0.0.1:4567",
            bool(pieces) or stream,
        )
        self.callRemote(commands.StartRequest, rid=rid, head=head, body=first)
        if pieces and not stream:
            Deferred.fromCoroutine(self._send_rest(rid, pieces))
        answer.rid = rid
        return answer

    async def _send_rest(self, rid: int, pieces: list[bytes]) -> None:
        for piece in pieces:
            await self.callRemote(commands.RequestBody, rid=rid, data=piece)
        self.callRemote(commands.RequestBodyEnd, rid=rid)


@define(eq=False)
class Sender:
    """
    Stands in for the worker's AMP connection: every box is really
    serialized (an oversized value fails), then recorded.  With C{hold},
    answers to C{ResponseBody} wait in C{held} (the runtime's backpressure).
    """

    sent: list[tuple[str, dict]] = field(factory=list)
    hold: bool = False
    held: list[Deferred] = field(factory=list)

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred | None:
        command.makeArguments(arguments, None).serialize()
        if command is events.ResponseStart:  # recorded with its head unpacked
            _, _, _, reason = events.response_start(head := arguments.pop("head"))
            status, headers, end = events.parse_response_head(head)
            arguments.update(status=status, headers=json.dumps(headers), end=end, reason=reason)
        self.sent.append((command.__name__, arguments))
        if not command.requiresAnswer:
            return None
        if self.hold and command is events.ResponseBody:
            waiting: Deferred = Deferred()
            self.held.append(waiting)
            return waiting
        return succeed({})

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.sent]

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-cased names) and body of the one response sent."""
        status, headers, body = 0, {}, b""
        for name, arguments in self.sent:
            if name == "ResponseStart":
                status = arguments["status"]
                headers = {k.lower(): v for k, v in json.loads(arguments["headers"])}
                body += arguments["body"]
            elif name == "ResponseBody":
                body += arguments["data"]
        return status, headers, body

    def error(self) -> str | None:
        for name, arguments in self.sent:
            if name == "ResponseError":
                return arguments["error"]
        return None


def incoming(
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    headers: list | None = None,
    base: str = "/app@1",
    more: bool = False,
    remote: str = "10.0.0.1:4567",
    reactor: object = None,
) -> IncomingRequest:
    """An L{IncomingRequest} as the protocol would build it."""
    return IncomingRequest(
        method,
        target,
        base,
        headers if headers is not None else [["Host", "example.com:8080"]],
        BodyReader.start(reactor, body, more),  # type: ignore[arg-type]
        remote,
    )


def write_app(folder: Path, source: str, name: str = "app.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


@define(eq=False)
class Connected:
    runtime: RuntimeSide
    worker: ChildProtocol
    closed: Deferred
    terminated: list = field(factory=list)
    lost: list = field(factory=list)


async def connect(app_dir: Path, entrypoint: str = "", loop: object = None) -> Connected:
    """Load the app of C{app_dir} in-process and connect it to a L{RuntimeSide}; wait for Ready."""
    connected = Connected(RuntimeSide(), None, None)  # type: ignore[arg-type]
    worker = ChildProtocol(
        reactor,
        loop,  # type: ignore[arg-type]
        on_lost=lambda: connected.lost.append(True),
        on_terminated=lambda: connected.terminated.append(True),
    )
    connected.worker = worker
    connected.closed = loopbackAsync(worker, connected.runtime)
    app = load(str(app_dir), entrypoint, reactor=reactor, loop=loop)  # type: ignore[arg-type]
    await app.adapter.startup()
    await worker.serve(app)
    return connected


ROUTES_APP = """
    from twisted.internet.defer import Deferred, succeed

    calls = []
    pending = []

    def echo(request):
        return request.body

    def boom(request):
        raise ValueError("no good\\nsecond line")

    def wait(request):
        d = Deferred(lambda _: calls.append("cancelled"))
        pending.append(d)
        return d

    def nothing(request):
        return None

    def base(request):
        return ",".join(request.headers.get_all("x-base"))

    routes = {
        "/echo": echo, "/boom": boom, "/wait": wait, "/nothing": nothing, "/base": base, "/": "hi"
    }

    def on_idle():
        calls.append("idle")

    def on_terminate():
        calls.append("terminate")
"""


@pytest.fixture
def routes_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path / "routes", ROUTES_APP)


@pytest_twisted.ensureDeferred
async def test_small_response_is_one_start_box(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    answer = await c.runtime.request(path="/").done
    assert (answer.status, bytes(answer.body), answer.events) == (200, b"hi", ["start+end"])
    assert c.runtime.ready.called and (await c.runtime.ready)[1] == "routes"
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_the_app_sees_its_base_as_x_base_never_the_client_s(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    sent = [["host", "example.com"], ["X-Base", "/forged"]]
    answer = await c.runtime.request(path="/base", headers=sent, base="/app@1").done
    assert bytes(answer.body) == b"/app@1"
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_big_bodies_travel_in_chunks(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    answer = await c.runtime.request("POST", "/echo", body).done
    assert bytes(answer.body) == body
    assert answer.events[0] == "start" and answer.events[-1] == "end"
    assert all(int(e.split()[1]) <= CHUNK_SIZE for e in answer.events if e.startswith("body"))
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_streamed_request_body(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    answer = c.runtime.request("POST", "/echo", stream=True)
    for piece in (b"one ", b"two"):
        await c.runtime.callRemote(commands.RequestBody, rid=answer.rid, data=piece)
    assert not answer.done.called
    c.runtime.callRemote(commands.RequestBodyEnd, rid=answer.rid)
    await answer.done
    assert bytes(answer.body) == b"one two"
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_app_exception_is_a_response_error(
    routes_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    c = await connect(routes_dir)
    answer = await c.runtime.request(path="/boom").done
    assert answer.error == "ValueError: no good"
    assert answer.events == ["error"]
    err = capsys.readouterr().err
    assert "Traceback" in err and "second line" in err
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_a_malformed_request_head_is_a_response_error(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    answer = c.runtime.answer(99)
    c.runtime.callRemote(commands.StartRequest, rid=99, head='["GET"]', body=b"")
    await answer.done
    assert answer.events == ["error"]
    assert "malformed request head" in (answer.error or "")
    assert c.worker._requests == {}
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_no_content(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    answer = await c.runtime.request(path="/nothing").done
    assert (answer.status, bytes(answer.body)) == (204, b"")
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_cancel_request(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    module = c.worker.app.module  # type: ignore[union-attr]
    answer = c.runtime.request(path="/wait")
    while not module.pending:
        await _turn()
    await c.runtime.callRemote(commands.Idle)  # a round trip: StartRequest was handled
    c.runtime.callRemote(commands.CancelRequest, rid=answer.rid)  # type: ignore[attr-defined]
    await c.runtime.callRemote(commands.Idle)
    assert "cancelled" in module.calls
    assert not answer.done.called
    assert c.worker._requests == {}
    c.runtime.transport.loseConnection()
    await c.closed


@pytest_twisted.ensureDeferred
async def test_hooks_and_terminate(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    module = c.worker.app.module  # type: ignore[union-attr]
    await c.runtime.callRemote(commands.Idle)
    assert module.calls == ["idle"]
    await c.runtime.callRemote(commands.Terminate)
    assert module.calls == ["idle", "terminate"]
    await _turn()
    assert c.terminated == [True]
    c.runtime.transport.loseConnection()
    await c.closed
    assert c.lost == [True]


@pytest_twisted.ensureDeferred
async def test_connection_lost_cancels_requests(routes_dir: Path) -> None:
    c = await connect(routes_dir)
    module = c.worker.app.module  # type: ignore[union-attr]
    c.runtime.request(path="/wait")
    while not module.pending:
        await _turn()
    c.runtime.transport.loseConnection()
    await c.closed
    assert module.calls == ["cancelled"]
    assert c.lost == [True]


@implementer(IAdapter)
@define(eq=False)
class Unhurried:
    """An app that takes its time: never reads the body, never answers."""

    kind: str = "routes"
    handled: list = field(factory=list)

    def startup(self) -> Deferred:
        return succeed(None)

    def shutdown(self) -> Deferred:
        return succeed(None)

    def handle(self, request: object, writer: object) -> Deferred:
        self.handled.append(request)
        return Deferred()


@pytest_twisted.ensureDeferred
async def test_request_body_backpressure() -> None:
    """The answer to RequestBody waits while the app has not read enough."""
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    closed = loopbackAsync(worker, runtime)
    adapter = Unhurried()
    await worker.serve(LoadedApp(types.ModuleType("unhurried"), adapter))
    answer = runtime.request("POST", "/", stream=True)
    answers: list = []
    count = HIGH_WATER // CHUNK_SIZE + 2
    for _ in range(count):
        d = runtime.callRemote(commands.RequestBody, rid=answer.rid, data=b"x" * CHUNK_SIZE)
        d.addCallback(answers.append)
    await runtime.callRemote(commands.Idle)
    assert len(adapter.handled) == 1
    assert len(answers) == count - 2  # the last two wait until the app reads (or gives up)
    runtime.callRemote(commands.CancelRequest, rid=answer.rid)
    await runtime.callRemote(commands.Idle)
    assert len(answers) == count
    runtime.transport.loseConnection()
    await closed


async def _turn() -> None:
    d: Deferred = Deferred()
    reactor.callLater(0, d.callback, None)
    await d


@implementer(IAdapter)
@define(eq=False)
class WorksAfterAnswering:
    """An app that answers at once and goes on working (a background task) until told."""

    kind: str = "routes"
    later: Deferred = field(factory=Deferred)
    events: list = field(factory=list)

    def startup(self) -> Deferred:
        return succeed(None)

    def shutdown(self) -> Deferred:
        self.events.append("shutdown")
        return succeed(None)

    def handle(self, request: object, writer: ResponseWriter) -> Deferred:
        writer.start(200, [])
        writer.end(b"answered")
        return self.later.addCallback(lambda _: self.events.append("background done"))


async def turns(count: int = 5) -> None:
    """Let the reactor run C{count} turns (the loopback's boxes get across)."""
    for _ in range(count):
        await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_request_that_comes_before_the_app_is_loaded_waits_for_it() -> None:
    """
    The runtime sends a cold start's first request ahead of the worker's
    Ready: it is held, and taken once the app is served, Ready first.
    """
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    closed = loopbackAsync(worker, runtime)
    order: list[str] = []
    runtime.ready.addCallback(lambda _: order.append("ready"))
    answer = runtime.request(path="/early").done
    answer.addCallback(lambda _: order.append("answer"))
    await turns()
    adapter = Unhurried()
    assert not answer.called and adapter.handled == []
    await worker.serve(LoadedApp(types.ModuleType("unhurried"), adapter))
    await turns()
    assert [request.target for request in adapter.handled] == ["/early"]
    assert order == ["ready"]
    runtime.transport.loseConnection()
    await closed


@pytest_twisted.ensureDeferred
async def test_a_request_cancelled_before_the_app_is_loaded_never_reaches_it() -> None:
    """
    Held ahead of the worker's Ready, then cancelled (its client left, or
    it timed out waiting for the start): the app never sees it (a WSGI
    call could not be stopped), the requests after it still do.
    """
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    closed = loopbackAsync(worker, runtime)
    cancelled = runtime.request(path="/cancelled")
    runtime.callRemote(commands.CancelRequest, rid=cancelled.rid)
    runtime.request(path="/kept")
    await turns()
    adapter = Unhurried()
    await worker.serve(LoadedApp(types.ModuleType("unhurried"), adapter))
    await turns()
    assert [request.target for request in adapter.handled] == ["/kept"]
    runtime.transport.loseConnection()
    await closed


@pytest_twisted.ensureDeferred
async def test_a_worker_whose_app_fails_to_load_still_hears_the_runtimes_answer() -> None:
    """What came ahead of a start that fails is dropped, not held for an app that never comes."""
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    closed = loopbackAsync(worker, runtime)
    runtime.ready.addErrback(lambda _: None)
    runtime.request(path="/early")
    await turns()
    reported = worker.startup_failed("ImportError: no module named app", "Traceback ...")
    await reported.addTimeout(5, reactor)  # (the worker exits with code 3 on this answer)
    runtime.transport.loseConnection()
    await closed


@pytest_twisted.ensureDeferred
async def test_terminate_waits_for_work_after_the_response() -> None:
    """Terminate lets an app call finish what it does after its response, then shuts down."""
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    closed = loopbackAsync(worker, runtime)
    adapter = WorksAfterAnswering()
    await worker.serve(LoadedApp(types.ModuleType("background"), adapter))
    answer = await runtime.request(path="/").done
    assert (answer.status, bytes(answer.body)) == (200, b"answered")
    terminated = runtime.callRemote(commands.Terminate)
    await runtime.callRemote(commands.Idle)
    assert not terminated.called and adapter.events == []
    adapter.later.callback(None)
    await terminated
    assert adapter.events == ["background done", "shutdown"]
    runtime.transport.loseConnection()
    await closed


@pytest_twisted.ensureDeferred
async def test_only_asgi_apps_take_websockets(routes_dir: Path) -> None:
    """An upgrade to a routes (or WSGI, Klein...) app gets a clear 501, not the page."""
    c = await connect(routes_dir)
    upgrade = [["host", "example.com"], ["connection", "Upgrade"], ["upgrade", "websocket"]]
    answer = await c.runtime.request(path="/", headers=upgrade).done
    assert answer.status == 501
    assert json.loads(bytes(answer.body)) == {  # buntime's one error shape
        "error": {
            "code": "WEBSOCKET_UNSUPPORTED",
            "message": "WebSockets need an ASGI app; this is a routes app",
        }
    }
    plain = await c.runtime.request(path="/", headers=upgrade[:1]).done
    assert (plain.status, bytes(plain.body)) == (200, b"hi")
    c.runtime.transport.loseConnection()
    await c.closed

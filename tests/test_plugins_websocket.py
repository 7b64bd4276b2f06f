"""
Plugin WebSockets (SPEC §5 C{websocket}): which plugin serves a path, and
upgrades through a real front door on a loopback port with autobahn clients
(hooks first, the 101 with its request id and eliot action, the in-flight
count, refusals, and the 1001 "going away" at shutdown).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from attrs import define, field
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from eliot.testing import LoggedAction
from test_plugins_service import make_service
from test_plugins_support import make_loader
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import implementer

from buntime.http import Request, Response
from buntime.interfaces import IBuntimePlugin
from buntime.logs.requests import REQUEST_ACTION
from buntime.plugins.discovery import PluginSource
from buntime.plugins.registry import PluginRegistry, websocket_endpoints
from buntime.web.api.core import CoreAPI
from buntime.web.frontdoor import FrontDoor
from buntime.web.http1 import HTTP1Factory, Limits
from buntime.web.state import RuntimeState
from buntime.web.websocket import WebSockets

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")
TIMEOUT = 5.0
PATIENT = {"openHandshakeTimeout": TIMEOUT, "closeHandshakeTimeout": TIMEOUT}
"""autobahn's handshake timers (1 s for a close by default) as patient as the
tests, so a stalled machine fails a test by C{within}, not by an unclean close."""


def within(deferred: Deferred, seconds: float = TIMEOUT) -> Deferred:
    """C{deferred}, failing with a TimeoutError after C{seconds} rather than hanging the test."""
    return deferred.addTimeout(seconds, reactor)


# -- handlers ------------------------------------------------------------------------


class Echo(WebSocketServerProtocol):
    """Echoes messages; records what its onConnect saw on the factory."""

    def onConnect(self, request: Any) -> Any:
        self.factory.seen.append(request)
        self.factory.built.append(self)
        return self.factory.answer(request)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def echo_factory(answer: Callable[[Any], Any] = lambda request: None) -> WebSocketServerFactory:
    """An echo factory whose C{onConnect} answers with C{answer(request)}."""
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(**PATIENT)
    factory.protocol = Echo
    factory.seen = []
    factory.built = []
    factory.answer = answer
    return factory


@implementer(IBuntimePlugin)
class Sockets:
    """A plugin with only a C{websocket} member."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket


@implementer(IBuntimePlugin)
class Guarded(Sockets):
    """A plugin whose C{on_request} refuses (403) without C{x-pass}, and tags the request."""

    def on_request(self, request: Request, app: Any) -> Request | Response:
        if request.headers.get("x-pass") != "yes":
            return Response.error(403, "FORBIDDEN", "No pass")
        return request.with_header("x-user", "ada")


async def registry_of(*plugins: tuple[dict[str, Any], object]) -> PluginRegistry:
    sources = [
        PluginSource(manifest, f"/plugins/{manifest['name']}", "package", provider=provider)
        for manifest, provider in plugins
    ]
    registry, _ = await make_loader().load(sources)
    return registry


# -- the registry --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lone_factory_serves_every_path_under_the_base():
    factory = echo_factory()
    registry = await registry_of(({"name": "chat", "base": "/chat"}, Sockets(factory)))
    [plugin] = registry.plugins
    for path in ("/chat", "/chat/", "/chat/room/42"):
        assert registry.websocket_for(path) == (plugin, factory)
    for path in ("/", "/chatroom", "/other/chat"):
        assert registry.websocket_for(path) is None


@pytest_twisted.ensureDeferred
async def test_a_mapping_serves_its_sub_paths_exactly():
    ws, root = echo_factory(), echo_factory()
    other = echo_factory()
    registry = await registry_of(
        ({"name": "a", "base": "/a"}, Sockets({"/ws": ws, "/": root})),
        ({"name": "ab", "base": "/ab"}, Sockets(other)),
    )
    a, ab = registry.plugins
    assert registry.websocket_for("/a/ws") == (a, ws)
    assert registry.websocket_for("/a/ws/") == (a, ws)
    assert registry.websocket_for("/a") == (a, root)
    assert registry.websocket_for("/a/") == (a, root)
    assert registry.websocket_for("/a/ws/deeper") is None
    assert registry.websocket_for("/a/other") is None
    assert registry.websocket_for("/ab/ws") == (ab, other)


def test_endpoints_of_a_member():
    factory = echo_factory()
    assert websocket_endpoints("p", "/p", None) == []
    assert websocket_endpoints("p", None, None) == []
    assert websocket_endpoints("p", "/p", factory) == [(None, factory)]
    assert websocket_endpoints("p", "/p", {"/ws/": factory, "": factory}) == [
        ("/p/ws", factory),
        ("/p", factory),
    ]


@pytest.mark.parametrize(
    ("base", "member", "message"),
    [
        (None, object(), 'Plugin "p" has a websocket handler but no base to serve it at'),
        (
            "/p",
            object(),
            'Plugin "p": websocket must be an autobahn WebSocketServerFactory'
            " or a mapping of sub-paths to factories, not object",
        ),
        ("/p", {"ws": object()}, 'Plugin "p": websocket path \'ws\' must start with "/"'),
        (
            "/p",
            {"/ws": object()},
            "Plugin \"p\": websocket['/ws'] must be an autobahn WebSocketServerFactory, not object",
        ),
    ],
)
def test_invalid_members_are_refused(base, member, message):
    with pytest.raises(ValueError) as caught:
        websocket_endpoints("p", base, member)
    assert str(caught.value) == message


@pytest_twisted.ensureDeferred
async def test_an_invalid_member_is_logged_and_not_served(eliot_logger):
    good = echo_factory()
    registry = await registry_of(
        ({"name": "bad"}, Sockets(echo_factory())),
        ({"name": "wrong", "base": "/wrong"}, Sockets([good])),
        ({"name": "good", "base": "/good"}, Sockets(good)),
    )
    assert registry.websocket_for("/wrong") is None
    assert registry.websocket_for("/good/x")[1] is good
    errors = [
        m
        for m in eliot_logger.messages
        if m.get("message_type") == "buntime:plugins:websocket-invalid"
    ]
    assert sorted((m["plugin"], m["level"]) for m in errors) == [
        ("bad", "error"),
        ("wrong", "error"),
    ]
    [bad] = [m for m in errors if m["plugin"] == "bad"]
    assert bad["message"] == (
        'Plugin "bad" has a websocket handler but no base to serve it at;'
        " its WebSockets are not served"
    )


# -- through a front door on a loopback port ------------------------------------------


@define
class Served:
    """A front door listening on 127.0.0.1 with a plugin registry and its WebSockets."""

    port: Any
    state: RuntimeState
    sockets: WebSockets

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.number}{path}"


class Client(WebSocketClientProtocol):
    """An autobahn client that records its handshake, messages and close."""

    def __init__(self) -> None:
        super().__init__()
        self.response: Any = None
        self.opened: Deferred[Any] = Deferred()
        self.closed: Deferred[tuple[bool, int, str]] = Deferred()
        self.received: DeferredQueue = DeferredQueue()

    def onConnect(self, response: Any) -> None:
        self.response = response

    def onOpen(self) -> None:
        self.opened.callback(self.response)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        self.closed.callback((wasClean, code, reason))


@define
class Harness:
    """Starts front doors and clients; closes and stops all of them at teardown."""

    served: list[Served] = field(factory=list)
    clients: list[Client] = field(factory=list)

    async def serve(self, registry: PluginRegistry, clock: Any = reactor) -> Served:
        state = RuntimeState()
        sockets = WebSockets(clock=clock)
        door = FrontDoor(
            clock=reactor,
            state=state,
            api=CoreAPI(state=state, api_base="/api"),
            plugins=lambda: registry,
            websockets=sockets,
        )
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            HTTP1Factory(door, reactor, Limits(), state)
        )
        served = Served(port, state, sockets)
        self.served.append(served)
        return served

    async def connect(self, served: Served, path: str, headers: dict | None = None) -> Client:
        factory = WebSocketClientFactory(
            served.url(path).replace("http", "ws", 1), headers=headers or {}, reactor=reactor
        )
        factory.setProtocolOptions(**PATIENT, serverConnectionDropTimeout=TIMEOUT)
        factory.protocol = Client
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", served.number)
        client = await within(endpoint.connect(factory))
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for served in self.served:
            closing = served.sockets.close_all()
            clock = served.sockets.clock
            if isinstance(clock, Clock):
                clock.advance(served.sockets.grace)
            await within(closing)
            await served.port.stopListening()
        for client in self.clients:
            if not client.closed.called:
                client.dropConnection(abort=True)


@pytest_twisted.async_yield_fixture
async def harness():
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


async def refused(client: Client) -> str:
    """The reason a client's handshake failed (it never opened); it names the HTTP status."""
    was_clean, code, reason = await within(client.closed)
    assert not client.opened.called
    assert (was_clean, code) == (False, 1006)
    return reason


def request_actions(logger: Any) -> list[Any]:
    return LoggedAction.of_type(logger.messages, REQUEST_ACTION)


def messages(logger: Any, message_type: str) -> list[dict[str, Any]]:
    return [m for m in logger.messages if m.get("message_type") == message_type]


class Numbering(WebSocketServerFactory):
    """A factory whose own C{buildProtocol} gives each protocol a number."""

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.number = len(self.built) + 1
        return protocol


@pytest_twisted.ensureDeferred
async def test_the_handler_is_what_its_factory_built_with_the_runtime_s_hooks_added(harness):
    factory = Numbering(reactor=reactor)
    factory.protocol, factory.seen, factory.built = Echo, [], []
    factory.answer = lambda request: None
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets({"/ws": factory})))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws", {"x-request-id": "n-1"})
    assert (await within(client.opened)).headers["x-request-id"] == "n-1"
    [handler] = factory.built
    assert handler.number == 1  # built by the factory's buildProtocol
    # built from the factory's protocol, now a subclass of Echo with the hooks:
    # the plugin's class itself is left as it is, and no instance changes class
    assert type(handler) is factory.protocol
    assert issubclass(factory.protocol, Echo) and factory.protocol is not Echo
    assert (factory.protocol.__name__, factory.protocol.__qualname__) == ("Echo", "Echo")
    assert "onOpen" not in vars(Echo) and "onConnect" not in vars(handler)

    second = await harness.connect(served, "/echo/ws", {"x-request-id": "n-2"})
    await within(second.opened)
    assert type(factory.built[1]) is type(handler)  # one hooked class per factory


class Stranger(WebSocketServerFactory):
    """A factory whose own C{buildProtocol} builds a class other than its C{protocol}."""

    def buildProtocol(self, addr: Any) -> Any:
        protocol = WebSocketServerProtocol()
        protocol.factory = self
        return protocol


@pytest_twisted.ensureDeferred
async def test_a_factory_that_builds_no_instance_of_its_protocol_is_a_500(harness, eliot_logger):
    factory = Stranger(reactor=reactor)
    factory.protocol = Echo
    registry = await registry_of(({"name": "odd", "base": "/odd"}, Sockets(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/odd/ws", {"x-request-id": "odd-1"})
    assert "500" in await refused(client)
    assert served.sockets.open == 0
    [error] = messages(eliot_logger, "buntime:websocket:handler-invalid")
    assert (error["plugin"], error["request_id"], error["level"]) == ("odd", "odd-1", "error")
    assert "must build self.protocol" in error["message"]
    [action] = request_actions(eliot_logger)
    assert action.end_message["status"] == 500


@pytest_twisted.ensureDeferred
async def test_echo_round_trip_with_a_101_action_and_no_request_in_flight(harness, eliot_logger):
    factory = echo_factory()
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets({"/ws": factory})))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws", {"x-request-id": "ws-1"})
    response = await within(client.opened)
    assert response.headers["x-request-id"] == "ws-1"

    client.sendMessage(b"hello")
    assert await within(client.received.get()) == (b"hello", False)
    client.sendMessage(b"\x00\x01", isBinary=True)
    assert await within(client.received.get()) == (b"\x00\x01", True)

    # The HTTP request ended with the handshake; the socket is counted apart.
    assert served.state.in_flight == 0
    assert served.sockets.open == 1
    [action] = request_actions(eliot_logger)
    end = action.end_message
    assert (end["status"], end["aborted"], end["request_id"]) == (101, False, "ws-1")
    assert (end["path"], end["app"], end["upgrade"]) == ("/echo/ws", "plugin:echo", "websocket")
    [seen] = factory.seen
    assert seen.path == "/echo/ws"
    assert seen.headers["x-request-id"] == "ws-1"

    client.sendClose(1000, "bye")
    was_clean, code, reason = await within(client.closed)
    assert (was_clean, code) == (True, 1000), reason
    [closed] = messages(eliot_logger, "buntime:websocket:closed")
    await within(served.sockets.close_all())
    assert served.sockets.open == 0
    assert (closed["request_id"], closed["plugin"], closed["path"]) == ("ws-1", "echo", "/echo/ws")
    assert (closed["code"], closed["clean"]) == (1000, True)


@pytest_twisted.ensureDeferred
async def test_a_new_request_id_is_made_and_sent_with_the_101(harness, eliot_logger):
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(echo_factory())))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/anything")
    response = await within(client.opened)
    request_id = response.headers["x-request-id"]
    assert uuid.UUID(request_id).version == 4
    [action] = request_actions(eliot_logger)
    assert action.end_message["request_id"] == request_id


@pytest_twisted.ensureDeferred
async def test_on_request_refuses_the_upgrade_with_its_response(harness, eliot_logger):
    factory = echo_factory()
    registry = await registry_of(({"name": "guard", "base": "/guard"}, Guarded(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/guard/ws")
    reason = await refused(client)
    assert "403" in reason
    assert factory.seen == []
    assert served.sockets.open == 0
    [action] = request_actions(eliot_logger)
    assert (action.end_message["status"], action.end_message["aborted"]) == (403, False)


@pytest_twisted.ensureDeferred
async def test_the_handler_sees_the_request_as_the_hooks_left_it(harness, eliot_logger):
    factory = echo_factory()
    registry = await registry_of(({"name": "guard", "base": "/guard"}, Guarded(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/guard/ws?room=1", {"x-pass": "yes"})
    await within(client.opened)
    [seen] = factory.seen
    assert seen.headers["x-user"] == "ada"
    assert seen.path == "/guard/ws"
    assert seen.params == {"room": ["1"]}


@pytest_twisted.ensureDeferred
async def test_requests_that_are_not_plugin_upgrades_go_on_as_usual(harness, eliot_logger):
    registry = await registry_of(
        ({"name": "echo", "base": "/echo"}, Sockets({"/ws": echo_factory()}))
    )
    served = await harness.serve(registry)
    plain = await within(treq.get(served.url("/echo/ws"), persistent=False))
    assert plain.code == 404
    assert (await plain.json())["error"]["code"] == "NOT_FOUND"
    client = await harness.connect(served, "/echo/elsewhere")
    reason = await refused(client)
    assert "404" in reason
    assert served.state.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_a_handler_that_denies_answers_with_its_status_and_request_id(harness, eliot_logger):
    def deny(request: Any) -> None:
        raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Not you")

    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(echo_factory(deny))))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws", {"x-request-id": "denied-1"})
    reason = await refused(client)
    assert "403" in reason
    assert client.http_headers["x-request-id"] == "denied-1"
    [action] = request_actions(eliot_logger)
    end = action.end_message
    assert (end["status"], end["aborted"], end["request_id"]) == (403, False, "denied-1")
    assert served.state.in_flight == 0
    assert served.sockets.open == 0


@pytest_twisted.ensureDeferred
async def test_an_asynchronous_handshake_is_in_flight_until_answered(harness, eliot_logger):
    asked: Deferred[None] = Deferred()
    answer: Deferred[Any] = Deferred()

    def later(request: Any) -> Deferred:
        reactor.callLater(0, asked.callback, None)  # once the request was received
        return answer

    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(echo_factory(later))))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws")
    await within(asked)
    assert served.state.in_flight == 1
    ends = [
        m
        for m in eliot_logger.messages
        if m.get("action_type") == REQUEST_ACTION and m["action_status"] != "started"
    ]
    assert ends == []
    answer.callback((None, {"x-extra": "1"}))
    response = await within(client.opened)
    assert response.headers["x-extra"] == "1"
    assert "x-request-id" in response.headers
    assert served.state.in_flight == 0
    [action] = request_actions(eliot_logger)
    assert action.end_message["status"] == 101


@pytest_twisted.ensureDeferred
async def test_a_handed_over_socket_sends_small_frames_at_once(harness):
    factory = echo_factory()
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws")
    await within(client.opened)
    [handler] = factory.built
    assert factory.tcpNoDelay  # autobahn's default: frames are never held back
    assert handler.transport.getTcpNoDelay()


class Failing(Echo):
    """A handler whose onOpen fails (autobahn has sent the 101 by then)."""

    def onOpen(self) -> None:
        raise RuntimeError("handler bug")


@pytest_twisted.ensureDeferred
async def test_a_failing_on_open_is_logged_and_closed_with_1011(harness, eliot_logger):
    factory = echo_factory()
    factory.protocol = Failing
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws", {"x-request-id": "rude-1"})
    await within(client.opened)
    assert await within(client.closed) == (True, 1011, "internal error")
    [action] = request_actions(eliot_logger)
    assert (action.end_message["status"], action.end_message["aborted"]) == (101, False)
    assert served.state.in_flight == 0
    [failed] = messages(eliot_logger, "buntime:websocket:handler-failed")
    assert (failed["level"], failed["request_id"], failed["plugin"]) == ("error", "rude-1", "echo")
    assert "RuntimeError: handler bug" in failed["traceback"]


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_during_the_handshake_aborts_the_request(harness, eliot_logger):
    asked: Deferred[None] = Deferred()
    answer: Deferred[Any] = Deferred()

    def later(request: Any) -> Deferred:
        reactor.callLater(0, asked.callback, None)  # once the request was received
        return answer

    factory = echo_factory(later)
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(factory)))
    served = await harness.serve(registry)
    client = await harness.connect(served, "/echo/ws")
    await within(asked)
    [handler] = factory.built
    client.transport.abortConnection()
    await within(client.closed)
    await within(handler.is_closed)
    assert served.sockets.open == 0
    assert served.state.in_flight == 0
    [action] = request_actions(eliot_logger)
    assert action.end_message["aborted"] is True


@pytest_twisted.ensureDeferred
async def test_stopping_closes_open_sockets_with_1001_and_refuses_new_upgrades(
    harness, eliot_logger
):
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets(echo_factory())))
    served = await harness.serve(registry)
    first = await harness.connect(served, "/echo/a")
    second = await harness.connect(served, "/echo/b")
    await within(first.opened)
    await within(second.opened)
    assert served.sockets.open == 2

    await within(served.sockets.stopService())
    assert served.sockets.open == 0
    for client in (first, second):
        was_clean, code, reason = await within(client.closed)
        assert (was_clean, code, reason) == (True, 1001, "going away")
    closed = messages(eliot_logger, "buntime:websocket:closed")
    assert sorted(m["code"] for m in closed) == [1001, 1001]

    late = await harness.connect(served, "/echo/c")
    reason = await refused(late)
    assert "503" in reason
    assert request_actions(eliot_logger)[-1].end_message["status"] == 503


class Deaf(Protocol):
    """A raw client that completes the WebSocket handshake, then ignores everything."""

    def __init__(self) -> None:
        self.data = b""
        self._waiting: list[tuple[bytes, Deferred[None]]] = []
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET /echo/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )

    def received(self, needle: bytes) -> Deferred[None]:
        """Fires once C{needle} has arrived."""
        waiter: Deferred[None] = Deferred()
        self._waiting.append((needle, waiter))
        self.dataReceived(b"")
        return waiter

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for entry in list(self._waiting):
            if entry[0] in self.data:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_sockets_that_do_not_close_in_time_are_dropped(harness, eliot_logger):
    factory = echo_factory()
    factory.closeHandshakeTimeout = 0  # only our grace ends it
    registry = await registry_of(({"name": "echo", "base": "/echo"}, Sockets({"/ws": factory})))
    clock = Clock()
    served = await harness.serve(registry, clock=clock)
    deaf = Deaf()
    await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", served.number), deaf))
    await within(deaf.received(b"\r\n\r\n"))
    assert deaf.data.startswith(b"HTTP/1.1 101 ")
    assert served.sockets.open == 1

    closing = served.sockets.close_all()
    await within(deaf.received(b"going away"))  # the close frame went out
    assert not closing.called
    clock.advance(served.sockets.grace)
    await within(closing)
    await within(deaf.lost)
    assert served.sockets.open == 0
    [dropped] = messages(eliot_logger, "buntime:websocket:dropped")
    assert dropped["count"] == 1


@pytest_twisted.ensureDeferred
async def test_the_example_plugin_echoes_at_hello_ws(harness, eliot_logger):
    service = make_service(EXAMPLES, reactor=reactor)
    service.startService()
    await within(service.when_loaded())
    served = await harness.serve(service.registry)
    try:
        client = await harness.connect(served, "/hello/ws")
        await within(client.opened)
        client.sendMessage(b"hi")
        assert await within(client.received.get()) == (b"hi", False)
        blocked = await harness.connect(served, "/hello/ws", {"x-hello-block": "yes"})
        reason = await refused(blocked)
        assert "403" in reason
    finally:
        await served.sockets.close_all()
        await service.stopService()

"""
Plugin WebSockets end to end: a real C{twistd -n buntime} with a plugin dir
holding a WebSocket plugin, driven by autobahn clients over 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from test_plugins_support import write_plugin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0

PLUGIN = """
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from zope.interface import implementer

from buntime.http import Response
from buntime.interfaces import IBuntimePlugin


class Echo(WebSocketServerProtocol):
    def onConnect(self, request):
        self.user = request.headers.get("x-user", "?")

    def onMessage(self, payload, isBinary):
        self.sendMessage(self.user.encode() + b":" + payload, isBinary)


@implementer(IBuntimePlugin)
class Chat:
    websocket = None

    def on_init(self, ctx):
        factory = WebSocketServerFactory(reactor=ctx.reactor)
        factory.protocol = Echo
        self.websocket = {"/ws": factory}

    def on_request(self, request, app):
        if request.headers.get("x-deny") == "yes":
            return Response.error(403, "FORBIDDEN", "Not you")
        return request.with_header("x-user", "ada")


def plugin(config):
    return Chat()
"""


def within(deferred: Deferred, seconds: float = TIMEOUT) -> Deferred:
    return deferred.addTimeout(seconds, reactor)


class Client(WebSocketClientProtocol):
    """Records the handshake answer, the messages and the close."""

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
        self.received.put(payload)

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        self.closed.callback((wasClean, code, reason))


async def connect(proc: Any, path: str, headers: dict[str, str]) -> Client:
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{proc.port}{path}", headers=headers, reactor=reactor
    )
    # autobahn's close timers (1 s by default) as patient as the tests' C{within}
    factory.setProtocolOptions(
        openHandshakeTimeout=TIMEOUT,
        closeHandshakeTimeout=TIMEOUT,
        serverConnectionDropTimeout=TIMEOUT,
    )
    factory.protocol = Client
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port)
    return await within(endpoint.connect(factory))


def succeeded(request_id: str):
    return lambda line: (
        line.get("request_id") == request_id and line.get("action_status") == "succeeded"
    )


@pytest_twisted.ensureDeferred
async def test_plugin_websocket_echo_refusal_and_going_away(runtimes, tmp_path):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "chat", {"name": "chat", "base": "/chat"}, code=PLUGIN)
    apps = tmp_path / "apps"
    apps.mkdir()
    proc = await runtimes.start(worker_dirs=[str(apps)], env={"RUNTIME_PLUGIN_DIRS": str(plugins)})

    # An on_request hook refuses: a plain 403, no socket.
    denied = await connect(proc, "/chat/ws", {"x-deny": "yes", "x-request-id": "ws-denied"})
    was_clean, code, reason = await within(denied.closed)
    assert not denied.opened.called
    assert (was_clean, code) == (False, 1006)
    assert "403" in reason
    refusal = await proc.wait_for_log(succeeded("ws-denied"))
    assert refusal["status"] == 403

    # Echo through the hook's change, with the request id on the 101.
    client = await connect(proc, "/chat/ws", {"x-request-id": "ws-1"})
    response = await within(client.opened)
    assert response.headers["x-request-id"] == "ws-1"
    client.sendMessage(b"hello")
    assert await within(client.received.get()) == b"ada:hello"
    upgraded = await proc.wait_for_log(succeeded("ws-1"))
    assert (upgraded["status"], upgraded["aborted"]) == (101, False)
    assert (upgraded["path"], upgraded["app"]) == ("/chat/ws", "plugin:chat")

    # Shutdown does not wait on the open socket: it is closed with 1001.
    status = await proc.stop()
    assert status in (0, -15)
    assert await within(client.closed) == (True, 1001, "going away")
    [closed] = proc.messages("buntime:websocket:closed")
    assert (closed["request_id"], closed["code"], closed["plugin"]) == ("ws-1", 1001, "chat")
    assert proc.unparsed == []

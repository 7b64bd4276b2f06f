"""
An app's WebSocket accepted after its client left: the relay has no
connection to hand over, and the app must hear that its client is gone
(else its handler waits in C{receive()} forever and its worker counts the
request in flight for good).
"""

from __future__ import annotations

from http1_client import Door, connect, holding
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from buntime.http import Headers, Request, Response
from buntime.pool.commands import WebSocketDisconnect
from buntime.pool.websocket import WorkerSocket
from buntime.web.websocket import WebSockets

UPGRADE = (
    b"GET /chat/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_a_socket_accepted_after_the_client_left_tells_the_app() -> None:
    client = connect(Door(holding("/chat/ws")))
    client.send(UPGRADE)
    [exchange] = client.door.seen
    client.transport.loseConnection()  # the client leaves while the app decides
    assert exchange.gone

    calls: list[tuple[object, dict]] = []
    abandoned: list[bool] = []

    def call_remote(command: object, **arguments: object):
        calls.append((command, arguments))
        return succeed({})

    socket = WorkerSocket(call_remote, 7, lambda: abandoned.append(True))
    websockets = WebSockets(clock=Clock())
    request = Request._of(
        "GET", "/chat/ws", Headers._of([("host", "a")]), b"", "127.0.0.1", 1, None, None, "1.1"
    )
    websockets.relay(exchange, request, Response(101, [], socket), {"app": "chat@latest"})

    assert [command for command, _ in calls] == [WebSocketDisconnect]
    assert abandoned == [True]
    assert websockets.open == 0  # nothing left for a shutdown to wait on

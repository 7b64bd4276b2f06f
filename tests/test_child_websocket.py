"""
WebSockets in the worker: the client's messages queued for the app
(L{buntime.pool.child.websocket}) and the ASGI C{websocket} scope
(L{buntime.pool.child.asgi}), with the worker's AMP connection faked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from attrs import define, field
from test_child_protocol import Sender, incoming
from twisted.internet.defer import CancelledError, Deferred
from twisted.protocols import amp

from buntime.pool import events
from buntime.pool.child.asgi import AsgiAdapter
from buntime.pool.child.body import HIGH_WATER
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.websocket import GONE, SocketInbox, wants_websocket
from buntime.pool.child.writer import ResponseWriter
from buntime.pool.stream import CHUNK_SIZE

UPGRADE = [["Host", "example.com"], ["Connection", "keep-alive, Upgrade"], ["Upgrade", "websocket"]]


def test_wants_websocket() -> None:
    assert wants_websocket("GET", UPGRADE)
    assert wants_websocket("get", [["connection", "UPGRADE"], ["upgrade", "h2c, WebSocket"]])
    assert not wants_websocket("POST", UPGRADE)
    assert not wants_websocket("GET", [["Upgrade", "websocket"]])  # no Connection: upgrade
    assert not wants_websocket("GET", [["Connection", "upgrade"], ["Upgrade", "h2c"]])


# -- the inbox -----------------------------------------------------------------


def test_messages_arrive_whole_and_in_order() -> None:
    inbox = SocketInbox()
    assert inbox.feed(b"hel", False, False) is None
    assert inbox.feed(b"lo", False, True) is None
    inbox.feed(b"\x00", True, True)
    assert inbox.next().result == (False, b"hello")
    assert inbox.next().result == (True, b"\x00")
    waiting = inbox.next()
    assert not waiting.called
    inbox.feed(b"later", False, True)
    assert waiting.result == (False, b"later")


def test_close_comes_after_the_messages_before_it() -> None:
    inbox = SocketInbox()
    inbox.feed(b"last words", False, True)
    inbox.feed(b"half a mess", False, False)  # a message the client never finished
    inbox.disconnect(1000, "bye")
    assert inbox.closed == (1000, "bye")
    assert inbox.next().result == (False, b"last words")
    assert inbox.next().result == 1000
    assert inbox.next().result == 1000
    assert inbox.feed(b"too late", False, True) is None


def test_a_waiting_app_hears_the_close() -> None:
    inbox = SocketInbox()
    waiting = inbox.next()
    inbox.disconnect(GONE)
    assert waiting.result == GONE


def test_feeding_waits_while_the_app_is_behind() -> None:
    inbox = SocketInbox()
    piece = b"x" * CHUNK_SIZE
    answers = [inbox.feed(piece, True, True) for _ in range(HIGH_WATER // CHUNK_SIZE + 2)]
    held = [answer for answer in answers if answer is not None]
    assert answers[0] is None and len(held) == 2
    assert not any(answer.called for answer in held)
    for _ in answers:
        inbox.next()
    assert all(answer.called for answer in held)


def test_a_close_releases_held_feeds() -> None:
    inbox = SocketInbox()
    held = None
    while held is None:
        held = inbox.feed(b"x" * CHUNK_SIZE, True, True)
    inbox.disconnect(GONE)
    assert held.called


def test_a_cancelled_receive_can_be_made_again() -> None:
    inbox = SocketInbox()
    waiting = inbox.next()
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    waiting.cancel()
    again = inbox.next()
    inbox.feed(b"hi", False, True)
    assert again.result == (False, b"hi")


# -- the ASGI websocket scope ------------------------------------------------------


@define(eq=False)
class SocketSender(Sender):
    """A L{Sender} that can also hold the answers to C{WebSocketSend}."""

    hold_sends: bool = False
    held_sends: list[Deferred] = field(factory=list)

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred | None:
        answer = super().callRemote(command, **arguments)
        if self.hold_sends and command is events.WebSocketSend:
            waiting: Deferred = Deferred()
            self.held_sends.append(waiting)
            return waiting
        return answer

    def sends(self) -> list[tuple[bytes, bool, bool]]:
        return [
            (arguments["data"], arguments["binary"], arguments["final"])
            for name, arguments in self.sent
            if name == "WebSocketSend"
        ]


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def turns(loop: asyncio.AbstractEventLoop, count: int = 10) -> None:
    """Let the loop run C{count} rounds of what is ready (no clock involved)."""
    for _ in range(count):
        loop.run_until_complete(asyncio.sleep(0))


def upgrade_request(headers: list | None = None) -> IncomingRequest:
    request = incoming("GET", "/ws?room=1", headers=headers or UPGRADE, base="/chat@1")
    return IncomingRequest(
        request.method,
        request.target,
        request.base,
        request.headers,
        request.body,
        request.remote,
        SocketInbox(),
    )


def serve(loop, app, request: IncomingRequest, sender: Sender) -> Deferred:
    return AsgiAdapter(app, loop).handle(request, ResponseWriter(sender, 7))


def test_websocket_scope(loop) -> None:
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.close"})

    headers = [
        *UPGRADE,
        ["Sec-WebSocket-Protocol", "chat, superchat"],
        ["X-Forwarded-Proto", "https"],
    ]
    done = serve(loop, app, upgrade_request(headers), Sender())
    turns(loop)
    assert done.called
    [scope] = scopes
    assert scope["type"] == "websocket" and "method" not in scope
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["scheme"], scope["path"], scope["root_path"]) == ("wss", "/chat@1/ws", "/chat@1")
    assert scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["chat", "superchat"]


def test_accept_send_and_close(loop) -> None:
    sender = SocketSender()

    async def app(scope, receive, send):
        await receive()
        await send(
            {"type": "websocket.accept", "subprotocol": "chat", "headers": [(b"x-app", b"1")]}
        )
        await send({"type": "websocket.send", "text": "héllo"})
        await send({"type": "websocket.send", "bytes": b"\x00\x01"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done"})

    done = serve(loop, app, upgrade_request(), sender)
    turns(loop)
    assert done.called
    assert sender.names == [
        "ResponseStart",
        "WebSocketSend",
        "WebSocketSend",
        "WebSocketClose",
        "ResponseEnd",
    ]
    start = sender.sent[0][1]
    assert (start["status"], start["end"]) == (101, False)
    assert json.loads(start["headers"]) == [["x-app", "1"], ["sec-websocket-protocol", "chat"]]
    assert sender.sends() == [("héllo".encode(), False, True), (b"\x00\x01", True, True)]
    assert sender.sent[3][1] == {"rid": 7, "code": 4001, "reason": "done"}


def test_a_big_message_goes_in_pieces(loop) -> None:
    sender = SocketSender()
    message = bytes(range(256)) * 1000  # 256 000 bytes: five pieces

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": message})
        await send({"type": "websocket.close"})

    serve(loop, app, upgrade_request(), sender)
    turns(loop)
    sends = sender.sends()
    assert [final for _, _, final in sends] == [False] * 4 + [True]
    assert all(len(data) <= CHUNK_SIZE for data, _, _ in sends)
    assert b"".join(data for data, _, _ in sends) == message


def test_the_client_s_messages_then_its_close(loop) -> None:
    received = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    request = upgrade_request()
    assert request.socket is not None
    sender = SocketSender()
    done = serve(loop, app, request, sender)
    turns(loop)
    request.socket.feed("hi ☃".encode(), False, True)
    request.socket.feed(b"\xff", True, True)
    request.socket.disconnect(1001, "away")
    turns(loop)
    assert done.called
    assert received == [
        {"type": "websocket.receive", "text": "hi ☃"},
        {"type": "websocket.receive", "bytes": b"\xff"},
        {"type": "websocket.disconnect", "code": 1001, "reason": "away"},
    ]
    # the client closed: the app's return sends no close of its own
    assert sender.names == ["ResponseStart", "ResponseEnd"]


def test_an_app_that_returns_without_closing_closes_with_1000(loop) -> None:
    sender = SocketSender()

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})

    serve(loop, app, upgrade_request(), sender)
    turns(loop)
    assert sender.names == ["ResponseStart", "WebSocketClose", "ResponseEnd"]
    assert sender.sent[1][1]["code"] == 1000


def test_closing_before_accepting_is_a_403(loop) -> None:
    sender = SocketSender()

    async def app(scope, receive, send):
        await send({"type": "websocket.close", "code": 1008})

    done = serve(loop, app, upgrade_request(), sender)
    turns(loop)
    assert done.called and done.result is None
    assert sender.names == ["ResponseStart"]
    assert sender.response() == (403, {}, b"")


def test_an_app_may_refuse_with_a_response_of_its_own(loop) -> None:
    """
    The C{websocket.http.response} extension, as uvicorn offers it: what
    Starlette's C{send_denial_response} and FastAPI's C{HTTPException} in a
    WebSocket route send.
    """
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": b'{"detail":', "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b'"no token"}'})

    sender = SocketSender()
    done = serve(loop, app, upgrade_request(), sender)
    turns(loop)
    assert done.called and done.result is None
    assert scopes[0]["extensions"] == {"websocket.http.response": {}}
    assert sender.response() == (
        401,
        {"content-type": "application/json"},
        b'{"detail":"no token"}',
    )


def test_a_denial_response_left_unfinished_fails(loop) -> None:
    async def app(scope, receive, send):
        await send({"type": "websocket.http.response.start", "status": 401})

    done = serve(loop, app, upgrade_request(), SocketSender())
    turns(loop)
    failures = []
    done.addErrback(failures.append)
    assert "before completing its denial response" in str(failures[0].value)


def test_returning_without_an_answer_fails(loop) -> None:
    async def app(scope, receive, send):
        await receive()

    done = serve(loop, app, upgrade_request(), SocketSender())
    turns(loop)
    failures = []
    done.addErrback(failures.append)
    assert "without accepting or closing" in str(failures[0].value)


def test_sending_after_the_client_left_ends_quietly(loop) -> None:
    """As ASGI 2.4 asks, C{send} raises an C{OSError}; an app that lets it go is not at fault."""
    raised = []

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.connect"
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as error:
            raised.append(error)
            raise

    request = upgrade_request()
    sender = SocketSender()
    done = serve(loop, app, request, sender)
    turns(loop)
    request.socket.disconnect(GONE)  # type: ignore[union-attr]
    turns(loop)
    assert len(raised) == 1
    assert done.called and done.result is None
    assert sender.names == ["ResponseStart", "ResponseEnd"]


def test_a_slow_client_holds_the_app(loop) -> None:
    sender = SocketSender(hold_sends=True)
    progress = []

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        for text in ("1", "2"):
            await send({"type": "websocket.send", "text": text})
            progress.append(text)
        await send({"type": "websocket.close"})

    done = serve(loop, app, upgrade_request(), sender)
    turns(loop)
    assert progress == [] and len(sender.held_sends) == 1
    sender.held_sends.pop().callback({})
    turns(loop)
    assert progress == ["1"]
    sender.hold_sends = False
    sender.held_sends.pop().callback({})
    turns(loop)
    assert progress == ["1", "2"] and done.called


def test_sends_only_on_an_accepted_socket() -> None:
    writer = ResponseWriter(Sender(), 1)
    failures: list = []
    writer.send_message(b"x", True).addErrback(failures.append)
    writer.start(200, [])
    writer.write(b"")
    writer.send_message(b"x", True).addErrback(failures.append)
    assert [str(f.value) for f in failures] == ["no WebSocket was accepted on this response"] * 2

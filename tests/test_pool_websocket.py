"""
The runtime's end of an app's WebSocket: the pool's L{WorkerSocket} over a
real AMP connection to a fake worker, and the front door's relay protocol
(L{buntime.web.appsocket.AppSocket}) speaking real WebSocket frames to a
client over a string transport.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest
import txaio
from attrs import define, field
from fakes import ChildRequest, FakeLauncher, result_of
from test_worker import started
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from buntime.http import Headers, Request
from buntime.pool.commands import CHUNK_SIZE
from buntime.pool.websocket import WorkerSocket
from buntime.web.appsocket import MAX_MESSAGE, RELAY_HIGH_WATER, AppSocket
from buntime.web.websocket import CLOSE_GRACE, WebSockets

ACCEPTED = [("sec-websocket-protocol", "chat"), ("x-app", "1")]


@define(eq=False)
class Peer:
    """Stands in for the client's WebSocket protocol."""

    sent: list[tuple[bytes, bool]] = field(factory=list)
    closed: list[tuple[int, str]] = field(factory=list)
    slow: bool = False
    waiting: list[Deferred] = field(factory=list)

    def send_message(self, data: bytes, binary: bool) -> Deferred | None:
        self.sent.append((data, binary))
        if not self.slow:
            return None
        waiting: Deferred = Deferred()
        self.waiting.append(waiting)
        return waiting

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def accepting(requests: list[ChildRequest], early: bytes | None = None, close: int | None = None):
    async def handler(request: ChildRequest) -> None:
        requests.append(request)
        request.start(101, ACCEPTED, b"", end=False)
        if early is not None:
            request.socket_send(early)
        if close is not None:
            request.socket_close(close, "app says")

    return handler


def opened(handler) -> tuple[FakeLauncher, object, WorkerSocket]:
    launcher, worker = started(handler)
    answer = worker.request(Request("GET", "/ws"), "/chat", timeout=30)
    launcher.settle()
    response = result_of(answer)
    assert response.status == 101
    assert list(response.headers.items()) == ACCEPTED
    assert type(response.body) is WorkerSocket
    return launcher, worker, response.body


def test_what_the_app_sends_before_the_client_is_attached_waits() -> None:
    requests: list[ChildRequest] = []
    _launcher, worker, socket = opened(accepting(requests, early=b"welcome"))
    peer = Peer()
    socket.attach(peer)
    assert peer.sent == [(b"welcome", False)]
    assert worker.in_flight == 1  # a socket is a request in flight until the app returns


def test_messages_both_ways_in_pieces() -> None:
    requests: list[ChildRequest] = []
    launcher, _worker, socket = opened(accepting(requests))
    peer = Peer()
    socket.attach(peer)
    [request] = requests
    big = os.urandom(3 * CHUNK_SIZE + 5)
    taken = socket.client_message(big, True)
    launcher.settle()
    assert taken.called
    assert [(len(d), b, f) for d, b, f in request.socket_in] == [
        (CHUNK_SIZE, True, False),
        (CHUNK_SIZE, True, False),
        (CHUNK_SIZE, True, False),
        (5, True, True),
    ]
    assert b"".join(d for d, _, _ in request.socket_in) == big
    request.socket_send(b"par", final=False)
    request.socket_send(b"tial", final=True)
    request.socket_send(b"\x00", binary=True)
    launcher.settle()
    assert peer.sent == [(b"partial", False), (b"\x00", True)]


def test_the_client_closing_reaches_the_app_once_then_the_app_ends() -> None:
    requests: list[ChildRequest] = []
    launcher, worker, socket = opened(accepting(requests))
    peer = Peer()
    socket.attach(peer)
    socket.client_closed(1000, "bye")
    socket.client_closed(1006, "")
    launcher.settle()
    assert requests[0].socket_closed == (1000, "bye")
    requests[0].end()
    launcher.settle()
    assert worker.in_flight == 0
    assert result_of(socket.client_message(b"late", False)) is None  # the app is gone: dropped


def test_the_app_closing_before_the_client_is_attached() -> None:
    requests: list[ChildRequest] = []
    _, _, socket = opened(accepting(requests, close=4001))
    peer = Peer()
    socket.attach(peer)
    assert peer.closed == [(4001, "app says")]


def test_a_failed_app_or_a_dead_worker_closes_with_1011() -> None:
    requests: list[ChildRequest] = []
    launcher, worker, socket = opened(accepting(requests))
    peer = Peer()
    socket.attach(peer)
    launcher.processes[-1].die(-9)
    launcher.settle()
    assert peer.closed == [(1011, "")]
    assert worker.in_flight == 0


def test_a_slow_client_holds_the_app() -> None:
    requests: list[ChildRequest] = []
    launcher, _, socket = opened(accepting(requests))
    peer = Peer(slow=True)
    socket.attach(peer)
    answered = requests[0].socket_send(b"one")
    launcher.settle()
    assert peer.sent == [(b"one", False)] and not answered.called
    peer.waiting.pop().callback(None)
    launcher.settle()
    assert answered.called


def test_a_slow_app_holds_the_client() -> None:
    requests: list[ChildRequest] = []
    launcher, _, socket = opened(accepting(requests))
    socket.attach(Peer())
    launcher.processes[-1].child.hold_receives = held = []
    taken = socket.client_message(b"hi", False)
    launcher.settle()
    assert not taken.called and len(held) == 1
    held.pop().callback(None)
    launcher.settle()
    assert taken.called


def test_an_unused_socket_tells_the_app_the_client_left() -> None:
    requests: list[ChildRequest] = []
    launcher, worker, socket = opened(accepting(requests))
    result_of(Deferred.fromCoroutine(socket.aclose()))
    launcher.settle()
    assert requests[0].socket_closed == (1006, "")
    assert requests[0].cancelled and worker.in_flight == 0


# -- the relay protocol ------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(path: str = "/chat/ws", protocols: str = "superchat, chat") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {protocols}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked frame, as a client sends it (RFC 6455 §5.2)."""
    mask = b"\x01\x02\x03\x04"
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + masked


@define(eq=False)
class RecordingSocket:
    """Stands in for the pool's L{WorkerSocket}: what the relay gives the app."""

    peer: object = None
    messages: list[tuple[bytes, bool]] = field(factory=list)
    closed: list[tuple[int, str]] = field(factory=list)
    pending: list[Deferred] = field(factory=list)

    def attach(self, peer: object) -> None:
        self.peer = peer

    def client_message(self, data: bytes, binary: bool) -> Deferred:
        self.messages.append((data, binary))
        waiting: Deferred = Deferred()
        self.pending.append(waiting)
        return waiting

    def client_closed(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def relay(
    accepted: list[tuple[str, str]] = ACCEPTED, clock: MemoryReactorClock | None = None
) -> tuple[AppSocket, RecordingSocket, StringTransport]:
    socket = RecordingSocket()
    protocol = AppSocket(socket, Headers(accepted))  # type: ignore[arg-type]
    protocol.factory = WebSockets(clock=clock or MemoryReactorClock())._relays
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake())
    return protocol, socket, transport


def test_the_handshake_answers_as_the_app_accepted() -> None:
    accepted = [*ACCEPTED, ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("content-length", "0")]
    protocol, socket, transport = relay(accepted)
    head = transport.value().decode("latin-1")
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert "Sec-WebSocket-Protocol: chat\r\n" in head
    assert "x-app: 1\r\n" in head
    assert "set-cookie: a=1\r\nset-cookie: b=2\r\n" in head
    assert "content-length" not in head.lower()
    assert socket.peer is protocol  # open: the app's messages now go to this client


def test_a_subprotocol_the_client_did_not_offer_is_answered_as_the_app_chose() -> None:
    """As uvicorn answers it (the client then judges), not left without an answer."""
    protocol, socket, transport = relay([("sec-websocket-protocol", "other")])
    head = transport.value().decode("latin-1")
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert "Sec-WebSocket-Protocol: other\r\n" in head
    assert socket.peer is protocol


def test_client_messages_reach_the_app_and_reading_pauses_while_it_is_behind() -> None:
    protocol, socket, transport = relay()
    protocol.dataReceived(client_frame("héllo".encode(), opcode=0x1))
    assert socket.messages == [("héllo".encode(), False)]
    big = b"x" * (RELAY_HIGH_WATER // 2 + 1)
    protocol.dataReceived(client_frame(big))
    assert transport.producerState == "producing"
    protocol.dataReceived(client_frame(big))
    assert transport.producerState == "paused"
    for waiting in socket.pending:
        waiting.callback(None)
    assert transport.producerState == "producing"


def test_app_messages_wait_while_the_client_s_buffer_is_full() -> None:
    protocol, _socket, transport = relay()
    transport.clear()
    assert protocol.send_message(b"one", True) is None
    assert transport.value().endswith(b"one")
    transport.producer.pauseProducing()  # the transport's buffer is full
    waiting = protocol.send_message(b"two", True)
    assert waiting is not None and not waiting.called
    transport.producer.resumeProducing()
    assert waiting.called


def test_a_client_that_does_not_read_is_read_no_more() -> None:
    """
    A client whose buffer is full (it reads nothing) is read no more until
    it has room, as the runtime does with pipelined HTTP requests: its
    pings are not answered into an unbounded write buffer (a client that
    sends pings and reads nothing grew the runtime by what it sent).
    """
    protocol, socket, transport = relay()
    transport.producer.pauseProducing()  # the transport's buffer is full
    assert transport.producerState == "paused"
    protocol.dataReceived(client_frame(b"sent before"))
    socket.pending[0].callback(None)  # the app takes it: the client still reads nothing
    assert transport.producerState == "paused"
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"


def test_an_app_message_over_the_client_s_limit_goes_out() -> None:
    """
    The 16 MiB limit is on what a client sends: a bigger message from the
    app reaches the client whole (as under uvicorn), and the app's send
    does not fail (that failure took the whole worker down).
    """
    protocol, _socket, transport = relay()
    transport.clear()
    big = b"b" * (MAX_MESSAGE + 1)
    assert protocol.send_message(big, True) is None
    assert protocol.send_message(b"after", False) is None
    frames = parse_frames(transport.value())
    assert frames[-1] == (True, 0x1, b"after")
    assert frames[0][1] == 0x2
    assert b"".join(payload for _, _, payload in frames[:-1]) == big
    assert [fin for fin, _, _ in frames[:-1]] == [False] * (len(frames) - 2) + [True]


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """The unmasked frames a server sent: C{(fin, opcode, payload)}."""
    frames = []
    while data:
        fin, opcode, length = bool(data[0] & 0x80), data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if length == 126:
            (length,), start = struct.unpack("!H", data[2:4]), 4
        elif length == 127:
            (length,), start = struct.unpack("!Q", data[2:10]), 10
        frames.append((fin, opcode, data[start : start + length]))
        data = data[start + length :]
    return frames


def test_the_client_closing_reaches_the_app_with_its_code() -> None:
    protocol, socket, transport = relay()
    transport.clear()
    protocol.dataReceived(client_frame(struct.pack("!H", 1001) + b"away", opcode=0x8))
    assert socket.closed == [(1001, "away")]  # the app hears of it at once
    assert transport.value()[:1] == b"\x88"  # the close answered
    assert transport.disconnecting  # and the connection dropped
    protocol.connectionLost(Failure(ConnectionDone()))


def test_a_message_over_the_limit_gets_a_1009_close_frame() -> None:
    """
    As from uvicorn: the client gets a close frame with 1009 (not a
    connection dropped unanswered), then the closing handshake.
    """
    protocol, socket, transport = relay()
    transport.clear()
    mask = b"\x01\x02\x03\x04"
    protocol.dataReceived(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", MAX_MESSAGE + 1) + mask)
    frame = transport.value()
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4]) == (1009,)
    assert not transport.disconnecting  # waiting for the client's answer
    protocol.dataReceived(b"z" * 1000)  # the rest of the message is not kept
    assert socket.messages == []


def test_text_that_is_not_utf8_gets_a_1007_close_frame() -> None:
    protocol, socket, transport = relay()
    transport.clear()
    protocol.dataReceived(client_frame(b"\xff\xfe", opcode=0x1))
    frame = transport.value()
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4]) == (1007,)
    assert socket.messages == []


def test_a_client_has_seconds_to_answer_an_app_s_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """autobahn rounds its timers down to the second: a client is not cut off within one."""
    clock = MemoryReactorClock()
    monkeypatch.setattr(txaio.config, "loop", clock)  # autobahn's timers run on txaio's loop
    clock.advance(0.9)
    protocol, _socket, transport = relay(clock=clock)
    protocol.close(1000, "bye")
    clock.advance(1.0)
    assert not transport.disconnecting
    clock.advance(CLOSE_GRACE)
    assert transport.disconnecting  # one that never answers is dropped


def test_an_app_close_code_a_frame_cannot_carry_becomes_1011() -> None:
    protocol, _socket, transport = relay()
    transport.clear()
    protocol.close(1005, "no")  # 1005 must never be sent (RFC 6455 §7.4.1)
    frame = transport.value()
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4]) == (1011,)


def test_a_retiring_worker_asks_its_clients_to_reconnect() -> None:
    """Stopping a worker closes its sockets with 1012; their apps' calls then end the drain."""
    requests: list[ChildRequest] = []
    launcher, worker, socket = opened(accepting(requests))
    peer = Peer()
    socket.attach(peer)
    stopped = Deferred.fromCoroutine(worker.stop(delay=0.1, grace=30))
    launcher.settle()
    assert peer.closed == [(1012, "worker retiring")]
    assert child_of(launcher).terminates == 0  # draining: the app's call is still on
    socket.client_closed(1012, "")  # the client answers the close ...
    launcher.settle()
    assert requests[0].socket_closed == (1012, "")
    requests[0].end()  # ... and the app returns
    launcher.settle()
    assert child_of(launcher).terminates == 1
    assert result_of(stopped) is None


def child_of(launcher: FakeLauncher):
    return launcher.processes[-1].child

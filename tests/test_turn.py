"""
Calls at the end of the reactor turn (L{buntime._turn.EndOfTurn}), and
writes straight to the socket (L{buntime.sockets}).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from buntime._turn import EndOfTurn
from buntime.sockets import direct_socket, send_now


def test_calls_wait_for_the_end_of_the_turn_and_run_in_order() -> None:
    clock, called = Clock(), []
    turn = EndOfTurn.of(clock)
    assert EndOfTurn.of(clock) is turn
    turn.add(lambda: called.append(1))
    turn.add(lambda: called.append(2))
    assert called == []
    clock.advance(0)
    assert called == [1, 2] and not clock.getDelayedCalls()


def test_a_failing_call_is_logged_and_the_others_still_run(eliot_logger) -> None:
    clock, called = Clock(), []
    turn = EndOfTurn.of(clock)

    def broken() -> None:
        raise RuntimeError("one connection's bug")

    turn.add(lambda: called.append("before"))
    turn.add(broken)
    turn.add(lambda: called.append("after"))
    clock.advance(0)
    assert called == ["before", "after"]
    [failed] = [
        message
        for message in eliot_logger.messages
        if message.get("message_type") == "buntime:turn:call-failed"
    ]
    assert failed["level"] == "error"
    assert "RuntimeError: one connection's bug" in failed["traceback"]
    turn.add(lambda: called.append("next turn"))  # the turn goes on being used
    clock.advance(0)
    assert called[-1] == "next turn"


def _pair(family: int) -> tuple[socket.socket, socket.socket]:
    if family == socket.AF_UNIX:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    return ours, theirs


async def _received(sock: socket.socket, size: int) -> bytes:
    from twisted.internet import reactor

    data = b""
    for _ in range(200):
        try:
            data += sock.recv(65536)
        except BlockingIOError:
            pass
        if len(data) >= size:
            break
        await deferLater(reactor, 0.01)
    return data


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["tcp", "unix"])
@pytest_twisted.ensureDeferred
async def test_the_twisted_internals_send_now_reads_are_there(family: int) -> None:
    """
    L{send_now} reads Twisted's private buffer of a socket transport
    (C{dataBuffer}, C{_tempDataLen}, C{_sendmsgQueue}).  When this fails,
    Twisted changed them: fix L{buntime._turn} before raising its bound in
    pyproject.toml.
    """
    from twisted.internet import reactor

    ours, theirs = _pair(family)
    ours.setblocking(False)
    theirs.setblocking(False)
    protocol = Protocol()
    factory = Factory.forProtocol(Protocol)
    factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
    reactor.adoptStreamConnection(ours.fileno(), family, factory)
    ours.close()  # Twisted has its own copy
    transport: Any = protocol.transport
    try:
        sock = direct_socket(transport)
        assert sock is not None, "a plain TCP or UNIX connection is sent on directly"
        assert transport.dataBuffer == b"" and transport._tempDataLen == 0
        send_now(transport, sock, b"1")  # nothing waits: sent now
        assert theirs.recv(10) == b"1"

        transport.write(b"2")  # waits for the reactor...
        assert transport.dataBuffer or transport._tempDataLen, "Twisted's buffer moved"
        send_now(transport, sock, b"3")  # ... and what comes after it waits too
        with pytest.raises(BlockingIOError):
            theirs.recv(10)
        assert await _received(theirs, 2) == b"23"
        assert transport.dataBuffer == b"" and transport._tempDataLen == 0

        if family == socket.AF_UNIX:  # descriptors to pass go before any data sent after them
            assert transport._sendmsgQueue == []
            transport.sendFileDescriptor(theirs.fileno())
            assert transport._sendmsgQueue, "Twisted's queue of descriptors moved"
            send_now(transport, sock, b"4")
            with pytest.raises(BlockingIOError):
                theirs.recv(10)
            assert (await _received(theirs, 1)).endswith(b"4")
    finally:
        transport.abortConnection()
        theirs.close()


def test_only_plain_socket_transports_are_sent_on_directly() -> None:
    assert direct_socket(StringTransport()) is None
    assert direct_socket(iosim.FakeTransport(Protocol(), isServer=True)) is None

"""How a worker connects to its channel (L{buntime.pool.child.main.listen})."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure

from buntime.pool.child.main import WorkerMain, listen
from buntime.sockets import direct_socket


class Echo(Protocol):
    """Writes back what it reads; C{lost} fires when the channel closes."""

    def __init__(self) -> None:
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


def _read(end: socket.socket | int, size: int) -> Deferred:
    """C{size} bytes from C{end} (a socket or a pipe's fd), read as the reactor turns."""
    done: Deferred = Deferred()
    got = bytearray()

    def poll() -> None:
        try:
            chunk = end.recv(size) if isinstance(end, socket.socket) else os.read(end, size)
        except BlockingIOError:
            chunk = b""
        got.extend(chunk)
        if len(got) >= size:
            done.callback(bytes(got))
        else:
            reactor.callLater(0.01, poll)

    poll()
    return done


@pytest_twisted.ensureDeferred
async def test_one_socket_on_both_fds_is_a_socket_connection() -> None:
    """A forked worker's channel: its writes can go out with one send (L{direct_socket})."""
    ours, theirs = socket.socketpair()
    fds = (os.dup(theirs.fileno()), os.dup(theirs.fileno()))
    theirs.close()
    protocol = Echo()
    try:
        listen(protocol, reactor, fds)
        assert not isinstance(protocol.transport, StandardIO)
        assert direct_socket(protocol.transport) is not None
        ours.setblocking(False)
        ours.sendall(b"ping")
        assert await _read(ours, 4) == b"PING"
    finally:
        for fd in fds:
            os.close(fd)
    ours.close()
    await protocol.lost  # the runtime's end closing ends it (its own dup closed too)


@pytest_twisted.ensureDeferred
async def test_two_pipes_are_standard_io() -> None:
    """A spawned worker's channel: a pipe in, a pipe out."""
    into, feed = os.pipe()
    drain, out = os.pipe()
    os.set_blocking(drain, False)
    protocol = Echo()
    listen(protocol, reactor, (into, out))
    assert isinstance(protocol.transport, StandardIO)
    os.write(feed, b"pong")
    assert await _read(drain, 4) == b"PONG"
    os.close(feed)
    await protocol.lost
    os.close(drain)


class _StoppableReactor:
    running = True
    stopped = False

    def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("lost", [ConnectionLost, ConnectionDone])
def test_a_channel_closed_before_ready_is_answered_is_no_crash(capsys, lost) -> None:
    """The runtime retired a starting worker: it exits quietly, not with a traceback."""
    stoppable = _StoppableReactor()
    main = WorkerMain(stoppable, None, {})
    main._crashed(Failure(lost()))
    assert (stoppable.stopped, main.exit_code) == (True, 0)
    assert capsys.readouterr().err == ""


def test_a_failure_of_the_worker_itself_is_reported(capsys) -> None:
    stoppable = _StoppableReactor()
    main = WorkerMain(stoppable, None, {})
    main._crashed(Failure(RuntimeError("boom")))
    assert (stoppable.stopped, main.exit_code) == (True, 1)
    assert "The worker failed" in capsys.readouterr().err

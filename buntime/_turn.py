"""
Writing at the end of the reactor turn, straight to the socket.

Sent one by one while the reactor goes on with its turn, small writes to
another process wake it once each; gathered and sent at the end of the
turn, one wake-up serves many (as in twisted.web, whose writes wait for the
next turn).  And a write Twisted buffers costs it two C{epoll_ctl} calls (to
be told when the socket takes data, and to stop) besides the C{send()}:
sending at once when nothing waits in its buffer saves both.  The HTTP
connections' answers (L{buntime.web.http1}) and the boxes to workers
(L{buntime.pool.wire}) go out this way.

This is the one module that reads Twisted's internals: a socket
transport's buffer (C{dataBuffer}, C{_tempDataLen}) and the descriptors a
UNIX socket waits to pass (C{_sendmsgQueue}), to know that nothing waits
before a C{send()} of its own.  Measured against C{transport.write} (see
docs/performance.md): 8 % fewer instructions per warm noop request, 6 % per
1 KiB echo.  So Twisted's version is bounded in C{pyproject.toml}, and
C{tests/test_turn.py} fails loudly when these attributes change meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet import tcp
from twisted.python.failure import Failure

from buntime.logs import log

_TURNS: WeakKeyDictionary[Any, EndOfTurn] = WeakKeyDictionary()


class EndOfTurn:
    """What to call once the reactor (C{clock}) has done with its current turn."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._calls: list[Callable[[], object]] = []

    @classmethod
    def of(cls, clock: Any) -> EndOfTurn:
        """The one for C{clock}: everything it is given runs after one C{callLater(0)}."""
        turn = _TURNS.get(clock)
        if turn is None:
            turn = _TURNS[clock] = cls(clock)
        return turn

    def add(self, call: Callable[[], object]) -> None:
        """
        Call C{call()} at the end of this turn, after what was added before;
        one that raises is logged, and the others are called all the same.
        """
        if not self._calls:
            self._clock.callLater(0, self._run)
        self._calls.append(call)

    def _run(self) -> None:
        # one connection's failing call must not keep the others' data unsent
        calls, self._calls = self._calls, []
        for call in calls:
            try:
                call()
            except Exception:
                log(
                    "error",
                    "buntime:turn:call-failed",
                    f"A call at the end of the reactor turn failed: {call!r}",
                    traceback=Failure().getTraceback(),
                )


def direct_socket(transport: Any) -> Any:
    """
    The socket L{send_now} may write on for C{transport}: a plain (not TLS)
    TCP or UNIX stream connection's; C{None} for any other transport.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and hasattr(transport, "dataBuffer")
        and hasattr(transport, "_tempDataLen")
    ):
        return transport.getHandle()
    return None


def send_now(transport: Any, sock: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent on C{sock} (the transport's
    L{direct_socket}, or C{None}: never) at once when nothing waits in the transport's buffer;
    what the socket cannot take now goes to the transport, after it.
    """
    if (
        sock is not None
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
        and not getattr(transport, "_sendmsgQueue", None)  # descriptors to pass go first
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # would block, or broken: Twisted's own write finds out which
        data = data[sent:]
    if data:
        transport.write(data)

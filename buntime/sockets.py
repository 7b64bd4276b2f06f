"""
Writing straight to a socket: a write Twisted buffers costs it two
C{epoll_ctl} calls (to be told when the socket takes data, and to stop)
and a turn of the reactor besides the C{send()}; sending at once when
nothing waits in the transport's buffer saves all three.  The HTTP
connections' answers, the boxes to workers and the proxy's requests to
its upstreams go out this way.

This is the one module that reads Twisted's internals: a socket
transport's buffer (C{dataBuffer}, C{_tempDataLen}) and the descriptors a
UNIX socket waits to pass (C{_sendmsgQueue}), to know that nothing waits
before a C{send()} of its own.  Measured against C{transport.write} (see
docs/performance.md): 8 % fewer instructions per warm noop request, 6 % per
1 KiB echo.  So Twisted's version is bounded in C{pyproject.toml}, and
C{tests/test_turn.py} fails loudly when these attributes change meaning.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


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

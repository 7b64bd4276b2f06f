"""
The app's C{sys.stdout} and C{sys.stderr} inside a worker.

Each C{write} goes to the runtime at once as frames on the output channel
(L{buntime.pool.output.OUTPUT_FD}), with the id of the request it was
written for (L{in_request}; asyncio tasks and WSGI threads inherit it) and
the writing thread, so the runtime can log a traceback written in many
pieces as one record and tell concurrent requests apart.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO

from buntime.pool.output import OUTPUT_FD, encode_frames

request_id: ContextVar[str | None] = ContextVar("buntime_request_id", default=None)
"""The C{x-request-id} of the request the running code serves (C{None}: none)."""


@contextmanager
def in_request(rid: str | None) -> Iterator[None]:
    """Code run inside (and tasks it starts) writes for the request C{rid}."""
    token = request_id.set(rid)
    try:
        yield
    finally:
        request_id.reset(token)


class OutputChannel:
    """The worker's end of the output channel, shared by both streams and every thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.RLock()  # reentrant: a signal handler may print mid-write
        os.register_at_fork(after_in_child=self._forked)

    def send(self, stream: str, text: str) -> None:
        """Frame C{text} and write it out, whole, before any other thread's."""
        data = b"".join(encode_frames(stream, text, request_id.get(), threading.get_ident()))
        with self._lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.fd, view)
                except OSError:
                    return  # the runtime is gone: the worker is about to be too
                view = view[written:]

    def _forked(self) -> None:
        self._lock = threading.RLock()  # another thread may have held it at the fork


class FramedStream(io.TextIOBase):
    """
    A text stream whose writes go to an L{OutputChannel}; what reads the
    file descriptor (C{fileno}, C{buffer}) gets C{original}'s, unframed.
    """

    def __init__(self, channel: OutputChannel, name: str, original: IO[str]) -> None:
        super().__init__()
        self.channel = channel
        self.stream = name
        self.original = original

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self.channel.send(self.stream, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing of ours waits; what went to C{buffer} directly may."""
        self.original.flush()

    def reconfigure(self, **options: object) -> None:
        """Accepted and ignored: the text always travels as UTF-8, write by write."""

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> object:
        return getattr(self.original, "buffer", None)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    @property
    def line_buffering(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return f"<{self.stream}>"


def install(fd: int = OUTPUT_FD) -> bool:
    """
    Make C{sys.stdout} and C{sys.stderr} write to the output channel at
    C{fd}; C{False} (and nothing changed) when the worker was given none.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    os.set_inheritable(fd, False)  # the app's subprocesses write to fds 1 and 2
    channel = OutputChannel(fd)
    sys.stdout = FramedStream(channel, "stdout", sys.stdout)
    sys.stderr = FramedStream(channel, "stderr", sys.stderr)
    return True

"""
A request body as it arrives in the worker: the first chunk with the request,
the rest in L{buntime.pool.commands.RequestBody} commands.

The reactor thread feeds it; an adapter reads it either with Deferreds
(ASGI, routes, twisted.web) or blocking from a thread (WSGI's
C{wsgi.input}).  Feeding pauses (the answer to C{RequestBody} is held back)
while more than L{HIGH_WATER} bytes wait to be read: that is the
backpressure on the runtime's upload.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads

from buntime.once import Once

HIGH_WATER = 1024 * 1024
"""Bytes buffered before the runtime has to wait with the next chunk."""


class BodyClosed(OSError):
    """The request was cancelled (or is over) while its body was being read."""


@define(eq=False)
class BodyReader:
    """
    The chunks of one request body, in order.  C{next_chunk} gives C{None}
    at the end, C{read_all} everything; both fail with L{BodyClosed} once
    the request was cancelled.
    """

    _reactor: IReactorFromThreads | None
    _chunks: deque[bytes] = field(factory=deque)
    _complete: bool = False
    _aborted: bool = False
    _buffered: int = 0
    _readers: list[Deferred] = field(factory=list)
    _paused: Once | None = None
    """The feeder's wait for the reader to catch up."""
    _closed: Once | None = None
    _over: bool = False
    _cond: threading.Condition = field(factory=threading.Condition)

    @classmethod
    def start(cls, reactor: IReactorFromThreads | None, first: bytes, more: bool) -> BodyReader:
        """A body whose first chunk is C{first}; C{more} says whether others follow."""
        reader = cls(reactor, complete=not more)
        if first:
            reader._chunks.append(first)
            reader._buffered = len(first)
        return reader

    @property
    def complete(self) -> bool:
        """Every chunk has arrived (some may still be unread)."""
        return self._complete

    @property
    def exhausted(self) -> bool:
        """Every chunk has arrived and been read."""
        return self._complete and not self._chunks

    # -- the reactor side: arrival -------------------------------------------

    def feed(self, data: bytes) -> Deferred | None:
        """
        One more chunk.  Returns C{None}, or a Deferred that fires once the
        reader has caught up (answer the runtime then).
        """
        with self._cond:
            if self._aborted or self._complete:
                return None
            reader = self._readers.pop(0) if self._readers else None
        if reader is not None:
            reader.callback(data)
            return None
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify_all()
            if self._buffered <= HIGH_WATER:
                return None
            if self._paused is None:
                self._paused = Once()
            return self._paused.wait()

    def finish(self) -> None:
        """The last chunk has arrived."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.callback(None)

    def abort(self) -> None:
        """The request is cancelled: readers get L{BodyClosed}, the feeder is released."""
        with self._cond:
            if self._aborted:
                return
            self._aborted = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.errback(BodyClosed("the request was cancelled"))
        self._release()
        self.close()

    def close(self) -> None:
        """
        The request is over: fire L{when_closed} waiters and release the
        feeder.  The runtime sends no more of an unfinished body then: its
        readers get L{BodyClosed} rather than wait for it forever.
        """
        with self._cond:
            self._over = True
            self._cond.notify_all()
            readers, self._readers = self._readers, []  # (none once the body is complete)
        for reader in readers:
            reader.errback(BodyClosed("the request is over"))
        self._release()
        closed, self._closed = self._closed, None
        if closed is not None:
            closed.fire(None)

    def when_closed(self) -> Deferred:
        """Fires once the request is over or cancelled (ASGI's C{http.disconnect})."""
        if self._over:
            return succeed(None)
        if self._closed is None:
            self._closed = Once()
        return self._closed.wait()

    # -- reading with Deferreds (reactor thread) -----------------------------

    def next_chunk(self) -> Deferred:
        """The next chunk, or C{None} after the last one."""
        with self._cond:
            if self._aborted:
                return fail(BodyClosed("the request was cancelled"))
            if self._over and not self._chunks and not self._complete:
                return fail(BodyClosed("the request is over"))
            if self._chunks:
                chunk = self._take()
            elif self._complete:
                return succeed(None)
            else:
                waiting: Deferred = Deferred()
                self._readers.append(waiting)
                return waiting
        self._maybe_release(in_reactor=True)
        return succeed(chunk)

    def read_all(self) -> Deferred:
        """All of the body, as bytes."""
        if self._complete and not self._aborted:
            with self._cond:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
            return succeed(data)
        return Deferred.fromCoroutine(self._read_all())

    async def _read_all(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    # -- reading blocking (a WSGI thread) ------------------------------------

    def read_blocking(self) -> bytes | None:
        """The next chunk, waiting for it; C{None} after the last one."""
        with self._cond:
            while not self._chunks and not self._complete and not self._aborted and not self._over:
                self._cond.wait()
            if self._aborted:
                raise BodyClosed("the request was cancelled")
            if not self._chunks and not self._complete:
                raise BodyClosed("the request is over")
            if not self._chunks:
                return None
            chunk = self._take()
        self._maybe_release(in_reactor=False)
        return chunk

    def as_file(self) -> io.BufferedIOBase:
        """A file to read the body from in a thread (C{wsgi.input})."""
        if self._complete and len(self._chunks) <= 1:
            return io.BytesIO(self._chunks[0] if self._chunks else b"")
        return io.BufferedReader(_RawBody(self))

    # -- internals -------------------------------------------------------------

    def _take(self) -> bytes:
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        return chunk

    def _maybe_release(self, in_reactor: bool) -> None:
        if self._paused is None or self._buffered > HIGH_WATER:
            return
        if in_reactor or self._reactor is None:
            self._release()
        else:
            self._reactor.callFromThread(self._release)

    def _release(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.fire(None)


class _RawBody(io.RawIOBase):
    """A L{BodyReader} as a raw file, for C{io.BufferedReader} to add C{readline} etc."""

    def __init__(self, body: BodyReader) -> None:
        super().__init__()
        self._body = body
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer (bytearray, memoryview)
        if not self._rest:
            chunk = self._body.read_blocking()
            if chunk is None:
                return 0
            self._rest = memoryview(chunk)
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size

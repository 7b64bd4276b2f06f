"""
A body pushed in chunks by one side and pulled by the other as an async
iterator, with backpressure: the one adapter from "here is a chunk" (AMP
commands, a twisted.web resource's writes) to C{async for chunk in body}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

from attrs import define, field
from twisted.internet.defer import Deferred


class BodyTooLarge(Exception):
    """
    What reading a request body raises when the client sends more than its
    path's limit allows (a chunked upload, counted as it arrives): the
    client is answered 413 by the runtime.
    """


@define(eq=False)
class PushedStream:
    """
    The chunks L{feed} gives, in order, as an async iterator that ends at
    L{end} or raises what L{fail} gives once the chunks before it are read.

    A chunk's C{ack} fires (with L{taken}) when the consumer takes the
    chunk: a producer that waits for it goes no faster than the consumer.
    L{aclose}, or cancelling a read, says the consumer is gone: the acks of
    chunks not taken fire, later chunks are dropped (acked at once), and
    C{on_close} is called, once, unless the stream had ended already.
    """

    taken: ClassVar[object] = None
    """What an C{ack} fires with."""

    _on_close: Callable[[], None]
    _chunks: deque[tuple[bytes, Deferred | None]] = field(factory=deque)
    _waiting: Deferred | None = None
    _ended: bool = False
    _closed: bool = False
    _error: BaseException | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                data, ack = self._chunks.popleft()
                if ack is not None:
                    ack.callback(self.taken)
                return data
            if self._error is not None:
                raise self._error
            if self._ended or self._closed:
                raise StopAsyncIteration
            self._waiting = Deferred(lambda _: self._abandon())
            await self._waiting

    async def aclose(self) -> None:
        """The consumer is done early: ack what waits and call C{on_close}."""
        self._abandon()

    def feed(self, data: bytes, ack: Deferred | None = None) -> None:
        """One more chunk; C{ack} fires once the consumer has taken it."""
        if self._closed:
            if ack is not None:
                ack.callback(self.taken)
            return
        self._chunks.append((data, ack))
        self._wake()

    def end(self) -> None:
        """No more chunks: the consumer's read after the last one stops the iteration."""
        self._ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The body broke: the consumer's read after the chunks fed so far raises C{error}."""
        self._error = error
        self._wake()

    @property
    def closed(self) -> bool:
        """The consumer has gone away (L{aclose}, or a cancelled read)."""
        return self._closed

    def _abandon(self) -> None:
        if self._closed or self._ended or self._error is not None:
            return
        self._closed = True
        chunks, self._chunks = self._chunks, deque()
        for _, ack in chunks:
            if ack is not None:
                ack.callback(self.taken)
        self._waiting = None
        self._on_close()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)


async def close_body(body: object) -> None:
    """Tell a body's producer that it is read no more (when it can be told: C{aclose})."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()

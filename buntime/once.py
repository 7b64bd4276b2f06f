"""
One result, many waiters.

A L{Deferred} runs one callback chain: whoever adds a callback changes what
the next one sees.  When any number of parties wait for the same outcome
(a worker is ready, a process exited, nothing is in flight any more), each
gets a Deferred of its own from a L{Once}; L{relay} gives one more party a
Deferred of its own on a Deferred somebody else holds.
"""

from __future__ import annotations

from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


@define(eq=False)
class Once:
    """
    A result (a value, or a L{Failure}) fired once and delivered to every
    L{wait}er: those waiting then, and those who come later.  Firing again
    does nothing.  For an outcome that happens again and again (drained,
    room to write), keep a fresh C{Once} per round.
    """

    fired: bool = False
    _result: Any = None
    _waiters: list[Deferred[Any]] = field(factory=list)

    def fire(self, result: Any) -> None:
        """The result: a value, or a L{Failure} each waiter's Deferred fails with."""
        if self.fired:
            return
        self.fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _deliver(waiter, result)

    def forget(self, waiter: Deferred[Any]) -> None:
        """Stop waiting with C{waiter} (its owner is gone): it never fires."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # fired, or forgotten already

    def wait(self) -> Deferred[Any]:
        """A Deferred of the caller's own that fires with the result."""
        waiter: Deferred[Any] = Deferred()
        if self.fired:
            _deliver(waiter, self._result)
        else:
            self._waiters.append(waiter)
        return waiter


def _deliver(waiter: Deferred[Any], result: Any) -> None:
    # A waiter cancelled (or timed out) meanwhile ignores this: Deferred.cancel says so.
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)


def relay(source: Deferred[T]) -> Deferred[T]:
    """
    A Deferred of the caller's own that fires with what C{source} fires
    with.  C{source} goes on with the same value for whoever else waits on
    it; a failure is handed to the caller (and handled in C{source}).
    """
    mine: Deferred[T] = Deferred()
    source.addBoth(_relay, mine)
    return mine


def _relay(result: Any, mine: Deferred[Any]) -> Any:
    if isinstance(result, Failure):
        mine.errback(result)
        return None  # handled: it went on to the caller
    mine.callback(result)
    return result

"""
Requests waiting their turn: for a slot on a worker of their app (also
while one cold-starts), or for one of the slots of fresh (ephemeral)
workers.  Each waits at most its timeout; a client that goes away takes its
request out.  L{_Refused} (private to the pool package) carries the answer
a refused request gets instead of a worker's.
"""

from __future__ import annotations

from collections import deque

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from buntime.http import Response


class _Refused(Exception):
    """Answer the client with C{response} instead of a worker's."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class AppRetired(_Refused):
    """
    The request's app was retired (replaced or removed) while the request
    waited for a worker: it was never sent, so it may be resolved again.
    C{response} is the answer when it is not (503 C{APP_RETIRED}).
    """


@define(eq=False)
class _Waiter:
    """A request waiting in a queue: fires with a worker (or C{None}: a slot)."""

    deferred: Deferred = field(init=False)
    timer: IDelayedCall | None = None


@define(eq=False)
class WaitQueue:
    """Waiting requests, first come first served."""

    _waiters: deque[_Waiter] = field(factory=deque)

    def __len__(self) -> int:
        return len(self._waiters)

    def wait(self, clock: IReactorTime, timeout: float, late: Response) -> Deferred:
        """
        Fires with what L{wake} hands over; fails with L{_Refused} and C{late}
        after C{timeout} seconds.  Cancelling it leaves the queue.
        """
        waiter = _Waiter()
        waiter.deferred = Deferred(lambda _: self._forget(waiter))
        waiter.timer = clock.callLater(timeout, self._expire, waiter, late)
        self._waiters.append(waiter)
        return waiter.deferred

    def _forget(self, waiter: _Waiter) -> None:
        """The client went away: drop its queued request."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _expire(self, waiter: _Waiter, late: Response) -> None:
        waiter.timer = None
        self._forget(waiter)
        waiter.deferred.errback(_Refused(late))

    def wake(self, result: object) -> bool:
        """Hand C{result} to the first waiter; C{False} if none waits."""
        if not self._waiters:
            return False
        waiter = self._waiters.popleft()
        self._forget(waiter)
        waiter.deferred.callback(result)
        return True

    def refuse(self, response: Response, refusal: type[_Refused] = _Refused) -> None:
        """Answer every waiting request with C{response} (in a C{refusal})."""
        while self._waiters:
            waiter = self._waiters.popleft()
            self._forget(waiter)
            waiter.deferred.errback(refusal(response))

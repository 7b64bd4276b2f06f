"""
Writing at the end of the reactor turn.

Sent one by one while the reactor goes on with its turn, small writes to
another process wake it once each; gathered and sent at the end of the
turn, one wake-up serves many (as in twisted.web, whose writes wait for the
next turn).  The HTTP connections' answers (L{buntime.web.http1}) and the
boxes to workers (L{buntime.pool.wire}) go out this way, straight to the
socket (L{buntime.sockets.send_now}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

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

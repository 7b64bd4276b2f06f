"""
A request as the runtime keeps account of it, from its head to its
answer's end: its eliot action (L{buntime.logs.requests}), its place in the
in-flight count, its outcome for C{ctx.requests}, and the work to cancel
when the client goes away first.  The front door makes one per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime.logs.requests import finish_request, request_action, request_record
from buntime.plugins.outcomes import RequestOutcomes
from buntime.web.http1 import Exchange, HandedOver
from buntime.web.state import RuntimeState


class TrackedRequest:
    """
    One request's eliot action, its place in the in-flight count, and the
    work to cancel (C{running}) when the client goes away before the answer.
    C{fields} are added to the log line (the app, the worker id); the
    request's outcome is counted in C{outcomes} (for C{ctx.requests}).
    """

    __slots__ = (
        "_clock",
        "_line",
        "_outcomes",
        "_started",
        "_state",
        "action",
        "fields",
        "running",
    )

    def __init__(
        self,
        clock: IReactorTime,
        state: RuntimeState,
        request_id: str,
        method: str,
        path: str,
        task_uuid: str | None = None,
        outcomes: RequestOutcomes | None = None,
    ) -> None:
        self._clock = clock
        self._state = state
        self._outcomes = outcomes
        self._line = (request_id, method, path)
        self.fields: dict[str, Any] = {}
        self.running: Deferred[Any] | None = None
        self.action = request_action(request_id, method, path, task_uuid)
        self._started = clock.seconds()
        state.request_started()

    def run(self, function: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """
        C{function(*args)} in the request's eliot action: the work to cancel
        if the client leaves.
        """
        try:
            done = self.action.run(function, *args)
        except Exception:
            done = fail()
        self.running = done
        return done

    def finished(self, result: object, exchange: Exchange) -> None:
        """The answer is written (C{result} C{None}), or the connection was lost first."""
        request_id, method, path = self._line
        status = exchange.status
        # milliseconds to the microsecond: round(..., 3) at half the cost
        duration = int((self._clock.seconds() - self._started) * 1_000_000 + 0.5) / 1000
        # an upgraded request ends by handing its connection over: not aborted
        aborted = isinstance(result, Failure) and not result.check(HandedOver)
        record = request_record(
            "error" if status >= 500 else "info", f"{method} {path} {status} {duration}ms"
        )
        # the start message is debug: repeat what names the request
        record["request_id"] = request_id
        record["method"] = method
        record["path"] = path
        record["status"] = status
        record["duration_ms"] = duration
        record["aborted"] = aborted
        record.update(self.fields)  # plain values only (the app, the worker id)
        finish_request(self.action, record)
        self._state.request_finished()
        if self._outcomes is not None:
            self._outcomes.record(self.fields.get("app"), method, status, duration)
        running = self.running
        if aborted and running is not None:
            # The client went away: stop the work (a queued request is
            # dropped, a worker is told to cancel).  A Deferred that fired
            # but waits on another (a chain of steps) cancels that one; a
            # finished one ignores it.
            running.cancel()

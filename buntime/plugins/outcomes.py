"""
What became of every HTTP request the runtime answered: counts, total time
and latency buckets by app, method and status class.

The front door records each finished request (L{RequestOutcomes.record}:
a few dict and list operations, no hooks); plugins read the numbers through
C{ctx.requests} (L{RequestOutcomes.rows}), e.g. to expose them to
Prometheus at scrape time.  The labels stay few whatever clients send:
requests no app took share C{UNKNOWN_APP}, methods outside
L{STANDARD_METHODS} share C{OTHER_METHOD}, and past L{MAX_ROWS} distinct
rows new apps share C{OTHER_APP}.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from attrs import field, frozen

BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the latency buckets, in milliseconds (Prometheus' defaults, in ms)."""

STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
OTHER_METHOD = "OTHER"
UNKNOWN_APP = "unknown"
OTHER_APP = "other"
MAX_ROWS = 5000
"""Distinct (app, method, status) rows kept before new apps share L{OTHER_APP}."""


@frozen
class Outcome:
    """One row: requests of C{app} with C{method} answered with a C{status_class} (2 is 2xx)."""

    app: str
    method: str
    status_class: int
    count: int
    sum_ms: float
    buckets: tuple[int, ...]
    """Requests at or under each bound of L{RequestOutcomes.bounds_ms} (cumulative), then all."""


@frozen
class RequestOutcomes:
    """
    Per (app, method, status): C{[sum_ms, bucket counts..., over the last]}
    (the count is the buckets' sum).  Rows are grouped by status class when
    read, so a request pays one lookup, one bisection and two increments.
    """

    bounds_ms: tuple[float, ...] = BUCKETS_MS
    _rows: dict[tuple[Any, str, int], list[Any]] = field(factory=dict)

    def record(self, app: str | None, method: str, status: int, duration_ms: float) -> None:
        """One finished request (C{app}: what the request log line names, or C{None})."""
        row = self._rows.get((app, method, status))
        if row is None:
            row = self._new_row(app, method, status)
        row[0] += duration_ms
        row[1 + bisect_left(self.bounds_ms, duration_ms)] += 1

    def _new_row(self, app: str | None, method: str, status: int) -> list[Any]:
        """
        The row of a new key.  A method outside L{STANDARD_METHODS}, or an app
        past L{MAX_ROWS}, gets a shared row and is not kept as a key of its
        own: such requests come back here (rare, and bounded).
        """
        rows = self._rows
        key = (app, method, status)
        if method not in STANDARD_METHODS:
            key = (app, OTHER_METHOD, status)
        if len(rows) >= MAX_ROWS:
            key = (OTHER_APP, key[1], status)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0.0] + [0] * (len(self.bounds_ms) + 1)
        return row

    def rows(self) -> Iterator[Outcome]:
        """Every (app, method, status class) row, with cumulative bucket counts."""
        grouped: dict[tuple[str, str, int], list[Any]] = {}
        for (app, method, status), row in list(self._rows.items()):
            label = UNKNOWN_APP if app is None else str(app)
            total = grouped.setdefault((label, method, status // 100), [0.0] + [0] * (len(row) - 1))
            total[0] += row[0]
            for index in range(1, len(row)):
                total[index] += row[index]
        for (app, method, status_class), row in grouped.items():
            cumulative, count = [], 0
            for bucket in row[1:]:
                count += bucket
                cumulative.append(count)
            yield Outcome(app, method, status_class, count, row[0], tuple(cumulative))

    def clear(self) -> None:
        """Forget every count (for tests)."""
        self._rows.clear()

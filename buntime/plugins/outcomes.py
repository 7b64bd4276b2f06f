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
"""Distinct (app, method, status class) rows kept before new apps share L{OTHER_APP}."""


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
    """Per (app, method, status class): C{[count, sum_ms, bucket counts..., over the last]}."""

    bounds_ms: tuple[float, ...] = BUCKETS_MS
    _rows: dict[tuple[Any, str, int], list[Any]] = field(factory=dict)

    def record(self, app: str | None, method: str, status: int, duration_ms: float) -> None:
        """One finished request (C{app}: what the request log line names, or C{None})."""
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        key = (app, method, status // 100)
        row = self._rows.get(key)
        if row is None:
            row = self._new_row(key)
        row[0] += 1
        row[1] += duration_ms
        row[2 + bisect_left(self.bounds_ms, duration_ms)] += 1

    def _new_row(self, key: tuple[Any, str, int]) -> list[Any]:
        rows = self._rows
        if len(rows) >= MAX_ROWS:  # not kept: each such request comes back here
            _, method, status_class = key
            key = (OTHER_APP, method, status_class)
            if key in rows:
                return rows[key]
        row = rows[key] = [0, 0.0] + [0] * (len(self.bounds_ms) + 1)
        return row

    def rows(self) -> Iterator[Outcome]:
        """Every row, with cumulative bucket counts."""
        for (app, method, status_class), row in list(self._rows.items()):
            cumulative, total = [], 0
            for count in row[2:]:
                total += count
                cumulative.append(total)
            label = UNKNOWN_APP if app is None else str(app)
            yield Outcome(label, method, status_class, row[0], row[1], tuple(cumulative))

    def clear(self) -> None:
        """Forget every count (for tests)."""
        self._rows.clear()

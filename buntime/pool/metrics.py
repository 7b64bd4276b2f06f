"""
The pool's numbers (SPEC section 3, shown by the metrics plugin): what it
counts as requests come and workers go, and their summary.
"""

from __future__ import annotations

from collections import Counter, deque

from attrs import define, field

from buntime.pool.worker import Worker

COUNTED = ("hits", "misses", "evictions", "requests", "created", "failed", "retired")


@define
class PoolNumbers:
    """
    Counts by name (L{COUNTED}), the last 100 response times (ms), the start
    time, and workers' lifecycle events by (app, event, reason).
    """

    counts: dict[str, int] = field(factory=lambda: dict.fromkeys(COUNTED, 0))
    response_times: deque[float] = field(factory=lambda: deque(maxlen=100))
    started_at: float | None = None
    events: Counter[tuple[str, str, str]] = field(factory=Counter)

    def worker_events(self) -> list[dict[str, object]]:
        """C{[{"app", "event", "reason", "count"}]}: see L{WorkerPool.worker_events}."""
        return [
            {"app": app, "event": event, "reason": reason, "count": count}
            for (app, event, reason), count in sorted(self.events.items())
        ]

    def summary(
        self, now: float, workers: list[Worker], ephemeral_queue_depth: int
    ) -> dict[str, float | int]:
        """Pool numbers, named as SPEC section 3 lists them."""
        counts = self.counts
        uptime = now - self.started_at if self.started_at is not None else 0.0
        lookups = counts["hits"] + counts["misses"]
        times = self.response_times
        return {
            "activeWorkers": sum(1 for w in workers if w.status not in ("stopping", "offline")),
            "avgResponseTimeMs": round(sum(times) / len(times), 2) if times else 0.0,
            "evictions": counts["evictions"],
            "hitRate": round(counts["hits"] * 100 / lookups, 2) if lookups else 0.0,
            "hits": counts["hits"],
            "misses": counts["misses"],
            "memoryUsageMB": round(sum(w.rss_mb() for w in workers), 2),
            "requestsPerSecond": round(counts["requests"] / uptime, 2) if uptime > 0 else 0.0,
            "totalRequests": counts["requests"],
            "totalWorkersFailed": counts["failed"],
            "totalWorkersCreated": counts["created"],
            "totalWorkersRetired": counts["retired"],
            "uptimeMs": round(uptime * 1000),
            "ephemeralQueueDepth": ephemeral_queue_depth,
        }

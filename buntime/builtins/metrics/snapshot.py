"""
What the metrics built-in's summary holds beyond the pool's own numbers:
latency percentiles read from the request outcomes' buckets, error rates,
the workers of each app with their state, and the rates between two
summaries (L{Window}, one per event stream).

Everything is computed when asked, from what the runtime keeps anyway
(C{ctx.requests}, C{ctx.pool.worker_stats()}): nothing per request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import define

from buntime.builtins.metrics.prometheus import status_label

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))

# pool status -> the state a person reads; a ready worker with requests in flight is busy
STATES = {
    "starting": "starting",
    "active": "ready",
    "ephemeral": "ready",
    "idle": "idle",
    "stopping": "retiring",
    "offline": "offline",
}
WORKER_FIELDS = (
    "id",
    "version",
    "pid",
    "inFlight",
    "requestCount",
    "errorCount",
    "avgResponseTimeMs",
    "ageMs",
    "idleMs",
    "rssMB",
)


def quantile(bounds: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """
    The C{q} quantile (0..1) of requests counted in cumulative buckets
    (C{cumulative[i]} at or under C{bounds[i]}, the last one all of them),
    interpolated inside its bucket as Prometheus' C{histogram_quantile}
    does; past the last bound it is that bound.  C{None} without requests.
    """
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    below, lower = 0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank and count > below:
            return round(lower + (bound - lower) * (rank - below) / (count - below), 3)
        below, lower = count, bound
    return float(bounds[-1]) if bounds else None


def percentiles(bounds: Sequence[float], cumulative: Sequence[int]) -> dict[str, float | None]:
    """C{{"p50", "p95", "p99"}} in ms of the requests counted in C{cumulative}."""
    return {name: quantile(bounds, cumulative, q) for name, q in QUANTILES}


def http_numbers(requests: Any) -> dict[str, Any]:
    """
    Requests answered so far: in all, by status class and app, their mean
    time, the server errors (5xx) and their share, the latency percentiles,
    and the cumulative latency buckets (C{boundsMs}, C{buckets}) they come from.
    """
    total, time_ms, errors = 0, 0.0, 0
    by_status: Counter[str] = Counter()
    by_app: Counter[str] = Counter()
    bounds: tuple[float, ...] = tuple(getattr(requests, "bounds_ms", ()))
    buckets = [0] * (len(bounds) + 1)
    for row in requests.rows() if requests is not None else ():
        total += row.count
        time_ms += row.sum_ms
        by_status[status_label(row.status_class)] += row.count
        by_app[row.app] += row.count
        if row.status_class == 5:
            errors += row.count
        for index, count in enumerate(row.buckets):
            buckets[index] += count
    return {
        "total": total,
        "avgMs": round(time_ms / total, 3) if total else 0.0,
        "byStatus": dict(sorted(by_status.items())),
        "byApp": dict(sorted(by_app.items())),
        "errors": errors,
        "errorRate": round(errors / total, 4) if total else 0.0,
        "latencyMs": percentiles(bounds, buckets),
        "boundsMs": list(bounds),
        "buckets": buckets,
    }


def state_of(worker: Mapping[str, Any]) -> str:
    """A worker's state: starting, ready, busy, idle, retiring or offline."""
    status = str(worker.get("status", "unknown"))
    state = STATES.get(status, status)
    if state in ("ready", "idle") and _number(worker.get("inFlight")) > 0:
        return "busy"
    return state


def _number(value: Any) -> float:
    return value if isinstance(value, int | float) else 0


def workers_by_app(workers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The workers in all, by pool status and by state, and per app
    (C{name}): their count by state and each worker's numbers.
    """
    by_status: Counter[str] = Counter()
    by_state: Counter[str] = Counter()
    apps: dict[str, dict[str, Any]] = {}
    total = 0
    for worker in workers:
        total += 1
        state = state_of(worker)
        by_status[str(worker.get("status", "unknown"))] += 1
        by_state[state] += 1
        name = str(worker.get("app", "unknown"))
        app = apps.setdefault(name, {"total": 0, "byState": Counter(), "workers": []})
        app["total"] += 1
        app["byState"][state] += 1
        shown = {key: worker[key] for key in WORKER_FIELDS if key in worker}
        app["workers"].append({**shown, "state": state, "status": worker.get("status")})
    for app in apps.values():
        app["byState"] = dict(sorted(app["byState"].items()))
        app["workers"].sort(key=lambda w: (str(w.get("version", "")), str(w.get("id", ""))))
    return {
        "total": total,
        "byStatus": dict(sorted(by_status.items())),
        "byState": dict(sorted(by_state.items())),
        "byApp": dict(sorted(apps.items())),
    }


@define
class Window:
    """
    The rates between two summaries of one event stream: requests per
    second, server errors and their share, latency percentiles of the
    requests answered in between.  The first summary has no window yet.
    """

    _time: float | None = None
    _total: int = 0
    _errors: int = 0
    _buckets: list[int] | None = None

    def rates(self, now: float, http: Mapping[str, Any]) -> dict[str, Any] | None:
        """The window from the previous call to this one (C{now}: seconds), or C{None}."""
        total, errors, buckets = http["total"], http["errors"], list(http["buckets"])
        previous, self._time = self._time, now
        if previous is None or self._buckets is None or len(self._buckets) != len(buckets):
            self._total, self._errors, self._buckets = total, errors, buckets
            return None
        seconds = max(now - previous, 1e-9)
        requests = max(total - self._total, 0)
        failed = max(errors - self._errors, 0)
        delta = [max(new - old, 0) for new, old in zip(buckets, self._buckets, strict=True)]
        self._total, self._errors, self._buckets = total, errors, buckets
        return {
            "seconds": round(seconds, 3),
            "requests": requests,
            "rps": round(requests / seconds, 2),
            "errors": failed,
            "errorRate": round(failed / requests, 4) if requests else 0.0,
            "latencyMs": percentiles(http["boundsMs"], delta),
        }

"""
C{@buntime/plugin-metrics}: the worker pool's numbers as JSON.

C{GET /metrics/api/} answers C{{"pool": pool.metrics(), "workers":
pool.worker_stats()}}; C{GET /metrics/api/stats} a summary (pool metrics and
the number of workers by status).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field
from klein import Klein
from zope.interface import implementer

from buntime.interfaces import IBuntimePlugin, IPluginContext


def _json(request: Any, obj: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, default=str).encode("utf-8")


def _workers(stats: Mapping[str, Any] | Iterable[Any] | None) -> list[Mapping[str, Any]]:
    if isinstance(stats, Mapping):
        return [s for s in stats.values() if isinstance(s, Mapping)]
    return [s for s in stats or () if isinstance(s, Mapping)]


@implementer(IBuntimePlugin)
@define
class MetricsPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """Reads C{ctx.pool} on every request; keeps no state of its own."""

    config: Mapping[str, Any] = field(factory=dict)
    pool: Any = None

    routes = Klein()

    def on_init(self, ctx: IPluginContext) -> None:
        self.pool = ctx.pool

    def _no_pool(self, request: Any) -> bytes:
        return _json(
            request, {"error": {"code": "NO_POOL", "message": "No worker pool"}}, status=503
        )

    @routes.route("/api/", methods=["GET", "HEAD"])
    def snapshot(self, request: Any) -> bytes:
        if self.pool is None:
            return self._no_pool(request)
        return _json(request, {"pool": self.pool.metrics(), "workers": self.pool.worker_stats()})

    @routes.route("/api/stats", methods=["GET", "HEAD"])
    def stats(self, request: Any) -> bytes:
        if self.pool is None:
            return self._no_pool(request)
        workers = _workers(self.pool.worker_stats())
        by_status = Counter(str(w.get("status", "unknown")) for w in workers)
        return _json(
            request,
            {
                "pool": self.pool.metrics(),
                "workers": {"total": len(workers), "byStatus": dict(sorted(by_status.items()))},
            },
        )


def plugin(config: Mapping[str, Any]) -> MetricsPlugin:
    """The factory the loader calls with the manifest's settings."""
    return MetricsPlugin(config)

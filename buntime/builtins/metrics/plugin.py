"""
C{@buntime/plugin-metrics}: the runtime's numbers as JSON, as Prometheus
text, as a live event stream, and on a page.

C{GET /metrics/api/} answers C{{"pool": pool.metrics(), "workers":
pool.worker_stats()}}; C{GET /metrics/api/stats} a summary (pool metrics,
workers by status and state and per app, HTTP requests by status class and
app with latency percentiles and errors); C{GET /metrics/api/prometheus}
the Prometheus exposition; C{GET /metrics/api/sse} the summary every
C{sseInterval} ms as Server-Sent Events, with the rates since the previous
event; C{GET /metrics/} the dashboard showing that stream (its script and
stylesheet under C{/metrics/ui/}).  Nothing is counted per request here:
the numbers are read from the pool and C{ctx.requests} when asked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from zope.interface import implementer

from buntime.builtins.metrics.prometheus import (
    CONTENT_TYPE,
    exposition,
    registry_for,
    worker_list,
)
from buntime.builtins.metrics.snapshot import Window, http_numbers, workers_by_app
from buntime.http import asset_answer, json_answer, page_answer
from buntime.interfaces import IBuntimePlugin, IPluginContext
from buntime.sse import EventStream

UI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
PAGE = os.path.join(UI, "index.html")
MIN_SSE_INTERVAL_MS = 100


@implementer(IBuntimePlugin)
@define
class MetricsPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """Reads C{ctx.pool} and C{ctx.requests} when asked; keeps only its open streams."""

    config: Mapping[str, Any] = field(factory=dict)
    pool: Any = None
    requests: Any = None
    clock: Any = None
    streams: set[EventStream] = field(factory=set)
    _registry: Any = None

    routes = Klein()

    @property
    def sse_interval(self) -> float:
        """Seconds between two events of C{/api/sse} (the C{sseInterval} setting, in ms)."""
        try:
            interval = float(self.config.get("sseInterval", 1000))
        except (TypeError, ValueError):
            interval = 1000.0
        return max(interval, MIN_SSE_INTERVAL_MS) / 1000

    def on_init(self, ctx: IPluginContext) -> None:
        self.config = ctx.config
        self.pool = ctx.pool
        self.requests = ctx.requests
        self.clock = ctx.reactor
        self._registry = registry_for(self.pool, self.requests)
        ctx.when_stopping().addCallback(lambda _: self.close_streams())

    def on_shutdown(self) -> None:
        self.close_streams()

    def close_streams(self) -> None:
        """End every open event stream (the runtime stops, or the plugin is replaced)."""
        for stream in list(self.streams):
            stream.close()

    def summary(self) -> dict[str, Any]:
        """What C{/api/stats} answers and C{/api/sse} sends."""
        found: dict[str, Any] = {}
        if self.pool is not None:
            found["pool"] = self.pool.metrics()
            found["workers"] = workers_by_app(worker_list(self.pool.worker_stats()))
        found["http"] = http_numbers(self.requests)
        found["sseClients"] = len(self.streams)
        return found

    def _no_pool(self, request: Any) -> bytes:
        return json_answer(
            request, {"error": {"code": "NO_POOL", "message": "No worker pool"}}, status=503
        )

    @routes.route("/", methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        return page_answer(request, PAGE)

    @routes.route("/ui/<name>", methods=["GET", "HEAD"])
    def asset(self, request: Any, name: str) -> bytes:
        return asset_answer(request, UI, name)

    @routes.route("/api/", methods=["GET", "HEAD"])
    def snapshot(self, request: Any) -> bytes:
        if self.pool is None:
            return self._no_pool(request)
        return json_answer(
            request, {"pool": self.pool.metrics(), "workers": self.pool.worker_stats()}
        )

    @routes.route("/api/stats", methods=["GET", "HEAD"])
    def stats(self, request: Any) -> bytes:
        if self.pool is None:
            return self._no_pool(request)
        return json_answer(request, self.summary())

    @routes.route("/api/prometheus", methods=["GET", "HEAD"])
    def prometheus(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        registry = self._registry or registry_for(self.pool, self.requests)
        return exposition(registry)

    @routes.route("/api/sse", methods=["GET"])
    def sse(self, request: Any) -> Deferred[None]:
        stream = EventStream(request, self.clock)
        window = Window()
        self.streams.add(stream)
        stream.on_close.append(lambda: self.streams.discard(stream))
        stream.every(self.sse_interval, lambda: self._event(window))
        return stream.open()

    def _event(self, window: Window) -> str:
        """The summary, with the rates since the previous event (C{rate}; null at first)."""
        summary = self.summary()
        summary["rate"] = window.rates(self.clock.seconds(), summary["http"])
        return json.dumps(summary, default=str)


def plugin(config: Mapping[str, Any]) -> MetricsPlugin:
    """The factory the loader calls with the manifest's settings."""
    return MetricsPlugin(config)

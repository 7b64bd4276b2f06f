"""A test plugin: a page for the shell's frame and a stream of ticks (SSE)."""

from __future__ import annotations

import os
from typing import Any

from klein import Klein
from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from buntime.interfaces import IBuntimePlugin

PAGE = os.path.join(os.path.dirname(__file__), "page.html")


@implementer(IBuntimePlugin)
class DemoPlugin:
    routes = Klein()

    @routes.route("/", methods=["GET"])
    @routes.route("/details", methods=["GET"])
    @routes.route("/settings", methods=["GET"])
    def page(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        with open(PAGE, "rb") as f:
            return f.read()

    @routes.route("/api/ticks", methods=["GET"])
    def ticks(self, request: Any) -> Deferred[None]:
        """One event every 200 ms until the client leaves (or 10 minutes pass)."""
        from twisted.internet import reactor

        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        state = {"n": 0}
        done: Deferred[None] = Deferred()

        def tick() -> None:
            state["n"] += 1
            request.write(f"data: {state['n']}\n\n".encode())
            if state["n"] >= 3000:
                stop(None)

        loop = task.LoopingCall(tick)
        loop.clock = reactor

        def stop(_: Any) -> None:
            if loop.running:
                loop.stop()
            if not done.called:
                done.callback(None)

        request.notifyFinish().addBoth(stop)
        loop.start(0.2)
        return done


def plugin(config: Any) -> DemoPlugin:
    return DemoPlugin()

"""
An example buntime plugin: Klein routes under its base, a request hook, a
response hook, a service other plugins can use and an echo WebSocket.
docs/plugins.md walks through it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from attrs import define
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from zope.interface import implementer

from buntime.http import AppInfo, Request, Response
from buntime.interfaces import IBuntimePlugin, IPluginContext


def _json(request: Any, obj: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode("utf-8")


class Echo(WebSocketServerProtocol):
    """Sends every message back as it came (text or binary)."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


@implementer(IBuntimePlugin)
@define
class HelloPlugin:
    """Greets, counts the requests it saw, and stamps every response."""

    greeting: str = "Hello"
    seen: int = 0
    ctx: IPluginContext | None = None
    # WebSocket handlers by sub-path: ws://.../hello/ws echoes (set in on_init).
    websocket: Mapping[str, WebSocketServerFactory] | None = None

    # Mounted at the manifest's base: GET /hello/api/greet/ada arrives here
    # as /api/greet/ada.
    routes = Klein()

    def greet(self, name: str) -> str:
        """The service other plugins get with ctx.get_service("hello")."""
        return f"{self.greeting}, {name}!"

    def on_init(self, ctx: IPluginContext) -> None:
        self.ctx = ctx
        ctx.register_service("hello", self)
        echo = WebSocketServerFactory(reactor=ctx.reactor)
        echo.protocol = Echo
        self.websocket = {"/ws": echo}
        ctx.logger.info("Hello plugin ready", greeting=self.greeting)

    def on_request(self, request: Request, app: AppInfo | None) -> Request | Response | None:
        if request.headers.get("x-hello-block") == "yes":
            return Response.error(403, "BLOCKED", "The hello plugin blocked this request")
        self.seen += 1
        return request.with_header("x-hello-greeting", self.greeting)

    def on_response(self, response: Response, app: AppInfo | None) -> Response:
        return response.with_header("x-hello-seen", str(self.seen))

    def on_shutdown(self) -> None:
        if self.ctx is not None:
            self.ctx.logger.info("Hello plugin stopped", seen=self.seen)

    @routes.route("/api/greet/<name>", methods=["GET"])
    def greet_route(self, request: Any, name: str) -> bytes:
        return _json(request, {"message": self.greet(name)})

    @routes.route("/api/stats", methods=["GET"])
    def stats(self, request: Any) -> bytes:
        return _json(request, {"seen": self.seen})


def plugin(config: Mapping[str, Any]) -> HelloPlugin:
    """Called by the runtime with the manifest's settings."""
    return HelloPlugin(greeting=str(config.get("greeting", "Hello")))

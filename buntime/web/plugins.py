"""
Steps 6 to 8 of the order of resolution: plugin C{server_fetch} handlers,
plugin Klein routes, and plugin apps (a plugin's C{entrypoint} served
through the pool at its base).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen

from buntime.apps.discovery import AppVersion
from buntime.http import Request, Response
from buntime.plugins.registry import PluginRegistry
from buntime.web.apps import AppStep


@frozen
class PluginSteps:
    """
    Steps 6 to 8 over whatever plugin set is current, as one dispatch step:
    C{None} at once when no plugin can take the request, else an awaitable
    of the first answer (C{None} when none was theirs after all).
    """

    registry: Callable[[], PluginRegistry | None]
    apps: AppStep

    def __call__(
        self, request: Request, fields: dict[str, Any]
    ) -> Awaitable[Response | None] | None:
        registry = self.registry()
        if registry is None:
            return None
        path = request.path
        fetch = bool(registry.hooks("server_fetch"))
        if not (fetch or registry.mounted_under(path)):
            return None
        routes = registry.routes_under(path)
        app = registry.plugin_app_for(path)
        if not (fetch or routes or app is not None):
            return None
        return self._answer(registry, request, fields, fetch, routes, app)

    async def _answer(
        self,
        registry: PluginRegistry,
        request: Request,
        fields: dict[str, Any],
        fetch: bool,
        routes: bool,
        app: tuple[Any, str, str] | None,
    ) -> Response | None:
        if fetch:
            answer = await registry.server_fetch(request)
            if answer is not None:
                return answer
        if routes:
            answer = await registry.route(request)
            if answer is not None:
                return answer
        if app is None:
            return None
        plugin, base, rest = app
        fields["app"] = f"plugin:{plugin.name}"
        version = AppVersion(plugin.name, "plugin", plugin.path, "plugin")
        return await self.apps.serve(version, request, base, rest, fields)

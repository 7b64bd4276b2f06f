"""
Steps 6 to 8 of the order of resolution: plugin C{server_fetch} handlers,
plugin Klein routes, and plugin apps (a plugin's C{entrypoint} served
through the pool at its base).  A plugin route's 404 lets the request go
on: it is L{Declined}, and answers only if no later step does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen

from buntime.apps.discovery import AppVersion
from buntime.http import Request, Response
from buntime.plugins.registry import PluginRegistry
from buntime.stream import close_body
from buntime.web.apps import AppStep
from buntime.web.frontdoor import Declined


@frozen
class PluginSteps:
    """
    Steps 6 to 8 over whatever plugin set is current, as one dispatch step:
    C{None} at once when no plugin can take the request, else an awaitable
    of the first answer (C{None} when none was theirs after all, L{Declined}
    with a plugin route's 404 when that is all there was).
    """

    registry: Callable[[], PluginRegistry | None]
    apps: AppStep

    def __call__(
        self, request: Request, fields: dict[str, Any]
    ) -> Awaitable[Response | Declined | None] | None:
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
    ) -> Response | Declined | None:
        if fetch:
            answer = await registry.server_fetch(request)
            if answer is not None:
                return answer
        declined = None
        if routes:
            answer = await registry.routed(request)
            if answer is not None and answer.status != 404:
                return answer
            declined = answer
        if app is None:
            return None if declined is None else Declined(declined)
        if declined is not None:
            await close_body(declined.body)  # the plugin's app answers instead
        plugin, base, rest = app
        fields["app"] = f"plugin:{plugin.name}"
        version = AppVersion(plugin.name, "plugin", plugin.path, "plugin")
        return await self.apps.serve(version, request, base, rest, fields)

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
    The plugin dispatch steps over whatever plugin set is current.  Each
    answers C{None} at once when no plugin can take the request, else an
    awaitable of the answer (C{None} when it was not theirs after all).
    """

    registry: Callable[[], PluginRegistry | None]
    apps: AppStep

    def server_fetch(
        self, request: Request, fields: dict[str, Any]
    ) -> Awaitable[Response | None] | None:
        registry = self.registry()
        if registry is None or not registry.hooks("server_fetch"):
            return None
        return registry.server_fetch(request)

    def routes(self, request: Request, fields: dict[str, Any]) -> Awaitable[Response | None] | None:
        registry = self.registry()
        if registry is None or not registry.routes_under(request.path):
            return None
        return registry.route(request)

    def plugin_apps(
        self, request: Request, fields: dict[str, Any]
    ) -> Awaitable[Response | None] | None:
        registry = self.registry()
        found = None if registry is None else registry.plugin_app_for(request.path)
        if found is None:
            return None
        plugin, base, rest = found
        fields["app"] = f"plugin:{plugin.name}"
        version = AppVersion(plugin.name, "plugin", plugin.path, "plugin")
        return self.apps.serve(version, request, base, rest)

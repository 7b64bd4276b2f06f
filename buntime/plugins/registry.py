"""
The loaded, initialized plugin set and everything the front door asks of it
on the request path: hooks, public routes, C{server_fetch}, Klein routes,
plugin apps and WebSocket handlers.  A registry never changes; a reload
builds a new one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import define, field, frozen
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Site

from buntime.http import AppInfo, Request, Response
from buntime.logs import log
from buntime.plugins.chains import request_chain, response_chain
from buntime.plugins.context import PluginContext, ServiceRegistry
from buntime.plugins.hooks import as_deferred, call, plugin_error
from buntime.plugins.manifest import PluginManifest
from buntime.plugins.publicroutes import PublicRoutes
from buntime.plugins.rendering import render
from buntime.stream import close_body


@frozen(eq=False)
class LoadedPlugin:
    """One plugin of a registry: its manifest, its provider object, where it lives."""

    manifest: PluginManifest
    provider: object
    path: str
    origin: str = "dir"
    context: PluginContext | None = None
    site: Site | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def base(self) -> str | None:
        return self.manifest.base

    def hook(self, name: str) -> Any:
        """The provider's C{name} member when it is callable, else C{None}."""
        member = getattr(self.provider, name, None)
        return member if callable(member) else None


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base + "/")


def _first_segment(path: str) -> str:
    """C{/a} of C{/a/b} (and of C{/a})."""
    end = path.find("/", 1)
    return path if end < 0 else path[:end]


def websocket_endpoints(
    name: str, base: str | None, member: object
) -> list[tuple[str | None, WebSocketServerFactory]]:
    """
    A plugin's C{websocket} member as C{(path, factory)} pairs: C{path} is an
    absolute path (a mapping's sub-path under the base, no trailing slash),
    or C{None} for a lone factory serving every path under the base.

    @raise ValueError: the member is neither a factory nor a mapping of
        C{"/sub-path"} to factories, or the plugin has no base.
    """
    if member is None:
        return []
    if base is None:
        raise ValueError(f'Plugin "{name}" has a websocket handler but no base to serve it at')
    if isinstance(member, WebSocketServerFactory):
        return [(None, member)]
    if not isinstance(member, Mapping):
        raise ValueError(
            f'Plugin "{name}": websocket must be an autobahn WebSocketServerFactory'
            f" or a mapping of sub-paths to factories, not {type(member).__name__}"
        )
    endpoints: list[tuple[str | None, WebSocketServerFactory]] = []
    for sub, factory in member.items():
        if not isinstance(sub, str) or not (sub == "" or sub.startswith("/")):
            raise ValueError(f'Plugin "{name}": websocket path {sub!r} must start with "/"')
        if not isinstance(factory, WebSocketServerFactory):
            raise ValueError(
                f'Plugin "{name}": websocket[{sub!r}] must be an autobahn'
                f" WebSocketServerFactory, not {type(factory).__name__}"
            )
        endpoints.append(((base + sub).rstrip("/") or "/", factory))
    return endpoints


async def _discard(response: Response) -> None:
    await close_body(response.body)


def takes_request(hook: Any) -> bool:
    """Whether an C{on_response} hook declares a C{request} parameter (it is then given it)."""
    try:
        return "request" in inspect.signature(hook).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def _plugin_tuple(plugins: Iterable[LoadedPlugin]) -> tuple[LoadedPlugin, ...]:
    """The plugins as a tuple (a typed converter: mypy cannot type C{converter=tuple})."""
    return tuple(plugins)


@define(eq=False)
class PluginRegistry:
    """
    The plugins in load order (C{plugins}) and the services they registered.
    An empty registry answers every question with "nothing to do".  C{clock}
    lets plugin routes that finish within a reactor turn answer with whole
    bodies rather than streams.
    """

    plugins: Sequence[LoadedPlugin] = field(default=(), converter=_plugin_tuple)
    services: ServiceRegistry = field(factory=ServiceRegistry)
    clock: IReactorTime | None = None
    _app_routes: dict[str, tuple[AppInfo, object, PublicRoutes | None]] = field(
        factory=dict, init=False
    )
    _hooks: dict[str, tuple[tuple[LoadedPlugin, Any], ...]] = field(factory=dict, init=False)
    _by_base: tuple[LoadedPlugin, ...] = field(init=False)
    _first_segments: frozenset[str] = field(init=False)
    """The first path segment (C{/metrics}) of every plugin's base."""
    _websockets: tuple[tuple[LoadedPlugin, str | None, WebSocketServerFactory], ...] = field(
        init=False
    )
    _public: tuple[PublicRoutes, ...] = field(init=False)
    _request_hooks: tuple[tuple[LoadedPlugin, Any], ...] = field(init=False)
    _response_hooks: tuple[tuple[LoadedPlugin, Any], ...] = field(init=False)
    _given_request: frozenset[LoadedPlugin] = field(init=False)
    """The plugins whose C{on_response} takes the request (L{takes_request})."""

    # the hooks every request a plugin hooks looks at, found once
    @_request_hooks.default
    def _find_request_hooks(self) -> tuple[tuple[LoadedPlugin, Any], ...]:
        return self.hooks("on_request")

    @_response_hooks.default
    def _find_response_hooks(self) -> tuple[tuple[LoadedPlugin, Any], ...]:
        return self.hooks("on_response")

    @_given_request.default
    def _response_hooks_taking_requests(self) -> frozenset[LoadedPlugin]:
        return frozenset(p for p, hook in self._response_hooks if takes_request(hook))

    @_public.default
    def _plugin_public_routes(self) -> tuple[PublicRoutes, ...]:
        return tuple(p.manifest.public_routes for p in self.plugins if p.manifest.public_routes)

    @_by_base.default
    def _longest_base_first(self) -> tuple[LoadedPlugin, ...]:
        with_base = [p for p in self.plugins if p.base is not None]
        return tuple(sorted(with_base, key=lambda p: -len(p.base or "")))

    @_first_segments.default
    def _segments_of_bases(self) -> frozenset[str]:
        return frozenset(_first_segment(p.base) for p in self._by_base if p.base)

    @_websockets.default
    def _websocket_endpoints(
        self,
    ) -> tuple[tuple[LoadedPlugin, str | None, WebSocketServerFactory], ...]:
        # Read once, after every on_init: a plugin may build its factory there.
        endpoints: list[tuple[LoadedPlugin, str | None, WebSocketServerFactory]] = []
        for plugin in self._by_base + tuple(p for p in self.plugins if p.base is None):
            try:
                found = websocket_endpoints(
                    plugin.name, plugin.base, getattr(plugin.provider, "websocket", None)
                )
            except ValueError as error:
                log(
                    "error",
                    "buntime:plugins:websocket-invalid",
                    f"{error}; its WebSockets are not served",
                    plugin=plugin.name,
                )
                continue
            # exact sub-paths before the plugin's catch-all factory
            found.sort(key=lambda pair: pair[0] is None)
            endpoints.extend((plugin, path, factory) for path, factory in found)
        return tuple(endpoints)

    # -- lookups --------------------------------------------------------------

    def hooks(self, name: str) -> tuple[tuple[LoadedPlugin, Any], ...]:
        """C{(plugin, hook)} for every plugin with a C{name} hook, in load order."""
        found = self._hooks.get(name)
        if found is None:
            pairs = ((plugin, plugin.hook(name)) for plugin in self.plugins)
            found = self._hooks[name] = tuple((p, hook) for p, hook in pairs if hook is not None)
        return found

    def get(self, name: str) -> LoadedPlugin | None:
        """The loaded plugin called C{name}."""
        return next((p for p in self.plugins if p.name == name), None)

    def menus(self) -> list[dict[str, Any]]:
        """Every plugin's shell menus, in load order."""
        return [dict(menu) for plugin in self.plugins for menu in plugin.manifest.menus]

    def describe_loaded(self) -> list[dict[str, Any]]:
        """C{GET /api/plugins/loaded}: name, base, dependencies, optionalDependencies, menus."""
        return [plugin.manifest.describe() for plugin in self.plugins]

    # -- public routes ----------------------------------------------------------

    def _routes_of(self, app: AppInfo) -> PublicRoutes | None:
        """
        The public routes of C{app} (C{None}: it has none), parsed once per
        value of its C{publicRoutes}; read again only for another C{AppInfo}
        (the front door gives the same one to each request of an app).
        """
        cached = self._app_routes.get(app.dir)
        if cached is not None and cached[0] is app:
            return cached[2]
        config = app.config
        value = config.get("publicRoutes") if isinstance(config, dict | Mapping) else None
        if cached is not None and (cached[1] is value or cached[1] == value):
            routes = cached[2]
        else:
            try:
                parsed: PublicRoutes | None = PublicRoutes.parse(value)
            except ValueError:
                parsed = None
            routes = parsed if parsed is not None and parsed.any else None
        self._app_routes[app.dir] = (app, value, routes)
        return routes

    def is_public(self, method: str, path: str, app: AppInfo | None, app_path: str | None) -> bool:
        """
        Whether the request skips C{on_request} hooks: a plugin's public
        routes (absolute paths) are checked first, then the app's (relative
        to the app base).
        """
        for routes in self._public:
            if routes.matches(method, path):
                return True
        if app is None or app_path is None:
            return False
        own = self._routes_of(app)
        return own is not None and own.matches(method, app_path.split("?", 1)[0])

    # -- hooks ------------------------------------------------------------------

    def on_request(
        self, request: Request, app: AppInfo | None, app_path: str | None
    ) -> Deferred[Request | Response]:
        """
        Run C{on_request} hooks in load order (unless the path is public).
        Fires with the request to go on with, or the response of the hook
        that answered.  A failing hook answers 500: a broken guard must not
        let requests through.
        """
        return as_deferred(self.request_hooks(request, app, app_path))

    def request_hooks(
        self, request: Request, app: AppInfo | None, app_path: str | None
    ) -> Request | Response | Deferred[Request | Response]:
        """L{on_request}, answered at once (not as a Deferred) when every hook answers at once."""
        hooks = self._request_hooks
        if not hooks or self.is_public(request.method, request.path, app, app_path):
            return request
        return request_chain(hooks, 0, request, app)

    def on_response(
        self, response: Response, app: AppInfo | None, request: Request | None = None
    ) -> Deferred[Response]:
        """
        Run C{on_response} hooks in load order; a failing hook leaves the
        response as it was.  A hook that declares a C{request} parameter is
        given C{request} (the request as the C{on_request} hooks left it).
        """
        return as_deferred(self.response_hooks(response, app, request))

    def response_hooks(
        self, response: Response, app: AppInfo | None, request: Request | None = None
    ) -> Response | Deferred[Response]:
        """L{on_response}, answered at once (not as a Deferred) when every hook answers at once."""
        return response_chain(self._response_hooks, 0, response, app, request, self._given_request)

    async def server_fetch(self, request: Request) -> Response | None:
        """
        The first C{server_fetch} answer that is not a 404 (or C{None}:
        nobody's).  A hook that fails, or answers neither a C{Response} nor
        C{None}, answers 500 (as a broken C{on_request} guard does).
        """
        for plugin, hook in self.hooks("server_fetch"):
            try:
                result = await call(hook, request)
                if result is not None and not isinstance(result, Response):
                    raise TypeError(f"returned {type(result).__name__}")
            except Exception as error:
                plugin_error(plugin, "server_fetch", error)
                return Response.error(
                    500, "PLUGIN_ERROR", f'Plugin "{plugin.name}" failed to handle the request'
                )
            if result is None:
                continue
            if result.status == 404:
                await _discard(result)
                continue
            return result
        return None

    def mounted_under(self, path: str) -> bool:
        """
        Whether C{path} may be under a plugin's base (a quick first look:
        its first segment is that of a base; L{routes_under} and
        L{plugin_app_for} tell).
        """
        return _first_segment(path) in self._first_segments

    def requests_hooked(self) -> bool:
        """Whether a plugin has an C{on_request} or C{on_response} hook."""
        return bool(self._request_hooks or self._response_hooks)

    def responses_hooked(self) -> bool:
        """Whether a plugin has an C{on_response} hook."""
        return bool(self._response_hooks)

    def routes_under(self, path: str) -> bool:
        """Whether a plugin's Klein C{routes} are mounted at a base above C{path}."""
        return any(
            plugin.site is not None and plugin.base is not None and _under(path, plugin.base)
            for plugin in self._by_base
        )

    async def route(self, request: Request) -> Response | None:
        """
        Plugin Klein C{routes} at their base, longest base first, the base
        stripped; a 404 falls through to the next (and finally to C{None}).
        """
        response = await self.routed(request)
        if response is not None and response.status == 404:
            await _discard(response)
            return None
        return response

    async def routed(self, request: Request) -> Response | None:
        """
        L{route}, but when every plugin routes at C{path} declined it (a
        404), the first of those 404s (the others are discarded): it answers
        the request if nothing after the plugin routes does.
        """
        path = request.path
        declined: Response | None = None
        for plugin in self._by_base:
            if plugin.site is None or plugin.base is None or not _under(path, plugin.base):
                continue
            response = await render(plugin.site, request, self.clock)
            if response.status != 404:
                if declined is not None:
                    await _discard(declined)
                return response
            if declined is None:
                declined = response
            else:
                await _discard(response)
        return declined

    def plugin_app_for(self, path: str) -> tuple[LoadedPlugin, str, str] | None:
        """The plugin whose C{entrypoint} app is served at C{path}: (plugin, base, rest)."""
        for plugin in self._by_base:
            base = plugin.base
            if plugin.manifest.entrypoint and base is not None and _under(path, base):
                return plugin, base, path[len(base) :] or "/"
        return None

    def websocket_for(self, path: str) -> tuple[LoadedPlugin, WebSocketServerFactory] | None:
        """
        The plugin and the autobahn factory serving WebSockets at C{path}
        (longest base first; a mapping's sub-paths match exactly, a trailing
        slash aside; a lone factory matches every path under the base).
        """
        exact = path.rstrip("/") or "/"
        for plugin, where, factory in self._websockets:
            if where == exact or (where is None and _under(path, plugin.base or "")):
                return plugin, factory
        return None

    # -- lifecycle notifications -------------------------------------------------

    async def _notify(self, hook_name: str, *args: Any, reverse: bool = False) -> None:
        plugins = reversed(self.plugins) if reverse else self.plugins
        for plugin in plugins:
            hook = plugin.hook(hook_name)
            if hook is None:
                continue
            try:
                await call(hook, *args)
            except Exception as error:
                plugin_error(plugin, hook_name, error)

    async def worker_spawned(self, worker: Any, app: Any) -> None:
        """C{on_worker_spawn} hooks (errors are logged)."""
        await self._notify("on_worker_spawn", worker, app)

    async def worker_terminated(self, worker: Any, app: Any) -> None:
        """C{on_worker_terminate} hooks (errors are logged)."""
        await self._notify("on_worker_terminate", worker, app)

    async def server_started(self, server: Any) -> None:
        """C{on_server_start} hooks in load order (errors are logged)."""
        await self._notify("on_server_start", server)

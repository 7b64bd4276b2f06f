"""
The contracts a plugin author codes against.

A plugin is any object that declares C{@implementer(IBuntimePlugin)} and
has the members it needs; every member is optional.  The runtime checks the
object with C{zope.interface.verify.verifyObject} before using it: a member
that is present must have the declared signature (extra arguments with
defaults are fine), a member that is absent is simply not called.

Hooks may be plain functions, C{async def} coroutines or return a
C{Deferred}; the runtime waits for the result either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from twisted.internet.defer import Deferred

    from buntime.http import AppInfo, Request, Response


class IPluginLogger(Interface):
    """
    A logger scoped to one plugin: its lines carry C{context="plugin:<short
    name>"} (C{@buntime/plugin-keyval} logs as C{plugin:keyval}).  Fields are
    structured data; never pass secrets.  A field named as one of the
    line's own keys (C{level}, C{message}, C{context}, C{timestamp},
    C{task_uuid} ...) is kept as C{<name>_}.
    """

    def debug(message: str, /, **fields: object) -> None:
        """Log C{message} at debug level."""

    def info(message: str, /, **fields: object) -> None:
        """Log C{message} at info level."""

    def warn(message: str, /, **fields: object) -> None:
        """Log C{message} at warn level."""

    def error(message: str, /, **fields: object) -> None:
        """Log C{message} at error level."""


class IPluginContext(Interface):
    """What C{on_init(ctx)} receives: the plugin's view of the runtime."""

    name = Attribute("The plugin's name from its manifest, e.g. C{@buntime/plugin-metrics}.")
    base = Attribute("The plugin's mount path (C{/metrics}), or C{None}.")
    path = Attribute("The directory the plugin was loaded from.")
    config = Attribute(
        "The plugin's settings as a dict: every key of its manifest that is not a"
        " manifest field, with C{config:} schema entries read env var -> manifest -> default."
    )
    global_config = Attribute(
        "The runtime's settings (worker dirs, plugin dirs, pool size, env, ...), read-only."
    )
    logger = Attribute("An L{IPluginLogger} scoped to this plugin.")
    pool = Attribute(
        "The worker pool: C{pool.metrics()} and C{pool.worker_stats()} give its numbers,"
        " C{pool.worker_events()} the workers started, failed to start, crashed and retired"
        " by app and reason."
    )
    data_dir = Attribute("A directory where the plugin may keep state (under RUNTIME_DATA_DIR).")
    reactor = Attribute("The reactor (for timers: C{reactor.callLater}); never import it.")
    requests = Attribute(
        "Every request the runtime answered, counted by app, method and status class"
        " (C{buntime.plugins.outcomes.RequestOutcomes}): C{requests.rows()} gives"
        " C{Outcome(app, method, status_class, count, sum_ms, buckets)} rows, the"
        " cumulative latency buckets bounded by C{requests.bounds_ms}.  Counting costs"
        " requests nothing a hook would; read it when asked (a scrape, a timer)."
    )
    plugin_bases = Attribute(
        "The bases of every plugin of the plugin set being loaded (this one's included),"
        " longest first, then alphabetically: C{('/metrics', '/logs')}."
    )
    trusted_proxies = Attribute(
        "The peers whose C{X-Forwarded-*} headers the runtime believes"
        " (C{RUNTIME_FORWARDED_ALLOW_IPS}): a container of addresses as text"
        " (C{'127.0.0.1' in trusted_proxies}), or C{None} when every peer is."
        " The runtime drops those headers from any other peer before a plugin"
        " sees them; a trusted proxy appends to C{X-Forwarded-For} what the"
        " client wrote, so the client's own address is its last entry that is"
        " not one of these."
    )

    def register_service(name: str, service: object) -> None:
        """
        Offer C{service} to other plugins under C{name}.  Registering a name
        twice replaces the first one and logs a warning.
        """

    def get_service(name: str) -> object | None:
        """The service registered under C{name}, or C{None}."""

    def add_log_destination(destination: Callable[[dict[str, Any]], None]) -> None:
        """
        Give C{destination} every log message from now on (runtime, plugins,
        workers), at every level, as eliot's message dict: do little with it
        (it runs in the code that logged), never mutate it, never raise.
        Remove it in C{on_shutdown}.
        """

    def remove_log_destination(destination: Callable[[dict[str, Any]], None]) -> None:
        """Stop giving C{destination} log messages (nothing happens if it was not added)."""

    def log_record(message: Mapping[str, Any]) -> dict[str, Any]:
        """
        The JSON record of a log message, as the runtime writes it: C{level},
        C{message}, C{timestamp}, C{context}, its fields, credentials redacted.
        """

    def when_stopping() -> Deferred[None]:
        """
        Fires when the runtime's drain begins (after its drain delay, during
        which it still serves), before it stops listening and waits for the
        requests in flight: end never-ending answers (event streams) then.
        """

    def refuse_change(request: Any) -> Any:
        """
        The runtime's trust rule for a request that changes state (docs/api.md,
        "Who may change what"; the core API applies the same): C{None} when
        C{request} may go on (safe methods always may), else the refusal, a
        401 C{UNAUTHORIZED} (C{RUNTIME_API_TOKEN} is set and the request does
        not bear it) or a 403 C{FORBIDDEN} (another machine's peer without a
        token set, or a browser's request from another origin) JSON error.

        C{request} is a Klein route's twisted.web request (the refusal is
        then written on it, status and headers, and its body returned as
        bytes: return them) or a L{buntime.http.Request} in a hook (the
        refusal is then a L{buntime.http.Response}: return it)::

            @routes.route("/api/items", methods=["POST"])
            def add(self, request):
                refused = self.ctx.refuse_change(request)
                if refused is not None:
                    return refused
                ...
        """


class IBuntimePlugin(IPlugin):
    """
    A buntime plugin.  Every member is optional: implement only what you need.

    C{request} and C{response} are L{buntime.http.Request} and
    L{buntime.http.Response} (immutable: return a new one to change it);
    C{app} is a L{buntime.http.AppInfo} (C{name}, C{version}, C{dir},
    C{config}) or C{None} when the request is not for a worker app.

    Extending C{twisted.plugin.IPlugin} is what lets C{twisted.plugin.getPlugins}
    find plugin objects that a Python package ships in C{twisted/plugins/}.
    """

    manifest = Attribute(
        "Only for plugins shipped in a Python package (C{twisted/plugins/*.py}):"
        " the manifest as a dict, the same fields as C{manifest.yaml} (C{name} required)."
    )

    routes = Attribute(
        "A C{klein.Klein} app mounted at the plugin's C{base}; the paths it sees have"
        " the base stripped (C{/metrics/api/} arrives as C{/api/}).  A 404 from it lets"
        " the request go on to plugin apps and worker apps.  Declare it as a class"
        " attribute (C{routes = Klein()}) and decorate methods with C{@routes.route(...)}."
    )

    websocket = Attribute(
        "Handlers for WebSocket connections on the plugin's paths (needs a C{base}): an"
        " C{autobahn.twisted.websocket.WebSocketServerFactory} whose protocol serves every"
        " upgrade under the base, or a mapping of sub-paths to factories"
        ' (C{{"/ws": factory}} serves only C{<base>/ws}).  Read once, after C{on_init}'
        " (build the factory there, with C{reactor=ctx.reactor}).  Upgrades run the"
        " C{on_request} hooks first (a Response refuses them); the handshake answers 101"
        " with the request's C{x-request-id}; C{on_response} hooks do not run.  The"
        " protocol sees the full path (base included).  At shutdown open sockets are"
        ' closed with 1001 "going away".'
    )

    def on_init(ctx: IPluginContext) -> object:
        """
        Called once at startup (and after a reload) in load order, with an
        L{IPluginContext}.  Open resources and register services here.  May
        return a Deferred or be a coroutine; it must finish within 30 s, else
        the plugin fails to load and the runtime does not start.
        """

    def on_request(request: Request, app: AppInfo | None) -> object:
        """
        Called for every request, in load order, before the core API, plugin
        routes and apps see it (unless its path is a public route).  Return
        C{None} to let it go on unchanged, a new C{Request} to go on with that
        one, or a C{Response} to answer at once (later hooks are skipped).
        """

    def on_response(response: Response, app: AppInfo | None) -> object:
        """
        Called, in load order, with every response produced by plugin
        handlers, plugin routes, plugin apps and worker apps.  Return the
        response (changed or not); C{None} keeps it unchanged.

        A hook that declares one more parameter named C{request} (with a
        default: C{on_response(self, response, app, request=None)}) is given
        the request the response answers, as the C{on_request} hooks left it.
        """

    def server_fetch(request: Request) -> object:
        """
        A catch-all handler tried, in load order, before plugin routes.  Return
        a C{Response}; a 404 (or C{None}) means "not mine" and the request
        goes on.
        """

    def on_server_start(server: object) -> object:
        """Called once the runtime listens; C{server} describes the listening runtime."""

    def on_shutdown() -> object:
        """
        Called at shutdown and when a reload replaces this plugin, in reverse
        load order.  Close what C{on_init} opened.
        """

    def on_worker_spawn(worker: object, app: AppInfo) -> object:
        """Called when the pool starts a worker for C{app} (errors are logged and ignored)."""

    def on_worker_terminate(worker: object, app: AppInfo) -> object:
        """Called when a worker of C{app} stops (errors are logged and ignored)."""


HOOKS = (
    "on_init",
    "on_request",
    "on_response",
    "server_fetch",
    "on_server_start",
    "on_shutdown",
    "on_worker_spawn",
    "on_worker_terminate",
)
"""The hook methods of L{IBuntimePlugin}."""

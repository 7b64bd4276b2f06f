"""
The front door: what every request goes through once its connection
(L{buntime.web.http1}) has read it.

It gives each request its id and its eliot action, then walks the order of
resolution of SPEC §4 in L{FrontDoor.handle} — one path for worker apps,
plugin routes, plugin apps, the core API and static files — and hands the
resulting L{buntime.http.Response} back to the connection to write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import frozen
from eliot import current_action
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime import __version__
from buntime.http import AppInfo, Headers, Request, Response, Takeover
from buntime.logs import log
from buntime.plugins.outcomes import RequestOutcomes
from buntime.plugins.rendering import render
from buntime.pool.websocket import WorkerSocket
from buntime.stream import close_body
from buntime.trust import api_refusal, loopback, trusted
from buntime.web.api.core import APISite, CoreAPI
from buntime.web.http1 import Exchange
from buntime.web.state import RuntimeState
from buntime.web.takeover import TakenOver
from buntime.web.tracked import TrackedRequest
from buntime.web.trust import request_ids, with_https, without_forwarded
from buntime.web.websocket import WebSockets

if TYPE_CHECKING:
    from eliot import Action

    from buntime.plugins.registry import PluginRegistry

_T = TypeVar("_T")


@frozen
class Declined:
    """
    A step's answer that lets the request go on (a plugin route's 404):
    C{response} answers it in place of the built-in 404 when no later
    step takes it, and is closed unread when one does.  The first one of
    the walk counts.
    """

    response: Response


Step = Callable[[Request, dict[str, Any]], Awaitable[Response | Declined | None] | None]
"""
A dispatch step: C{None} at once for "not mine", else an awaitable of the
answer (C{None} for "not mine after all", a L{Declined} for "not mine, but
answer this if no later step does").  An C{async def} step is one.  A step
whose awaitable is only ever an answer says so with a false C{may_decline}
attribute (the walk then need not look at its answer).
"""


def _log_crash(failure: Failure) -> None:
    log(
        "error",
        "buntime:http:internal-error",
        "Unhandled error while answering a request",
        error=failure.getErrorMessage(),
        traceback=failure.getTraceback(),
    )


class FrontDoor:
    """
    Every request: an id, an eliot action, then the order of resolution
    (L{handle}).  C{steps} are the dispatch steps later subsystems fill in
    (plugin handlers, plugin routes, plugin apps, worker apps, the
    homepage); C{apis} the Klein apps mounted under the core API;
    C{plugins} gives the current plugin registry, C{identify} the app a
    path addresses (for plugin hooks), C{body_limit} the request body limit
    of a path; C{outcomes} counts every finished request.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        state: RuntimeState,
        api: CoreAPI,
        api_prefix: str = "",
        steps: list[Step] | None = None,
        apis: Sequence[tuple[str, Any]] = (),
        plugins: Callable[[], PluginRegistry | None] | None = None,
        identify: Callable[[str], tuple[AppInfo, str] | None] | None = None,
        websockets: WebSockets | None = None,
        body_limit: Callable[[str], int] | None = None,
        forwarded_allow: Container[str] | None = None,
        api_token: str | None = None,
        outcomes: RequestOutcomes | None = None,
    ) -> None:
        self._clock = clock
        self.outcomes = outcomes
        self._state = state
        self._plugins = plugins
        self._identify = identify
        self._websockets = websockets
        self._body_limit = body_limit
        self._forwarded_allow = forwarded_allow
        self._api_token = api_token
        # (route prefix, a site for its Klein resource), longest prefix first; the core API last.
        mounted = [(prefix, obj.app.resource()) for prefix, obj in apis]
        mounted.sort(key=lambda pair: len(pair[0]), reverse=True)
        self._api_sites = [(prefix, APISite(res, api_prefix)) for prefix, res in mounted]
        self._api_sites.append(("/api", APISite(api.app.resource(), api_prefix)))
        self._api_prefix = api_prefix
        self._api_base = f"{api_prefix}/api"
        self.steps: list[Step] = steps or []

    # -- what the connection asks ----------------------------------------------

    def body_limit(self, path: str) -> int:
        """The request body limit for C{path} (the connection refuses more with 413)."""
        if self._body_limit is None:
            return 100 * 1024 * 1024
        return self._body_limit(path)

    def answer(self, exchange: Exchange) -> None:
        """Answer C{exchange}: its id, its log action, then L{handle}."""
        head = exchange.head
        request_id, task_uuid = request_ids(head.request_id)
        exchange.request_id = request_id
        headers = head.headers
        allowed = self._forwarded_allow
        if allowed is not None and not trusted(exchange.remote, allowed):
            headers = without_forwarded(headers, internal=loopback(exchange.remote))
        if exchange.secure:  # apps (and the proxy's upstreams) learn it came over TLS
            headers = with_https(headers)
        incoming = Request._of(
            head.method,
            head.target,
            Headers._of((*headers, ("x-request-id", request_id))),
            exchange.body,
            exchange.remote,
            exchange.remote_port,
            exchange.local,
            None,
            head.version,
        )
        tracked = TrackedRequest(
            self._clock, self._state, request_id, head.method, head.path, task_uuid, self.outcomes
        )
        exchange.on_end(tracked.finished, exchange)
        done = tracked.run(self.handle, incoming, tracked.fields, exchange)
        done.addCallbacks(
            self._respond,
            self._crashed,
            callbackArgs=(exchange, incoming, tracked.fields),
            errbackArgs=(exchange,),
        )

    def _respond(
        self,
        response: Response | None,
        exchange: Exchange,
        request: Request,
        fields: dict[str, Any],
    ) -> None:
        """Write the answer (never raises: one it cannot write aborts the connection)."""
        if response is not None and response.status == 101:
            body = response.body
            if type(body) is WorkerSocket and self._websockets is not None:
                self._websockets.relay(exchange, request, response, fields)  # an app's WebSocket
                return
            if type(body) is Takeover:  # a plugin takes the connection (a proxy's tunnel)
                self._take_over(exchange, body, fields)
                return
        exchange.respond(response)

    def _take_over(self, exchange: Exchange, takeover: Takeover, fields: dict[str, Any]) -> None:
        """
        Hand C{exchange}'s connection to the protocol C{takeover} builds: the
        request is in flight until that connection closes (then logged with
        its 101), and the tunnel is closed when the runtime stops.
        """
        websockets = self._websockets
        if not exchange.head.upgrade or (websockets and websockets.closing_tunnels):
            exchange.respond(
                Response.error(502, "BAD_GATEWAY", "A plugin switched protocols unasked")
                if not exchange.head.upgrade
                else Response.error(503, "SHUTTING_DOWN", "The runtime is stopping")
            )
            return
        fields["upgrade"] = "tunnel"
        exchange.status = 101
        tunnel = TakenOver(takeover.build(), exchange)
        exchange.hand_over(tunnel, b"")
        if websockets is not None and tunnel.transport is not None:  # handed over
            websockets.tunnelled(tunnel)

    def _crashed(self, failure: Failure, exchange: Exchange) -> None:
        if failure.check(CancelledError):
            return  # the client disconnected and its work was cancelled
        _log_crash(failure)
        if not exchange.written and not exchange.gone:
            exchange.respond(Response.error(500, "INTERNAL_ERROR", "Internal error"))

    # -- the order of resolution -----------------------------------------------

    def _is_api(self, path: str) -> bool:
        base = self._api_base
        return path == base or path.startswith(base + "/")

    def handle(
        self, request: Request, fields: dict[str, Any], exchange: Exchange | None = None
    ) -> Deferred[Response | None]:
        """
        The answer to C{request} (SPEC §4, steps 2 and 4 to 10): the CSRF
        rule for the core API, plugin C{on_request} hooks, the core API,
        a plugin's WebSocket (C{None}: the connection was handed over), the
        dispatch steps, and plugin C{on_response} hooks on their answer.

        A chain of Deferreds, not a coroutine: a worker app's answer then
        runs the rest of the walk as callbacks of the pool's own Deferred.
        The hooks run in the request's eliot action (C{current_action}).
        """
        path = request.path
        is_api = self._is_api(path)
        if is_api:
            refusal = api_refusal(request, self._api_token, self._forwarded_allow)
            if refusal is not None:
                return succeed(refusal)
        registry = self._registry()
        if registry is None or not registry.requests_hooked():
            return self._requested(request, path, is_api, None, fields, exchange)
        hooks = _Hooks(registry, current_action())
        if not is_api and self._identify is not None:
            found = self._identify(path)
            if found is not None:
                hooks.app, hooks.app_path = found
        requested = registry.request_hooks(request, hooks.app, hooks.app_path)
        if isinstance(requested, Request | Response):  # every hook answered at once
            return self._requested(requested, path, is_api, hooks, fields, exchange)
        return requested.addCallback(self._requested, path, is_api, hooks, fields, exchange)

    def _requested(
        self,
        outcome: Request | Response,
        path: str,
        is_api: bool,
        hooks: _Hooks | None,
        fields: dict[str, Any],
        exchange: Exchange | None,
    ) -> Deferred[Response | None]:
        """L{handle} once the C{on_request} hooks have let C{outcome} through."""
        if isinstance(outcome, Response):
            return succeed(outcome)
        if is_api:
            if outcome.path != path:
                # the core API answers the path the client sent (its CSRF rule was for it)
                outcome = outcome.with_path(path)
            return ensureDeferred(self._render_api(outcome))
        if (
            exchange is not None
            and exchange.head.upgrade
            and self._websockets is not None
            and self._websockets.upgrade(
                exchange, outcome, hooks.registry if hooks else self._registry(), fields
            )
        ):
            return succeed(None)
        if hooks is not None and not hooks.registry.responses_hooked():
            hooks = None
        elif hooks is not None:
            hooks.request = outcome  # for on_response hooks that take it
            if outcome.path != path and self._identify is not None:
                # a hook sent it elsewhere (a virtual host): on_response is given that app
                found = self._identify(outcome.path)
                hooks.app, hooks.app_path = found if found is not None else (None, None)
        answer: Deferred[Any] = self.dispatch(outcome, fields, hooks)
        return answer

    def _registry(self) -> PluginRegistry | None:
        return self._plugins() if self._plugins is not None else None

    async def _render_api(self, request: Request) -> Response:
        """The core API (and what is mounted under it), with the API prefix taken off."""
        inner = request.path[len(self._api_prefix) :]
        site = next(
            site
            for prefix, site in self._api_sites
            if inner == prefix or inner.startswith(prefix + "/")
        )
        if self._api_prefix:
            request = request.with_path(inner)
        return await render(site, request, self._clock)

    def dispatch(
        self, request: Request, fields: dict[str, Any], hooks: _Hooks | None = None
    ) -> Deferred[Response]:
        """
        Steps 5 to 10 of the order of resolution (SPEC §4) for everything but
        the core API: C{/.well-known/buntime}, then each of C{steps} (plugin
        handlers, plugin routes, plugin apps, worker apps, the homepage),
        then the built-in answers and the 404 (a plugin route's own 404, if
        one declined the request); the answer goes through the
        C{on_response} C{hooks}, if any.
        """
        if request.path == "/.well-known/buntime":
            found = _well_known(request, self._api_base)
            return _as_deferred(found if hooks is None else hooks.responded(found))
        return self._from_step(0, request, fields, hooks)

    def _from_step(
        self,
        index: int,
        request: Request,
        fields: dict[str, Any],
        hooks: _Hooks | None,
        declined: Response | None = None,
    ) -> Deferred[Any]:
        """
        The answer of the first step from C{index} on that takes C{request};
        when none does, C{declined} (an earlier step's L{Declined} answer)
        in place of the built-in 404.
        """
        steps = self.steps
        while index < len(steps):
            pending = steps[index](request, fields)
            index += 1
            if pending is not None:
                waiting = pending if isinstance(pending, Deferred) else ensureDeferred(pending)  # type: ignore[arg-type]
                if getattr(steps[index - 1], "may_decline", True):
                    if declined is not None:
                        waiting.addErrback(_dropping, declined)  # the step failed
                    return waiting.addCallback(
                        self._stepped, index, request, fields, hooks, declined
                    )
                if declined is not None:
                    waiting.addBoth(_dropping, declined)
                return waiting if hooks is None else waiting.addCallback(hooks.responded)
        found = _built_in(request)
        if declined is not None and found.status == 404:
            found = declined
        elif declined is not None:
            _drop(declined)
        return _as_deferred(found if hooks is None else hooks.responded(found))

    def _stepped(
        self,
        answer: Response | Declined | None,
        index: int,
        request: Request,
        fields: dict[str, Any],
        hooks: _Hooks | None,
        declined: Response | None,
    ) -> Response | Deferred[Any]:
        """A step's answer (through the hooks), or the next steps' when it was not the step's."""
        if isinstance(answer, Declined):
            if declined is None:
                declined = answer.response
            else:
                _drop(answer.response)  # the walk's first one counts
            return self._from_step(index, request, fields, hooks, declined)
        if answer is None:
            return self._from_step(index, request, fields, hooks, declined)
        if declined is not None:
            _drop(declined)
        return answer if hooks is None else hooks.responded(answer)


def _as_deferred(answer: Response | Deferred[Response]) -> Deferred[Response]:
    return answer if isinstance(answer, Deferred) else succeed(answer)


def _drop(declined: Response) -> None:
    """Close a L{Declined} answer that will not be sent, unread (its producer is told)."""
    ensureDeferred(close_body(declined.body)).addErrback(_log_crash)


def _dropping(result: _T, declined: Response) -> _T:
    """C{result}, once C{declined} is dropped (L{_drop}): a callback."""
    _drop(declined)
    return result


def _well_known(request: Request, api_base: str) -> Response:
    """C{/.well-known/buntime}: where the API is; a 405 naming GET and HEAD to other methods."""
    if request.method in ("GET", "HEAD"):
        return Response.json({"api": api_base, "version": __version__})
    message = f"{request.method} is not allowed here"
    return Response.error(405, "METHOD_NOT_ALLOWED", message, {"allow": "GET, HEAD"})


def _built_in(request: Request) -> Response:
    """What answers a request no step took: the version at C{/}, 204 for a favicon, 404."""
    path = request.path
    if path == "/" and request.method in ("GET", "HEAD"):
        return Response.text(f"Buntime v{__version__}")
    if path == "/favicon.ico":
        return Response(204)
    return Response.error(404, "NOT_FOUND", f"Nothing at {path}", {"x-not-found": "true"})


class _Hooks:
    """
    A request's plugin hooks: the registry, the app it is for, its eliot
    action, and the request as the C{on_request} hooks left it.
    """

    __slots__ = ("action", "app", "app_path", "registry", "request")

    def __init__(self, registry: PluginRegistry, action: Action | None) -> None:
        self.registry = registry
        self.action = action
        self.app: AppInfo | None = None
        self.app_path: str | None = None
        self.request: Request | None = None

    def responded(self, response: Response) -> Response | Deferred[Response]:
        """The C{on_response} hooks on C{response}, in the request's eliot action."""
        if self.action is None:
            return self.registry.response_hooks(response, self.app, self.request)
        return self.action.run(self.registry.response_hooks, response, self.app, self.request)

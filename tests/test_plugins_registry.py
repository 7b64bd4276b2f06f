"""
The request path of a plugin registry: C{on_request}/C{on_response} hooks,
public routes, C{server_fetch}, Klein C{routes} rendered in memory, plugin
apps, menus, worker notifications.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from test_plugins_support import make_loader
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.web.resource import Resource
from zope.interface import implementer

from buntime.http import AppInfo, Request, Response, read_body
from buntime.interfaces import IBuntimePlugin
from buntime.plugins.discovery import PluginSource
from buntime.plugins.registry import PluginRegistry


async def registry_of(*plugins: tuple[dict[str, Any], object]) -> PluginRegistry:
    """A registry of in-memory providers, each with its manifest (name, base...)."""
    sources = [
        PluginSource(manifest, f"/plugins/{manifest['name']}", "package", provider=provider)
        for manifest, provider in plugins
    ]
    registry, _ = await make_loader().load(sources)
    return registry


@implementer(IBuntimePlugin)
class Hooks:
    """on_request/on_response behaviour chosen per test."""

    def __init__(self, name: str, request=None, response=None, log=None) -> None:
        self.name = name
        self._request = request
        self._response = response
        self.log = log if log is not None else []

    def on_request(self, request: Request, app: Any) -> Any:
        self.log.append((self.name, "request", request.path, app))
        return self._request(request) if self._request else None

    async def on_response(self, response: Response, app: Any) -> Any:
        self.log.append((self.name, "response", response.status, app))
        return self._response(response) if self._response else None


APP = AppInfo("todos", "1.0.0", "/apps/todos/1.0.0", {"publicRoutes": {"GET": ["/api/health"]}})


# -- on_request ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_on_request_runs_in_load_order_and_passes_changes_on():
    log: list = []
    registry = await registry_of(
        ({"name": "b", "dependencies": ["a"]}, Hooks("b", log=log)),
        ({"name": "a"}, Hooks("a", lambda r: r.with_header("x-a", "1"), log=log)),
    )
    result = await registry.on_request(Request("GET", "/x?q=1"), None, None)
    assert isinstance(result, Request)
    assert result.headers.get("x-a") == "1"
    assert result.url == "/x?q=1"
    assert [entry[:2] for entry in log] == [("a", "request"), ("b", "request")]


@pytest_twisted.ensureDeferred
async def test_on_request_response_short_circuits():
    log: list = []
    registry = await registry_of(
        ({"name": "guard"}, Hooks("guard", lambda r: Response.text("no", 401), log=log)),
        ({"name": "later", "dependencies": ["guard"]}, Hooks("later", log=log)),
    )
    result = await registry.on_request(Request("GET", "/x"), APP, "/x")
    assert isinstance(result, Response)
    assert result.status == 401
    assert log == [("guard", "request", "/x", APP)]


@pytest_twisted.ensureDeferred
async def test_async_and_deferred_hooks():
    @implementer(IBuntimePlugin)
    class Later:
        def on_request(self, request, app):
            d: Deferred = Deferred()
            d.callback(request.with_header("x-deferred", "yes"))
            return d

    @implementer(IBuntimePlugin)
    class Async:
        async def on_request(self, request, app):
            return request.with_header("x-async", "yes")

    registry = await registry_of(({"name": "a"}, Later()), ({"name": "b"}, Async()))
    result = await registry.on_request(Request("GET", "/"), None, None)
    assert (result.headers.get("x-deferred"), result.headers.get("x-async")) == ("yes", "yes")


@pytest_twisted.ensureDeferred
async def test_failing_on_request_answers_500(eliot_logger):
    def boom(request):
        raise RuntimeError("broken guard")

    registry = await registry_of(({"name": "guard"}, Hooks("guard", boom)))
    result = await registry.on_request(Request("GET", "/x"), None, None)
    assert result.status == 500
    assert json.loads(result.body) == {
        "error": {"code": "PLUGIN_ERROR", "message": 'Plugin "guard" failed to handle the request'}
    }
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:plugins:hook-failed"
    ]
    assert logged["message"] == 'Plugin "guard" on_request failed: RuntimeError: broken guard'


@pytest_twisted.ensureDeferred
async def test_on_request_returning_nonsense_answers_500(eliot_logger):
    registry = await registry_of(({"name": "odd"}, Hooks("odd", lambda r: 42)))
    result = await registry.on_request(Request("GET", "/x"), None, None)
    assert result.status == 500


# -- public routes -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_plugin_public_routes_are_absolute_and_skip_every_hook():
    log: list = []
    registry = await registry_of(
        (
            {"name": "auth", "publicRoutes": {"GET": ["/auth/login"], "ALL": ["/open/**"]}},
            Hooks("auth", log=log),
        ),
        ({"name": "other"}, Hooks("other", log=log)),
    )
    for method, path in [("GET", "/auth/login"), ("POST", "/open/a/b"), ("HEAD", "/auth/login")]:
        request = Request(method, path + "?next=/")
        assert await registry.on_request(request, None, None) is request
    assert log == []
    await registry.on_request(Request("POST", "/auth/login"), None, None)
    assert len(log) == 2


@pytest_twisted.ensureDeferred
async def test_app_public_routes_are_relative_to_the_app_base():
    log: list = []
    registry = await registry_of(({"name": "auth"}, Hooks("auth", log=log)))
    request = Request("GET", "/todos/api/health")
    assert await registry.on_request(request, APP, "/api/health") is request
    assert await registry.on_request(request, APP, "/api/health?x=1") is request
    assert log == []
    await registry.on_request(Request("POST", "/todos/api/health"), APP, "/api/health")
    await registry.on_request(Request("GET", "/api/health"), None, None)
    await registry.on_request(Request("GET", "/todos/api/other"), APP, "/api/other")
    assert len(log) == 3


@pytest_twisted.ensureDeferred
async def test_app_public_routes_as_a_list_and_invalid_ones():
    registry = await registry_of(({"name": "auth"}, Hooks("auth")))
    listed = AppInfo("a", "1.0.0", "/apps/a", {"publicRoutes": ["/static/**"]})
    invalid = AppInfo("b", "1.0.0", "/apps/b", {"publicRoutes": {"FETCH": ["/x"]}})
    assert registry.is_public("PUT", "/a/static/x.css", listed, "/static/x.css")
    assert not registry.is_public("GET", "/b/x", invalid, "/x")
    assert not registry.is_public("GET", "/a/x", AppInfo("a", "1", "/d"), "/x")


@implementer(IBuntimePlugin)
class Guarded:
    """A guard that refuses requests without a key, and routes a guarded one may not reach."""

    routes = Klein()

    def on_request(self, request: Request, app: Any) -> Response | None:
        if request.headers.get("x-key") != "secret":
            return Response.error(401, "UNAUTHORIZED", "No key")
        return None

    @routes.route("/api/status")
    def status(self, request: Any) -> bytes:
        return b"up"

    @routes.route("/api/admin/wipe")
    def wipe(self, request: Any) -> bytes:
        return b"wiped"


@pytest_twisted.ensureDeferred
async def test_public_routes_match_the_path_as_the_route_reads_it():
    registry = await registry_of(
        ({"name": "g", "base": "/g", "publicRoutes": ["/g/api/*"]}, Guarded())
    )
    # %2F is a slash to the route (twisted.web and WSGI decode the path): two segments, not one
    wipe = Request("GET", "/g/api/admin%2Fwipe")
    assert (await registry.route(wipe)).body == b"wiped"  # where it would go
    refused = await registry.on_request(wipe, None, None)
    assert isinstance(refused, Response) and refused.status == 401
    for path in ("/g/api/status", "/g/api/st%61tus", "/g/api/status/"):
        request = Request("GET", path)
        assert await registry.on_request(request, None, None) is request
    app = AppInfo("a", "1.0.0", "/apps/a", {"publicRoutes": ["/api/*"]})
    assert not registry.is_public("GET", "/a/api/admin%2Fwipe", app, "/api/admin%2Fwipe")
    assert registry.is_public("GET", "/a/api/st%61tus", app, "/api/st%61tus")


# -- on_response -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_on_response_chain(eliot_logger):
    def broken(response):
        raise ValueError("nope")

    log: list = []
    registry = await registry_of(
        ({"name": "a"}, Hooks("a", response=lambda r: r.with_header("x-a", "1"), log=log)),
        ({"name": "b"}, Hooks("b", response=broken, log=log)),
        ({"name": "c"}, Hooks("c", response=lambda r: r.with_status(201), log=log)),
        ({"name": "d"}, Hooks("d", log=log)),
    )
    result = await registry.on_response(Response.text("hi"), APP)
    assert result.status == 201
    assert result.headers.get("x-a") == "1"
    assert [entry[0] for entry in log] == ["a", "b", "c", "d"]
    assert log[0][3] is APP


@implementer(IBuntimePlugin)
class Answering:
    """An on_response hook that takes the request too (and may wait before answering)."""

    def __init__(self, waits: bool = False) -> None:
        self.waits = waits
        self.given: list[Any] = []

    def on_response(self, response: Response, app: Any, request: Request | None = None) -> Any:
        self.given.append(request)
        changed = response.with_header("x-for", request.path if request else "-")
        return succeed(changed) if self.waits else changed


@pytest_twisted.ensureDeferred
async def test_on_response_hooks_that_declare_request_are_given_it():
    first, second = Answering(waits=True), Answering()
    registry = await registry_of(
        ({"name": "a"}, first),
        ({"name": "b"}, Hooks("b", response=lambda r: r.with_header("x-b", "1"))),
        ({"name": "c"}, second),
    )
    request = Request("GET", "/todos/x")
    result = await registry.on_response(Response.text("hi"), APP, request)
    assert result.headers["x-for"] == "/todos/x"
    assert result.headers["x-b"] == "1"
    assert first.given == [request] and second.given == [request]  # after a pending hook too
    # a caller that has no request gives None
    await registry.on_response(Response.text("hi"), APP)
    assert first.given[-1] is None


@pytest_twisted.ensureDeferred
async def test_every_context_knows_the_bases_of_the_plugin_set():
    registry = await registry_of(
        ({"name": "a", "base": "/a"}, Hooks("a")),
        ({"name": "b"}, Hooks("b")),
        ({"name": "c", "base": "/longer"}, Hooks("c")),
    )
    for plugin in registry.plugins:
        assert plugin.context is not None
        assert plugin.context.plugin_bases == ("/longer", "/a")


@pytest_twisted.ensureDeferred
async def test_hooks_that_answer_at_once_run_at_once_and_a_pending_one_holds_the_rest(
    eliot_logger,
):
    pending: Deferred = Deferred()
    order: list[str] = []

    @implementer(IBuntimePlugin)
    class Waits:
        def on_request(self, request, app):
            order.append("waits")
            return pending

        def on_response(self, response, app):
            order.append("waits:response")
            return succeed(response.with_header("x-w", "1"))

    @implementer(IBuntimePlugin)
    class Now:
        def on_request(self, request, app):
            order.append("now")
            return request.with_header("x-now", "yes")

        async def on_response(self, response, app):
            order.append("now:response")
            raise ValueError("broken")  # logged; the response stays as it was

    now_only = await registry_of(({"name": "n"}, Now()))
    answered = now_only.on_request(Request("GET", "/"), None, None)
    assert answered.called  # no hook waited: fired before this returned
    registry = await registry_of(({"name": "w"}, Waits()), ({"name": "n"}, Now()))
    result = registry.on_request(Request("GET", "/"), None, None)
    assert not result.called and order == ["now", "waits"]
    pending.callback(Request("GET", "/", {"x-waited": "yes"}))
    request = result.result
    assert (request.headers.get("x-waited"), request.headers.get("x-now")) == ("yes", "yes")
    assert order == ["now", "waits", "now"]
    response = await registry.on_response(Response.text("hi"), None)
    assert response.headers.get("x-w") == "1" and order[-2:] == ["waits:response", "now:response"]


@pytest_twisted.ensureDeferred
async def test_a_hook_s_own_deferred_is_awaited_not_taken_over():
    """
    A hook may hand every request the same Deferred (a gate that opened
    once): each request waits for it, none takes it over, and what it fired
    with stays for the others.
    """
    gate = succeed(None)

    @implementer(IBuntimePlugin)
    class Gate:
        def on_request(self, request, app):
            return gate

        def on_response(self, response, app):
            return gate

    registry = await registry_of(({"name": "g"}, Gate()))
    first = registry.on_request(Request("GET", "/one"), None, None)
    held: Deferred = Deferred()
    first.addCallback(lambda request: held)  # the first request's walk goes on, and waits
    second = registry.on_request(Request("GET", "/two"), None, None)
    assert second.called, "held behind the first request"
    assert second.result.path == "/two" and gate.result is None  # the gate's result stays
    answered = registry.on_response(Response.text("two"), None)
    assert answered.called and answered.result.body == b"two"
    held.callback(None)
    assert first.called


@pytest_twisted.ensureDeferred
async def test_hooks_after_one_that_waited_run_in_the_request_s_context():
    pending: Deferred = Deferred()
    seen: list[tuple[str, bool]] = []
    marker: ContextVar[str | None] = ContextVar("marker", default=None)

    @implementer(IBuntimePlugin)
    class Waits:
        def on_request(self, request, app):
            return pending

    @implementer(IBuntimePlugin)
    class After:
        def on_request(self, request, app):
            seen.append(("after", marker.get() == "request-1"))

    registry = await registry_of(({"name": "w"}, Waits()), ({"name": "a"}, After()))
    token = marker.set("request-1")
    try:
        result = registry.on_request(Request("GET", "/"), None, None)
    finally:
        marker.reset(token)
    pending.callback(None)  # fired from outside the request's context
    await result
    assert seen == [("after", True)]


# -- server_fetch ------------------------------------------------------------------------------


@implementer(IBuntimePlugin)
class Fetcher:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def server_fetch(self, request: Request) -> Response | None:
        if request.path.startswith(self.prefix):
            return Response.text(f"{self.prefix} answered")
        if request.path == "/none":
            return None
        return Response.text("not mine", 404)


@pytest_twisted.ensureDeferred
async def test_server_fetch_404_means_not_mine():
    registry = await registry_of(({"name": "a"}, Fetcher("/a")), ({"name": "b"}, Fetcher("/b")))
    assert (await registry.server_fetch(Request("GET", "/b/x"))).body == b"/b answered"
    assert (await registry.server_fetch(Request("GET", "/a"))).body == b"/a answered"
    assert await registry.server_fetch(Request("GET", "/c")) is None
    assert await registry.server_fetch(Request("GET", "/none")) is None


@pytest_twisted.ensureDeferred
async def test_server_fetch_failure_is_500(eliot_logger):
    @implementer(IBuntimePlugin)
    class Broken:
        def server_fetch(self, request):
            raise KeyError("x")

    registry = await registry_of(({"name": "broken"}, Broken()))
    assert (await registry.server_fetch(Request("GET", "/"))).status == 500


@pytest_twisted.ensureDeferred
async def test_server_fetch_wrong_answer_is_500(eliot_logger):
    """
    A hook answering neither a Response nor None is broken, as an
    on_request hook answering so is: 500, logged, never "not mine".
    """

    @implementer(IBuntimePlugin)
    class Wrong:
        async def server_fetch(self, request):
            return "not a response"

    registry = await registry_of(({"name": "wrong"}, Wrong()), ({"name": "a"}, Fetcher("/")))
    response = await registry.server_fetch(Request("GET", "/"))
    assert (response.status, json.loads(response.body)["error"]["code"]) == (500, "PLUGIN_ERROR")
    [failed] = [m for m in eliot_logger.messages if m.get("hook") == "server_fetch"]
    assert failed["message"] == 'Plugin "wrong" server_fetch failed: TypeError: returned str'


# -- Klein routes ------------------------------------------------------------------------------


@implementer(IBuntimePlugin)
class Web:
    routes = Klein()

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.finished: list[Deferred] = []
        self.slow: Deferred | None = None

    @routes.route("/api/info", methods=["GET", "POST"])
    def info(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "path": request.path.decode(),
                "uri": request.uri.decode(),
                "prepath": [p.decode() for p in request.prepath],
                "args": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
                "body": request.content.read().decode(),
                "host": request.getRequestHostname().decode(),
                "client": request.getClientAddress().host,
                "header": (request.getHeader(b"x-thing") or b"").decode(),
                "method": request.method.decode(),
            }
        ).encode()

    @routes.route("/", methods=["GET"])
    def home(self, request: Any) -> str:
        request.setHeader(b"content-type", b"text/html")
        return "<h1>home</h1>"

    @routes.route("/api/slow")
    def slow_one(self, request: Any) -> Deferred:
        self.slow = Deferred()
        return self.slow

    @routes.route("/api/stream")
    def stream(self, request: Any) -> Deferred:
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b"data: one\n\n")
        done: Deferred = Deferred()
        self.streams.append((request, done))
        self.finished.append(request.notifyFinish())
        return done

    @routes.route("/api/fail")
    def fail(self, request: Any) -> bytes:
        raise RuntimeError("handler bug")


@pytest_twisted.ensureDeferred
async def test_routes_see_the_path_without_base():
    web = Web()
    registry = await registry_of(({"name": "web", "base": "/web"}, web))
    request = Request(
        "POST",
        "/web/api/info?a=1&a=2",
        {"host": "example.com:8080", "x-thing": "t", "content-type": "text/plain"},
        b"payload",
        remote_addr="10.0.0.9",
    )
    response = await registry.route(request)
    assert response.status == 200
    assert response.headers.get("content-type") == "application/json"
    assert response.headers.get("content-length") is None
    assert response.headers.get("server") is None
    assert json.loads(response.body) == {
        "path": "/web/api/info",
        "uri": "/web/api/info?a=1&a=2",
        "prepath": ["web", "api", "info"],
        "args": {"a": ["1", "2"]},
        "body": "payload",
        "host": "example.com",
        "client": "10.0.0.9",
        "header": "t",
        "method": "POST",
    }
    home = await registry.route(Request("GET", "/web/"))
    assert (home.status, home.body) == (200, b"<h1>home</h1>")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/x-www-form-urlencoded", b"a=3&b=&c=4"),
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="a"\r\n\r\n3\r\n'
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="b"\r\n\r\n\r\n'
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="c"; filename="c.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n4\r\n"
            b"--XyZ--\r\n",
        ),
    ],
    ids=["urlencoded", "multipart"],
)
async def test_routes_see_a_posted_form_in_args_as_twisted_web_parses_it(content_type, body):
    registry = await registry_of(({"name": "web", "base": "/web"}, Web()))
    request = Request("POST", "/web/api/info?a=1&q=2", {"content-type": content_type}, body)
    response = await registry.route(request)
    assert response.status == 200
    seen = json.loads(response.body)
    assert seen["args"] == {"a": ["3"], "b": [""], "c": ["4"], "q": ["2"]}  # the body's a wins
    assert seen["body"] == body.decode()


@pytest_twisted.ensureDeferred
async def test_routes_answer_a_malformed_multipart_form_with_400():
    registry = await registry_of(({"name": "web", "base": "/web"}, Web()))
    request = Request(
        "POST", "/web/api/info", {"content-type": "multipart/form-data; boundary=XyZ"}, b"junk"
    )
    response = await registry.route(request)
    assert response.status == 400
    assert json.loads(response.body) == {  # buntime's one error shape
        "error": {"code": "BAD_REQUEST", "message": "The multipart body is malformed"}
    }
    assert response.headers.get("content-type") == "application/json"
    empty = request.with_body(b"")  # no form at all, as in twisted.web
    assert (await registry.route(empty)).status == 200


@pytest_twisted.ensureDeferred
async def test_routes_404_falls_through_and_other_paths_are_not_looked_at():
    registry = await registry_of(({"name": "web", "base": "/web"}, Web()))
    assert await registry.route(Request("GET", "/web/nothing")) is None
    assert await registry.route(Request("GET", "/webby/api/info")) is None
    assert await registry.route(Request("GET", "/other")) is None
    not_allowed = await registry.route(Request("DELETE", "/web/api/info"))
    assert not_allowed.status == 405


@pytest_twisted.ensureDeferred
async def test_routed_keeps_the_404_a_route_declined_with():
    registry = await registry_of(({"name": "web", "base": "/web"}, Web()))
    declined = await registry.routed(Request("GET", "/web/nothing"))
    assert declined is not None and declined.status == 404  # the front door may still send it
    assert await registry.routed(Request("GET", "/other")) is None
    assert (await registry.routed(Request("GET", "/web/"))).status == 200


@pytest_twisted.ensureDeferred
async def test_routes_handler_errors_are_500_without_traceback(eliot_logger):
    """
    A route that raises is answered with buntime's JSON error (not
    twisted.web's HTML page), and logged with a message saying what failed.
    """
    registry = await registry_of(({"name": "web", "base": "/web"}, Web()))
    response = await registry.route(Request("GET", "/web/api/fail"))
    assert response.status == 500
    assert response.headers.get("content-type") == "application/json"
    body = await read_body(response.body)
    assert b"handler bug" not in body
    assert json.loads(body)["error"]["code"] == "PLUGIN_ERROR"
    [failed] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:plugins:route-failed"
    ]
    assert failed["message"] == (
        'Plugin "web" route GET /web/api/fail failed: RuntimeError: handler bug'
    )
    assert json.loads(body)["error"]["message"] == 'Plugin "web" failed to handle the request'
    assert "handler bug" in failed["traceback"]


@pytest_twisted.ensureDeferred
async def test_routes_wait_for_deferred_handlers():
    web = Web()
    registry = await registry_of(({"name": "web", "base": "/web"}, web))
    pending = ensureDeferred(registry.route(Request("GET", "/web/api/slow")))
    assert not pending.called
    web.slow.callback(b"late")
    response = await pending
    assert response.body == b"late"


async def streaming(registry: PluginRegistry, request: Request) -> Response:
    """Route C{request}, whose handler keeps writing after its first turn."""
    pending = ensureDeferred(registry.route(request))
    assert not pending.called
    registry.clock.advance(0)
    return await pending


@pytest_twisted.ensureDeferred
async def test_routes_stream_until_the_handler_finishes():
    web = Web()
    registry = await registry_of(({"name": "web", "base": "/web"}, web))
    response = await streaming(registry, Request("GET", "/web/api/stream"))
    assert response.headers.get("content-type") == "text/event-stream"
    chunks = response.body.__aiter__()
    assert await chunks.__anext__() == b"data: one\n\n"
    request, done = web.streams[0]
    following = ensureDeferred(chunks.__anext__())
    assert not following.called
    request.write(b"data: two\n\n")
    assert await following == b"data: two\n\n"
    done.callback(None)
    with pytest.raises(StopAsyncIteration):
        await chunks.__anext__()


@pytest_twisted.ensureDeferred
async def test_abandoning_a_stream_tells_the_handler():
    web = Web()
    registry = await registry_of(({"name": "web", "base": "/web"}, web))
    response = await streaming(registry, Request("GET", "/web/api/stream"))
    chunks = response.body.__aiter__()
    await chunks.__anext__()
    await chunks.aclose()
    errors: list = []
    web.finished[0].addErrback(errors.append)
    assert len(errors) == 1


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello " + b"/".join(request.postpath)


@implementer(IBuntimePlugin)
class Plain:
    routes = Hello()


@pytest_twisted.ensureDeferred
async def test_a_plain_twisted_web_resource_as_routes():
    registry = await registry_of(({"name": "plain", "base": "/plain"}, Plain()))
    response = await registry.route(Request("GET", "/plain/a/b"))
    assert response.body == b"hello a/b"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("plugin", "path"), [(Web, "/web/"), (Plain, "/plain/a/b")])
async def test_a_head_answer_tells_the_length_of_the_get_answer(plugin, path):
    """
    The connection sends a HEAD answer's length (its C{content-length}, else
    its body's) and no body (L{buntime.web.http1.writing}).
    """
    base = path.split("/")[1]
    registry = await registry_of(({"name": base, "base": "/" + base}, plugin()))
    head = await registry.route(Request("HEAD", path))
    got = await registry.route(Request("GET", path))
    assert head.status == got.status == 200
    assert int(head.headers.get("content-length") or len(head.body)) == len(got.body) > 0


# -- plugin apps, menus, descriptions, notifications -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_plugin_app_for():
    @implementer(IBuntimePlugin)
    class Empty:
        pass

    registry = await registry_of(
        ({"name": "ui", "base": "/ui", "entrypoint": "index.html"}, Empty()),
        ({"name": "api-only", "base": "/api-only"}, Empty()),
    )
    plugin, base, rest = registry.plugin_app_for("/ui/settings/x")
    assert (plugin.name, base, rest) == ("ui", "/ui", "/settings/x")
    assert registry.plugin_app_for("/ui")[2] == "/"
    assert registry.plugin_app_for("/uix") is None
    assert registry.plugin_app_for("/api-only/x") is None


@pytest_twisted.ensureDeferred
async def test_menus_and_describe_loaded():
    @implementer(IBuntimePlugin)
    class Empty:
        pass

    registry = await registry_of(
        (
            {"name": "a", "base": "/a", "menus": [{"title": "A", "path": "/a"}]},
            Empty(),
        ),
        ({"name": "b", "dependencies": ["a"], "optionalDependencies": ["z"]}, Empty()),
    )
    assert registry.menus() == [{"title": "A", "path": "/a"}]
    assert registry.describe_loaded() == [
        {
            "name": "a",
            "base": "/a",
            "dependencies": [],
            "optionalDependencies": [],
            "menus": [{"title": "A", "path": "/a"}],
        },
        {
            "name": "b",
            "base": None,
            "dependencies": ["a"],
            "optionalDependencies": ["z"],
            "menus": [],
        },
    ]
    assert registry.get("b").name == "b"
    assert registry.get("zz") is None


@pytest_twisted.ensureDeferred
async def test_worker_and_server_notifications(eliot_logger):
    seen: list = []

    @implementer(IBuntimePlugin)
    class Watcher:
        def on_worker_spawn(self, worker, app):
            seen.append(("spawn", worker, app))

        async def on_worker_terminate(self, worker, app):
            seen.append(("terminate", worker, app))

        def on_server_start(self, server):
            seen.append(("start", server))

    @implementer(IBuntimePlugin)
    class Broken:
        def on_worker_spawn(self, worker, app):
            raise RuntimeError("x")

    registry = await registry_of(({"name": "broken"}, Broken()), ({"name": "w"}, Watcher()))
    await registry.worker_spawned("w1", APP)
    await registry.worker_terminated("w1", APP)
    await registry.server_started("server")
    assert seen == [("spawn", "w1", APP), ("terminate", "w1", APP), ("start", "server")]


@pytest_twisted.ensureDeferred
async def test_an_empty_registry_does_nothing():
    registry = PluginRegistry()
    request = Request("GET", "/")
    assert await registry.on_request(request, None, None) is request
    response = Response.text("x")
    assert await registry.on_response(response, None) is response
    assert await registry.server_fetch(request) is None
    assert await registry.route(request) is None
    assert registry.plugin_app_for("/") is None
    assert registry.menus() == []
    assert registry.describe_loaded() == []


@pytest_twisted.ensureDeferred
async def test_hooks_lists_the_plugins_having_one_in_load_order() -> None:
    @implementer(IBuntimePlugin)
    class Quiet:
        pass

    first, second = Hooks("first"), Hooks("second")
    registry = await registry_of(
        ({"name": "first"}, first), ({"name": "q"}, Quiet()), ({"name": "second"}, second)
    )
    assert [(p.name, hook) for p, hook in registry.hooks("on_request")] == [
        ("first", first.on_request),
        ("second", second.on_request),
    ]
    assert registry.hooks("server_fetch") == ()
    assert registry.hooks("on_request") is registry.hooks("on_request")


@pytest_twisted.ensureDeferred
async def test_changed_public_routes_of_an_app_are_read_again() -> None:
    log: list = []
    registry = await registry_of(({"name": "guard"}, Hooks("guard", log=log)))
    request = Request("GET", "/todos/api/health")
    await registry.on_request(request, APP, "/api/health")
    assert log == []  # public
    changed = AppInfo(APP.name, APP.version, APP.dir, {"publicRoutes": {"GET": ["/other"]}})
    await registry.on_request(request, changed, "/api/health")
    assert [entry[:2] for entry in log] == [("guard", "request")]

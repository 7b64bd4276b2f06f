"""
The front door (SPEC §4 and §6), through the real connection layer
(L{buntime.web.http1.HTTP1Factory}) and an in-memory client
(C{tests/http1_client.py}): health probes, the well-known document, request
ids, fixed answers, the JSON error format, the API prefix, streaming, plugin
hooks, and one eliot action per request.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import pytest_twisted
from eliot.testing import LoggedAction
from http1_client import Answer, Client, Lingering, Transport, connect, get, post
from klein import Klein
from test_plugins_support import make_loader
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from buntime import __version__
from buntime.http import AppInfo, Request, Response, Takeover, json_answer, json_error
from buntime.interfaces import IBuntimePlugin
from buntime.logs.requests import REQUEST_ACTION
from buntime.plugins.discovery import PluginSource
from buntime.plugins.outcomes import RequestOutcomes
from buntime.stream import PushedStream
from buntime.web.api.core import CoreAPI
from buntime.web.frontdoor import Declined, FrontDoor
from buntime.web.http1 import HTTP1Factory, Limits
from buntime.web.http1.head import request_id_for
from buntime.web.plugins import PluginSteps
from buntime.web.state import RuntimeState
from buntime.web.websocket import CLOSE_GRACE, WebSockets


class Door:
    """A FrontDoor with its state and clock, served by the connection layer in memory."""

    def __init__(
        self,
        api_prefix: str = "",
        steps: list | None = None,
        plugins: Any = None,
        identify: Any = None,
        apis: Any = (),
        forwarded_allow: frozenset[str] | None = None,
        websockets: bool = False,
    ) -> None:
        self.clock = Clock()
        self.state = RuntimeState()
        self.websockets = WebSockets(clock=self.clock) if websockets else None
        self.outcomes = RequestOutcomes()
        api = CoreAPI(state=self.state, api_base=f"{api_prefix}/api")
        self.door = FrontDoor(
            clock=self.clock,
            state=self.state,
            api=api,
            api_prefix=api_prefix,
            steps=steps,
            apis=apis,
            plugins=None if plugins is None else lambda: plugins,
            identify=identify,
            forwarded_allow=forwarded_allow,
            websockets=self.websockets,
            outcomes=self.outcomes,
        )
        self.factory = HTTP1Factory(self.door, self.clock, Limits(), self.state)

    def start(
        self,
        method: str,
        path: str,
        headers: dict[str, str | bytes] | None = None,
        body: bytes = b"",
    ) -> Client:
        """Send a request on a new connection; its answer may still be on its way."""
        client = connect(factory=self.factory)
        lines = [
            name.encode("ascii") + b": " + (value if isinstance(value, bytes) else value.encode())
            for name, value in (headers or {}).items()
        ]
        target = path.encode("ascii")
        assert method == "POST" or not body, "a body goes with a POST"
        client.send(
            post(target, body, *lines) if body else get(target, *lines, method=method.encode())
        )
        return client

    def fetch(self, method: str, path: str, **request: Any) -> Answer:
        """L{start} (C{headers}, C{body}), and its answer, which must arrive whole now."""
        [answer] = self.start(method, path, **request).answers(method)
        assert answer.complete
        return answer

    def get(self, path: str, headers: dict[str, str | bytes] | None = None) -> Answer:
        return self.fetch("GET", path, headers=headers)


def request_id(answer: Answer) -> str:
    return answer.headers["x-request-id"]


def is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


@pytest.fixture
def door() -> Door:
    return Door()


# -- health and well-known -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"), [("/api/health", "healthy"), ("/api/health/live", "live")]
)
def test_health_and_live(door, path, status):
    response = door.get(path)
    assert response.status == 200
    assert response.headers.get("content-type") == "application/json"
    assert json.loads(response.body) == {"ok": True, "status": status, "version": __version__}
    assert is_uuid4(request_id(response))


def test_ready_is_503_until_started_and_again_while_stopping(door):
    response = door.get("/api/health/ready")
    assert response.status == 503
    assert json.loads(response.body) == {"ok": False, "status": "starting", "version": __version__}
    assert is_uuid4(request_id(response))

    door.state.started = True
    response = door.get("/api/health/ready")
    assert response.status == 200
    assert json.loads(response.body) == {"ok": True, "status": "ready", "version": __version__}

    door.state.stopping = True
    response = door.get("/api/health/ready", headers={"x-request-id": "probe-1"})
    assert response.status == 503
    assert json.loads(response.body)["status"] == "stopping"
    assert request_id(response) == "probe-1"
    # liveness does not depend on readiness
    assert door.get("/api/health/live").status == 200


@pytest.mark.parametrize("path", ["/api/health", "/api/health/live", "/api/openapi.json"])
def test_head_says_the_length_get_would_send(door, path):
    got = door.get(path)
    response = door.fetch("HEAD", path)
    assert (response.status, response.body) == (200, b"")
    assert int(response.headers["content-length"]) == len(got.body) > 0


def test_well_known(door):
    response = door.get("/.well-known/buntime")
    assert response.status == 200
    assert json.loads(response.body) == {"api": "/api", "version": __version__}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/health"),
        ("DELETE", "/api/health/ready"),
        ("OPTIONS", "/api/openapi.json"),
        ("POST", "/.well-known/buntime"),
        ("DELETE", "/.well-known/buntime"),
    ],
)
def test_a_wrong_method_is_405_naming_the_allowed_ones(door, method, path):
    """RFC 9110: a 405 says in C{Allow} what the path takes."""
    door.door._api_token = TOKEN
    response = door.fetch(method, path, headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert json.loads(response.body) == {
        "error": {"code": "METHOD_NOT_ALLOWED", "message": f"{method} is not allowed here"}
    }


# -- fixed answers and errors -------------------------------------------------------------


def test_root_answers_the_version(door):
    response = door.get("/")
    assert response.status == 200
    assert response.body == f"Buntime v{__version__}".encode()
    assert response.headers.get("content-type") == "text/plain; charset=utf-8"
    response = door.fetch("HEAD", "/")
    assert (response.status, response.body) == (200, b"")


@pytest.mark.parametrize("path", ["/api//health", "/api/health//", "/api//apps"])
def test_an_api_path_with_an_empty_segment_is_a_json_404_not_a_redirect(door, path):
    """werkzeug would merge the slashes with an HTML 308: the API answers as documented."""
    response = door.get(path)
    assert response.status == 404
    assert response.headers.get("content-type") == "application/json"
    assert json.loads(response.body)["error"]["code"] == "NOT_FOUND"


def test_favicon_is_204(door):
    response = door.get("/favicon.ico")
    assert (response.status, response.body) == (204, b"")
    assert is_uuid4(request_id(response))


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nothing/here"), ("POST", "/nothing"), ("DELETE", "/x/y")]
)
def test_unknown_paths_are_404_json_with_x_not_found(door, method, path):
    response = door.fetch(method, path, headers={"x-request-id": "lost-1"})
    assert response.status == 404
    assert response.headers.get("x-not-found") == "true"
    assert response.headers.get("content-type") == "application/json"
    assert json.loads(response.body) == {
        "error": {"code": "NOT_FOUND", "message": f"Nothing at {path}"}
    }
    assert request_id(response) == "lost-1"


def test_unknown_api_route_is_404_json(door):
    response = door.get("/api/nope")
    assert response.status == 404
    assert response.headers.get("x-not-found") == "true"
    assert set(json.loads(response.body)["error"]) == {"code", "message"}
    assert is_uuid4(request_id(response))


def test_a_crashing_step_is_a_500_json_error_with_the_request_id(eliot_logger):
    async def crash(request: Request, fields: dict) -> Response | None:
        raise RuntimeError("kaboom")

    door = Door(steps=[crash])
    response = door.get("/anything", headers={"x-request-id": "crash-1"})
    assert response.status == 500
    assert json.loads(response.body) == {
        "error": {"code": "INTERNAL_ERROR", "message": "Internal error"}
    }
    assert request_id(response) == "crash-1"
    assert b"kaboom" not in response.body
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:internal-error"
    ]
    assert logged["level"] == "error"
    assert "kaboom" in logged["traceback"]
    assert door.state.in_flight == 0


# -- request ids ------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "req_1.2:3@host/x+y=", "a" * 200])
def test_a_sane_request_id_is_kept(door, given):
    response = door.get("/nope", headers={"x-request-id": given})
    assert request_id(response) == given


@pytest.mark.parametrize("given", ["has space", "a" * 201, "semi;colon", 'quote"', "é"])
def test_a_bad_request_id_is_replaced(door, given):
    response = door.get("/nope", headers={"x-request-id": given.encode("utf-8")})
    assert is_uuid4(request_id(response))


def test_a_made_request_id_names_the_log_task_and_a_given_one_does_not(door, eliot_logger):
    made = door.get("/nope")
    for _ in range(2):
        door.get("/nope", headers={"x-request-id": "same"})
    lines = [m for m in eliot_logger.messages if m.get("action_status") == "succeeded"]
    assert lines[0]["request_id"] == lines[0]["task_uuid"] == request_id(made)
    assert lines[1]["request_id"] == lines[2]["request_id"] == "same"
    assert is_uuid4(lines[1]["task_uuid"]) and lines[1]["task_uuid"] != lines[2]["task_uuid"]


def test_request_id_for():
    assert request_id_for(b"ok-1") == "ok-1"
    assert is_uuid4(request_id_for(None))
    assert is_uuid4(request_id_for(b""))
    assert request_id_for(None) != request_id_for(None)


def test_a_step_sees_the_request_id_and_cannot_override_it():
    seen: list[Request] = []

    async def step(request: Request, fields: dict) -> Response | None:
        seen.append(request)
        return Response.text("mine", headers={"x-request-id": "forged", "connection": "close"})

    door = Door(steps=[step])
    response = door.fetch(
        "POST", "/app/x?q=1", headers={"x-request-id": "given-1"}, body=b"payload"
    )
    assert response.body == b"mine"
    assert response.headers.get("x-request-id") == "given-1"
    [request] = seen
    assert (request.method, request.path, request.query) == ("POST", "/app/x", "q=1")
    assert request.request_id == "given-1"
    assert request.headers.get_all("x-request-id") == ["given-1"]
    assert request.body == b"payload"


# -- steps --------------------------------------------------------------------------------


def test_steps_run_in_order_and_none_falls_through():
    calls: list[str] = []

    def make(name: str, answer: Response | None):
        async def step(request: Request, fields: dict) -> Response | None:
            calls.append(name)
            return answer

        return step

    door = Door(steps=[make("a", None), make("b", Response.text("b", 201)), make("c", None)])
    response = door.get("/x")
    assert (response.status, response.body, calls) == (201, b"b", ["a", "b"])

    calls.clear()
    door = Door(steps=[make("a", None)])
    assert door.get("/").body == f"Buntime v{__version__}".encode()
    assert door.get("/missing").status == 404
    assert calls == ["a", "a"]


def test_in_flight_is_counted_until_the_response_is_done():
    gate: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        await gate
        return Response.text("late")

    door = Door(steps=[slow])
    client = door.start("GET", "/slow")
    assert client.answers() == []
    assert door.state.in_flight == 1
    drained = door.state.drained()
    assert not drained.called
    gate.callback(None)
    [response] = client.answers()
    assert response.complete
    assert response.body == b"late"
    assert door.state.in_flight == 0
    assert drained.called


# -- a plugin route's 404 ----------------------------------------------------------------


@implementer(IBuntimePlugin)
class Items:
    """Plugin routes that know item 1 and answer their own 404 for the others."""

    routes = Klein()

    def __init__(self) -> None:
        self.finished: list[Deferred[None]] = []

    @routes.route("/api/items/<item>", methods=["GET"])
    def item(self, request: Any, item: str) -> bytes:
        if item != "1":
            request.setHeader(b"x-items", b"404")
            return json_error(request, 404, "ITEM_NOT_FOUND", f"No item {item}")
        return json_answer(request, {"id": item})

    @routes.route("/api/gone", methods=["GET"])
    def gone(self, request: Any) -> Deferred[None]:
        """A 404 still being written: its body is a stream."""
        request.setResponseCode(404)
        request.write(b"not here")
        self.finished.append(request.notifyFinish())
        return Deferred()


async def plugin_steps(clock: Clock, *bases: str) -> tuple[PluginSteps, list[Items]]:
    """The plugin-routes step over a registry of an L{Items} plugin at each of C{bases}."""
    providers = [Items() for _ in bases]
    sources = [
        PluginSource(
            {"name": f"items{n}", "base": base}, f"/plugins/items{n}", "package", provider=p
        )
        for n, (base, p) in enumerate(zip(bases, providers, strict=True))
    ]
    registry, _ = await make_loader(clock).load(sources)
    return PluginSteps(registry=lambda: registry, apps=None), providers  # type: ignore[arg-type]


def answered(door: Door, path: str) -> Answer:
    client = door.start("GET", path)
    door.clock.advance(0)  # the plugin routes answer at the end of the reactor turn
    [answer] = client.answers()
    assert answer.complete
    return answer


@pytest_twisted.ensureDeferred
async def test_a_plugin_route_s_404_answers_when_no_later_step_takes_the_request():
    calls: list[str] = []

    async def later(request: Request, fields: dict) -> Response | None:
        calls.append(request.path)
        return None

    door = Door()
    routes, _ = await plugin_steps(door.clock, "/items")
    door.door.steps = [routes, later]
    missing = answered(door, "/items/api/items/9")
    assert missing.status == 404
    assert json.loads(missing.body)["error"] == {"code": "ITEM_NOT_FOUND", "message": "No item 9"}
    assert missing.headers.get("x-items") == "404"
    assert missing.headers.get("x-not-found") is None
    assert calls == ["/items/api/items/9"]  # the request went on all the same
    assert answered(door, "/items/api/items/1").status == 200
    assert json.loads(answered(door, "/nothing").body)["error"]["code"] == "NOT_FOUND"


@pytest_twisted.ensureDeferred
async def test_a_later_step_s_answer_wins_and_the_plugin_route_s_404_is_closed():
    async def later(request: Request, fields: dict) -> Response | None:
        return Response.text("the app's")

    door = Door()
    routes, [items] = await plugin_steps(door.clock, "/items")
    door.door.steps = [routes, later]
    assert answered(door, "/items/api/items/9").body == b"the app's"
    taken = answered(door, "/items/api/gone")
    assert (taken.status, taken.body) == (200, b"the app's")
    [finished] = items.finished
    assert finished.called  # the route was told its 404 is read no more
    finished.addErrback(lambda failure: None)


def declining(closed: list[str], name: str, stream: bool = True) -> Any:
    """A step that declines every request with its own 404 (a stream tells C{closed})."""

    async def step(request: Request, fields: dict) -> Declined:
        body = PushedStream(lambda: closed.append(name)) if stream else name.encode()
        return Declined(Response(404, {"x-declined": name}, body))

    return step


def test_the_walk_s_first_declined_answer_stands_only_when_nothing_else_answers():
    async def nothing(request: Request, fields: dict) -> None:
        return None

    async def answering(request: Request, fields: dict) -> Response:
        return Response.text("taken")

    async def failing(request: Request, fields: dict) -> Response:
        raise RuntimeError("step bug")

    async def always(request: Request, fields: dict) -> Response:
        return Response.text("always")

    always.may_decline = False  # type: ignore[attr-defined]
    closed: list[str] = []
    first = Door(steps=[declining(closed, "a", stream=False), declining(closed, "b"), nothing])
    answer = first.get("/x")
    assert (answer.status, answer.body, answer.headers["x-declined"]) == (404, b"a", "a")
    assert closed == ["b"]  # a later declined answer is closed unread
    for later, status in ((answering, 200), (always, 200), (failing, 500)):
        closed.clear()
        answer = Door(steps=[declining(closed, "a"), later]).get("/x")
        assert (answer.status, closed) == (status, ["a"]), later
    closed.clear()
    assert Door(steps=[declining(closed, "a")]).get("/").status == 200  # a built-in answer
    assert closed == ["a"]


def test_on_response_hooks_see_the_declined_answer_that_is_sent():
    plugins = Plugins(on_response=lambda response: response.with_header("x-seen", "yes"))
    door = Door(steps=[declining([], "a", stream=False)], plugins=plugins)
    answer = door.get("/x")
    assert (answer.status, answer.headers["x-seen"], answer.body) == (404, "yes", b"a")


# -- streaming ----------------------------------------------------------------------------


def test_a_streaming_body_is_delivered_in_full():
    chunks = [bytes([65 + n % 26]) * (40_000 + n) for n in range(60)]

    async def stream():
        for chunk in chunks:
            yield chunk
            yield b""

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, {"content-type": "application/octet-stream"}, stream())

    door = Door(steps=[step])
    response = door.get("/big")
    assert response.status == 200
    assert response.body == b"".join(chunks)
    assert door.state.in_flight == 0


def test_an_empty_stream_is_an_empty_body():
    async def stream():
        return
        yield b""  # pragma: no cover

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, body=stream())

    door = Door(steps=[step])
    response = door.get("/empty")
    assert (response.status, response.body) == (200, b"")


def test_a_failing_stream_is_logged_and_the_connection_closed(eliot_logger):
    async def stream():
        yield b"partial"
        raise ValueError("stream broke")

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, body=stream())

    door = Door(steps=[step])
    client = door.start("GET", "/broken")
    [response] = client.answers()
    assert (response.status, response.body) == (200, b"partial")
    assert not response.complete  # not a clean body
    assert not client.transport.aborted  # closed in order: what was sent is read
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:stream-failed"
    ]
    assert "stream broke" in logged["error"]
    assert door.state.in_flight == 0


# -- API prefix ---------------------------------------------------------------------------


def test_the_api_prefix_moves_the_api():
    door = Door(api_prefix="/_")
    response = door.get("/_/api/health")
    assert response.status == 200
    assert json.loads(response.body)["status"] == "healthy"
    response = door.get("/_/api/health/ready")
    assert response.status == 503

    response = door.get("/api/health")
    assert response.status == 404
    assert response.headers.get("x-not-found") == "true"
    assert json.loads(response.body)["error"]["code"] == "NOT_FOUND"

    response = door.get("/_/api/nope")
    assert response.status == 404
    assert response.headers.get("x-not-found") == "true"

    response = door.get("/.well-known/buntime")
    assert json.loads(response.body) == {"api": "/_/api", "version": __version__}


def test_a_multi_segment_prefix():
    door = Door(api_prefix="/internal/rt")
    assert door.get("/internal/rt/api/health/live").status == 200
    assert door.get("/internal/api/health").status == 404


def test_an_api_404_names_the_path_with_its_prefix():
    """The core API's 404 names the path the client sent, prefix and all."""
    for prefix in ("", "/_", "/internal/rt"):
        door = Door(api_prefix=prefix)
        for path in (f"{prefix}/api/nope", f"{prefix}/api/health/nope"):
            response = door.get(path + "?q=1")
            assert response.status == 404
            assert json.loads(response.body)["error"]["message"] == f"No API route {path}"


# -- logging ------------------------------------------------------------------------------

SECRET_HEADERS = {
    "Authorization": "Bearer sup3rsecret",
    "Cookie": "session=c00kievalue",
    "Proxy-Authorization": "Basic pr0xy",
}


def test_one_request_action_per_request(eliot_logger):
    door = Door()
    door.clock.advance(1000)
    door.get("/api/health", headers={"x-request-id": "log-1", **SECRET_HEADERS})
    door.get("/nope", headers={"x-request-id": "log-2", **SECRET_HEADERS})

    actions = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    assert len(actions) == 2
    for action, (request_id, path, status) in zip(
        actions, [("log-1", "/api/health", 200), ("log-2", "/nope", 404)], strict=True
    ):
        assert action.succeeded
        start, end = action.start_message, action.end_message
        assert (start["request_id"], start["method"], start["path"]) == (request_id, "GET", path)
        assert (end["request_id"], end["method"], end["path"]) == (request_id, "GET", path)
        assert end["status"] == status
        assert end["duration_ms"] == 0  # the Clock did not move
        assert end["level"] == "info"
        assert end["message"] == f"GET {path} {status} 0.0ms"

    logged = json.dumps(eliot_logger.messages, default=repr)
    for secret in SECRET_HEADERS.values():
        assert secret not in logged


def test_request_messages_are_what_their_declared_type_says(eliot_logger):
    """The hot path logs requests without eliot's serializers: they must still fit HTTP_REQUEST."""
    from buntime.logs.types import HTTP_REQUEST

    door = Door()
    door.get("/api/health")
    door.get("/nope")
    actions = LoggedAction.of_type(eliot_logger.messages, HTTP_REQUEST.action_type)
    assert len(actions) == 2
    serializers = HTTP_REQUEST._serializers
    for action in actions:
        for message, serializer in (
            (action.start_message, serializers.start),
            (action.end_message, serializers.success),
        ):
            for name, declared in serializer.fields.items():
                assert name in message, name
                declared.validate(message[name])


def test_request_duration_follows_the_clock(eliot_logger):
    gate: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        await gate
        fields["app"] = "todos"
        return Response(500)

    door = Door(steps=[slow])
    client = door.start("GET", "/todos/")
    door.clock.advance(0.25)
    gate.callback(None)
    [response] = client.answers()
    assert response.status == 500
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    end = action.end_message
    assert end["duration_ms"] == 250
    assert end["level"] == "error"
    assert end["app"] == "todos"


def test_every_finished_request_is_counted_for_plugins():
    """C{ctx.requests}: by app (or none), method and status class, with the clock's duration."""
    gate: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        if request.path != "/todos/":
            return None
        await gate
        fields["app"] = "todos@1.0.0"
        return Response(201)

    door = Door(steps=[slow])
    client = door.start("GET", "/todos/")
    door.clock.advance(0.03)
    gate.callback(None)
    assert client.answers()[0].status == 201
    door.get("/missing")
    door.fetch("PROPFIND", "/missing")
    rows = {(r.app, r.method, r.status_class): r for r in door.outcomes.rows()}
    assert set(rows) == {("todos@1.0.0", "GET", 2), ("unknown", "GET", 4), ("unknown", "OTHER", 4)}
    todos = rows["todos@1.0.0", "GET", 2]
    assert (todos.count, todos.sum_ms) == (1, 30.0)
    assert todos.buckets[:4] == (0, 0, 0, 1)  # 5, 10, 25 ms: no; 50 ms: yes
    assert todos.buckets[-1] == 1


def test_client_disconnect_cancels_the_work(eliot_logger) -> None:
    """A client that goes away cancels what answers it (the pool drops or cancels it)."""
    cancelled: list[bool] = []

    async def step(request: Request, fields: dict) -> Response | None:
        waiting: Deferred = Deferred(lambda d: cancelled.append(True))
        return await waiting

    door = Door(steps=[step])
    client = door.start("GET", "/app/x")
    assert door.state.in_flight == 1 and cancelled == []
    client.transport.loseConnection()
    assert cancelled == [True]
    assert door.state.in_flight == 0
    assert client.answers() == []
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    assert action.end_message["aborted"] is True


def test_a_client_leaving_a_quiet_stream_lets_go_of_it_at_once() -> None:
    """A quiet stream (events, a slow worker) is abandoned now, not at its next chunk."""
    abandoned: list[bool] = []
    stream = PushedStream(lambda: abandoned.append(True))
    stream.feed(b"data: first\n\n")

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, {"content-type": "text/event-stream"}, stream)

    door = Door(steps=[step])
    client = door.start("GET", "/events")
    assert b"data: first" in client.received()
    assert abandoned == [] and door.state.in_flight == 1
    client.transport.loseConnection()
    assert abandoned == [True] and stream.closed
    assert door.state.in_flight == 0


# -- plugin hooks -------------------------------------------------------------------------

TODOS = AppInfo("todos", "1.0.0", "/apps/todos@1.0.0")


def identify(path: str) -> tuple[AppInfo, str] | None:
    """C{/todos/...} is the todos app's; nothing else is an app's."""
    if path.startswith("/todos/"):
        return TODOS, path[len("/todos") :]
    return None


class Plugins:
    """
    A stand-in plugin registry: C{on_request} and C{on_response} are the
    test's hooks (C{None}: no plugin has one); C{seen} records each call.
    """

    def __init__(self, on_request: Any = None, on_response: Any = None) -> None:
        self._hooks = {"on_request": on_request, "on_response": on_response}
        self.seen: list[tuple[Any, ...]] = []

    def hooks(self, name: str) -> tuple[tuple[Any, Any], ...]:
        hook = self._hooks.get(name)
        return () if hook is None else ((name, hook),)

    def requests_hooked(self) -> bool:
        return bool(self.hooks("on_request") or self.hooks("on_response"))

    def responses_hooked(self) -> bool:
        return bool(self.hooks("on_response"))

    def request_hooks(self, request: Request, app: Any, app_path: Any) -> Any:
        self.seen.append(("on_request", request.path, app, app_path))
        hook = self._hooks["on_request"]
        return request if hook is None else hook(request)

    def response_hooks(self, response: Response, app: Any, request: Any = None) -> Any:
        self.seen.append(("on_response", response.status, app))
        self.answered = request
        hook = self._hooks["on_response"]
        return response if hook is None else hook(response)

    def websocket_for(self, path: str) -> None:
        return None


def app_step(seen: list[Request]) -> Any:
    """A worker-app step: it answers C{/todos/...} with the C{x-user} it sees."""

    async def step(request: Request, fields: dict) -> Response | None:
        if not request.path.startswith("/todos/"):
            return None
        seen.append(request)
        fields["app"] = "todos@1.0.0"
        return Response.text(f"user={request.headers.get('x-user')}")

    return step


def test_on_request_can_answer_a_worker_app_request_itself(eliot_logger):
    plugins = Plugins(
        on_request=lambda request: Response.error(401, "UNAUTHORIZED", "Who are you?"),
        on_response=lambda response: response.with_header("x-seen", "yes"),
    )
    seen: list[Request] = []
    door = Door(steps=[app_step(seen)], plugins=plugins, identify=identify)
    response = door.get("/todos/items", {"x-request-id": "hooked-1"})
    assert response.status == 401
    assert json.loads(response.body) == {
        "error": {"code": "UNAUTHORIZED", "message": "Who are you?"}
    }
    assert response.headers.get("x-request-id") == "hooked-1"
    assert "x-seen" not in response.headers  # the hook's own answer skips on_response
    assert seen == []
    assert plugins.seen == [("on_request", "/todos/items", TODOS, "/items")]
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    assert action.end_message["status"] == 401
    assert door.state.in_flight == 0


def test_on_request_changes_what_the_app_sees_and_on_response_what_the_client_gets():
    plugins = Plugins(
        on_request=lambda request: request.with_header("x-user", "ada"),
        on_response=lambda response: response.with_header("x-seen", "yes"),
    )
    seen: list[Request] = []
    door = Door(steps=[app_step(seen)], plugins=plugins, identify=identify)
    response = door.get("/todos/items?done=1", {"x-request-id": "hooked-2"})
    assert (response.status, response.body) == (200, b"user=ada")
    assert response.headers.get("x-seen") == "yes"
    assert response.headers.get("x-request-id") == "hooked-2"
    [request] = seen
    assert (request.path, request.query, request.request_id) == (
        "/todos/items",
        "done=1",
        "hooked-2",
    )
    assert plugins.seen == [
        ("on_request", "/todos/items", TODOS, "/items"),
        ("on_response", 200, TODOS),
    ]
    # on_response hooks that take it are given the request the hooks left
    assert plugins.answered is request


def test_hooks_run_on_answers_no_app_gives():
    plugins = Plugins(on_response=lambda response: response.with_header("x-seen", "yes"))
    door = Door(steps=[app_step([])], plugins=plugins, identify=identify)
    response = door.get("/nothing")
    assert response.status == 404
    assert response.headers.get("x-seen") == "yes"
    assert plugins.seen == [("on_request", "/nothing", None, None), ("on_response", 404, None)]


def test_on_response_is_given_the_app_a_rewritten_path_went_to():
    """A hook that sends a request elsewhere (as the virtual hosts plugin does) moves its app."""
    plugins = Plugins(
        on_request=lambda request: request.with_path("/todos" + request.path),
        on_response=lambda response: response,
    )
    door = Door(steps=[app_step([])], plugins=plugins, identify=identify)
    assert door.get("/items").body == b"user=None"
    assert plugins.seen == [("on_request", "/items", None, None), ("on_response", 200, TODOS)]
    plugins = Plugins(
        on_request=lambda request: request.with_path("/elsewhere"),
        on_response=lambda response: response,
    )
    door = Door(steps=[app_step([])], plugins=plugins, identify=identify)
    assert door.get("/todos/items").status == 404
    assert plugins.seen[1] == ("on_response", 404, None)


@implementer(IBuntimePlugin)
class Stalled:
    """A plugin whose C{on_request} hook never answers (a lost Deferred, a hung lookup)."""

    def on_request(self, request: Request, app: Any) -> Deferred[None]:
        return Deferred()


@pytest.mark.xfail(
    strict=True,
    reason="design: on_request (and server_fetch) hooks are not bounded; a hook that never "
    "answers holds its request open forever (a worker app's request answers 504 after its "
    "timeout, 30 s by default)",
)
@pytest_twisted.ensureDeferred
async def test_an_on_request_hook_that_never_answers_does_not_hold_the_request_forever():
    source = PluginSource({"name": "stalled"}, "/plugins/stalled", "package", provider=Stalled())
    registry, _ = await make_loader().load([source])
    door = Door(steps=[app_step([])], plugins=registry, identify=identify)
    client = door.start("GET", "/todos/items")
    for _ in range(10):
        door.clock.advance(60)
    assert door.state.in_flight == 0
    [answer] = client.answers()
    assert answer.status >= 500


class Probe:
    """A Klein app mounted under the core API: it answers with the C{x-user} it sees."""

    app = Klein()

    @app.route("/api/probe")
    def probe(self, request: Any) -> bytes:
        return (request.getHeader(b"x-user") or b"nobody") + b"|" + request.uri


def test_the_api_sees_headers_as_on_request_left_them_and_skips_on_response():
    plugins = Plugins(
        on_request=lambda request: request.with_header("x-user", "ada"),
        on_response=lambda response: response.with_header("x-seen", "yes"),
    )
    door = Door(api_prefix="/_", plugins=plugins, identify=identify, apis=[("/api/probe", Probe())])
    response = door.get("/_/api/probe?q=1")
    assert (response.status, response.body) == (200, b"ada|/api/probe?q=1")
    assert "x-seen" not in response.headers
    response = door.get("/_/api/health")
    assert (response.status, json.loads(response.body)["status"]) == (200, "healthy")
    assert "x-seen" not in response.headers
    assert plugins.seen == [
        ("on_request", "/_/api/probe", None, None),
        ("on_request", "/_/api/health", None, None),
    ]


def test_on_request_can_refuse_a_core_api_request():
    plugins = Plugins(on_request=lambda request: Response.error(403, "FORBIDDEN", "Not you"))
    door = Door(plugins=plugins)
    response = door.get("/api/health")
    assert response.status == 403
    assert json.loads(response.body)["error"]["message"] == "Not you"


def test_a_hook_rewriting_paths_does_not_break_the_core_api(eliot_logger):
    plugins = Plugins(on_request=lambda request: request.with_path("/site" + request.path))
    door = Door(plugins=plugins)
    response = door.get("/api/health")
    assert (response.status, json.loads(response.body)["status"]) == (200, "healthy")


# -- forwarded headers ----------------------------------------------------------------------------

FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "203.0.113.9",
    "x-forwarded-host": "example.com",
    "Forwarded": "for=203.0.113.9;proto=https",
    "X-Other": "kept",
}


@pytest.mark.parametrize(
    ("allowed", "passed_on"),
    [
        (frozenset({"127.0.0.1", "::1"}), False),  # the default: this peer (192.168.1.1) is not one
        (frozenset({"192.168.1.1"}), True),
        (None, True),  # RUNTIME_FORWARDED_ALLOW_IPS=*
    ],
)
def test_forwarded_headers_reach_apps_only_from_trusted_peers(allowed, passed_on):
    seen: list[Request] = []

    async def step(request: Request, fields: dict) -> Response:
        seen.append(request)
        return Response.text("ok")

    Door(steps=[step], forwarded_allow=allowed).get("/x", FORWARDED)
    [request] = seen
    forwarded = [request.headers.get(name) for name in ("x-forwarded-proto", "forwarded")]
    assert forwarded == (["https", "for=203.0.113.9;proto=https"] if passed_on else [None, None])
    assert (request.headers.get("x-forwarded-for") is not None) is passed_on
    assert (request.headers.get("x-forwarded-host") is not None) is passed_on
    assert request.headers.get("x-other") == "kept"


@pytest.mark.parametrize(
    ("allowed", "passed_on"),
    [
        (frozenset({"127.0.0.1", "::1"}), False),  # the default: this peer (192.168.1.1) is not one
        (frozenset({"192.168.1.1"}), True),
        (None, True),  # RUNTIME_FORWARDED_ALLOW_IPS=*
    ],
)
def test_x_buntime_internal_reaches_plugins_and_apps_only_from_trusted_peers(allowed, passed_on):
    # SPEC §4 "Trust": from other peers it is removed before anything sees the request,
    # so an app or a plugin hook believing it cannot be fooled by a remote client
    seen: list[Request] = []

    async def step(request: Request, fields: dict) -> Response:
        seen.append(request)
        return Response.text("ok")

    Door(steps=[step], forwarded_allow=allowed).get("/x", {"x-buntime-internal": "true"})
    [request] = seen
    assert (request.headers.get("x-buntime-internal") == "true") is passed_on


def test_a_takeover_gets_the_connection_only_for_an_upgrade_request():
    """A plugin's 101 with a L{Takeover} body: the connection is handed over, as it is."""
    from twisted.internet.protocol import Protocol

    from buntime.http import Takeover

    class Raw(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw")

    async def step(request: Request, fields: dict) -> Response:
        return Response(101, body=Takeover(Raw))  # type: ignore[arg-type]

    door = Door(steps=[step])
    plain = door.fetch("GET", "/x")
    assert plain.status == 502
    client = door.start("GET", "/x", headers={"connection": "upgrade", "upgrade": "websocket"})
    assert client.received().endswith(b"\r\n\r\nraw")
    assert client.received().startswith(b"HTTP/1.1 101 ")


class Tunnel(Protocol):
    """A plugin's protocol for a taken-over connection: its 101, then an echo."""

    def __init__(self) -> None:
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


UPGRADE = {"connection": "upgrade", "upgrade": "websocket"}


def tunnelling(tunnels: list[Tunnel]) -> Any:
    """A step that answers every request with a L{Takeover} to a new L{Tunnel}."""

    def build() -> Tunnel:
        tunnels.append(Tunnel())
        return tunnels[-1]

    async def step(request: Request, fields: dict) -> Response:
        fields["app"] = "plugin:proxy"
        return Response(101, body=Takeover(build))  # type: ignore[arg-type]

    return step


def ended(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The end messages of the request actions logged so far."""
    return [
        message
        for message in messages
        if message.get("action_type") == REQUEST_ACTION
        and message.get("action_status") != "started"
    ]


@pytest.mark.parametrize("closing", ["client", "tunnel"])
def test_a_takeover_is_in_flight_until_its_connection_closes(eliot_logger, closing):
    """
    A tunnel's request ends when its connection does, whichever side closes:
    logged then with its 101 and C{upgrade: tunnel}, and no longer in flight.
    """
    tunnels: list[Tunnel] = []
    door = Door(steps=[tunnelling(tunnels)])
    client = door.start("GET", "/live", headers=UPGRADE)
    client.send(b"ping")
    assert client.received() == b"HTTP/1.1 101 Switching Protocols\r\n\r\nping"
    door.clock.advance(2)
    assert door.state.in_flight == 1 and ended(eliot_logger.messages) == []
    [tunnel] = tunnels
    (client.transport if closing == "client" else tunnel.transport).loseConnection()
    assert len(tunnel.lost) == 1
    assert door.state.in_flight == 0
    [end] = ended(eliot_logger.messages)
    assert (end["status"], end["upgrade"], end["app"]) == (101, "tunnel", "plugin:proxy")
    assert (end["aborted"], end["duration_ms"]) == (False, 2000)
    assert [(r.app, r.status_class) for r in door.outcomes.rows()] == [("plugin:proxy", 1)]


class Stuck(Lingering):
    """A transport whose close never completes (the peer reads nothing): only an abort drops it."""

    def abortConnection(self) -> None:
        self.aborted = True
        Transport.loseConnection(self)


def test_stopping_closes_open_tunnels_and_refuses_new_ones(eliot_logger):
    """
    When the drain begins, open tunnels are closed (their requests end) and
    new ones answer 503; one whose close does not complete is dropped after
    the grace.
    """
    door = Door(steps=[tunnelling([])], websockets=True)
    assert door.websockets is not None
    closing = door.start("GET", "/live", headers=UPGRADE)
    lingering = connect(factory=door.factory, transport=Stuck())
    lingering.send(get(b"/live", b"connection: upgrade", b"upgrade: websocket"))
    assert lingering.received().startswith(b"HTTP/1.1 101 ")
    assert door.state.in_flight == 2

    closed = door.websockets.close_tunnels()
    assert closing.closed and door.state.in_flight == 1 and not closed.called
    refused = door.fetch("GET", "/live", headers=UPGRADE)
    assert refused.status == 503
    door.clock.advance(CLOSE_GRACE)
    assert lingering.transport.aborted and door.state.in_flight == 0 and closed.called
    assert [end["status"] for end in ended(eliot_logger.messages)] == [101, 503, 101]


# -- who may change apps and plugins ------------------------------------------------------

TOKEN = "a-long-enough-secret-token"


def change(remote: str, **headers: str) -> Request:
    return Request(
        "POST",
        "/api/apps/upload",
        [("host", "rt.localhost:8000"), *headers.items()],
        remote_addr=remote,
    )


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_this_machine_may_change_things_with_the_csrf_proof(remote):
    from buntime.trust import api_refusal

    assert api_refusal(change(remote, origin="http://rt.localhost:8000"), None, None) is None
    assert api_refusal(change(remote, **{"x-buntime-internal": "true"}), None, None) is None
    refused = api_refusal(change(remote), None, None)
    assert refused is not None and refused.status == 403  # no Origin: the CSRF rule


@pytest.mark.parametrize(
    "remote", ["10.1.2.3", "192.168.0.9", "::ffff:10.0.0.1", "2001:db8::1", None]
)
def test_without_a_token_no_other_peer_may_change_anything(remote):
    from buntime.trust import api_refusal

    refused = api_refusal(change(remote, origin="http://rt.localhost:8000"), None, None)
    assert refused is not None and refused.status == 403
    assert b"RUNTIME_API_TOKEN" in refused.body
    assert api_refusal(Request("GET", "/api/apps", remote_addr=remote), None, None) is None


def test_with_a_token_a_change_needs_it_and_it_is_enough():
    from buntime.trust import api_refusal

    for remote in ("127.0.0.1", "10.1.2.3"):
        missing = api_refusal(change(remote, origin="http://rt.localhost:8000"), TOKEN, None)
        assert missing is not None and missing.status == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = api_refusal(change(remote, authorization=f"Bearer {TOKEN}x"), TOKEN, None)
        assert wrong is not None and wrong.status == 401
        right = api_refusal(change(remote, authorization=f"bearer {TOKEN}"), TOKEN, None)
        assert right is None  # no Origin needed: a browser never sends the token on its own


def test_only_this_machine_and_trusted_proxies_may_claim_to_be_internal():
    from buntime.config import Peers
    from buntime.trust import csrf_refusal, loopback, trusted

    proxies = Peers(frozenset({"10.0.0.5"}))
    claim = change("127.0.0.1", **{"x-buntime-internal": "true"})
    assert csrf_refusal(claim, internal_allowed=False) is not None
    assert csrf_refusal(claim, internal_allowed=True) is None
    assert loopback("127.0.0.1") and not loopback("10.0.0.5")
    assert trusted("10.0.0.5", proxies) and not trusted("10.0.0.6", proxies)


def test_the_front_door_applies_the_api_rules_before_anything_else():
    door = Door()
    door.door._api_token = TOKEN
    refused = door.fetch("POST", "/api/plugins/reload", body=b"{}", headers={"origin": "x"})
    assert refused.status == 401


@pytest.mark.parametrize(
    "host", ["attacker.example:8000", "attacker.example", "localhost.evil.example", "rt", "[::1"]
)
def test_without_a_token_a_host_another_site_may_own_changes_nothing(host):
    """DNS rebinding: another site's name, pointed at this machine, matching its Origin."""
    from buntime.trust import api_refusal

    request = Request(
        "POST",
        "/api/apps/upload",
        [("host", host), ("origin", f"http://{host}"), ("x-buntime-internal", "true")],
        remote_addr="127.0.0.1",
    )
    refused = api_refusal(request, None, None)
    assert refused is not None and refused.status == 403
    assert b"RUNTIME_API_TOKEN" in refused.body
    with_token = Request(
        "POST",
        "/api/apps/upload",
        [("host", host), ("authorization", f"Bearer {TOKEN}")],
        remote_addr="127.0.0.1",
    )
    assert api_refusal(with_token, TOKEN, None) is None


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST:8000",
        "localhost.:8000",
        "app.localhost:80",
        "127.0.0.1:8000",
        "10.0.0.7",
        "[::1]:8000",
        "[::1]",
    ],
)
def test_without_a_token_this_machines_own_names_may_change_things(host):
    from buntime.trust import api_refusal

    request = Request(
        "POST",
        "/api/apps/upload",
        [("host", host), ("x-buntime-internal", "true")],
        remote_addr="127.0.0.1",
    )
    assert api_refusal(request, None, None) is None


@pytest.mark.parametrize("path", ["/api/%ff", "/api/health/%c3%28"])
def test_a_core_api_path_that_is_not_utf_8_is_a_json_400_and_no_traceback(door, path):
    # Klein would answer a plain-text 400 and log a UnicodeDecodeError traceback
    # (through twisted's log) for every such request; errors are JSON (SPEC §4)
    logged: list[dict] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:
        answer = door.get(path)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert answer.status == 400
    assert answer.error["code"] == "BAD_REQUEST"
    assert [event for event in logged if event.get("log_failure")] == []

"""
The front door (SPEC §4 and §6), through C{treq.testing.StubTreq}: health
probes, the well-known document, request ids, fixed answers, the JSON error
format, the API prefix, streaming, and one eliot action per request.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from eliot.testing import LoggedAction
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from buntime import __version__
from buntime._logging import REQUEST_ACTION
from buntime.http import Request, Response
from buntime.web.api import CoreAPI
from buntime.web.frontdoor import FrontDoor, request_id_for
from buntime.web.state import RuntimeState


class Door:
    """A FrontDoor with its state and clock, and a StubTreq client for it."""

    def __init__(
        self,
        api_prefix: str = "",
        steps: list | None = None,
        direct: Any = None,
        plugins: Any = None,
    ) -> None:
        self.clock = Clock()
        self.state = RuntimeState()
        api = CoreAPI(state=self.state, api_base=f"{api_prefix}/api")
        self.resource = FrontDoor(
            clock=self.clock,
            state=self.state,
            api=api,
            api_prefix=api_prefix,
            steps=steps,
            direct=direct,
            plugins=plugins,
        )
        self.stub = StubTreq(self.resource)

    def start(self, method: str, path: str, **kwargs: Any) -> Deferred:
        """Send a request; its Deferred fires with C{(response, body)} once flushed."""
        result = self.stub.request(method, "http://buntime.test" + path, **kwargs)
        return result.addCallback(
            lambda response: self.stub.content(response).addCallback(lambda body: (response, body))
        )

    def fetch(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Send a request and return C{(response, body)}; it must complete now."""
        return done(self.start(method, path, **kwargs), self)

    def get(self, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        return self.fetch("GET", path, **kwargs)


def done(deferred: Deferred, door: Door) -> Any:
    """Flush the fake connections and return the result of C{deferred}, which must have fired."""
    door.stub.flush()
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the request did not complete"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def has_result(deferred: Deferred) -> bool:
    """Whether C{deferred} has its final result (not waiting on another Deferred)."""
    return deferred.called and not deferred.paused


def header(response: Any, name: str) -> list[str] | None:
    return response.headers.getRawHeaders(name)


def request_id(response: Any) -> str:
    [value] = header(response, "x-request-id")
    return value


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
    response, body = door.get(path)
    assert response.code == 200
    assert header(response, "content-type") == ["application/json"]
    assert json.loads(body) == {"ok": True, "status": status, "version": __version__}
    assert is_uuid4(request_id(response))


def test_ready_is_503_until_started_and_again_while_stopping(door):
    response, body = door.get("/api/health/ready")
    assert response.code == 503
    assert json.loads(body) == {"ok": False, "status": "starting", "version": __version__}
    assert is_uuid4(request_id(response))

    door.state.started = True
    response, body = door.get("/api/health/ready")
    assert response.code == 200
    assert json.loads(body) == {"ok": True, "status": "ready", "version": __version__}

    door.state.stopping = True
    response, body = door.get("/api/health/ready", headers={"x-request-id": "probe-1"})
    assert response.code == 503
    assert json.loads(body)["status"] == "stopping"
    assert request_id(response) == "probe-1"
    # liveness does not depend on readiness
    assert door.get("/api/health/live")[0].code == 200


def test_head_health(door):
    response, body = door.fetch("HEAD", "/api/health")
    assert (response.code, body) == (200, b"")


def test_well_known(door):
    response, body = door.get("/.well-known/buntime")
    assert response.code == 200
    assert json.loads(body) == {"api": "/api", "version": __version__}


# -- fixed answers and errors -------------------------------------------------------------


def test_root_answers_the_version(door):
    response, body = door.get("/")
    assert response.code == 200
    assert body == f"Buntime v{__version__}".encode()
    assert header(response, "content-type") == ["text/plain; charset=utf-8"]
    response, body = door.fetch("HEAD", "/")
    assert (response.code, body) == (200, b"")


def test_favicon_is_204(door):
    response, body = door.get("/favicon.ico")
    assert (response.code, body) == (204, b"")
    assert is_uuid4(request_id(response))


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nothing/here"), ("POST", "/nothing"), ("DELETE", "/x/y")]
)
def test_unknown_paths_are_404_json_with_x_not_found(door, method, path):
    response, body = door.fetch(method, path, headers={"x-request-id": "lost-1"})
    assert response.code == 404
    assert header(response, "x-not-found") == ["true"]
    assert header(response, "content-type") == ["application/json"]
    assert json.loads(body) == {"error": {"code": "NOT_FOUND", "message": f"Nothing at {path}"}}
    assert request_id(response) == "lost-1"


def test_unknown_api_route_is_404_json(door):
    response, body = door.get("/api/nope")
    assert response.code == 404
    assert header(response, "x-not-found") == ["true"]
    assert set(json.loads(body)["error"]) == {"code", "message"}
    assert is_uuid4(request_id(response))


def test_a_crashing_step_is_a_500_json_error_with_the_request_id(eliot_logger):
    async def crash(request: Request, fields: dict) -> Response | None:
        raise RuntimeError("kaboom")

    door = Door(steps=[crash])
    response, body = door.get("/anything", headers={"x-request-id": "crash-1"})
    assert response.code == 500
    assert json.loads(body) == {"error": {"code": "INTERNAL_ERROR", "message": "Internal error"}}
    assert request_id(response) == "crash-1"
    assert b"kaboom" not in body
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:internal-error"
    ]
    assert logged["level"] == "error"
    assert "kaboom" in logged["traceback"]
    assert door.state.in_flight == 0


# -- request ids ------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "req_1.2:3@host/x+y=", "a" * 200])
def test_a_sane_request_id_is_kept(door, given):
    response, _ = door.get("/nope", headers={"x-request-id": given})
    assert request_id(response) == given


@pytest.mark.parametrize("given", ["has space", "a" * 201, "semi;colon", 'quote"', "é"])
def test_a_bad_request_id_is_replaced(door, given):
    response, _ = door.get("/nope", headers={"x-request-id": given.encode("utf-8")})
    assert is_uuid4(request_id(response))


def test_a_made_request_id_names_the_log_task_and_a_given_one_does_not(door, eliot_logger):
    made, _ = door.get("/nope")
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
    response, body = door.fetch(
        "POST", "/app/x?q=1", headers={"x-request-id": "given-1"}, data=b"payload"
    )
    assert body == b"mine"
    assert header(response, "x-request-id") == ["given-1"]
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
    response, body = door.get("/x")
    assert (response.code, body, calls) == (201, b"b", ["a", "b"])

    calls.clear()
    door = Door(steps=[make("a", None)])
    assert door.get("/")[1] == f"Buntime v{__version__}".encode()
    assert door.get("/missing")[0].code == 404
    assert calls == ["a", "a"]


def test_in_flight_is_counted_until_the_response_is_done():
    gate: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        await gate
        return Response.text("late")

    door = Door(steps=[slow])
    pending = door.start("GET", "/slow")
    door.stub.flush()
    assert not has_result(pending)
    assert door.state.in_flight == 1
    drained = door.state.drained()
    assert not drained.called
    gate.callback(None)
    _, body = done(pending, door)
    assert body == b"late"
    assert door.state.in_flight == 0
    assert drained.called


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
    response, body = door.get("/big")
    assert response.code == 200
    assert body == b"".join(chunks)
    assert door.state.in_flight == 0


def test_an_empty_stream_is_an_empty_body():
    async def stream():
        return
        yield b""  # pragma: no cover

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, body=stream())

    door = Door(steps=[step])
    response, body = door.get("/empty")
    assert (response.code, body) == (200, b"")


def test_a_failing_stream_is_logged_and_the_connection_cut(eliot_logger):
    async def stream():
        yield b"partial"
        raise ValueError("stream broke")

    async def step(request: Request, fields: dict) -> Response | None:
        return Response(200, body=stream())

    door = Door(steps=[step])
    pending = door.start("GET", "/broken")
    door.stub.flush()
    results: list[Any] = []
    pending.addBoth(results.append)
    assert results and hasattr(results[0], "raiseException"), results  # not a clean body
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:stream-failed"
    ]
    assert "stream broke" in logged["error"]
    assert door.state.in_flight == 0


# -- API prefix ---------------------------------------------------------------------------


def test_the_api_prefix_moves_the_api():
    door = Door(api_prefix="/_")
    response, body = door.get("/_/api/health")
    assert response.code == 200
    assert json.loads(body)["status"] == "healthy"
    response, body = door.get("/_/api/health/ready")
    assert response.code == 503

    response, body = door.get("/api/health")
    assert response.code == 404
    assert header(response, "x-not-found") == ["true"]
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"

    response, body = door.get("/_/api/nope")
    assert response.code == 404
    assert header(response, "x-not-found") == ["true"]

    response, body = door.get("/.well-known/buntime")
    assert json.loads(body) == {"api": "/_/api", "version": __version__}


def test_a_multi_segment_prefix():
    door = Door(api_prefix="/internal/rt")
    assert door.get("/internal/rt/api/health/live")[0].code == 200
    assert door.get("/internal/api/health")[0].code == 404


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


def test_request_duration_follows_the_clock(eliot_logger):
    gate: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        await gate
        fields["app"] = "todos"
        return Response(500)

    door = Door(steps=[slow])
    pending = door.start("GET", "/todos/")
    door.clock.advance(0.25)
    gate.callback(None)
    response, _ = done(pending, door)
    assert response.code == 500
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    end = action.end_message
    assert end["duration_ms"] == 250
    assert end["level"] == "error"
    assert end["app"] == "todos"


def test_client_disconnect_cancels_the_work() -> None:
    """A client that goes away cancels what answers it (the pool drops or cancels it)."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    from twisted.web.server import Request as WebRequest
    from twisted.web.server import Site
    from twisted.web.test.requesthelper import DummyChannel

    cancelled: list[bool] = []

    async def step(request: Request, fields: dict) -> Response | None:
        waiting: Deferred = Deferred(lambda d: cancelled.append(True))
        return await waiting

    door = Door(steps=[step])
    channel = DummyChannel()
    channel.site = Site(door.resource)
    request = WebRequest(channel)
    request.gotLength(0)
    request.requestReceived(b"GET", b"/app/x", b"HTTP/1.1")
    assert door.state.in_flight == 1 and cancelled == []
    request.connectionLost(Failure(ConnectionDone()))
    assert cancelled == [True]
    assert door.state.in_flight == 0


# -- the direct path --------------------------------------------------------------------


class Plugins:
    """A stand-in registry: passive or not, with no hooks to run."""

    def __init__(self, passive: bool) -> None:
        self.passive = passive

    def passive_for(self, path: str) -> bool:
        return self.passive

    async def on_request(self, request: Request, app: Any, app_path: Any) -> Request:
        return request

    async def on_response(self, response: Response, app: Any) -> Response:
        return response


def direct_door(
    answer: Any, passive: bool = True, calls: list | None = None
) -> tuple[Door, list[str]]:
    """A door whose direct path answers with C{answer(request)} and whose one step says 'step'."""
    seen: list[str] = [] if calls is None else calls

    def direct(request: Request, fields: dict) -> Deferred | None:
        seen.append("direct " + request.path)
        result = answer(request)
        if result is not None:
            fields["app"] = "direct@1"
        return result

    async def step(request: Request, fields: dict) -> Response | None:
        seen.append("step " + request.path)
        return Response.text("step")

    registry = Plugins(passive)
    return Door(steps=[step], direct=direct, plugins=lambda: registry), seen


def test_the_direct_path_answers_a_request_no_plugin_takes_part_in(eliot_logger):
    door, seen = direct_door(lambda request: succeed(Response.text("direct", 201)))
    response, body = door.fetch("POST", "/app/x?q=1", data=b"body")
    assert (response.code, body) == (201, b"direct")
    assert seen == ["direct /app/x"]
    assert is_uuid4(request_id(response))
    [action] = LoggedAction.of_type(eliot_logger.messages, REQUEST_ACTION)
    assert action.end_message["app"] == "direct@1"
    assert action.end_message["status"] == 201
    assert door.state.in_flight == 0


def test_without_a_direct_answer_the_steps_run():
    door, seen = direct_door(lambda request: None)
    assert door.get("/app/x")[1] == b"step"
    assert seen == ["direct /app/x", "step /app/x"]


def test_plugins_taking_part_skip_the_direct_path():
    door, seen = direct_door(lambda request: succeed(Response.text("direct")), passive=False)
    assert door.get("/app/x")[1] == b"step"
    assert seen == ["step /app/x"]


@pytest.mark.parametrize("path", ["/api/health", "/.well-known/buntime"])
def test_the_api_and_well_known_skip_the_direct_path(path):
    door, seen = direct_door(lambda request: succeed(Response.text("direct")))
    assert door.get(path)[0].code == 200
    assert seen == []


def test_the_direct_path_streams():
    async def stream():
        yield b"one "
        yield b"two"

    door, _ = direct_door(lambda request: succeed(Response(200, body=stream())))
    assert door.get("/app/s")[1] == b"one two"


def test_a_failing_direct_path_is_a_500_json_error(eliot_logger):
    def broken(request: Request) -> Deferred:
        raise RuntimeError("kaboom")

    door, _ = direct_door(broken)
    response, body = door.get("/app/x")
    assert response.code == 500
    assert json.loads(body)["error"]["code"] == "INTERNAL_ERROR"
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:internal-error"
    ]
    assert "kaboom" in logged["traceback"]
    assert door.state.in_flight == 0


def test_client_disconnect_cancels_the_direct_work() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    from twisted.web.server import Request as WebRequest
    from twisted.web.server import Site
    from twisted.web.test.requesthelper import DummyChannel

    cancelled: list[bool] = []
    door, _ = direct_door(lambda request: Deferred(lambda d: cancelled.append(True)))
    channel = DummyChannel()
    channel.site = Site(door.resource)
    request = WebRequest(channel)
    request.gotLength(0)
    request.requestReceived(b"GET", b"/app/x", b"HTTP/1.1")
    assert door.state.in_flight == 1 and cancelled == []
    request.connectionLost(Failure(ConnectionDone()))
    assert cancelled == [True]
    assert door.state.in_flight == 0

"""C{routes}/C{fetch} apps (L{buntime.pool.child.routes})."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_child_protocol import Sender, incoming
from twisted.internet.defer import Deferred, succeed

from buntime.http import Response
from buntime.pool.child.routes import Route, RoutesAdapter, to_response
from buntime.pool.child.writer import ResponseWriter


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def serve(adapter: RoutesAdapter, loop, *args, **kwargs) -> Sender:
    """Run one request through C{adapter} (driving C{loop} for async handlers)."""
    sender = Sender()
    done = adapter.handle(incoming(*args, **kwargs), ResponseWriter(sender, 1))
    if loop is not None:
        loop.run_until_complete(asyncio.wait_for(done.asFuture(loop), 5))
    else:
        failures: list = []
        done.addErrback(failures.append)
        assert done.called
        if failures:
            failures[0].raiseException()
    return sender


def adapter(routes: dict, fetch=None, loop=None) -> RoutesAdapter:
    return RoutesAdapter(routes, fetch, loop)


# -- matching ------------------------------------------------------------------


def test_patterns() -> None:
    route = Route.compile("/items/:id/parts/:part", "x")
    assert route.match("/items/4%202/parts/a") == {"id": "4 2", "part": "a"}
    assert route.match("/items/4/parts") is None
    wild = Route.compile("/files/*", "x")
    assert wild.match("/files/a/b.txt") == {"*": "a/b.txt"}
    assert wild.match("/files") == {"*": ""}
    assert wild.match("/filesystem") is None
    assert Route.compile("/*", "x").match("/anything/at/all") == {"*": "anything/at/all"}


def test_order_exact_then_params_then_longest_wildcard() -> None:
    routes = adapter(
        {
            "/*": "root wildcard",
            "/a/*": "a wildcard",
            "/a/:x": "a param",
            "/a/b": "exact",
        }
    )

    def answer(path: str) -> bytes:
        endpoint, _, _ = routes.find("GET", path)
        assert endpoint is not None and endpoint.fixed is not None
        return endpoint.fixed.body  # type: ignore[return-value]

    assert answer("/a/b") == b"exact"
    assert answer("/a/b/") == b"exact"
    assert answer("/a/c") == b"a param"
    assert answer("/a/c/d") == b"a wildcard"
    assert answer("/z") == b"root wildcard"


def test_dict_of_methods_or_json() -> None:
    routes = adapter({"/m": {"get": "read", "POST": "write"}, "/j": {"get": 1, "other": 2}})
    endpoint, _, _ = routes.find("POST", "/m")
    assert endpoint.fixed.body == b"write"  # type: ignore[union-attr]
    endpoint, _, _ = routes.find("HEAD", "/m")
    assert endpoint.fixed.body == b"read"  # type: ignore[union-attr]
    endpoint, _, allowed = routes.find("DELETE", "/m")
    assert endpoint is None and sorted(allowed) == ["GET", "HEAD", "POST"]
    endpoint, _, _ = routes.find("DELETE", "/j")
    assert json.loads(endpoint.fixed.body) == {"get": 1, "other": 2}  # type: ignore[union-attr]


def test_bad_values() -> None:
    with pytest.raises(TypeError, match=r"routes\['/x'\] is a float"):
        adapter({"/x": 1.5})
    with pytest.raises(ValueError, match="must start with /"):
        adapter({"x": "y"})


def test_to_response() -> None:
    assert to_response("hi").headers.get("content-type") == "text/plain; charset=utf-8"
    assert to_response(b"\x00").headers.get("content-type") == "application/octet-stream"
    assert json.loads(to_response([1, 2]).body) == [1, 2]  # type: ignore[arg-type]
    assert to_response(None).status == 204
    original = Response(201)
    assert to_response(original) is original
    with pytest.raises(TypeError, match="handler returned int"):
        to_response(3)


# -- serving -------------------------------------------------------------------


def test_handler_gets_request_and_params() -> None:
    seen = []

    def item(request, params):
        seen.append(request)
        return {"id": params["id"]}

    sender = serve(adapter({"/items/:id": item}), None, "POST", "/items/7?q=1", b"body")
    assert sender.names == ["ResponseStart"]
    assert sender.response() == (200, {"content-type": "application/json"}, b'{"id": "7"}')
    request = seen[0]
    assert (request.method, request.url, request.query, request.body) == (
        "POST",
        "/items/7?q=1",
        "q=1",
        b"body",
    )
    assert request.remote_addr == "10.0.0.1"
    assert request.headers.get("host") == "example.com:8080"


def test_handler_without_params_argument() -> None:
    sender = serve(adapter({"/x/:id": lambda request: request.path}), None, "GET", "/x/1")
    assert sender.response()[2] == b"/x/1"


def test_fetch_fallback_and_404() -> None:
    sender = serve(adapter({}, fetch=lambda request: Response.text("fetched", 202)), None)
    assert sender.response()[:1] == (202,)
    status, _, body = serve(adapter({"/a": "a"}), None, "GET", "/b").response()
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"


def test_405_with_allow() -> None:
    status, headers, _ = serve(adapter({"/a": {"POST": "x"}}), None, "GET", "/a").response()
    assert (status, headers["allow"]) == (405, "POST")


def test_405_allows_head_where_get_is() -> None:
    """HEAD is answered by the GET handler, so Allow names it (as Flask's 405 does)."""
    routes = adapter({"/a": {"GET": "x", "DELETE": "y"}})
    status, headers, _ = serve(routes, None, "PUT", "/a").response()
    assert (status, headers["allow"]) == (405, "DELETE, GET, HEAD")


@pytest.mark.parametrize("answer", ["text", Response(200, {"x-a": "1"}, b"bytes")])
def test_head_gets_the_get_answer_for_the_runtime_to_measure(answer) -> None:
    """The runtime's connection sends a HEAD answer's length, not its body (docs/http.md)."""
    routes = adapter({"/": answer})
    head = serve(routes, None, "HEAD", "/").response()
    assert head == serve(routes, None, "GET", "/").response()
    assert head[2] != b""


def test_deferred_result() -> None:
    sender = serve(adapter({"/": lambda request: succeed("later")}), None)
    assert sender.response()[2] == b"later"


def test_handler_error_propagates() -> None:
    def boom(request):
        raise KeyError("nope")

    with pytest.raises(KeyError):
        serve(adapter({"/": boom}), None)


def test_async_handler_runs_on_the_loop(loop) -> None:
    async def slow(request):
        await asyncio.sleep(0.01)
        return {"slept": True}

    sender = serve(adapter({"/": slow}, loop=loop), loop)
    assert sender.response()[2] == b'{"slept": true}'


def test_streamed_response(loop) -> None:
    async def numbers():
        for number in range(3):
            await asyncio.sleep(0)
            yield f"{number}\n".encode()

    def stream(request):
        return Response(200, {"content-type": "text/plain"}, numbers())

    sender = serve(adapter({"/": stream}, loop=loop), loop)
    assert sender.names == ["ResponseStart", "ResponseBody", "ResponseBody", "ResponseEnd"]
    assert sender.response()[2] == b"0\n1\n2\n"


def test_streamed_request_body_is_read_first() -> None:
    sender = Sender()
    request = incoming("POST", "/", b"a", more=True)
    done: Deferred = adapter({"/": lambda r: r.body}).handle(request, ResponseWriter(sender, 1))
    request.body.feed(b"b")
    assert sender.sent == []
    request.body.finish()
    assert done.called and sender.response()[2] == b"ab"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_handler_s_own_reason_phrase_goes_with_its_status(loop, streamed) -> None:
    """C{Response(..., reason=...)} keeps its phrase, as docs/http.md says."""

    async def chunks():
        yield b"x"

    def handler(request):
        body = chunks() if streamed else b"x"
        return Response(299, {}, body, "Custom Thing")

    sender = serve(adapter({"/": handler}, loop=loop), loop)
    [start] = [sent for sent in sender.sent if sent[0] == "ResponseStart"]
    assert (start[1]["status"], start[1]["reason"]) == (299, "Custom Thing")


def test_a_route_with_characters_a_client_must_encode_is_found() -> None:
    """C{"/café"} and C{"/a b/:id"} answer C{/caf%C3%A9} and C{/a%20b/1%2F2}."""
    routes = adapter({"/café": "x", "/a b/:id": "y", "/files/*": "z"})
    assert routes.find("GET", "/caf%C3%A9")[0] is not None
    assert routes.find("GET", "/caf%c3%a9/")[0] is not None
    assert routes.find("GET", "/a%20b/1%2F2")[1] == {"id": "1/2"}
    assert routes.find("GET", "/files/a%20b/c%25d")[1] == {"*": "a b/c%d"}

"""ASGI apps on the worker's asyncio loop (L{buntime.pool.child.asgi})."""

from __future__ import annotations

import asyncio

import pytest
from test_child_protocol import Sender, incoming

from buntime.pool.child.asgi import AsgiAdapter, LifespanFailed, is_asgi
from buntime.pool.child.writer import ResponseWriter


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def wait(loop, deferred, timeout: float = 5):
    return loop.run_until_complete(asyncio.wait_for(deferred.asFuture(loop), timeout))


async def hello(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_is_asgi() -> None:
    class App:
        async def __call__(self, scope, receive, send):
            pass

    def wsgi(environ, start_response):
        pass

    assert is_asgi(hello) and is_asgi(App())
    assert not is_asgi(wsgi) and not is_asgi(App)


def test_small_response_is_one_box(loop) -> None:
    sender = Sender()
    wait(loop, AsgiAdapter(hello, loop).handle(incoming(), ResponseWriter(sender, 1)))
    assert sender.names == ["ResponseStart"]
    assert sender.sent[0][1]["end"] is True
    assert sender.response() == (200, {"x-a": "1"}, b"hello")


def test_scope(loop) -> None:
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await hello(scope, receive, send)

    request = incoming(
        "post",
        "/caf%C3%A9/x?q=1&r=%20",
        headers=[["Host", "example.com:8080"], ["X-Forwarded-Proto", "https"]],
        base="/app@%5E1",
    )
    wait(loop, AsgiAdapter(app, loop).handle(request, ResponseWriter(Sender(), 1)))
    scope = scopes[0]
    assert scope["method"] == "POST"
    assert scope["path"] == "/app@^1/café/x"
    assert scope["raw_path"] == b"/app@%5E1/caf%C3%A9/x"
    assert scope["query_string"] == b"q=1&r=%20"
    assert scope["root_path"] == "/app@^1"
    assert scope["scheme"] == "https"
    assert scope["server"] == ("example.com", 8080)
    assert scope["client"] == ("10.0.0.1", 4567)
    assert (b"host", b"example.com:8080") in scope["headers"]


def test_request_body_chunks_then_disconnect(loop) -> None:
    received = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        received.append(await receive())

    request = incoming("POST", "/", b"a", more=True)
    done = AsgiAdapter(app, loop).handle(request, ResponseWriter(Sender(), 1))
    loop.call_soon(request.body.feed, b"b")
    loop.call_soon(request.body.finish)
    wait(loop, done)
    bodies = [m.get("body") for m in received if m["type"] == "http.request"]
    assert b"".join(bodies) == b"ab"
    assert received[-2]["more_body"] is False
    assert received[-1] == {"type": "http.disconnect"}


def test_streaming_chunks_go_out_at_once(loop) -> None:
    """Each more_body chunk reaches the runtime before the app goes on (SSE)."""
    sender = Sender()
    go_on = asyncio.Event()
    seen_before_go_on = []

    async def events(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        seen_before_go_on.extend(sender.names)
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n"})

    done = AsgiAdapter(events, loop).handle(incoming(), ResponseWriter(sender, 1))
    loop.call_later(0.01, go_on.set)
    wait(loop, done)
    assert seen_before_go_on == ["ResponseStart", "ResponseBody"]
    assert sender.sent[0][1]["body"] == b"" and sender.sent[0][1]["end"] is False
    assert sender.names == ["ResponseStart", "ResponseBody", "ResponseBody", "ResponseEnd"]
    assert sender.response()[2] == b"data: 1\n\ndata: 2\n\n"


def test_backpressure_holds_the_app(loop) -> None:
    sender = Sender(hold=True)
    progress = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"1", "more_body": True})
        for chunk in (b"2", b"3"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            progress.append(chunk)
        await send({"type": "http.response.body", "body": b""})

    done = AsgiAdapter(app, loop).handle(incoming(), ResponseWriter(sender, 1))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert progress == [] and len(sender.held) == 1
    sender.held.pop().callback({})
    loop.run_until_complete(asyncio.sleep(0.01))
    assert progress == [b"2"]
    sender.hold = False
    sender.held.pop().callback({})
    wait(loop, done)
    assert sender.response()[2] == b"123"


def test_cancel(loop) -> None:
    outcome = []

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    sender = Sender()
    request = incoming()
    writer = ResponseWriter(sender, 1)
    done = AsgiAdapter(app, loop).handle(request, writer)
    loop.run_until_complete(asyncio.sleep(0))
    writer.cancel()
    request.body.abort()
    done.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert outcome == ["cancelled"]
    assert sender.sent == []


def test_disconnect_on_cancel(loop) -> None:
    """An app waiting in receive() after the body sees http.disconnect."""
    received = []

    async def app(scope, receive, send):
        received.append(await receive())
        received.append(await receive())

    request = incoming()
    done = AsgiAdapter(app, loop).handle(request, ResponseWriter(Sender(), 1))
    loop.run_until_complete(asyncio.sleep(0.01))
    request.body.abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert received[-1] == {"type": "http.disconnect"}
    failures: list = []
    done.addErrback(failures.append)
    assert "without sending a response" in str(failures[0].value)


def test_app_without_response(loop) -> None:
    async def lazy(scope, receive, send):
        pass

    with pytest.raises(RuntimeError, match="without sending a response"):
        wait(loop, AsgiAdapter(lazy, loop).handle(incoming(), ResponseWriter(Sender(), 1)))


def test_lifespan_state_reaches_requests(loop) -> None:
    calls = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                calls.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        calls.append(scope["state"]["db"])
        await hello({"type": "http"}, receive, send)

    adapter = AsgiAdapter(app, loop)
    wait(loop, adapter.startup())
    wait(loop, adapter.handle(incoming(), ResponseWriter(Sender(), 1)))
    wait(loop, adapter.shutdown())
    assert calls == ["lifespan.startup", "connected", "lifespan.shutdown"]


def test_lifespan_unsupported(loop, capsys) -> None:
    adapter = AsgiAdapter(hello, loop)
    wait(loop, adapter.startup())
    wait(loop, adapter.shutdown())
    assert "lifespan unsupported" in capsys.readouterr().err


def test_lifespan_startup_failed(loop) -> None:
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailed, match="no database"):
        wait(loop, AsgiAdapter(app, loop).startup())


def test_starlette_demo_app(loop) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def where(request):
        return PlainTextResponse(
            f"{request.url_for('where').path} {request.scope['root_path']} {request.url.path}"
        )

    app = Starlette(routes=[Route("/where", where, name="where")])
    adapter = AsgiAdapter(app, loop)
    wait(loop, adapter.startup())
    sender = Sender()
    wait(loop, adapter.handle(incoming(target="/where"), ResponseWriter(sender, 1)))
    assert sender.response()[0] == 200
    assert sender.response()[2] == b"/app@1/where /app@1 /app@1/where"
    wait(loop, adapter.shutdown())


def test_a_header_name_no_client_could_read_is_refused(loop) -> None:
    """As uvicorn refuses it: C{send} raises, and nothing goes out."""
    for name in (b"x a", b"x-a:", b"x\r\ny", b""):
        refused: list[Exception] = []

        async def app(scope, receive, send, name=name, refused=refused):
            try:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(name, b"v")]}
                )
            except ValueError as error:
                refused.append(error)
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        sender = Sender()
        wait(loop, AsgiAdapter(app, loop).handle(incoming(), ResponseWriter(sender, 1)))
        assert "invalid HTTP header name" in str(refused[0])
        assert sender.response()[0] == 500


def test_receive_after_the_response_with_the_body_unread_gives_disconnect(loop) -> None:
    """
    An app that answers before the upload is all in, then calls receive()
    (to drain), gets http.disconnect, as under uvicorn: once the response
    is over the runtime sends no more of the body, so waiting for it hangs.
    """
    received = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too big"})
        while True:
            message = await receive()
            received.append(message["type"])
            if message["type"] == "http.disconnect":
                break

    request = incoming("POST", "/", b"a", more=True)
    done = AsgiAdapter(app, loop).handle(request, ResponseWriter(Sender(), 1))
    wait(loop, done, timeout=1)
    assert received[-1] == "http.disconnect"

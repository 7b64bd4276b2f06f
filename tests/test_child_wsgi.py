"""WSGI apps in the worker's thread pool (L{buntime.pool.child.wsgi})."""

from __future__ import annotations

import json
import threading

import pytest
import pytest_twisted
from test_child_protocol import Sender, incoming
from twisted.internet import reactor

from buntime.pool.child.writer import ResponseWriter
from buntime.pool.child.wsgi import WsgiAdapter, build_environ
from buntime.pool.commands import CHUNK_SIZE


@pytest.fixture
def adapters():
    made: list[WsgiAdapter] = []

    def make(app) -> WsgiAdapter:
        adapter = WsgiAdapter(app, reactor, threads=4)
        adapter.startup()
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


def test_environ() -> None:
    environ = build_environ(
        incoming(
            "post",
            "/caf%C3%A9/x?q=1",
            headers=[
                ["Host", "example.com:8080"],
                ["Content-Type", "text/plain"],
                ["Content-Length", "3"],
                ["X-Many", "a"],
                ["x-many", "b"],
                ["X_Sneaky", "1"],
                ["x-base", "/app@1"],
            ],
            base="/app@%5E1",
        )
    )
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SERVER_SOFTWARE"].startswith("buntime/")
    assert environ["SCRIPT_NAME"] == "/app@^1"
    assert environ["PATH_INFO"] == "/café/x".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "q=1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "8080")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.1", "4567")
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert environ["HTTP_X_MANY"] == "a,b"
    assert environ["HTTP_X_BASE"] == "/app@1"
    assert "HTTP_X_SNEAKY" not in environ
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"].read() == b""


def simple(environ, start_response):
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"made in ", threading.current_thread().name.encode()]


@pytest_twisted.ensureDeferred
async def test_list_response_is_one_box(adapters) -> None:
    sender = Sender()
    await adapters(simple).handle(incoming(), ResponseWriter(sender, 1))
    assert sender.names == ["ResponseStart"]
    status, headers, body = sender.response()
    assert (status, headers["content-type"]) == (201, "text/plain")
    assert body.startswith(b"made in PoolThread-buntime-wsgi")


@pytest_twisted.ensureDeferred
async def test_flask_with_content_length_is_one_box(adapters) -> None:
    from flask import Flask, request, url_for

    app = Flask(__name__)

    @app.post("/echo")
    def echo():
        return {"got": request.get_data(as_text=True), "url": url_for("echo")}

    sender = Sender()
    posted = incoming("POST", "/echo", b"abc", headers=[["Content-Length", "3"]])
    await adapters(app).handle(posted, ResponseWriter(sender, 1))
    assert sender.names == ["ResponseStart"]
    assert sender.response()[2] == b'{"got":"abc","url":"/app@1/echo"}\n'


@pytest_twisted.ensureDeferred
async def test_generator_streams(adapters) -> None:
    sent_while_running = []
    sender = Sender()

    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        sent_while_running.extend(sender.names)
        yield b""
        yield b"x" * (CHUNK_SIZE + 1)

    await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
    assert sent_while_running == ["ResponseStart"]
    assert sender.names == ["ResponseStart", "ResponseBody", "ResponseBody", "ResponseEnd"]
    assert sender.response()[2] == b"first" + b"x" * (CHUNK_SIZE + 1)


@pytest_twisted.ensureDeferred
async def test_the_app_s_own_reason_phrase_goes_with_its_status(adapters) -> None:
    for body in ([b"x"], (b for b in [b"x", b"y"])):
        sender = Sender()

        def app(environ, start_response, body=body):
            start_response("299 Custom Thing", [])
            return body

        await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
        [start] = [sent for sent in sender.sent if sent[0] == "ResponseStart"]
        assert (start[1]["status"], start[1]["reason"]) == (299, "Custom Thing")


@pytest_twisted.ensureDeferred
async def test_a_small_body_that_drips_goes_out_as_it_drips(adapters) -> None:
    """A Content-Length of 10 bytes yielded 5 at a time: the first 5 go before the next."""
    sent_while_running = []
    sender = Sender()

    def drip(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        yield b"12345"
        sent_while_running.extend(sender.names)
        yield b"67890"

    await adapters(drip).handle(incoming(), ResponseWriter(sender, 1))
    assert sent_while_running == ["ResponseStart"]
    assert sender.response()[2] == b"1234567890"


@pytest_twisted.ensureDeferred
async def test_streamed_request_body(adapters) -> None:
    def echo(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    sender = Sender()
    request = incoming("POST", "/", b"a" * 10, more=True, reactor=reactor)
    done = adapters(echo).handle(request, ResponseWriter(sender, 1))
    body = b"b" * (5 * 1024 * 1024)
    for offset in range(0, len(body), CHUNK_SIZE):
        waiting = request.body.feed(body[offset : offset + CHUNK_SIZE])
        if waiting is not None:
            await waiting
    request.body.finish()
    await done
    assert sender.response()[2] == b"a" * 10 + body


@pytest_twisted.ensureDeferred
async def test_legacy_write(adapters) -> None:
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"written ")
        return [b"returned"]

    sender = Sender()
    await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
    assert sender.names == ["ResponseStart", "ResponseBody", "ResponseEnd"]
    assert sender.response()[2] == b"written returned"


@pytest_twisted.ensureDeferred
async def test_errors(adapters) -> None:
    def broken(environ, start_response):
        raise ZeroDivisionError("oops")

    def silent(environ, start_response):
        return []

    with pytest.raises(ZeroDivisionError):
        await adapters(broken).handle(incoming(), ResponseWriter(Sender(), 1))
    with pytest.raises(RuntimeError, match="did not call start_response"):
        await adapters(silent).handle(incoming(), ResponseWriter(Sender(), 1))


@pytest_twisted.ensureDeferred
async def test_a_header_name_no_client_could_read_is_an_error(adapters) -> None:
    """gunicorn answers 500 rather than send C{x a: b}: so does the worker (APP_ERROR)."""
    for body in ([b"x"], (b for b in [b"x", b"y"])):
        sender = Sender()

        def app(environ, start_response, body=body):
            start_response("200 OK", [("X-Fine", "1"), ("x a", "b")])
            return body

        with pytest.raises(ValueError, match="invalid HTTP header name 'x a'"):
            await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
        assert "ResponseStart" not in sender.names


@pytest_twisted.ensureDeferred
async def test_cancelled_request_stops_and_closes(adapters) -> None:
    closed = threading.Event()
    sender = Sender(hold=True)

    class Endless:
        def __iter__(self):
            while True:
                yield b"x"

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [])
        return Endless()

    writer = ResponseWriter(sender, 1)
    done = adapters(app).handle(incoming(), writer)
    while not sender.held:
        await _later()
    writer.cancel()
    sender.held.pop().callback({})
    with pytest.raises(OSError, match="cancelled"):
        await done
    assert closed.is_set()


async def _later() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.001, lambda: None)


@pytest_twisted.ensureDeferred
async def test_whitespace_around_a_header_value_is_dropped(adapters) -> None:
    """Django's cookies come as C{" a=1; Path=/"}: gunicorn sends C{Set-Cookie: a=1; Path=/}."""
    sender = Sender()

    def app(environ, start_response):
        start_response("200 OK", [("Set-Cookie", " a=1; Path=/"), ("X-Tab", "\tv \t")])
        return [b"ok"]

    await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
    [start] = [sent for sent in sender.sent if sent[0] == "ResponseStart"]
    assert json.loads(start[1]["headers"]) == [["Set-Cookie", "a=1; Path=/"], ["X-Tab", "v"]]


@pytest_twisted.ensureDeferred
async def test_a_status_without_a_phrase_gets_the_standard_one(adapters) -> None:
    """C{start_response("200", ...)}: no phrase given, so none is passed on (the runtime
    then writes C{200 OK}, as docs/http.md says), rather than an empty one."""
    sender = Sender()

    def app(environ, start_response):
        start_response("200", [])
        return [b"x"]

    await adapters(app).handle(incoming(), ResponseWriter(sender, 1))
    [start] = [sent for sent in sender.sent if sent[0] == "ResponseStart"]
    assert (start[1]["status"], start[1]["reason"]) == (200, None)

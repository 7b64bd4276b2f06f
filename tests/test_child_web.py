"""Klein apps and twisted.web resources in the worker (L{buntime.pool.child.web})."""

from __future__ import annotations

import pytest
import pytest_twisted
from klein import Klein
from test_child_protocol import Sender, incoming
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from buntime.pool.child.web import WebAdapter
from buntime.pool.child.writer import ResponseWriter

app = Klein()
cancelled: list[str] = []


@app.route("/hello/<name>")
def hello(request, name):
    request.setHeader("content-type", "text/plain")
    return f"hello {name} at {request.prePathURL().decode()} from {request.getClientAddress().host}"


@app.route("/form", methods=["POST"])
def form(request):
    return b"%s %s" % (request.args[b"a"][0], request.content.read())


@app.route("/later")
def later(request):
    return deferLater(reactor, 0.01, lambda: "later")


@app.route("/forever")
def forever(request):
    return Deferred(lambda _: cancelled.append("klein"))


@app.route("/boom")
def boom(request):
    raise ValueError("klein failed")


class Ticker(Resource):
    """Writes three ticks, one per reactor turn, then finishes."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/event-stream")
        request.notifyFinish().addErrback(lambda _: cancelled.append("ticker"))

        def tick(count: int) -> None:
            if request.finished or request.channel is None:
                return
            request.write(b"tick %d\n" % count)
            if count < 3:
                reactor.callLater(0.005, tick, count + 1)
            else:
                request.finish()

        tick(1)
        return NOT_DONE_YET


class Pull(Resource):
    """A pull producer (like static.File's) writing three pieces."""

    isLeaf = True

    def render_GET(self, request):
        pieces = [b"a" * 100, b"b" * 100, b"c" * 100]

        class Producer:
            def resumeProducing(self) -> None:
                if pieces:
                    request.write(pieces.pop(0))
                else:
                    request.unregisterProducer()
                    request.finish()

            def stopProducing(self) -> None:
                pieces.clear()

        request.registerProducer(Producer(), False)
        return NOT_DONE_YET


class Hello(Resource):
    """Renders GET only: twisted.web answers HEAD with its length."""

    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class Broken(Resource):
    isLeaf = True

    def render_GET(self, request):
        raise KeyError("resource failed")


async def serve(root, *args, **kwargs) -> Sender:
    sender = Sender()
    await WebAdapter.for_app(root, reactor).handle(
        incoming(*args, **kwargs), ResponseWriter(sender, 1)
    )
    return sender


@pytest_twisted.ensureDeferred
async def test_klein_route() -> None:
    sender = await serve(app, "GET", "/hello/bob", headers=[["Host", "example.com:8080"]])
    assert sender.names == ["ResponseStart"]
    status, headers, body = sender.response()
    assert status == 200
    assert body == b"hello bob at http://example.com:8080/app%401/hello/bob from 10.0.0.1"
    assert headers["content-type"] == "text/plain"
    assert "server" not in headers and "date" not in headers
    assert WebAdapter.for_app(app, reactor).kind == "klein"


@pytest_twisted.ensureDeferred
async def test_klein_form_post() -> None:
    sender = await serve(
        app,
        "POST",
        "/form",
        b"a=1&b=2",
        headers=[["Content-Type", "application/x-www-form-urlencoded"]],
    )
    assert sender.response()[2] == b"1 a=1&b=2"


@pytest_twisted.ensureDeferred
async def test_klein_multipart_form_post() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n3\r\n--XyZ--\r\n'
    headers = [["Content-Type", "multipart/form-data; boundary=XyZ"]]
    sender = await serve(app, "POST", "/form?a=1", body, headers=headers)
    assert sender.response()[2] == b"3 " + body


@pytest_twisted.ensureDeferred
async def test_a_malformed_multipart_form_is_answered_400() -> None:
    headers = [["Content-Type", "multipart/form-data; boundary=XyZ"]]
    status, headers_out, body = (
        await serve(app, "POST", "/form", b"junk", headers=headers)
    ).response()
    assert (status, body) == (400, b"Bad Request")
    assert headers_out["content-type"] == "text/plain"


@pytest_twisted.ensureDeferred
async def test_klein_deferred_and_not_found() -> None:
    assert (await serve(app, "GET", "/later")).response()[2] == b"later"
    assert (await serve(app, "GET", "/nowhere")).response()[0] == 404


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("root", "path"), [(app, "/hello/bob"), (app, "/later"), (Hello(), "/")])
async def test_head_tells_the_runtime_the_length_of_the_get_answer(root, path) -> None:
    """The runtime's connection sends a HEAD answer's length (given, or its body's), no body."""
    status, headers, body = (await serve(root, "HEAD", path)).response()
    got = (await serve(root, "GET", path)).response()[2]
    assert status == 200
    assert int(headers.get("content-length", len(body))) == len(got) > 0


@pytest_twisted.ensureDeferred
async def test_klein_error_fails_the_request() -> None:
    with pytest.raises(ValueError, match="klein failed"):
        await serve(app, "GET", "/boom")


@pytest_twisted.ensureDeferred
async def test_resource_error_fails_the_request() -> None:
    adapter = WebAdapter.for_app(Broken(), reactor)
    assert adapter.kind == "resource"
    sender = Sender()
    with pytest.raises(KeyError):
        await adapter.handle(incoming(), ResponseWriter(sender, 1))
    assert sender.sent == []


@pytest_twisted.ensureDeferred
async def test_not_done_yet_streams() -> None:
    sender = await serve(Ticker(), "GET", "/", base="")
    assert sender.names == ["ResponseStart", "ResponseBody", "ResponseBody", "ResponseEnd"]
    assert sender.sent[0][1]["end"] is False
    assert sender.response()[2] == b"tick 1\ntick 2\ntick 3\n"


@pytest_twisted.ensureDeferred
async def test_pull_producer() -> None:
    sender = await serve(Pull())
    assert sender.response()[2] == b"a" * 100 + b"b" * 100 + b"c" * 100


@pytest_twisted.ensureDeferred
async def test_cancel() -> None:
    cancelled.clear()
    for root, path in ((app, "/forever"), (Ticker(), "/")):
        sender = Sender()
        done = WebAdapter.for_app(root, reactor).handle(
            incoming("GET", path), ResponseWriter(sender, 1)
        )
        await deferLater(reactor, 0, lambda: None)
        done.cancel()
        failures: list = []
        done.addErrback(failures.append)
        assert failures
    assert cancelled == ["klein", "ticker"]

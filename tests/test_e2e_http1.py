"""
The HTTP/1.1 front door (L{buntime.web.http1}) through real runtimes: every
connection, whatever it asks for (a worker app, the core API, a plugin's
hooks), is served by the one connection layer.

Keep-alive and pipelined requests answered in order, request ids echoed and
logged, bodies over an app's limit refused unread, C{HEAD}, streamed answers
sent as they come, the work of a client that leaves cancelled, plugin hooks
on the same path, a client that never reads held to bounded memory, strict
framing (smuggling, C{Host}, an app's wrong C{Content-Length}), and, on a
second runtime with small limits, the request-head deadline and the limit
on concurrent connections.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import parse_reply, raw_request, rss_kb, write_app
from runtime import RuntimeProcess, Runtimes
from test_plugins_support import write_plugin
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0
"""Seconds any one answer may take before a test fails."""

ECHO = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        ids = [v.decode() for k, v in scope["headers"] if k.lower() == b"x-request-id"]
        print("echo-saw", *ids, flush=True)
        answer = scope["method"].encode() + b" " + scope["path"].encode() + b" " + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"x-saw-hook", headers.get(b"x-hook", b"none"))]})
        await send({"type": "http.response.body", "body": answer})
"""
"""
Answers C{METHOD /path body}, prints the request ids it saw, and tells in
C{x-saw-hook} what the plugin's C{on_request} hook added to the request.
"""

SINK = """
    import hashlib

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        digest, size, messages = hashlib.sha256(), 0, 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            messages += 1
            if not message.get("more_body"):
                break
        answer = f"{size} {digest.hexdigest()} {messages}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})
"""
"""Answers the size and SHA-256 of the body it read, and in how many messages."""

SLOW = """
    import asyncio
    import os

    HERE = os.path.dirname(os.path.abspath(__file__))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        token = scope["query_string"].decode()
        if scope["path"].endswith("/events"):
            # Server-Sent Events: the first event at once, the last once the
            # test has seen the first and made the release file.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"data: first\\n\\n",
                        "more_body": True})
            release = os.path.join(HERE, "release-" + token)
            for _ in range(2000):
                if os.path.exists(release):
                    break
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"data: last\\n\\n"})
            return
        # /hang: never answers; says when it starts and when its work is stopped.
        print("hang-started", token, flush=True)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
            print("hang-stopped", token, "disconnect", flush=True)
        except asyncio.CancelledError:
            print("hang-stopped", token, "cancelled", flush=True)
            raise
"""

BIG_SIZE = 60 * 1024

BIG = f"""
    def fetch(request):
        return b"x" * {BIG_SIZE}
"""
"""A routes app answering 60 KiB to anything."""

KLEIN = """
    from klein import Klein

    app = Klein()

    @app.route("/hello/<name>")
    def hello(request, name):
        return f"Hello, {name}!"
"""
"""A Klein app."""

WRONG_WSGI = """
    BODIES = {"/long": ("100", b"short"), "/short": ("3", b"hello world"), "/ok": ("2", b"ok")}

    def app(environ, start_response):
        declared, body = BODIES[environ["PATH_INFO"]]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", declared)])
        return [body]
"""
"""A WSGI app whose C{Content-Length} is too long (C{/long}) or too short (C{/short})."""

WRONG_ROUTES = """
    from buntime.http import Response

    def answer(declared, body):
        return lambda request: Response(200, {"content-length": declared}, body)

    routes = {
        "/long": answer("100", b"short"),
        "/short": answer("3", b"hello world"),
        "/ok": answer("2", b"ok"),
    }
"""
"""The same wrong lengths from a routes app."""

HOOKS = """
    from zope.interface import implementer

    from buntime.interfaces import IBuntimePlugin

    @implementer(IBuntimePlugin)
    class Hooks:
        def on_request(self, request, app):
            return request.with_header("x-hook", "on_request")

        def on_response(self, response, app):
            return response.with_header("x-hooked", "on_response")

    def plugin(config):
        return Hooks()
"""
"""A plugin whose hooks mark every request (for the app) and every answer (for the client)."""


class Connection(Protocol):
    """
    One keep-alive connection: send bytes, read whole replies (by their
    framing), or wait for what arrived to match a predicate; C{lost} fires
    when the connection ends.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: list[tuple[int, defer.Deferred[list[bytes]]]] = []
        self.watching: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()
        for entry in list(self.watching):
            if entry[0](self.buffer):
                self.watching.remove(entry)
                entry[1].callback(self.buffer)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def until(self, predicate: Callable[[bytes], bool]) -> defer.Deferred[bytes]:
        """Fires with all that arrived once C{predicate(buffer)} holds."""
        waiter: defer.Deferred[bytes] = defer.Deferred()
        if predicate(self.buffer):
            waiter.callback(self.buffer)
        else:
            self.watching.append((predicate, waiter))
        return waiter

    def replies(self, count: int) -> defer.Deferred[list[bytes]]:
        waiter: defer.Deferred[list[bytes]] = defer.Deferred()
        self.waiting.append((count, waiter))
        self._deliver()
        return waiter

    def _split(self) -> list[bytes]:
        found, rest = [], self.buffer
        while b"\r\n\r\n" in rest:
            head, _, after = rest.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":  # chunked: up to 0 CRLF CRLF
                    end = after.find(b"0\r\n\r\n")
                    length = end + 5 if end >= 0 else len(after) + 1
            if len(after) < length:
                break
            found.append(head + b"\r\n\r\n" + after[:length])
            rest = after[length:]
        return found

    def _deliver(self) -> None:
        if not self.waiting:
            return
        count, waiter = self.waiting[0]
        found = self._split()
        if len(found) >= count:
            self.waiting.pop(0)
            taken = sum(len(reply) for reply in found[:count])
            self.buffer = self.buffer[taken:]
            waiter.callback(found[:count])


# -- the runtimes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http1-apps")
    apps = {
        "echo": ({"maxBodySize": "1kb"}, ECHO),
        "sink": ({"maxBodySize": "100mb"}, SINK),
        "smallsink": ({"maxBodySize": "1mb"}, SINK),
        "slow": ({}, SLOW),
        "big": ({}, BIG),
        "klein": ({}, KLEIN),
        "wrongwsgi": ({}, WRONG_WSGI),
        "wrongroutes": ({}, WRONG_ROUTES),
    }
    for name, (manifest, code) in apps.items():
        manifest = {"ttl": "5m", "entrypoint": "app.py", **manifest}
        write_app(root, name, "1.0.0", manifest=manifest, files={"app.py": code})
    return root


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http1-plugins")
    write_plugin(root, "hooks", {"name": "hooks"}, code=HOOKS)
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path, plugin_dir: Path):
    """The runtime most tests share: the apps above, and the hooks plugin on every request."""
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    env = {"RUNTIME_ENV": "test", "RUNTIME_PLUGIN_DIRS": str(plugin_dir)}
    try:
        yield await factory.start(worker_dirs=[str(worker_dir)], env=env)
    finally:
        await factory.kill_all()


@pytest_twisted.async_yield_fixture(scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory):
    """
    A runtime with a 1 s request-head deadline and room for two connections.
    It is not polled for readiness (a poll's connection could still count
    when a test starts), and its tests leave only connections the runtime
    closed itself, so each test finds both places free.
    """
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    env = {"RUNTIME_HEADER_TIMEOUT": "1s", "RUNTIME_MAX_CONNECTIONS": "2"}
    apps = tmp_path_factory.mktemp("http1-strict-apps")
    try:
        yield await factory.start(worker_dirs=[str(apps)], env=env, wait_ready=False)
    finally:
        await factory.kill_all()


# -- helpers --------------------------------------------------------------------


async def connect(proc: RuntimeProcess) -> Connection:
    from twisted.internet import reactor

    connection = Connection()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port)
    await connectProtocol(endpoint, connection)
    return connection


async def replies(connection: Connection, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    from twisted.internet import reactor

    found = await connection.replies(count).addTimeout(TIMEOUT, reactor)
    return [parse_reply(reply) for reply in found]


async def closed_by_runtime(connection: Connection) -> None:
    from twisted.internet import reactor

    await connection.lost.addTimeout(TIMEOUT, reactor)


async def send(proc: RuntimeProcess, data: bytes) -> bytes:
    """C{data} on a new connection; every byte of the answer, until the runtime closes."""
    from twisted.internet import reactor

    return await raw_request(reactor, proc.port, data, TIMEOUT)


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def token() -> str:
    return str(random.randrange(10**9))


def finished(request_id: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the log line that ends the request C{request_id}."""
    return lambda line: (
        line.get("request_id") == request_id and line.get("action_status") == "succeeded"
    )


def refused(status: int, request_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """Matches a C{buntime:http:refused} log line (of C{request_id} when given)."""
    return lambda line: (
        line.get("message_type") == "buntime:http:refused"
        and line.get("status") == status
        and request_id in (None, line.get("request_id"))
    )


async def app_saw_none_of(proc: RuntimeProcess, hidden: str) -> None:
    """
    The echo app never saw the request C{hidden}: a later request to it is
    seen (its output is in order), and C{hidden} is nowhere in the log.
    """
    after = f"after-{token()}"
    status, _, _ = parse_reply(
        await send(proc, get("/echo/next", f"X-Request-Id: {after}", "Connection: close"))
    )
    assert status == 200
    await proc.wait_for_log(lambda line: line.get("message") == f"echo-saw {after}")
    assert not [line for line in proc.lines if hidden in str(line.get("message"))]


# -- one connection, many requests ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_many_requests_on_one_connection(shared):
    connection = await connect(shared)
    try:
        for number in range(20):
            connection.transport.write(get(f"/echo/{number}"))
            [(status, headers, body)] = await replies(connection, 1)
            assert (status, body) == (200, f"GET /echo/{number} ".encode())
            assert headers["x-request-id"]
            assert "connection" not in headers  # HTTP/1.1: kept open
    finally:
        connection.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_come_back_in_order(shared):
    connection = await connect(shared)
    try:
        connection.transport.write(
            get("/echo/a")
            + b"POST /echo/b HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nposted"
            + get("/echo/c")
        )
        answers = await replies(connection, 3)
    finally:
        connection.transport.loseConnection()
    assert [body for _, _, body in answers] == [
        b"GET /echo/a ",
        b"POST /echo/b posted",
        b"GET /echo/c ",
    ]


@pytest_twisted.ensureDeferred
async def test_a_post_offering_h2c_reaches_the_app_with_its_body(shared):
    # Spring's RestClient and Ktor offer an h2c upgrade on ordinary POSTs: the
    # upgrade is ignored (RFC 9110 §7.8) and the body, chunked or not, is the app's
    offer = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n"
    connection = await connect(shared)
    try:
        connection.transport.write(
            f"POST /echo/a HTTP/1.1\r\nHost: x\r\n{offer}Content-Length: 6\r\n\r\nposted".encode()
            + f"POST /echo/b HTTP/1.1\r\nHost: x\r\n{offer}".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n"
            + get("/echo/c")
        )
        answers = await replies(connection, 3)
    finally:
        connection.transport.loseConnection()
    assert [(status, body) for status, _, body in answers] == [
        (200, b"POST /echo/a posted"),
        (200, b"POST /echo/b chunked"),
        (200, b"GET /echo/c "),
    ]


@pytest_twisted.ensureDeferred
async def test_a_large_pipelined_write_is_answered_in_full(shared):
    """2000 small requests in one write (about 110 KB, read in pieces of 64 KB): 2000 answers."""
    count = 2000
    connection = await connect(shared)
    requests = [get("/", f"X-Request-Id: many-{n}") for n in range(count - 1)]
    connection.transport.write(b"".join(requests) + get("/", "Connection: close"))
    await closed_by_runtime(connection)  # after the last answer, or a refusal
    answers = [parse_reply(reply) for reply in connection._split()]
    assert [status for status, _, _ in answers] == [200] * count
    ids = [headers["x-request-id"] for _, headers, _ in answers[:-1]]
    assert ids == [f"many-{n}" for n in range(count - 1)]


@pytest_twisted.ensureDeferred
async def test_an_app_then_the_api_then_the_app_in_one_write_are_answered_in_order(shared):
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/1") + get("/api/health") + get("/echo/2"))
        answers = await replies(connection, 3)
        connection.transport.write(get("/echo/3"))
        answers += await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[0][2] == b"GET /echo/1 "
    assert answers[1][1]["content-type"] == "application/json" and b'"healthy"' in answers[1][2]
    assert [answers[2][2], answers[3][2]] == [b"GET /echo/2 ", b"GET /echo/3 "]


@pytest_twisted.ensureDeferred
async def test_plugin_hooks_are_on_the_same_path_as_everything_else(shared):
    """
    C{on_request} changes what the app sees and C{on_response} what the
    client gets, on a keep-alive connection, one by one and pipelined; the
    core API (step 5 of the order of resolution) gets no C{on_response}.
    """
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/one"))
        answers = await replies(connection, 1)
        connection.transport.write(get("/echo/two") + get("/api/health") + get("/echo/three"))
        answers += await replies(connection, 3)
    finally:
        connection.transport.loseConnection()
    apps = [answers[0], answers[1], answers[3]]
    assert [body for _, _, body in apps] == [
        b"GET /echo/one ",
        b"GET /echo/two ",
        b"GET /echo/three ",
    ]
    for status, headers, _ in apps:
        assert status == 200
        assert (headers["x-saw-hook"], headers["x-hooked"]) == ("on_request", "on_response")
    status, headers, _ = answers[2]
    assert status == 200 and "x-hooked" not in headers


@pytest_twisted.ensureDeferred
async def test_the_request_id_is_echoed_and_logged_with_app_and_worker(shared):
    request_id = f"http1-{token()}"
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/id", f"X-Request-Id: {request_id}"))
        [(status, headers, _)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 200 and headers["x-request-id"] == request_id
    line = await shared.wait_for_log(finished(request_id))
    assert line["app"] == "echo@1.0.0" and line["worker_id"] and line["status"] == 200
    assert line["message"].startswith("GET /echo/id 200 ")


# -- bodies and answers -----------------------------------------------------------


@pytest.mark.parametrize(
    "expect",
    [
        pytest.param(b"", id="body-started"),
        pytest.param(b"Expect: 100-continue\r\n", id="expect-100-continue"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_body_over_the_app_limit_is_refused_before_it_is_sent(shared, expect):
    """Echo's limit is 1 KB: 5000 bytes are refused on the head alone; the app never sees them."""
    request_id = f"big-{token()}"
    head = b"POST /echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n" + expect
    head += f"X-Request-Id: {request_id}\r\n\r\n".encode()
    # With Expect, the client waits for 100 Continue; without, it has sent
    # some of the body. The rest never comes: the answer may not wait for it.
    reply = await send(shared, head + (b"" if expect else b"x" * 100))
    assert not reply.startswith(b"HTTP/1.1 100")
    status, headers, body = parse_reply(reply)
    assert status == 413 and headers["connection"] == "close"
    assert headers["x-request-id"] == request_id
    assert b'"PAYLOAD_TOO_LARGE"' in body
    await shared.wait_for_log(refused(413, request_id))
    await app_saw_none_of(shared, request_id)


@pytest_twisted.ensureDeferred
async def test_a_chunked_upload_is_refused_as_it_passes_the_app_limit(shared):
    """
    smallsink's limit is 1 MB: a chunked upload of 3 MB, which the app reads
    as it comes, gets 413 once past the limit, and the app goes on serving.
    """
    request_id = f"chunked-{token()}"
    connection = await connect(shared)
    try:
        connection.transport.write(
            b"POST /smallsink@1/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"X-Request-Id: {request_id}\r\n\r\n".encode()
        )
        for _ in range(48):
            connection.transport.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
        [(status, headers, body)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 413 and headers["connection"] == "close"
    assert headers["x-request-id"] == request_id
    assert b'"PAYLOAD_TOO_LARGE"' in body
    answer = await shared.request("POST", "/smallsink@1/", data=b"abc")
    assert answer.code == 200 and (await answer.content()).split()[0] == b"3"


@pytest_twisted.ensureDeferred
async def test_head_gets_headers_only(shared):
    reply = await send(shared, b"HEAD /echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b""
    assert b"content-length: 12" in head.lower()  # of the app's b"HEAD /echo/ ", not sent


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/big/", "/klein/hello/x", "/api/health"])
async def test_head_says_the_length_get_would_send(shared, path):
    """A routes app, a Klein app and the core API: HEAD's length is GET's body's."""
    request = "{} " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _, got = parse_reply(await send(shared, request.format("GET").encode()))
    reply = await send(shared, request.format("HEAD").encode())
    head_status, headers, rest = parse_reply(reply)
    assert status == head_status == 200 and rest == b""
    assert int(headers["content-length"]) == len(got) > 0


@pytest_twisted.ensureDeferred
async def test_a_streamed_answer_arrives_chunked_event_by_event(shared, worker_dir: Path):
    from twisted.internet import reactor

    release = token()
    connection = await connect(shared)
    try:
        connection.transport.write(get(f"/slow/events?{release}"))
        first = await connection.until(lambda data: b"data: first" in data).addTimeout(
            TIMEOUT, reactor
        )
        head = first.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200 ") and b"transfer-encoding: chunked" in head
        assert b"content-length" not in head
        assert b"data: last" not in first  # the app has not finished yet
        (worker_dir / "slow@1.0.0" / f"release-{release}").write_text("")
        [(status, headers, body)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["x-hooked"] == "on_response"  # the hook wraps a stream too
    assert body == b"data: first\n\ndata: last\n\n"


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_request_cancels_the_work(shared):
    hang = token()
    connection = await connect(shared)
    connection.transport.write(get(f"/slow/hang?{hang}", f"X-Request-Id: hang-{hang}"))
    await shared.wait_for_log(lambda line: line.get("message") == f"hang-started {hang}")
    assert connection.buffer == b""  # no answer: the request is in flight
    connection.transport.loseConnection()
    stopped = await shared.wait_for_log(
        lambda line: str(line.get("message")).startswith(f"hang-stopped {hang} ")
    )
    assert stopped["message_type"] == "buntime:worker:output"
    line = await shared.wait_for_log(finished(f"hang-{hang}"))
    assert line["aborted"] is True and line["app"] == "slow@1.0.0"


@pytest.mark.parametrize("app", ["wrongwsgi", "wrongroutes"])
@pytest.mark.parametrize(
    ("path", "declared", "sent"),
    [
        pytest.param("/long", 100, b"short", id="longer-than-the-body"),
        pytest.param("/short", 3, b"hel", id="shorter-than-the-body"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_apps_wrong_content_length_never_desynchronises_the_connection(
    shared, app, path, declared, sent
):
    """
    The client gets the declared C{Content-Length}, at most that many bytes,
    and the end of the connection: a request pipelined behind is not
    answered (nothing of the app's body can pass for its answer).
    """
    reply = await send(shared, get(f"/{app}{path}") + get(f"/{app}/ok"))
    rest = reply.partition(b"\r\n\r\n")[2]
    status, headers, _ = parse_reply(reply)
    assert status == 200 and headers["content-length"] == str(declared)
    assert headers["connection"] == "close"
    assert rest == sent
    # the app and the runtime are fine: the next connection is answered
    status, _, body = parse_reply(await send(shared, get(f"/{app}/ok", "Connection: close")))
    assert (status, body) == (200, b"ok")


# -- abuse ----------------------------------------------------------------------


async def until_steady(
    reactor: Any, count: Callable[[], int], watch: Callable[[], None], quiet: float, timeout: float
) -> None:
    """
    Wait until C{count()} has not changed for C{quiet} seconds (at most
    C{timeout}); C{watch()} is called at each look.
    """
    deadline = reactor.seconds() + timeout
    last, since = -1, reactor.seconds()
    while reactor.seconds() < deadline:
        watch()
        now, seen = reactor.seconds(), count()
        if seen != last:
            last, since = seen, now
        elif now - since >= quiet:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"still answering after {timeout}s ({last} answers)")


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_holds_bounded_memory(shared):
    """
    2000 pipelined requests for 60 KiB each (117 MiB of answers) from a
    client that never reads: the runtime stops reading and answering once
    the client's buffers are full, its memory stays bounded, and other
    clients are answered meanwhile.  (Aborting such a client takes the
    idle timeout, 60 s, which the environment does not change.)
    """
    from twisted.internet import reactor

    warm = await connect(shared)  # the worker is up, a few answers have gone through
    warm.transport.write(get("/big/") * 3)
    assert [len(body) for _, _, body in await replies(warm, 3)] == [BIG_SIZE] * 3
    warm.transport.loseConnection()

    mark = f"dos-{token()}-"
    before = peak = rss_kb(shared.pid)

    def watch() -> None:
        nonlocal peak
        peak = max(peak, rss_kb(shared.pid))

    def answered() -> int:
        return sum(
            1
            for line in shared.lines
            if str(line.get("request_id")).startswith(mark)
            and line.get("action_status") == "succeeded"
        )

    hog = await connect(shared)
    hog.transport.pauseProducing()  # never reads
    try:
        hog.transport.write(b"".join(get("/big/", f"X-Request-Id: {mark}{n}") for n in range(2000)))
        await shared.wait_for_log(finished(f"{mark}0"))
        await until_steady(reactor, answered, watch, quiet=0.5, timeout=15)
        # Another client is answered at once meanwhile.
        other = await connect(shared)
        try:
            other.transport.write(get("/echo/meanwhile"))
            [meanwhile] = await other.replies(1).addTimeout(2, reactor)
        finally:
            other.transport.loseConnection()
    finally:
        hog.transport.abortConnection()
    assert parse_reply(meanwhile)[::2] == (200, b"GET /echo/meanwhile ")
    assert 0 < answered() < 2000
    assert (peak - before) < 50 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_large_upload_reaches_an_app_as_it_arrives_not_held_by_the_runtime(shared, framing):
    """
    50 MB to an ASGI app, with a C{Content-Length} or chunked: it reads the
    body in many messages as it comes, and the runtime, which holds at most
    some 256 KiB of it, does not grow by the upload's size.
    """
    from test_e2e_proxy import BIG, Upload, producer

    upload = Upload(shared.pid)
    before = upload.peak
    answer = await shared.request("POST", "/sink@1/", data=producer(upload, framing))
    size, digest, messages = (await answer.content()).decode().split()
    assert (answer.code, int(size), digest) == (200, BIG, upload.digest.hexdigest())
    assert int(messages) > 100
    grown = upload.peak - before
    assert grown < 25, f"the runtime grew by {grown:.0f} MB for a 50 MB upload"


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Transfer-Encoding: identity\r\n", id="te-identity"),
        pytest.param(
            b"Transfer-Encoding: identity\r\nContent-Length: {length}\r\n", id="te-identity-cl"
        ),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nContent-Length: {length}\r\n", id="te-chunked-cl"
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_request_hidden_in_a_body_is_never_smuggled(shared, framing):
    """
    A framing a lax server reads as "no body" (or as a body of another
    length) would answer the request hidden in it: refused with 400, closed.
    """
    hidden = f"hidden-{token()}"
    inner = f"GET /echo/hidden HTTP/1.1\r\nHost: x\r\nX-Request-Id: {hidden}\r\n\r\n".encode()
    body = b"0\r\n\r\n" + inner
    framing = framing.replace(b"{length}", str(len(body)).encode())
    outer = b"POST /echo/outer HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + body
    reply = await send(shared, outer)
    status, headers, answer = parse_reply(reply)
    assert status == 400 and headers["connection"] == "close"
    assert b'"BAD_REQUEST"' in answer
    assert reply.count(b"HTTP/1.1 ") == 1  # one answer, then the end
    await app_saw_none_of(shared, hidden)


@pytest.mark.parametrize(
    "hosts",
    [pytest.param(b"", id="no-host"), pytest.param(b"Host: a\r\nHost: b\r\n", id="two-hosts")],
)
@pytest_twisted.ensureDeferred
async def test_a_request_without_exactly_one_host_is_refused(shared, hosts):
    reply = await send(shared, b"GET /echo/ HTTP/1.1\r\n" + hosts + b"\r\n")
    status, headers, body = parse_reply(reply)
    assert status == 400 and headers["connection"] == "close"
    assert b'"BAD_REQUEST"' in body and b"Host" in body
    await shared.wait_for_log(refused(400, headers["x-request-id"]))


@pytest_twisted.ensureDeferred
async def test_a_refused_head_keeps_the_clients_request_id(shared):
    request_id = f"nohost-{token()}"
    reply = await send(
        shared, f"GET /echo/ HTTP/1.1\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
    )
    status, headers, _ = parse_reply(reply)
    assert status == 400
    assert headers["x-request-id"] == request_id
    await shared.wait_for_log(refused(400, request_id))


# -- a runtime with small limits ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_head_trickled_slowly_gets_408(strict):
    """A header line every 0.2 s never completes the head: 408 once the 1 s deadline passes."""
    from twisted.internet import reactor

    connection = await connect(strict)
    started = reactor.seconds()
    connection.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    trickle = task.LoopingCall(connection.transport.write, b"X-Slow: still coming\r\n")
    trickle.clock = reactor
    trickle.start(0.2, now=False)
    try:
        await connection.lost.addTimeout(5, reactor)
    finally:
        trickle.stop()
    elapsed = reactor.seconds() - started
    status, headers, body = parse_reply(connection.buffer)
    assert status == 408 and headers["connection"] == "close"
    assert b'"REQUEST_TIMEOUT"' in body
    assert 0.9 <= elapsed < 3, elapsed
    await strict.wait_for_log(refused(408, headers["x-request-id"]))


@pytest_twisted.ensureDeferred
async def test_a_connection_past_the_limit_gets_503(strict):
    first, second = await connect(strict), await connect(strict)
    for connection in (first, second):  # both served, and kept open
        connection.transport.write(get("/"))
        [(status, _, body)] = await replies(connection, 1)
        assert status == 200 and body.startswith(b"Buntime v")

    status, headers, body = parse_reply(await send(strict, get("/")))
    assert status == 503 and headers["retry-after"] == "1"
    assert headers["connection"] == "close" and b'"SERVICE_UNAVAILABLE"' in body
    await strict.wait_for_message("buntime:http:too-many-connections")

    # A connection that ends makes room for the next one.
    first.transport.write(get("/", "Connection: close"))
    await closed_by_runtime(first)
    status, _, _ = parse_reply(await send(strict, get("/", "Connection: close")))
    assert status == 200
    second.transport.write(get("/", "Connection: close"))
    await closed_by_runtime(second)

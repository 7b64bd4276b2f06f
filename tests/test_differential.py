"""
Differential conformance: the same ASGI and WSGI apps served by buntime and
by the reference servers (uvicorn for ASGI, gunicorn's sync worker for WSGI)
get the same raw HTTP/1.1 requests, over plain sockets so nothing normalises
either side, and must give the same answers: status code and reason phrase,
headers (as a multiset, names in lower case), framing (content-length or
chunked), body bytes, streaming timing, and what the app sees of the request
(ASGI scope, WSGI environ).

What is normalised, and why, is listed in L{BUNTIME_ADDS} and
L{REQUEST_HEADERS_ADDED}; the path prefix C{/<app>} buntime mounts the app
under is added to the request target and taken off what the app saw.

One buntime runtime and one reference server of each kind serve the whole
module; each reference server listens on a socket this process bound to
port 0 and passed by file descriptor (C{uvicorn --fd}, C{gunicorn --bind
fd://}).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from attrs import frozen
from e2e_apps import write_app
from runtime import Runtimes
from twisted.internet.threads import deferToThread

pytestmark = pytest.mark.e2e

pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")

HOST = "diff.test"

BUNTIME_ADDS = {
    # docs/http.md "Every answer ... carries server, date and x-request-id":
    # the reference servers send their own server and date, which differ by
    # nature; x-request-id is buntime's, by design.
    "server": "each server names itself",
    "date": "the time of the answer",
    "x-request-id": "buntime's request id (docs/apps.md, What the app sees)",
}
"""Response headers left out of the comparison, with the reason for each."""

REQUEST_HEADERS_ADDED = {
    "x-base": "buntime tells the app its base (docs/apps.md, What the app sees)",
    "x-request-id": "buntime gives every request an id (docs/apps.md, What the app sees)",
}
"""Request headers buntime adds for the app, left out of what the app saw."""


# -- the apps ---------------------------------------------------------------------

ASGI_APP = r"""
import asyncio
import json
import os
from urllib.parse import parse_qs


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def answer(send, status, headers, body=b""):
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    sub = scope["path"][len(scope["root_path"]):]
    query = parse_qs(scope["query_string"].decode())
    case = sub.split("/")[1]
    text = [(b"content-type", b"text/plain; charset=utf-8")]
    if case == "text":
        await answer(send, 200, text, b"hello")
    elif case == "bare":
        await answer(send, 200, [], b"no content-type")
    elif case == "status":
        code = int(sub.split("/")[2])
        body = query.get("body", [""])[0].encode()
        length = [(b"content-length", query["length"][0].encode())] if "length" in query else []
        await answer(send, code, (text if body else []) + length, body)
    elif case == "cookies":
        headers = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"),
                   (b"x-custom", b"one"), (b"x-custom", b"two")]
        await answer(send, 200, headers, b"cookies")
    elif case == "latin1":
        await answer(send, 200, [(b"x-name", "caf\u00e9".encode("latin-1"))], b"ok")
    elif case == "stream":
        signal = query["signal"][0]
        await send({"type": "http.response.start", "status": 200, "headers": text})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        await send({"type": "http.response.body", "body": b"second;", "more_body": True})
        while not os.path.exists(signal):
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"last"})
    elif case == "echo":
        body = await read_body(receive)
        await answer(send, 200, text, body)
    elif case == "scope":
        body = await read_body(receive)
        seen = {
            key: scope[key]
            for key in ("type", "http_version", "method", "scheme", "path", "root_path")
        }
        seen["raw_path"] = scope["raw_path"].decode("latin-1")
        seen["query_string"] = scope["query_string"].decode("latin-1")
        seen["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        seen["asgi"] = scope["asgi"]
        seen["body"] = body.decode("latin-1")
        await answer(send, 200, [(b"content-type", b"application/json")], json.dumps(seen).encode())
    elif case == "raise-before":
        raise RuntimeError("before the response")
    elif case == "raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": text})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("after the response began")
    elif case == "odd-headers":
        headers = [(b"X-Mixed-Case", b"v"), (b"x-empty", b""), (b"x-spaced", b" padded "),
                   (b"content-length", b"2")]
        await answer(send, 200, headers, b"ok")
    elif case == "own-server":
        await answer(send, 200, [(b"server", b"mine"), (b"date", b"yesterday")], b"ok")
    elif case == "no-body-message":
        await send({"type": "http.response.start", "status": 200, "headers": text})
    elif case == "no-response":
        return
    elif case == "empty-chunks":
        await send({"type": "http.response.start", "status": 200, "headers": text})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif case == "long":
        await answer(send, 200, text + [(b"content-length", b"3")], b"0123456789")
    elif case == "short":
        await answer(send, 200, text + [(b"content-length", b"10")], b"012")
    else:
        await answer(send, 404, text, b"not found")
"""

WSGI_APP = r"""
import json
import os
import time
from urllib.parse import parse_qs

TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def app(environ, start_response):
    sub = environ["PATH_INFO"]
    query = parse_qs(environ["QUERY_STRING"])
    case = sub.split("/")[1]
    if case == "text":
        start_response("200 OK", TEXT)
        return [b"hello"]
    if case == "bare":
        start_response("200 OK", [])
        return [b"no content-type"]
    if case == "status":
        status = sub.split("/", 2)[2].replace("_", " ")
        body = query.get("body", [""])[0].encode()
        length = [("Content-Length", query["length"][0])] if "length" in query else []
        start_response(status, (TEXT if body else []) + length)
        return [body]
    if case == "cookies":
        start_response("200 OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                                  ("X-Custom", "one"), ("X-Custom", "two")])
        return [b"cookies"]
    if case == "latin1":
        start_response("200 OK", [("X-Name", "caf\u00e9")])
        return [b"ok"]
    if case == "stream":
        signal = query["signal"][0]
        start_response("200 OK", TEXT)

        def chunks():
            yield b"first;"
            yield b"second;"
            while not os.path.exists(signal):
                time.sleep(0.01)
            yield b"last"

        return chunks()
    if case == "echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", TEXT)
        return [body]
    if case == "environ":
        body = environ["wsgi.input"].read()
        seen = {
            key: value
            for key, value in environ.items()
            if key.startswith("HTTP_")
            or key in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
                       "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_PROTOCOL", "wsgi.url_scheme",
                       "SERVER_NAME", "SERVER_PORT")
        }
        seen["body"] = body.decode("latin-1")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(seen).encode()]
    if case == "raise-before":
        raise RuntimeError("before the response")
    if case == "raise-after":
        start_response("200 OK", TEXT)

        def failing():
            yield b"partial"
            raise RuntimeError("after the response began")

        return failing()
    if case == "odd-headers":
        start_response("200 OK", [("X-Mixed-Case", "v"), ("x-empty", ""),
                                  ("x-spaced", " padded "), ("Content-Length", "2")])
        return [b"ok"]
    if case == "own-server":
        start_response("200 OK", [("Server", "mine"), ("Date", "yesterday")])
        return [b"ok"]
    if case == "write":
        write = start_response("200 OK", TEXT)
        write(b"written;")
        return [b"returned"]
    if case == "no-start":
        return []
    if case == "empty-chunks":
        start_response("200 OK", TEXT)
        return iter([b"", b"a", b"", b""])
    if case == "generator-with-length":
        start_response("200 OK", TEXT + [("Content-Length", "6")])
        return (chunk for chunk in [b"abc", b"def"])
    if case == "long":
        start_response("200 OK", TEXT + [("Content-Length", "3")])
        return [b"0123456789"]
    if case == "short":
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return [b"012"]
    start_response("404 Not Found", TEXT)
    return [b"not found"]
"""


# -- the servers --------------------------------------------------------------------


@frozen
class Server:
    """Where one server listens, and the prefix its app is mounted under."""

    port: int
    prefix: str


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


def reference(tmp: Path, kind: str, source: str) -> Iterator[Server]:
    """Run uvicorn (C{asgi}) or gunicorn (C{wsgi}) on C{source} for the module."""
    home = tmp / kind
    home.mkdir()
    (home / "diffapp.py").write_text(textwrap.dedent(source))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    fd = listener.fileno()
    if kind == "asgi":
        argv = ["-m", "uvicorn", "--app-dir", str(home), "--fd", str(fd)]
        argv += ["--log-level", "warning", "diffapp:app"]
    else:
        argv = ["-m", "gunicorn", "--chdir", str(home), "--bind", f"fd://{fd}"]
        argv += ["--workers", "1", "--worker-class", "sync", "diffapp:app"]
    log = (tmp / f"{kind}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, *argv], pass_fds=[fd], stdout=log, stderr=log, cwd=home
    )
    try:
        yield Server(listener.getsockname()[1], "")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        listener.close()
        log.close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential")


@pytest.fixture(scope="module")
def uvicorn(tmp: Path) -> Iterator[Server]:
    yield from reference(tmp, "asgi", ASGI_APP)


@pytest.fixture(scope="module")
def gunicorn(tmp: Path) -> Iterator[Server]:
    yield from reference(tmp, "wsgi", WSGI_APP)


@pytest_twisted.async_yield_fixture(scope="module")
async def buntime(tmp: Path):
    apps = tmp / "apps"
    write_app(apps, "asgi", files={"app.py": ASGI_APP})
    write_app(apps, "wsgi", files={"app.py": WSGI_APP})
    factory = Runtimes(reactor_())
    try:
        proc = await factory.start(worker_dirs=[str(apps)], env={"RUNTIME_ENV": "test"})
        yield proc
    finally:
        await factory.kill_all()


@pytest.fixture
def pair(request: pytest.FixtureRequest, buntime: Any) -> tuple[Server, Server]:
    """(buntime, reference) for the kind the test is parametrised with."""
    kind = request.param
    ref = request.getfixturevalue("uvicorn" if kind == "asgi" else "gunicorn")
    return Server(buntime.port, f"/{kind}"), ref


BOTH = pytest.mark.parametrize("pair", ["asgi", "wsgi"], indirect=True)
ASGI = pytest.mark.parametrize("pair", ["asgi"], indirect=True)
WSGI = pytest.mark.parametrize("pair", ["wsgi"], indirect=True)


# -- the client ---------------------------------------------------------------------


@frozen
class Reply:
    """An answer as read off the socket: C{framing} is C{length}, C{chunked} or C{close}."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str
    complete: bool
    reset: bool = False

    def comparable(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "headers": sorted((n, v) for n, v in self.headers if n not in BUNTIME_ADDS),
            "body": self.body,
            "framing": self.framing,
            "complete": self.complete,
            "reset": self.reset,
        }


def unframed(reply: Reply) -> Reply:
    """C{reply} without its framing headers (and their kind)."""
    headers = tuple(
        (n, v) for n, v in reply.headers if n not in ("content-length", "transfer-encoding")
    )
    return attrs.evolve(reply, headers=headers, framing="delimited")


def normalise_framing(ours: Reply, ref: Reply, head: bool) -> tuple[Reply, Reply]:
    """
    Two framings that differ by design (docs/apps.md, "Headers the app sets";
    docs/http.md, "What buntime does with an app's answer"):

    - a body the app gives whole (one ASGI body message, a one-item WSGI list)
      gets a content-length of its real size from buntime, where uvicorn and
      gunicorn send it chunked: the same bytes arrive, whole, either way;
    - an answer to HEAD keeps the content-length of the body the app gave,
      where uvicorn and gunicorn send no framing header at all.
    """
    if head and ref.framing == "close" and ours.framing == "length" and not ours.body:
        return unframed(ours), unframed(ref)
    whole = ours.framing == "length" and ours.complete and ref.complete
    if whole and ref.framing == "chunked":
        return unframed(ours), unframed(ref)
    return ours, ref


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if version == "1.1":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """A client socket that reads until the peer closes it, in order or by a reset."""

    def __init__(self, port: int) -> None:
        self.deadline = time.monotonic() + 15
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.received = b""
        self.ended = self.reset = False

    def read_until(self, marker: bytes | None) -> bytes:
        """Read until C{marker} came (C{None}: until the end); all that came."""
        while not self.ended and (marker is None or marker not in self.received):
            self.socket.settimeout(max(0.01, self.deadline - time.monotonic()))
            try:
                data = self.socket.recv(65536)
            except ConnectionResetError:
                data, self.reset = b"", True
            self.received += data
            self.ended = not data
        return self.received


def exchange(port: int, data: bytes, *, first: bytes | None = None, then: Any = None) -> Reply:
    """
    Send C{data}, read the answer until the peer closes.  With C{first},
    reading stops once those bytes came, C{then()} runs (it tells the app to
    finish) and reading goes on: the answer must have streamed C{first}
    before the app finished.
    """
    conn = Connection(port)
    with conn.socket:
        conn.socket.sendall(data)
        if first is not None:
            head = conn.read_until(b"\r\n\r\n")
            seen = conn.read_until(first)
            assert first in seen[head.find(b"\r\n\r\n") + 4 :], f"{first!r} came late: {seen!r}"
            then()
        conn.read_until(None)
    reply = parse(conn.received, to_head=data.startswith(b"HEAD "))
    return attrs.evolve(reply, reset=conn.reset)


def parse(reply: bytes, to_head: bool = False) -> Reply:
    """The answer in C{reply}; C{to_head}: the answer to a HEAD (no body is framed)."""
    if b"\r\n\r\n" not in reply:
        return Reply(0, "(no answer)", (), reply, "none", False)
    head, _, rest = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _version, _, status_reason = status_line.partition(" ")
    code, _, reason = status_reason.partition(" ")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    names = dict(headers)
    if to_head:
        return Reply(int(code), reason, tuple(headers), rest, framing_of(names), not rest)
    if names.get("transfer-encoding", "").lower() == "chunked":
        body, complete = dechunk(rest)
        return Reply(int(code), reason, tuple(headers), body, "chunked", complete)
    if "content-length" in names:
        size = int(names["content-length"])
        return Reply(int(code), reason, tuple(headers), rest, "length", len(rest) == size)
    return Reply(int(code), reason, tuple(headers), rest, "close", True)


def framing_of(headers: dict[str, str]) -> str:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return "chunked"
    return "length" if "content-length" in headers else "close"


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The de-chunked body and whether its last chunk came."""
    out = []
    while True:
        size_line, found, body = body.partition(b"\r\n")
        if not found:
            return b"".join(out), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        if len(body) < size + 2:
            return b"".join(out) + body[:size], False
        out.append(body[:size])
        body = body[size + 2 :]


async def both(
    pair: tuple[Server, Server], method: str, path: str, headers=(), body=b"", **kwargs: Any
) -> tuple[Reply, Reply]:
    """The same request to buntime (under its prefix) and to the reference server."""
    ours, ref = pair
    got = []
    for server in (ours, ref):
        data = request_bytes(method, server.prefix + path, list(headers), body)
        got.append(await deferToThread(exchange, server.port, data, **kwargs))
    return got[0], got[1]


async def same(pair: tuple[Server, Server], method: str, path: str, **kwargs: Any) -> Reply:
    """Assert buntime answers as the reference server does; return buntime's answer."""
    ours, ref = normalise_framing(*await both(pair, method, path, **kwargs), method == "HEAD")
    assert ours.comparable() == ref.comparable()
    return ours


# -- the answers ----------------------------------------------------------------------

ANSWERS = [
    ("GET", "/text"),
    ("GET", "/bare"),
    ("GET", "/cookies"),
    ("GET", "/latin1"),
    ("GET", "/short"),
    ("HEAD", "/text"),
    ("HEAD", "/cookies"),
    ("GET", "/nothing-here"),
    ("GET", "/odd-headers"),
    ("HEAD", "/odd-headers"),
    ("GET", "/empty-chunks"),
    # the app's own Server and Date: gunicorn and buntime drop them (docs/http.md,
    # "hop-by-hop headers ... server, date: dropped"), uvicorn sends both its own
    # and the app's; all of them are left out of the comparison (BUNTIME_ADDS)
    ("GET", "/own-server"),
]

ASGI_ANSWERS: list[tuple[str, str]] = []

WSGI_ANSWERS = [
    ("GET", "/long"),
    ("GET", "/write"),
    ("GET", "/generator-with-length"),
    ("HEAD", "/generator-with-length"),
]


@BOTH
@pytest.mark.parametrize(("method", "path"), ANSWERS)
@pytest_twisted.ensureDeferred
async def test_answer(pair, method, path):
    await same(pair, method, path)


@WSGI
@pytest.mark.parametrize(("method", "path"), WSGI_ANSWERS)
@pytest_twisted.ensureDeferred
async def test_wsgi_answer(pair, method, path):
    await same(pair, method, path)


STATUSES = ["201", "204", "304", "299", "599", "413", "418", "422", "425"]


@BOTH
@pytest.mark.parametrize("body", ["", "payload"])
@pytest.mark.parametrize("code", STATUSES)
@pytest_twisted.ensureDeferred
async def test_status_with_or_without_body(pair, code, body):
    """ASGI: the status alone (no reason to give); WSGI: its standard phrase."""
    ours, ref = pair
    asgi = ours.prefix == "/asgi"
    status = code if asgi else f"{code}_{REASONS[code].replace(' ', '_')}"
    ours, ref = normalise_framing(*await both(pair, "GET", f"/status/{status}?body={body}"), False)
    if asgi and ref.reason in RFC9110_PHRASES:
        ref = attrs.evolve(ref, reason=RFC9110_PHRASES[ref.reason])
    assert ours.comparable() == ref.comparable()


RFC9110_PHRASES = {
    "Request Entity Too Large": "Content Too Large",
    "Unprocessable Entity": "Unprocessable Content",
}
"""
The phrases uvicorn takes from C{http.HTTPStatus} before Python 3.13, and
the RFC 9110 ones buntime gives on every Python (docs/http.md, "The reason
phrase is the app's own when it gave one ... otherwise").
"""


REASONS = {
    "200": "OK",
    "201": "Created",
    "204": "No Content",
    "304": "Not Modified",
    "299": "Custom Thing",
    "599": "",
    "413": "Request Entity Too Large",
    "418": "I'm a Teapot",
    "422": "Unprocessable Entity",
    "425": "Too Early",
}


@BOTH
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("code", "body"), [("200", ""), ("304", ""), ("204", ""), ("200", "abc")])
@pytest_twisted.ensureDeferred
async def test_declared_length_without_the_body(pair, method, code, body):
    """
    A content-length the app declares for a body it does not send (a HEAD, a
    304).  On a 204 or 304 buntime sends none (docs/http.md, "204, 304: no
    body, no content-length"), where uvicorn passes the app's on (on a 204
    too, which RFC 9110 §8.6 forbids) and gunicorn on a 304 (which it allows).
    """
    status = code if pair[0].prefix == "/asgi" else f"{code}_{REASONS[code].replace(' ', '_')}"
    path = f"/status/{status}?length=7&body={body}"
    if code in ("204", "304"):
        ours, ref = await both(pair, method, path)
        assert "content-length" not in dict(ours.headers)
        assert (
            unframed(ours).comparable() == attrs.evolve(unframed(ref), complete=True).comparable()
        )
    else:
        await same(pair, method, path)


@WSGI
@pytest.mark.parametrize("status", ["299_", "599_Net_Gone", "200_Fine_Thanks"])
@pytest_twisted.ensureDeferred
async def test_wsgi_reason_phrase(pair, status):
    """A WSGI app's own reason phrase, empty or not, is the one sent."""
    await same(pair, "GET", f"/status/{status}")


# -- streaming ----------------------------------------------------------------------


STREAMS = [
    ("asgi", "1.1"),
    ("wsgi", "1.1"),
    # HTTP/1.0: the body ends with the connection.  Not for uvicorn, which
    # sends chunks to an HTTP/1.0 client (RFC 9112 §7.1 forbids it)
    ("wsgi", "1.0"),
]


@pytest.mark.parametrize(("pair", "version"), STREAMS, indirect=["pair"])
@pytest_twisted.ensureDeferred
async def test_streamed_body(pair, tmp, version):
    """The framing, and the first chunk reaches the client before the app ends."""
    replies = []
    for server in pair:
        name = f"signal-{server.prefix.strip('/') or 'ref'}-{server.port}-{version}"
        signal = tmp / name
        data = request_bytes("GET", f"{server.prefix}/stream?signal={signal}", version=version)
        reply = await deferToThread(exchange, server.port, data, first=b"first;", then=signal.touch)
        replies.append(reply)
    ours, ref = replies
    assert ours.comparable() == ref.comparable()
    assert ours.body == b"first;second;last"


# -- errors -------------------------------------------------------------------------


FAILING_EARLY = [
    ("asgi", "/raise-before"),
    ("asgi", "/no-response"),
    ("wsgi", "/raise-before"),
    # a WSGI app that never calls start_response: buntime answers 500, gunicorn
    # sends "HTTP/1.1 None" (its bug): not compared.
]


@pytest.mark.parametrize(("pair", "path"), FAILING_EARLY, indirect=["pair"])
@pytest_twisted.ensureDeferred
async def test_app_fails_before_answering(pair, path):
    """Both answer 500 (their bodies differ: each has its own error page)."""
    ours, ref = await both(pair, "GET", path)
    assert (ours.status, ref.status) == (500, 500)


@ASGI
@pytest_twisted.ensureDeferred
async def test_asgi_app_returns_after_the_start_only(pair):
    """
    An app that returns after C{http.response.start} without a body message:
    uvicorn has sent the head and cuts the answer; buntime holds the head
    until the first body message (docs/apps.md, ASGI), so it can still
    answer 500.  Either way the client knows the answer failed.
    """
    ours, ref = await both(pair, "GET", "/no-body-message")
    assert (ref.status, ref.complete) == (200, False)
    assert (ours.status, ours.complete) == (500, True)


@ASGI
@pytest_twisted.ensureDeferred
async def test_asgi_body_longer_than_its_content_length(pair):
    """
    uvicorn raises in the app's C{send} and cuts the answer before its body;
    buntime sends the declared length and closes (docs/http.md, "a body given
    whole with a content-length that differs"), as gunicorn does for WSGI.
    """
    ours, ref = await both(pair, "GET", "/long")
    assert (ref.status, ref.body, ref.complete, ref.reset) == (200, b"", False, False)
    assert (ours.status, ours.body, ours.complete, ours.reset) == (200, b"012", True, False)


@BOTH
@pytest_twisted.ensureDeferred
async def test_raise_after_the_response_began(pair):
    """The client gets the beginning and a truncated answer, never a complete one."""
    ours, ref = await both(pair, "GET", "/raise-after")
    assert ours.comparable() == ref.comparable()
    assert not ours.complete


# -- request bodies ------------------------------------------------------------------


@BOTH
@pytest_twisted.ensureDeferred
async def test_request_body_with_length(pair):
    await same(pair, "POST", "/echo", headers=[("Content-Length", "11")], body=b"hello world")


@BOTH
@pytest_twisted.ensureDeferred
async def test_request_body_chunked(pair):
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    await same(pair, "POST", "/echo", headers=[("Transfer-Encoding", "chunked")], body=body)


# -- what the app sees -----------------------------------------------------------------

TARGETS = [
    "/x?q=a%20b+c%25d&e=%2F",
    "/a%2Fb/c%20d",
    "/caf%C3%A9/%E2%82%AC?na%C3%AFve=1",
    "/x/?",
    "/x;p=1/y",
]

NO_HEADERS: list[tuple[str, str]] = []

CHUNKED_HEADERS = [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")]

REQUEST_HEADERS = [
    ("X-Dup", "one"),
    ("X-Dup", "two"),
    ("Accept", "text/plain"),
    ("Content-Type", "text/plain; charset=latin-1"),
    ("X-Latin", "caf\u00e9"),
    ("Content-Length", "4"),
]


REQUESTS = {
    "get": ("GET", NO_HEADERS, b""),
    "post": ("POST", REQUEST_HEADERS, b"data"),
    "chunked": ("PUT", CHUNKED_HEADERS, b"4\r\ndata\r\n0\r\n\r\n"),
}
"""A request without a body, one with headers and a body, one with a chunked body."""


async def seen_by_app(pair, kind: str, target: str, case: str) -> tuple[Any, Any]:
    method, headers, body = REQUESTS[kind]
    ours, ref = await both(pair, method, f"/{case}{target}", headers=headers, body=body)
    assert (ours.status, ref.status) == (200, 200), (ours, ref)
    return json.loads(ours.body), json.loads(ref.body)


@ASGI
@pytest.mark.parametrize("kind", list(REQUESTS))
@pytest.mark.parametrize("target", TARGETS)
@pytest_twisted.ensureDeferred
async def test_asgi_scope(pair, target, kind):
    ours, ref = await seen_by_app(pair, kind, target, "scope")
    prefix = pair[0].prefix
    assert ours["root_path"] == prefix and ref["root_path"] == ""
    assert ours["path"].startswith(prefix) and ours["raw_path"].startswith(prefix)
    for key in ("root_path", "path", "raw_path"):
        ours[key] = ours[key][len(prefix) :] if key != "root_path" else ""
    ours["headers"] = [h for h in ours["headers"] if h[0] not in REQUEST_HEADERS_ADDED]
    assert ours == ref


@WSGI
@pytest.mark.parametrize("kind", list(REQUESTS))
@pytest.mark.parametrize("target", TARGETS)
@pytest_twisted.ensureDeferred
async def test_wsgi_environ(pair, target, kind):
    ours, ref = await seen_by_app(pair, kind, target, "environ")
    assert ours.pop("SCRIPT_NAME") == pair[0].prefix and ref.pop("SCRIPT_NAME") == ""
    # docs/apps.md: SERVER_NAME / SERVER_PORT come from Host, as gunicorn
    # gives them on a unix socket; on TCP gunicorn gives its listening address
    assert (ours.pop("SERVER_NAME"), ours.pop("SERVER_PORT")) == (HOST, "80")
    assert (ref.pop("SERVER_NAME"), ref.pop("SERVER_PORT")) == ("127.0.0.1", str(pair[1].port))
    for name in REQUEST_HEADERS_ADDED:
        ours.pop("HTTP_" + name.upper().replace("-", "_"), None)
    assert ours == ref

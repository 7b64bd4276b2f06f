"""
The front door's fast lane through a real runtime: worker-app requests
answered without twisted.web, on keep-alive connections that may turn to
twisted.web half-way (the core API), pipelined requests in order, bodies
over the app's limit refused unread, streamed answers sent as they come, and
the work of a client that leaves cancelled.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import parse_reply, raw_request, write_app
from runtime import Runtimes
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

pytestmark = pytest.mark.e2e

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
        ids = [v.decode() for k, v in scope["headers"] if k.lower() == b"x-request-id"]
        print("echo-saw", *ids, flush=True)
        answer = scope["method"].encode() + b" " + scope["path"].encode() + b" " + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": answer})
"""


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


class Connection(Protocol):
    """One keep-alive connection: send bytes, read whole replies (content-length)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: list[tuple[int, defer.Deferred[list[bytes]]]] = []
        self.watching: list[tuple[Any, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()
        for entry in list(self.watching):
            if entry[0](self.buffer):
                self.watching.remove(entry)
                entry[1].callback(self.buffer)

    def until(self, predicate: Any) -> defer.Deferred[bytes]:
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


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fastlane-apps")
    write_app(
        root,
        "echo",
        "1.0.0",
        manifest={"ttl": "5m", "entrypoint": "app.py", "maxBodySize": "1kb"},
        files={"app.py": ECHO},
    )
    write_app(
        root,
        "slow",
        "1.0.0",
        manifest={"ttl": "5m", "entrypoint": "app.py"},
        files={"app.py": SLOW},
    )
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path):
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield await factory.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    finally:
        await factory.kill_all()


async def connect(proc: Any) -> Connection:
    from twisted.internet import reactor

    connection = Connection()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port)
    await connectProtocol(endpoint, connection)
    return connection


async def replies(connection: Connection, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    from twisted.internet import reactor

    found = await connection.replies(count).addTimeout(20, reactor)
    return [parse_reply(reply) for reply in found]


def lane(reply: bytes) -> str:
    """Which side wrote C{reply}: the fast lane writes C{server} first, in lower case."""
    return "fast" if reply.split(b"\r\n")[1].startswith(b"server: ") else "twisted.web"


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_many_requests_on_one_connection(shared):
    from twisted.internet import reactor

    connection = await connect(shared)
    try:
        for number in range(20):
            connection.transport.write(get(f"/echo/{number}"))
            [reply] = await connection.replies(1).addTimeout(20, reactor)
            status, headers, body = parse_reply(reply)
            assert (status, body) == (200, f"GET /echo/{number} ".encode())
            assert headers["x-request-id"] and lane(reply) == "fast"
    finally:
        connection.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_come_back_in_order(shared):
    connection = await connect(shared)
    try:
        body = b"posted"
        connection.transport.write(
            get("/echo/a")
            + b"POST /echo/b HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n"
            + body
            + get("/echo/c")
        )
        answers = await replies(connection, 3)
        assert [answer[2] for answer in answers] == [
            b"GET /echo/a ",
            b"POST /echo/b posted",
            b"GET /echo/c ",
        ]
    finally:
        connection.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_connection_turns_to_twisted_web_for_the_api_and_keeps_working(shared):
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/first"))
        [first] = await replies(connection, 1)
        connection.transport.write(get("/api/health"))
        [health] = await replies(connection, 1)
        connection.transport.write(get("/echo/after"))
        [after] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert first[2] == b"GET /echo/first "
    assert health[0] == 200 and b'"status"' in health[2]
    assert after[0] == 200 and after[2] == b"GET /echo/after "  # answered by twisted.web now


@pytest_twisted.ensureDeferred
async def test_an_app_then_the_api_then_the_app_in_one_write_are_answered_in_order(shared):
    from twisted.internet import reactor

    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/1") + get("/api/health") + get("/echo/2"))
        found = await connection.replies(3).addTimeout(20, reactor)
        connection.transport.write(get("/echo/3"))
        found += await connection.replies(1).addTimeout(20, reactor)
    finally:
        connection.transport.loseConnection()
    assert [lane(reply) for reply in found] == ["fast", "twisted.web", "twisted.web", "twisted.web"]
    answers = [parse_reply(reply) for reply in found]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[0][2] == b"GET /echo/1 " and b'"status"' in answers[1][2]
    assert [answers[2][2], answers[3][2]] == [b"GET /echo/2 ", b"GET /echo/3 "]


@pytest_twisted.ensureDeferred
async def test_the_request_id_is_echoed_and_logged_with_app_and_worker(shared):
    request_id = f"fast-{random.randrange(10**9)}"
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/id", f"X-Request-Id: {request_id}"))
        [(status, headers, _)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 200 and headers["x-request-id"] == request_id
    line = await shared.wait_for_log(
        lambda line: (
            line.get("request_id") == request_id and line.get("action_status") == "succeeded"
        )
    )
    assert line["app"] == "echo@1.0.0" and line["worker_id"] and line["status"] == 200
    assert line["message"].startswith("GET /echo/id 200 ")


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_app_limit_is_refused_before_it_is_sent(shared):
    from twisted.internet import reactor

    refused, after = (f"{kind}-{random.randrange(10**9)}" for kind in ("big", "after"))
    reply = await raw_request(
        reactor,
        shared.port,
        b"POST /echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
        + f"X-Request-Id: {refused}\r\n\r\n".encode()
        + b"x" * 100,  # the rest never comes: the answer may not wait for it
    )
    status, headers, body = parse_reply(reply)
    assert status == 413 and headers["connection"] == "close"
    assert headers["x-request-id"] == refused
    assert b"PAYLOAD_TOO_LARGE" in body
    logged = await shared.wait_for_message("buntime:http:body-rejected")
    assert logged["request_id"] == refused and logged["status"] == 413
    # The app never saw it: a later request on the same app is seen, that one is not.
    connection = await connect(shared)
    try:
        connection.transport.write(get("/echo/next", f"X-Request-Id: {after}"))
        [(status, _, _)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 200
    await shared.wait_for_log(lambda line: line.get("message") == f"echo-saw {after}")
    assert not [line for line in shared.lines if refused in str(line.get("message"))]


@pytest_twisted.ensureDeferred
async def test_head_gets_headers_only(shared):
    from twisted.internet import reactor

    reply = await raw_request(
        reactor, shared.port, b"HEAD /echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b""
    assert b"content-length: 12" in head.lower()  # of the app's b"HEAD /echo/ ", not sent


@pytest_twisted.ensureDeferred
async def test_a_streamed_answer_arrives_chunked_event_by_event(shared, worker_dir: Path):
    from twisted.internet import reactor

    token = str(random.randrange(10**9))
    connection = await connect(shared)
    try:
        connection.transport.write(get(f"/slow/events?{token}"))
        first = await connection.until(lambda data: b"data: first" in data).addTimeout(20, reactor)
        head = first.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200 ") and b"transfer-encoding: chunked" in head
        assert b"content-length" not in head
        assert b"data: last" not in first  # the app has not finished yet
        (worker_dir / "slow@1.0.0" / f"release-{token}").write_text("")
        [(status, headers, body)] = await replies(connection, 1)
    finally:
        connection.transport.loseConnection()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert body == b"data: first\n\ndata: last\n\n"


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_request_cancels_the_work(shared):
    token = str(random.randrange(10**9))
    connection = await connect(shared)
    connection.transport.write(get(f"/slow/hang?{token}", f"X-Request-Id: hang-{token}"))
    await shared.wait_for_log(lambda line: line.get("message") == f"hang-started {token}")
    assert connection.buffer == b""  # no answer: the request is in flight
    connection.transport.loseConnection()
    stopped = await shared.wait_for_log(
        lambda line: str(line.get("message")).startswith(f"hang-stopped {token} ")
    )
    assert stopped["message_type"] == "buntime:worker:output"
    line = await shared.wait_for_log(
        lambda line: (
            line.get("request_id") == f"hang-{token}" and line.get("action_status") == "succeeded"
        )
    )
    assert line["aborted"] is True and line["app"] == "slow@1.0.0"

"""
WebSockets to worker apps end to end: a real C{twistd -n buntime}, a
FastAPI app in a real worker, and the C{websockets} package's client (run in
a thread: it is a blocking client, independent of Twisted and of autobahn,
which the runtime uses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import parse_reply, raw_request, within, write_app
from runtime import Runtimes
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

CHAT = """
    from fastapi import FastAPI, WebSocket

    app = FastAPI()

    @app.websocket("/ws")
    async def chat(websocket: WebSocket):
        offered = websocket.scope["subprotocols"]
        await websocket.accept(
            subprotocol="chat" if "chat" in offered else None, headers=[(b"x-app", b"chat")]
        )
        await websocket.send_json(
            {
                "root_path": websocket.scope["root_path"],
                "path": websocket.url.path,
                "query": websocket.url.query,
                "scheme": websocket.url.scheme,
            }
        )
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                print(f"client left with {message['code']}", flush=True)
                return
            if message.get("text") == "close":
                await websocket.close(4001, "asked to")
                return
            if message.get("text") is not None:
                await websocket.send_text("echo:" + message["text"])
            else:
                await websocket.send_bytes(b"bin:" + message["bytes"])

    @app.websocket("/deny")
    async def deny(websocket: WebSocket):
        await websocket.close(code=1008)

    @app.get("/")
    async def index():
        return {"ok": True}
"""

WSGI = """
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a page"]
"""


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("websocket-apps")
    write_app(root, "chat", manifest={"entrypoint": "app.py"}, files={"app.py": CHAT})
    write_app(root, "pages", manifest={"entrypoint": "app.py"}, files={"app.py": WSGI})
    return root


def in_thread(function: Any, *args: Any) -> Deferred[Any]:
    """C{function(*args)} in a thread; fails after 20 seconds."""
    from twisted.internet import reactor

    return deferToThread(function, *args).addTimeout(20, reactor)


def conversation(port: int) -> dict[str, Any]:
    """Everything one client sees: handshake, messages both ways, the app's close."""
    seen: dict[str, Any] = {}
    url = f"ws://127.0.0.1:{port}/chat/ws?room=1"
    with connect(url, subprotocols=["chat"], open_timeout=10, max_size=None) as ws:
        seen["subprotocol"] = ws.subprotocol
        seen["x-app"] = ws.response.headers.get("x-app")
        seen["request id"] = ws.response.headers.get("x-request-id")
        seen["hello"] = json.loads(ws.recv(timeout=10))
        ws.send("hé")
        seen["text"] = ws.recv(timeout=10)
        ws.send(b"\x00\xff")
        seen["bytes"] = ws.recv(timeout=10)
        big = os.urandom(300_000)  # several pieces over the worker channel, both ways
        ws.send(big)
        seen["big echoed"] = ws.recv(timeout=10) == b"bin:" + big
        ws.send("close")
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            seen["close"] = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
    return seen


def refused(port: int, path: str) -> tuple[int, bytes]:
    try:
        with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10):
            pass
    except InvalidStatus as error:
        return error.response.status_code, error.response.body or b""
    raise AssertionError(f"{path} accepted the WebSocket")


def leave(port: int, code: int) -> str:
    """Open, read the greeting, and close with C{code}."""
    with connect(f"ws://127.0.0.1:{port}/chat/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        ws.close(code)
    return "left"


def stay(port: int, ready: Any) -> tuple[int, str] | None:
    """Open and wait for the server to close; C{ready} is called once open."""
    with connect(f"ws://127.0.0.1:{port}/chat/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        ready()
        try:
            ws.recv(timeout=20)
        except ConnectionClosed as closed:
            return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
    return None


def client_left(code: int):
    return lambda line: (
        line.get("message_type") == "buntime:worker:output"
        and f"client left with {code}" in str(line.get("message"))
    )


@pytest_twisted.ensureDeferred
async def test_a_fastapi_websocket_end_to_end(apps: Path, runtimes: Runtimes) -> None:
    proc = await runtimes.start(worker_dirs=[str(apps)])
    seen = await in_thread(conversation, proc.port)
    assert seen["subprotocol"] == "chat" and seen["x-app"] == "chat"
    assert seen["hello"] == {
        "root_path": "/chat",
        "path": "/chat/ws",
        "query": "room=1",
        "scheme": "ws",
    }
    assert (seen["text"], seen["bytes"], seen["big echoed"]) == ("echo:hé", b"bin:\x00\xff", True)
    assert seen["close"] == (4001, "asked to")
    upgraded = await proc.wait_for_log(
        lambda line: line.get("request_id") == seen["request id"] and line.get("status") == 101
    )
    assert (upgraded["app"], upgraded["upgrade"], upgraded["aborted"]) == (
        "chat@latest",
        "websocket",
        False,
    )
    closed = await proc.wait_for_message("buntime:websocket:closed")
    assert (closed["request_id"], closed["app"], closed["code"]) == (
        seen["request id"],
        "chat@latest",
        4001,
    )

    # the app's denial, and a WSGI app's clear refusal
    assert await in_thread(refused, proc.port, "/chat/deny") == (403, b"")
    status, body = await in_thread(refused, proc.port, "/pages/")
    assert status == 501
    assert json.loads(body)["error"]["code"] == "WEBSOCKET_UNSUPPORTED"
    page = await proc.get("/pages/")
    assert page.code == 200  # without an upgrade, the same path is a page

    # a client that closes: the app hears its code and its call ends
    assert await in_thread(leave, proc.port, 1000) == "left"
    await proc.wait_for_log(client_left(1000))

    # a handshake no WebSocket can follow is refused before the app runs, as uvicorn does
    # (it was accepted by the app, then refused, or with version 8 answered 101)
    from twisted.internet import reactor

    for key, version in [(None, "13"), ("short", "13"), ("dGhlIHNhbXBsZSBub25jZQ==", "8")]:
        head = "GET /chat/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        head += "Connection: Upgrade, close\r\n" + f"Sec-WebSocket-Version: {version}\r\n"
        head += f"Sec-WebSocket-Key: {key}\r\n" if key else ""
        status, headers, body = parse_reply(
            await raw_request(reactor, proc.port, head.encode() + b"\r\n")
        )
        assert (status, headers["sec-websocket-version"]) == (400, "13"), (key, version)
        assert json.loads(body)["error"]["code"] == "BAD_REQUEST"
    assert not any(client_left(1006)(line) for line in proc.lines)


@pytest_twisted.ensureDeferred
async def test_stopping_closes_open_sockets_with_1001(apps: Path, runtimes: Runtimes) -> None:
    from twisted.internet import reactor

    proc = await runtimes.start(worker_dirs=[str(apps)])
    opened: Deferred[None] = Deferred()
    staying = in_thread(stay, proc.port, lambda: reactor.callFromThread(opened.callback, None))
    await within(reactor, opened, 20)
    status = await proc.stop()
    assert status in (0, -15)
    assert await staying == (1001, "going away")
    assert any(client_left(1001)(line) for line in proc.lines)

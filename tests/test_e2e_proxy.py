"""
The proxy plugin end to end: a real C{twistd -n buntime} with the built-in
proxy turned on by a manifest, in front of real upstream servers on
127.0.0.1 (twisted.web and an autobahn WebSocket echo, in this process).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from e2e_apps import static_app
from test_e2e_websocket import connect, within
from test_plugins_support import write_plugin
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.client import FileBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

pytestmark = pytest.mark.e2e

INTERNAL = {"x-buntime-internal": "true"}
"""A change from this machine's tools: the CSRF rule's exemption (docs/api.md)."""

MB = 1024 * 1024
BIG = 50 * MB


class Echo(Resource):
    """What the upstream was asked: method, path, headers and body, as JSON."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"x-upstream", b"yes")
        request.setHeader(b"keep-alive", b"timeout=5")  # hop-by-hop: never passed on
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": [
                    [name.decode().lower(), value.decode()]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "body": request.content.read().decode(),
            }
        ).encode()


class Big(Resource):
    """C{BIG} bytes, written only as fast as the reader takes them."""

    isLeaf = True

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"content-length", str(BIG).encode())
        chunk = b"x" * (64 * 1024)
        state = {"left": BIG}

        class Producer:
            def resumeProducing(self) -> None:
                if state["left"] <= 0:
                    request.unregisterProducer()
                    request.finish()
                    return
                state["left"] -= len(chunk)
                request.write(chunk)

            def pauseProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                state["left"] = 0

        request.registerProducer(Producer(), False)
        return NOT_DONE_YET


class Sink(Resource):
    """An upload's size, SHA-256 and chunked-or-not, as JSON."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        digest, size = hashlib.sha256(), 0
        request.content.seek(0)
        while chunk := request.content.read(MB):
            digest.update(chunk)
            size += len(chunk)
        length = (request.getHeader(b"content-length") or b"").decode() or None
        return json.dumps({"size": size, "sha256": digest.hexdigest(), "length": length}).encode()


class Upload(io.RawIOBase):
    """
    C{BIG} bytes made as they are read (a file for C{FileBodyProducer}, so
    the upload has a length), the runtime's RSS sampled every 8 MB.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.at = 0
        self.peak = rss_mb(pid)
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.at

    def seek(self, offset: int, whence: int = 0) -> int:
        self.at = {0: offset, 1: self.at + offset, 2: BIG + offset}[whence]
        return self.at

    def read(self, size: int = -1) -> bytes:
        size = min(BIG - self.at, 64 * 1024 if size < 0 else size)
        chunk = bytes([self.at // MB % 256]) * size
        if self.at // (8 * MB) != (self.at + size) // (8 * MB):
            self.peak = max(self.peak, rss_mb(self.pid))
        self.at += size
        self.digest.update(chunk)
        return chunk


class Chunked:
    """A body of no known length (an L{Upload}, say): treq sends it chunked."""

    def __init__(self, source: Any) -> None:
        self.read = source.read

    def close(self) -> None:
        pass


def producer(upload: Upload, framing: str) -> FileBodyProducer:
    """C{upload} as a body: with its C{Content-Length}, or C{chunked}."""
    return FileBodyProducer(upload if framing == "length" else Chunked(upload))


class Slow(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> int:
        return NOT_DONE_YET  # never answers


class EchoSocket(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(b"upstream:" + payload, isBinary)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def upstream():
    root = Resource()
    root.putChild(b"echo", Echo())
    root.putChild(b"big", Big())
    root.putChild(b"slow", Slow())
    root.putChild(b"sink", Sink())
    site = Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    sockets = WebSocketServerFactory(reactor=reactor)
    sockets.protocol = EchoSocket
    ws_port = reactor.listenTCP(0, sockets, interface="127.0.0.1")
    yield port.getHost().port, ws_port.getHost().port
    port.stopListening()
    ws_port.stopListening()


async def start_proxy(
    runtimes: Any,
    tmp_path: Any,
    rules: list[dict[str, Any]],
    env: dict[str, str] | None = None,
    **settings: Any,
):
    plugins = tmp_path / "plugins"
    manifest = {"name": "@buntime/plugin-proxy", "enabled": True, "rules": rules, **settings}
    write_plugin(plugins, "proxy", manifest)
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    env = {
        "RUNTIME_PLUGIN_DIRS": str(plugins),
        "RUNTIME_DATA_DIR": str(tmp_path / "data"),
        **(env or {}),
    }
    return await runtimes.start(worker_dirs=[str(apps)], env=env)


@pytest_twisted.ensureDeferred
async def test_requests_go_upstream_and_come_back_as_a_proxy_sends_them(
    runtimes, tmp_path, upstream
):
    port, _ = upstream
    # an app at the rule's path: the rule wins (the proxy answers in on_request)
    static_app(tmp_path / "apps", "up", None, "the up app", layout="simple")
    static_app(tmp_path / "apps", "other", None, "the other app", layout="simple")
    proc = await start_proxy(
        runtimes,
        tmp_path,
        [
            {
                "id": "up",
                "pattern": "^/up/(.*)",
                "target": f"http://127.0.0.1:{port}",
                "rewrite": "/$1",
                "headers": {"x-from-rule": "1"},
            },
            {"id": "dead", "pattern": "^/dead", "target": f"http://127.0.0.1:{closed_port()}"},
            {"id": "slow", "pattern": "^/slow", "target": f"http://127.0.0.1:{port}"},
        ],
        timeout="1s",
    )
    answer = await proc.request(
        "POST",
        "/up/echo?q=1",
        data=b"payload",
        headers={"connection": "keep-alive, x-hop", "x-hop": "secret", "x-keep": "kept"},
    )
    assert answer.code == 200
    assert answer.headers.getRawHeaders("x-upstream") == ["yes"]
    assert answer.headers.getRawHeaders("keep-alive") is None
    seen = json.loads(await answer.content())
    assert (seen["method"], seen["uri"], seen["body"]) == ("POST", "/echo?q=1", "payload")
    headers = dict(seen["headers"])
    assert "x-hop" not in headers and headers["x-keep"] == "kept"
    assert headers["x-from-rule"] == "1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == headers["host"] == f"127.0.0.1:{proc.port}"
    assert headers["x-request-id"]  # the request's id goes upstream too

    refused = await proc.get("/dead/x")
    assert refused.code == 502
    assert (await refused.json())["error"]["code"] == "BAD_GATEWAY"

    started = reactor.seconds()
    late = await proc.get("/slow")
    assert late.code == 504
    assert (await late.json())["error"]["code"] == "GATEWAY_TIMEOUT"
    assert reactor.seconds() - started < 5

    # Apps and the runtime's own routes are not in the way of each other.
    assert (await proc.get("/api/health")).code == 200
    assert (await proc.get("/nothing-here")).code == 404
    assert b"the other app" in await (await proc.get("/other/")).content()
    assert (await proc.get("/up/echo")).headers.getRawHeaders("x-upstream") == ["yes"]


@pytest_twisted.ensureDeferred
async def test_with_the_gateway_on_proxied_requests_are_limited_and_labelled(
    runtimes, tmp_path, upstream
):
    # vhosts on too: the gateway then loads after it, and the proxy after the gateway
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "vhosts", {"name": "@buntime/plugin-vhosts", "enabled": True})
    gateway = {
        "name": "@buntime/plugin-gateway",
        "enabled": True,
        "rateLimit": {
            "requests": 2,
            "window": "1h",
            "keyBy": "header:x-client",
            "excludePaths": ["/api"],
        },
        "cors": {"origins": ["https://app.example"]},
    }
    write_plugin(plugins, "gateway", gateway)
    port, _ = upstream
    target = f"http://127.0.0.1:{port}"
    rules = [{"id": "up", "pattern": "^/up/(.*)", "target": target, "rewrite": "/$1"}]
    proc = await start_proxy(runtimes, tmp_path, rules)
    loaded = [plugin["name"] for plugin in await (await proc.get("/api/plugins/loaded")).json()]
    assert loaded.index("@buntime/plugin-gateway") < loaded.index("@buntime/plugin-proxy")

    origin = {"origin": "https://app.example", "x-client": "c1"}
    refused = await proc.request(
        "OPTIONS",
        "/up/echo",
        headers={"origin": "https://evil.example", "access-control-request-method": "PUT"},
    )
    assert refused.code == 403  # the gateway's answer: the preflight is not proxied
    answers = [await proc.get("/up/echo", headers=origin) for _ in range(3)]
    assert [answer.code for answer in answers] == [200, 200, 429]
    for answer, left in zip(answers, ["1", "0", "0"], strict=True):
        headers = answer.headers
        assert headers.getRawHeaders("x-ratelimit-remaining") == [left]
        assert headers.getRawHeaders("access-control-allow-origin") == ["https://app.example"]
        assert "Origin" in headers.getRawHeaders("vary")[0]
    assert answers[0].headers.getRawHeaders("x-upstream") == ["yes"]


@pytest_twisted.ensureDeferred
async def test_the_proxy_is_off_until_a_manifest_turns_it_on(runtimes, tmp_path):
    apps = tmp_path / "apps"
    static_app(apps, "up", None, "the up app", layout="simple")
    proc = await runtimes.start(
        worker_dirs=[str(apps)], env={"RUNTIME_DATA_DIR": str(tmp_path / "data")}
    )
    assert (await proc.get("/redirects/api/rules")).code == 404
    found = {plugin["name"]: plugin for plugin in await (await proc.get("/api/plugins")).json()}
    assert found["@buntime/plugin-proxy"]["enabled"] is False
    loaded = [plugin["name"] for plugin in await (await proc.get("/api/plugins/loaded")).json()]
    assert "@buntime/plugin-proxy" not in loaded and "@buntime/plugin-metrics" in loaded
    assert b"the up app" in await (await proc.get("/up/")).content()


@pytest_twisted.ensureDeferred
async def test_a_large_download_streams_through_without_being_held(runtimes, tmp_path, upstream):
    port, _ = upstream
    proc = await start_proxy(
        runtimes, tmp_path, [{"pattern": "^/big$", "target": f"http://127.0.0.1:{port}"}]
    )
    before = rss_mb(proc.pid)
    answer = await proc.get("/big")
    assert answer.code == 200
    received = 0
    peak = before

    def count(data: bytes) -> None:
        nonlocal received, peak
        received += len(data)
        if received % (8 * MB) < len(data):
            peak = max(peak, rss_mb(proc.pid))

    await treq.collect(answer, count)
    assert received == BIG
    assert peak - before < 25, f"the runtime grew by {peak - before:.0f} MB for a 50 MB body"


async def start_sink_proxy(runtimes: Any, tmp_path: Any, upstream: Any, body_size: str) -> Any:
    """A runtime whose proxy sends C{/sink} to the upstream's L{Sink}, with C{BODY_SIZE_DEFAULT}."""
    port, _ = upstream
    rule = {"pattern": "^/sink$", "target": f"http://127.0.0.1:{port}"}
    return await start_proxy(runtimes, tmp_path, [rule], env={"BODY_SIZE_DEFAULT": body_size})


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_large_upload_streams_through_without_being_held(
    runtimes, tmp_path, upstream, framing
):
    proc = await start_sink_proxy(runtimes, tmp_path, upstream, "100mb")
    before = rss_mb(proc.pid)
    upload = Upload(proc.pid)
    answer = await proc.request("POST", "/sink", data=producer(upload, framing))
    assert answer.code == 200
    seen = await answer.json()
    length = str(BIG) if framing == "length" else None  # a chunked upload goes on chunked
    assert seen == {"size": BIG, "sha256": upload.digest.hexdigest(), "length": length}
    grown = upload.peak - before
    assert grown < 25, f"the runtime grew by {grown:.0f} MB for a 50 MB upload"


@pytest_twisted.ensureDeferred
async def test_a_chunked_upload_past_the_limit_is_refused_midway_and_the_proxy_goes_on(
    runtimes, tmp_path, upstream
):
    """BODY_SIZE_DEFAULT 1mb: 3 MB chunked, sent on as it came until it passed 1 MB, gets 413."""
    proc = await start_sink_proxy(runtimes, tmp_path, upstream, "1mb")
    source = io.BytesIO(b"x" * (3 * MB))
    answer = await proc.request("POST", "/sink", data=FileBodyProducer(Chunked(source)))
    assert answer.code == 413
    assert (await answer.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    after = await proc.request("POST", "/sink", data=b"abc")
    assert (after.code, (await after.json())["size"]) == (200, 3)


@pytest_twisted.ensureDeferred
async def test_rules_from_the_api_are_checked_kept_and_survive_a_restart(
    runtimes, tmp_path, upstream
):
    port, _ = upstream
    proc = await start_proxy(
        runtimes,
        tmp_path,
        [{"id": "fixed", "pattern": "^/fixed", "target": f"http://127.0.0.1:{port}"}],
    )
    api = "/redirects/api/rules"

    async def post(rule: dict[str, Any]) -> Any:
        return await proc.request("POST", api, data=json.dumps(rule).encode(), headers=INTERNAL)

    bad = await post({"pattern": "(", "target": f"http://127.0.0.1:{port}"})
    assert bad.code == 400 and (await bad.json())["error"]["code"] == "INVALID_RULE"
    metadata = await post({"pattern": "^/m", "target": "http://169.254.169.254"})
    assert metadata.code == 400 and "link-local" in (await metadata.json())["error"]["message"]
    made = await post(
        {
            "id": "added",
            "pattern": "^/added/(.*)",
            "target": f"http://127.0.0.1:{port}",
            "rewrite": "/$1",
        }
    )
    assert made.code == 201
    assert (await post({"id": "added", "pattern": "^/x", "target": "http://h"})).code == 409
    assert (await proc.get("/added/echo")).code == 200
    # a target's path prefixes what the upstream is asked for, rewritten or not
    echo = f"http://127.0.0.1:{port}/echo"
    assert (await post({"id": "p1", "pattern": "^/pfx1", "target": echo + "/"})).code == 201
    rewritten = {"id": "p2", "pattern": "^/pfx2/(.*)", "target": echo, "rewrite": "/v1/$1"}
    assert (await post(rewritten)).code == 201
    assert (await (await proc.get("/pfx1/a?q=1")).json())["uri"] == "/echo/pfx1/a?q=1"
    assert (await (await proc.get("/pfx2/a")).json())["uri"] == "/echo/v1/a"
    for made_id in ("p1", "p2"):
        assert (await proc.request("DELETE", f"{api}/{made_id}", headers=INTERNAL)).code == 204
    # the API's own 404 for a rule it does not have reaches the client
    for method in ("GET", "PUT", "DELETE"):
        data = json.dumps({"pattern": "^/x", "target": "http://h"}).encode()
        missing = await proc.request(
            method, f"{api}/p1", data=data if method == "PUT" else None, headers=INTERNAL
        )
        assert missing.code == 404
        assert (await missing.json())["error"]["code"] == "RULE_NOT_FOUND", method
    assert (
        await proc.request("DELETE", f"{api}/fixed", headers=INTERNAL)
    ).code == 409  # the manifest's
    page = await proc.get("/redirects/")
    assert page.code == 200 and b"Proxy rules" in await page.content()

    await proc.stop()
    again = await start_proxy(
        runtimes,
        tmp_path,
        [{"id": "fixed", "pattern": "^/fixed", "target": f"http://127.0.0.1:{port}"}],
    )
    listed = await (await again.get(api)).json()
    assert [(r["id"], r["source"]) for r in listed["rules"]] == [
        ("fixed", "manifest"),
        ("added", "api"),
    ]
    assert (await again.get("/added/echo")).code == 200
    changed = await again.request(
        "PUT",
        f"{api}/added",
        data=json.dumps(
            {"pattern": "^/moved/(.*)", "target": f"http://127.0.0.1:{port}", "rewrite": "/$1"}
        ).encode(),
        headers=INTERNAL,
    )
    assert changed.code == 200
    assert (await again.get("/moved/echo")).code == 200
    assert (await again.get("/added/echo")).code == 404
    assert (await again.request("DELETE", f"{api}/added", headers=INTERNAL)).code == 204
    assert (await again.get("/moved/echo")).code == 404


def tunnel_ended(line: dict[str, Any]) -> bool:
    """The end of a request to C{/live} (a tunnel's)."""
    return line.get("path") == "/live" and line.get("action_status") == "succeeded"


@pytest_twisted.ensureDeferred
async def test_websockets_pass_through_a_ws_rule(runtimes, tmp_path, upstream):
    port, ws_port = upstream
    proc = await start_proxy(
        runtimes,
        tmp_path,
        [
            {"pattern": "^/live", "target": f"http://127.0.0.1:{ws_port}", "ws": True},
            {"pattern": "^/flat", "target": f"http://127.0.0.1:{ws_port}"},
            {"pattern": "^/(echo)", "target": f"http://127.0.0.1:{port}", "ws": True},
            {"pattern": "^/gone", "target": f"http://127.0.0.1:{closed_port()}", "ws": True},
        ],
    )
    client = await connect(proc, "/live", {})
    await within(client.opened)
    client.sendMessage(b"hello")
    assert await within(client.received.get()) == b"upstream:hello"
    client.sendMessage(b"x" * 200_000, True)
    assert await within(client.received.get()) == b"upstream:" + b"x" * 200_000
    client.sendClose(1000)
    assert (await within(client.closed))[1] == 1000
    # the tunnel's request ends when it closes: logged with its 101
    ended = await proc.wait_for_log(tunnel_ended)
    assert (ended["status"], ended["upgrade"], ended["aborted"]) == (101, "tunnel", False)

    refused = await connect(proc, "/flat", {})
    _, _, reason = await within(refused.closed)
    assert not refused.opened.called and "501" in reason

    # An upstream that does not switch protocols answers as it would; one that is down, 502.
    plain = await connect(proc, "/echo", {})
    _, _, reason = await within(plain.closed)
    assert not plain.opened.called and "200" in reason
    down = await connect(proc, "/gone", {})
    _, _, reason = await within(down.closed)
    assert not down.opened.called and "502" in reason

    # an open tunnel is closed when the runtime stops, which does not wait for it
    staying = await connect(proc, "/live", {})
    await within(staying.opened)
    assert await proc.stop(timeout=20) == 0
    await within(staying.closed)
    assert len([line for line in proc.lines if tunnel_ended(line)]) == 2


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_upstream(runtimes, tmp_path, upstream):
    """While the client reads nothing, the runtime holds a few chunks, not the body."""
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    port, _ = upstream
    proc = await start_proxy(
        runtimes, tmp_path, [{"pattern": "^/big$", "target": f"http://127.0.0.1:{port}"}]
    )

    class Slow(Protocol):
        received = 0

        def connectionMade(self) -> None:
            self.transport.write(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")

        def dataReceived(self, data: bytes) -> None:
            self.received += len(data)
            if self.received > 2 * MB:
                self.transport.pauseProducing()  # read no more

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proc.port)
    client = await endpoint.connect(Factory.forProtocol(Slow))
    before = rss_mb(proc.pid)
    for _ in range(20):  # a second for the upstream to fill whatever is not paced
        wait: Deferred[None] = Deferred()
        reactor.callLater(0.05, wait.callback, None)
        await wait
    assert 2 * MB < client.received < 20 * MB
    assert rss_mb(proc.pid) - before < 20
    client.transport.abortConnection()

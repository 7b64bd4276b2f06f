"""
The proxy plugin's parts without a network: its rules (matching, rewriting,
the SSRF guard), the rules kept on disk, the headers it sends upstream, and
its hook and API driven as the runtime drives them.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import signal
from contextlib import contextmanager

import pytest
import pytest_twisted
from fakes import result_of
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from buntime.builtins.proxy.forward import outgoing_headers
from buntime.builtins.proxy.plugin import ProxyPlugin
from buntime.builtins.proxy.rules import Rule, RuleError, RuleStore, parse_rule
from buntime.http import Request, Response, read_body
from buntime.plugins.loader import verify
from buntime.stream import PushedStream


def rule(**fields: object) -> Rule:
    return parse_rule({"pattern": "^/api/(.*)", "target": "http://127.0.0.1:9000", **fields})


def test_a_rule_matches_and_rewrites_with_its_groups():
    assert rule().upstream_path("/api/x/y") == "/api/x/y"  # no rewrite: the path as it came
    assert rule(rewrite="/v2/$1").upstream_path("/api/x/y") == "/v2/x/y"
    assert rule(rewrite="${1}/z").upstream_path("/api/x") == "/x/z"
    named = parse_rule({"pattern": r"^/u/(?P<who>\w+)", "target": "http://h", "rewrite": "/$<who>"})
    assert named.upstream_path("/u/ada") == "/ada"
    assert rule().upstream_path("/other") is None
    based = rule(base="/edge", pattern="^/(.*)", rewrite="/$1")
    assert based.upstream_path("/edge/a") == "/a"
    assert based.upstream_path("/edges/a") is None
    assert rule(rewrite=r"/a\1").upstream_path("/api/x") == r"/a\1"  # backslashes are literal


def test_a_target_s_path_prefixes_the_upstream_path():
    prefixed = rule(target="http://127.0.0.1:9000/prefix/")
    assert prefixed.upstream_path("/api/x") == "/prefix/api/x"
    rewritten = rule(target="http://h/prefix", rewrite="/v1/$1")
    assert rewritten.upstream_path("/api/a") == "/prefix/v1/a"
    based = rule(target="http://h/p/q", base="/edge", pattern="^/(.*)", rewrite="$1")
    assert based.upstream_path("/edge/a") == "/p/q/a"
    assert rule(target="http://h/").upstream_path("/api/x") == "/api/x"  # "/" changes nothing
    assert prefixed.upstream_path("/other") is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"pattern": "(unclosed"}, "not a valid regular expression"),
        ({"pattern": ""}, "pattern is required"),
        ({"target": "ftp://h"}, "http:// or https://"),
        ({"target": "http://user:pw@h"}, "credentials"),
        ({"target": "http://h:99999"}, "not a URL"),
        ({"rewrite": "/$2"}, "$2"),
        ({"headers": {"bad name": "x"}}, "not a token"),
        ({"headers": {"x": "a\r\nb"}}, "one line"),
        ({"ws": "yes"}, "ws must be true or false"),
        ({"base": "/a/"}, "base must be a path"),
        ({"id": "a b"}, "id must be"),
        ({"nope": 1}, "unknown field"),
    ],
)
def test_a_bad_rule_is_refused_with_what_is_wrong(fields, says):
    with pytest.raises(RuleError) as raised:
        rule(**fields)
    assert says in str(raised.value)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]:80",
        "http://[::ffff:169.254.169.254]",
        "http://metadata.google.internal",
        "http://[fd00:ec2::254]",
        # the same address as the resolver also reads it
        "http://2852039166",
        "http://0xa9fea9fe",
        "http://0251.0376.0251.0376",
        "http://169.254.43518",
        "http://METADATA.google.internal.",
    ],
)
def test_rules_from_the_api_may_not_reach_metadata_services(target):
    with pytest.raises(RuleError, match="link-local or metadata"):
        parse_rule({"pattern": "^/", "target": target}, allow_link_local=False)
    assert parse_rule({"pattern": "^/", "target": target}).target  # the manifest may


def test_stored_rules_survive_and_a_broken_file_loses_nothing(tmp_path):
    store = RuleStore(str(tmp_path / "proxy"))
    assert store.load(False) == ([], [])
    kept = rule(id="a", rewrite="/$1", headers={"x-k": "v"}, changeOrigin=True)
    store.save([kept])
    [loaded], problems = store.load(False)
    assert problems == []
    assert loaded.describe() == kept.describe()
    assert os.listdir(tmp_path / "proxy") == ["rules.json"]  # no temporary file left
    (tmp_path / "proxy" / "rules.json").write_text("{not json")
    rules, problems = store.load(False)
    assert rules == [] and "cannot be read" in problems[0]
    (tmp_path / "proxy" / "rules.json").write_text(
        json.dumps([{"pattern": "^/", "target": "http://169.254.169.254"}, kept.describe()])
    )
    rules, problems = store.load(False)
    assert len(problems) == 2 and "link-local" in problems[0] and "source" in problems[1]
    assert rules == []  # each bad one left out, with a line saying why


def test_the_upstream_gets_no_hop_by_hop_headers_and_is_told_where_the_request_came_from():
    request = Request(
        "GET",
        "/api/x",
        [
            ("host", "front.example:8000"),
            ("connection", "keep-alive, x-private-hop"),
            ("x-private-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "text/plain"),
        ],
        remote_addr="127.0.0.1",
    )
    sent = dict(outgoing_headers(request, rule(headers={"x-added": "yes"})))
    for hop in ("connection", "x-private-hop", "keep-alive", "te", "upgrade"):
        assert hop not in sent
    assert sent["accept"] == "text/plain" and sent["x-added"] == "yes"
    assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert sent["x-forwarded-host"] == "front.example:8000"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["host"] == "front.example:8000"
    assert dict(outgoing_headers(request, rule(changeOrigin=True)))["host"] == "127.0.0.1:9000"


class Context:
    def __init__(self, tmp_path, config):
        self.config = config
        self.reactor = Clock()
        self.base = "/redirects"
        self.data_dir = str(tmp_path)
        self.logger = self
        self.warned: list[str] = []
        self.services: dict[str, object] = {}

    def get_service(self, name):
        return self.services.get(name)

    def info(self, message, **fields):
        pass

    def warn(self, message, **fields):
        self.warned.append(message)


def test_the_hook_answers_only_matching_requests_and_never_its_own_api(tmp_path):
    proxy = ProxyPlugin({})
    verify(proxy, "@buntime/plugin-proxy")
    proxy.on_init(Context(tmp_path, {"rules": [{"pattern": ".*", "target": "http://127.0.0.1:1"}]}))
    assert [r.source for r in proxy.rules] == ["manifest"]
    assert proxy.on_request(Request("GET", "/redirects/api/rules"), None) is None
    assert proxy.on_request(Request("GET", "/redirects"), None) is None
    empty = ProxyPlugin({})
    empty.on_init(Context(tmp_path / "other", {}))
    assert empty.on_request(Request("GET", "/anything"), None) is None


def test_requests_and_websockets_go_to_the_target_s_prefix(tmp_path, monkeypatch):
    sent: list[tuple[str, str]] = []

    class Forwarder:
        timeout = 1.0

        def forward(self, request: Request, rule: Rule, path: str) -> Deferred:
            sent.append(("http", path))
            return succeed(Response.text("forwarded"))

    async def tunnel(reactor, request: Request, rule: Rule, path: str, timeout: float = 30):
        sent.append(("ws", path))
        return Response.text("tunneled")

    monkeypatch.setattr("buntime.builtins.proxy.plugin.tunnel", tunnel)
    proxy = ProxyPlugin({})
    target = "http://127.0.0.1:1/prefix"
    rules = [{"pattern": "^/pfx/(.*)", "target": target, "rewrite": "/v1/$1", "ws": True}]
    proxy.on_init(Context(tmp_path, {"rules": rules}))
    proxy.forwarder = Forwarder()  # type: ignore[assignment]
    proxy.on_request(Request("GET", "/pfx/a?q=1"), None)
    upgrade = {"connection": "upgrade", "upgrade": "websocket"}
    proxy.on_request(Request("GET", "/pfx/live", upgrade), None)
    assert sent == [("http", "/prefix/v1/a"), ("ws", "/prefix/v1/live")]


def test_with_the_gateway_on_its_headers_label_the_upstream_s_answers(tmp_path):
    class Forwarder:
        def forward(self, request: Request, rule: Rule, path: str) -> Deferred:
            return succeed(Response.text("forwarded"))

    class Gateway:
        def label(self, request: Request, response: Response) -> Response:
            return response.with_header("x-ratelimit-remaining", request.headers["x-left"])

    context = Context(tmp_path, {"rules": [{"pattern": "^/up", "target": "http://127.0.0.1:1"}]})
    proxy = ProxyPlugin({})
    proxy.on_init(context)
    proxy.forwarder = Forwarder()  # type: ignore[assignment]
    asked = Request("GET", "/up/x", {"x-left": "7"})
    plain = proxy.on_request(asked, None)
    assert "x-ratelimit-remaining" not in result_of(plain).headers  # no gateway: as it came
    context.services["gateway"] = Gateway()
    labelled = result_of(proxy.on_request(asked, None))
    assert (labelled.body, labelled.headers["x-ratelimit-remaining"]) == (b"forwarded", "7")
    upgrade = Request("GET", "/up/ws", {"x-left": "3", "connection": "upgrade", "upgrade": "x"})
    refused = result_of(proxy.on_request(upgrade, None))  # a rule without ws: 501, labelled
    assert (refused.status, refused.headers["x-ratelimit-remaining"]) == (501, "3")


# -- the upstream client ----------------------------------------------------------

from twisted.internet.testing import StringTransport  # noqa: E402

from buntime.builtins.proxy.client import Answer, UpstreamLost, UpstreamPool, _Connection  # noqa: E402

KEY = ("http", "127.0.0.1", 9)


def connection(done=None) -> _Connection:
    made = _Connection(KEY, done or (lambda connection, reusable: None))
    made.makeConnection(StringTransport())
    return made


def answer_of(deferred) -> Answer:
    results: list = []
    deferred.addBoth(results.append)
    [result] = results
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_a_whole_answer_in_one_read_comes_as_bytes_and_the_connection_is_kept():
    kept: list = []
    upstream = connection(lambda c, reusable: kept.append(reusable))
    sent = upstream.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "GET")
    assert upstream.transport.value().startswith(b"GET / HTTP/1.1")
    upstream.dataReceived(b"HTTP/1.1 201 Made\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok")
    answer = answer_of(sent)
    assert (answer.status, answer.reason, answer.body) == (201, "Made", b"ok")
    assert ("x-a", "1") in answer.headers
    assert kept == [True]


@pytest_twisted.ensureDeferred
async def test_an_answer_over_several_reads_is_a_stream_and_the_next_one_follows():
    upstream = connection()
    first = upstream.send(b"GET /1 HTTP/1.1\r\n\r\n", "GET")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    answer = answer_of(first)
    upstream.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    assert [chunk async for chunk in answer.body] == [b"abc", b"de"]
    second = upstream.send(b"GET /2 HTTP/1.1\r\n\r\n", "GET")
    upstream.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    empty = answer_of(second)
    assert (empty.status, empty.body) == (204, b"")


def test_a_head_answer_has_no_body_and_the_connection_is_not_used_again():
    closed: list = []
    upstream = connection(lambda c, reusable: closed.append(reusable))
    sent = upstream.send(b"HEAD / HTTP/1.1\r\n\r\n", "HEAD")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
    assert answer_of(sent).body == b""
    assert upstream.transport.disconnecting


class FakePool(UpstreamPool):
    """An UpstreamPool whose new connections are in-memory ones, answered by C{reply}."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(Clock())
        self.reply = reply
        self.made: list[_Connection] = []

    def _connect(self, key):
        made = connection(self._done)
        self._all.add(made)
        self.made.append(made)
        made.transport.write = lambda data, made=made: made.dataReceived(self.reply)
        return succeed(made)


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_the_upstream_closed_is_retried_for_idempotent_methods_only():
    from twisted.python.failure import Failure

    pool = FakePool(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nk")
    assert (await pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")).body == b"k"
    [kept] = pool.made
    # the upstream closes the kept connection just as it is used again
    kept.transport.write = lambda data: kept.connectionLost(Failure(ConnectionError("closed")))
    assert (await pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")).body == b"k"
    assert len(pool.made) == 2
    second = pool.made[1]
    second.transport.write = lambda data: second.connectionLost(Failure(ConnectionError("gone")))
    with pytest.raises(UpstreamLost):
        await pool.request(KEY, "POST", b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
    assert len(pool.made) == 2  # a POST is not sent twice


class HeldPool(UpstreamPool):
    """An UpstreamPool whose new connections are in-memory ones that hold their requests."""

    def __init__(self, clock: Clock, **settings) -> None:
        super().__init__(clock, **settings)
        self.made: list[_Connection] = []

    def _connect(self, key):
        made = connection(self._done)
        self._all.add(made)
        self.made.append(made)
        return succeed(made)


def answer_all(pool: HeldPool, connections) -> None:
    for held in connections:
        held.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nk")


def test_as_many_connections_as_clients_are_kept_so_steady_load_connects_no_more():
    """
    Fifty requests at a time (a load of fifty clients) keep fifty idle
    connections for the next fifty: before, 32 were kept and each request
    past them connected anew (a handshake and an accept on both sides).
    """
    pool = HeldPool(Clock())
    for _ in range(3):
        [pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n") for _ in range(50)]
        answer_all(pool, pool.made)
    assert len(pool.made) == 50
    assert not any(made.transport.disconnecting for made in pool.made)


def test_idle_connections_past_the_cap_close_and_the_rest_close_after_the_idle_timeout():
    clock = Clock()
    pool = HeldPool(clock, per_upstream=3, idle_timeout=60)
    [pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n") for _ in range(5)]
    answer_all(pool, pool.made)
    closed = [made.transport.disconnecting for made in pool.made]
    assert closed == [False, False, False, True, True]  # three kept, the cap
    clock.advance(59)
    reused = pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")
    answer_all(pool, pool.made[2:3])  # the one last put back idle is used first
    assert answer_of(reused).body == b"k"
    clock.advance(1)  # the two not used for 60 s close, the one just used stays
    assert [made.transport.disconnecting for made in pool.made[:3]] == [True, True, False]
    clock.advance(58)
    assert not pool.made[2].transport.disconnecting
    clock.advance(1)
    assert pool.made[2].transport.disconnecting
    assert clock.getDelayedCalls() == []  # nothing idle, no timer left
    pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")
    assert len(pool.made) == 6  # a closed connection is never used again


def test_a_guarded_rule_never_sends_to_an_upstream_that_turns_out_link_local():
    """
    A name the SSRF guard let through (it is no address) may resolve to a
    link-local one: the guard looks again at the address connected to, and
    sends nothing there for a rule from the API; the manifest's rules may.
    """
    from twisted.internet.address import IPv4Address

    from buntime.builtins.proxy.client import UpstreamRefused

    class MetadataPool(HeldPool):
        def _connect(self, key):
            made = _Connection(key, self._done)
            made.makeConnection(
                StringTransport(peerAddress=IPv4Address("TCP", "169.254.169.254", 80))
            )
            self._all.add(made)
            self.made.append(made)
            return succeed(made)

    pool = MetadataPool(Clock())
    refused = pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n", guarded=True)
    with pytest.raises(UpstreamRefused, match=r"169\.254\.169\.254"):
        answer_of(refused)
    [made] = pool.made
    assert made.transport.value() == b""  # not a byte sent
    allowed = pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")  # a manifest rule's
    assert made.transport.value().startswith(b"GET / HTTP/1.1")
    answer_all(pool, [made])
    assert answer_of(allowed).body == b"k"


def test_the_guard_answers_502_with_what_it_refused():
    from buntime.builtins.proxy.client import UpstreamRefused
    from buntime.builtins.proxy.forward import Forwarder

    forwarder = Forwarder(Clock(), 30)
    forwarder.pool.request = lambda *args: fail(UpstreamRefused("169.254.169.254"))
    guarded = parse_rule(
        {"pattern": "^/", "target": "http://internal.example"}, allow_link_local=False
    )
    assert guarded.guarded and not rule().guarded
    answer = answer_of(forwarder.forward(Request("GET", "/x"), guarded, "/x"))
    assert answer.status == 502
    error = json.loads(answer.body)["error"]
    assert error["code"] == "LINK_LOCAL_REFUSED" and "169.254.169.254" in error["message"]


def test_a_guarded_websocket_tunnel_sends_nothing_to_a_link_local_upstream():
    from twisted.internet.address import IPv6Address

    from buntime.builtins.proxy.tunnel import _Upstream

    guarded = parse_rule({"pattern": "^/", "target": "http://ws.example"}, allow_link_local=False)
    upstream = _Upstream(b"GET / HTTP/1.1\r\n\r\n", guarded)
    upstream.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "fe80::1", 80)))
    assert upstream.transport.value() == b""
    assert answer_of(upstream.answered).status == 502
    allowed = _Upstream(b"GET / HTTP/1.1\r\n\r\n", rule())
    allowed.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "fe80::1", 80)))
    assert allowed.transport.value() == b"GET / HTTP/1.1\r\n\r\n"


def upload_of(pool: HeldPool):
    from buntime.stream import PushedStream

    closed: list[bool] = []
    body = PushedStream(lambda: closed.append(True))
    answer = pool.upload(KEY, "POST", b"POST /up HTTP/1.1\r\ncontent-length: 6\r\n\r\n", body)
    [made] = pool.made
    return body, answer, made, closed


def test_an_upload_goes_upstream_as_it_comes_no_faster_than_the_upstream_takes_it():
    pool = HeldPool(Clock())
    body, answer, made, _ = upload_of(pool)
    assert made.transport.value().endswith(b"\r\n\r\n")  # the head at once
    body.feed(b"ab")
    assert made.transport.value().endswith(b"ab")
    made.transport.producer.pauseProducing()  # the upstream's buffer is full
    body.feed(b"cd")
    body.feed(b"ef")
    assert made.transport.value().endswith(b"cd")  # written, then waits
    made.transport.producer.resumeProducing()
    body.end()
    assert made.transport.value().endswith(b"abcdef")
    assert made.transport.producer is None  # done: the connection stops pacing it
    made.dataReceived(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
    assert answer_of(answer).status == 201
    assert not made.transport.disconnecting  # all sent and answered: kept for the next


def test_an_upstream_that_answers_before_the_upload_is_sent_gets_no_more_of_it():
    pool = HeldPool(Clock())
    body, answer, made, closed = upload_of(pool)
    body.feed(b"ab")
    made.dataReceived(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert answer_of(answer).status == 413
    assert made.transport.disconnecting  # not used again: the request was cut short
    body.feed(b"cd")
    assert not made.transport.value().endswith(b"cd") and closed == [True]


def test_an_upload_waiting_for_a_paused_upstream_ends_when_the_answer_closes_it():
    pool = HeldPool(Clock())
    body, answer, made, closed = upload_of(pool)
    made.transport.producer.pauseProducing()
    body.feed(b"ab")  # written; its sender now waits for the upstream to read
    made.dataReceived(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert answer_of(answer).status == 413 and made.transport.producer is None
    body.feed(b"cd")  # the sender went on, and left the rest unread
    assert closed == [True] and not made.transport.value().endswith(b"cd")


STREAMED_ANSWER = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def timed_upload(length: bytes = b"transfer-encoding: chunked"):
    """An upload with a 30 s send timeout on a held pool: clock, body, answer, connection."""
    clock = Clock()
    pool = HeldPool(clock)
    body = PushedStream(lambda: None)
    head = b"POST /up HTTP/1.1\r\n%s\r\n\r\n" % length
    answer = pool.upload(KEY, "POST", head, body, send_timeout=30)
    [made] = pool.made
    return clock, body, answer, made


def test_an_upstream_that_stops_reading_the_upload_after_answering_loses_the_connection():
    """As nginx's proxy_send_timeout: once the answer has begun, the forwarder's 504 cannot come."""
    clock, body, answer, made = timed_upload()
    made.transport.producer.pauseProducing()  # the upstream reads no more of it
    body.feed(b"ab")
    clock.advance(40)  # no answer yet: the forwarder's timeout (504) is the one that counts
    assert not made.transport.disconnecting
    made.dataReceived(STREAMED_ANSWER + b"2\r\nhi\r\n")
    streamed = answer_of(answer).body
    clock.advance(29)
    assert not made.transport.disconnecting
    clock.advance(2)
    assert made.transport.disconnecting
    failed: list[Failure] = []
    ensureDeferred(read_body(streamed)).addErrback(failed.append)
    assert failed and failed[0].check(ConnectionError)
    assert clock.getDelayedCalls() == []


def test_an_upload_the_upstream_goes_on_reading_is_not_cut_by_the_send_timeout():
    clock, body, answer, made = timed_upload(b"content-length: 4")
    made.dataReceived(STREAMED_ANSWER + b"2\r\nhi\r\n")
    answer_of(answer)
    for chunk in (b"ab", b"cd"):
        made.transport.producer.pauseProducing()
        body.feed(chunk)
        clock.advance(25)
        made.transport.producer.resumeProducing()  # read, within the timeout each time
    body.end()
    assert not made.transport.disconnecting and made.transport.value().endswith(b"abcd")
    assert clock.getDelayedCalls() == []


def test_an_upstream_the_proxy_itself_stopped_reading_is_not_blamed_for_a_stalled_upload():
    """Its client reads the answer slowly, so the upstream, blocked writing, reads no more."""
    clock, body, answer, made = timed_upload()
    made.dataReceived(STREAMED_ANSWER)
    answer_of(answer)  # its body: a stream no one reads for now
    for _ in range(5):
        made.dataReceived(b"2\r\nhi\r\n")
    assert made.transport.producerState == "paused"  # the proxy reads no more of it
    made.transport.producer.pauseProducing()
    body.feed(b"2\r\nab\r\n")
    clock.advance(31)
    assert not made.transport.disconnecting


class TcpLike(StringTransport):
    """Aborts as TCP does: connectionLost a turn later; each abort counted."""

    def __init__(self, clock: Clock, protocol: _Connection) -> None:
        super().__init__()
        self.clock, self.protocol, self.aborts = clock, protocol, 0

    def abortConnection(self) -> None:
        self.aborts += 1
        if not self.disconnecting:
            self.disconnecting = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionAbortedError()))


def test_an_upload_s_504_drops_its_upstream_connection_once():
    """The forwarder's timer and the upload's stall timer come due together."""
    from buntime.builtins.proxy.forward import Forwarder

    clock = Clock()

    class Pool(HeldPool):
        def _connect(self, key):
            made = _Connection(key, self._done)
            made.makeConnection(TcpLike(clock, made))
            self.made.append(made)
            return succeed(made)

    forwarder = Forwarder(clock, 30)
    forwarder.pool = pool = Pool(clock)
    body = PushedStream(lambda: None)
    answered = forwarder.forward(Request("POST", "/up", [], body), rule(), "/up")
    [made] = pool.made
    made.transport.producer.pauseProducing()  # reads no more, and does not answer
    body.feed(b"ab")
    clock.advance(30)
    clock.advance(0)
    assert answer_of(answered).status == 504
    assert made.transport.aborts == 1


def test_an_upstream_connection_dropped_as_its_early_answer_is_read_is_not_kept_idle():
    """The client's upload fails while the answer is handed on: the connection is gone."""
    pool = HeldPool(Clock())
    body, answer, made, _ = upload_of(pool)
    body.feed(b"ab")
    answer.addCallback(lambda given: body.fail(ConnectionError("answered early")) or given)
    made.dataReceived(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert answer_of(answer).status == 413
    assert made not in pool._idle.get(KEY, [])


def test_a_closed_pool_keeps_no_connection_that_finishes_after():
    clock = Clock()
    pool = HeldPool(clock)
    pool.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")
    pool.close()
    answer_all(pool, pool.made)
    assert pool.made[0].transport.disconnecting and clock.getDelayedCalls() == []


def test_an_upload_that_breaks_off_fails_the_request_and_drops_the_upstream_connection():
    pool = HeldPool(Clock())
    body, answer, made, _ = upload_of(pool)
    body.feed(b"ab")
    body.fail(ConnectionError("The client went away during its upload"))
    with pytest.raises(UpstreamLost, match="broke off"):
        answer_of(answer)
    assert made.transport.disconnecting


class UploadRecorder:
    """A pool for a Forwarder that records an upload and reads its body when told."""

    def __init__(self) -> None:
        self.head = b""
        self.sent: list[bytes] = []
        self.body = None
        self.answer: Deferred = Deferred()

    def upload(self, key, method, head, body, guarded=False, send_timeout=None):
        self.head, self.body = head, body.__aiter__()
        return self.answer

    def take(self) -> None:
        ensureDeferred(self.body.__anext__()).addCallback(self.sent.append)


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_an_upload_is_framed_as_it_came_and_its_timeout_runs_between_chunks(sized):
    from buntime.builtins.proxy.forward import Forwarder
    from buntime.stream import PushedStream

    clock = Clock()
    forwarder = Forwarder(clock, 5)
    forwarder.pool = pool = UploadRecorder()
    body = PushedStream(lambda: None)
    headers = [("content-length", "4")] if sized else []
    answered = forwarder.forward(Request("POST", "/up", headers, body), rule(), "/up")
    framing = b"content-length: 4" if sized else b"transfer-encoding: chunked"
    assert framing in pool.head
    for chunk in (b"ab", b"cd"):
        clock.advance(4)
        body.feed(chunk)
        pool.take()
    assert pool.sent == ([b"ab", b"cd"] if sized else [b"2\r\nab\r\n", b"2\r\ncd\r\n"])
    clock.advance(4.9)  # 12.9 s since the upload began, 4.9 since its last chunk
    assert not answered.called
    clock.advance(0.2)
    assert answer_of(answered).status == 504


def test_the_proxy_reads_its_connection_settings_from_the_manifest(tmp_path):
    plugin = ProxyPlugin({})
    plugin.on_init(Context(tmp_path, {"maxIdleConnections": 4, "idleTimeout": "2m"}))
    pool = plugin.forwarder.pool
    assert (pool.per_upstream, pool.idle_timeout) == (4, 120.0)
    plugin.on_shutdown()
    defaults = ProxyPlugin({})
    defaults.on_init(Context(tmp_path / "other", {}))
    pool = defaults.forwarder.pool
    assert (pool.per_upstream, pool.idle_timeout) == (256, 60.0)
    defaults.on_shutdown()


def test_replicas_sharing_a_data_dir_see_each_others_rules(tmp_path):
    """A rule added through one replica's API is used by the others within a second."""
    from buntime.builtins.proxy.plugin import WATCH_SECONDS

    first, second = ProxyPlugin({}), ProxyPlugin({})
    contexts = [Context(tmp_path, {}), Context(tmp_path, {})]
    first.on_init(contexts[0])
    second.on_init(contexts[1])
    first._save(None, [*first.rules, rule(id="shared")])
    assert [r.id for r in second.rules] == []
    contexts[1].reactor.advance(WATCH_SECONDS)
    assert [r.id for r in second.rules] == ["shared"]
    first._save(None, [])
    contexts[1].reactor.advance(WATCH_SECONDS)
    assert second.rules == []
    contexts[0].reactor.advance(WATCH_SECONDS)  # its own change: nothing to reload
    assert first.rules == []
    for plugin in (first, second):
        plugin.on_shutdown()
        assert not plugin.watch.running


def test_replicas_changing_rules_within_the_same_second_lose_none(tmp_path):
    """
    A rule one replica adds before another has looked at the file again is
    not written over by the other's change: each change reads the file first.
    """
    first, second = ProxyPlugin({}), ProxyPlugin({})
    for plugin in (first, second):
        context = Context(tmp_path, {})
        context.refuse_change = lambda request: None
        plugin.on_init(context)
    added = api_request(b"POST", b'{"id": "x", "pattern": "^/x", "target": "http://h"}')
    first.add_rule(added)
    assert added.responseCode == 201
    again = api_request(b"POST", b'{"id": "x", "pattern": "^/x2", "target": "http://h"}')
    assert b"RULE_EXISTS" in second.add_rule(again)  # it has not looked yet, but it knows
    other = api_request(b"POST", b'{"id": "y", "pattern": "^/y", "target": "http://h"}')
    second.add_rule(other)
    assert other.responseCode == 201
    stored = RuleStore(str(tmp_path / "proxy")).load(False)[0]
    assert [r.id for r in stored] == ["x", "y"]
    assert [r.id for r in second.rules] == ["x", "y"]
    changed = api_request(b"PUT", b'{"pattern": "^/y2", "target": "http://h"}')
    first.put_rule(changed, "y")  # y is first's to change too
    assert changed.responseCode == 200
    second.delete_rule(api_request(b"DELETE"), "x")
    stored = RuleStore(str(tmp_path / "proxy")).load(False)[0]
    assert [(r.id, r.pattern.pattern) for r in stored] == [("y", "^/y2")]
    for plugin in (first, second):
        plugin.on_shutdown()


@contextmanager
def held_by_another_runtime(tmp_path):
    """The rules directory's lock, taken as another runtime sharing it would."""
    directory = tmp_path / "proxy"
    directory.mkdir(exist_ok=True)
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(descriptor)


@contextmanager
def not_blocking(seconds: int = 5):
    """Fail (not hang) when the code under test blocks (on a lock, a FIFO...)."""

    def blocked(signum, frame):
        raise AssertionError("blocked (waiting for a lock or a FIFO): the reactor would stop")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def added_under_lock(tmp_path, steps: int):
    """
    A rule added while another runtime holds the rules' lock, the clock then
    run C{steps} times 10 ms: the plugin, its clock, the request and what
    the answer fired with so far.
    """
    plugin = ProxyPlugin({})
    context = Context(tmp_path, {})
    context.refuse_change = lambda request: None
    plugin.on_init(context)
    added = api_request(b"POST", b'{"id": "x", "pattern": "^/x", "target": "http://h"}')
    got: list[bytes] = []
    with held_by_another_runtime(tmp_path), not_blocking():
        answer = plugin.add_rule(added)
        assert isinstance(answer, Deferred)
        answer.addCallback(got.append)
        context.reactor.pump([0.01] * steps)
    return plugin, context.reactor, added, got


def test_a_change_waits_on_the_clock_while_another_runtime_holds_the_rules(tmp_path):
    """Without stopping the reactor: it is tried again, and made once the lock is free."""
    plugin, clock, added, got = added_under_lock(tmp_path, 100)
    assert got == [] and plugin.rules == []
    clock.advance(0.01)
    assert len(got) == 1 and added.responseCode == 201
    assert [r.id for r in RuleStore(str(tmp_path / "proxy")).load(False)[0]] == ["x"]
    plugin.on_shutdown()


def test_a_change_the_rules_lock_is_not_given_to_in_time_answers_503(tmp_path):
    plugin, _, added, got = added_under_lock(tmp_path, 600)
    assert len(got) == 1 and b"RULES_BUSY" in got[0] and added.responseCode == 503
    assert plugin.rules == []
    plugin.on_shutdown()


def test_the_upstream_is_told_https_for_a_request_that_came_over_tls():
    from buntime.web.trust import with_https

    came = Request("GET", "/api/x", list(with_https((("host", "front"),))), remote_addr="10.0.0.9")
    assert dict(outgoing_headers(came, rule()))["x-forwarded-proto"] == "https"
    told = (("host", "front"), ("x-forwarded-proto", "http"))  # a trusted proxy in front said so
    assert with_https(told) == told


@pytest.mark.parametrize(
    ("forwarded", "proto"),
    [
        ("for=203.0.113.9", "https"),  # says who, not how: it came over TLS
        ("for=203.0.113.9;proto=http", "http"),
        ('For="[2001:db8::1]";Proto="HTTPS", for=10.0.0.1;proto=http', "https"),  # the first's
    ],
)
def test_over_tls_the_upstream_is_told_the_scheme_a_trusted_forwarded_gives(forwarded, proto):
    from buntime.web.trust import with_https

    headers = with_https((("host", "front"), ("forwarded", forwarded)))
    came = Request("GET", "/api/x", list(headers), remote_addr="10.0.0.9")
    assert dict(outgoing_headers(came, rule()))["x-forwarded-proto"] == proto


def api_request(method: bytes, body: bytes = b"") -> DummyRequest:
    request = DummyRequest([b"redirects", b"api", b"rules"])
    request.method = method
    request.content = io.BytesIO(body)
    return request


@pytest.mark.parametrize(
    ("errno_", "status", "says"),
    [(errno.ENOSPC, 507, "No space left on device"), (errno.EROFS, 500, "Read-only file system")],
)
def test_a_rule_the_disk_refuses_is_a_json_error_and_changes_nothing(
    tmp_path, monkeypatch, errno_, status, says
):
    proxy = ProxyPlugin({})
    context = Context(tmp_path, {})
    context.refuse_change = lambda request: None
    context.errors = []
    context.error = lambda message, **fields: context.errors.append(message)
    proxy.on_init(context)
    proxy._save(None, [rule(id="kept")])

    def refused(*args, **kwargs):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "replace", refused)
    request = api_request(b"POST", b'{"id": "new", "pattern": "^/n", "target": "http://h"}')
    answer = json.loads(proxy.add_rule(request))
    assert request.responseCode == status
    assert answer["error"]["code"] == "RULES_NOT_SAVED" and says in answer["error"]["message"]
    delete = api_request(b"DELETE")
    assert b"RULES_NOT_SAVED" in proxy.delete_rule(delete, "kept")
    assert [r.id for r in proxy.rules] == ["kept"]  # neither change is in use
    assert os.listdir(tmp_path / "proxy") == ["rules.json"]  # no temporary file left
    assert len(context.errors) == 2 and says in context.errors[0]
    proxy.on_shutdown()


def test_a_rules_file_that_is_a_fifo_is_a_warning_not_a_hang(tmp_path):
    (tmp_path / "proxy").mkdir()
    os.mkfifo(tmp_path / "proxy" / "rules.json")  # no writer: open() would wait for one for good
    proxy = ProxyPlugin({})
    context = Context(tmp_path, {})
    with not_blocking():  # a regression fails here rather than hang the suite
        proxy.on_init(context)
    assert proxy.rules == []
    assert "not a regular file" in context.warned[0]
    proxy.on_shutdown()


def test_a_rule_added_over_an_unreadable_rules_file_keeps_that_file_aside(tmp_path):
    (tmp_path / "proxy").mkdir()
    broken = '[{"id": "old", "pattern": "^/o", "target": "http://h"}'  # cut short
    (tmp_path / "proxy" / "rules.json").write_text(broken)
    proxy = ProxyPlugin({})
    context = Context(tmp_path, {})
    proxy.on_init(context)
    assert proxy.rules == [] and "cannot be read" in context.warned[0]
    assert proxy._save(None, [rule(id="new")]) is None
    kept = tmp_path / "proxy" / "rules.json.unreadable"
    assert kept.read_text() == broken  # the operator can still mend the old rules
    assert "rules.json.unreadable" in context.warned[1]
    assert [r.id for r in RuleStore(str(tmp_path / "proxy")).load(False)[0]] == ["new"]
    proxy._save(None, [])  # the file is readable now: nothing more is kept aside
    assert kept.read_text() == broken
    proxy.on_shutdown()


def test_an_upstream_that_sends_more_than_its_answer_is_never_given_to_two_requests():
    """
    An upstream that writes past its answer's Content-Length (here a whole
    second answer) or answers nothing it was asked: its connection is not
    kept, or it would be in the idle list twice, two clients' requests
    would share it, and one would be given the other's answer.
    """
    pool = HeldPool(Clock())
    first = pool.request(KEY, "GET", b"GET /a HTTP/1.1\r\n\r\n")
    [made] = pool.made
    made.dataReceived(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA"
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET"
    )
    assert answer_of(first).body == b"A"
    assert not any(kept.open for kept in pool._idle.get(KEY, []))
    pool.request(KEY, "GET", b"GET /b HTTP/1.1\r\n\r\n")
    pool.request(KEY, "GET", b"GET /c HTTP/1.1\r\n\r\n")
    assert len(pool.made) == 3  # each on a connection of its own

    idle = HeldPool(Clock())
    asked = idle.request(KEY, "GET", b"GET / HTTP/1.1\r\n\r\n")
    [held] = idle.made
    held.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA")
    answer_of(asked)
    held.dataReceived(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")  # unasked
    assert [kept for kept in idle._idle.get(KEY, []) if kept.open] == []


def test_an_upstream_answer_with_an_endless_head_is_a_502_not_all_the_memory():
    upstream = connection()
    sent = upstream.send(b"GET / HTTP/1.1\r\n\r\n", "GET")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\n")
    for _ in range(200):
        if not upstream.open:
            break
        upstream.dataReceived(b"x-h: " + b"a" * 1000 + b"\r\n")
    assert not upstream.open
    with pytest.raises(UpstreamLost):
        answer_of(sent)
    assert len(upstream._headers) < 100


@pytest.mark.parametrize(
    "path", ["/api/../../admin", "/api/%2e%2e/%2E%2E/admin", "/api/..%2f..%2fadmin", "/api/./x"]
)
def test_a_path_with_dot_segments_does_not_leave_the_target_s_prefix(tmp_path, path):
    """
    With C{target: http://h/public}, C{/api/../../admin} would go upstream as
    C{/public/api/../../admin}, which the upstream resolves to C{/admin}:
    nginx resolves dot segments before it matches and forwards (400 for
    one above the root); the proxy refuses them.
    """
    sent: list[str] = []

    class Forwarder:
        timeout = 1.0

        def forward(self, request: Request, rule: Rule, path: str) -> Deferred:
            sent.append(path)
            return succeed(Response.text("forwarded"))

        def close(self) -> None:
            pass

    proxy = ProxyPlugin({})
    rules = [{"pattern": "^/api/(.*)", "target": "http://127.0.0.1:1/public"}]
    proxy.on_init(Context(tmp_path, {"rules": rules}))
    proxy.forwarder = Forwarder()  # type: ignore[assignment]
    answer = result_of(proxy.on_request(Request("GET", path), None))
    assert sent == []
    assert answer.status == 400
    proxy.on_shutdown()


def test_a_tunnel_whose_upstream_closed_before_the_hand_over_closes_the_client():
    """
    The upstream answers 101 and closes (its own close frame sent) while the
    101 is on its way (an awaiting on_response hook): the client, handed
    over afterwards, gets what the upstream sent, then its connection closes.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    from twisted.test.proto_helpers import StringTransportWithDisconnection

    from buntime.builtins.proxy.tunnel import _Upstream

    upstream = _Upstream(b"GET / HTTP/1.1\r\n\r\n", rule())
    upstream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 80)))
    upstream.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x88\x02\x03\xe8"
    )
    answer = answer_of(upstream.answered)
    assert answer.status == 101
    upstream.transport.disconnecting = True
    upstream.connectionLost(Failure(ConnectionDone()))  # before the client is handed over
    client = answer.body.build()
    transport = StringTransportWithDisconnection()
    transport.protocol = client
    client.makeConnection(transport)
    assert transport.value().endswith(b"\x88\x02\x03\xe8")
    assert not transport.connected, "the client's tunnel stays open with no upstream behind it"

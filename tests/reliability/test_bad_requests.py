"""
Garbled requests at the front door: well-formed requests (health, a static
app by version range, an upload, a chunked POST) mutated byte by byte
(flips, hostile insertions, deletions, duplicated lines, cuts), sent in
random pieces to the real connection layer and the real front door, each
followed by a well-formed probe.  Every answer is a clean one (4xx, or 501
and 505 where HTTP says so; never a 500 or a traceback), nothing is left
hanging once the connection's timeouts have run, and a connection that is
kept answers the probe correctly.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import pytest_twisted
from e2e_apps import static_app
from http1_client import Transport, connect
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_plugins_service import make_service
from test_plugins_support import write_plugin
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from buntime.apps.discovery import AppCatalog
from buntime.plugins.discovery import BUILTINS_DIR
from buntime.web.api.core import CoreAPI
from buntime.web.apps import AppStep
from buntime.web.frontdoor import FrontDoor
from buntime.web.http1 import HTTP1Factory, Limits
from buntime.web.plugins import PluginSteps
from buntime.web.state import RuntimeState

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HOME = IPv4Address("TCP", "127.0.0.1", 40000)
"""A client on this machine: changes pass the trust rule with their proof, and go deeper."""
ELSEWHERE = IPv4Address("TCP", "192.0.2.7", 40000)
PROBE = b"GET /api/health HTTP/1.1\r\nHost: rt\r\n\r\n"
ALLOWED = {501, 505}
"""The 5xx answers HTTP asks for: an unknown transfer coding, an HTTP version not served."""


def _request(head: bytes, body: bytes = b"") -> bytes:
    """C{head} (request line and header lines) with C{body} and its Content-Length."""
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return head + length + b"\r\n" + body


BASE = [
    _request(b"GET /api/health HTTP/1.1\r\nHost: rt\r\nAccept: */*\r\n"),
    _request(b'GET /site@%5E1.0.0/index.html?x=1 HTTP/1.1\r\nHost: rt\r\nIf-None-Match: "x"\r\n'),
    _request(b"GET /site@~1.0/../site/ HTTP/1.1\r\nHost: rt\r\nCookie: a=b\r\n"),
    _request(
        b"POST /api/apps/upload HTTP/1.1\r\nHost: rt.localhost\r\nOrigin: http://rt.localhost\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n",
        b"--b\r\nContent-Disposition: form-data; name=file; filename=a.zip\r\n\r\nPK\r\n--b--\r\n",
    ),
    b"POST /site/form HTTP/1.1\r\nHost: rt\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    _request(
        b"DELETE /api/apps/_/site/9.9.9 HTTP/1.1\r\nHost: rt.localhost\r\n"
        b"x-buntime-internal: true\r\n"
    ),
    _request(
        b"GET /.well-known/buntime HTTP/1.1\r\nHost: rt\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    ),
    # the built-in plugins' routes (twisted.web requests, forms, JSON bodies)
    _request(
        b"POST /logs/api/ HTTP/1.1\r\nHost: rt.localhost\r\nx-buntime-internal: true\r\n"
        b"Content-Type: application/json\r\n",
        b'{"message": "fuzz", "level": "warn", "fields": {"a": [1, 2]}}',
    ),
    _request(
        b"POST /redirects/api/rules HTTP/1.1\r\nHost: rt.localhost\r\nOrigin: http://rt.localhost\r\n"
        b"Content-Type: application/json\r\n",
        b'{"id": "r1", "pattern": "^/not-sent/(.*)", "target": "http://127.0.0.1:9", '
        b'"rewrite": "/$1"}',
    ),
    _request(
        b"PUT /redirects/api/rules/r1 HTTP/1.1\r\nHost: rt.localhost\r\n"
        b"x-buntime-internal: true\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n",
        b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\ny\r\n--b--\r\n",
    ),
    _request(
        b"POST /gateway/api/cache/invalidate HTTP/1.1\r\nHost: rt.localhost\r\nOrigin: http://rt.localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n",
        b"pattern=%2A&b=%",
    ),
    _request(b"GET /logs/api/?level=warn&limit=5&search=%ff HTTP/1.1\r\nHost: rt\r\n"),
    _request(b"GET /metrics/api/prometheus HTTP/1.1\r\nHost: rt\r\nAccept: text/plain\r\n"),
]
HOSTILE = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b" ",
        b"\t",
        b":",
        b"%",
        b"%00",
        b"..",
        b"\xff",
        b"\x80",
        b"\r\n\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"@",
        b"9" * 30,
        b"Host: other\r\n",
        b"\xc3\x28",
        b"/../",
        b"\\",
    ]
) | st.binary(min_size=1, max_size=4)


BODIES = (
    st.binary(max_size=200)
    | st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'{"message": null}',
            b'{"message": "x", "level": "debug", "fields": {"": {"": []}}}',
            b'{"id": "../../x", "pattern": "(", "target": "file:///etc/passwd"}',
            b'{"pattern": ' + b"[" * 5000 + b"}",
            b'{"pattern": "' + b"*" * 5000 + b'"}',
            b'{"pattern": "\\ud800"}',
            b"--b\r\nContent-Disposition: form-data; name=\r\n\r\n--b",
            b"--b--",
            b"a=%zz&b=%00&&=&" + b"c" * 300,
            b"\xff\xfe{}",
        ]
    )
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode())
)


def _with_body(data: bytes, body: bytes) -> bytes:
    """The request C{data} with another body (and the Content-Length that says so)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = [
        line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length:")
    ]
    if any(line.lower().startswith(b"transfer-encoding:") for line in lines):
        return data
    return b"\r\n".join(lines) + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE)))
    if draw(st.booleans()):  # a well-framed request with a hostile body
        return _with_body(bytes(data), draw(BODIES))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "cut", "body"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(HOSTILE)
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "duplicate":
            end = data.find(b"\r\n", at)
            start = data.rfind(b"\r\n", 0, at)
            if 0 <= start < end:
                data[end:end] = data[start:end]
        elif how == "cut":
            del data[at:]
        elif how == "body":
            data = bytearray(_with_body(bytes(data), draw(BODIES)))
    return bytes(data)


@pytest_twisted.async_yield_fixture(scope="module")
async def factory(tmp_path_factory):
    """
    The real front door (core API, the built-in plugins with the proxy on, a
    static app's step) on the real connection layer.
    """
    apps = tmp_path_factory.mktemp("apps")
    static_app(apps, "site", "1.0.0", "site one")
    plugins = tmp_path_factory.mktemp("plugins")
    write_plugin(plugins, "proxy", {"name": "@buntime/plugin-proxy", "enabled": True})
    write_plugin(
        plugins,
        "gateway",
        {"name": "@buntime/plugin-gateway", "enabled": True, "cache": {"ttl": "1m"}},
    )
    clock = Clock()
    service = make_service(
        plugins,
        builtins_dir=BUILTINS_DIR,
        reactor=clock,
        data_dir=str(tmp_path_factory.mktemp("data")),
    )
    service.startService()
    await service.when_loaded()
    state = RuntimeState(started=True)
    step = AppStep(
        catalog=AppCatalog([str(apps)], clock),
        pool=None,  # type: ignore[arg-type]  # static apps only
        environ={},
        runtime_env=dict,
        body_size_default=1000,
        body_size_max=10_000,
        clock=clock,
    )
    door = FrontDoor(
        clock=clock,
        state=state,
        api=CoreAPI(state=state, api_base="/api"),
        steps=[PluginSteps(registry=lambda: service.registry, apps=step), step],
        plugins=lambda: service.registry,
        identify=step.identify,
        body_limit=step.body_limit_for,
    )
    try:
        yield HTTP1Factory(door, clock, Limits(), state)
    finally:
        await service.stopService()


@FUZZ
@given(request=mutated(), cuts=st.lists(st.integers(0, 400), max_size=6), local=st.booleans())
def test_a_garbled_request_gets_a_clean_answer_and_the_connection_stays_right(
    factory, eliot_logger, request, cuts, local
):
    client = connect(factory=factory, transport=_from(HOME if local else ELSEWHERE))
    data = request + PROBE
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    client.send(*(data[start:end] for start, end in pairwise(bounds)))
    answers = client.answers()
    waited = 0.0
    while not client.closed and not _probed(answers) and waited < 3 * Limits().idle_timeout:
        client.later(5.0)  # the head timeout, then the idle one: nothing waits forever
        waited += 5.0
        answers = client.answers()
    assert client.closed or _probed(answers), "neither answered nor closed"
    kept = "kept" if not client.closed else f"closed after {waited:g}s"
    event(f"answers {sorted({a.status for a in answers})}, {kept}")
    for answer in answers:
        assert answer.status < 500 or answer.status in ALLOWED, (answer.status, answer.body)
        assert b"Traceback" not in answer.body and b'File "' not in answer.body
        if answer.status >= 400 and answer.headers.get("content-type") == "application/json":
            assert set(json.loads(answer.body)["error"]) == {"code", "message"}
    if not client.closed:  # kept: the probe was answered last, and right
        assert _probed(answers), answers
    crashes = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:http:internal-error"
    ]
    assert crashes == []


def _probed(answers: list) -> bool:
    """Whether the last answer is the probe's: the health document."""
    if not answers or answers[-1].status != 200:
        return False
    try:
        return json.loads(answers[-1].body).get("status") == "healthy"
    except ValueError:
        return False


def test_the_requests_are_answered_as_meant_before_they_are_garbled(factory):
    forget = (
        b"DELETE /redirects/api/rules/r1 HTTP/1.1\r\nHost: rt.localhost\r\n"
        b"x-buntime-internal: true\r\n\r\n"
    )
    connect(factory=factory, transport=_from(HOME)).send(forget)  # a fuzzed request's, if any
    statuses = []
    for data in BASE:
        client = connect(factory=factory, transport=_from(HOME))
        client.send(data + PROBE)
        answers = client.answers()
        assert _probed(answers), data
        statuses.append(answers[0].status)
    assert statuses == [200, 200, 403, 404, 405, 404, 200, 201, 201, 400, 415, 200, 200]


def test_a_body_that_never_arrives_does_not_hold_the_connection_forever(factory):
    """A declared body cut short (the probe taken as part of it) is dropped at the idle timeout."""
    client = connect(factory=factory)
    client.send(b"POST /site/x HTTP/1.1\r\nHost: rt\r\nContent-Length: 500\r\n\r\nabc" + PROBE)
    waited = 0.0
    while not client.closed and waited < 600:
        client.later(5.0)
        waited += 5.0
    assert client.closed and waited <= Limits().idle_timeout + 5


def _from(peer: IPv4Address) -> Transport:
    transport = Transport()
    transport.peerAddr = peer
    return transport


@pytest.mark.parametrize(
    "host", [b"..rt", b"a..b:80", b".", b"x" * 64 + b".example", b"[::1", b"rt:"]
)
@pytest.mark.parametrize(
    "path",
    [b"/api/health", b"/api/openapi.json", b"/logs/api/stats", b"/metrics/api/", b"/gateway/"],
)
def test_a_host_name_routes_cannot_use_is_no_500(factory, host, path):
    """Klein binds its routes with the Host's name as IDNA: one that is not was a 500."""
    client = connect(factory=factory, transport=_from(HOME))
    client.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
    [answer] = client.answers()
    assert answer.status < 500, (host, path, answer.body)

"""
Worker apps through a real runtime: every app kind answers (in both worker
modes), the app sees its base stripped, its output is logged, bodies and
streams cross the process boundary intact, its environment is filtered, and
a broken manifest stays that app's problem.

One runtime (fork mode) serves the whole module; the spawn-mode run of the
app kinds starts its own.
"""

from __future__ import annotations

import json
import random
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from e2e_apps import (
    PROBE_ROUTES,
    PROBE_WSGI,
    copy_demo,
    descendants,
    parent_pid,
    within,
    write_app,
)
from runtime import Runtimes
from twisted.internet import threads
from twisted.internet.defer import Deferred

pytestmark = pytest.mark.e2e

PERSISTENT = {"version": "1.0.0", "ttl": "5m"}
SECRETS = {
    "API_KEY": "e2e-api-key-value-9f2",
    "GITHUB_TOKEN": "e2e-github-token-value-4c1",
    "DB_PASSWORD": "e2e-db-password-value-77a",
}
RUNTIME_SECRET = "e2e-runtime-secret-value-0b3"
DEMOS = ("wsgi-demo", "asgi-demo", "klein-demo", "routes-demo")
WORKER_ENV = frozenset(
    {
        *("APP_DIR", "ENTRYPOINT", "WORKER_ID", "WORKER_CONFIG"),
        *("RUNTIME_API_URL", "RUNTIME_ENV", "RUNTIME_LOG_LEVEL"),
        *("RUNTIME_WORKER_DIRS", "RUNTIME_PLUGIN_DIRS"),
        *("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONUNBUFFERED"),
    }
)
"""Every variable a worker may see (SPEC section 2), besides its manifest's C{env}."""

PRINTER = """
    import os
    import sys

    print("printer imported")

    def hello(request):
        marker = request.query.partition("=")[2]
        print(f"to stdout {marker}")
        print(f"to stderr {marker}", file=sys.stderr)
        # What an AMP box looks like on the wire: harmless on stdout.
        os.write(1, b"\\x00\\x04_ask\\x00\\x011\\x00\\x08_command\\x00\\x05Ready\\x00\\x00\\n")
        return {"marker": marker}

    routes = {"/": hello}
"""

GATED_SSE = """
    import asyncio
    import os
    from urllib.parse import parse_qs

    from buntime.http import Response

    async def stream(release):
        yield b"data: 1\\n\\n"
        for _ in range(1000):  # at most 20 s
            if os.path.exists(release):
                break
            await asyncio.sleep(0.02)
        yield b"data: 2\\n\\n"

    def events(request):
        release = parse_qs(request.query)["release"][0]
        return Response(200, {"content-type": "text/event-stream"}, stream(release))

    routes = {"/events": events}
"""

GATED_SSE_ASGI = """
    import asyncio
    import os
    from urllib.parse import parse_qs

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        release = parse_qs(scope["query_string"].decode())["release"][0]
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\\n\\n", "more_body": True})
        for _ in range(1000):
            if os.path.exists(release):
                break
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"data: 2\\n\\n"})
"""

GATED_SSE_WSGI = """
    import os
    import time
    from urllib.parse import parse_qs

    def app(environ, start_response):
        release = parse_qs(environ["QUERY_STRING"])["release"][0]
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            yield b"data: 1\\n\\n"
            for _ in range(1000):
                if os.path.exists(release):
                    break
                time.sleep(0.02)
            yield b"data: 2\\n\\n"

        return events()
"""


def build_apps(root: Path) -> None:
    for demo in DEMOS:
        copy_demo(root, demo, "1.0.0")
    write_app(root, "probe", "1.2.0", manifest=PERSISTENT, files={"app.py": PROBE_ROUTES})
    write_app(root, "probe-wsgi", "1.2.0", manifest=PERSISTENT, files={"app.py": PROBE_WSGI})
    based = {**PERSISTENT, "injectBase": True}
    write_app(root, "probe-based", "1.0.0", manifest=based, files={"app.py": PROBE_ROUTES})
    write_app(root, "printer", "1.0.0", manifest=PERSISTENT, files={"app.py": PRINTER})
    write_app(root, "sse", "1.0.0", manifest=PERSISTENT, files={"app.py": GATED_SSE})
    write_app(root, "sse-asgi", "1.0.0", manifest=PERSISTENT, files={"app.py": GATED_SSE_ASGI})
    write_app(root, "sse-wsgi", "1.0.0", manifest=PERSISTENT, files={"app.py": GATED_SSE_WSGI})
    write_app(
        root,
        "envy",
        "1.0.0",
        manifest={**PERSISTENT, "env": {**SECRETS, "PLAIN": "ok"}},
        files={"app.py": PROBE_ROUTES},
    )
    write_app(
        root,
        "broken",
        "1.0.0",
        manifest={"version": "1.0.0", "ttl": "banana"},
        files={"app.py": PROBE_ROUTES},
    )


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-apps")
    build_apps(root)
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path):
    """One fork-mode runtime for the module, with a secret in its own environment."""
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield await factory.start(
            worker_dirs=[str(worker_dir)],
            env={"RUNTIME_ENV": "test", "SECRET_FROM_RUNTIME": RUNTIME_SECRET},
        )
    finally:
        await factory.kill_all()


async def get_json(proc: Any, path: str, **kwargs: Any) -> Any:
    response = await proc.get(path, **kwargs)
    assert response.code == 200, (path, response.code, await response.text())
    return await proc.json(response)


async def get_text(proc: Any, path: str) -> str:
    response = await proc.get(path)
    assert response.code == 200, (path, response.code, await response.text())
    return await response.text()


def _worker_ready(app: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """Whether a log line says a worker of C{app} (with these C{fields}) is ready."""
    return lambda line: (
        line.get("action_type") == "buntime:worker:start"
        and line.get("action_status") == "succeeded"
        and line.get("app") == app
        and all(line.get(name) == value for name, value in fields.items())
    )


def ready_lines(proc: Any, app: str) -> list[dict[str, Any]]:
    return [line for line in proc.lines if _worker_ready(app)(line)]


async def ready_line(proc: Any, app: str, **fields: Any) -> dict[str, Any]:
    """
    The line saying a worker of C{app} (with these C{fields}) is ready, once
    it is read: the runtime logs it before it answers the worker's first
    request, but its log is read on another channel than that answer.
    """
    return await proc.wait_for_log(_worker_ready(app, **fields), timeout=5)


# -- app kinds ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_every_app_kind_answers_in_both_worker_modes(mode, shared, runtimes, worker_dir):
    """
    Flask (WSGI), Starlette (ASGI, with its lifespan state), Klein and a
    routes app answer through real workers; in fork mode the workers are
    forked by the template, in spawn mode they are the runtime's children.
    """
    if mode == "fork":
        proc = shared
    else:
        proc = await runtimes.start(
            worker_dirs=[str(worker_dir)],
            env={
                "RUNTIME_ENV": "test",
                "RUNTIME_WORKER_MODE": "spawn",
                "SECRET_FROM_RUNTIME": RUNTIME_SECRET,
            },
        )

    assert await get_json(proc, "/wsgi-demo@1/") == {
        "hello": "from Flask",
        "echo": "/wsgi-demo@1/echo",
        "base": "/wsgi-demo@1",
    }
    response = await proc.request("POST", "/wsgi-demo@1/echo", data=b"flask echo")
    assert (response.code, await response.content()) == (200, b"flask echo")

    assert await get_json(proc, "/asgi-demo@1/") == {
        "hello": "from Starlette",
        "root_path": "/asgi-demo@1",
        "started": True,
    }
    events = await get_text(proc, "/asgi-demo@1/events?count=3&interval=0.01")
    assert events == "data: 1\n\ndata: 2\n\ndata: 3\n\n"

    assert await get_text(proc, "/klein-demo@1/hello/bob") == "Hello, bob!"
    assert await get_text(proc, "/klein-demo@1/later") == "done later"

    assert await get_text(proc, "/routes-demo@1/") == "Hello from buntime!"
    printed = await proc.wait_for_log(
        lambda line: line.get("message") == "hello from routes-demo (GET /)", timeout=5
    )
    # (its Ready and what it printed come on two channels: either may be logged first)
    await ready_line(proc, "routes-demo", worker_id=printed["worker_id"])
    assert await get_json(proc, "/routes-demo@1/items/7?x=1") == {"id": "7", "query": "x=1"}
    response = await proc.get("/routes-demo@1/no/such/route")
    assert response.code == 404
    assert (await proc.json(response))["error"]["code"] == "NOT_FOUND"

    # Whichever way it was started, a worker gets only its own environment.
    env = await get_json(proc, "/probe@1/env")
    assert set(env) <= WORKER_ENV, sorted(set(env) - WORKER_ENV)
    assert env["RUNTIME_API_URL"] == proc.url

    kinds = {demo: ready_lines(proc, demo)[-1]["kind"] for demo in DEMOS}
    assert kinds == {
        "wsgi-demo": "wsgi",
        "asgi-demo": "asgi",
        "klein-demo": "klein",
        "routes-demo": "routes",
    }
    worker_pids = {ready_lines(proc, demo)[-1]["pid"] for demo in DEMOS}
    below = descendants(proc.pid)
    assert worker_pids <= below, "workers are processes under the runtime"
    children = {pid for pid in below if parent_pid(pid) == proc.pid}
    if mode == "spawn":
        assert worker_pids <= children
        assert not proc.messages("buntime:launch:template-ready")
    else:
        (template,) = [line["pid"] for line in proc.messages("buntime:launch:template-ready")]
        assert template in children
        assert {parent_pid(pid) for pid in worker_pids} == {template}
    assert proc.unparsed == []


@pytest_twisted.ensureDeferred
async def test_app_sees_its_base_stripped(shared):
    """
    C{/probe@1/api/x?q=1} arrives as C{/api/x?q=1} with C{x-base}; WSGI gets
    SCRIPT_NAME; HTML coming back gets C{<base href>} only when the
    manifest says C{injectBase: true} (an app with code builds its own URLs).
    """
    seen = await get_json(shared, "/probe@1/api/x?q=1")
    assert (seen["path"], seen["query"], seen["x_base"]) == ("/api/x", "q=1", "/probe@1")
    seen = await get_json(shared, "/probe@1.2.0/")
    assert (seen["path"], seen["x_base"]) == ("/", "/probe@1.2.0")
    seen = await get_json(shared, "/probe/deep/er")
    assert (seen["path"], seen["x_base"]) == ("/deep/er", "/probe")

    # HTML from a worker app is left as it is, unless its manifest asks for the base.
    page = await get_text(shared, "/probe@1/page.html")
    assert "<head><title>probe</title>" in page and "<base" not in page, page
    page = await get_text(shared, "/probe-based@1/page.html")
    assert '<head><base href="/probe-based@1/"><title>probe</title>' in page, page

    seen = await get_json(shared, "/probe-wsgi@1/api/x?q=1")
    assert seen["PATH_INFO"] == "/api/x"
    assert seen["SCRIPT_NAME"] == "/probe-wsgi@1"
    assert seen["QUERY_STRING"] == "q=1"
    assert seen["HTTP_X_BASE"] == "/probe-wsgi@1"

    # "//" right after the base is the app's path, as gunicorn passes it on
    seen = await get_json(shared, "/probe-wsgi@1//x//y?q=1")
    assert (seen["PATH_INFO"], seen["QUERY_STRING"]) == ("//x//y", "q=1")
    seen = await get_json(shared, "/probe@1//x//y")
    assert seen["path"] == "//x//y"


def _get_from(source: str, url: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """C{GET path} from the loopback address C{source}, over a plain socket; the JSON answer."""
    address = urllib.parse.urlsplit(url)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{lines}\r\n"
    target = (address.hostname, address.port)
    with socket.create_connection(target, timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(body)


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_reach_the_app_only_from_a_trusted_proxy(shared):
    """
    From 127.0.0.1 (trusted by default, as gunicorn's forwarded_allow_ips)
    X-Forwarded-* pass on and make the scheme https; from 127.0.0.2 they are
    dropped before the app (or a plugin) sees them.
    """
    sent = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    trusted = await threads.deferToThread(
        _get_from, "127.0.0.1", shared.url, "/probe-wsgi@1/", sent
    )
    assert (trusted["HTTP_X_FORWARDED_PROTO"], trusted["wsgi.url_scheme"]) == ("https", "https")
    assert trusted["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"
    untrusted = await threads.deferToThread(
        _get_from, "127.0.0.2", shared.url, "/probe-wsgi@1/", sent
    )
    assert untrusted["HTTP_X_FORWARDED_PROTO"] is None and untrusted["HTTP_X_FORWARDED_FOR"] is None
    assert untrusted["wsgi.url_scheme"] == "http"


@pytest_twisted.ensureDeferred
async def test_the_request_log_line_names_app_and_worker(shared):
    """One request action per request, ending with status, app and worker id."""
    request_id = f"log-{random.randrange(10**9)}"
    response = await shared.get("/probe@1/logged", headers={"x-request-id": request_id})
    await treq.content(response)
    end = await shared.wait_for_log(
        lambda line: (
            line.get("request_id") == request_id and line.get("action_status") == "succeeded"
        )
    )
    assert end["app"].startswith("probe@1")
    assert end["status"] == 200
    assert isinstance(end.get("worker_id"), str) and end["worker_id"]
    assert end["action_type"] == "buntime:http:request"


# -- output ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_app_output_is_logged_with_app_and_worker_and_never_corrupts_the_channel(shared):
    """
    What the app prints (also at import, also bytes that look like an AMP
    box) becomes JSON log lines tagged with the app and its worker; the
    requests still answer.
    """
    for marker in ("m-one", "m-two"):
        assert await get_json(shared, f"/printer@1/?marker={marker}") == {"marker": marker}
    ready = await ready_line(shared, "printer")
    assert len(ready_lines(shared, "printer")) == 1
    tags = {"app": "printer", "worker_id": ready["worker_id"], "pid": ready["pid"]}

    def output(text: str) -> Any:
        return shared.wait_for_log(
            lambda line: (
                line.get("message_type") == "buntime:worker:output" and line["message"] == text
            ),
            timeout=5,
        )

    imported = await output("printer imported")
    assert {key: imported[key] for key in tags} == tags
    for marker in ("m-one", "m-two"):
        out = await output(f"to stdout {marker}")
        err = await output(f"to stderr {marker}")
        assert {key: out[key] for key in tags} == tags
        assert {key: err[key] for key in tags} == tags
        assert (out["stream"], err["stream"]) == ("stdout", "stderr")
    assert shared.unparsed == []
    assert not [
        line for line in shared.messages("buntime:worker:crash") if line["app"] == "printer"
    ]


# -- bodies and streams -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_five_megabytes_each_way_and_empty_bodies(shared):
    """5 MB up and back (routes and Flask), 5 MB generated, and empty bodies, byte for byte."""
    size = 5 * 1024 * 1024
    payload = random.Random(5).randbytes(size)
    for path in ("/routes-demo@1/echo", "/wsgi-demo@1/echo"):
        response = await shared.request("POST", path, data=payload)
        assert response.code == 200
        body = await response.content()
        assert len(body) == size and body == payload, path

    response = await shared.get(f"/routes-demo@1/bytes/{size}")
    body = await response.content()
    pattern = bytes(range(256))
    assert body == pattern * (size // 256)

    for path in ("/routes-demo@1/echo", "/wsgi-demo@1/echo"):
        response = await shared.request("POST", path, data=b"")
        assert (response.code, await response.content()) == (200, b""), path


@pytest.mark.parametrize("app", ["sse", "sse-asgi", "sse-wsgi"])
@pytest_twisted.ensureDeferred
async def test_server_sent_events_reach_the_client_before_the_app_finishes(shared, tmp_path, app):
    """
    The app (routes, ASGI, WSGI) sends one event, then waits for a file the
    test creates only once that event has arrived: a runtime that buffered
    the stream would never deliver it in time.
    """
    from twisted.internet import reactor

    release = tmp_path / "release"
    query = urllib.parse.urlencode({"release": str(release)})
    response = await within(reactor, shared.get(f"/{app}@1/events?{query}", unbuffered=True), 10)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    received: list[bytes] = []
    first_event: Deferred[None] = Deferred()

    def collect(data: bytes) -> None:
        received.append(data)
        if b"data: 1\n\n" in b"".join(received) and not first_event.called:
            first_event.callback(None)

    done = treq.collect(response, collect)
    await within(reactor, first_event, 5)
    assert b"data: 2" not in b"".join(received)
    release.write_text("go")
    await within(reactor, done, 10)
    assert b"".join(received) == b"data: 1\n\ndata: 2\n\n"


# -- environment --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_worker_environment_is_filtered_and_secrets_never_logged(shared):
    """
    Only C{PLAIN} of the manifest's C{env} arrives; the runtime's own
    environment is not inherited; buntime's variables are there; the warning
    names the blocked variables and no log line holds a secret value.
    """
    env = await get_json(shared, "/envy@1/env")
    assert set(env) <= WORKER_ENV | {"PLAIN"}, sorted(set(env) - WORKER_ENV)
    assert env["PLAIN"] == "ok"
    for name in (*SECRETS, "SECRET_FROM_RUNTIME"):
        assert name not in env, name
    assert not set(SECRETS.values()) & set(env.values())
    assert RUNTIME_SECRET not in env.values()
    assert json.loads(env["WORKER_CONFIG"])["env"] == {"PLAIN": "ok"}

    ready = await ready_line(shared, "envy")
    assert len(ready_lines(shared, "envy")) == 1
    assert env["WORKER_ID"] == ready["worker_id"]
    assert env["APP_DIR"].endswith("envy@1.0.0")
    assert env["RUNTIME_API_URL"] == shared.url
    assert await get_json(shared, "/envy@1/env") == env  # the warning below is not repeated

    (warning,) = [
        line for line in shared.messages("buntime:apps:env-blocked") if "envy" in line["app"]
    ]
    assert warning["level"] == "warn"
    for name in SECRETS:
        assert name in warning["message"]
    everything = json.dumps(shared.lines) + "\n".join(shared.stderr + shared.unparsed)
    for value in (*SECRETS.values(), RUNTIME_SECRET):
        assert value not in everything


# -- a broken app -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_invalid_manifest_answers_500_naming_app_and_field_others_still_served(shared):
    response = await shared.get("/broken@1/")
    assert response.code == 500
    error = (await shared.json(response))["error"]
    assert error["code"] == "INVALID_MANIFEST"
    assert "broken@1.0.0" in error["message"]
    assert "ttl" in error["message"]
    seen = await get_json(shared, "/probe@1/still")
    assert seen["path"] == "/still"

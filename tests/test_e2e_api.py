"""
Routing and the core API through a real runtime: version resolution over a
tree of layouts and two worker dirs, static apps (SPA fallback, base
injection, traversal), installing and removing an app over HTTP, CSRF, body
limits, the homepage and the API's own documents.

One runtime (with C{RUNTIME_HOMEPAGE=hello}) serves the whole module.
Requests whose exact bytes matter (C{..}, C{%5E}, chunked bodies) go over a
raw socket so no client normalises them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import (
    copy_demo,
    get_bytes,
    listing,
    multipart,
    parse_reply,
    pid_alive,
    raw_request,
    static_app,
    tree,
    wait_until,
    write_app,
    zip_archive,
)
from runtime import Runtimes
from twisted.internet.task import deferLater

pytestmark = pytest.mark.e2e

SENTINEL = "e2e-sentinel-do-not-serve-31d7"
OUTSIDE = "e2e-outside-sentinel-a90c"

ECHO = """
    from buntime.http import Response

    def echo(request):
        return Response(200, {"content-type": "application/octet-stream"}, request.body)

    routes = {"/echo": {"POST": echo}}
"""

VERSION_WORKER = """
    routes = {"/": "<html><head><title>[ver 2.0.0 worker]</title></head></html>"}
"""


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two worker dirs under one root; sentinels in the first dir and in the root."""
    root = tmp_path_factory.mktemp("api")
    first, second = root / "first", root / "second"
    # ver: flat and nested in the first dir, flat in the second.
    static_app(first, "ver", "1.0.0", "[ver 1.0.0]")
    static_app(first, "ver", "1.4.2", "[ver 1.4.2 flat first]")
    static_app(first, "ver", "1.4.2", "[ver 1.4.2 nested first]", layout="nested")
    static_app(first, "ver", "1.4.5", "[ver 1.4.5]", layout="nested")
    write_app(
        first,
        "ver",
        "2.0.0",
        layout="nested",
        manifest={"ttl": "5m"},
        files={"app.py": VERSION_WORKER},
    )
    static_app(second, "ver", "1.4.2", "[ver 1.4.2 second]")
    static_app(second, "ver", "1.10.0", "[ver 1.10.0]")
    # lat: a flat 1.0.0 in the first dir, the simple layout (latest) in the second.
    static_app(first, "lat", "1.0.0", "[lat 1.0.0]")
    static_app(second, "lat", None, "[lat latest]", layout="simple")

    copy_demo(first, "hello", layout="simple")
    write_app(
        first,
        "tiny",
        "1.0.0",
        manifest={"ttl": "5m", "maxBodySize": "1kb"},
        files={"app.py": ECHO},
    )
    (first / "secret-sentinel.txt").write_text(SENTINEL)
    (root / "secret-outside.txt").write_text(OUTSIDE)
    return first, second


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(dirs: tuple[Path, Path]):
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield await factory.start(
            worker_dirs=[str(d) for d in dirs],
            env={"RUNTIME_ENV": "test", "RUNTIME_HOMEPAGE": "hello"},
        )
    finally:
        await factory.kill_all()


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def raw_get(proc: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET C{path} byte for byte as written."""
    host = f"127.0.0.1:{proc.port}"
    return parse_reply(await raw_request(reactor_(), proc.port, get_bytes(path, host)))


def title(body: bytes) -> str:
    found = re.search(rb"<title>(.*?)</title>", body)
    assert found is not None, body[:200]
    return found.group(1).decode()


def origin(proc: Any) -> dict[str, str]:
    return {"Origin": proc.url}


# -- version resolution ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ver/", "[ver 2.0.0 worker]"),  # no latest: the highest version
        ("/ver@1/", "[ver 1.10.0]"),  # semver order: 1.10.0 > 1.4.5
        ("/ver@1.4/", "[ver 1.4.5]"),
        ("/ver@1.4.2/", "[ver 1.4.2 flat first]"),  # flat beats nested, first dir beats second
        ("/ver@1.0.0/", "[ver 1.0.0]"),
        ("/ver@^1.0.0/", "[ver 1.10.0]"),
        ("/ver@%5E1.0.0/", "[ver 1.10.0]"),
        ("/ver@~1.4.0/", "[ver 1.4.5]"),
        ("/ver@%7E1.4.0/", "[ver 1.4.5]"),
        ("/ver@1.x/", "[ver 1.10.0]"),
        ("/ver@%3E%3D1%20%3C1.4.5/", "[ver 1.4.2 flat first]"),
        ("/ver@1.0.0%20%7C%7C%202.0.0/", "[ver 2.0.0 worker]"),
        ("/lat/", "[lat latest]"),  # latest when present
        ("/lat@latest/", "[lat latest]"),
        ("/lat@1/", "[lat 1.0.0]"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_version_resolution(shared, path, expected):
    status, _, body = await raw_get(shared, path)
    assert status == 200, (path, body[:300])
    assert title(body) == expected


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ver@latest/", "VERSION_NOT_FOUND"),
        ("/ver@9/", "VERSION_NOT_FOUND"),
        ("/ver@1.4.3/", "VERSION_NOT_FOUND"),
        ("/nope/", "NOT_FOUND"),
        ("/nope@1/", "NOT_FOUND"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_no_matching_app_or_version_is_404_with_x_not_found(shared, path, code):
    status, headers, body = await raw_get(shared, path)
    assert status == 404, (path, body[:300])
    assert headers.get("x-not-found") == "true"
    assert json.loads(body)["error"]["code"] == code
    if code == "VERSION_NOT_FOUND":
        assert b"versions that exist: 2.0.0, 1.10.0, 1.4.5, 1.4.2, 1.0.0" in body


@pytest.mark.parametrize("path", ["/ver@not!valid/", "/ver@%3E%3Dbanana/", "/ver@1.2.3.4.5/"])
@pytest_twisted.ensureDeferred
async def test_invalid_range_is_400_json(shared, path):
    response = await shared.get(path)
    assert response.code == 400, path
    error = (await shared.json(response))["error"]
    assert error["code"] == "INVALID_VERSION_RANGE"


@pytest_twisted.ensureDeferred
async def test_app_dropped_in_or_removed_on_disk_is_seen_within_a_second(shared, dirs):
    """No API call: a new directory is served, a removed one 404s, within about a second."""
    reactor = reactor_()
    status, _, _ = await raw_get(shared, "/fresh@1/")
    assert status == 404
    app = static_app(dirs[1], "fresh", "1.0.0", "[fresh 1.0.0]")
    since = reactor.seconds()
    while (await raw_get(shared, "/fresh@1/"))[0] != 200:
        assert reactor.seconds() - since < 1.5, "a new app must be served within a second"
        await deferLater(reactor, 0.05, lambda: None)
    shutil.rmtree(app)
    since = reactor.seconds()
    while (await raw_get(shared, "/fresh@1/"))[0] != 404:
        assert reactor.seconds() - since < 1.5, "a removed app must go within a second"
        await deferLater(reactor, 0.05, lambda: None)


# -- static apps ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_static_spa_fallback_and_base_injection(shared):
    for path in ("/hello/", "/hello/some/deep/route", "/hello/items/2"):
        response = await shared.get(path)
        assert response.code == 200, path
        body = await response.text()
        assert "Hello, world!" in body
        assert '<head><base href="/hello/">' in body, body[:200]
    response = await shared.get("/hello/style.css")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/css")
    assert "<base" not in await response.text()


TRAVERSALS = [
    "/hello/../secret-sentinel.txt",
    "/hello/../../secret-outside.txt",
    "/hello/../../etc/passwd",
    "/hello/../../../../../../../../etc/passwd",
    "/hello/%2e%2e%2fsecret-sentinel.txt",
    "/hello/%2e%2e/%2e%2e/secret-outside.txt",
    "/hello/..%2f..%2fsecret-outside.txt",
    "/hello/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/hello/..%5csecret-sentinel.txt",
]


@pytest.mark.parametrize(
    ("path", "statuses"),
    [(path, (403,)) for path in TRAVERSALS]
    # Decoded once, this names a file called "%2e%2e%2f...": not there, not a way out.
    + [("/hello/%252e%252e%252fsecret-sentinel.txt", (403, 404))],
)
@pytest_twisted.ensureDeferred
async def test_static_traversal_never_leaks_a_file_outside_the_app(shared, path, statuses):
    status, _, body = await raw_get(shared, path)
    assert SENTINEL.encode() not in body
    assert OUTSIDE.encode() not in body
    assert b"root:" not in body
    assert status in statuses, (path, status, body[:200])


# -- installing and removing apps ---------------------------------------------------------

UPLOADED_APP = """
    import os

    routes = {"/": lambda request: {"hello": "uploaded", "build": BUILD, "pid": os.getpid()}}
"""


async def post_app(proc: Any, files: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Upload an app of C{files} as a zip archive: the status and the answer."""
    body, content_type = multipart("file", "app.zip", zip_archive(files))
    response = await proc.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, **origin(proc)},
    )
    return response.code, await proc.json(response)


async def upload_files(proc: Any, files: dict[str, str]) -> dict[str, Any]:
    """Upload an app of C{files} as a zip archive; its answer (200 expected)."""
    status, answer = await post_app(proc, files)
    assert status == 200, answer
    return answer


async def upload(proc: Any, build: str) -> dict[str, Any]:
    """Upload C{uploaded@1.2.3}; its app answers C{build}."""
    return await upload_files(
        proc,
        {
            "manifest.yaml": "name: uploaded\nversion: 1.2.3\nttl: 5m\n",
            "app.py": f"BUILD = {build!r}\n" + textwrap.dedent(UPLOADED_APP),
        },
    )


async def served_within_a_second(proc: Any, path: str, build: str) -> dict[str, Any]:
    """Poll C{path} until it answers C{build}; fail if it has not after one second."""
    reactor = reactor_()
    since = reactor.seconds()
    seen: list[Any] = []
    while True:
        response = await proc.get(path)
        answer = await response.content()
        seen.append((response.code, answer[:200]))
        if response.code == 200:
            data = json.loads(answer)
            if data["build"] == build:
                return data
        assert reactor.seconds() - since < 1.0, seen


@pytest_twisted.ensureDeferred
async def test_upload_serve_replace_delete(shared, dirs):
    """
    An uploaded app answers at once; uploading the same version again
    replaces it (its old worker retired); deleting it makes it 404.
    """
    reactor = reactor_()
    answer = await upload(shared, "first")
    assert answer["success"] is True
    app = answer["data"]["app"]
    assert (app["name"], app["version"]) == ("uploaded", "1.2.3")
    assert app["installedAt"]
    assert (dirs[0] / "uploaded" / "1.2.3" / "app.py").is_file()
    first = await served_within_a_second(shared, "/uploaded@1.2.3/", "first")
    listed = await shared.json(await shared.get("/api/apps"))
    assert "1.2.3" in next(app for app in listed if app["name"] == "uploaded")["versions"]

    await upload(shared, "second")
    second = await served_within_a_second(shared, "/uploaded@1.2.3/", "second")
    assert second["pid"] != first["pid"]
    assert await wait_until(reactor, lambda: not pid_alive(first["pid"]), 5.0), "old worker"

    response = await shared.request("DELETE", "/api/apps/_/uploaded/1.2.3", headers=origin(shared))
    answer = await shared.json(response)
    assert response.code == 200, answer
    assert answer["success"] is True
    response = await shared.get("/uploaded@1.2.3/")
    assert response.code == 404
    assert response.headers.getRawHeaders("x-not-found") == ["true"]
    await response.content()
    assert not (dirs[0] / "uploaded" / "1.2.3").exists()
    assert await wait_until(reactor, lambda: not pid_alive(second["pid"]), 5.0), "retired"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "files, code",
    [
        (
            {"manifest.yaml": "name: uploaded\nversion: 1.2.3\n", "README": "x"},
            "INVALID_ENTRYPOINT",
        ),
        (
            {"manifest.yaml": "name: uploaded\nversion: 1.2.3\nentrypoint: gone.py\n"},
            "INVALID_ENTRYPOINT",
        ),
        (
            {"manifest.yaml": "name: uploaded\nversion: 1.2.3\nttl: soon\n", "app.py": ""},
            "INVALID_MANIFEST",
        ),
    ],
)
async def test_an_upload_that_could_not_be_served_is_refused_and_changes_nothing(
    shared, dirs, files, code
):
    """
    An archive whose app could not be served (no entrypoint, a missing one,
    an invalid manifest) is refused with 400 before it replaces anything:
    the working copy of that version goes on answering from its worker.
    """
    await upload(shared, "working")
    before = await served_within_a_second(shared, "/uploaded@1.2.3/", "working")
    status, answer = await post_app(shared, files)
    assert status == 400, answer
    assert answer["error"]["code"] == code, answer
    assert "uploaded@1.2.3" in answer["error"]["message"], answer
    assert ".buntime-install" not in answer["error"]["message"], answer  # no temporary path
    after = await served_within_a_second(shared, "/uploaded@1.2.3/", "working")
    assert after["pid"] == before["pid"]
    assert [name for name in os.listdir(dirs[0]) if name.startswith(".")] == []
    assert sorted(os.listdir(dirs[0] / "uploaded" / "1.2.3")) == ["app.py", "manifest.yaml"]


QUEUED_APP = """
    import os
    import time

    def hold(request):
        open(os.path.join(SIGNALS, "started"), "w").close()
        release = os.path.join(SIGNALS, "release")
        deadline = time.monotonic() + 20
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"build": BUILD, "held": True}

    routes = {"/": lambda request: {"build": BUILD}, "/hold": hold}
"""


async def upload_queued(proc: Any, build: str, signals: Path) -> None:
    """Upload C{queued@1.0.0}: one request at a time; C{/hold} waits for C{signals}/release."""
    await upload_files(
        proc,
        {
            "manifest.yaml": "name: queued\nversion: 1.0.0\nttl: 5m\n"
            "maxConcurrency: 1\nmaxInstances: 1\n",
            "app.py": f"BUILD = {build!r}\nSIGNALS = {str(signals)!r}\n"
            + textwrap.dedent(QUEUED_APP),
        },
    )


@pytest_twisted.ensureDeferred
async def test_a_request_waiting_while_its_app_is_replaced_is_served_by_the_new_one(
    shared, tmp_path
):
    """
    A request queued for a busy app when an upload replaces the app is
    served by the new version (it was never sent to the old one), not
    refused with 503 APP_RETIRED; the request the old worker holds still
    finishes there.
    """
    reactor = reactor_()
    await upload_queued(shared, "first", tmp_path)
    await served_within_a_second(shared, "/queued@1.0.0/", "first")
    held = shared.get("/queued@1.0.0/hold")
    assert await wait_until(reactor, (tmp_path / "started").exists, 10.0), "the hold began"

    def started(line: dict[str, Any]) -> bool:
        return (
            line.get("action_type") == "buntime:http:request"
            and line.get("action_status") == "started"
            and line.get("path") == "/queued@1.0.0/"
        )

    before = len([line for line in shared.lines if started(line)])
    seen: list[dict[str, Any]] = []

    def queued(line: dict[str, Any]) -> bool:
        if started(line):
            seen.append(line)
        return len(seen) > before

    waiting = shared.get("/queued@1.0.0/")
    await shared.wait_for_log(queued)  # it arrived, and waits behind the held request
    await upload_queued(shared, "second", tmp_path)
    response = await waiting
    answer = await shared.json(response)
    assert (response.code, answer) == (200, {"build": "second"})
    (tmp_path / "release").touch()
    response = await held
    assert (response.code, await shared.json(response)) == (200, {"build": "first", "held": True})


@pytest.mark.parametrize(
    ("entries", "symlinks"),
    [
        ({"../escaped.txt": "pwned"}, {}),
        ({"../../secret-outside.txt": "pwned"}, {}),
        ({"/tmp/absolute-escape.txt": "pwned"}, {}),
        ({"a/../../x.txt": "pwned"}, {}),
        ({}, {"link": "../../secret-outside.txt"}),
    ],
    ids=["dotdot", "dotdot-onto-sentinel", "absolute", "inner-dotdot", "symlink"],
)
@pytest_twisted.ensureDeferred
async def test_zip_slip_archive_is_refused_and_nothing_is_written(shared, dirs, entries, symlinks):
    root = dirs[0].parent
    before, listed = tree(root), listing(root)
    archive = zip_archive(
        {
            "manifest.yaml": "name: evil\nversion: 1.0.0\n",
            "app.py": "routes = {'/': 'evil'}\n",
            **entries,
        },
        symlinks,
    )
    body, content_type = multipart("file", "evil.zip", archive)
    response = await shared.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, **origin(shared)},
    )
    answer = await shared.json(response)
    assert 400 <= response.code < 500, answer
    assert answer["error"]["code"] in ("PATH_TRAVERSAL", "INVALID_ARCHIVE")
    assert tree(root) == before
    assert listing(root) == listed, "no directory was left behind either"
    assert (root / "secret-outside.txt").read_text() == OUTSIDE
    assert not Path("/tmp/absolute-escape.txt").exists()
    response = await shared.get("/evil@1.0.0/")
    assert response.code == 404
    await response.content()


# -- CSRF ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_csrf_origin_rules_on_the_core_api(shared):
    async def call(method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        response = await shared.request(method, path, headers=headers)
        return response.code, await shared.json(response)

    # No Origin: refused, and nothing is deleted.
    assert await call("POST", "/api/plugins/reload", {}) == (
        403,
        {"error": {"code": "FORBIDDEN", "message": "Forbidden - Origin required"}},
    )
    status, answer = await call("DELETE", "/api/apps/_/ver", {})
    assert (status, answer["error"]["message"]) == (403, "Forbidden - Origin required")
    status, _, _ = await raw_get(shared, "/ver@1.0.0/")
    assert status == 200

    port = shared.port
    for foreign in (
        "http://evil.example",
        f"http://127.0.0.1:{port + 1}",
        f"http://user:pw@127.0.0.1:{port}",
        f"ftp://127.0.0.1:{port}",
        "null",
        f"http://127.0.0.1:{port}/evil/path",  # an origin has no path, query or fragment
        f"http://127.0.0.1:{port}/",
        f"http://127.0.0.1:{port}?x",
        f"http://127.0.0.1:{port}#x",
    ):
        status, answer = await call("POST", "/api/plugins/reload", {"Origin": foreign})
        assert (status, answer["error"]["message"]) == (
            403,
            f"Forbidden - Origin {foreign} is not this runtime's:"
            f" expected http://127.0.0.1:{port} or https://127.0.0.1:{port}",
        ), foreign

    # The runtime's own origin, or the internal header, pass.
    status, answer = await call("POST", "/api/plugins/reload", origin(shared))
    assert (status, answer["ok"]) == (200, True)
    status, answer = await call("POST", "/api/plugins/reload", {"x-buntime-internal": "true"})
    assert (status, answer["ok"]) == (200, True)
    status, answer = await call("DELETE", "/api/apps/_/no-such-app", {"x-buntime-internal": "true"})
    assert (status, answer["error"]["code"]) == (404, "APP_NOT_FOUND")
    # Safe methods need no Origin.
    status, _ = await call("GET", "/api/apps", {})
    assert status == 200


# -- body limits ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_body_limit_of_an_app(shared):
    """C{maxBodySize: 1kb}: 2 KB (sized or chunked) is 413 with a request id; 500 B works."""
    response = await shared.request(
        "POST", "/tiny@1/echo", data=b"x" * 2048, headers={"x-request-id": "too-big-1"}
    )
    assert response.code == 413
    assert response.headers.getRawHeaders("x-request-id") == ["too-big-1"]
    await response.content()

    host = f"127.0.0.1:{shared.port}"
    chunks = b"".join(b"200\r\n" + b"y" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    chunked = (
        f"POST /tiny@1/echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\nx-request-id: too-big-2\r\n\r\n"
    ).encode() + chunks
    status, headers, _ = parse_reply(await raw_request(reactor_(), shared.port, chunked))
    assert status == 413
    assert headers.get("x-request-id") == "too-big-2"

    response = await shared.request("POST", "/tiny@1/echo", data=b"z" * 500)
    assert response.code == 200
    assert await response.content() == b"z" * 500
    small = (
        (
            f"POST /tiny@1/echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + b"1f4\r\n"
        + b"w" * 500
        + b"\r\n0\r\n\r\n"
    )
    status, _, body = parse_reply(await raw_request(reactor_(), shared.port, small))
    assert (status, body) == (200, b"w" * 500)


# -- homepage and the API's documents ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_homepage_app_serves_the_root(shared):
    response = await shared.get("/")
    assert response.code == 200
    body = await response.text()
    assert "Hello, world!" in body
    assert "Buntime v" not in body
    # ... and it is the fallback for navigation requests nothing else claims.
    response = await shared.get("/some/client/route", headers={"Sec-Fetch-Mode": "navigate"})
    assert response.code == 200
    assert "Hello, world!" in await response.text()
    response = await shared.get("/some/client/route")  # not a navigation: a plain 404
    assert response.code == 404
    await response.content()


CORE_ROUTES = {
    ("/api/health", "get"),
    ("/api/health/live", "get"),
    ("/api/health/ready", "get"),
    ("/api/apps", "get"),
    ("/api/apps/upload", "post"),
    ("/api/apps/{scope}/{name}", "delete"),
    ("/api/apps/{scope}/{name}/{version}", "delete"),
    ("/api/plugins", "get"),
    ("/api/plugins/loaded", "get"),
    ("/api/plugins/reload", "post"),
    ("/api/plugins/upload", "post"),
    ("/api/plugins/{name}", "delete"),
    ("/api/openapi.json", "get"),
    ("/api/docs", "get"),
    ("/.well-known/buntime", "get"),
}


@pytest_twisted.ensureDeferred
async def test_openapi_lists_every_core_route_and_docs_are_html(shared):
    response = await shared.get("/api/openapi.json")
    assert response.code == 200
    document = await shared.json(response)
    assert document["openapi"].startswith("3.1")
    listed = {(path, method) for path, item in document["paths"].items() for method in item}
    missing = CORE_ROUTES - listed
    assert not missing, f"not in the OpenAPI document: {sorted(missing)}"

    response = await shared.get("/api/docs")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/html")
    page = await response.text()
    assert "<html" in page.lower()
    assert "/api/apps/upload" in page or "openapi.json" in page


def declared_schema(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    """The JSON schema C{document} declares for C{status} of an operation, C{$ref}s inlined."""

    def inline(node: Any) -> Any:
        if isinstance(node, dict) and "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline(target)
        if isinstance(node, dict):
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    responses = document["paths"][path][method]["responses"]
    response = inline(responses.get(str(status)) or responses["default"])
    content = response.get("content") or {}
    assert "application/json" in content, f"{method} {path} {status} declares no JSON body"
    schema = content["application/json"]["schema"]
    assert schema, f"{method} {path} {status} declares an empty schema"
    return schema


@pytest_twisted.ensureDeferred
async def test_every_core_answer_has_the_shape_the_openapi_document_declares(shared):
    """What a client generated from the served document expects is what the runtime answers."""
    from jsonschema import Draft202012Validator

    document = await shared.json(await shared.get("/api/openapi.json"))
    change = {"headers": origin(shared)}
    archive, content_type = multipart(
        "file",
        "shape.zip",
        zip_archive({"manifest.yaml": "name: shape\nversion: 1.0.0\n", "index.html": "x"}),
    )
    upload_body = {"data": archive, "headers": {"Content-Type": content_type, **origin(shared)}}
    calls = [
        ("GET", "/api/health", "/api/health", {}),
        ("GET", "/api/health/live", "/api/health/live", {}),
        ("GET", "/api/health/ready", "/api/health/ready", {}),
        ("GET", "/.well-known/buntime", "/.well-known/buntime", {}),
        ("GET", "/api/openapi.json", "/api/openapi.json", {}),
        ("GET", "/api/apps", "/api/apps", {}),
        ("POST", "/api/apps/upload", "/api/apps/upload", upload_body),
        ("DELETE", "/api/apps/_/shape/1.0.0", "/api/apps/{scope}/{name}/{version}", change),
        ("POST", "/api/apps/upload", "/api/apps/upload", upload_body),
        ("DELETE", "/api/apps/_/shape", "/api/apps/{scope}/{name}", change),
        ("GET", "/api/plugins", "/api/plugins", {}),
        ("GET", "/api/plugins/loaded", "/api/plugins/loaded", {}),
        ("POST", "/api/plugins/reload", "/api/plugins/reload", change),
        ("POST", "/api/plugins/upload", "/api/plugins/upload", change),  # 400: no file
        ("DELETE", "/api/plugins/%40acme%2Fnone", "/api/plugins/{name}", change),  # 404
    ]
    statuses = []
    for method, path, template, request in calls:
        response = await shared.request(method, path, **request)
        answer = await shared.json(response)
        statuses.append(response.code)
        schema = declared_schema(document, template, method.lower(), response.code)
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(answer)]
        assert not errors, (method, path, response.code, answer, errors)
    assert statuses == [200] * 13 + [400, 404]

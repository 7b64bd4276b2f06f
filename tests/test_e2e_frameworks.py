"""
Real Flask, FastAPI and Django (with its admin) apps through a real runtime,
held to what gunicorn and uvicorn would give them (issue 12): C{//} after
the base stays the app's path, no C{<base href>} in their HTML unless asked
for, a long-lived worker by default, the app's own status line, a small
streamed body sent as yielded, forwarded headers only from a trusted proxy,
and background work that finishes when its worker retires.

One runtime serves most tests; the untrusted-proxy and SIGTERM tests start
their own. The Django database is made once for the module.
"""

from __future__ import annotations

import hashlib
import io
import re
import urllib.parse
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from e2e_apps import get_bytes, raw_request, wait_until, within
from e2e_frameworks import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    STREAM_FIRST,
    STREAM_SECOND,
    Page,
    build_apps,
    prepare_django,
)
from runtime import Runtimes
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

pytestmark = pytest.mark.e2e

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("framework-apps")
    database = tmp_path_factory.mktemp("django-db") / "site.sqlite3"
    build_apps(root, database)
    prepare_django(root / "dj", database)
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path):
    factory = Runtimes(reactor_())
    try:
        yield await factory.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    finally:
        await factory.kill_all()


async def get_json(proc: Any, path: str, **kwargs: Any) -> Any:
    response = await proc.get(path, **kwargs)
    assert response.code == 200, (path, response.code, await response.text())
    return await proc.json(response)


async def status_line(proc: Any, path: str) -> bytes:
    """The status line exactly as the runtime sent it."""
    reply = await raw_request(reactor_(), proc.port, get_bytes(path, "127.0.0.1"))
    return reply.partition(b"\r\n")[0]


class Browser:
    """An HTTP client with its own cookies that sends what a browser would on a form post."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        pool = HTTPConnectionPool(reactor_(), persistent=False)
        self.http = HTTPClient(Agent(reactor_(), pool=pool), cookiejar=CookieJar())

    def url(self, path: str) -> str:
        return self.proc.url + path

    async def get(self, url: str) -> tuple[Any, str]:
        response = await self.http.get(url, allow_redirects=False)
        return response, await response.text()

    async def submit(self, page: Page, fields: dict[str, str]) -> Any:
        """Post the page's one form, its hidden fields (the CSRF token) included."""
        (form,) = page.forms
        data = {**page.fields, **fields}
        headers = {"Origin": self.proc.url, "Referer": page.url}
        action = page.resolve(form.get("action", ""))
        response = await self.http.post(action, data=data, headers=headers, allow_redirects=False)
        await response.content()
        return response


# -- paths ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_double_slash_after_the_base_is_the_apps_path(shared):
    """
    C{/<app>//x//y}: Flask's C{PATH_INFO} is C{//x//y} (as gunicorn gives
    it), FastAPI's C{path} ends in C{//x//y} and routes on it.
    """
    seen = await get_json(shared, "/flask-app//x//y?seen")
    assert seen == {"SCRIPT_NAME": "/flask-app", "PATH_INFO": "//x//y"}
    seen = await get_json(shared, "/flask-app@latest//x//y?seen")
    assert seen == {"SCRIPT_NAME": "/flask-app@latest", "PATH_INFO": "//x//y"}

    seen = await get_json(shared, "/fastapi-app//x//y")
    assert seen == {"root_path": "/fastapi-app", "path": "/fastapi-app//x//y", "rest": "/x//y"}


# -- <base href> ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_flask_and_fastapi_html_gets_no_base_tag(shared):
    for app in ("flask-app", "fastapi-app"):
        response = await shared.get(f"/{app}/page")
        page = await response.text()
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/html")
        assert "<head><title>" in page and "<base" not in page, (app, page)


@pytest_twisted.ensureDeferred
async def test_django_admin_links_resolve_without_a_base_tag(shared):
    """
    Log in through the admin's own form (its CSRF token and cookie; a forged
    token is refused), open the users changelist: no C{<base>} in it, and its sort link C{?o=1},
    resolved as a browser does, is the changelist again and answers 200.
    With C{injectBase: true} the tag is there (and would send that link to
    the app's root).
    """
    browser = Browser(shared)
    changelist = browser.url("/dj/admin/auth/user/")
    response, _ = await browser.get(changelist)
    assert response.code == 302  # not logged in yet
    login_url = urllib.parse.urljoin(changelist, response.headers.getRawHeaders("location")[0])
    assert urllib.parse.urlsplit(login_url).path == "/dj/admin/login/"

    response, html = await browser.get(login_url)
    assert response.code == 200, html
    login = Page(login_url, html)
    assert login.bases == [] and "<base" not in html
    assert login.fields["csrfmiddlewaretoken"]
    credentials = {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
    response = await browser.submit(login, {**credentials, "csrfmiddlewaretoken": "forged"})
    assert response.code == 403, "CSRF protection let a forged token through"
    response = await browser.submit(login, credentials)
    assert response.code == 302, "the login form was refused"
    assert login.resolve(response.headers.getRawHeaders("location")[0]) == changelist

    response, html = await browser.get(changelist)
    assert response.code == 200, html
    assert "Select user to change" in html and ADMIN_USER in html
    page = Page(changelist, html)
    assert page.bases == [] and "<base" not in html
    sort = next(link for link in page.links if re.fullmatch(r"\?o=-?\d+(\.-?\d+)*", link))
    sorted_url = page.resolve(sort)
    assert urllib.parse.urlsplit(sorted_url).path == "/dj/admin/auth/user/"
    response, html = await browser.get(sorted_url)
    assert response.code == 200, html
    assert "Select user to change" in html

    # The same site with injectBase: true (same database, so the session holds)
    based_changelist = browser.url("/dj-based/admin/auth/user/")
    response, html = await browser.get(based_changelist)
    assert response.code == 200, html
    based = Page(based_changelist, html)
    assert based.bases == ["/dj-based/"]
    assert urllib.parse.urlsplit(based.resolve(sort)).path == "/dj-based/"


# -- worker lifetime --------------------------------------------------------------


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
@pytest_twisted.ensureDeferred
async def test_default_manifest_keeps_one_worker_ttl_0_starts_one_per_request(shared, framework):
    """
    Without C{ttl} two requests in a row reach the same worker and its
    in-memory state; C{ttl: 0} gives each request a fresh worker.
    """
    first, second = [await get_json(shared, f"/{framework}-app/hits") for _ in range(2)]
    assert second["pid"] == first["pid"]
    assert second["hits"] == first["hits"] + 1

    first, second = [await get_json(shared, f"/{framework}-eph/hits") for _ in range(2)]
    assert second["pid"] != first["pid"]
    assert (first["hits"], second["hits"]) == (1, 1)


# -- status lines -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_lines_carry_the_apps_reason_or_the_standard_phrase(shared):
    """
    Flask's C{"299 Custom Thing"} reaches the client as it is; FastAPI's
    validation error is a 422 with RFC 9110's phrase, as uvicorn sends it
    on Python 3.13 (whatever the Python here).
    """
    assert await status_line(shared, "/flask-app/custom") == b"HTTP/1.1 299 Custom Thing"
    line = await status_line(shared, "/fastapi-app/items/abc")
    assert line == b"HTTP/1.1 422 Unprocessable Content"


# -- streaming --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_small_flask_stream_reaches_the_client_as_yielded(shared, tmp_path):
    """
    Flask streams 2 x 1000 bytes with their C{Content-Length}; the second
    chunk waits for a file the test writes only once the first chunk has
    arrived, so a runtime holding the body until it is whole fails.
    """
    reactor = reactor_()
    release = tmp_path / "release"
    query = urllib.parse.urlencode({"release": str(release)})
    response = await within(reactor, shared.get(f"/flask-app/drip?{query}", unbuffered=True), 10)
    assert response.code == 200
    total = len(STREAM_FIRST) + len(STREAM_SECOND)
    assert response.length == total  # the app's Content-Length, not chunked
    received: list[bytes] = []
    first_chunk: Deferred[None] = Deferred()

    def collect(data: bytes) -> None:
        received.append(data)
        if len(b"".join(received)) >= len(STREAM_FIRST) and not first_chunk.called:
            first_chunk.callback(None)

    done = treq.collect(response, collect)
    await within(reactor, first_chunk, 10)
    assert b"".join(received) == STREAM_FIRST
    release.write_text("go")
    await within(reactor, done, 10)
    assert b"".join(received) == STREAM_FIRST + STREAM_SECOND


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("framework", ["flask", "fastapi"])
@pytest_twisted.ensureDeferred
async def test_an_upload_reaches_flask_and_fastapi_whole_with_or_without_a_length(
    shared, framework, framing
):
    """
    3 MB (an upload: streamed to the worker as it arrives), with its
    C{Content-Length} or chunked: Flask's C{request.stream} and FastAPI's
    C{request.stream()} read all of it, as under gunicorn and uvicorn.
    """
    from test_e2e_proxy import Chunked
    from twisted.web.client import FileBodyProducer

    data = bytes(range(256)) * (3 * 4096)
    source = io.BytesIO(data)
    body = FileBodyProducer(source if framing == "length" else Chunked(source))
    response = await shared.request("POST", f"/{framework}-app/upload", data=body)
    assert response.code == 200
    seen = await shared.json(response)
    assert seen == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- forwarded headers ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_django_trusts_forwarded_headers_from_the_default_trusted_proxy(shared):
    """From 127.0.0.1 (trusted by default) Django behind SECURE_PROXY_SSL_HEADER sees https."""
    seen = await get_json(shared, "/dj/forwarded", headers=FORWARDED)
    assert seen == {"is_secure": True, "forwarded_for": "203.0.113.9"}
    seen = await get_json(shared, "/dj/forwarded")
    assert seen == {"is_secure": False, "forwarded_for": None}


@pytest_twisted.ensureDeferred
async def test_django_never_sees_forwarded_headers_from_an_untrusted_peer(runtimes, worker_dir):
    """With only 10.9.9.9 trusted, a client on 127.0.0.1 cannot make Django think it is https."""
    proc = await runtimes.start(
        worker_dirs=[str(worker_dir)],
        env={"RUNTIME_ENV": "test", "RUNTIME_FORWARDED_ALLOW_IPS": "10.9.9.9"},
    )
    seen = await get_json(proc, "/dj/forwarded", headers=FORWARDED)
    assert seen == {"is_secure": False, "forwarded_for": None}


# -- background work --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_background_task_of_an_ephemeral_app_completes(shared, tmp_path):
    """C{ttl: 0}: the task FastAPI runs after the response still writes its file."""
    target = tmp_path / "written"
    query = urllib.parse.urlencode({"target": str(target)})
    await get_json(shared, f"/fastapi-eph/later?{query}")
    assert await wait_until(reactor_(), target.exists, 10), "the background task never finished"
    assert target.read_text() == "written by a background task"


@pytest_twisted.ensureDeferred
async def test_background_task_completes_when_the_runtime_stops(runtimes, worker_dir, tmp_path):
    """
    C{ttl: 5m}: SIGTERM right after the response; once the runtime has
    exited, the file is there.
    """
    proc = await runtimes.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    target = tmp_path / "written"
    query = urllib.parse.urlencode({"target": str(target)})
    await get_json(proc, f"/fastapi-5m/later?{query}")
    assert await proc.stop() in (0, -15)
    assert target.exists(), "the background task was cut off by the stop"
    assert target.read_text() == "written by a background task"

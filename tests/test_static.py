"""
Static apps: files, content types, the SPA fallback, <base href> injection,
conditional requests, and path traversal (never a byte from outside).
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted

from buntime.http import Headers, Response, read_body
from buntime.web import static
from buntime.web.apps import _with_base
from buntime.web.static import content_type, inject_base_href, serve_static

SECRET = b"TOP-SECRET-do-not-serve"
INDEX = b"<!doctype html><html><head><title>x</title></head><body>home</body></html>"


@pytest.fixture
def app(tmp_path):
    """An app dir next to a secret file (and a secret dir) it must never serve."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "index.html").write_bytes(SECRET)
    (tmp_path / "app-sibling").mkdir()
    (tmp_path / "app-sibling" / "x.txt").write_bytes(SECRET)
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_bytes(INDEX)
    (app / "style.css").write_text("body{}")
    (app / "main.js").write_text("console.log(1)")
    (app / "data.json").write_text("{}")
    (app / "logo.svg").write_text("<svg/>")
    (app / "mod.wasm").write_bytes(b"\0asm")
    (app / "pic.png").write_bytes(b"\x89PNG")
    (app / "docs").mkdir()
    (app / "docs" / "index.html").write_bytes(b"<html><HEAD lang=en>docs</HEAD></html>")
    (app / "manifest.yaml").write_text("entrypoint: index.html\n")
    (app / ".env").write_text("X=1")
    return app


def get(app, path, base="/hello@1", inject=True, headers=None):
    return serve_static(str(app), path, base, inject, request_headers=headers)


def body_of(response) -> bytes:
    assert isinstance(response.body, bytes)
    return response.body


def assert_not_served(response):
    """A symlink leading out of the app: 404, as if it were not there."""
    assert response.status == 404
    assert SECRET not in body_of(response)
    assert json.loads(response.body)["error"]["code"] == "NOT_FOUND"


def assert_refused(response):
    assert response.status == 403
    assert SECRET not in body_of(response)
    assert json.loads(response.body)["error"]["code"] == "PATH_TRAVERSAL"


# -- files and types -------------------------------------------------------------


@pytest.mark.parametrize(
    "path,kind",
    [
        ("/style.css", "text/css; charset=utf-8"),
        ("/main.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/mod.wasm", "application/wasm"),
        ("/pic.png", "image/png"),
        ("/", "text/html; charset=utf-8"),
    ],
)
def test_content_types(app, path, kind):
    response = get(app, path)
    assert response.status == 200
    assert response.headers.get("content-type") == kind
    assert response.headers.get("x-content-type-options") == "nosniff"


def test_more_content_types():
    assert content_type("a.mjs") == "text/javascript; charset=utf-8"
    assert content_type("A.CSS") == "text/css; charset=utf-8"
    assert content_type("x.txt") == "text/plain; charset=utf-8"
    assert content_type("x.unknownext") == "application/octet-stream"
    assert content_type("x.woff2") == "font/woff2"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("data.json.gz", "application/gzip"),
        ("bundle.js.gz", "application/gzip"),
        ("release.tar.gz", "application/gzip"),
        ("release.tgz", "application/gzip"),
        ("dump.sql.bz2", "application/x-bzip2"),
        ("table.csv.xz", "application/x-xz"),
        ("style.css.br", "application/octet-stream"),
    ],
)
def test_a_compressed_file_is_served_as_what_it_is(name, kind):
    # served without content-encoding, gzip bytes labelled application/json would
    # break fetch().json(); python -m http.server labels them as buntime now does
    assert content_type(name) == kind


def test_file_bytes(app):
    response = get(app, "/style.css")
    assert body_of(response) == b"body{}"
    assert response.headers.get("content-length") == "6"


def test_index_gets_base(app):
    response = get(app, "/")
    assert body_of(response).startswith(
        b'<!doctype html><html><head><base href="/hello@1/"><title>'
    )
    assert response.headers.get("content-length") == str(len(response.body))
    assert response.headers.get("cache-control") == "no-cache"


def test_no_injection_when_disabled(app):
    assert body_of(get(app, "/", inject=False)) == INDEX


def test_directory_serves_its_index(app):
    for path in ("/docs", "/docs/"):
        response = get(app, path)
        assert body_of(response) == b'<html><HEAD lang=en><base href="/hello@1/">docs</HEAD></html>'


def test_empty_path_is_index(app):
    assert b"home" in body_of(get(app, ""))


# -- SPA fallback --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/about", "/users/42/edit", "/deep/route/", "/x.y/route"])
def test_spa_fallback(app, path):
    response = get(app, path)
    assert response.status == 200
    assert b"home" in body_of(response)
    assert b'<base href="/hello@1/">' in response.body


@pytest.mark.parametrize("path", ["/missing.png", "/a/b/c.js", "/nope.html"])
def test_missing_file_with_extension_is_404(app, path):
    assert get(app, path).status == 404


def test_no_index_no_fallback(tmp_path):
    (tmp_path / "a.css").write_text("")
    assert serve_static(str(tmp_path), "/route", "/x", True).status == 404
    assert serve_static(str(tmp_path), "/", "/x", True).status == 404


@pytest.mark.parametrize("path", ["/.env", "/.git/config", "/manifest.yaml", "/a/.hidden"])
def test_hidden_and_config_files_are_not_served(app, path):
    assert get(app, path).status == 404


# -- traversal: each case on its own -----------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/../../secret.txt",
        "/docs/../../secret.txt",
        "/..",
        "/../private/",
        "/../app-sibling/x.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/%2e%2e",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/docs%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/docs\\..\\..\\secret.txt",
        "\\..\\secret.txt",
        "//etc/passwd",
        "/%2fetc/passwd",
        "//../secret.txt",
        "/secret.txt\0.png",
        "/%00",
        "/index.html%00.png",
        "/C:/Windows/win.ini",
        "/%ff%fe",
    ],
)
def test_traversal_refused(app, path):
    assert_refused(get(app, path))


def test_absolute_app_path_relative_join(app):
    # "/etc/passwd" is a path inside the app, not the system file: SPA fallback
    response = get(app, "/etc/passwd")
    assert b"home" in body_of(response)
    assert b"root:" not in response.body


def test_symlink_to_outside_file_refused(app, tmp_path):
    os.symlink(tmp_path / "secret.txt", app / "leak.txt")
    assert_not_served(get(app, "/leak.txt"))


def test_symlink_to_outside_dir_refused(app, tmp_path):
    os.symlink(tmp_path / "private", app / "private")
    assert_not_served(get(app, "/private"))
    assert_not_served(get(app, "/private/index.html"))
    assert_not_served(get(app, "/private/anything"))


def test_symlink_to_sibling_with_common_prefix_refused(app, tmp_path):
    os.symlink(tmp_path / "app-sibling", app / "sib")
    assert_not_served(get(app, "/sib/x.txt"))


def test_symlinked_index_outside_refused(tmp_path):
    (tmp_path / "secret.html").write_bytes(SECRET)
    app = tmp_path / "app"
    app.mkdir()
    os.symlink(tmp_path / "secret.html", app / "index.html")
    assert_not_served(serve_static(str(app), "/some/route", "/x", True))
    assert_not_served(serve_static(str(app), "/", "/x", True))


def test_symlink_inside_is_served(app):
    os.symlink(app / "style.css", app / "alias.css")
    assert body_of(get(app, "/alias.css")) == b"body{}"


def test_symlinked_app_dir_is_served(app, tmp_path):
    os.symlink(app, tmp_path / "hello@latest")
    response = serve_static(str(tmp_path / "hello@latest"), "/style.css", "/hello", True)
    assert body_of(response) == b"body{}"


def test_percent_encoded_names_are_decoded(app):
    (app / "a file.txt").write_text("spaced")
    assert body_of(get(app, "/a%20file.txt")) == b"spaced"


def test_query_string_is_ignored(app):
    assert body_of(get(app, "/style.css?v=3")) == b"body{}"


# -- conditional requests ------------------------------------------------------------


def test_etag_and_304(app):
    first = get(app, "/style.css")
    etag = first.headers.get("etag")
    assert etag and first.headers.get("last-modified")
    again = get(app, "/style.css", headers=Headers({"If-None-Match": etag}))
    assert again.status == 304 and again.body == b""
    other = get(app, "/style.css", headers=Headers({"If-None-Match": '"nope"'}))
    assert other.status == 200
    since = get(
        app,
        "/style.css",
        headers=Headers({"If-Modified-Since": first.headers.get("last-modified")}),
    )
    assert since.status == 304
    old = get(
        app, "/style.css", headers=Headers({"If-Modified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"})
    )
    assert old.status == 200
    bad = get(app, "/style.css", headers=Headers({"If-Modified-Since": "garbage"}))
    assert bad.status == 200


def test_etag_depends_on_base_for_html(app):
    one = get(app, "/", base="/hello@1").headers.get("etag")
    two = get(app, "/", base="/hello@2").headers.get("etag")
    assert one != two


@pytest_twisted.ensureDeferred
async def test_large_files_stream(app, monkeypatch):
    monkeypatch.setattr(static, "STREAM_THRESHOLD", 10)
    monkeypatch.setattr(static, "CHUNK", 7)
    (app / "big.bin").write_bytes(b"0123456789" * 5)
    response = get(app, "/big.bin")
    assert not isinstance(response.body, bytes)
    assert response.headers.get("content-length") == "50"
    assert await read_body(response.body) == b"0123456789" * 5


# -- inject_base_href ------------------------------------------------------------------


@pytest.mark.parametrize(
    "document,expected",
    [
        (b"<head></head>", b'<head><base href="/b/"></head>'),
        (b"<HEAD>x", b'<HEAD><base href="/b/">x'),
        (b'<head data-x="1">', b'<head data-x="1"><base href="/b/">'),
        (b"<head\n  class=a>", b'<head\n  class=a><base href="/b/">'),
        (b"<html><body>", b'<html><base href="/b/"><body>'),
        (b'<html lang="en"><p>', b'<html lang="en"><base href="/b/"><p>'),
        (b"plain text", b"plain text"),
        (b"<header>nav</header>", b"<header>nav</header>"),
        (b'<head><base href="/x/"></head>', b'<head><base href="/x/"></head>'),
        (b"<head><BASE target=_top></head>", b"<head><BASE target=_top></head>"),
        (b"<head><head>", b'<head><base href="/b/"><head>'),
        (
            b"<head></head><body><script>// <base href=x></script>",
            b'<head><base href="/b/"></head><body><script>// <base href=x></script>',
        ),
    ],
)
def test_inject_base_href(document, expected):
    assert inject_base_href(document, "/b") == expected


def test_inject_base_href_escapes_and_normalizes():
    assert inject_base_href(b"<head>", '/a"><script>') == (
        b'<head><base href="/a&quot;&gt;&lt;script&gt;/">'
    )
    assert inject_base_href(b"<head>", "/b/") == b'<head><base href="/b/">'
    assert inject_base_href(b"<head>", "") == b'<head><base href="/">'


# -- the bundled example apps ------------------------------------------------------

APPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps")


@pytest.mark.parametrize(
    "name,path,needle",
    [
        ("hello", "/", b"Hello, world!"),
        ("hello", "/style.css", b"--accent"),
        ("spa-demo", "/", b'src="app.js"'),
        ("spa-demo", "/items/2", b'src="app.js"'),
        ("spa-demo", "/app.js", b"history.pushState"),
    ],
)
def test_bundled_static_apps(name, path, needle):
    from twisted.internet.task import Clock

    from buntime.apps.discovery import AppCatalog
    from buntime.apps.resolve import resolve
    from buntime.manifest import load_app_manifest

    version = AppCatalog([APPS_DIR], Clock()).resolve(name, None)
    assert (version.version, version.layout) == ("latest", "simple")
    manifest, warnings = load_app_manifest(
        version.dir, environ={}, body_size_default=1, body_size_max=1, app_label=name
    )
    assert warnings == [] and manifest.name == name
    entrypoint, _ = resolve(version.dir, manifest.entrypoint)
    assert entrypoint.endswith("index.html")
    assert manifest.inject_base is None  # a static app: the base is injected
    response = serve_static(version.dir, path, f"/{name}", True)
    assert response.status == 200
    assert needle in body_of(response)
    if path in ("/", "/items/2"):
        assert f'<head><base href="/{name}/">'.encode() in response.body


def test_an_injected_base_keeps_the_app_s_reason_phrase():
    page = Response(
        299, {"content-type": "text/html"}, b"<html><head></head></html>", "Custom Thing"
    )
    injected = _with_base(page, "/app/")
    assert (injected.status, injected.reason) == (299, "Custom Thing")
    assert b'<base href="/app/">' in injected.body

"""
L{buntime.web.shell}: the frame protocol's modules at their stable URL, and
the shell routing of SPEC §7 (a top-level navigation to C{/} or to a
plugin's UI gets the homepage app; frames, fetches and plugin APIs do not).
"""

from __future__ import annotations

from typing import Any

import pytest
from e2e_apps import static_app
from fakes import result_of
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from buntime.apps.discovery import AppCatalog
from buntime.http import Headers, Request, Response
from buntime.web.apps import AppStep
from buntime.web.shell import UI_PATH, FrameModules, ShellRouting

NAVIGATE = {"sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}


class Plugins:
    """The one member of a plugin registry the shell routing reads."""

    def __init__(self, *bases: str) -> None:
        self.bases = bases

    def mounted_under(self, path: str) -> bool:
        end = path.find("/", 1)
        return (path if end < 0 else path[:end]) in self.bases


def request(path: str, method: str = "GET", **headers: str) -> Request:
    return Request(method, path, Headers(headers), b"", "127.0.0.1")


def answer(step: Any, req: Request) -> Response | None:
    pending = step(req, {})
    return None if pending is None else result_of(ensureDeferred(pending))


@pytest.fixture
def routing(tmp_path) -> ShellRouting:
    static_app(tmp_path, "cpanel", "1.0.0", "the shell")
    apps = AppStep(
        catalog=AppCatalog([str(tmp_path)], Clock()),
        pool=None,  # type: ignore[arg-type]  # static apps only
        environ={},
        runtime_env=dict,
        body_size_default=1000,
        body_size_max=10_000,
        homepage="cpanel",
        clock=Clock(),
    )
    return ShellRouting(registry=lambda: Plugins("/metrics", "/logs"), apps=apps)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("path", ["/", "/metrics", "/metrics/", "/logs/live?level=warn"])
def test_a_navigation_to_root_or_a_plugin_ui_gets_the_shell(routing, path):
    found = answer(routing, request(path, **NAVIGATE))
    assert found is not None and found.status == 200
    assert b"the shell" in found.body
    assert b'<base href="/cpanel/">' in found.body  # its files load from its own base
    # a browser that sends no Sec-Fetch-Dest
    assert answer(routing, request(path, **{"sec-fetch-mode": "navigate"})) is not None


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/metrics/", {"sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe"}),  # the frame
        ("/metrics/", {"sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}),  # a fetch
        ("/metrics/", {}),  # curl
        ("/metrics/api", NAVIGATE),  # a plugin's API is never the shell's
        ("/metrics/api/sse", NAVIGATE),
        ("/hello/", NAVIGATE),  # an app, not a plugin
        ("/metricsx/", NAVIGATE),
    ],
)
def test_frames_fetches_apis_and_apps_are_not_the_shells(routing, path, headers):
    assert answer(routing, request(path, **headers)) is None


def test_only_get_and_head_and_only_with_a_homepage(routing, tmp_path):
    assert answer(routing, request("/metrics/", "POST", **NAVIGATE)) is None
    assert answer(routing, request("/metrics/", "HEAD", **NAVIGATE)) is not None
    routing.apps.homepage = None
    assert answer(routing, request("/metrics/", **NAVIGATE)) is None


def test_no_plugin_set_yet_leaves_only_the_root(routing):
    bare = ShellRouting(registry=lambda: None, apps=routing.apps)
    assert answer(bare, request("/metrics/", **NAVIGATE)) is None
    assert answer(bare, request("/", **NAVIGATE)) is not None


@pytest.mark.parametrize("name", ["z-frame.js", "frame-sdk.js"])
def test_the_frame_modules_are_served_at_a_stable_url(name):
    found = answer(FrameModules(), request(f"{UI_PATH}/{name}"))
    assert found is not None and found.status == 200
    assert found.headers["content-type"] == "text/javascript; charset=utf-8"
    assert found.headers["cache-control"] == "no-cache"
    assert found.headers["access-control-allow-origin"] == "*"
    assert b"export" in found.body
    etag = found.headers["etag"]
    again = answer(FrameModules(), request(f"{UI_PATH}/{name}", **{"if-none-match": etag}))
    assert again is not None and again.status == 304


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{UI_PATH}/", 404),
        (f"{UI_PATH}/nothing.js", 404),
        (f"{UI_PATH}/../shell.py", 403),
        (f"{UI_PATH}/%2e%2e/shell.py", 403),
    ],
)
def test_nothing_else_is_served_from_there(path, status):
    found = answer(FrameModules(), request(path))
    assert found is not None and found.status == status


def test_other_paths_and_methods_go_on():
    assert answer(FrameModules(), request("/.well-known/buntime")) is None
    assert answer(FrameModules(), request("/metrics/")) is None
    assert answer(FrameModules(), request(f"{UI_PATH}/z-frame.js", "POST")) is None


def test_the_homepage_fallback_is_for_pages_not_for_frames(routing):
    """A frame's page that nothing serves is a 404: never the shell inside its own frame."""
    apps = routing.apps
    top = answer(apps.serve_homepage, request("/nowhere", **NAVIGATE))
    assert top is not None and b"the shell" in top.body
    framed = {"sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe", "accept": "text/html"}
    assert answer(apps.serve_homepage, request("/nowhere", **framed)) is None
    assert answer(apps.serve_homepage, request("/nowhere", accept="text/html")) is not None

"""
Clickjacking: a page of another site frames the shell or a built-in plugin's
page and places a button of its own over one of theirs.  The framed page's
requests are the runtime's own origin (they pass the CSRF rule), so the
shell and the plugin pages must not show, and act, inside another site.
"""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness import BrowserRuntime


class _Site(BaseHTTPRequestHandler):
    """Another site: C{/?src=...} is a page that frames C{src}."""

    def do_GET(self) -> None:
        given = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("src")
        if not given:
            self.send_error(404)
            return
        target = given[0]
        body = f'<iframe src="{target}" onload="window.framed = true"></iframe>'.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_site() -> Iterator[str]:
    """
    The origin of another site.  On this machine, as a browser lets only
    local pages frame a local runtime; another browser (Firefox, Safari)
    lets any site frame it.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def framed_by_another_site(page: Any, site: str, target: str) -> Any:
    """Open a page of another site that frames C{target}; its frame once loaded."""
    page.goto(site + "/?" + urllib.parse.urlencode({"src": target}))
    page.wait_for_function("window.framed === true")
    return page.frames[1]


def test_another_site_cannot_frame_the_proxy_page_and_delete_a_rule(
    page: Any, runtime: BrowserRuntime, other_site: str
) -> None:
    rule = {"id": "framed", "pattern": "^/framed/(.*)", "target": "http://127.0.0.1:9"}
    runtime.request("POST", "/redirects/api/rules", rule)
    try:
        frame = framed_by_another_site(page, other_site, runtime.url + "/redirects/")
        if frame.url.startswith(runtime.url):
            # the page showed: the click the other site's page lured the person into
            frame.locator("tr[data-rule=framed] button.delete").click()
            page.wait_for_timeout(500)
        ids = [one["id"] for one in runtime.request("GET", "/redirects/api/rules")["rules"]]
        assert "framed" in ids
        assert not frame.url.startswith(runtime.url)  # the browser refused to show it
    finally:
        ids = [one["id"] for one in runtime.request("GET", "/redirects/api/rules")["rules"]]
        if "framed" in ids:
            runtime.request("DELETE", "/redirects/api/rules/framed")


def test_plugin_pages_may_be_framed_by_their_own_origin_only(runtime: BrowserRuntime) -> None:
    for path in ("/redirects/", "/logs/", "/metrics/"):
        request = urllib.request.Request(runtime.url + path, headers={"sec-fetch-dest": "iframe"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["x-frame-options"] == "SAMEORIGIN", path
            assert answer.headers["content-security-policy"] == "frame-ancestors 'self'", path
            assert answer.headers["x-content-type-options"] == "nosniff", path


def test_the_shell_does_not_show_inside_another_site(
    page: Any, runtime: BrowserRuntime, other_site: str
) -> None:
    frame = framed_by_another_site(page, other_site, runtime.url + "/cpanel/apps")
    refusal = "buntime's control panel does not show inside another site"
    frame.locator("body", has_text=refusal).wait_for()
    assert frame.locator("#apps-rows").count() == 0
    link = frame.get_by_role("link", name="Open it")
    assert link.get_attribute("target") == "_blank"


def test_the_shell_still_frames_its_plugin_pages(page: Any, runtime: BrowserRuntime) -> None:
    page.goto("/cpanel/redirects")
    page.wait_for_function("document.querySelector('z-frame')?.state === 'ready'")

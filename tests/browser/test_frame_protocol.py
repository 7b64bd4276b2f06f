"""
The frame protocol's JavaScript modules (C{z-frame.js}, C{frame-sdk.js}),
unit-tested in headless Chromium: C{apps/frame-tests/tests.js} runs in the
page and reports each test; here each one is an assertion.
"""

from __future__ import annotations

from typing import Any


def test_frame_protocol_unit_tests_pass_in_the_browser(page: Any) -> None:
    page.goto("/frame-tests/")
    page.wait_for_function("window.__done === true", timeout=60_000)
    results = page.evaluate("window.__results")
    failed = [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
    assert failed == []
    assert len(results) >= 18


def test_modules_are_served_at_their_stable_url(page: Any, runtime: Any) -> None:
    for name in ("z-frame.js", "frame-sdk.js"):
        answer = page.request.get(f"/.well-known/buntime/ui/{name}")
        assert answer.status == 200
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["access-control-allow-origin"] == "*"
    assert page.request.get("/.well-known/buntime/ui/nothing.js").status == 404

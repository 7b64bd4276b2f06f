"""
The sandbox of static serving: a path an app's URL space is given never
reads another app's files (C{..}, encoded dots and slashes, backslashes,
absolute paths, drive letters, NUL, in any mix hypothesis finds), and a
symlink in an app that leads out of it is not served (404, logged once)
while one that stays inside is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buntime.web.static import OUTSIDE, serve_static

SECRET = b"BETA-SECRET-never-served-to-alpha"
ALPHA = {
    "index.html": b"<!doctype html><html><head></head><body>alpha</body></html>",
    "style.css": b"body{}",
    "docs/index.html": b"<html><head></head>alpha docs</html>",
    "docs/guide.txt": b"alpha guide",
}


def build(root: Path) -> tuple[Path, Path]:
    """Two apps side by side in one worker dir, as the runtime keeps them."""
    alpha, beta = root / "alpha@1.0.0", root / "beta@1.0.0"
    for relative, content in ALPHA.items():
        (alpha / relative).parent.mkdir(parents=True, exist_ok=True)
        (alpha / relative).write_bytes(content)
    (beta / "private").mkdir(parents=True)
    (beta / "secret.txt").write_bytes(SECRET)
    (beta / "index.html").write_bytes(SECRET)
    (beta / "private" / "index.html").write_bytes(SECRET)
    (root / "outside.txt").write_bytes(SECRET)
    return alpha, beta


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> tuple[Path, Path]:
    return build(tmp_path_factory.mktemp("sandbox"))


SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E%2e",
        ".%2e",
        "%2e.",
        "..%2f",
        "%2f",
        "%5c",
        "\\",
        "..\\",
        "%00",
        "\x00",
        "C:",
        "c%3a",
        "beta@1.0.0",
        "beta",
        "secret.txt",
        "private",
        "index.html",
        "docs",
        "outside.txt",
        "%252e%252e",
        "\u2025",
        "%c0%ae%c0%ae",
        "%ff",
    ]
)
PATHS = st.builds(
    lambda lead, parts, tail: lead + "/".join(parts) + tail,
    st.sampled_from(["/", "//", "\\", "", "/./", "/%2f"]),
    st.lists(SEGMENTS | st.text(max_size=6), max_size=8),
    st.sampled_from(["", "/", "?x=1", "#f", "%00.png"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS)
def test_no_path_reads_anything_but_the_apps_own_files(apps, path):
    alpha, _ = apps
    answer = serve_static(str(alpha), path, "/alpha", False)
    assert answer.status in (200, 403, 404), (path, answer.status)
    body = answer.body
    assert isinstance(body, bytes)
    assert SECRET not in body
    if answer.status == 200:
        assert body in ALPHA.values(), path
    else:
        assert json.loads(body)["error"]["code"] in ("PATH_TRAVERSAL", "NOT_FOUND")


def outside_warnings(logger) -> list[dict]:
    return [m for m in logger.messages if m.get("message_type") == OUTSIDE]


def test_a_symlink_into_another_app_is_404_and_logged_once(tmp_path, eliot_logger):
    alpha, beta = build(tmp_path)
    os.symlink(beta / "secret.txt", alpha / "leak.txt")
    os.symlink(os.path.relpath(beta / "private", alpha), alpha / "borrowed")
    for path in ("/leak.txt", "/leak.txt", "/borrowed/", "/borrowed/index.html", "/borrowed/"):
        answer = serve_static(str(alpha), path, "/alpha", False)
        assert answer.status == 404 and SECRET not in answer.body
    warned = outside_warnings(eliot_logger)
    assert [(m["path"], m["level"]) for m in warned] == [("leak.txt", "warn"), ("borrowed", "warn")]
    assert warned[0]["target"] == str((beta / "secret.txt").resolve())
    assert "leads outside the app's directory" in warned[0]["message"]


def test_an_index_that_leads_out_is_not_the_fallback_either(tmp_path, eliot_logger):
    alpha, beta = build(tmp_path)
    (alpha / "index.html").unlink()
    os.symlink(beta / "index.html", alpha / "index.html")
    for path in ("/", "/some/route", "/docs/../x"):
        answer = serve_static(str(alpha), path, "/alpha", True)
        assert answer.status in (403, 404) and SECRET not in answer.body
    assert len(outside_warnings(eliot_logger)) == 1


def test_a_chain_of_links_that_ends_outside_is_not_served(tmp_path):
    alpha, beta = build(tmp_path)
    os.symlink(beta / "secret.txt", alpha / "hop2")
    os.symlink("hop2", alpha / "hop1")  # inside, then out
    assert serve_static(str(alpha), "/hop1", "/alpha", False).status == 404


def test_links_that_stay_inside_the_app_are_served(tmp_path, eliot_logger):
    alpha, _ = build(tmp_path)
    os.symlink("style.css", alpha / "alias.css")
    os.symlink("docs", alpha / "manual")
    assert serve_static(str(alpha), "/alias.css", "/alpha", False).body == b"body{}"
    assert serve_static(str(alpha), "/manual/guide.txt", "/alpha", False).body == b"alpha guide"
    assert outside_warnings(eliot_logger) == []

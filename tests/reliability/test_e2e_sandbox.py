"""
The sandbox end to end: a real runtime serving two static apps from one
worker dir; requests in one app's URL space, sent byte for byte (no client
normalises them), never read the other's files; a symlink in one app into
the other is 404 and logged once; an upload cannot plant such a link; a
symlink that stays inside its app is served.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from e2e_apps import get_bytes, multipart, parse_reply, raw_request, static_app, tree, zip_archive

pytestmark = pytest.mark.e2e

SECRET = b"BETA-SECRET-never-served-to-alpha"

HOSTILE = [
    "/alpha/../beta/secret.txt",
    "/alpha/../beta@1.0.0/secret.txt",
    "/alpha@1.0.0/../beta@1.0.0/secret.txt",
    "/alpha/%2e%2e/beta@1.0.0/secret.txt",
    "/alpha/%2E%2E/%2E%2E/beta@1.0.0/secret.txt",
    "/alpha/.%2e/beta@1.0.0/secret.txt",
    "/alpha/..%2fbeta@1.0.0%2fsecret.txt",
    "/alpha/%2e%2e%2fbeta@1.0.0%2fsecret.txt",
    "/alpha/..%5cbeta@1.0.0%5csecret.txt",
    "/alpha/..\\beta@1.0.0\\secret.txt",
    "/alpha//../beta@1.0.0/secret.txt",
    "/alpha/%00/../beta@1.0.0/secret.txt",
    "/alpha/secret.txt%00.html",
    "/alpha/C:/beta@1.0.0/secret.txt",
    "/alpha/%252e%252e/beta@1.0.0/secret.txt",
    "/alpha/leak.txt",
    "/alpha/borrowed/secret.txt",
    "/beta@1.0.0/../alpha@1.0.0/../beta@1.0.0/secret.txt",
]


@pytest_twisted.ensureDeferred
async def test_one_app_never_reads_anothers_files(runtimes, tmp_path):
    from twisted.internet import reactor

    apps = tmp_path / "apps"
    alpha = static_app(apps, "alpha", "1.0.0", "alpha")
    (alpha / "style.css").write_text("body{}")
    beta = static_app(apps, "beta", "1.0.0", "beta")
    (beta / "secret.txt").write_bytes(SECRET)
    os.symlink("../beta@1.0.0/secret.txt", alpha / "leak.txt")
    os.symlink(beta, alpha / "borrowed")
    os.symlink("style.css", alpha / "alias.css")
    proc = await runtimes.start(worker_dirs=[str(apps)])
    host = f"127.0.0.1:{proc.port}"

    for path in HOSTILE:
        status, _, body = parse_reply(await raw_request(reactor, proc.port, get_bytes(path, host)))
        assert SECRET not in body, path
        assert status in (400, 403, 404) or (status == 200 and b"alpha" in body), (path, status)

    for _ in range(3):
        response = await proc.get("/alpha/leak.txt")
        assert response.code == 404 and SECRET not in await response.content()
    warned = proc.messages("buntime:static:outside")
    assert [line["path"] for line in warned] == ["leak.txt", "borrowed"]
    assert (await (await proc.get("/alpha/alias.css")).content()) == b"body{}"
    assert SECRET in await (await proc.get("/beta/secret.txt")).content()  # beta's own: served

    # an upload cannot plant a link into beta either
    before = tree(apps)
    archive = zip_archive(
        {"manifest.yaml": "name: gamma\nversion: 1.0.0\n", "index.html": "<p>gamma</p>"},
        {"peek.txt": "../../beta@1.0.0/secret.txt"},
    )
    body, content_type = multipart("file", "gamma.zip", archive)
    refused = await proc.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, "x-buntime-internal": "true"},
    )
    assert refused.code == 400
    assert (await refused.json())["error"]["code"] == "PATH_TRAVERSAL"
    assert tree(apps) == before
    assert not any(name.startswith(".buntime-install") for name in os.listdir(apps))

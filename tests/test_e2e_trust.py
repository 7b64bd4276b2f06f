"""
Who may change apps and plugins, end to end: a real runtime with
C{RUNTIME_API_TOKEN} set refuses an upload without the bearer token, even
from this machine and even with C{x-buntime-internal}, and takes it with the
token; reading stays open.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from e2e_apps import multipart, write_app, zip_archive

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_a_token_guards_every_change_and_reading_stays_open(runtimes, tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    proc = await runtimes.start(worker_dirs=[str(apps)], env={"RUNTIME_API_TOKEN": TOKEN})
    archive = zip_archive(
        {"manifest.yaml": "name: guarded\nversion: 1.0.0\n", "index.html": "<p>hi</p>"}
    )
    body, content_type = multipart("file", "guarded.zip", archive)

    async def upload(**headers: str) -> int:
        response = await proc.request(
            "POST",
            "/api/apps/upload",
            data=body,
            headers={"Content-Type": content_type, **headers},
        )
        await response.content()
        return int(response.code)

    assert await upload(Origin=proc.url) == 401
    assert await upload(**{"x-buntime-internal": "true"}) == 401
    assert await upload(Authorization="Bearer wrong-token-0123456789") == 401
    assert (
        await proc.request("POST", "/api/plugins/reload", headers={"Origin": proc.url})
    ).code == 401
    assert (await proc.get("/api/apps")).code == 200
    assert (await proc.get("/api/health")).code == 200
    assert await upload(Authorization=f"Bearer {TOKEN}") == 200
    assert (await proc.get("/guarded/")).code == 200
    deleted = await proc.request(
        "DELETE", "/api/apps/_/guarded/1.0.0", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert deleted.code == 200
    logged = " ".join(str(line) for line in proc.lines)
    assert TOKEN not in logged


@pytest_twisted.ensureDeferred
async def test_without_a_token_another_sites_name_pointed_here_changes_nothing(runtimes, tmp_path):
    """
    DNS rebinding: a page of C{attacker.example}, whose name then resolves to
    C{127.0.0.1}, sends its upload from this machine with an C{Origin} that
    matches its C{Host}.  Only this machine's own names may change things.
    """
    apps = tmp_path / "apps"
    apps.mkdir()
    proc = await runtimes.start(worker_dirs=[str(apps)])
    port = proc.port
    archive = zip_archive(
        {"manifest.yaml": "name: rebound\nversion: 1.0.0\n", "index.html": "<p>hi</p>"}
    )
    body, content_type = multipart("file", "rebound.zip", archive)

    async def upload(host: str) -> tuple[int, bytes]:
        response = await proc.request(
            "POST",
            "/api/apps/upload",
            data=body,
            headers={"Content-Type": content_type, "Host": host, "Origin": f"http://{host}"},
        )
        return int(response.code), await response.content()

    for host in (f"attacker.example:{port}", f"attacker.example.:{port}", f"rt:{port}"):
        code, answer = await upload(host)
        assert code == 403 and b"RUNTIME_API_TOKEN" in answer
        assert not (apps / "rebound").exists()
    assert (await proc.get("/api/apps")).code == 200
    assert (await upload(f"localhost:{port}"))[0] == 200
    assert (await proc.get("/rebound@1.0.0/")).code == 200


SNOOP = """
    import os

    def app(environ, start_response):
        # what a worker can read of its ancestors' environments (same user)
        seen, pid = [], os.getppid()
        while pid > 1:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    seen.append(f.read())
                with open(f"/proc/{pid}/stat", "rb") as f:
                    pid = int(f.read().rpartition(b")")[2].split()[1])
            except OSError:
                break
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"\\n".join(seen)]
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_a_worker_cannot_read_the_token_in_the_runtimes_proc_environ(
    runtimes, tmp_path, mode
):
    """Linux shows a process's first environment to its user's processes: not the token."""
    if not os.path.exists("/proc/self/environ"):
        pytest.skip("no /proc")
    apps = tmp_path / "apps"
    write_app(apps, "snoop", manifest={"entrypoint": "app.py"}, files={"app.py": SNOOP})
    proc = await runtimes.start(
        worker_dirs=[str(apps)],
        env={"RUNTIME_API_TOKEN": TOKEN, "RUNTIME_WORKER_MODE": mode, "DB_PASSWORD": "hunter2-db"},
    )
    response = await proc.get("/snoop/")
    seen = await response.content()
    assert response.code == 200
    assert b"RUNTIME_API_TOKEN=" in seen  # the runtime's own environment was read
    assert TOKEN.encode() not in seen and b"hunter2-db" not in seen
    # the runtime still has it
    refused = await proc.request("POST", "/api/plugins/reload", headers={"Origin": proc.url})
    assert refused.code == 401
    reload = await proc.request(
        "POST", "/api/plugins/reload", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert reload.code == 200


@pytest_twisted.ensureDeferred
async def test_another_sites_page_cannot_claim_to_be_internal_when_cors_lets_it_send_the_header(
    runtimes, tmp_path
):
    """
    With the gateway's CORS on (C{origins: "*"}), a page of C{evil.example}
    opened on this machine gets its preflight for C{x-buntime-internal}
    approved, then sends the upload with it (and its own C{Origin}, as
    browsers do): that is another site's request, not a tool's.
    """
    from test_plugins_support import write_plugin

    apps = tmp_path / "apps"
    apps.mkdir()
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "gateway",
        {"name": "@buntime/plugin-gateway", "enabled": True, "cors": {"origins": "*"}},
    )
    proc = await runtimes.start(worker_dirs=[str(apps)], env={"RUNTIME_PLUGIN_DIRS": str(plugins)})
    evil = "https://evil.example"
    preflight = await proc.request(
        "OPTIONS",
        "/api/apps/upload",
        headers={
            "Origin": evil,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-buntime-internal",
        },
    )
    await preflight.content()
    assert preflight.code == 204  # the browser would go on and send it
    archive = zip_archive(
        {"manifest.yaml": "name: planted\nversion: 1.0.0\n", "index.html": "<p>hi</p>"}
    )
    body, content_type = multipart("file", "planted.zip", archive)
    response = await proc.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, "Origin": evil, "x-buntime-internal": "true"},
    )
    answer = await response.content()
    assert response.code == 403, answer
    assert not (apps / "planted").exists()
    tool = await proc.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, "x-buntime-internal": "true"},
    )
    await tool.content()
    assert tool.code == 200  # a tool (no Origin) still may

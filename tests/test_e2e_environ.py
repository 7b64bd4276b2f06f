"""
What a WSGI and an ASGI app learn of the connection, through a real runtime:
the client's port, and the server's name and port from the socket when the
request has no C{Host} (PEP 3333; uvicorn gives ASGI the socket's always),
and the HTTP version the client spoke (as gunicorn's C{SERVER_PROTOCOL} and
uvicorn's C{http_version} have it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from e2e_apps import parse_reply, raw_exchange, write_app
from runtime import Runtimes

pytestmark = pytest.mark.e2e

WSGI = """
    import json

    KEYS = ("SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT", "HTTP_HOST")
    KEYS += ("SERVER_PROTOCOL",)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({key: environ.get(key) for key in KEYS}).encode()]
"""

ASGI = """
    import json

    async def app(scope, receive, send):
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        seen = {"server": scope["server"], "client": scope["client"]}
        seen["http_version"] = scope["http_version"]
        body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
"""


@pytest_twisted.ensureDeferred
async def test_the_connection_as_apps_see_it(tmp_path: Path, runtimes: Runtimes) -> None:
    from twisted.internet import reactor

    write_app(tmp_path, "wsgi", manifest={"entrypoint": "app.py"}, files={"app.py": WSGI})
    write_app(tmp_path, "asgi", manifest={"entrypoint": "app.py"}, files={"app.py": ASGI})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)])

    async def ask(path: str, host: str | None, version: str = "1.0") -> tuple[dict, int]:
        head = f"GET {path} HTTP/{version}\r\n" + (f"Host: {host}\r\n" if host else "")
        if version == "1.1":
            head += "Connection: close\r\n"
        head += "\r\n"
        reply, own_port = await raw_exchange(reactor, proc.port, head.encode())
        status, _, body = parse_reply(reply)
        assert status == 200, body
        return json.loads(body), own_port

    seen, own_port = await ask("/wsgi/", None)
    assert seen == {
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(proc.port),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(own_port),
        "HTTP_HOST": None,
        "SERVER_PROTOCOL": "HTTP/1.0",
    }
    seen, _ = await ask("/wsgi/", "example.com:8080")
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("example.com", "8080")
    assert seen["HTTP_HOST"] == "example.com:8080"
    seen, _ = await ask("/wsgi/", "example.com", "1.1")
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"

    seen, own_port = await ask("/asgi/", "example.com:8080")
    assert seen == {
        "server": ["127.0.0.1", proc.port],
        "client": ["127.0.0.1", own_port],
        "http_version": "1.0",
    }
    seen, _ = await ask("/asgi/", "example.com", "1.1")
    assert seen["http_version"] == "1.1"


LOCAL_TIME = """
    import os
    import time

    def now(request):
        return {"TZ": os.environ.get("TZ"), "offset": time.localtime(0).tm_gmtoff}

    routes = {"/": now}
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_the_manifest_s_tz_sets_the_worker_s_local_time(
    mode: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    """
    C{env: {TZ: ...}} gives the app its local time in both worker modes (a
    forked worker takes it from its environment, not from the template's).
    """
    write_app(
        tmp_path,
        "clock",
        manifest={"entrypoint": "app.py", "env": {"TZ": "UTC-05:30"}},
        files={"app.py": LOCAL_TIME},
    )
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path)],
        env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode, "TZ": "UTC"},
    )
    response = await proc.get("/clock/")
    assert response.code == 200, await response.text()
    seen = await proc.json(response)
    assert seen == {"TZ": "UTC-05:30", "offset": 5 * 3600 + 30 * 60}


INTERPRETER = """
    import sys
    import warnings

    def flags(request):
        return {
            "dont_write_bytecode": sys.dont_write_bytecode,
            "optimize": sys.flags.optimize,
            "warnings": [f[0] for f in warnings.filters if f[2] is DeprecationWarning][:1],
        }

    routes = {"/": flags}
"""


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            "fork",
            marks=pytest.mark.xfail(
                strict=True,
                reason="a forked worker's interpreter started as the template's: the variables"
                " Python reads at its start (PYTHONDONTWRITEBYTECODE, PYTHONOPTIMIZE,"
                " PYTHONWARNINGS...) in a manifest's env have no effect",
            ),
        ),
        "spawn",
    ],
)
@pytest_twisted.ensureDeferred
async def test_python_s_own_variables_in_the_manifest_take_effect(
    mode: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    env = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONOPTIMIZE": "1",
        "PYTHONWARNINGS": "error::DeprecationWarning",
    }
    write_app(
        tmp_path,
        "flags",
        manifest={"entrypoint": "app.py", "env": env},
        files={"app.py": INTERPRETER},
    )
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode}
    )
    response = await proc.get("/flags/")
    assert response.code == 200, await response.text()
    seen = await proc.json(response)
    assert seen == {"dont_write_bytecode": True, "optimize": 1, "warnings": ["error"]}


SHOP = """
    import os

    routes = {"/": lambda request: {"pid": os.getpid(), "has": os.environ.get("SHOP_DB_PASS")}}
"""

PEEK = """
    def app(environ, start_response):
        pid = environ["QUERY_STRING"]
        with open(f"/proc/{pid}/environ", "rb") as f:
            seen = f.read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [seen]
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_another_app_cannot_read_a_passed_secret_in_the_worker_s_proc_environ(
    mode: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    """
    A secret a manifest passes on (C{envAllow}) is the app's: another app's
    worker (the same user) does not find it in C{/proc/<pid>/environ}.
    """
    manifest = {
        "entrypoint": "app.py",
        "ttl": "5m",
        "env": {"SHOP_DB_PASS": "${SHOP_DB_PASS}"},
        "envAllow": ["SHOP_DB_PASS"],
    }
    write_app(tmp_path, "shop", manifest=manifest, files={"app.py": SHOP})
    write_app(tmp_path, "peek", manifest={"entrypoint": "app.py"}, files={"app.py": PEEK})
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path)],
        env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode, "SHOP_DB_PASS": "hunter2-shop"},
    )
    response = await proc.get("/shop/")
    shop = await proc.json(response)
    assert shop["has"] == "hunter2-shop"
    response = await proc.get(f"/peek/?{shop['pid']}")
    seen = await response.content()
    assert response.code == 200
    assert b"APP_DIR=" in seen or b"PATH=" in seen  # the worker's environment was read
    assert b"hunter2-shop" not in seen


TEMPORARY = """
    import tempfile

    def where(request):
        with tempfile.NamedTemporaryFile() as file:
            return {"gettempdir": tempfile.gettempdir(), "file": file.name}

    routes = {"/": where}
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_the_manifest_s_tmpdir_is_where_the_app_s_temporary_files_go(
    mode: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    """
    C{env: {TMPDIR: ...}} is where C{tempfile} puts the app's files (an
    upload spooled to disk, say) in both worker modes: a forked worker does
    not keep the directory the template found for itself.
    """
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    write_app(
        tmp_path / "apps",
        "temp",
        manifest={"entrypoint": "app.py", "env": {"TMPDIR": str(scratch)}},
        files={"app.py": TEMPORARY},
    )
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path / "apps")],
        env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode},
    )
    response = await proc.get("/temp/")
    assert response.code == 200, await response.text()
    seen = await proc.json(response)
    assert seen["gettempdir"] == str(scratch)
    assert Path(seen["file"]).parent == scratch

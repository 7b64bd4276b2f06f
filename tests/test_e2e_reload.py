"""
Development reload through a real runtime: an edited app serves its new code
on a request within a second of the edit; an edited plugin is reloaded.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from e2e_apps import wait_until, write_app
from test_plugins_support import write_plugin
from twisted.internet import reactor

pytestmark = pytest.mark.e2e

ROUTES = """
routes = {"/": lambda request: "version %s"}
"""

PLUGIN = """
from zope.interface import implementer

from buntime.interfaces import IBuntimePlugin


@implementer(IBuntimePlugin)
class Stamp:
    def on_response(self, response, app):
        return response.with_header("x-stamp", "%s")


provider = Stamp()
"""


async def _text(proc, path: str) -> tuple[int, str, str | None]:
    response = await proc.get(path)
    body = (await response.content()).decode()
    stamp = response.headers.getRawHeaders("x-stamp", [None])[0]
    return response.code, body, stamp


async def _sees(proc, path: str, want, seconds: float) -> bool:
    seen: list = []

    async def look() -> None:
        seen.append(await _text(proc, path))

    deadline = reactor.seconds() + seconds
    while reactor.seconds() < deadline:
        await look()
        if want(seen[-1]):
            return True
    return False


@pytest_twisted.ensureDeferred
async def test_an_edited_app_and_plugin_serve_their_new_code(runtimes, tmp_path):
    apps, plugins = tmp_path / "apps", tmp_path / "plugins"
    app = write_app(apps, "live", manifest={"ttl": "5m"}, layout="simple")
    (app / "app.py").write_text(ROUTES % 1)
    write_plugin(plugins, "stamp", {"name": "stamp"}, code=PLUGIN % "a")
    proc = await runtimes.start(
        worker_dirs=[str(apps)],
        env={
            "RUNTIME_ENV": "development",
            "RUNTIME_RELOAD": "",
            "RUNTIME_PLUGIN_DIRS": str(plugins),
        },
    )
    await proc.wait_for_message("buntime:reload:watching")
    assert await _text(proc, "/live/") == (200, "version 1", "a")

    (app / "app.py").write_text(ROUTES % 2)  # same size, same second
    assert await _sees(proc, "/live/", lambda seen: seen[1] == "version 2", 1.0)

    # Files the reload ignores retire nothing: the worker that serves stays.
    await proc.wait_for_message("buntime:reload:apps")
    (app / "__pycache__").mkdir(exist_ok=True)
    (app / "__pycache__" / "x.pyc").write_bytes(b"")
    (app / ".app.py.swp").write_text("")
    assert not await wait_until(reactor, lambda: len(proc.messages("buntime:reload:apps")) > 1, 0.5)

    # A removed directory leaves the others watched.
    (apps / "other" / "sub").mkdir(parents=True)
    assert await wait_until(reactor, lambda: len(proc.messages("buntime:reload:apps")) > 1, 2.0)
    (apps / "other" / "sub").rmdir()
    write_plugin(plugins, "stamp", {"name": "stamp"}, code=PLUGIN % "b")
    assert await _sees(proc, "/live/", lambda seen: seen[2] == "b", 2.0)
    (app / "app.py").write_text(ROUTES % 3)
    assert await _sees(proc, "/live/", lambda seen: seen[1] == "version 3", 1.0)


@pytest_twisted.ensureDeferred
async def test_no_reload_in_the_test_environment(runtimes, tmp_path):
    apps = tmp_path / "apps"
    app = write_app(apps, "live", manifest={"ttl": "5m"}, layout="simple")
    (app / "app.py").write_text(ROUTES % 1)
    proc = await runtimes.start(
        worker_dirs=[str(apps)], env={"RUNTIME_ENV": "test", "RUNTIME_RELOAD": ""}
    )
    assert await _text(proc, "/live/") == (200, "version 1", None)
    (app / "app.py").write_text(ROUTES % 2)
    assert not await _sees(proc, "/live/", lambda seen: seen[1] == "version 2", 0.5)
    assert proc.messages("buntime:reload:watching") == []

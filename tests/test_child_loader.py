"""Finding, importing and recognising a worker's app (L{buntime.pool.child.loader})."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from pathlib import Path

import pytest
from twisted.internet import reactor

from buntime.pool.child.loader import NO_APP, LoadError, import_file, load, missing_module_hint


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def keep_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def kind_of(folder: Path, loop, entrypoint: str = "") -> str:
    return load(str(folder), entrypoint, reactor=reactor, loop=loop).kind


# -- kinds ---------------------------------------------------------------------


def test_wsgi_function(tmp_path: Path, loop) -> None:
    write(
        tmp_path,
        "app.py",
        """
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b"hi"]
        """,
    )
    assert kind_of(tmp_path, loop) == "wsgi"


def test_flask(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "from flask import Flask\napplication = Flask(__name__)\n")
    assert kind_of(tmp_path, loop) == "wsgi"


def test_asgi_function_and_object(tmp_path: Path, loop) -> None:
    write(tmp_path, "main.py", "async def app(scope, receive, send): pass\n")
    assert kind_of(tmp_path, loop) == "asgi"
    write(
        tmp_path,
        "obj.py",
        """
        class App:
            async def __call__(self, scope, receive, send):
                pass
        wrapped = App()
        """,
    )
    assert kind_of(tmp_path, loop, "obj.py:wrapped") == "asgi"


def test_starlette(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "from starlette.applications import Starlette\napp = Starlette()\n")
    assert kind_of(tmp_path, loop) == "asgi"


def test_klein_and_resource(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "from klein import Klein\napp = Klein()\n")
    assert kind_of(tmp_path, loop) == "klein"
    write(tmp_path, "res.py", "from twisted.web.resource import Resource\napp = Resource()\n")
    assert kind_of(tmp_path, loop, "res.py") == "resource"


def test_routes_and_fetch(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "routes = {'/': 'hi'}\n")
    assert kind_of(tmp_path, loop) == "routes"
    write(tmp_path, "only_fetch.py", "def fetch(request):\n    return 'hi'\n")
    assert kind_of(tmp_path, loop, "only_fetch.py") == "routes"


def test_attribute_wins_over_app(tmp_path: Path, loop) -> None:
    write(
        tmp_path,
        "app.py",
        """
        def app(environ, start_response):
            pass
        async def api(scope, receive, send):
            pass
        """,
    )
    assert kind_of(tmp_path, loop, "app.py:api") == "asgi"


def test_missing_attribute(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "app = None\n")
    with pytest.raises(LoadError, match="has no attribute 'api'"):
        kind_of(tmp_path, loop, "app.py:api")


def test_nothing_exposed(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "value = 1\napp = 'not callable'\n")
    with pytest.raises(LoadError) as caught:
        kind_of(tmp_path, loop)
    assert (
        str(caught.value)
        == NO_APP
        == ("Module must expose a WSGI/ASGI app, a Klein app, routes or fetch")
    )


def test_import_error_propagates(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "import not_a_module_anywhere\n")
    with pytest.raises(ModuleNotFoundError):
        kind_of(tmp_path, loop)


def test_app_dir_and_entry_dir_are_importable(tmp_path: Path, loop) -> None:
    write(tmp_path, "helpers.py", "GREETING = 'hi'\n")
    write(tmp_path, "src/sibling.py", "NAME = 'sib'\n")
    write(
        tmp_path,
        "src/server.py",
        "import helpers, sibling\nroutes = {'/': helpers.GREETING + sibling.NAME}\n",
    )
    app = load(str(tmp_path), "src/server.py", reactor=reactor, loop=loop)
    assert app.kind == "routes"
    assert app.module.__name__ in sys.modules
    assert app.module.__name__.startswith("buntime_app_server_")


def test_two_apps_with_the_same_file_name(tmp_path: Path, loop) -> None:
    write(tmp_path / "one", "app.py", "routes = {'/': 'one'}\n")
    write(tmp_path / "two", "app.py", "routes = {'/': 'two'}\n")
    one = load(str(tmp_path / "one"), "", reactor=reactor, loop=loop)
    two = load(str(tmp_path / "two"), "", reactor=reactor, loop=loop)
    assert one.module is not two.module
    assert one.module.routes == {"/": "one"}


def test_hooks(tmp_path: Path, loop) -> None:
    write(tmp_path, "app.py", "routes = {}\ndef on_idle(): pass\non_terminate = 3\n")
    app = load(str(tmp_path), "", reactor=reactor, loop=loop)
    assert app.hook("on_idle") is app.module.on_idle
    assert app.hook("on_terminate") is None


def test_an_entry_file_rewritten_within_the_same_second_is_imported_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    entry = tmp_path / "app.py"
    entry.write_text("version = 1\n")
    first = import_file(str(entry)).version
    entry.write_text("version = 2\n")  # same size, same second: a .pyc would match
    assert (first, import_file(str(entry)).version) == (1, 2)


def test_a_missing_module_says_how_to_provide_it(tmp_path):
    try:
        import does_not_exist_anywhere  # noqa: F401
    except ModuleNotFoundError as error:
        hint = missing_module_hint(error, str(tmp_path))
    deps = tmp_path / ".deps"
    assert hint == (
        "ModuleNotFoundError: No module named 'does_not_exist_anywhere'. Provide"
        " 'does_not_exist_anywhere' in one of three ways: list it (pinned, with hashes) in the"
        " app's requirements.txt and set autoInstall: true in its manifest; or install it into"
        f" {deps} (pip install --target {deps} does_not_exist_anywhere); or install it into the"
        f" runtime's own environment ({sys.executable} -m pip install does_not_exist_anywhere)."
        " See docs/apps.md, 'Dependencies and autoInstall'."
    )


def test_the_hints_point_at_a_section_that_exists():
    from buntime.pool.deps import LOCK_RECIPE

    try:
        import does_not_exist_anywhere  # noqa: F401
    except ModuleNotFoundError as error:
        hint = missing_module_hint(error, "/srv/app")
    headings = {
        line.lstrip("#").strip().replace("`", "")
        for line in (Path(__file__).parent.parent / "docs" / "apps.md").read_text().splitlines()
        if line.startswith("#")
    }
    for text in (hint, LOCK_RECIPE):
        [section] = re.findall(r"docs/apps\.md, '([^']+)'", text)
        assert section in headings

"""
Entrypoint resolution (L{buntime.apps.resolve}): one rule for the runtime,
which reads a manifest's C{entrypoint}, and for the worker, which reads the
C{ENTRYPOINT} the runtime gives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from twisted.internet import reactor

from buntime.apps.resolve import EntrypointError, resolve, split
from buntime.pool.child.loader import LoadError, load

worker_resolve = partial(resolve, suffixes=(".py",), absolute=True)
"""How the worker resolves its C{ENTRYPOINT}."""


def write(folder: Path, name: str, source: str = "") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


# -- the rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared, expected",
    [
        ("app.py", ("app.py", None)),
        ("app.py:application", ("app.py", "application")),
        ("pkg/mod.py:factory", ("pkg/mod.py", "factory")),
        ("app.py:api.app", ("app.py", "api.app")),
        ("v1:2/app.py", ("v1:2/app.py", None)),
        ("v1:2/app.py:factory", ("v1:2/app.py", "factory")),
        ("/srv/a:b/app.py:factory", ("/srv/a:b/app.py", "factory")),
        ("app.py:", ("app.py", "")),
        (":app", ("", "app")),
    ],
)
def test_the_attribute_follows_the_last_colon_of_the_last_segment(declared, expected):
    assert split(declared) == expected


@pytest.mark.parametrize(
    "declared, file, attribute",
    [
        ("app.py", "app.py", None),
        ("app.py:application", "app.py", "application"),
        ("pkg/mod.py:factory", "pkg/mod.py", "factory"),
        ("pkg/mod.py:make.app", "pkg/mod.py", "make.app"),
        ("v1:2/app.py", "v1:2/app.py", None),
        ("v1:2/app.py:factory", "v1:2/app.py", "factory"),
    ],
)
def test_runtime_and_worker_agree(tmp_path: Path, declared, file, attribute):
    """The worker reads the runtime's C{ENTRYPOINT} back into what the runtime found."""
    app = tmp_path / "app:dir"  # a colon in the app dir's own path too
    write(app, "app.py")
    write(app, "pkg/mod.py")
    write(app, "v1:2/app.py")
    expected = (str(app / file), attribute)
    assert resolve(str(app), declared) == expected
    assert worker_resolve(str(app), declared) == expected
    entrypoint = expected[0] + (f":{attribute}" if attribute else "")  # what ENTRYPOINT holds
    assert worker_resolve(str(app), entrypoint) == expected


def test_the_worker_reports_a_bad_entrypoint_as_a_load_error(tmp_path: Path):
    write(tmp_path, "app.py")
    with pytest.raises(LoadError, match='"1bad" is not an attribute'):
        load(str(tmp_path), "app.py:1bad", reactor=reactor, loop=None)


def test_the_worker_imports_nothing_of_the_web_or_plugins():
    code = (
        "import sys, buntime.pool.child.main;"
        "print(sorted(m for m in sys.modules if m.startswith(('buntime.web', 'buntime.plugins'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the runtime: a manifest's entrypoint ------------------------------------


@pytest.fixture
def app_dir(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "outside.py").write_text("SECRET = 1\n")
    return app


@pytest.mark.parametrize(
    "files,expected",
    [
        (["index.html", "app.py", "main.py", "index.py"], "index.html"),
        (["app.py", "main.py", "index.py"], "app.py"),
        (["main.py", "index.py"], "main.py"),
        (["index.py"], "index.py"),
    ],
)
def test_auto_detection_order(app_dir, files, expected):
    for name in files:
        (app_dir / name).write_text("")
    assert resolve(str(app_dir), None) == (str(app_dir / expected), None)


def test_no_entrypoint(app_dir):
    (app_dir / "readme.txt").write_text("")
    with pytest.raises(EntrypointError, match="No entrypoint found"):
        resolve(str(app_dir), None)


def test_declared_entrypoint_with_attribute(app_dir):
    (app_dir / "src").mkdir()
    (app_dir / "src" / "server.py").write_text("")
    assert resolve(str(app_dir), "src/server.py:create_app") == (
        str(app_dir / "src" / "server.py"),
        "create_app",
    )
    assert resolve(str(app_dir), "./src/server.py") == (
        str(app_dir / "src" / "server.py"),
        None,
    )
    assert resolve(str(app_dir), "src/server.py:api.app")[1] == "api.app"


@pytest.mark.parametrize(
    "declared,message",
    [
        ("/etc/passwd.py", "relative to the app directory"),
        ("../outside.py", "must not leave the app directory"),
        ("src/../../outside.py", "must not leave the app directory"),
        ("..\\outside.py", "must not leave the app directory"),
        ("\\outside.py", "relative to the app directory"),
        ("missing.py", "not found"),
        ("app.py:1bad", "is not an attribute"),
        ("app.py:", "is not an attribute"),
        (":app", "no file named"),
        ("notes.txt", "must be a .py or .html file"),
        ("index.html:app", "has no attributes"),
        ("src", "must be a .py or .html file"),
    ],
)
def test_invalid_entrypoints(app_dir, declared, message):
    (app_dir / "app.py").write_text("")
    (app_dir / "index.html").write_text("")
    (app_dir / "notes.txt").write_text("")
    (app_dir / "src").mkdir()
    with pytest.raises(EntrypointError, match=message):
        resolve(str(app_dir), declared)


def test_symlink_escape_is_refused(app_dir, tmp_path):
    os.symlink(tmp_path / "outside.py", app_dir / "link.py")
    with pytest.raises(EntrypointError, match="outside the app directory"):
        resolve(str(app_dir), "link.py")
    os.symlink(tmp_path, app_dir / "up")
    with pytest.raises(EntrypointError, match="outside the app directory"):
        resolve(str(app_dir), "up/outside.py")


def test_symlink_inside_is_fine(app_dir):
    (app_dir / "real.py").write_text("")
    os.symlink(app_dir / "real.py", app_dir / "app.py")
    assert resolve(str(app_dir), None) == (str(app_dir / "app.py"), None)


def test_symlinked_app_dir_is_fine(app_dir, tmp_path):
    (app_dir / "app.py").write_text("")
    os.symlink(app_dir, tmp_path / "alias")
    path, _ = resolve(str(tmp_path / "alias"), None)
    assert path == str(tmp_path / "alias" / "app.py")


# -- the worker: ENTRYPOINT, Python files only -------------------------------------


def test_worker_auto_detection_order(tmp_path: Path) -> None:
    write(tmp_path, "index.py", "")
    assert worker_resolve(str(tmp_path), "") == (str(tmp_path / "index.py"), None)
    write(tmp_path, "main.py", "")
    assert worker_resolve(str(tmp_path), "")[0] == str(tmp_path / "main.py")
    write(tmp_path, "app.py", "")
    assert worker_resolve(str(tmp_path), "")[0] == str(tmp_path / "app.py")


def test_worker_has_nothing_to_auto_detect(tmp_path: Path) -> None:
    write(tmp_path, "index.html", "<p>static apps never reach a worker</p>")
    with pytest.raises(EntrypointError, match="No entrypoint found"):
        worker_resolve(str(tmp_path), "")


def test_worker_declared_entrypoint_and_attribute(tmp_path: Path) -> None:
    write(tmp_path, "src/server.py", "")
    assert worker_resolve(str(tmp_path), "src/server.py:make.app") == (
        str(tmp_path / "src" / "server.py"),
        "make.app",
    )
    absolute = str(tmp_path / "src" / "server.py")
    assert worker_resolve(str(tmp_path), absolute) == (absolute, None)


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("/etc/passwd.py", "must be a path relative to the app directory"),
        ("../outside.py", "must not leave the app directory"),
        ("sub/../../outside.py", "must not leave the app directory"),
        ("link.py", "resolves outside the app directory"),
        ("missing.py", 'Entrypoint "missing.py" not found'),
        ("index.html", "must be a .py file"),
        ("app.py:1bad", "is not an attribute"),
    ],
)
def test_worker_bad_entrypoints(tmp_path: Path, entrypoint: str, message: str) -> None:
    app = tmp_path / "app"
    write(app, "app.py", "")
    write(app, "index.html", "")
    write(tmp_path, "outside.py", "")
    os.symlink(tmp_path / "outside.py", app / "link.py")
    with pytest.raises(EntrypointError, match=message):
        worker_resolve(str(app), entrypoint)

"""
Finding apps in worker dirs (layouts, scopes, junk) and splitting app paths.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from buntime.apps.discovery import (
    AppCatalog,
    AppVersion,
    scan,
    scan_worker_dir,
    split_app_path,
)


def make_dirs(root, *relative: str) -> None:
    for path in relative:
        os.makedirs(os.path.join(root, path), exist_ok=True)


def touch(path, text: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def found(worker_dir) -> set[tuple[str, str, str]]:
    return {(a.name, a.version, a.layout) for a in scan_worker_dir(str(worker_dir))}


def test_flat_layout(tmp_path):
    make_dirs(tmp_path, "hello@1.2.0", "hello@latest", "hello@2.0.0-rc.1")
    assert found(tmp_path) == {
        ("hello", "1.2.0", "flat"),
        ("hello", "latest", "flat"),
        ("hello", "2.0.0-rc.1", "flat"),
    }


def test_nested_layout(tmp_path):
    make_dirs(tmp_path, "hello/1.2.0", "hello/latest")
    assert found(tmp_path) == {("hello", "1.2.0", "nested"), ("hello", "latest", "nested")}
    (app,) = [a for a in scan_worker_dir(str(tmp_path)) if a.version == "1.2.0"]
    assert app == AppVersion("hello", "1.2.0", str(tmp_path / "hello" / "1.2.0"), "nested")
    assert app.label == "hello@1.2.0"


@pytest.mark.parametrize("marker", ["manifest.yaml", "manifest.yml", "pyproject.toml"])
def test_simple_layout_needs_a_manifest(tmp_path, marker):
    touch(tmp_path / "hello" / marker)
    make_dirs(tmp_path, "plain")  # no manifest: not an app
    touch(tmp_path / "plain" / "index.html")
    assert found(tmp_path) == {("hello", "latest", "simple")}
    (app,) = scan_worker_dir(str(tmp_path))
    assert app.dir == str(tmp_path / "hello")


def test_scoped_names_in_every_layout(tmp_path):
    make_dirs(tmp_path, "@acme/flat@1.0.0", "@acme/nested/2.0.0")
    touch(tmp_path / "@acme" / "simple" / "manifest.yaml")
    assert found(tmp_path) == {
        ("@acme/flat", "1.0.0", "flat"),
        ("@acme/nested", "2.0.0", "nested"),
        ("@acme/simple", "latest", "simple"),
    }


def test_hidden_and_junk_are_ignored(tmp_path):
    make_dirs(
        tmp_path,
        ".hidden@1.0.0",
        ".git/1.0.0",
        "hello@1.0",  # not semver
        "hello@v1.0.0",
        "hello@1.0.0.0",
        "hello@",
        "@1.0.0",
        "hello/notaversion",
        "hello/.1.0.0",
        "hello/1.0",
        "-bad@1.0.0",
        "@/x@1.0.0",
        "@@x/y@1.0.0",
        "@acme/.hidden@1.0.0",
        "@acme/@nested/x@1.0.0",
        "ok@1.0.0",
    )
    touch(tmp_path / "file@1.0.0")  # a file, not a directory
    touch(tmp_path / "hello" / "2.0.0")  # a file
    assert found(tmp_path) == {("ok", "1.0.0", "flat")}


def test_symlinked_versions_are_followed(tmp_path):
    make_dirs(tmp_path, "hello@1.0.0")
    os.symlink(tmp_path / "hello@1.0.0", tmp_path / "hello@latest")
    assert ("hello", "latest", "flat") in found(tmp_path)


def test_missing_or_unreadable_worker_dir_is_skipped(tmp_path):
    make_dirs(tmp_path / "b", "x@1.0.0")
    touch(tmp_path / "file")
    apps = scan([str(tmp_path / "missing"), str(tmp_path / "file"), str(tmp_path / "b")])
    assert list(apps) == ["x"]


def test_list_apps(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    make_dirs(first, "hello@1.2.0", "hello/1.10.0", "hello/2.0.0-rc.1", "@acme/tool/1.0.0")
    touch(first / "site" / "manifest.yaml")
    make_dirs(second, "hello@latest", "hello@1.2.0", "zeta@0.1.0")
    catalog = AppCatalog([str(first), str(second)], Clock())
    assert catalog.list_apps() == [
        {"name": "@acme/tool", "path": str(first / "@acme" / "tool"), "versions": ["1.0.0"]},
        {
            "name": "hello",
            "path": str(second),
            "versions": ["latest", "2.0.0-rc.1", "1.10.0", "1.2.0"],
        },
        {"name": "site", "path": str(first / "site"), "versions": ["latest"]},
        {"name": "zeta", "path": str(second), "versions": ["0.1.0"]},
    ]


def test_versions_of_one_app(tmp_path):
    make_dirs(tmp_path, "hello@1.0.0", "hello/2.0.0")
    catalog = AppCatalog([str(tmp_path)], Clock())
    assert sorted(catalog.versions("hello")) == ["1.0.0", "2.0.0"]
    assert catalog.versions("nope") == {}


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/hello", ("hello", None, "/hello", "/")),
        ("/hello/", ("hello", None, "/hello", "/")),
        ("/hello/api/x", ("hello", None, "/hello", "/api/x")),
        ("/hello@^1.0.0/api/x", ("hello", "^1.0.0", "/hello@^1.0.0", "/api/x")),
        ("/hello@%5E1.0.0/api/x", ("hello", "^1.0.0", "/hello@%5E1.0.0", "/api/x")),
        ("/hello@%3E%3D1%20%3C2/", ("hello", ">=1 <2", "/hello@%3E%3D1%20%3C2", "/")),
        ("/hello@1.2.3+b/x", ("hello", "1.2.3+b", "/hello@1.2.3+b", "/x")),
        ("/hello@latest", ("hello", "latest", "/hello@latest", "/")),
        ("/hello@", ("hello", "", "/hello@", "/")),
        ("/@scope/name@1/x", ("@scope/name", "1", "/@scope/name@1", "/x")),
        ("/@scope/name", ("@scope/name", None, "/@scope/name", "/")),
        ("/@scope/name/a/b", ("@scope/name", None, "/@scope/name", "/a/b")),
        ("/hello@1//x", ("hello", "1", "/hello@1", "//x")),
        ("/", None),
        ("", None),
        ("hello", None),
        ("/@scope", None),
        ("/@scope/", None),
        ("/.hidden/x", None),
        ("/%68ello", None),
        ("/@sc@pe/name", None),
        ("/@/name", None),
    ],
)
def test_split_app_path(path, expected):
    assert split_app_path(path) == expected

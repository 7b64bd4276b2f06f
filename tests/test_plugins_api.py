"""
The plugins part of the core API, through C{treq.testing.StubTreq}: list,
loaded, reload, upload (installed, then reloaded; undone when the plugins
fail to load) and delete.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import textwrap
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import define
from test_plugins_service import make_service
from test_plugins_support import RECORDING_PLUGIN, write_plugin
from treq.testing import StubTreq

from buntime.plugins.discovery import BUILTINS_DIR
from buntime.web.api.plugins import PluginsAPI

BASE = "http://localhost"

FAILING_PLUGIN = """
from zope.interface import implementer
from buntime.interfaces import IBuntimePlugin

@implementer(IBuntimePlugin)
class P:
    def on_init(self, ctx):
        raise RuntimeError("broken upload")

provider = P()
"""


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, textwrap.dedent(text))
    return buffer.getvalue()


def make_tgz(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def multipart(field: str, filename: str | None, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="{field}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@define
class Setup:
    root: Path
    plugins: Path
    service: Any
    stub: StubTreq

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await self.stub.request(method, BASE + path, **kwargs)
        body = await self.stub.content(response)
        return response.code, json.loads(body) if body else None

    async def upload(self, filename: str | None, data: bytes) -> tuple[int, Any]:
        body, headers = multipart("file", filename, data)
        return await self.call("POST", "/api/plugins/upload", data=body, headers=headers)

    def loaded(self) -> list[str]:
        return [p.name for p in self.service.registry.plugins]

    def tree(self) -> list[str]:
        return sorted(
            os.path.relpath(os.path.join(d, n), self.plugins)
            for d, dirs, files in os.walk(self.plugins)
            for n in dirs + files
            if "__pycache__" not in d and n != "__pycache__"
        )


@pytest.fixture
def setup(tmp_path: Path, eliot_logger):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "a", {"name": "a", "label": "a", "base": "/a"}, code=RECORDING_PLUGIN)
    service = make_service(plugins, builtins_dir=BUILTINS_DIR)
    service.startService()
    api = PluginsAPI(service)
    yield Setup(tmp_path, plugins, service, StubTreq(api.app.resource()))
    service.stopService()


# -- listing ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_plugins(setup: Setup):
    status, body = await setup.call("GET", "/api/plugins")
    assert status == 200
    builtins = [plugin for plugin in body if plugin["source"] == "builtin"]
    assert body[: len(builtins)] == builtins  # the built-ins first, on or off
    for name, enabled in (
        ("metrics", True),
        ("proxy", False),
        ("gateway", False),
        ("vhosts", False),
    ):
        assert {
            "name": f"@buntime/plugin-{name}",
            "path": os.path.join(BUILTINS_DIR, name),
            "source": "builtin",
            "enabled": enabled,
        } in builtins
    assert body[len(builtins) :] == [
        {"name": "a", "path": str(setup.plugins / "a"), "source": "dir", "enabled": True},
    ]


@pytest_twisted.ensureDeferred
async def test_loaded_plugins(setup: Setup):
    status, body = await setup.call("GET", "/api/plugins/loaded")
    assert status == 200
    assert [p["name"] for p in body] == ["@buntime/plugin-metrics", "a"]
    assert body[0] == {
        "name": "@buntime/plugin-metrics",
        "base": "/metrics",
        "dependencies": [],
        "optionalDependencies": [],
        "menus": [{"title": "Metrics", "icon": "chart", "path": "/metrics"}],
    }


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods(setup: Setup):
    status, body = await setup.call("GET", "/api/plugins/a/b")
    assert (status, body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
    status, body = await setup.call("PUT", "/api/plugins")
    assert (status, body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")


# -- reload -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reload(setup: Setup):
    write_plugin(setup.plugins, "b", {"name": "b", "base": "/b"})
    status, body = await setup.call("POST", "/api/plugins/reload")
    assert status == 200
    assert body == {
        "ok": True,
        "plugins": [
            {"name": "@buntime/plugin-metrics", "base": "/metrics"},
            {"name": "a", "base": "/a"},
            {"name": "b", "base": "/b"},
        ],
    }
    assert setup.loaded() == ["@buntime/plugin-metrics", "a", "b"]


@pytest_twisted.ensureDeferred
async def test_failed_reload_answers_the_reason_and_keeps_the_old_set(setup: Setup):
    old = setup.service.registry
    write_plugin(setup.plugins, "b", {"name": "b", "base": "/a"})
    status, body = await setup.call("POST", "/api/plugins/reload")
    assert status == 500
    assert body == {
        "error": {
            "code": "RELOAD_FAILED",
            "message": 'Route collision: Plugin "b" cannot mount routes at "/a"'
            ' - already used by "a"',
        }
    }
    assert setup.service.registry is old


# -- upload ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upload_installs_and_loads(setup: Setup):
    archive = make_zip(
        {"manifest.yaml": "name: uploaded\nbase: /up\n", "plugin.py": RECORDING_PLUGIN}
    )
    status, body = await setup.upload("uploaded.zip", archive)
    assert status == 200
    assert body["success"] is True
    plugin = body["data"]["plugin"]
    assert plugin["name"] == "uploaded"
    assert plugin["path"] == str(setup.plugins / "uploaded")
    assert plugin["installedAt"].endswith("Z")
    assert {"name": "uploaded", "base": "/up"} in body["data"]["plugins"]
    assert setup.loaded()[-1] == "uploaded"
    assert (setup.plugins / "uploaded" / "plugin.py").exists()
    assert not [p for p in os.listdir(setup.plugins) if p.startswith(".")]


@pytest_twisted.ensureDeferred
async def test_upload_a_scoped_plugin_in_a_directory_tgz(setup: Setup):
    archive = make_tgz({"pkg/manifest.yaml": "name: '@acme/tool'\n", "pkg/extra.txt": "x"})
    status, body = await setup.upload("tool.tar.gz", archive)
    assert status == 200, body
    assert (setup.plugins / "@acme" / "tool" / "extra.txt").read_text() == "x"
    assert "@acme/tool" in setup.loaded()


@pytest_twisted.ensureDeferred
async def test_upload_replaces_an_existing_copy(setup: Setup):
    write_plugin(setup.plugins, "c", {"name": "c", "version": 1})
    await setup.call("POST", "/api/plugins/reload")
    status, _ = await setup.upload("c.zip", make_zip({"manifest.yaml": "name: c\nversion: 2\n"}))
    assert status == 200
    assert "version: 2" in (setup.plugins / "c" / "manifest.yaml").read_text()


@pytest_twisted.ensureDeferred
async def test_an_upload_that_fails_to_load_is_undone(setup: Setup):
    write_plugin(setup.plugins, "c", {"name": "c", "version": 1})
    await setup.call("POST", "/api/plugins/reload")
    before = setup.tree()
    old = setup.service.registry
    archive = make_zip({"manifest.yaml": "name: c\nversion: 2\n", "plugin.py": FAILING_PLUGIN})
    status, body = await setup.upload("c.zip", archive)
    assert status == 400
    assert body == {
        "error": {
            "code": "PLUGIN_LOAD_FAILED",
            "message": 'Plugin "c" on_init failed: RuntimeError: broken upload',
        }
    }
    assert setup.tree() == before
    assert "version: 1" in (setup.plugins / "c" / "manifest.yaml").read_text()
    assert setup.service.registry is old


@pytest_twisted.ensureDeferred
async def test_a_new_upload_that_fails_to_load_is_removed(setup: Setup):
    before = setup.tree()
    archive = make_zip({"manifest.yaml": "name: '@new/bad'\n", "plugin.py": FAILING_PLUGIN})
    status, body = await setup.upload("bad.zip", archive)
    assert (status, body["error"]["code"]) == (400, "PLUGIN_LOAD_FAILED")
    assert setup.tree() == before


@pytest.mark.parametrize(
    "filename, data, status, code",
    [
        ("p.zip", make_zip({"manifest.yaml": "base: /x\n"}), 400, "MISSING_NAME"),
        ("p.zip", make_zip({"readme.md": "hi"}), 400, "MISSING_PARAMS"),
        ("p.rar", b"whatever", 400, "INVALID_FILE_TYPE"),
        ("p.zip", b"not a zip", 400, "INVALID_ARCHIVE"),
        ("p.zip", make_zip({"../evil/manifest.yaml": "name: evil\n"}), 400, "PATH_TRAVERSAL"),
        ("p.zip", make_zip({"manifest.yaml": "name: ../../evil\n"}), 400, "PATH_TRAVERSAL"),
        ("p.zip", make_zip({"manifest.yaml": "name: 'a b'\n"}), 400, "INVALID_ARCHIVE"),
        (None, b"field, not file", 400, "NO_FILE_PROVIDED"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refused_uploads_change_nothing(setup: Setup, filename, data, status, code):
    before = setup.tree()
    got_status, body = await setup.upload(filename, data)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert setup.tree() == before
    assert not (setup.root / "evil").exists()


@pytest_twisted.ensureDeferred
async def test_upload_without_plugin_dirs(tmp_path, eliot_logger):
    service = make_service()
    stub = StubTreq(PluginsAPI(service).app.resource())
    body, headers = multipart("file", "p.zip", make_zip({"manifest.yaml": "name: p\n"}))
    response = await stub.post(BASE + "/api/plugins/upload", data=body, headers=headers)
    assert response.code == 400
    assert json.loads(await stub.content(response))["error"]["code"] == "NO_PLUGIN_DIRS"
    response = await stub.delete(BASE + "/api/plugins/p")
    assert json.loads(await stub.content(response))["error"]["code"] == "NO_PLUGIN_DIRS"


# -- delete -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_a_scoped_plugin_by_its_encoded_name(setup: Setup):
    write_plugin(setup.plugins, "@acme/tool", {"name": "@acme/tool"})
    await setup.call("POST", "/api/plugins/reload")
    assert "@acme/tool" in setup.loaded()
    status, body = await setup.call("DELETE", "/api/plugins/%40acme%2Ftool")
    assert status == 200
    assert body == {
        "success": True,
        "data": {"name": "@acme/tool", "removed": str(setup.plugins / "@acme" / "tool")},
    }
    assert "@acme/tool" not in setup.loaded()
    assert not (setup.plugins / "@acme").exists()


@pytest_twisted.ensureDeferred
async def test_delete_unknown_plugin(setup: Setup):
    status, body = await setup.call("DELETE", "/api/plugins/ghost")
    assert status == 404
    assert body == {"error": {"code": "PLUGIN_NOT_FOUND", "message": 'No plugin named "ghost"'}}


@pytest_twisted.ensureDeferred
async def test_builtins_cannot_be_deleted_but_their_overrides_can(setup: Setup):
    status, body = await setup.call("DELETE", "/api/plugins/%40buntime%2Fplugin-metrics")
    assert (status, body["error"]["code"]) == (400, "PLUGIN_NOT_REMOVABLE")
    write_plugin(
        setup.plugins, "metrics-off", {"name": "@buntime/plugin-metrics", "enabled": False}
    )
    await setup.call("POST", "/api/plugins/reload")
    assert "@buntime/plugin-metrics" not in setup.loaded()
    status, body = await setup.call("DELETE", "/api/plugins/%40buntime%2Fplugin-metrics")
    assert status == 200
    assert body["data"]["removed"] == str(setup.plugins / "metrics-off")
    assert "@buntime/plugin-metrics" in setup.loaded()


@pytest_twisted.ensureDeferred
async def test_deleting_a_required_plugin_is_undone(setup: Setup):
    write_plugin(setup.plugins, "needs-a", {"name": "needs-a", "dependencies": ["a"]})
    await setup.call("POST", "/api/plugins/reload")
    before = setup.tree()
    status, body = await setup.call("DELETE", "/api/plugins/a")
    assert status == 400
    assert body["error"] == {
        "code": "PLUGIN_LOAD_FAILED",
        "message": 'Plugin "needs-a" requires "a" which is not available.'
        ' Ensure "a" is installed in pluginDirs.',
    }
    assert setup.tree() == before
    assert "a" in setup.loaded()

"""
The plugins part of the core API (SPEC §4): list plugins found and loaded,
reload them, install one from an archive, remove one.

Upload and delete change the first plugin dir and reload; when the new set
fails to load, the change is undone on disk and the old set keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from attrs import field, frozen
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorThreads

from buntime.archive import DEFAULT_MAX_FILES, DEFAULT_MAX_TOTAL_BYTES, InstallError
from buntime.logs import log
from buntime.plugins.install import (
    Staged,
    find_removable,
    stage_plugin,
    stage_removal,
)
from buntime.plugins.manifest import PluginError
from buntime.plugins.registry import PluginRegistry
from buntime.plugins.service import PluginService
from buntime.web.api.core import (
    api_routes,
    disk_error,
    install_refused,
    json_body,
    json_error,
    standard_errors,
)
from buntime.web.api.openapi import STRING, STRINGS, describe, json_object, json_response, success
from buntime.web.api.uploads import UPLOAD_BODY, off_the_reactor, uploaded_file

_NAME = {"type": ["string", "null"]}
_BASE = _NAME
_LOADED_SCHEMA = {
    "type": "array",
    "items": json_object(
        name=STRING,
        base=_BASE,
        dependencies=STRINGS,
        optionalDependencies=STRINGS,
        menus={"type": "array", "items": {"type": "object"}},
    ),
}
_FOUND_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": _NAME,
            "path": STRING,
            "source": {"enum": ["dir", "builtin", "package"]},
            "enabled": {"type": ["boolean", "string"]},
            "error": {**STRING, "description": "Why its manifest could not be read"},
        },
        "required": ["name", "path", "source", "enabled"],
    },
}
_SUMMARY = {"type": "array", "items": json_object(name=STRING, base=_BASE)}
_ERRORS: dict[int | str, str | dict[str, Any]] = {
    400: "`NO_PLUGIN_DIRS`, `NO_FILE_PROVIDED`, `BAD_REQUEST` (malformed multipart), "
    "`INVALID_FILE_TYPE`, `INVALID_ARCHIVE`, `PATH_TRAVERSAL`, `MISSING_PARAMS`, "
    "`MISSING_NAME`, or `PLUGIN_LOAD_FAILED` (the "
    "plugins failed to load with the change, which was undone)",
    413: "`PAYLOAD_TOO_LARGE`: what the archive unpacks to is too big",
    507: "`INSUFFICIENT_STORAGE`: the disk (or the temporary directory) is full; nothing changed",
}


def _summary(registry: PluginRegistry) -> list[dict[str, Any]]:
    return [{"name": p.name, "base": p.base} for p in registry.plugins]


@frozen
class PluginsAPI:
    """
    C{/api/plugins} routes over a L{PluginService}.  With C{threads},
    archives are extracted in the reactor's thread pool; changes on disk and
    reloads run one at a time.
    """

    service: PluginService
    threads: IReactorThreads | None = None
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_files: int = DEFAULT_MAX_FILES
    _lock: DeferredLock = field(factory=DeferredLock, init=False)

    app = api_routes()

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await off_the_reactor(self.threads, function, *args, **kwargs)

    async def _reload_or_undo(self, staged: Staged) -> PluginRegistry:
        """Reload; keep the staged change when that works, else undo it."""
        try:
            registry = await self.service.reload()
        except BaseException as error:
            await self._run(staged.rollback)
            if isinstance(error, PluginError):
                raise InstallError("PLUGIN_LOAD_FAILED", str(error)) from None
            raise
        await self._run(staged.commit)
        return registry

    @app.route("/api/plugins", methods=["GET", "HEAD"])
    @describe(responses={200: json_response("The plugins found", _FOUND_SCHEMA)})
    def list_plugins(self, request: Any) -> bytes:
        """
        List the plugins found.

        Every plugin found in the plugin dirs, among the built-ins and in
        installed packages, enabled or not: `name`, `path` (its directory),
        `source` (`dir`, `builtin` or `package`) and `enabled`.
        """
        return json_body(request, [source.describe() for source in self.service.discover()])

    @app.route("/api/plugins/loaded", methods=["GET", "HEAD"])
    @describe(
        responses={
            200: {
                "description": "The loaded plugins, in load order",
                "content": {"application/json": {"schema": _LOADED_SCHEMA}},
            }
        }
    )
    def loaded(self, request: Any) -> bytes:
        """
        List the loaded plugins.

        The plugins serving now, in load order, with their base, dependencies
        and shell menus.
        """
        return json_body(request, self.service.registry.describe_loaded())

    @app.route("/api/plugins/reload", methods=["POST"])
    @describe(
        responses={
            200: json_response(
                "Reloaded: the plugins now loaded",
                json_object(ok={"const": True}, plugins=_SUMMARY),
            ),
            500: "`RELOAD_FAILED`: the message says why; the previous plugins keep serving",
        }
    )
    async def reload(self, request: Any) -> bytes:
        """
        Reload all plugins.

        Rescans the plugin dirs, loads and initializes the new set, then
        swaps it in and shuts the old set down. When the new set fails
        (a cycle, a missing dependency, an `on_init` error...) the previous
        set keeps serving.
        """
        async with self._lock:
            try:
                registry = await self.service.reload()
            except PluginError as error:
                return json_error(request, 500, "RELOAD_FAILED", str(error))
        return json_body(request, {"ok": True, "plugins": _summary(registry)})

    @app.route("/api/plugins/upload", methods=["POST"])
    @describe(
        request_body=UPLOAD_BODY,
        responses={
            200: json_response(
                "Installed, and the plugins now loaded",
                success(
                    plugin=json_object(name=STRING, path=STRING, installedAt=STRING),
                    plugins=_SUMMARY,
                ),
            ),
            **_ERRORS,
        },
    )
    async def upload(self, request: Any) -> bytes:
        """
        Install a plugin from an archive.

        Send the archive as the multipart field `file` (.zip, .tgz or .tar.gz).
        It must hold `manifest.yaml` with a `name` at its root or inside its
        single top-level directory. The plugin is installed into the first
        plugin dir as `<name>/` (or `@scope/<name>/`), replacing an existing
        copy, and the plugins are reloaded; when they fail to load, the
        previous copy is put back.
        """
        dirs = self.service.plugin_dirs
        if not dirs:
            raise InstallError("NO_PLUGIN_DIRS", "No plugin dirs are configured")
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        async with self._lock:
            staged = await self._run(self._stage, content_type, request.content, dirs[0])
            registry = await self._reload_or_undo(staged)
        log(
            "info",
            "buntime:plugins:installed",
            f'Installed plugin "{staged.name}"',
            plugin=staged.name,
            path=staged.path,
        )
        plugin = {"name": staged.name, "path": staged.path, "installedAt": staged.installed_at}
        data = {"plugin": plugin, "plugins": _summary(registry)}
        return json_body(request, {"success": True, "data": data})

    def _stage(self, content_type: str, content: Any, plugin_dir: str) -> Staged:
        """Parse the upload and extract it (both slow: run in the thread pool)."""
        filename, upload = uploaded_file(content_type, content)
        return stage_plugin(
            upload,
            filename,
            plugin_dir,
            max_total_bytes=self.max_total_bytes,
            max_files=self.max_files,
        )

    @app.route("/api/plugins/<path:name>", methods=["DELETE"])
    @describe(
        responses={
            200: json_response("Removed: its directory", success(name=STRING, removed=STRING)),
            400: "`NO_PLUGIN_DIRS`, `PLUGIN_NOT_REMOVABLE` (a built-in or packaged plugin), or "
            "`PLUGIN_LOAD_FAILED` (the plugins failed to load without it: it was put back)",
            404: "`PLUGIN_NOT_FOUND`",
        }
    )
    async def delete(self, request: Any, name: str) -> bytes:
        """
        Remove a plugin.

        `name` is the plugin's name, URL-encoded (`%40acme%2Fplugin-x`). The
        plugin's directory is removed from its plugin dir and the plugins are
        reloaded; when they fail to load without it (another plugin requires
        it), it is put back. Built-ins and packaged plugins cannot be removed
        (`PLUGIN_NOT_REMOVABLE`; disable them with `enabled: false`), only
        their override manifests. Answers 404 `PLUGIN_NOT_FOUND` otherwise.
        """
        name = unquote(name)
        if not self.service.plugin_dirs:
            raise InstallError("NO_PLUGIN_DIRS", "No plugin dirs are configured")
        async with self._lock:
            sources = self.service.discover()
            path = find_removable(sources, name, self.service.plugin_dirs)
            staged = await self._run(stage_removal, path)
            await self._reload_or_undo(staged)
        log("info", "buntime:plugins:removed", f'Removed plugin "{name}"', plugin=name, path=path)
        return json_body(request, {"success": True, "data": {"name": name, "removed": path}})

    standard_errors(app)
    app.handle_errors(InstallError)(install_refused)
    app.handle_errors(OSError)(disk_error("plugins"))

"""
The apps part of the core API: list the worker apps, install one from an
uploaded archive, remove one or all of its versions (SPEC §4).

After every change the catalog forgets its cached scan (a new version is
served at once) and C{retire} is called with each replaced or removed app
directory so the pool drains and stops its worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from attrs import field, frozen
from twisted.internet.defer import DeferredLock, maybeDeferred
from twisted.internet.interfaces import IReactorThreads

from buntime.apps.install import InstalledApp, install_archive
from buntime.apps.remove import remove_app
from buntime.apps.resolve import EntrypointError
from buntime.archive import DEFAULT_MAX_FILES, DEFAULT_MAX_TOTAL_BYTES, InstallError
from buntime.logs import log
from buntime.manifest import ManifestError
from buntime.web.api.core import (
    api_routes,
    disk_error,
    install_refused,
    json_body,
    standard_errors,
)
from buntime.web.api.openapi import STRING, STRINGS, describe, json_object, json_response, success
from buntime.web.api.uploads import UPLOAD_BODY, off_the_reactor, uploaded_file

_ERROR_RESPONSES: dict[int | str, str | dict[str, Any]] = {
    400: "`NO_FILE_PROVIDED`, `BAD_REQUEST` (malformed multipart), `INVALID_FILE_TYPE`, "
    "`INVALID_ARCHIVE`, `PATH_TRAVERSAL`, `MISSING_PARAMS`, `INVALID_MANIFEST`, "
    "`INVALID_ENTRYPOINT` or `NO_WORKER_DIRS`",
    413: "`PAYLOAD_TOO_LARGE`: the upload, or what the archive unpacks to, is too big",
    507: "`INSUFFICIENT_STORAGE`: the disk (or the temporary directory) is full; nothing changed",
}


_REMOVED = json_response(
    "Removed: `data.removed` lists the app directories",
    success(name=STRING, version={"type": ["string", "null"]}, removed=STRINGS),
)
_NOT_FOUND = "`APP_NOT_FOUND` or `VERSION_NOT_FOUND`"


def _dirs(worker_dirs: Iterable[str]) -> tuple[str, ...]:
    """The worker dirs as a tuple (a typed converter: mypy cannot type C{converter=tuple})."""
    return tuple(worker_dirs)


@frozen
class AppsAPI:
    """
    C{/api/apps} routes.  C{retire(app_dir)} is told about every app
    directory that was replaced or removed.  C{check(app_dir, label)} reads
    an unpacked upload as serving it would, raising L{ManifestError} or
    L{EntrypointError} when it could not be served: it is then refused and
    nothing changes.  With C{threads}, archives are extracted and
    directories deleted in the reactor's thread pool; installs and removals
    run one at a time either way.
    """

    worker_dirs: Sequence[str] = field(converter=_dirs)
    catalog: Any
    retire: Callable[[str], object]
    threads: IReactorThreads | None = None
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_files: int = DEFAULT_MAX_FILES
    check: Callable[[str, str], None] | None = None
    _lock: DeferredLock = field(factory=DeferredLock, init=False)

    app = api_routes()

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call C{function} in the thread pool when there is one, serialized."""
        async with self._lock:
            return await off_the_reactor(self.threads, function, *args, **kwargs)

    def _changed(self, app_dirs: Sequence[str]) -> None:
        self.catalog.invalidate()
        for app_dir in app_dirs:
            retiring = maybeDeferred(self.retire, app_dir)
            retiring.addErrback(_retire_failed, app_dir)

    @app.route("/api/apps", methods=["GET", "HEAD"])
    @describe(
        responses={
            200: json_response(
                "The apps, sorted by name",
                {
                    "type": "array",
                    "items": json_object(name=STRING, path=STRING, versions=STRINGS),
                },
            )
        }
    )
    def list_apps(self, request: Any) -> bytes:
        """
        List the worker apps.

        Every app found in the worker dirs (all layouts), with the directory
        of its preferred version and its versions: `latest` first, then
        highest first.
        """
        return json_body(request, self.catalog.list_apps())

    @app.route("/api/apps/upload", methods=["POST"])
    @describe(
        request_body=UPLOAD_BODY,
        responses={
            200: json_response(
                "Installed",
                success(app=json_object(name=STRING, version=STRING, installedAt=STRING)),
            ),
            **_ERROR_RESPONSES,
        },
    )
    async def upload(self, request: Any) -> bytes:
        """
        Install an app from an archive.

        Send the archive as the multipart field `file` (.zip, .tgz or .tar.gz,
        by file name). It must hold `manifest.yaml` (or `pyproject.toml`) with
        `name` and `version` at its root or inside its single top-level
        directory. The app is installed into the first worker dir as
        `<name>/<version>/`; an existing copy of that version is replaced
        atomically where it is (in whichever worker dir holds it) and its
        worker retired once its requests finish. A refused
        archive changes nothing on disk.
        """
        if not self.worker_dirs:
            raise InstallError("NO_WORKER_DIRS", "No worker dirs are configured")
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        installed = await self._run(self._install, content_type, request.content)
        self._changed([installed.path])
        app = {
            "name": installed.name,
            "version": installed.version,
            "installedAt": installed.installed_at,
        }
        return json_body(request, {"success": True, "data": {"app": app}})

    def _install(self, content_type: str, content: IO[bytes]) -> InstalledApp:
        """Parse the upload and install it (both slow: run in the thread pool)."""
        filename, upload = uploaded_file(content_type, content)
        return install_archive(
            upload,
            filename,
            self.worker_dirs[0],
            others=self.worker_dirs[1:],
            max_total_bytes=self.max_total_bytes,
            max_files=self.max_files,
            check=self._check,
        )

    def _check(self, app_dir: str, label: str) -> None:
        """L{check}, its errors those of a refused archive (naming the archive, not a path)."""
        if self.check is None:
            return
        try:
            self.check(app_dir, label)
        except ManifestError as error:
            message = str(error).replace(app_dir, "the archive")
            raise InstallError("INVALID_MANIFEST", message) from None
        except EntrypointError as error:
            message = str(error).replace(app_dir, "the archive")
            raise InstallError("INVALID_ENTRYPOINT", f"{label}: {message}") from None

    @app.route("/api/apps/<scope>/<name>", methods=["DELETE"])
    @describe(responses={200: _REMOVED, 404: _NOT_FOUND, 400: "`PATH_TRAVERSAL`"})
    async def delete_app(self, request: Any, scope: str, name: str) -> bytes:
        """
        Remove every version of an app.

        `scope` is the scope of a scoped app (`@acme` or `acme`) or `_` for an
        unscoped one. Every layout in every worker dir is removed, and the
        app's workers are retired once their requests finish. Answers 404
        `APP_NOT_FOUND` when there is no such app.
        """
        return await self._delete(request, scope, name, None)

    @app.route("/api/apps/<scope>/<name>/<version>", methods=["DELETE"])
    @describe(responses={200: _REMOVED, 404: _NOT_FOUND, 400: "`PATH_TRAVERSAL`"})
    async def delete_version(self, request: Any, scope: str, name: str, version: str) -> bytes:
        """
        Remove one version of an app.

        `scope` as for removing an app; `version` is an exact version or
        `latest`. Answers 404 `APP_NOT_FOUND` or `VERSION_NOT_FOUND`.
        """
        return await self._delete(request, scope, name, version)

    async def _delete(self, request: Any, scope: str, name: str, version: str | None) -> bytes:
        scoped = None if scope == "_" else scope
        removed = await self._run(remove_app, self.worker_dirs, scoped, name, version)
        self._changed(removed)
        app_name = f"{'@' + scoped.lstrip('@') + '/' if scoped else ''}{name}"
        data = {"name": app_name, "version": version, "removed": removed}
        return json_body(request, {"success": True, "data": data})

    standard_errors(app)
    app.handle_errors(InstallError)(install_refused)
    app.handle_errors(OSError)(disk_error("apps"))


def _retire_failed(failure: Any, app_dir: str) -> None:
    log(
        "error",
        "buntime:apps:retire-failed",
        f"Retiring the workers of {app_dir} failed: {failure.getErrorMessage()}",
        path=app_dir,
    )

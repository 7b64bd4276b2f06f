"""
Removing installed apps: every version of an app, or one, in any layout and
any worker dir, without following a link out of the worker dir.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence

from buntime.apps.discovery import LATEST, NAME, AppVersion, scan_worker_dir
from buntime.apps.install import looks_like_traversal
from buntime.apps.versions import is_version
from buntime.archive import InstallError
from buntime.logs import log
from buntime.manifest import MANIFEST_FILES, PYPROJECT


def full_name(scope: str | None, name: str) -> str:
    """
    C{@scope/name} (or C{name} without a scope), refusing names that could
    reach outside a worker dir.  A scope may be given with or without C{@}.
    """
    if scope is not None and not scope.startswith("@"):
        scope = "@" + scope
    for part in (scope[1:] if scope else None, name):
        if part is None:
            continue
        if NAME.match(part) is None:
            if looks_like_traversal(part) or "/" in part:
                raise InstallError("PATH_TRAVERSAL", f"Invalid app name {part!r}")
            raise InstallError("APP_NOT_FOUND", f"No app named {part!r}", 404)
    return f"{scope}/{name}" if scope else name


def _inside(path: str, worker_dir: str) -> bool:
    root = os.path.realpath(worker_dir)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _discard(path: str) -> None:
    """Remove a directory so it vanishes at once: rename it hidden, then delete."""
    if os.path.islink(path):
        os.unlink(path)
        return
    hidden = os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}.removing-{uuid.uuid4().hex}"
    )
    os.rename(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _nested_versions(path: str) -> set[str]:
    """The entries of a simple-layout app dir that are versions of their own."""
    return {e for e in os.listdir(path) if e == LATEST or is_version(e)}


def _discard_simple(path: str) -> None:
    """
    Remove a simple-layout app but keep nested version dirs beside its files;
    a symlinked one is unlinked, its target left alone (L{remove_app} refused
    it when versions are nested behind the link).
    """
    if os.path.islink(path):
        os.unlink(path)
        return
    keep = _nested_versions(path)
    for manifest in (*MANIFEST_FILES, PYPROJECT):
        candidate = os.path.join(path, manifest)
        if os.path.lexists(candidate):
            os.unlink(candidate)
    if not keep:
        _discard(path)
        return
    for entry in os.listdir(path):
        if entry in keep:
            continue
        entry_path = os.path.join(path, entry)
        if os.path.isdir(entry_path) and not os.path.islink(entry_path):
            shutil.rmtree(entry_path, ignore_errors=True)
        else:
            os.unlink(entry_path)


def _rmdir_if_empty(path: str, worker_dir: str) -> None:
    while os.path.normpath(path) != os.path.normpath(worker_dir):
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)


def _removals(worker_dir: str, name: str, version: str | None) -> Iterator[tuple[str, AppVersion]]:
    """(what to delete, which app version it is) in one worker dir."""
    apps = [a for a in scan_worker_dir(worker_dir) if a.name == name]
    if version is not None:
        apps = [a for a in apps if a.version == version]
    for app in apps:
        if version is None and app.layout != "flat":
            yield os.path.dirname(app.dir) if app.layout == "nested" else app.dir, app
        else:
            yield app.dir, app


def remove_app(
    worker_dirs: Sequence[str], scope: str | None, name: str, version: str | None = None
) -> list[str]:
    """
    Remove every version of C{@scope/name} (or only C{version}) from every
    worker dir, in any layout; the removed app version directories.

    @raise InstallError: C{APP_NOT_FOUND} / C{VERSION_NOT_FOUND} (404),
        C{PATH_TRAVERSAL} (400) for names or versions that could escape.
    """
    app_name = full_name(scope, name)
    if version is not None and not (version == LATEST or is_version(version)):
        if looks_like_traversal(version) or "/" in version:
            raise InstallError("PATH_TRAVERSAL", f"Invalid version {version!r}")
        raise InstallError("VERSION_NOT_FOUND", f"No version {version!r} of {app_name}", 404)
    plan: list[tuple[str, str, AppVersion]] = []
    for worker_dir in worker_dirs:
        for path, app in _removals(worker_dir, app_name, version):
            if not os.path.islink(path) and not _inside(path, worker_dir):
                raise InstallError("PATH_TRAVERSAL", f"{app.label} resolves outside its worker dir")
            if (
                app.layout == "simple"
                and version is not None
                and os.path.islink(path)
                and _nested_versions(path)
            ):
                raise InstallError(
                    "PATH_TRAVERSAL",
                    f"{app.label} is a symlink with other versions behind it:"
                    " remove the whole app, or the link",
                )
            plan.append((worker_dir, path, app))
    if not plan:
        exists = any(
            a.name == app_name for worker_dir in worker_dirs for a in scan_worker_dir(worker_dir)
        )
        if version is not None and exists:
            raise InstallError("VERSION_NOT_FOUND", f"No version {version} of {app_name}", 404)
        raise InstallError("APP_NOT_FOUND", f"No app named {app_name}", 404)
    removed: list[str] = []
    done: set[str] = set()
    for worker_dir, path, app in plan:
        if path not in done and os.path.lexists(path):
            done.add(path)
            if app.layout == "simple" and version is not None:
                _discard_simple(path)
            else:
                _discard(path)
            _rmdir_if_empty(os.path.dirname(path), worker_dir)
        removed.append(app.dir)
    log(
        "info",
        "buntime:apps:removed",
        f"Removed {app_name}" + (f"@{version}" if version else " (all versions)"),
        app=app_name,
        version=version,
        paths=removed,
    )
    return removed

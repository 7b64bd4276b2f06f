"""
Installing apps from uploaded archives.

The archive is checked and extracted by L{buntime.archive} into a hidden
scratch directory inside the worker dir, read for its name and version, and
only then renamed into place as C{<worker_dir>/<name>/<version>/}; any
failure removes the scratch directory, so a bad archive changes nothing on
disk.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from attrs import frozen
from eliot import register_exception_extractor

from buntime.apps.discovery import LATEST, scan_worker_dir
from buntime.apps.versions import is_version
from buntime.archive import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    Budget,
    InstallError,
    Source,
)
from buntime.logs.types import APP_INSTALL
from buntime.manifest import MANIFEST_FILES, PYPROJECT, ManifestError, find_manifest, read_document
from buntime.unpacked import unpack

_INSTALL_NAME = re.compile(r"\A(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*\Z")

RESERVED_APP_NAMES = frozenset({"api", "health"})
"""Names no app may take: their paths belong to the runtime."""


@frozen
class InstalledApp:
    """An app version now on disk; C{installed_at} is ISO 8601 UTC."""

    name: str
    version: str
    path: str
    installed_at: str


def looks_like_traversal(text: str) -> bool:
    """Whether a name or version given by a client tries to reach another directory."""
    return (
        text in (".", "..")
        or "\\" in text
        or "\x00" in text
        or "/.." in text
        or "../" in text
        or text.startswith(("/", "."))
        or text.count("/") > (1 if text.startswith("@") else 0)
    )


def check_name(name: object) -> str:
    """A valid app name to install (C{[a-z0-9][a-z0-9._-]*} or C{@scope/name})."""
    if not isinstance(name, str) or _INSTALL_NAME.match(name) is None:
        code = "PATH_TRAVERSAL" if isinstance(name, str) and looks_like_traversal(name) else None
        raise InstallError(
            code or "INVALID_ARCHIVE",
            f"Invalid app name {name!r}: use lowercase letters, digits, '.', '_', '-'"
            " (optionally as @scope/name)",
        )
    if name in RESERVED_APP_NAMES:
        raise InstallError(
            "INVALID_ARCHIVE",
            f"App name {name!r} is reserved: /api, /health and /.well-known are the runtime's",
        )
    return name


def check_version(version: object) -> str:
    """A valid version to install: strict semver, or C{latest}."""
    if not isinstance(version, str) or not (version == LATEST or is_version(version)):
        code = (
            "PATH_TRAVERSAL"
            if isinstance(version, str) and looks_like_traversal(version)
            else "INVALID_ARCHIVE"
        )
        raise InstallError(code, f"Invalid app version {version!r}: use semver (1.2.3) or 'latest'")
    return version


def _identity(app_root: str) -> tuple[str, str]:
    manifest = find_manifest(app_root)
    assert manifest is not None
    try:
        document = read_document(manifest, "uploaded archive")
    except ManifestError as e:
        raise InstallError("INVALID_ARCHIVE", str(e)) from None
    if os.path.basename(manifest) != PYPROJECT:
        pyproject = os.path.join(app_root, PYPROJECT)
        if ("name" not in document or "version" not in document) and os.path.isfile(pyproject):
            try:
                fallback = read_document(pyproject, "uploaded archive")
            except ManifestError:
                fallback = {}
            document = {**fallback, **document}
    missing = [key for key in ("name", "version") if document.get(key) in (None, "")]
    if missing:
        raise InstallError(
            "MISSING_PARAMS",
            f"{os.path.basename(manifest)} must set {' and '.join(missing)}",
        )
    return check_name(document["name"]), check_version(document["version"])


def _target(worker_dir: str, name: str, version: str) -> str:
    """
    Where C{name@version} goes: an existing flat dir is replaced in place (a
    symlink to one too: the link itself is replaced, its target left alone;
    a nested copy would stay hidden behind it, flat beating nested).
    """
    scope, _, bare = name.rpartition("/")
    level = os.path.join(worker_dir, scope) if scope else worker_dir
    flat = os.path.join(level, f"{bare}@{version}")
    if os.path.isdir(flat):
        return flat
    return os.path.join(level, bare, version)


def _holder(name: str, version: str, worker_dir: str, others: Sequence[str]) -> str:
    """
    The worker dir that already holds C{name@version}: C{worker_dir} when
    it does or no dir does, else the first of C{others} that does.
    """
    for candidate in (worker_dir, *others):  # a missing dir scans as empty
        found = scan_worker_dir(candidate)
        if any(app.name == name and app.version == version for app in found):
            return candidate
    return worker_dir


def _has_manifest(directory: str) -> bool:
    return find_manifest(directory) is not None


def _refusal(error: InstallError) -> dict[str, str]:
    """What a failed install's eliot action says: a refusal the client can fix, at warn."""
    return {"level": "warn", "message": f"Refused the archive: {error.message}", "code": error.code}


register_exception_extractor(InstallError, _refusal)


def install_archive(
    data: Source,
    filename: str,
    worker_dir: str,
    *,
    others: Sequence[str] = (),
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    now: Callable[[], float] = time.time,
    check: Callable[[str, str], None] | None = None,
) -> InstalledApp:
    """
    Install the app archive C{data} (named C{filename}, whose suffix picks
    the format) into C{worker_dir} as C{<name>/<version>/}, replacing an
    existing copy of that version atomically.  When one of C{others} (the
    other worker dirs) holds that version instead, it is replaced there:
    two dirs claiming one version would collide.  C{check} is called with
    the unpacked app's directory and its C{name@version} before anything
    is replaced: an L{InstallError} it raises refuses the archive.

    @raise InstallError: with C{INVALID_FILE_TYPE}, C{INVALID_ARCHIVE},
        C{PATH_TRAVERSAL}, C{MISSING_PARAMS} (400) or C{PAYLOAD_TOO_LARGE}
        (413); nothing on disk has changed then.
    """
    with APP_INSTALL(level="info", message=f"Installing {filename!r}", filename=filename) as act:
        unpacked = unpack(data, filename, worker_dir, Budget(max_total_bytes, max_files))
        try:
            app_root = unpacked.root(_has_manifest)
            if app_root is None:
                wanted = " or ".join((*MANIFEST_FILES, PYPROJECT))
                raise InstallError("MISSING_PARAMS", f"Archive has no {wanted} at its root")
            name, version = _identity(app_root)
            if check is not None:
                check(app_root, f"{name}@{version}")
            holder = _holder(name, version, worker_dir, others)
            if holder != worker_dir:  # unpacked again beside it: a rename stays on one disk
                unpacked.discard()
                if hasattr(data, "seek"):
                    data.seek(0)
                unpacked = unpack(data, filename, holder, Budget(max_total_bytes, max_files))
                app_root = unpacked.root(_has_manifest)
                assert app_root is not None  # the same archive
                worker_dir = holder
            target = _target(worker_dir, name, version)
            try:
                unpacked.move_into_place(app_root, target, worker_dir)
            except OSError as e:
                if e.errno == errno.ENAMETOOLONG:
                    raise InstallError(
                        "INVALID_ARCHIVE",
                        f"App name or version is too long for the file system"
                        f" ({len(name)} and {len(version)} characters)",
                    ) from None
                raise
        finally:
            unpacked.discard()
        act.add_success_fields(
            level="info",
            message=f"Installed {name}@{version}",
            app=name,
            version=version,
            path=target,
        )
    installed_at = datetime.fromtimestamp(now(), UTC).isoformat(timespec="milliseconds")
    return InstalledApp(name, version, target, installed_at.replace("+00:00", "Z"))

"""
Installing apps from uploaded archives, and removing installed apps.

An archive (C{.zip}, C{.tgz}, C{.tar.gz}) is checked entry by entry before
anything is written (names, entry types, declared sizes, entry count), then
extracted into a hidden temporary directory inside the worker dir while the
bytes are counted again (a lying header cannot bomb), read for its name and
version, and only then renamed into place as C{<worker_dir>/<name>/<version>/}.
No symlink is ever created and every file is opened with C{O_EXCL} and
C{O_NOFOLLOW}, so nothing is written outside the target; any failure removes
the temporary directory, so a bad archive changes nothing on disk.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any

from attrs import define, frozen

from buntime._libc import libc
from buntime._logging import log
from buntime.apps.discovery import LATEST, NAME, AppVersion, scan_worker_dir
from buntime.apps.versions import is_version
from buntime.manifest import MANIFEST_FILES, PYPROJECT, ManifestError, find_manifest, read_document

MIB = 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 500 * MIB
"""Most bytes an archive may unpack to."""
DEFAULT_MAX_FILES = 10_000
"""Most entries (files and directories) an archive may hold."""
ARCHIVE_SUFFIXES = (".zip", ".tgz", ".tar.gz")

_INSTALL_NAME = re.compile(r"\A(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*\Z")
_DRIVE = re.compile(r"\A[A-Za-z]:")
_CHUNK = 64 * 1024
_DIRECTORY_ENTRY_BUDGET = 46 + 1024
"""Bytes of zip central directory allowed per permitted entry (header + name/extra)."""
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX"})
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    gzip.BadGzipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    UnicodeError,
)
_CONFLICT_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError)

Source = bytes | bytearray | str | os.PathLike | IO[bytes]
"""An archive: its bytes, a file path, or a seekable binary file object."""


class InstallError(Exception):
    """
    Installing or removing an app failed for a reason the client can fix.
    C{code} is one of SPEC §4's error codes, C{status} the HTTP status.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _too_large(message: str) -> InstallError:
    return InstallError("PAYLOAD_TOO_LARGE", message, 413)


@frozen
class InstalledApp:
    """An app version now on disk; C{installed_at} is ISO 8601 UTC."""

    name: str
    version: str
    path: str
    installed_at: str


@define
class Budget:
    """Counts entries and bytes against the limits, declared and actual."""

    max_total_bytes: int
    max_files: int
    files: int = 0
    declared: int = 0
    written: int = 0

    def entry(self, name: str, size: int) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise _too_large(f"Archive holds more than {self.max_files} entries")
        self.declared += max(size, 0)
        if self.declared > self.max_total_bytes:
            raise _too_large(
                f"Archive unpacks to more than {self.max_total_bytes} bytes (at {name!r})"
            )

    def wrote(self, count: int) -> None:
        self.written += count
        if self.written > self.max_total_bytes:
            raise _too_large(f"Archive unpacks to more than {self.max_total_bytes} bytes")


def archive_kind(filename: str) -> str:
    """C{"zip"} or C{"tar"} from the uploaded file's name, else C{INVALID_FILE_TYPE}."""
    lowered = filename.lower()
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith((".tgz", ".tar.gz")):
        return "tar"
    raise InstallError(
        "INVALID_FILE_TYPE",
        f"Unsupported archive {filename!r}: expected one of {', '.join(ARCHIVE_SUFFIXES)}",
    )


def entry_parts(raw: str) -> tuple[str, ...]:
    """
    The path segments of an archive entry name, refusing anything that could
    land outside the target: C{..}, absolute paths, drive letters,
    backslashes, NUL.  C{.} and empty segments are dropped.
    """
    shown = raw.replace("\x00", "\\0")
    if "\x00" in raw or "\\" in raw or raw.startswith("/") or _DRIVE.match(raw):
        raise InstallError("PATH_TRAVERSAL", f"Archive entry {shown!r} is not a relative path")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InstallError("PATH_TRAVERSAL", f"Archive entry {shown!r} leaves the archive")
    return parts


# -- reading archives ---------------------------------------------------------


@frozen
class _Entry:
    """One checked archive entry: where it goes, what it is, how to read it."""

    parts: tuple[str, ...]
    is_dir: bool
    size: int
    executable: bool
    open: Callable[[], IO[bytes]]


def _check_zip_directory(f: IO[bytes], budget: Budget) -> None:
    """
    Refuse a zip whose end-of-central-directory record promises too many
    entries or too big a directory, before C{zipfile} reads it all into memory.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_length = min(size, 22 + 0xFFFF)
    f.seek(size - tail_length)
    tail = f.read(tail_length)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise InstallError("INVALID_ARCHIVE", "Not a zip archive")
    count, directory_size = struct.unpack("<HI", tail[at + 10 : at + 16])
    if count == 0xFFFF or directory_size == 0xFFFFFFFF:
        locator_at = size - tail_length + at - 20
        if locator_at >= 0:
            f.seek(locator_at)
            locator = f.read(20)
            if locator[:4] == b"PK\x06\x07":
                (record_at,) = struct.unpack("<Q", locator[8:16])
                f.seek(record_at)
                record = f.read(56)
                if record[:4] == b"PK\x06\x06" and len(record) == 56:
                    count, directory_size = struct.unpack("<QQ", record[32:48])
    if count > budget.max_files:
        raise _too_large(f"Archive holds more than {budget.max_files} entries")
    if directory_size > budget.max_files * _DIRECTORY_ENTRY_BUDGET:
        raise _too_large("Archive directory is too large")
    f.seek(0)


def _zip_entries(archive: zipfile.ZipFile, budget: Budget) -> list[_Entry]:
    entries = []
    for info in archive.infolist():
        parts = entry_parts(info.orig_filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise InstallError(
                "PATH_TRAVERSAL", f"Archive entry {info.filename!r} is a symbolic link"
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InstallError(
                "INVALID_ARCHIVE", f"Archive entry {info.filename!r} is not a file or directory"
            )
        if info.flag_bits & 0x1:
            raise InstallError("INVALID_ARCHIVE", f"Archive entry {info.filename!r} is encrypted")
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        budget.entry(info.filename, 0 if is_dir else info.file_size)
        entries.append(
            _Entry(
                parts,
                is_dir,
                info.file_size,
                bool((info.external_attr >> 16) & 0o111),
                partial(archive.open, info),
            )
        )
    return entries


def _tar_entries(archive: tarfile.TarFile, budget: Budget) -> list[_Entry]:
    """Reads headers one by one, stopping as soon as a limit is passed."""
    entries = []
    while (member := archive.next()) is not None:
        parts = entry_parts(member.name)
        if member.issym() or member.islnk():
            raise InstallError(
                "PATH_TRAVERSAL", f"Archive entry {member.name!r} is a symbolic or hard link"
            )
        if not (member.isreg() or member.isdir()):
            raise InstallError(
                "INVALID_ARCHIVE", f"Archive entry {member.name!r} is not a file or directory"
            )
        budget.entry(member.name, member.size if member.isreg() else 0)

        def opener(member: tarfile.TarInfo = member) -> IO[bytes]:
            stream = archive.extractfile(member)
            if stream is None:  # pragma: no cover - only regular files are opened
                raise InstallError("INVALID_ARCHIVE", f"Cannot read {member.name!r}")
            return stream

        entries.append(
            _Entry(parts, member.isdir(), member.size, bool(member.mode & 0o111), opener)
        )
    return entries


def _copy(entry: _Entry, target: str, budget: Budget) -> None:
    """Write one file, counting real bytes against its header and the budget."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o755 if entry.executable else 0o644)
    with os.fdopen(fd, "wb") as out, entry.open() as source:
        copied = 0
        while chunk := source.read(_CHUNK):
            copied += len(chunk)
            if copied > entry.size:
                raise InstallError(
                    "INVALID_ARCHIVE",
                    f"Archive entry {'/'.join(entry.parts)!r} holds more than its header says",
                )
            budget.wrote(len(chunk))
            out.write(chunk)


def _write(entries: list[_Entry], into: str, budget: Budget) -> None:
    for entry in entries:
        if not entry.parts:
            if entry.is_dir:
                continue
            raise InstallError("INVALID_ARCHIVE", "Archive holds a file with an empty name")
        target = os.path.join(into, *entry.parts)
        if entry.is_dir:
            os.makedirs(target, mode=0o755, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        _copy(entry, target, budget)


def _open_source(source: Source, stack: ExitStack) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if isinstance(source, str | os.PathLike):
        return stack.enter_context(open(source, "rb"))
    source.seek(0)
    return source


def extract(source: Source, kind: str, into: str, budget: Budget) -> None:
    """Check every entry of the archive, then write them under C{into}."""
    with ExitStack() as stack:
        f = _open_source(source, stack)
        try:
            if kind == "zip":
                _check_zip_directory(f, budget)
                archive: Any = stack.enter_context(zipfile.ZipFile(f))
                entries = _zip_entries(archive, budget)
            else:
                archive = stack.enter_context(tarfile.open(fileobj=f, mode="r:gz"))
                entries = _tar_entries(archive, budget)
            _write(entries, into, budget)
        except _ARCHIVE_ERRORS as e:
            raise InstallError("INVALID_ARCHIVE", f"Cannot read the archive: {e}") from None
        except _CONFLICT_ERRORS as e:
            where = os.path.relpath(e.filename, into) if e.filename else "?"
            raise InstallError(
                "INVALID_ARCHIVE", f"Archive entries conflict at {where!r}"
            ) from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise InstallError("INVALID_ARCHIVE", "Archive entry name is too long") from None
            raise


# -- manifest, name and version -----------------------------------------------


def _app_root(extracted: str) -> str:
    """The extracted dir holding the manifest: the root, or its single directory."""
    if find_manifest(extracted):
        return extracted
    entries = [e for e in os.listdir(extracted) if e not in _IGNORED_TOP_LEVEL]
    if len(entries) == 1:
        only = os.path.join(extracted, entries[0])
        if os.path.isdir(only) and not os.path.islink(only) and find_manifest(only):
            return only
    wanted = " or ".join((*MANIFEST_FILES, PYPROJECT))
    raise InstallError("MISSING_PARAMS", f"Archive has no {wanted} at its root")


def _looks_like_traversal(text: str) -> bool:
    return (
        text in (".", "..")
        or "\\" in text
        or "\x00" in text
        or "/.." in text
        or "../" in text
        or text.startswith(("/", "."))
        or text.count("/") > (1 if text.startswith("@") else 0)
    )


RESERVED_APP_NAMES = frozenset({"api", "health"})
"""Names no app may take: their paths belong to the runtime."""


def check_name(name: object) -> str:
    """A valid app name to install (C{[a-z0-9][a-z0-9._-]*} or C{@scope/name})."""
    if not isinstance(name, str) or _INSTALL_NAME.match(name) is None:
        code = "PATH_TRAVERSAL" if isinstance(name, str) and _looks_like_traversal(name) else None
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
            if isinstance(version, str) and _looks_like_traversal(version)
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


# -- putting it in place ------------------------------------------------------


def _target(worker_dir: str, name: str, version: str) -> str:
    """Where C{name@version} goes: an existing flat dir is replaced in place."""
    scope, _, bare = name.rpartition("/")
    level = os.path.join(worker_dir, scope) if scope else worker_dir
    flat = os.path.join(level, f"{bare}@{version}")
    if os.path.isdir(flat) and not os.path.islink(flat):
        return flat
    return os.path.join(level, bare, version)


def _make_parents(path: str, stop: str) -> list[str]:
    """Create the missing directories above C{path} up to C{stop}; the ones made."""
    missing = []
    parent = os.path.dirname(path)
    while parent != stop and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
    return missing


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: str, b: str) -> bool:
    """
    Swap two existing paths in one atomic step (Linux C{renameat2} with
    C{RENAME_EXCHANGE}), so a request never finds neither.  C{False} where
    the system or file system cannot, and the caller falls back to renames.
    """
    renameat2 = getattr(libc(), "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(error, os.strerror(error), b)


def _swap_in(new: str, target: str, scratch: str, worker_dir: str) -> None:
    """
    Rename C{new} to C{target}; an existing C{target} is first renamed aside
    into C{scratch} (deleted with it), and put back if the swap fails.
    """
    created = _make_parents(target, worker_dir)
    try:
        if os.path.lexists(target) and exchange_paths(new, target):
            return  # swapped in one step; the old version is now at `new`, in scratch
        if os.path.lexists(target):
            aside = os.path.join(scratch, "previous")
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(aside, target)
                raise
        else:
            os.rename(new, target)
    except BaseException:
        for directory in created:
            try:
                os.rmdir(directory)
            except OSError:
                pass
        raise


def install_archive(
    data: Source,
    filename: str,
    worker_dir: str,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    now: Callable[[], float] = time.time,
) -> InstalledApp:
    """
    Install the app archive C{data} (named C{filename}, whose suffix picks
    the format) into C{worker_dir} as C{<name>/<version>/}, replacing an
    existing copy of that version atomically.

    @raise InstallError: with C{INVALID_FILE_TYPE}, C{INVALID_ARCHIVE},
        C{PATH_TRAVERSAL}, C{MISSING_PARAMS} (400) or C{PAYLOAD_TOO_LARGE}
        (413); nothing on disk has changed then.
    """
    kind = archive_kind(filename)
    os.makedirs(worker_dir, exist_ok=True)
    scratch = os.path.join(worker_dir, f".buntime-install-{uuid.uuid4().hex}")
    os.mkdir(scratch, 0o700)
    try:
        extracted = os.path.join(scratch, "archive")
        os.mkdir(extracted, 0o755)
        extract(data, kind, extracted, Budget(max_total_bytes, max_files))
        app_root = _app_root(extracted)
        name, version = _identity(app_root)
        target = _target(worker_dir, name, version)
        _swap_in(app_root, target, scratch, worker_dir)
    except InstallError as e:
        log(
            "warn",
            "buntime:apps:install-refused",
            f"Refused app archive {filename!r}: {e.message}",
            code=e.code,
            filename=filename,
        )
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    installed_at = datetime.fromtimestamp(now(), UTC).isoformat(timespec="milliseconds")
    log(
        "info",
        "buntime:apps:installed",
        f"Installed {name}@{version}",
        app=name,
        version=version,
        path=target,
    )
    return InstalledApp(name, version, target, installed_at.replace("+00:00", "Z"))


# -- removing -----------------------------------------------------------------


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
            if _looks_like_traversal(part) or "/" in part:
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


def _discard_simple(path: str) -> None:
    """Remove a simple-layout app but keep nested version dirs beside its files."""
    keep = {e for e in os.listdir(path) if e == LATEST or is_version(e)}
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
        if _looks_like_traversal(version) or "/" in version:
            raise InstallError("PATH_TRAVERSAL", f"Invalid version {version!r}")
        raise InstallError("VERSION_NOT_FOUND", f"No version {version!r} of {app_name}", 404)
    plan: list[tuple[str, str, AppVersion]] = []
    for worker_dir in worker_dirs:
        for path, app in _removals(worker_dir, app_name, version):
            if not os.path.islink(path) and not _inside(path, worker_dir):
                raise InstallError("PATH_TRAVERSAL", f"{app.label} resolves outside its worker dir")
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

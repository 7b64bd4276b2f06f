"""
Archives uploaded to install an app or a plugin (C{.zip}, C{.tgz}, C{.tar.gz}).

Every entry is checked before anything is written (names, types, declared
sizes, count), then extracted into a hidden scratch directory beside the
target while the bytes are counted again (a lying header cannot bomb).  No
link is ever created and files are opened with C{O_EXCL | O_NOFOLLOW};
L{buntime.unpacked} renames the result into place and the scratch directory
goes with everything else, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import errno
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import IO, Any

from attrs import define, frozen

MIB = 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 500 * MIB
"""Most bytes an archive may unpack to."""
DEFAULT_MAX_FILES = 10_000
"""Most entries (files and directories) an archive may hold."""
ARCHIVE_SUFFIXES = (".zip", ".tgz", ".tar.gz")

_DRIVE = re.compile(r"\A[A-Za-z]:")
_CHUNK = 64 * 1024
_DIRECTORY_ENTRY_BUDGET = 46 + 1024
"""Bytes of zip central directory allowed per permitted entry (header + name/extra)."""
_TAR_HEADER_TYPES = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
) | {tarfile.SOLARIS_XHDTYPE}
"""Tar headers whose data (a long name, pax records) C{tarfile} reads into memory whole."""
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    gzip.BadGzipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    ValueError,  # zipfile's seek to a corrupt offset, UnicodeError among them
    OverflowError,
    struct.error,
)
_CONFLICT_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError)

Source = bytes | bytearray | str | os.PathLike | IO[bytes]
"""An archive: its bytes, a file path, or a seekable binary file object."""


class InstallError(Exception):
    """
    Installing or removing an app or a plugin failed for a reason the client
    can fix.  C{code} is one of SPEC §4's error codes, C{status} the HTTP status.
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


@define
class Budget:
    """Counts entries and bytes against the limits, declared and actual."""

    max_total_bytes: int
    max_files: int
    files: int = 0
    declared: int = 0
    written: int = 0
    headers: int = 0

    def entry(self, name: str, size: int) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise _too_large(f"Archive holds more than {self.max_files} entries")
        self.declared += max(size, 0)
        if self.declared > self.max_total_bytes:
            raise _too_large(
                f"Archive unpacks to more than {self.max_total_bytes} bytes (at {name!r})"
            )

    def header(self, size: int) -> None:
        """
        A tar header's own data (a long name, pax records), read into memory
        before its entry is seen: as much in all as a zip's directory may be.
        """
        self.headers += max(size, 0)
        limit = self.max_files * _DIRECTORY_ENTRY_BUDGET
        if self.headers > limit:
            raise _too_large(f"Archive's tar headers hold more than {limit} bytes")

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
        # not info.is_dir(): it fails on an empty name
        is_dir = info.filename.endswith("/") or kind == stat.S_IFDIR
        budget.entry(info.filename, 0 if is_dir else info.file_size)
        executable = bool((info.external_attr >> 16) & 0o111)
        entries.append(
            _Entry(parts, is_dir, info.file_size, executable, partial(archive.open, info))
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


def _checked_tar_info(budget: Budget) -> type[tarfile.TarInfo]:
    """
    C{tarfile}'s C{TarInfo}, counting the headers C{tarfile} reads into
    memory against C{budget} before it reads them (a long name header
    claiming gigabytes of zeros is a few kilobytes gzipped), and refusing
    GNU sparse files, whose maps it also reads whole.
    """

    class CheckedTarInfo(tarfile.TarInfo):
        # tarfile's own hook for subclasses: called on every header read
        def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise _sparse(self.name)
            if self.type in _TAR_HEADER_TYPES:
                budget.header(self.size)
            return super()._proc_member(archive)  # type: ignore[misc]

        def _proc_gnusparse_10(self, next: tarfile.TarInfo, *_: object) -> None:
            raise _sparse(next.name)

    return CheckedTarInfo


def _sparse(name: str) -> InstallError:
    return InstallError("INVALID_ARCHIVE", f"Archive entry {name!r} is a sparse file")


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
                archive = stack.enter_context(
                    tarfile.open(fileobj=f, mode="r:gz", tarinfo=_checked_tar_info(budget))
                )
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

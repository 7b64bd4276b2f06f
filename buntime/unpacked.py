"""
An uploaded archive unpacked beside its target (L{unpack}, checked and
extracted by L{buntime.archive}) and moved into place: an existing target
is swapped out atomically where the system can (L{exchange_paths}), so a
failure leaves the disk as it was.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Callable

from attrs import frozen

from buntime._libc import libc
from buntime.archive import Budget, Source, archive_kind, extract

_IGNORED_TOP_LEVEL = frozenset({"__MACOSX", ".DS_Store"})
"""Top-level entries that do not count when finding an archive's root (macOS metadata)."""
_APPLE_DOUBLE = "._"
"""The prefix of the files macOS's tar and zip add beside others for their attributes."""

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: str, b: str) -> bool:
    """
    Swap two existing paths in one atomic step (Linux C{renameat2} with
    C{RENAME_EXCHANGE}), so a reader never finds neither.  C{False} where
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


@frozen
class Unpacked:
    """An archive extracted into C{scratch}, a hidden directory of its own."""

    scratch: str

    @property
    def extracted(self) -> str:
        """The directory the archive's entries were written into."""
        return os.path.join(self.scratch, "archive")

    def root(self, has_manifest: Callable[[str], bool]) -> str | None:
        """
        The extracted directory C{has_manifest}: the archive's root, or its
        single top-level directory (GitHub's archives; macOS metadata beside
        it aside: C{__MACOSX}, C{.DS_Store}, C{._*}).
        """
        if has_manifest(self.extracted):
            return self.extracted
        entries = [
            e
            for e in os.listdir(self.extracted)
            if e not in _IGNORED_TOP_LEVEL and not e.startswith(_APPLE_DOUBLE)
        ]
        if len(entries) == 1:
            only = os.path.join(self.extracted, entries[0])
            if os.path.isdir(only) and not os.path.islink(only) and has_manifest(only):
                return only
        return None

    def move_into_place(self, new: str, target: str, stop: str) -> str | None:
        """
        Rename C{new} (in the scratch dir) to C{target}, making the missing
        directories up to C{stop}.  An existing C{target} is swapped out
        atomically where the system can, else renamed aside and put back if
        the rename fails; its new place in the scratch dir is returned.  On
        failure the disk is as it was.
        """
        created = _make_parents(target, stop)
        try:
            if not os.path.lexists(target):
                try:
                    os.rename(new, target)
                    return None
                except OSError as error:
                    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    # A runtime sharing the worker dir installed it meanwhile: replace it.
            if exchange_paths(new, target):
                return new
            aside = os.path.join(self.scratch, "previous")
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(aside, target)
                raise
            return aside
        except BaseException:
            for directory in created:
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            raise

    def discard(self) -> None:
        """Remove the scratch directory and everything in it."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def unpack(source: Source, filename: str, beside: str, budget: Budget) -> Unpacked:
    """
    Check the archive C{source} (C{filename}'s suffix picks the format) and
    extract it into a new hidden directory in C{beside} (made if missing),
    on the target's file system so that renames are atomic.

    @raise InstallError: C{INVALID_FILE_TYPE}, C{INVALID_ARCHIVE},
        C{PATH_TRAVERSAL} (400), C{PAYLOAD_TOO_LARGE} (413); nothing is left.
    """
    kind = archive_kind(filename)
    os.makedirs(beside, exist_ok=True)
    unpacked = Unpacked(os.path.join(beside, f".buntime-install-{uuid.uuid4().hex}"))
    os.mkdir(unpacked.scratch, 0o700)
    try:
        os.mkdir(unpacked.extracted, 0o755)
        extract(source, kind, unpacked.extracted, budget)
    except BaseException:
        unpacked.discard()
        raise
    return unpacked

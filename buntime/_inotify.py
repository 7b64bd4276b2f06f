"""
Twisted's inotify reader, kept open when one of its directories is removed.

L{twisted.internet.inotify.INotify} adds C{IN_DELETE_SELF} to every watch and
closes its descriptor when one arrives: the removal of any one watched
directory would end all the others.  Imported only where Twisted has inotify
(Linux).
"""

from __future__ import annotations

from twisted.internet import inotify
from twisted.python.filepath import FilePath


class INotify(inotify.INotify):
    """
    An L{inotify.INotify} that only drops the watch of a removed directory
    (as Twisted does before closing) and goes on reading the others;
    L{loseConnection} outside of a read still closes it.
    """

    _reading = False

    def _doRead(self, in_: bytes) -> None:
        self._reading = True
        try:
            super()._doRead(in_)
        finally:
            self._reading = False

    def forget(self, path: FilePath[bytes]) -> None:
        """
        Drop the watches of C{path} and of the directories under it: a
        directory moved away keeps its watches (under its old path, where
        another directory may now be made or moved in, which would then be
        taken as watched already).
        """
        path = path.asBytesMode()
        if self._isWatched(path) is None:
            return  # the common case (a new directory): nothing to look through
        under = path.path.rstrip(b"/") + b"/"
        for watched, wd in list(self._watchpaths.items()):
            if watched == path or watched.path.startswith(under):
                self._rmWatch(wd)

    def loseConnection(self) -> None:
        if not self._reading:
            super().loseConnection()

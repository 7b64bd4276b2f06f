"""
The eliot destinations buntime writes to: a stream (the console) and a file.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from buntime._json import dumps
from buntime.logs import Record, level_enabled
from buntime.logs.render import _json_text, _level_of, format_json, format_pretty

STREAM_BUFFER = 256
"""Buffered lines after which a stream destination writes without waiting for L{flush}."""


@define
class StreamDestination:
    """
    An eliot destination writing filtered, formatted lines to a stream.

    Without C{flush_each}, lines wait in a buffer and go out in one write:
    at the end of the current reactor turn when C{clock} is given (so a
    busy runtime pays one system call for all the lines of a turn, whatever
    buffering the stream does: C{PYTHONUNBUFFERED} makes stdout write each
    line), on L{flush}, or once L{STREAM_BUFFER} lines wait.  An error line
    is written at once, with whatever waits before it.
    """

    stream: IO[str]
    min_level: str = "info"
    fmt: str = "json"
    colour: bool = False
    flush_each: bool = True
    clock: IReactorTime | None = None
    _pending: list[str] = field(factory=list)
    _scheduled: IDelayedCall | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        if type(message) is Record and self.fmt == "json" and "action_status" in message:
            # a request's line: an action's, written whatever its level
            level = message["level"]
            line = dumps(message, _json_text)
        else:
            level = _level_of(message)
            if not level_enabled(self.min_level, level) and not (
                self.fmt == "json" and "action_status" in message
            ):
                return
            if self.fmt == "json":
                line = format_json(message)
            else:
                line = format_pretty(message, self.colour)
        if self.flush_each:
            self._write(line + "\n")
            return
        self._pending.append(line)
        if len(self._pending) >= STREAM_BUFFER or level == "error":
            self.flush()
        elif self._scheduled is None and self.clock is not None:
            self._scheduled = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and scheduled.active():
            scheduled.cancel()
        pending, self._pending = self._pending, []
        if pending:
            pending.append("")  # the last line's break
        self._write("\n".join(pending))

    def _write(self, text: str) -> None:
        try:
            if text:
                self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout (daemonized) must not break the runtime


@define
class FileDestination:
    """
    JSON lines appended to a file, buffered; L{flush} writes them out.  A
    write the disk cuts short (full, quota) is taken back whole: the file
    never keeps half a line, and lines go on where it ended once there is room.
    """

    path: str
    min_level: str = "info"
    _buffer: list[str] = field(factory=list)
    _file: int | None = None
    _failed: bool = False

    def __call__(self, message: dict[str, Any]) -> None:
        if level_enabled(self.min_level, _level_of(message)) or "action_status" in message:
            self._buffer.append(format_json(message) + "\n")
            if len(self._buffer) >= 512:
                self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8")
        self._buffer.clear()
        try:
            if self._file is None:
                self._file = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            _append_whole(self._file, data)
        except OSError as error:
            # Never let the log file take the runtime down; say so once on stderr.
            if not self._failed:
                self._failed = True
                sys.stderr.write(f"buntime: cannot write the log file {self.path}: {error}\n")
            return
        if self._failed:
            self._failed = False
            sys.stderr.write(f"buntime: writing the log file {self.path} again\n")

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            os.close(self._file)
            self._file = None


def _append_whole(descriptor: int, data: bytes) -> None:
    """Append all of C{data}, or, when the file system refuses part, none of it."""
    start = os.fstat(descriptor).st_size
    written = 0
    try:
        while written < len(data):
            written += os.write(descriptor, data[written:])
    except OSError:
        if written:
            try:
                os.ftruncate(descriptor, start)
            except OSError:
                pass
        raise

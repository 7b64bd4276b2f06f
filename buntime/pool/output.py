"""
What an app writes, turned into log records.

Inside a worker, C{sys.stdout} and C{sys.stderr} send each C{write} as one
frame on the output channel (fd L{OUTPUT_FD}): a JSON line C{[stream,
request_id, thread, more, text]} (see L{buntime.pool.child.output}).  Only
those streams write there, and the text travels inside a JSON string, so
nothing an app prints can pass for a frame's fields.  What bypasses Python
(C extensions, faulthandler's stack dumps, subprocesses) still comes on
fds 1 and 2 as raw lines.

The runtime reads both as L{Write}s and an L{Assembler} joins the writes of
one source (stream, request, thread) into L{Record}s: a multi-line write
is one record, and so is a Python traceback, which C{traceback.print_exc()}
or C{sys.excepthook} write in dozens of pieces.  A record that may go on
(a traceback, a line not yet ended) waits L{QUIET} seconds for the next
write, L{MAX_HOLD} at most; any other line goes out at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from attrs import define, field, frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from buntime._json import dumps, loads

OUTPUT_FD = 5
"""The worker's output channel: what it writes to C{sys.stdout}/C{sys.stderr}, framed."""
STREAMS = ("stdout", "stderr")
MAX_PIECE = 8 * 1024
"""Characters of one write in one frame; a longer write takes several."""
MAX_FRAME = 13 * MAX_PIECE
"""
Bytes in a frame the runtime accepts: L{MAX_PIECE} characters and a
request id fit, escaped as ASCII JSON too (12 bytes an emoji), as a write
holding a lone surrogate is.
"""
MAX_REQUEST_ID = 200
"""The longest request id a frame may carry (the front door allows no longer)."""
MAX_RECORD = 64 * 1024
"""Characters in one record; a longer text is logged as several."""
QUIET = 0.03
"""Seconds a record that may go on waits for the app's next write."""
MAX_HOLD = 1.0
"""Seconds a record is held back at most, however the app goes on writing to it."""


@frozen
class Write:
    """
    One write by the app: C{text} on C{stream}, during the request
    C{request_id} (C{None}: outside any request), from thread C{thread};
    C{more}: the write goes on in the next one (it was cut to fit a frame).
    C{raw} writes are lines read from fds 1 and 2, outside Python's streams.
    """

    stream: str
    text: str
    request_id: str | None = None
    thread: int = 0
    more: bool = False
    raw: bool = False

    @property
    def source(self) -> tuple[str, str | None, int, bool]:
        """Whose writes go on each other: the same stream, request and thread."""
        return (self.stream, self.request_id, self.thread, self.raw)


@frozen
class Record:
    """
    One log record of app output.  C{continued}: the text was too long for
    one record (L{MAX_RECORD}) and the next record of the source goes on.
    """

    stream: str
    text: str
    request_id: str | None = None
    continued: bool = False


# -- frames -----------------------------------------------------------------


def encode_frames(stream: str, text: str, request_id: str | None, thread: int) -> Iterator[bytes]:
    """The frames of one write: one per L{MAX_PIECE} characters, each ending in a newline."""
    last = len(text) - MAX_PIECE
    for start in range(0, len(text), MAX_PIECE):
        frame = dumps([stream, request_id, thread, start < last, text[start : start + MAX_PIECE]])
        yield frame.encode("utf-8", "replace") + b"\n"  # "replace": a lone surrogate


def decode_frame(line: bytes) -> Write:
    """
    The L{Write} in one frame (without its newline).  What is not a frame is
    not trusted: it is logged as raw stderr text, every field of it.
    """
    try:
        stream, request_id, thread, more, text = loads(line)
    except (ValueError, TypeError):
        return garbled(line)
    if (
        stream not in STREAMS
        or type(text) is not str
        or type(thread) is not int
        or type(more) is not bool
        or not (request_id is None or _sane_id(request_id))
    ):
        return garbled(line)
    return Write(stream, text, request_id, thread, more)


def _sane_id(request_id: object) -> bool:
    return (
        type(request_id) is str
        and 0 < len(request_id) <= MAX_REQUEST_ID
        and request_id.isprintable()
        and " " not in request_id
    )


def garbled(data: bytes) -> Write:
    """Bytes on the output channel that are no frame, as a raw stderr line."""
    return Write("stderr", data.decode("utf-8", "replace") + "\n", raw=True)


@define(eq=False)
class FrameReader:
    """Cuts the output channel's bytes into frames for C{on_write(write)}."""

    on_write: Callable[[Write], None]
    _buffer: bytes = b""

    def feed(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > MAX_FRAME:  # no frame is that long: not ours
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self.on_write(decode_frame(line))

    def flush(self) -> None:
        if self._buffer:
            rest, self._buffer = self._buffer, b""
            self.on_write(decode_frame(rest))


# -- assembling records ------------------------------------------------------

PLAIN, HEADER, TRACE, GROUP, DONE = "plain", "header", "trace", "group", "done"
"""
What a record ends with: an ordinary line; a line that may announce a
traceback (C{Exception in thread ...:}); a traceback's frames; an
exception group's (every line indented); a traceback's exception line.
"""

_TRACEBACK = re.compile(r"[ |+]*(Exception Group )?Traceback \(most recent call last\):\Z")
_HEADERS = ("Exception ignored", "--- Logging error ---")
_CHAINED = (
    "During handling of the above exception",
    "The above exception was the direct cause",
)


def _after(state: str, line: str) -> str:
    """What a record ends with once C{line} is added to one that ended in C{state}."""
    match = _TRACEBACK.match(line)
    if match:
        return GROUP if line[:1] in (" ", "|", "+") else TRACE
    if state == TRACE:
        return DONE if line[:1] not in ("", " ", "\t") else TRACE
    if state == GROUP and line[:1] in (" ", "\t"):
        return GROUP
    if state in (HEADER, DONE) and not line.strip():
        return state
    if state == DONE:
        return HEADER if line.startswith(_CHAINED) else DONE
    return HEADER if line.endswith(":") or line.startswith(_HEADERS) else PLAIN


def _goes_on(state: str, text: str) -> bool:
    """Whether a write of C{text}, starting a line, belongs to a record ending in C{state}."""
    if state == TRACE:
        return True  # more frames, or the exception line
    if state == GROUP:
        return text[:1] in (" ", "\t")
    if state == HEADER:
        return bool(_TRACEBACK.match(text.partition("\n")[0])) or not text.strip()
    if state == DONE:
        return not text.strip() or text.lstrip("\n").startswith(_CHAINED)
    return False


@define(eq=False)
class _Pending:
    """A record being assembled: its text so far, what it ends with, its timer."""

    write: Write
    since: float
    parts: list[str] = field(factory=list)
    size: int = 0
    line: list[str] = field(factory=list)
    """The pieces of its last line, while that line is not ended."""
    more: bool = False
    state: str = PLAIN
    timer: IDelayedCall | None = None

    @property
    def ended(self) -> bool:
        """Its last line is ended and no piece of a write is missing."""
        return not self.line and not self.more

    def add(self, write: Write) -> None:
        text = write.text
        self.parts.append(text)
        self.size += len(text)
        self.more = write.more
        if "\n" not in text:
            self.line.append(text)
            return
        first, *middle, last = text.split("\n")
        self.line.append(first)
        self.state = _after(self.state, "".join(self.line))
        for line in middle:
            self.state = _after(self.state, line)
        self.line = [last] if last else []


@define(eq=False)
class Assembler:
    """
    Joins an app's L{Write}s into L{Record}s for C{emit}, per source: a
    write that starts a line starts a new record unless the record before
    may go on (a traceback and its chained exceptions, a header such as
    C{Exception in thread ...:} before one).  Call L{flush} when the
    process is gone.
    """

    clock: IReactorTime
    emit: Callable[[Record], None]
    _pending: dict[Any, _Pending] = field(factory=dict)

    def feed(self, write: Write) -> None:
        if not write.text and not write.more:
            return
        key = write.source
        pending = self._pending.get(key)
        if pending is not None and pending.ended and not _goes_on(pending.state, write.text):
            self._send(key)
            pending = None
        if pending is None:
            pending = self._pending[key] = _Pending(write, self.clock.seconds())
        pending.add(write)
        if pending.size > MAX_RECORD:
            self._cut(pending)
        if pending.ended and pending.state == PLAIN:
            self._send(key)
        else:
            self._hold(key, pending)

    def flush_request(self, request_id: str) -> None:
        """
        Emit now what waits of request C{request_id} and could end where it
        is (a whole traceback, a whole line): the request is over, and what
        its app wrote belongs in the log before its end.  A record cut in
        the middle (its frames still arriving) is left to finish.
        """
        if not self._pending:
            return  # the usual: nothing waits
        for key, pending in list(self._pending.items()):
            if key[1] == request_id and pending.ended and pending.state in (PLAIN, DONE):
                self._send(key)

    def flush(self) -> None:
        """Send every record held back (the process is gone: nothing more comes)."""
        for key in list(self._pending):
            self._send(key)

    def _hold(self, key: Any, pending: _Pending) -> None:
        delay = min(QUIET, pending.since + MAX_HOLD - self.clock.seconds())
        if pending.timer is not None and pending.timer.active():
            pending.timer.reset(max(0.0, delay))
        else:
            pending.timer = self.clock.callLater(max(0.0, delay), self._send, key)

    def _send(self, key: Any) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self._emit(pending, "".join(pending.parts))

    def _cut(self, pending: _Pending) -> None:
        """Send all but the last L{MAX_RECORD} characters or fewer, as records that go on."""
        text = "".join(pending.parts)
        while len(text) > MAX_RECORD:
            self._emit(pending, text[:MAX_RECORD], continued=True)
            text = text[MAX_RECORD:]
        pending.parts, pending.size = [text], len(text)
        if pending.line:
            pending.line = [text.rpartition("\n")[2]]

    def _emit(self, pending: _Pending, text: str, continued: bool = False) -> None:
        write = pending.write
        self.emit(Record(write.stream, text.rstrip("\r\n"), write.request_id, continued))

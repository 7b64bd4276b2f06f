"""
What every launcher shares: the L{ILauncher} interface, the L{LaunchSpec}
of a worker, the L{LaunchedProcess} it gives back, and how a worker's
output is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import Interface

from buntime.logs import log
from buntime.pool.output import OUTPUT_FD, FrameReader, Write

CHILD_MODULE = "buntime.pool.child"
TEMPLATE_MODULE = "buntime.pool.launch.template"
TO_CHILD, FROM_CHILD = 3, 4
"""The AMP channel as the worker sees it: it reads fd 3 and writes fd 4."""
WORKER_FDS = {0: "w", 1: "r", 2: "r", TO_CHILD: "w", FROM_CHILD: "r", OUTPUT_FD: "r"}
MAX_LINE = 64 * 1024
"""A line of output longer than this is reported in pieces."""
UNKNOWN_EXIT = 255
"""Exit code reported for a forked worker whose template died before it did."""
MAX_RESTART_DELAY = 30.0
"""Longest wait before restarting a template that keeps dying before it is ready."""
STOP_GRACE = 5.0
"""Seconds the template has to exit after its control channel closes."""
OUTPUT_GRACE = 1.0
"""Seconds a worker's output is still read after it exited; then its ends are closed
(a process it left behind may hold them open)."""


@frozen
class LaunchSpec:
    """What to start: which worker, for which app directory, with which environment."""

    worker_id: str
    app_dir: str
    env: Mapping[str, str]


@define(eq=False)
class LaunchedProcess:
    """A started worker process; C{exited} fires with its exit code (negative: a signal)."""

    pid: int
    exited: Deferred
    _send: Callable[[int], None] = field(default=lambda signum: None, repr=False)

    def signal(self, signum: int) -> None:
        """Send C{signum} to the process (nothing if it has exited)."""
        if not self.exited.called:
            self._send(signum)


class ILauncher(Interface):
    """Starts worker processes."""

    def start() -> Deferred:
        """Get ready to launch (e.g. start the template process)."""

    def stop() -> Deferred:
        """Stop whatever C{start} started."""

    def launch(
        spec: LaunchSpec,
        protocol: amp.AMP,
        on_output: Callable[[Write], None],
    ) -> Deferred:
        """
        Start a worker; fires with a L{LaunchedProcess} once the channel is
        connected.  C{on_output} gets what the worker writes.
        """


class LauncherUnavailable(Exception):
    """The launcher cannot start workers right now (its template is down)."""


@define(eq=False)
class LineSplitter:
    """Cuts a byte stream into decoded lines for C{on_output(stream, line)}."""

    stream: str
    on_output: Callable[[str, str], None]
    _buffer: bytes = b""

    def feed(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        while len(self._buffer) > MAX_LINE:
            cut = _between_characters(self._buffer, MAX_LINE)
            lines.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        try:
            self.on_output(self.stream, text)
        except Exception as error:
            log("error", "buntime:launch:output-failed", f"on_output failed: {error!r}")


def _between_characters(data: bytes, limit: int) -> int:
    """
    Where to cut C{data} (longer than C{limit}) at C{limit} bytes at most:
    not inside a UTF-8 character, whose pieces would each be decoded as
    U+FFFD (bytes that are no UTF-8 there are cut at C{limit}).
    """
    for cut in range(limit, limit - 4, -1):
        if data[cut] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut
    return limit


def output_readers(on_output: Callable[[Write], None]) -> dict[int, LineSplitter | FrameReader]:
    """What reads a worker's output fds: raw lines from 1 and 2, frames from L{OUTPUT_FD}."""

    def raw(stream: str, line: str) -> None:
        on_output(Write(stream, line + "\n", raw=True))

    def framed(write: Write) -> None:
        try:
            on_output(write)
        except Exception as error:
            log("error", "buntime:launch:output-failed", f"on_output failed: {error!r}")

    return {
        1: LineSplitter("stdout", raw),
        2: LineSplitter("stderr", raw),
        OUTPUT_FD: FrameReader(framed),
    }


def exit_code(reason: Failure) -> int:
    """The exit code in a C{processEnded} reason (negative: killed by that signal)."""
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        return -int(signal_number)
    code = getattr(value, "exitCode", None)
    return int(code) if code is not None else 0


# -- spawn ------------------------------------------------------------------

"""
The worker process's C{main()}: install the asyncio reactor, load the app
named by the environment, report C{Ready} (or C{StartupFailed} and exit 3)
over AMP on fds 3 (in) and 4 (out), serve until the channel closes.

What the app writes to C{sys.stdout} and C{sys.stderr} goes to the runtime
framed, write by write, on fd 5 (L{buntime.pool.child.output}); fds 1 and 2
stay the process's own, which the runtime logs line by line.
SIGINT is ignored (the runtime decides when workers stop; Ctrl-C in a
terminal reaches the whole process group) and SIGUSR1 dumps every thread's
stack to stderr (the runtime asks for one before killing a stuck worker).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import stat
import sys
import traceback
from collections.abc import Mapping
from typing import IO, Any, cast

from attrs import define, field
from twisted.internet import asyncioreactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ReactorNotRunning
from twisted.internet.protocol import Factory
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from buntime.pool.child.lifeline import die_with_parent
from buntime.pool.child.loader import LoadError, load, missing_module_hint
from buntime.pool.child.memory import LOW_MEMORY_THREADS, limit_arenas, low_memory, settle
from buntime.pool.child.output import install as frame_output
from buntime.pool.child.protocol import ChildProtocol, one_line

CHANNEL_IN, CHANNEL_OUT = 3, 4
STARTUP_FAILED = 3
"""Exit code of a worker whose app could not be loaded."""
EXIT_GRACE = 5
"""Seconds a worker waits after C{Terminate} for the runtime to close the channel."""


@define(eq=False)
class WorkerMain:
    """One worker's life: load, report, serve, exit when the channel closes."""

    reactor: Any
    loop: asyncio.AbstractEventLoop
    environ: Mapping[str, str]
    exit_code: int = 0
    protocol: ChildProtocol = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.protocol = ChildProtocol(
            self.reactor, self.loop, on_lost=self._channel_lost, on_terminated=self._terminated
        )

    def run(self) -> int:
        """Serve until the channel closes; the exit code."""
        self._listen()
        self.reactor.callWhenRunning(ignore_group_signals)
        self.reactor.callLater(0, self._start)
        self.reactor.run()
        return self.exit_code

    def begin(self, channel: tuple[Any, bytes] | None = None) -> None:
        """
        L{run}'s start in a reactor already running (a spare's): serve on
        the channel and load the app now.  The reactor stops at the end.
        C{channel}: a transport the reactor already reads (a spare's
        socket), with the bytes that came on it ahead; else fds 3 and 4.
        """
        if channel is None:
            self._listen()
        else:
            transport, early = channel
            transport.protocol = self.protocol  # its reads come here from now on
            self.protocol.makeConnection(transport)
            if early:
                self.protocol.dataReceived(early)
        self._start()

    def _listen(self) -> None:
        listen(self.protocol, self.reactor)

    def _start(self) -> None:
        Deferred.fromCoroutine(self._load()).addErrback(self._crashed)

    async def _load(self) -> None:
        try:
            frugal = low_memory(self.environ)
            if frugal:
                limit_arenas()
                self.protocol.low_memory = True
            app = load(
                self.environ.get("APP_DIR") or os.getcwd(),
                self.environ.get("ENTRYPOINT", ""),
                reactor=self.reactor,
                loop=self.loop,
                threads=LOW_MEMORY_THREADS if frugal else 10,
            )
            await app.adapter.startup()
            settle(frugal)
        except (Exception, SystemExit) as error:
            detail = traceback.format_exc()
            message = str(error) if isinstance(error, LoadError) else one_line(error)
            if isinstance(error, ModuleNotFoundError):
                message = missing_module_hint(error, self.environ.get("APP_DIR") or os.getcwd())
            print(f"The app could not be loaded: {message}\n{detail}", file=sys.stderr)
            reported = self.protocol.startup_failed(message, detail)
            reported.addTimeout(EXIT_GRACE, self.reactor)
            try:
                await reported
            except Exception:
                pass
            self.exit(STARTUP_FAILED)
            return
        await self.protocol.serve(app)

    def _terminated(self) -> None:
        self.reactor.callLater(EXIT_GRACE, self.exit, 0)

    def _crashed(self, failure: Any) -> None:
        if failure.check(ConnectionLost, ConnectionDone):
            # the runtime closed the channel before Ready was answered (it
            # retired this worker while it started): no failure of ours
            self.exit(self.exit_code)
            return
        print(f"The worker failed: {failure.getTraceback()}", file=sys.stderr)
        self.exit(1)

    def _channel_lost(self) -> None:
        # A stuck thread or task must not keep an orphan alive: SIGALRM ends it.
        signal.alarm(EXIT_GRACE)
        self.exit(self.exit_code)

    def exit(self, code: int) -> None:
        """Stop the reactor; C{run} returns C{code}."""
        self.exit_code = code
        if self.reactor.running:
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # already stopping (a failed start, then the channel closing)


def listen(protocol: Any, reactor: Any, fds: tuple[int, int] = (CHANNEL_IN, CHANNEL_OUT)) -> None:
    """
    Connect C{protocol} to the channel on C{fds} (in, out: 3 and 4).  One
    socket on both (a forked worker's) is adopted as a socket connection:
    its writes then go out with one C{send()} when nothing waits
    (L{buntime.sockets.send_now}), where a pipe's writer costs the event loop
    two C{epoll_ctl} calls a write.  Two pipes (a spawned worker's) are
    read and written as standard I/O.
    """
    inbound, outbound = os.fstat(fds[0]), os.fstat(fds[1])
    if stat.S_ISSOCK(inbound.st_mode) and (inbound.st_dev, inbound.st_ino) == (
        outbound.st_dev,
        outbound.st_ino,
    ):
        factory = Factory.forProtocol(lambda: protocol)
        reactor.adoptStreamConnection(fds[0], socket.AF_UNIX, factory)  # a dup of it
        return
    # mypy reads twisted.internet.stdio's Windows branch, whose StandardIO has no stdin/stdout.
    StandardIO(protocol, stdin=fds[0], stdout=fds[1], reactor=reactor)  # type: ignore[call-arg]


class _StandardError:
    """C{sys.stderr} as it is when written to (framed once the worker starts: C{frame_output})."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_inherited = False
"""Whether L{inherit} ran in this process (or the fork template it was forked from)."""


def inherit() -> None:
    """
    The part of a worker's start that a forked child inherits as it is, done
    once: SIGUSR1 dumps every thread's stack (to whatever fd 2 is then), and
    Twisted's own warnings and errors (unhandled Deferred errors...) go to
    stderr (whatever C{sys.stderr} is when they come: framed by L{serve}).
    The fork template does it before it forks, so that no worker pays for
    it (the pages it writes are shared: L{buntime.pool.launch.warm}).
    Idempotent.
    """
    global _inherited
    if _inherited:
        return
    _inherited = True
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    globalLogBeginner.beginLoggingTo([error_observer()], redirectStandardIO=False)


def error_observer() -> FilteringLogObserver:
    """A Twisted log observer writing warnings and errors to C{sys.stderr} as it is then."""
    return FilteringLogObserver(
        textFileLogObserver(cast(IO[Any], _StandardError())),
        [LogLevelFilterPredicate(LogLevel.warn)],
    )


def prepare(parent: int | None = None) -> tuple[asyncio.AbstractEventLoop, Any]:
    """
    The part of a worker's start that needs no app: tie its life to
    C{parent} (default: its parent now), L{inherit} (unless its template
    did), install the asyncio reactor, ignore group signals, and set up
    what writes to fds 1 and 2 (their numbers: the fds themselves may come
    later).  The fork template's spare does this before it is given an app
    (L{buntime.pool.launch.template}).  The loop and reactor.
    """
    die_with_parent(parent if parent is not None else os.getppid())
    inherit()
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    ignore_group_signals()
    return loop, reactor


def ignore_group_signals() -> None:
    """
    Undo the SIGINT and SIGTERM handlers a reactor installs while starting:
    the runtime ends a worker over its channel (or with SIGKILL), and
    signals sent to the whole process group must not cut in-flight requests.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def begin(
    loop: asyncio.AbstractEventLoop, reactor: Any, channel: tuple[Any, bytes] | None = None
) -> WorkerMain:
    """
    Start a L{prepare}d worker whose reactor is already running (a spare's),
    its fds and environment in place, on C{channel} (see L{WorkerMain.begin});
    the reactor stops when it ends.
    """
    frame_output()  # faulthandler (see L{prepare}) keeps writing to fd 2 itself
    worker = WorkerMain(reactor, loop, os.environ)
    worker.begin(channel)
    return worker


def serve(loop: asyncio.AbstractEventLoop, reactor: Any) -> None:
    """
    Run a L{prepare}d worker on its channel and output fds (3, 4 and 5, and
    1 and 2) and its environment, already in place; never returns.
    """
    frame_output()  # faulthandler (see L{prepare}) keeps writing to fd 2 itself
    code = 1
    try:
        code = WorkerMain(reactor, loop, os.environ).run()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(parent: int | None = None) -> None:
    """
    Run one worker (C{python -m buntime.pool.child}); never returns.
    C{parent} is the pid it must not outlive (default: its parent now).
    """
    serve(*prepare(parent))

"""
L{ForkLauncher}: workers forked from a pre-started template process
(L{buntime.pool.launch.template}), so a cold start costs a fork and the app's import.
"""

from __future__ import annotations

import json
import os
import site
import socket
import sys
from collections.abc import Callable, Mapping
from contextvars import Context
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

import buntime
from buntime.cpus import child_env
from buntime.logs import log
from buntime.once import Once
from buntime.pool.launch.forked import ForkedWorker, OutputSocket, adopt
from buntime.pool.launch.launcher import (
    MAX_RESTART_DELAY,
    STOP_GRACE,
    TEMPLATE_MODULE,
    UNKNOWN_EXIT,
    ILauncher,
    LaunchedProcess,
    LauncherUnavailable,
    LaunchSpec,
    LineSplitter,
    exit_code,
    output_readers,
)
from buntime.pool.output import OUTPUT_FD, Write

SPARE_DELAY = 0.01
"""
Seconds after a launch took the spare before the template is told to fork
the next: on a small machine that fork, done at once, took the CPU from the
worker starting (a cold start about 1.5 ms slower).  A launch meanwhile is
forked by the template, which is then told at once.
"""
BURST = 0.1
"""
A launch this many seconds or less after the one before is part of a burst:
the template is told at once that it took the spare, so that the next
launch, near, finds a spare ready (a launch the template forks waits for
the fork and a worker's setup).
"""


@implementer(IFileDescriptorReceiver)
class _Control(Protocol):
    """
    The runtime's end of the template's control socket: JSON lines in, and
    with each C{{"spare": pid}} the socket that spare waits on.
    """

    def __init__(self, launcher: ForkLauncher) -> None:
        self.launcher = launcher
        self.buffer = b""
        self.fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)  # before the data it came with

    def dataReceived(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line) if line.strip() else None
            except ValueError:
                log("error", "buntime:launch:template-garbled", f"Bad template message {line!r}")
                continue
            if not isinstance(message, dict):
                continue
            if "spare" in message:
                if self.fds:
                    self.launcher._spare_arrived(int(message["spare"]), self.fds.pop(0))
            else:
                self.launcher._report(message)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for descriptor in self.fds:
            os.close(descriptor)
        self.fds = []
        self.launcher._control_lost()


class _TemplateProcess(ProcessProtocol):
    """The template process: its output is logged, its end is reported."""

    def __init__(self, launcher: ForkLauncher) -> None:
        self.launcher = launcher
        self.lines = {
            1: LineSplitter("stdout", self._log),
            2: LineSplitter("stderr", self._log),
        }

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self.lines:
            self.lines[childFD].feed(data)

    def _log(self, stream: str, line: str) -> None:
        log("warn", "buntime:launch:template-output", line, stream=stream)

    def processEnded(self, reason: Failure) -> None:
        for splitter in self.lines.values():
            splitter.flush()
        self.launcher._template_ended(self, exit_code(reason))


@implementer(ILauncher)
@define(eq=False)
class ForkLauncher:
    """
    Forks workers from a template process (C{python -m buntime.pool.launch.template})
    started by L{start}.  Per launch it makes three socketpairs (stdout,
    stderr, output channel) and passes the worker's ends with the
    environment to the spare the template forked ahead and handed over (the
    worker is then that spare, at once, and the socket it waited on is its
    AMP channel), or else, with a fourth pair for the channel, to the
    template, which forks and reports the pid; the template reports the
    exit code.  A
    template that dies, or cannot be started, is started again after
    C{restart_delay} seconds (doubling while it keeps failing before it is
    ready, up to L{MAX_RESTART_DELAY}); launches wait for it meanwhile, and fail with
    L{LauncherUnavailable} after C{launch_timeout} seconds (those it was
    forking when it died fail at once).  C{reactor} provides
    C{IReactorProcess}, C{IReactorSocket} and C{IReactorTime}.
    """

    reactor: Any
    env: Mapping[str, str] | None = None
    cpus: frozenset[int] | None = None
    """The CPUs the template and every worker it forks run on (C{None}: any)."""
    restart_delay: float = 1.0
    launch_timeout: float = 10.0
    _process: _TemplateProcess | None = None
    _transport: Any = None
    _control: socket.socket | None = None
    _reader: _Control | None = None
    _ready: Once | None = None
    _ready_now: bool = False
    _stopping: bool = False
    _stopped: Deferred | None = None
    _kill_timer: Any = None
    _failures: int = 0
    _restart: Any = None
    _pending: dict[str, tuple[Deferred, list[socket.socket], Any, Callable]] = field(factory=dict)
    _workers: dict[int, ForkedWorker] = field(factory=dict)
    _started: bool = False
    _waiting: Once = field(factory=Once)
    """Launches waiting for the template to be ready (again)."""
    _spare: tuple[int, socket.socket] | None = None
    """The spare the template handed over: its pid and the socket it waits on."""
    _telling: Any = None
    """The call telling the template its spare was taken (after L{SPARE_DELAY})."""
    _taken: int = 0
    """The pid of that spare."""
    _last_launch: float = float("-inf")
    """When the last launch was sent (L{BURST})."""

    def start(self) -> Deferred:
        """Start the template; fires once it has imported everything and is listening."""
        self._stopping = False
        self._started = True
        if self._ready is None:
            failed = self._spawn_template()
            if failed is not None:  # the template process could not even be started
                return fail(failed)
        assert self._ready is not None
        return self._ready.wait()

    def stop(self) -> Deferred:
        """Close the control channel (the template exits); fires once it has."""
        self._stopping = True
        self._started = False
        waiting, self._waiting = self._waiting, Once()
        waiting.fire(Failure(LauncherUnavailable("the fork template is stopping")))
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self._transport is None:
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._close_control()
            self._kill_timer = self.reactor.callLater(STOP_GRACE, self._kill_template)
        return self._stopped

    def launch(
        self, spec: LaunchSpec, protocol: amp.AMP, on_output: Callable[[Write], None]
    ) -> Deferred:
        if self._ready_now and self._control is not None:
            return self._launch_now(spec, protocol, on_output)
        if not self._started:
            return fail(LauncherUnavailable("the fork template is not running (not started)"))
        # Starting or restarting: wait for it, up to launch_timeout.
        waiter = self._waiting.wait()

        def gave_up(result: object, timeout: float) -> Failure:
            return Failure(
                LauncherUnavailable(f"the fork template was not ready within {timeout:g} s")
            )

        waiter.addTimeout(self.launch_timeout, self.reactor, gave_up)
        return waiter.addCallback(lambda _: self._launch_now(spec, protocol, on_output))

    def _launch_now(
        self, spec: LaunchSpec, protocol: amp.AMP, on_output: Callable[[Write], None]
    ) -> Deferred:
        if spec.worker_id in self._pending:
            return fail(ValueError(f"worker {spec.worker_id} is already being launched"))
        try:
            pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        except OSError as error:  # out of fds: the runtime's trouble, not the app's
            return fail(LauncherUnavailable(f"cannot make a worker's sockets: {error}"))
        ours = [pair[0] for pair in pairs]  # the worker's stdout, stderr and output
        theirs = [pair[1] for pair in pairs]
        message = {"worker_id": spec.worker_id, "app_dir": spec.app_dir, "env": dict(spec.env)}
        data = json.dumps(message).encode("utf-8") + b"\n"
        fds = [sock.fileno() for sock in theirs]
        now = self.reactor.seconds()
        burst, self._last_launch = now - self._last_launch < BURST, now
        try:
            pid, channel = self._hand_to_spare(data, fds, burst)
            if channel is not None:  # the spare's socket is the worker's channel
                ours.insert(0, channel)
            else:  # the template forks it, with a channel of its own
                pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                ours.insert(0, pair[0])
                theirs.insert(0, pair[1])
                self._send(self._taken_now() + data, [pair[1].fileno(), *fds])
        except OSError as error:
            for sock in ours:
                sock.close()
            return fail(LauncherUnavailable(f"cannot reach the fork template: {error}"))
        finally:
            for sock in theirs:
                sock.close()
        if pid is not None:
            # outside the caller's eliot action, as a launch the template forks
            # is adopted: the channel's own log lines are no request's
            adopted = Context().run(self._adopt, pid, ours, protocol, on_output)
            return succeed(adopted)
        launched: Deferred = Deferred()
        self._pending[spec.worker_id] = (launched, ours, protocol, on_output)
        launched.addTimeout(self.launch_timeout, self.reactor, self._launch_timed_out(spec))
        return launched

    def _hand_to_spare(
        self, data: bytes, fds: list[int], burst: bool
    ) -> tuple[int | None, socket.socket | None]:
        """
        Send a launch straight to the spare, which becomes the worker: its
        pid and the socket it waited on, now the worker's channel; or
        C{(None, None)} when there is none (or it died meanwhile).  The
        template is told, and forks the next: at once in a C{burst} of
        launches (the next one is near), else after L{SPARE_DELAY}.
        """
        spare, self._spare = self._spare, None
        if spare is None:
            return None, None
        pid, waiting = spare
        try:
            sent = socket.send_fds(waiting, [data], fds)
            if sent < len(data):
                waiting.sendall(data[sent:])
        except OSError:
            waiting.close()
            return None, None  # it died unused (its exit is on its way): the template forks
        if burst:
            self._tell_taken(pid)
            return pid, waiting
        # (the template hands over no other spare until it is told)
        self._taken = pid
        self._telling = self.reactor.callLater(SPARE_DELAY, self._tell_taken, pid)
        return pid, waiting

    def _tell_taken(self, pid: int) -> None:
        """Tell the template its spare C{pid} was taken: it forks the next."""
        self._telling = None
        if self._control is None:
            return  # a template that ended forgot it; a new one forks its own
        try:
            self._send(_taken_line(pid), [])
        except OSError:
            pass  # the template is gone, and its children with it: reported as it ends

    def _taken_now(self) -> bytes:
        """
        The line telling the template of a taken spare, if it is still to be
        told: sent ahead of a launch the template forks (launches come
        close together, so it forks the next spare after that one).
        """
        telling, self._telling = self._telling, None
        if telling is None or not telling.active():
            return b""
        telling.cancel()
        return _taken_line(self._taken)

    def _spare_arrived(self, pid: int, descriptor: int) -> None:
        """The template forked a spare and sent the socket it waits on."""
        waiting = socket.socket(fileno=descriptor)
        if self._control is None or self._stopping:
            waiting.close()  # the spare reads the end and exits
            return
        waiting.settimeout(2.0)
        self._drop_spare()
        self._spare = (pid, waiting)

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].close()

    # -- the template process ---------------------------------------------------

    def _spawn_template(self) -> Failure | None:
        """
        Start the template process; the failure when it cannot be started
        (no fd or process left, say), logged and tried again later.
        """
        self._ready = Once()
        self._ready_now = False
        process = _TemplateProcess(self)
        env = dict(self.env) if self.env is not None else _template_env()
        env.update(child_env(self.cpus))  # taken before it forks anything
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return self._not_spawned(Failure())
        try:
            self._transport = self.reactor.spawnProcess(
                process,
                sys.executable,
                [sys.executable, "-m", TEMPLATE_MODULE],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
        except Exception:
            ours.close()
            theirs.close()
            return self._not_spawned(Failure())
        theirs.close()
        self._process = process
        self._control = ours
        control = socket.socket(fileno=os.dup(ours.fileno()))
        self._reader = _Control(self)
        adopt(self.reactor, control, self._reader)
        ours.settimeout(2.0)
        return None

    def _not_spawned(self, failure: Failure) -> Failure:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.fire(failure)
        delay = self._restart_later()
        log(
            "error",
            "buntime:launch:template-failed",
            f"The fork template could not be started: {failure.getErrorMessage()}; "
            f"trying again in {delay:g} s",
        )
        return failure

    def _restart_later(self) -> float:
        """Start the template again after a while, longer each time it fails in a row."""
        delay = min(self.restart_delay * 2**self._failures, MAX_RESTART_DELAY)
        self._failures += 1
        self._restart = self.reactor.callLater(delay, self._restart_template)
        return delay

    def _send(self, data: bytes, fds: list[int]) -> None:
        """Send C{data} (JSON lines) and C{fds} to the template."""
        assert self._control is not None
        sent = socket.send_fds(self._control, [data], fds)
        if sent < len(data):
            self._control.sendall(data[sent:])

    def _report(self, message: dict) -> None:
        if "ready" in message:
            self._ready_now = True
            self._failures = 0
            log(
                "info", "buntime:launch:template-ready", "Fork template ready", pid=message["ready"]
            )
            if self._ready is not None:
                self._ready.fire(None)
            waiting, self._waiting = self._waiting, Once()
            waiting.fire(None)
        elif "worker_id" in message:
            self._forked(message)
        elif "exited" in message:
            pid = int(message["pid"])
            if self._spare is not None and self._spare[0] == pid:
                self._drop_spare()  # it died unused; the template forks another later
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                worker.report_exit(int(message["exited"]), self.reactor)

    def _forked(self, message: dict) -> None:
        pending = self._pending.pop(message["worker_id"], None)
        if pending is None:
            return
        launched, ours, protocol, on_output = pending
        if "error" in message or launched.called:
            for sock in ours:
                sock.close()
            if not launched.called:
                launched.errback(LauncherUnavailable(f"fork failed: {message['error']}"))
            return
        launched.callback(self._adopt(int(message["pid"]), ours, protocol, on_output))

    def _adopt(
        self,
        pid: int,
        ours: list[socket.socket],
        protocol: amp.AMP,
        on_output: Callable[[Write], None],
    ) -> LaunchedProcess:
        """Worker C{pid} is launched: read its channel and output on C{ours}."""
        channel, *streams = ours  # AMP, then fds 1, 2 and 5
        readers = output_readers(on_output)
        sockets = [OutputSocket(readers[fd], Deferred()) for fd in (1, 2, OUTPUT_FD)]
        for sock, reader in zip(streams, sockets, strict=True):
            adopt(self.reactor, sock, reader)
        adopt(self.reactor, channel, protocol)
        worker = ForkedWorker(pid, Deferred(), sockets)
        self._workers[pid] = worker
        return LaunchedProcess(pid, worker.exited, worker.send_signal)

    def _launch_timed_out(self, spec: LaunchSpec) -> Callable[..., Failure]:
        def timed_out(result: object, timeout: float) -> Failure:
            pending = self._pending.pop(spec.worker_id, None)
            if pending is not None:
                for sock in pending[1]:
                    sock.close()
            return Failure(
                LauncherUnavailable(f"the fork template did not fork within {timeout} s")
            )

        return timed_out

    def _control_lost(self) -> None:
        self._ready_now = False
        self._close_control()

    def _close_control(self) -> None:
        self._drop_spare()
        if self._telling is not None and self._telling.active():
            self._telling.cancel()
        self._telling = None
        control, self._control = self._control, None
        if control is not None:
            control.close()
        reader, self._reader = self._reader, None
        if reader is not None and reader.transport is not None:
            reader.transport.loseConnection()

    def _kill_template(self) -> None:
        if self._transport is not None:
            try:
                self._transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

    def _template_ended(self, process: _TemplateProcess, code: int) -> None:
        if process is not self._process:
            return
        self._process = self._transport = None
        self._ready_now = False
        self._close_control()
        ready, self._ready = self._ready, None
        unavailable = LauncherUnavailable(f"the fork template exited with code {code}")
        if ready is not None:
            ready.fire(Failure(unavailable))
        pending, self._pending = self._pending, {}
        for launched, ours, _, _ in pending.values():
            for sock in ours:
                sock.close()
            if not launched.called:
                launched.errback(LauncherUnavailable(f"the fork template exited with code {code}"))
        orphans, self._workers = self._workers, {}
        for worker in orphans.values():  # they end with it (PR_SET_PDEATHSIG)
            worker.report_exit(UNKNOWN_EXIT, self.reactor)
        if self._stopping:
            if self._kill_timer is not None and self._kill_timer.active():
                self._kill_timer.cancel()
            stopped, self._stopped = self._stopped, None
            if stopped is not None:
                stopped.callback(None)
            return
        log(
            "error",
            "buntime:launch:template-died",
            f"The fork template exited with code {code}; restarting it",
            code=code,
        )
        self._restart_later()

    def _restart_template(self) -> None:
        self._restart = None
        if not self._stopping:
            self._spawn_template()


def _taken_line(pid: int) -> bytes:
    return json.dumps({"taken": pid}).encode("utf-8") + b"\n"


def _template_env() -> dict[str, str]:
    """The template's own environment: what Python needs, and buntime importable."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONHASHSEED")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    root = os.path.dirname(os.path.dirname(os.path.abspath(buntime.__file__)))
    if root not in site.getsitepackages():  # a source checkout, not an installed package
        env["PYTHONPATH"] = root
    env["PYTHONUNBUFFERED"] = "1"
    return env

"""
The fork template: C{python -m buntime.pool.launch.template}, started once by
L{buntime.pool.launch.ForkLauncher}.

It imports what every worker needs (Twisted's AMP, stdio, web and asyncio
reactor modules, the worker code), sets up what workers inherit as it is
and rehearses what each runs at its start (L{buntime.pool.launch.warm}:
workers then copy fewer of its pages), but installs no reactor and starts
no thread, then waits on its control socket (fd 3) for JSON lines
C{{"worker_id", "app_dir", "env"}}, each sent with four file descriptors
(SCM_RIGHTS): the worker's AMP channel, stdout, stderr and output channel.
For each it forks; the child puts the fds on 3+4, 1, 2 and 5, takes the given environment,
directory and C{sys.path}, and runs the worker's C{main()}.  The template
answers C{{"worker_id", "pid"}} after each fork and C{{"pid", "exited"}}
when a child ends, and exits when the control socket closes.

A cold start does not wait for the fork: the template keeps one I{spare}
forked ahead, which has done every step of a worker's start that needs no
app (its reactor installed and running, see L{buntime.pool.child.main.prepare})
and waits in that reactor on a socket of its own.  The template hands the
other end of that socket to the runtime (C{{"spare": pid}}, the socket sent
with it), which sends a launch straight to the spare (no hop through the
template; its stdout, stderr and output channel with it, three fds) and
then tells the template C{{"taken": pid}} (10 ms later, out of the starting
worker's way, or at once in a burst of launches); the spare becomes the
worker in the same reactor (L{buntime.pool.child.main.begin}), and the
socket it waited on, which that reactor already reads, becomes its AMP
channel (fds 3 and 4 are then closed).  The template forks the next
spare when told, so the next cold start finds one too.  A spare that
died unused is reported like any child (C{{"pid", "exited"}}) and replaced
after L{SPARE_RETRY}.  Launches sent to the template itself (the runtime
held no spare) are forked there.

Third-party libraries an app might pin itself (Flask, Starlette...) are not
pre-imported: the app must get the version on its own C{PYTHONPATH}.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Set
from typing import Any, NoReturn

from attrs import define, field
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from buntime.cpus import take_cpus
from buntime.pool.output import OUTPUT_FD

CONTROL_FD = 3
PRELOAD = (
    "asyncio",
    "json",
    "inspect",
    "faulthandler",
    "twisted.internet.asyncioreactor",
    "twisted.internet.stdio",
    "twisted.internet.threads",
    "twisted.logger",
    "twisted.protocols.amp",
    "twisted.python.threadpool",
    "twisted.web.server",
    "twisted.web.resource",
    "buntime.http",
    "buntime.pool.child.main",
    "buntime.pool.launch.warm",
)
"""Modules imported before any fork, so workers start with them loaded."""
TEMPORARY = ("TMPDIR", "TEMP", "TMP")
"""The variables C{tempfile} finds its directory by (once a process: L{Template._take})."""
SPARE_RETRY = 1.0
"""Seconds the template waits before forking a spare again after one died unused."""


def preload() -> None:
    """
    Import L{PRELOAD}; the reactor must still be uninstalled afterwards.

    The collector is off while importing and nothing is collected before
    C{gc.freeze()} (as the C{gc} docs advise for fork servers): a collection
    here would leave holes in the shared pages, which each worker's first
    allocations would then fill, copying those pages (about 0.15 MB a worker).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in PRELOAD:
            importlib.import_module(name)
        _declare_interfaces()
        from buntime.pool.child.main import inherit
        from buntime.pool.launch.warm import warm_up

        inherit()
        try:
            warm_up()
        except OSError as error:  # no temporary directory, say: workers are then only colder
            warning = f"The fork template's warm-up was skipped (workers start colder): {error}"
            print(warning, file=sys.stderr)
        except Exception:  # the same, but a fault of the warm-up's own
            traceback.print_exc()
        if "twisted.internet.reactor" in sys.modules:
            raise RuntimeError("the fork template must not import twisted.internet.reactor")
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def _declare_interfaces() -> None:
    """
    Work out now which interfaces the preloaded classes provide: zope does
    it on first use, and in each worker that first use would copy the pages
    the answer is written to.
    """
    from zope.interface import implementedBy

    for name in list(sys.modules):
        if not name.startswith(("twisted.", "buntime.", "zope.")):
            continue
        for value in list(vars(sys.modules[name]).values()):
            if isinstance(value, type):
                try:
                    implementedBy(value)
                except TypeError:
                    pass


def _send(control: socket.socket, message: dict) -> None:
    control.sendall(json.dumps(message).encode("utf-8") + b"\n")


def _set_environment(env: dict[str, str]) -> None:
    """
    Make C{os.environ} exactly C{env}, changing only what differs (a
    worker's differs from the template's in a few variables: clearing and
    refilling it cost a cold start about 1 ms).
    """
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _python_path(env: dict[str, str], app_dir: str, base: list[str], old: list[str]) -> list[str]:
    """The child's C{sys.path}: app dir, its C{PYTHONPATH}, the interpreter's, the template's."""
    new = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    path: list[str] = []
    for entry in [app_dir, *new, *base, *old]:
        if entry not in path:
            path.append(entry)
    return path


class Template:
    """The template's loop: fork on request, report forks and exits."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.buffer = b""
        self.fds: list[int] = []
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        old = os.environ.get("PYTHONPATH", "")
        self.old_path = [entry for entry in old.split(os.pathsep) if entry]
        # sys.path[0] is the directory the template was started in: not the app's.
        self.base_path = [entry for entry in sys.path[1:] if entry not in self.old_path]
        self.spare: int | None = None
        """The pid of the spare forked ahead and handed to the runtime, until it is taken."""
        self.spare_due = 0.0
        """When the next spare may be forked (C{time.monotonic()})."""

    def run(self) -> None:
        self.own_pid = os.getpid()
        # The runtime stops the template by closing its control channel;
        # Ctrl-C or a SIGTERM sent to the whole process group (a terminal,
        # `timeout`, systemd's control-group kill) must not take it down
        # while the runtime is still draining.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self._fork_spare()
        _send(self.control, {"ready": os.getpid()})
        try:
            while True:
                # The next spare is forked as soon as a launch took the last
                # one (a burst of cold starts finds it), SPARE_RETRY after
                # one died unused.
                wait = None
                if self.spare is None:
                    wait = max(0.0, self.spare_due - time.monotonic())
                events = selector.select(wait)
                for key, _ in events:
                    if key.data == "wake":
                        self._drain_wakeups()
                    elif not self._read_control():
                        return
                self._reap()
                if self.spare is None and time.monotonic() >= self.spare_due:
                    self._fork_spare()
        finally:
            selector.close()  # a spare left exits with us (and when the runtime closes its end)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _read_control(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, 65536, 48)
        except InterruptedError:
            return True
        self.fds.extend(fds)
        if not data:
            return False
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            message = json.loads(line)
            if "taken" in message:
                self._taken(message["taken"])
            else:
                self._launch(message)
        return True

    def _taken(self, pid: object) -> None:
        """The runtime sent a launch to the spare C{pid}: it is a worker now; fork the next."""
        if pid == self.spare:
            self.spare = None

    def _launch(self, message: dict) -> None:
        fds, self.fds = self.fds[:4], self.fds[4:]
        worker_id = message.get("worker_id", "")
        if len(fds) != 4:
            _send(self.control, {"worker_id": worker_id, "error": "file descriptors missing"})
            return
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._become_worker(message, fds)
            self.children.add(pid)
        except OSError as error:
            _send(self.control, {"worker_id": worker_id, "error": str(error)})
        else:
            _send(self.control, {"worker_id": worker_id, "pid": pid})
        finally:
            for fd in fds:
                os.close(fd)

    def _fork_spare(self) -> None:
        """
        Fork the next spare and hand the runtime its socket (none when the
        fork fails: launches then fork themselves).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            self.spare_due = time.monotonic() + SPARE_RETRY  # not again at once
            return
        if pid == 0:
            ours.close()
            self._become_spare(theirs)
        theirs.close()
        self.children.add(pid)
        try:
            data = json.dumps({"spare": pid}).encode("utf-8") + b"\n"
            sent = socket.send_fds(self.control, [data], [ours.fileno()])
            if sent < len(data):
                self.control.sendall(data[sent:])
        except OSError:
            pass  # the runtime is gone: the spare reads the end of its socket and exits
        finally:
            ours.close()
        self.spare = pid

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if self.spare == pid:  # died unused: the runtime drops its socket when told
                self.spare = None
                self.spare_due = time.monotonic() + SPARE_RETRY
            _send(self.control, {"pid": pid, "exited": os.waitstatus_to_exitcode(status)})

    def _leave(self) -> None:
        """In a forked child: drop what is the template's (its signals and sockets)."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.control.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _take(self, message: dict, fds: list[int], keep: Set[int] = frozenset()) -> None:
        """
        In the worker: take its fds (closing every other one but C{keep}),
        environment, directory and path.  C{fds}: its channel, stdout,
        stderr and output channel; or the last three only (a spare's
        channel is the socket it waited on, already in its reactor, in
        C{keep}: fds 3 and 4 are then closed).
        """
        # out of the way of 0 to 5 first: in a spare they may have any number
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
        for fd in fds:
            os.close(fd)
        channel = moved.pop(0) if len(moved) == 4 else None
        stdout, stderr, output = moved
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        if channel is not None:
            os.dup2(channel, 3)
            os.dup2(channel, 4)
        else:
            os.close(3)
            os.close(4)
        os.dup2(output, OUTPUT_FD)
        start = OUTPUT_FD + 1
        for kept in sorted(keep):
            os.closerange(start, kept)
            start = max(start, kept + 1)
        os.closerange(start, os.sysconf("SC_OPEN_MAX"))
        env = {str(k): str(v) for k, v in message["env"].items()}
        app_dir = message["app_dir"]
        os.chdir(app_dir)
        zone = os.environ.get("TZ")
        temporary = [os.environ.get(name) for name in TEMPORARY]
        _set_environment(env)
        if os.environ.get("TZ") != zone:
            time.tzset()  # the C library read TZ once, in the template: the app's own is this
        if [os.environ.get(name) for name in TEMPORARY] != temporary:
            tempfile.tempdir = None  # the template's warm-up found its own: found anew on first use
        sys.path[:] = _python_path(env, app_dir, self.base_path, self.old_path)
        # No importlib.invalidate_caches(): the app's own directories are new
        # entries with new finders, and a finder the template made notices a
        # changed directory by its mtime; invalidating every one (and listing
        # each directory again on the next import) cost a cold start 0.6 ms.
        from buntime.pool.child import main as child

        sys.argv = [child.__file__ or "buntime.pool.child"]

    def _become_worker(self, message: dict, fds: list[int]) -> NoReturn:
        """In the forked child: take the worker's fds, environment and path; run it."""
        _child_exits_after(lambda: self._work(message, fds))

    def _work(self, message: dict, fds: list[int]) -> None:
        self._leave()
        self._take(message, fds)
        from buntime.pool.child import main as child

        child.main(parent=self.own_pid)

    def _become_spare(self, waiting: socket.socket) -> NoReturn:
        """
        In the forked spare: start a worker as far as it goes without an app,
        wait on C{waiting} for a launch (or its end: exit), then become it.
        """
        _child_exits_after(lambda: self._wait_as_spare(waiting))

    def _wait_as_spare(self, waiting: socket.socket) -> None:
        self._leave()
        from buntime.pool.child import main as child

        # The reactor's fds (its epoll, its wakers) must stay clear of the
        # worker's 0 to 5 and be kept when the worker closes the rest.
        for low in range(3, OUTPUT_FD + 1):
            os.dup2(0, low)
        before = _open_fds()
        loop, reactor = child.prepare(parent=self.own_pid)
        spare = _Spare(self, waiting, before, loop, reactor)
        reactor.callWhenRunning(spare.wait)
        reactor.run()
        raise SystemExit(spare.exit_code())


@define(eq=False)
class _Spare:
    """
    A spare's running reactor waiting on C{waiting} for its launch: the
    launch's fds, environment and path taken, the worker starts in that
    reactor, which is then its own, and C{waiting} is its channel (read by
    the reactor from the start: L{_Launch}).  The runtime closing its end
    (no launch will come) stops the reactor.  C{before}: the fds open
    before the reactor was made (the worker closes them, keeping the
    reactor's).
    """

    template: Template
    waiting: socket.socket
    before: set[int]
    loop: Any
    reactor: Any
    reactors: set[int] = field(factory=set)
    data: bytes = b""
    fds: list[int] = field(factory=list)
    worker: Any = None
    failed: bool = False

    def wait(self) -> None:
        """
        Once the reactor runs: read C{waiting} as the channel it becomes,
        note the reactor's fds (kept by the worker), and wait.
        """
        from buntime.pool.child.main import ignore_group_signals

        try:
            ignore_group_signals()
            self.waiting.setblocking(False)
            self.reactor.adoptStreamConnection(
                self.waiting.fileno(), socket.AF_UNIX, _Factory(_Launch(self))
            )
            self.waiting.close()  # the reactor has its own
            self.reactors = _open_fds() - self.before
        except BaseException:
            traceback.print_exc()
            self._give_up()

    def _give_up(self) -> None:
        self.failed = True
        if self.reactor.running:
            self.reactor.stop()

    def received(self, reader: _Launch, data: bytes) -> None:
        """Part of the launch (a JSON line; what follows is the worker's)."""
        self.data += data
        line, newline, early = self.data.partition(b"\n")
        if not newline:
            return  # more of the launch to come
        transport: Any = reader.transport
        if len(self.fds) != 3:
            print(f"A spare's launch came with {len(self.fds)} fds, not 3", file=sys.stderr)
            transport.loseConnection()
            return
        try:
            self.template._take(json.loads(line), self.fds, keep=self.reactors)
            from buntime.pool.child.main import begin

            self.worker = begin(self.loop, self.reactor, (transport, early))
        except BaseException:
            traceback.print_exc()
            self._give_up()

    def lost(self) -> None:
        """The runtime closed its end before a launch (or the reactor dropped it): end."""
        if self.worker is None and self.reactor.running:
            self.reactor.stop()

    def exit_code(self) -> int:
        """The exit code once the reactor stopped: the worker's (0 without one)."""
        if self.failed:
            return 70
        return 0 if self.worker is None else int(self.worker.exit_code)


@implementer(IFileDescriptorReceiver)
class _Launch(Protocol):
    """A spare's socket until its launch: the launch's fds and its line go to the spare."""

    def __init__(self, spare: _Spare) -> None:
        self.spare = spare

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.spare.fds.append(descriptor)  # before the data it came with

    def dataReceived(self, data: bytes) -> None:
        self.spare.received(self, data)

    def connectionLost(self, reason: object = None) -> None:
        self.spare.lost()


class _Factory(Factory):
    """Hands out the one L{_Launch} (for the adopted socket)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_instance


def _child_exits_after(work: Callable[[], None]) -> NoReturn:
    """In a forked child: run C{work}, then exit with its code (70 if it failed)."""
    code = 70
    try:
        work()
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _open_fds(below: int = 256) -> set[int]:
    """
    The fds under C{below} this process has open: those C{/proc/self/fd}
    lists that are still open once the listing is done (the listing's own
    is closed by then), else (no C{/proc}) each asked for one by one (a
    system call and an exception per closed fd: some 0.15 ms).
    """
    try:
        candidates: Iterable[int] = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        candidates = range(below)
    found = set()
    for fd in candidates:
        if fd >= below:
            continue
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        found.add(fd)
    return found


def main() -> None:
    """Run the template on the control socket at fd 3."""
    from buntime.pool.child.lifeline import die_with_parent

    take_cpus()  # first: every spare and worker it forks runs there too
    die_with_parent(os.getppid())
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    preload()
    Template(control).run()


if __name__ == "__main__":
    main()

"""
A real C{twistd -n buntime} in a child process, for end-to-end tests.

Start one with L{RuntimeProcess.start}; it returns once the runtime listens
(on a free 127.0.0.1 port) and answers C{/api/health/ready} with 200, which
also proves its reactor runs (so its signal handlers are installed)::

    proc = await RuntimeProcess.start(reactor, worker_dirs=[str(apps)])
    response = await proc.get("/api/health")
    assert await proc.json(response) == {...}
    status = await proc.stop()          # SIGTERM; 0 or -15
    assert proc.unparsed == []          # every stdout line was JSON

Prefer the C{runtimes} fixture in C{conftest.py}: it passes the reactor and
stops every process it started at teardown (SIGTERM, then SIGKILL after 5 s),
whatever the test did.  Runtimes expected to fail at startup are started with
C{runtimes.spawn(...)} and awaited with C{proc.wait_exit()}.

The child's environment is this process's environment without any buntime
variable (C{RUNTIME_*}, C{PORT}, C{NODE_ENV} ...), plus
C{RUNTIME_LOG_FORMAT=json}, C{RUNTIME_WORKER_DIRS} and the given C{env}.  It
runs in a fresh temporary directory (removed when it exits), so no stray
C{.env} is read.  Exit statuses are ints: the exit code, or minus the signal
number when a signal ended the process (twistd re-raises SIGTERM/SIGINT after
a clean stop, so a clean SIGTERM stop is C{0} or C{-15}).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal as signals
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.web.client import Agent, HTTPConnectionPool

# Variables the runtime reads (SPEC §1); never inherited from the test runner.
RUNTIME_VARIABLES = frozenset(
    {
        "PORT",
        "NODE_ENV",
        "BODY_SIZE_DEFAULT",
        "BODY_SIZE_MAX",
        "DELAY_MS",
    }
)

Predicate = Callable[[dict[str, Any]], bool]


def _deferred(function: Callable[..., Any]) -> Callable[..., Any]:
    """Make a coroutine function return a Deferred (usable with await or addCallback)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(function(*args, **kwargs))

    return wrapper


class RuntimeExited(Exception):
    """The runtime process exited while a test was waiting for it."""


class RuntimeTimeout(Exception):
    """The runtime did not log, get ready or exit before the timeout."""


def twistd_command() -> list[str]:
    """C{twistd} run by this interpreter (the venv's script next to it)."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(script):
        found = shutil.which("twistd")
        if found is None:
            raise RuntimeError("cannot find the twistd script")
        script = found
    return [sys.executable, script]


def child_environment(
    worker_dirs: Sequence[str] | None, env: Mapping[str, str] | None
) -> dict[str, str]:
    """The environment for a runtime child: clean of buntime variables, then C{env}."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in RUNTIME_VARIABLES and not name.startswith("RUNTIME_")
    }
    clean["RUNTIME_LOG_FORMAT"] = "json"
    clean["RUNTIME_DRAIN_DELAY"] = (
        "0s"  # a production runtime stops at once in tests (unless given)
    )
    clean["RUNTIME_RELOAD"] = "0"  # tests that want reload ask for it
    if worker_dirs is not None:
        clean["RUNTIME_WORKER_DIRS"] = os.pathsep.join(worker_dirs)
    clean.update(env or {})
    return {name: value for name, value in clean.items() if value is not None}


def exit_status(reason: Any) -> int:
    """The exit code from a C{processEnded} reason, or minus the signal number."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return -value.signal
        return value.exitCode if value.exitCode is not None else -1
    raise value


class _Protocol(ProcessProtocol):
    """Splits the child's stdout and stderr into lines for its L{RuntimeProcess}."""

    def __init__(self, owner: RuntimeProcess) -> None:
        self._owner = owner
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._buffers:
            return
        buffered = self._buffers[fd] + data
        *lines, self._buffers[fd] = buffered.split(b"\n")
        for line in lines:
            self._owner._line(fd, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self._owner._line(fd, rest.decode("utf-8", "replace"))
        self._buffers = {1: b"", 2: b""}
        self._owner._ended(exit_status(reason))


class RuntimeProcess:
    """
    One C{twistd -n buntime} child process and what it printed.

    @ivar lines: stdout lines that parsed as JSON objects (the log records).
    @ivar unparsed: stdout lines that did not (there should be none).
    @ivar stderr: stderr lines.
    @ivar status: the exit status once it exited, else C{None}.
    @ivar exited: a Deferred firing with the exit status.
    @ivar cwd: the working directory it runs in.

    L{start}, L{started}, L{stop}, L{wait_exit}, L{terminate} and L{kill}
    return Deferreds (await them, or add callbacks).
    """

    def __init__(self, reactor: Any, cwd: str, owns_cwd: bool) -> None:
        self.reactor = reactor
        self.cwd = cwd
        self._owns_cwd = owns_cwd
        self.lines: list[dict[str, Any]] = []
        self.unparsed: list[str] = []
        self.stderr: list[str] = []
        self.status: int | None = None
        self.exited: defer.Deferred[int] = defer.Deferred()
        self.port: int | None = None
        self.transport: Any = None
        self._watchers: list[tuple[Predicate, defer.Deferred[dict[str, Any]]]] = []
        self._http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    # -- starting -------------------------------------------------------------

    @classmethod
    def spawn(
        cls,
        reactor: Any,
        *,
        worker_dirs: Sequence[str] | None,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
        listen: str | None = "tcp:0:interface=127.0.0.1",
        cwd: str | None = None,
        command: Sequence[str] | None = None,
        twistd: bool = True,
    ) -> RuntimeProcess:
        """
        Start the process and return at once (for runtimes expected to fail
        at startup: C{await proc.wait_exit()}).  C{worker_dirs=None} leaves
        C{RUNTIME_WORKER_DIRS} unset; C{listen=None} passes no C{--listen}.
        C{command} runs twistd another way (another install, another user);
        with C{twistd} false it is the whole command (the C{buntime} script,
        a zipapp), given only the runtime's options.
        """
        owns = cwd is None
        workdir = tempfile.mkdtemp(prefix="buntime-e2e-") if cwd is None else cwd
        proc = cls(reactor, workdir, owns)
        argv = [*(command or twistd_command())]
        if twistd:
            argv += ["--pidfile=", "-n", "buntime"]
        if listen is not None:
            argv.append(f"--listen={listen}")
        argv.extend(args)
        proc.transport = reactor.spawnProcess(
            _Protocol(proc),
            argv[0],
            argv,
            env=child_environment(worker_dirs, env),
            path=workdir,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        proc.transport.closeStdin()
        return proc

    @classmethod
    @_deferred
    async def start(
        cls,
        reactor: Any,
        *,
        worker_dirs: Sequence[str],
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
        cwd: str | None = None,
        timeout: float = 30.0,
        wait_ready: bool = True,
    ) -> RuntimeProcess:
        """L{spawn} then L{started}: a runtime that listens and is ready."""
        proc = cls.spawn(reactor, worker_dirs=worker_dirs, env=env, args=args, cwd=cwd)
        return await proc.started(timeout, wait_ready)

    @_deferred
    async def started(self, timeout: float = 30.0, wait_ready: bool = True) -> RuntimeProcess:
        """
        Wait until it listens (its C{buntime:web:listening} log line gives the
        port) and, with C{wait_ready}, answers C{/api/health/ready} with 200.
        A runtime that fails to start is killed and L{RuntimeExited} or
        L{RuntimeTimeout} raised with its output.
        """
        try:
            listening = await self.wait_for_message("buntime:web:listening", timeout)
            self.port = int(listening["port"])
            if wait_ready:
                await self._wait_ready(timeout)
        except BaseException:
            await self.kill()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        deadline = self.reactor.seconds() + timeout
        while True:
            if self.status is not None:
                raise RuntimeExited(self._describe("exited before it was ready"))
            try:
                response = await self.get("/api/health/ready")
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass  # not answering yet
            if self.reactor.seconds() > deadline:
                raise RuntimeTimeout(self._describe("was not ready in time"))
            await task.deferLater(self.reactor, 0.05, lambda: None)

    # -- what it says ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    @property
    def url(self) -> str:
        """C{http://127.0.0.1:<port>}, without a trailing slash."""
        if self.port is None:
            raise RuntimeError("the runtime has not reported its port yet")
        return f"http://127.0.0.1:{self.port}"

    def messages(self, message_type: str, status: str | None = None) -> list[dict[str, Any]]:
        """
        The log records so far with this C{message_type}; with C{status},
        the C{started}, C{succeeded} or C{failed} records of that action type.
        """
        if status is not None:
            return [
                line
                for line in self.lines
                if line.get("action_type") == message_type and line.get("action_status") == status
            ]
        return [line for line in self.lines if line.get("message_type") == message_type]

    def wait_for_log(
        self, predicate: Predicate, timeout: float = 10.0
    ) -> defer.Deferred[dict[str, Any]]:
        """
        The first log record (past or future) for which C{predicate} is
        true; fails with L{RuntimeTimeout} after C{timeout} seconds, or with
        L{RuntimeExited} if the process exits first.
        """
        for line in self.lines:
            if predicate(line):
                return defer.succeed(line)
        if self.status is not None:
            return defer.fail(RuntimeExited(self._describe("exited")))
        waiter: defer.Deferred[dict[str, Any]] = defer.Deferred()
        entry = (predicate, waiter)
        self._watchers.append(entry)

        def expire() -> None:
            if entry in self._watchers:
                self._watchers.remove(entry)
                waiter.errback(RuntimeTimeout(self._describe(f"no matching log in {timeout}s")))

        call = self.reactor.callLater(timeout, expire)
        return waiter.addBoth(_cancelling(call))

    def wait_for_message(
        self, message_type: str, timeout: float = 10.0
    ) -> defer.Deferred[dict[str, Any]]:
        """L{wait_for_log} for a C{message_type}."""
        return self.wait_for_log(lambda line: line.get("message_type") == message_type, timeout)

    def _line(self, fd: int, text: str) -> None:
        if fd == 2:
            self.stderr.append(text)
            return
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if text.strip():
                self.unparsed.append(text)
            return
        self.lines.append(record)
        for entry in list(self._watchers):
            predicate, waiter = entry
            if predicate(record):
                self._watchers.remove(entry)
                waiter.callback(record)

    def _ended(self, status: int) -> None:
        self.status = status
        watchers, self._watchers = self._watchers, []
        for _, waiter in watchers:
            waiter.errback(RuntimeExited(self._describe("exited")))
        self._cleanup()
        self.exited.callback(status)

    def _cleanup(self) -> None:
        if self._owns_cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)

    def _describe(self, what: str) -> str:
        tail = [json.dumps(line) for line in self.lines[-15:]] + self.unparsed[-5:]
        return (
            f"buntime (pid {self.pid}, status {self.status}) {what}\n"
            f"stdout tail:\n  " + "\n  ".join(tail) + "\nstderr:\n  " + "\n  ".join(self.stderr)
        )

    # -- talking to it --------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> defer.Deferred[Any]:
        """An HTTP request to the runtime (a new connection each time)."""
        return self._http.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> defer.Deferred[Any]:
        return self.request("GET", path, **kwargs)

    @staticmethod
    async def json(response: Any) -> Any:
        return await treq.json_content(response)

    # -- stopping -------------------------------------------------------------

    def signal(self, name: str) -> None:
        """Send a signal (C{"TERM"}, C{"INT"}, C{"KILL"}) if it still runs."""
        if self.status is None:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass  # already gone

    @_deferred
    async def stop(self, signal: str | int = "TERM", timeout: float = 40.0) -> int:
        """
        Send C{signal} (a name or number) and return the exit status; after
        C{timeout} seconds the process is killed and L{RuntimeTimeout} raised.
        """
        if isinstance(signal, int):
            signal = signals.Signals(signal).name.removeprefix("SIG")
        self.signal(signal)
        return await self.wait_exit(timeout)

    @_deferred
    async def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit status; kills it and raises L{RuntimeTimeout} after C{timeout}."""
        if self.status is not None:
            return self.status
        exited = self._exit_waiter()
        call = self.reactor.callLater(timeout, exited.cancel)
        try:
            return await exited
        except defer.CancelledError:
            await self.kill()
            raise RuntimeTimeout(self._describe(f"did not exit within {timeout}s")) from None
        finally:
            if call.active():
                call.cancel()

    @_deferred
    async def terminate(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after C{grace} seconds."""
        if self.status is None:
            self.signal("TERM")
            try:
                return await self.wait_exit(grace)
            except RuntimeTimeout:
                pass  # wait_exit killed it
        assert self.status is not None
        return self.status

    @_deferred
    async def kill(self) -> int:
        """SIGKILL it if it still runs and wait for it to be reaped."""
        if self.status is None:
            self.signal("KILL")
            await self._exit_waiter()
        assert self.status is not None
        return self.status

    def _exit_waiter(self) -> defer.Deferred[int]:
        """A new Deferred for the exit status (cancelling it leaves L{exited} alone)."""
        waiter: defer.Deferred[int] = defer.Deferred()

        def fire(status: int) -> int:
            if not waiter.called:
                waiter.callback(status)
            return status

        self.exited.addCallback(fire)
        return waiter


def _cancelling(call: Any) -> Callable[[Any], Any]:
    """A passthrough callback that cancels the delayed C{call} if still pending."""

    def cancel(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result

    return cancel


class Runtimes:
    """
    Starts L{RuntimeProcess}es and kills every one of them in L{kill_all}
    (what the C{runtimes} fixture does at teardown).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.started: list[RuntimeProcess] = []

    @_deferred
    async def start(
        self, *, timeout: float = 30.0, wait_ready: bool = True, **kwargs: Any
    ) -> RuntimeProcess:
        """L{RuntimeProcess.start} with this reactor; same keyword arguments."""
        return await self.spawn(**kwargs).started(timeout, wait_ready)

    def spawn(self, **kwargs: Any) -> RuntimeProcess:
        """L{RuntimeProcess.spawn} with this reactor; same keyword arguments."""
        proc = RuntimeProcess.spawn(self.reactor, **kwargs)
        self.started.append(proc)
        return proc

    async def kill_all(self, grace: float = 5.0) -> None:
        """Stop every process still running: SIGTERM, then SIGKILL after C{grace} s."""
        for proc in self.started:
            proc.signal("TERM")
        for proc in self.started:
            await proc.terminate(grace)

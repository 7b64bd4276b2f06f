"""
One worker process as the runtime sees it: its life (launch, ready,
retirement, death), what it writes, and its numbers.  Its requests are the
L{InFlight} side (L{buntime.pool.inflight}); its channel is a
L{WorkerChannel} (L{buntime.pool.channel}).
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from attrs import define, field
from eliot import Action
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.once import Once
from buntime.pool.channel import WorkerChannel
from buntime.pool.commands import Idle, Terminate
from buntime.pool.inflight import (
    InFlight,
    WorkerExchange,
    WorkerGone,
    _listener_failed,
)
from buntime.pool.launch.launcher import ILauncher, LaunchedProcess, LaunchSpec
from buntime.pool.output import Assembler, Record, Write
from buntime.pool.rss import read_rss
from buntime.pool.status import (
    ACTIVE,
    EPHEMERAL,
    IDLE,
    OFFLINE,
    READY,
    STARTING,
    STOPPING,
    WorkerStatus,
)
from buntime.pool.websocket import WorkerSocket

KILL_WAIT = 5.0
"""Seconds to wait for a process to go away after SIGKILL before giving up on it."""


class StartupError(Exception):
    """The worker never became ready: C{error} is one line, C{detail} a traceback."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


@define(eq=False)
class Worker(InFlight):
    """
    One worker process and what the pool knows about it.  C{ready} fires when
    the app is loaded (or fails with L{StartupError}); C{exited} with the exit
    code once the process is gone.  Listeners in C{on_finished} hear about
    every finished L{WorkerExchange}, those in C{on_gone} about the worker's end.
    """

    id: str
    app_key: str
    name: str
    version: str
    clock: IReactorTime = field(repr=False)
    ephemeral: bool = False
    status: WorkerStatus = STARTING
    pid: int | None = None
    launch_error: BaseException | None = None
    kind: str | None = None
    process: LaunchedProcess | None = field(default=None, repr=False)
    protocol: WorkerChannel = field(init=False, repr=False)
    created_at: float = field(init=False)
    last_used: float = field(init=False)
    request_count: int = 0
    error_count: int = 0
    responded: int = 0
    total_response_time: float = 0.0
    consecutive_timeouts: int = 0
    memory_checked_at: float = float("-inf")
    """When the pool last read its RSS against C{maxMemory} (see L{buntime.pool.rss})."""
    memory_recheck: IDelayedCall | None = field(default=None, repr=False)
    """The read put off until L{memory_checked_at} is L{buntime.pool.rss.CHECK_INTERVAL} old."""
    idle_sent: bool = False
    healthy: bool = True
    on_finished: list[Callable[[Worker, WorkerExchange], object]] = field(factory=list, repr=False)
    on_gone: list[Callable[[Worker, str], object]] = field(factory=list, repr=False)
    _ready: Once = field(factory=Once, repr=False)
    _exited: Once = field(factory=Once, repr=False)
    _drained: Once | None = field(default=None, repr=False)
    _exchanges: dict[int, WorkerExchange] = field(factory=dict, repr=False)
    _early: dict[int, float] = field(factory=dict, repr=False)
    """The requests sent while it starts (their timeouts), until it is ready."""
    _next_rid: int = 1
    _ready_timer: IDelayedCall | None = field(default=None, repr=False)
    _capture: list[str] | None = field(default=None, repr=False)
    _output: Assembler = field(init=False, repr=False)
    _recent: OrderedDict[str, Action] = field(factory=OrderedDict, repr=False)
    """The eliot actions of requests lately finished, by request id (what the app says late)."""
    _connected: bool = False
    _expiry: IDelayedCall | None = field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.protocol = WorkerChannel(self)
        self.created_at = self.last_used = self.clock.seconds()
        self._output = Assembler(self.clock, self._log_output)

    @property
    def ready(self) -> Deferred:
        """Fires with C{None} once the app is loaded, or fails with L{StartupError}."""
        return self._ready.wait()

    @property
    def exited(self) -> Deferred:
        """Fires with the exit code (C{None} if unknown) once the process is gone."""
        return self._exited.wait()

    @property
    def is_ready(self) -> bool:
        return self.status in READY

    @property
    def has_exited(self) -> bool:
        return self._exited.fired

    @property
    def in_flight(self) -> int:
        return len(self._exchanges)

    @property
    def takes_early(self) -> bool:
        """Whether it is starting with its channel up: a request may go ahead of its C{Ready}."""
        return self.status == STARTING and self._connected and self.healthy

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    # -- lifecycle -------------------------------------------------------

    def launch(self, launcher: ILauncher, app_dir: str, env: Any, ready_timeout: float) -> None:
        """Start the process; C{ready} fails if the app is not loaded in C{ready_timeout}."""
        spec = LaunchSpec(worker_id=self.id, app_dir=app_dir, env=env)
        self._ready_timer = self.clock.callLater(
            ready_timeout, self._ready_timed_out, ready_timeout
        )
        try:
            d = launcher.launch(spec, self.protocol, self.output_received)
        except Exception:
            d = Deferred()
            d.errback()
        d.addCallbacks(self._launched, self._launch_failed)

    def _launched(self, process: LaunchedProcess) -> None:
        self.process = process
        self.pid = process.pid
        if self.status in (STOPPING, OFFLINE):  # given up on while it was being launched
            self.kill()
        process.exited.addBoth(self._process_exited)

    def _launch_failed(self, failure: Failure) -> None:
        self.launch_error = failure.value
        reason = f"could not be launched: {failure.getErrorMessage()}"
        self._fail_startup(StartupError(f"worker {reason}"))
        self._gone(reason)
        self._exited.fire(None)

    def _ready_timed_out(self, seconds: float) -> None:
        self._ready_timer = None
        self._fail_startup(StartupError(f"worker did not report ready within {seconds:g}s"))

    def _fail_startup(self, error: StartupError) -> None:
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None
        if self.status == STARTING:
            self.healthy = False
            self._ready.fire(Failure(error))
            self._fail_early(str(error))

    def ready_received(self, pid: int, kind: str) -> None:
        if self.status != STARTING:
            return
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None
        self.kind = kind
        if self.pid is None:
            self.pid = pid
        self.status = EPHEMERAL if self.ephemeral else ACTIVE
        self.last_used = self.clock.seconds()
        if self._early:
            self._ready_for_early()
        self._ready.fire(None)

    def startup_failed(self, error: str, detail: str) -> None:
        self._fail_startup(StartupError(error, detail))

    def channel_made(self) -> None:
        self._connected = True

    def channel_lost(self, reason: Failure) -> None:
        self._connected = False
        self._gone("closed its channel")

    def _process_exited(self, result: object) -> None:
        self._output.flush()
        code = result if isinstance(result, int) else None
        self._gone(f"exited with code {code}")
        self._close_channel()
        self._exited.fire(code)

    def _gone(self, reason: str) -> None:
        """The worker can serve nothing more: fail whatever waits on it."""
        if self.status == OFFLINE:
            return
        was_stopping = self.status == STOPPING
        self._fail_startup(StartupError(f"worker {reason} before it was ready"))
        self.status = OFFLINE
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        for exchange in list(self._exchanges.values()):
            self.error_count += 1
            error = WorkerGone(f"worker {self.label} (pid {self.pid}) {reason}")
            self._finish(exchange, "gone")
            if exchange.stream is not None:
                exchange.stream.fail(error)
            else:
                exchange.response.errback(error)
        if not was_stopping:
            self.healthy = False
        for listener in list(self.on_gone):
            _call(listener, self, reason)

    def _close_channel(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.loseConnection()

    def kill(self) -> None:
        """SIGKILL the process (if it is still there)."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        if self.process is None or self.has_exited:
            return
        try:
            self.process.signal(signum)
        except Exception as error:
            log(
                "debug",
                "buntime:worker:signal",
                "Could not signal worker",
                **self.tags(),
                signal=int(signum),
                error=str(error),
            )

    def send_idle(self) -> None:
        """Tell the app it has been idle a while (its C{on_idle} hook)."""
        self.idle_sent = True
        self.status = IDLE
        self.protocol.callRemote(Idle).addErrback(lambda _: None)

    async def stop(self, delay: float, grace: float, terminate: bool = True) -> None:
        """
        Retire gracefully: let requests in flight finish (at most C{grace}
        seconds), send L{Terminate} (C{on_terminate}; at most C{grace}; not
        without C{terminate}: the app is stuck in a call it would wait for),
        close the channel, and SIGKILL the process if it is still there after
        C{delay}.
        """
        if self.status != OFFLINE:
            self._fail_startup(StartupError("worker was stopped before it was ready"))
            was_ready = self.is_ready
            self.status = STOPPING
            for exchange in self._exchanges.values():
                if type(exchange.stream) is WorkerSocket:
                    exchange.stream.retire()  # its client closes, then the app's call ends
            if self._exchanges:
                await self._bounded(self._drain_waiter(), grace)
            if terminate and was_ready and self._connected and self.status == STOPPING:
                await self._bounded(self.protocol.callRemote(Terminate), grace)
            self._close_channel()
        if self.process is None or await self._bounded(self._exited.wait(), delay):
            return
        self.kill()
        if not await self._bounded(self._exited.wait(), KILL_WAIT):
            log(
                "warn",
                "buntime:worker:unkillable",
                "Worker did not exit after SIGKILL",
                **self.tags(),
            )

    async def _bounded(self, d: Deferred, seconds: float) -> bool:
        """Wait for C{d} at most C{seconds}; C{True} when it fired successfully in time."""
        try:
            await d.addTimeout(seconds, self.clock)
        except Exception:
            return False
        return True

    def _drain_waiter(self) -> Deferred:
        if self._drained is None:
            self._drained = Once()
        return self._drained.wait()

    def dump_stack(self, wait: float) -> Deferred:
        """
        Ask the process for its Python stack (SIGUSR1; the child's faulthandler
        writes it to fd 2) and fire with the raw stderr lines seen in C{wait} seconds.
        """
        if self.process is None or self.status == OFFLINE:
            return succeed("")
        self._capture = []
        self.send_signal(signal.SIGUSR1)
        done: Deferred = Deferred()

        def collected() -> None:
            lines, self._capture = self._capture or [], None
            done.callback("\n".join(lines))

        self.clock.callLater(wait, collected)
        return done

    # -- output and logs ---------------------------------------------------

    @property
    def context(self) -> str:
        """The log context of what the app itself says: C{worker:<app>@<version>}."""
        return f"worker:{self.name}@{self.version}"

    def tags(self) -> dict[str, object]:
        """Fields that name this worker in log messages."""
        return {"app": self.name, "version": self.version, "worker_id": self.id, "pid": self.pid}

    def output_received(self, write: Write) -> None:
        """
        What the app wrote, to be logged once its record is complete; raw
        stderr lines are held back while a stack dump is read.
        """
        if self._capture is not None and write.raw and write.stream == "stderr":
            self._capture.append(write.text.rstrip("\n"))
            return
        self._output.feed(write)

    def _log_output(self, record: Record) -> None:
        fields: dict[str, object] = {}
        if record.request_id is not None:
            fields["request_id"] = record.request_id
        if record.continued:
            fields["continued"] = True
        with self._told_of(record.request_id):
            log(
                "warn" if record.stream == "stderr" else "info",
                "buntime:worker:output",
                record.text,
                context=self.context,
                **self.tags(),
                stream=record.stream,
                **fields,
            )

    def _told_of(self, request_id: str | None) -> AbstractContextManager[object]:
        """
        The eliot context of request C{request_id} (in flight, or lately
        finished): what the worker says of a request sits in its task.
        """
        action = self._recent.get(request_id) if request_id is not None else None
        if request_id is not None and action is None:
            for exchange in self._exchanges.values():
                if exchange.request_id == request_id:
                    action = exchange.action
                    break
        return action.context() if action is not None else nullcontext()

    # -- stats -------------------------------------------------------------

    def rss_mb(self) -> float:
        """Resident memory of the process in MB (0 when unknown)."""
        if self.pid is None or self.status == OFFLINE:
            return 0.0
        size = read_rss(self.pid)
        return round(size / (1024 * 1024), 2) if size is not None else 0.0

    def stats(self) -> dict[str, object]:
        """Per-worker numbers as SPEC section 3 names them."""
        now = self.clock.seconds()
        total_ms = self.total_response_time * 1000
        return {
            "id": self.id,
            "app": self.name,
            "version": self.version,
            "key": self.app_key,
            "ageMs": round((now - self.created_at) * 1000),
            "idleMs": 0 if self._exchanges else round((now - self.last_used) * 1000),
            "requestCount": self.request_count,
            "errorCount": self.error_count,
            "avgResponseTimeMs": round(total_ms / self.responded, 2) if self.responded else 0.0,
            "totalResponseTimeMs": round(total_ms, 2),
            "status": self.status,
            "inFlight": len(self._exchanges),
            "pid": self.pid,
            "rssMB": self.rss_mb(),
        }


def _call(listener: Callable[..., object], *args: object) -> None:
    """Run a listener; its failure is logged, never passed to the caller."""
    try:
        listener(*args)
    except Exception as error:
        _listener_failed(error)

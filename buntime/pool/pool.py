"""
The worker pool: which worker serves a request, when workers start and
stop (SPEC section 3), and the numbers the metrics plugin shows.

Apps with C{ttl: 0} get a fresh worker per request, bounded by
C{ephemeral_concurrency} with a bounded queue.  Other apps keep up to
C{maxInstances} workers, each serving up to C{maxConcurrency} requests at
once, with a bounded per-app queue that also holds requests while a worker
cold-starts; at most C{pool_size} such workers live at once, the least
recently used app giving way.

Choices the spec leaves open: C{timeout} bounds the time until the response
starts (a stream may then run on); another instance starts when every one
has 80% of its slots busy; C{on_idle} is sent after C{idleTimeout}/2 idle;
a crash-looping app is respawned at once after one failure, then after
0.5 s, 1 s, 2 s ... up to 30 s, answering from its last failure meanwhile.
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple
from uuid import uuid4

from attrs import define, field, frozen
from eliot import Action
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from buntime.http import Request, Response
from buntime.logs import log, request_fields
from buntime.logs.types import WORKER_CRASH, WORKER_RETIRE, WORKER_START, WORKER_START_FAILED
from buntime.pool.deps import DependencyInstaller, InstallError
from buntime.pool.inflight import AppError, RequestTimedOut, WorkerExchange, WorkerGone
from buntime.pool.launch.launcher import ILauncher, LauncherUnavailable
from buntime.pool.status import READY, STARTING
from buntime.pool.worker import StartupError, Worker

TIMEOUT_STRIKES = 3
"""Timeouts in a row after which a persistent worker is recycled."""
STACK_WAIT = 0.2
"""Seconds to collect a worker's stack dump from stderr before killing it."""
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0
"""Crash-loop backoff: no wait after one failure, then 0.5 s doubling up to 30 s."""
NEAR_FULL = 0.8
"""Share of C{maxConcurrency} in use at which another instance is started."""
RETRY_AFTER = "1"


@frozen
class PoolConfig:
    """Pool-wide settings (from L{buntime.config}); C{delay} is DELAY_MS in seconds."""

    pool_size: int
    ephemeral_concurrency: int
    ephemeral_queue: int
    delay: float
    production: bool
    ready_timeout: float = 30.0


@frozen
class PoolApp:
    """One app version as the pool needs it; C{key} (its directory) keys its workers."""

    key: str
    name: str
    version: str
    dir: str
    manifest: Any  # buntime.manifest.AppManifest
    env: Mapping[str, str]
    label: str = field(init=False, eq=False)
    """C{name@version}."""

    @label.default
    def _label(self) -> str:
        return f"{self.name}@{self.version}"


class _Refused(Exception):
    """Answer the client with C{response} instead of a worker's."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@define(eq=False)
class _Waiter:
    """A request waiting in a queue: fires with a worker (or C{None}: a slot)."""

    deferred: Deferred = field(init=False)
    timer: IDelayedCall | None = None


@define(eq=False)
class _AppState:
    """The pool's view of one app directory."""

    app: PoolApp
    workers: list[Worker] = field(factory=list)
    queue: deque[_Waiter] = field(factory=deque)
    failures: int = 0
    retry_at: float = 0.0
    last_failure: Response | None = None
    checker: LoopingCall | None = None
    installed: bool = False


class _Survey(NamedTuple):
    """What L{WorkerPool._survey} sees of an app's workers."""

    warm: bool
    """A worker is ready and healthy."""
    free: Worker | None
    """The persistent worker to send a request to now, if any."""
    wants_another: bool
    """Another persistent worker should start."""


def _busy(code: str, message: str) -> Response:
    return Response.error(503, code, message, headers={"Retry-After": RETRY_AFTER})


class WorkerPool:
    """
    Runs requests on workers.  L{handle} never fails: every problem comes
    back as a JSON error L{Response}.  Hooks in C{on_worker_spawn} (called
    once a worker is ready) and C{on_worker_terminate} (once it is retired or
    has died) take C{(worker, app)}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: PoolConfig,
        launcher: ILauncher,
        installer: DependencyInstaller | None = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._launcher = launcher
        self._installer = installer or DependencyInstaller(reactor)  # type: ignore[arg-type]
        self._apps: OrderedDict[str, _AppState] = OrderedDict()
        self._names: dict[str, str] = {}
        self._stopping: dict[Worker, Deferred] = {}
        self._ephemeral_running = 0
        self._ephemeral_holders: set[Worker] = set()
        self._ephemeral_queue: deque[_Waiter] = deque()
        self._running = False
        self._closing = False
        self._started_at: float | None = None
        self._response_times: deque[float] = deque(maxlen=100)
        self._counts = dict.fromkeys(
            ("hits", "misses", "evictions", "requests", "created", "failed", "retired"), 0
        )
        self._events: Counter[tuple[str, str, str]] = Counter()
        self.on_worker_spawn: list[Callable[[Worker, PoolApp], object]] = []
        self.on_worker_terminate: list[Callable[[Worker, PoolApp], object]] = []

    # -- service lifecycle ---------------------------------------------------

    def start(self) -> None:
        """Start the clocks: uptime and the periodic ttl/idle checks."""
        if self._running:
            return
        self._running, self._closing = True, False
        self._started_at = self._reactor.seconds()
        for state in self._apps.values():
            self._start_checker(state)

    def stop(self, deadline: float = 30.0) -> Deferred:
        """
        Retire every worker (drain, Terminate, kill after DELAY_MS) and fire
        once all have exited; whatever is still alive after C{deadline}
        seconds is SIGKILLed.
        """
        return Deferred.fromCoroutine(self._stop(deadline))

    async def _stop(self, deadline: float) -> None:
        self._running, self._closing = False, True
        for state in list(self._apps.values()):
            self._stop_checker(state)
            self._refuse_queue(state.queue, _busy("SHUTTING_DOWN", "The runtime is stopping"))
            for worker in list(state.workers):
                self._discard(state, worker, "runtime stopping", grace=state.app.manifest.timeout)
        self._refuse_queue(self._ephemeral_queue, _busy("SHUTTING_DOWN", "The runtime is stopping"))
        killer = self._reactor.callLater(deadline, self._kill_all)
        try:
            await gatherResults(list(self._stopping.values()), consumeErrors=True)
        finally:
            if killer.active():
                killer.cancel()

    def _kill_all(self) -> None:
        for worker in list(self._stopping):
            worker.kill()

    def retire_app(self, app_dir: str) -> Deferred:
        """Forget an app (replaced or deleted): drain and stop its workers."""
        state = self._apps.pop(app_dir, None)
        if state is None:
            return succeed(None)
        self._stop_checker(state)
        for label in [k for k, v in self._names.items() if v == app_dir]:
            del self._names[label]
        self._refuse_queue(state.queue, _busy("APP_RETIRED", f"{state.app.label} was replaced"))
        grace = state.app.manifest.timeout
        stops = [self._discard(state, w, "app retired", grace=grace) for w in list(state.workers)]
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- requests --------------------------------------------------------------

    def handle(self, app: PoolApp, request: Request, base: str) -> Deferred:
        """
        Run C{request} (URL relative to the app, C{base} stripped) on a
        worker of C{app}; fires with a L{Response}, an error one included.
        Cancel it when the client goes away.  The worker gives the app
        C{base} as its C{x-base} header (a client's own is dropped).

        A request for a warm worker with a free slot is sent before this
        returns, with no coroutine in between (the hot path).
        """
        arrived = self._reactor.seconds()
        self._counts["requests"] += 1
        sent = None  # the app's state when the request went straight to a worker
        try:
            if self._closing:
                raise _Refused(_busy("SHUTTING_DOWN", "The runtime is stopping"))
            state = self._enter(app)
            manifest = app.manifest
            if manifest.ttl > 0 and (state.installed or not manifest.auto_install):
                worker = self._warm_worker(state)
                if worker is not None:  # a warm worker with a free slot: no waiting
                    answer = self._send(state, worker, request, base)
                    sent = state
                else:
                    answer = Deferred.fromCoroutine(self._queued(state, request, base))
            else:
                answer = Deferred.fromCoroutine(self._prepared(state, request, base))
        except Exception:
            answer = fail()
        return answer.addBoth(self._answered, app, arrived, sent)

    def _answered(
        self, result: object, app: PoolApp, arrived: float, sent: _AppState | None = None
    ) -> object:
        """
        Every outcome as a response (but cancellation), and its time counted;
        with C{sent}, first what L{_run} does with a worker's answer.
        """
        if sent is not None:
            result = self._ran(result, sent)
        if isinstance(result, Failure):
            if result.check(_Refused):
                result = result.value.response
            elif result.check(CancelledError) or not result.check(Exception):
                return result
            else:
                log(
                    "error",
                    "buntime:pool:internal",
                    f"Pool failure on {app.label}",
                    app=app.name,
                    version=app.version,
                    error=repr(result.value),
                )
                result = Response.error(
                    500, "INTERNAL_ERROR", f"Internal error serving {app.label}"
                )
        self._response_times.append((self._reactor.seconds() - arrived) * 1000)
        return result

    async def _prepared(self, state: _AppState, request: Request, base: str) -> Response:
        """The paths that wait first: installing dependencies, ephemeral workers."""
        if state.app.manifest.auto_install and not state.installed:
            await self._install(state)
        if state.app.manifest.ttl <= 0:
            return await self._ephemeral(state, request, base)
        return await self._persistent(state, request, base)

    def _enter(self, app: PoolApp) -> _AppState:
        """The app's state (made on first use), after the name@version collision check."""
        label = app.label
        owner = self._names.get(label)
        if owner == app.key:  # the usual: this directory has the name
            state = self._apps.get(app.key)
            if state is not None:
                state.app = app
                self._apps.move_to_end(app.key)  # the most recently used
                return state
        if owner is not None and owner != app.key and not os.path.isdir(owner):
            # The claimant was removed by hand: forget it, as retire_app would.
            self.retire_app(owner)
            owner = None
        if owner is not None and owner != app.key and owner in self._apps:
            raise _Refused(
                Response.error(
                    500,
                    "APP_COLLISION",
                    f"App {app.label} is claimed by two directories: {owner} and {app.dir}",
                )
            )
        self._names[app.label] = app.key
        state = self._apps.get(app.key)
        if state is None:
            state = self._apps[app.key] = _AppState(app)
            if self._running:
                self._start_checker(state)
        else:
            state.app = app
            self._apps.move_to_end(app.key)
        return state

    async def _install(self, state: _AppState) -> None:
        try:
            await self._installer.ensure(state.app.dir)
        except InstallError as error:
            message = f"Installing the dependencies of {state.app.label} failed: {error}"
            raise _Refused(Response.error(500, "INSTALL_FAILED", message)) from None
        state.installed = True

    def _persistent(self, state: _AppState, request: Request, base: str) -> Deferred:
        worker = self._warm_worker(state)
        if worker is not None:
            return self._run(state, worker, request, base)
        return Deferred.fromCoroutine(self._queued(state, request, base))

    def _warm_worker(self, state: _AppState) -> Worker | None:
        """
        A worker of a persistent app free to take a request now, or C{None}:
        the request queues.  Counts the hit or miss and scales the app.
        """
        if state.last_failure is not None:
            self._refuse_if_failing(state)
        survey = self._survey(state)
        self._counts["hits" if survey.warm else "misses"] += 1
        if survey.wants_another:
            failures = state.failures
            self._start_another(state)
            if survey.free is None and state.failures > failures and state.last_failure:
                raise _Refused(state.last_failure)  # the worker could not even be launched
        return survey.free

    async def _queued(self, state: _AppState, request: Request, base: str) -> Response:
        worker = await self._wait(state)
        return await self._run(state, worker, request, base)

    async def _ephemeral(self, state: _AppState, request: Request, base: str) -> Response:
        self._refuse_if_failing(state)
        self._counts["misses"] += 1
        await self._ephemeral_slot(state)
        try:
            worker = self._spawn(state, ephemeral=True)
        except BaseException:
            self._release_ephemeral_slot()
            raise
        self._ephemeral_holders.add(worker)
        try:
            await worker.ready
        except StartupError:
            raise _Refused(state.last_failure or self._crash_response(state)) from None
        except BaseException:
            self._discard(state, worker, "request ended early", grace=0)
            raise
        # From here on, the worker's finished request (or its death) stops it.
        return await self._run(state, worker, request, base)

    def _run(self, state: _AppState, worker: Worker, request: Request, base: str) -> Deferred:
        """Send C{request} to C{worker}; fires with its response, or the error response."""
        return self._send(state, worker, request, base).addBoth(self._ran, state)

    def _send(self, state: _AppState, worker: Worker, request: Request, base: str) -> Deferred:
        """Send C{request} to C{worker}: L{Worker.request}, and a retirement at C{maxRequests}."""
        manifest = state.app.manifest
        fields = request_fields.get()
        if fields is not None:
            fields["worker_id"] = worker.id  # for the request's log line
        pending = worker.request(request, base, manifest.timeout)
        if not worker.ephemeral and worker.request_count >= manifest.max_requests:
            self._discard(state, worker, "maxRequests reached", grace=manifest.timeout)
        return pending

    def _ran(self, result: object, state: _AppState) -> object:
        """The worker's answer (its app is healthy again), or the error response of a failure."""
        if isinstance(result, Failure):
            return self._run_failed(result, state)
        state.failures = 0
        return result

    def _run_failed(self, failure: Failure, state: _AppState) -> object:
        manifest = state.app.manifest
        label = state.app.label
        error = failure.value
        if isinstance(error, RequestTimedOut):
            message = f"App {label} did not answer within {manifest.timeout:g}s"
            return Response.error(504, "WORKER_TIMEOUT", message)
        if isinstance(error, WorkerGone):
            return self._crash_response(state, str(error))
        if isinstance(error, AppError):
            message = self._detail(f"App {label} failed on this request", str(error))
            return Response.error(500, "APP_ERROR", message)
        return failure

    def _crash_response(self, state: _AppState, error: str = "the worker died") -> Response:
        message = self._detail(f"The worker for {state.app.label} crashed", error)
        return Response.error(502, "WORKER_CRASHED", message)

    def _detail(self, message: str, error: str) -> str:
        """C{message}, with the error text appended outside production."""
        return message if self._config.production or not error else f"{message}: {error}"

    # -- queues ----------------------------------------------------------------

    async def _wait(self, state: _AppState) -> Worker:
        """Queue for a worker slot of this app (also while one cold-starts)."""
        manifest = state.app.manifest
        if len(state.queue) >= manifest.max_queue:
            raise _Refused(_busy("QUEUE_FULL", f"Too many requests waiting for {state.app.label}"))
        message = f"No worker of {state.app.label} was free within {manifest.timeout:g}s"
        late = Response.error(504, "QUEUE_TIMEOUT", message)
        return await self._enqueue(state.queue, manifest.timeout, late)

    async def _ephemeral_slot(self, state: _AppState) -> None:
        """Take one of the C{ephemeral_concurrency} slots, queueing for one if needed."""
        if self._ephemeral_running < self._config.ephemeral_concurrency:
            self._ephemeral_running += 1
            return
        if len(self._ephemeral_queue) >= self._config.ephemeral_queue:
            raise _Refused(_busy("QUEUE_FULL", "Too many requests waiting for a fresh worker"))
        timeout = state.app.manifest.timeout
        late = Response.error(504, "QUEUE_TIMEOUT", f"No worker slot was free within {timeout:g}s")
        await self._enqueue(self._ephemeral_queue, timeout, late)

    async def _enqueue(self, queue: deque[_Waiter], timeout: float, late: Response) -> Any:
        waiter = _Waiter()
        waiter.deferred = Deferred(lambda _: self._forget(queue, waiter))
        waiter.timer = self._reactor.callLater(timeout, self._expire, queue, waiter, late)
        queue.append(waiter)
        return await waiter.deferred

    def _forget(self, queue: deque[_Waiter], waiter: _Waiter) -> None:
        """The client went away: drop its queued request."""
        if waiter in queue:
            queue.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _expire(self, queue: deque[_Waiter], waiter: _Waiter, late: Response) -> None:
        waiter.timer = None
        self._forget(queue, waiter)
        waiter.deferred.errback(_Refused(late))

    def _wake(self, queue: deque[_Waiter], result: Worker | None) -> bool:
        """Hand C{result} to the first waiter; C{False} if none waits."""
        if not queue:
            return False
        waiter = queue.popleft()
        self._forget(queue, waiter)
        waiter.deferred.callback(result)
        return True

    def _refuse_queue(self, queue: deque[_Waiter], response: Response) -> None:
        while queue:
            waiter = queue.popleft()
            self._forget(queue, waiter)
            waiter.deferred.errback(_Refused(response))

    def _pump(self, state: _AppState) -> None:
        """Give free worker slots to queued requests; scale out if some still wait."""
        while state.queue:
            worker = self._free_worker(state)
            if worker is None:
                break
            self._wake(state.queue, worker)  # the request is sent before this returns
        if state.queue:
            self._scale(state)

    def _release_ephemeral_slot(self) -> None:
        if not self._wake(self._ephemeral_queue, None):
            self._ephemeral_running -= 1

    # -- workers ---------------------------------------------------------------

    def _survey(self, state: _AppState) -> _Survey:
        """
        One look at the app's workers (see L{_Survey}): the least busy ready
        persistent worker with a free slot (the first of equals), and
        whether another should start: none of the persistent workers is
        starting, none that is healthy is under C{NEAR_FULL} of its
        C{maxConcurrency}, and there are fewer than C{maxInstances}.
        """
        manifest = state.app.manifest
        concurrency, most = manifest.max_concurrency, manifest.max_requests
        threshold = max(1, math.ceil(NEAR_FULL * concurrency))
        warm = starting = roomy = False
        live = 0
        free, least = None, concurrency
        for worker in state.workers:
            status = worker.status
            healthy = worker.healthy
            ready = status in READY
            if ready and healthy:
                warm = True
            if worker.ephemeral:
                continue
            live += 1
            if status == STARTING:
                starting = True
            load = worker.in_flight
            if healthy and load < threshold:
                roomy = True
            if ready and healthy and load < least and worker.request_count < most:
                free, least = worker, load
        wants = not (starting or roomy) and live < manifest.max_instances
        return _Survey(warm, free, wants)

    def _free_worker(self, state: _AppState) -> Worker | None:
        """The least busy ready worker of the app with a free slot."""
        return self._survey(state).free

    def _scale(self, state: _AppState) -> None:
        """Start a worker when the app has none, or all are near full (up to maxInstances)."""
        if self._survey(state).wants_another:
            self._start_another(state)

    def _start_another(self, state: _AppState) -> None:
        """Start one more persistent worker, unless the app backs off or the pool is full."""
        if self._reactor.seconds() < state.retry_at or not self._make_room(state):
            return
        self._spawn(state, ephemeral=False)

    def _make_room(self, state: _AppState) -> bool:
        """Keep within C{pool_size}: retire a worker of the least recently used app."""
        alive = sum(1 for s in self._apps.values() for w in s.workers if not w.ephemeral)
        if alive < self._config.pool_size:
            return True
        for other in self._apps.values():  # least recently used first
            victims = [w for w in other.workers if not w.ephemeral]
            if other is state or not victims:
                continue
            victim = min(victims, key=lambda w: (not w.is_ready, w.in_flight > 0, w.last_used))
            self._counts["evictions"] += 1
            grace = other.app.manifest.timeout
            self._discard(other, victim, "evicted (pool full)", grace=grace, replace=False)
            return True
        return False

    def _spawn(self, state: _AppState, ephemeral: bool) -> Worker:
        app = state.app
        worker = Worker(
            id=str(uuid4()),
            app_key=app.key,
            name=app.name,
            version=app.version,
            clock=self._reactor,
            ephemeral=ephemeral,
        )
        state.workers.append(worker)
        self._counts["created"] += 1
        worker.on_finished.append(partial(self._request_finished, state))
        worker.on_gone.append(partial(self._worker_gone, state))
        starting = WORKER_START(
            level="info",
            message=f"Starting a worker for {app.label}",
            ephemeral=ephemeral,
            **worker.tags(),
        )
        env = {**app.env, "WORKER_ID": worker.id}
        worker.launch(self._launcher, app.dir, env, self._config.ready_timeout)
        started = self._reactor.seconds()
        worker.ready.addCallbacks(
            lambda _: self._worker_ready(state, worker, started, starting),
            lambda failure: self._worker_failed_start(state, worker, failure, started, starting),
        )
        return worker

    def _worker_ready(
        self, state: _AppState, worker: Worker, started: float, starting: Action
    ) -> None:
        elapsed = round((self._reactor.seconds() - started) * 1000)
        starting.add_success_fields(
            level="info",
            message=f"Worker for {state.app.label} is ready",
            kind=worker.kind,
            startup_ms=elapsed,
            **worker.tags(),
        )
        starting.finish()
        self._events[state.app.label, "started", ""] += 1
        self._notify(self.on_worker_spawn, worker, state.app)
        if not worker.ephemeral:
            self._pump(state)

    def _worker_failed_start(
        self, state: _AppState, worker: Worker, failure: Failure, started: float, starting: Action
    ) -> None:
        if worker not in state.workers:
            starting.add_success_fields(
                level="info",
                message="Stopped before it was ready",
                kind=worker.kind,
                startup_ms=round((self._reactor.seconds() - started) * 1000),
                **worker.tags(),
            )
            starting.finish()
            return  # stopped on purpose while it was starting
        error = failure.value
        text = error.error if isinstance(error, StartupError) else failure.getErrorMessage()
        detail = error.detail if isinstance(error, StartupError) else ""
        with starting.context():
            WORKER_START_FAILED.log(
                level="error",
                message=f"Worker for {state.app.label} failed to start",
                error=text,
                detail=detail,
                **worker.tags(),
            )
        starting.finish(failure.value)
        self._events[state.app.label, "start_failed", ""] += 1
        message = self._detail(f"App {state.app.label} failed to start", text)
        self._worker_failed(state, worker, Response.error(502, "WORKER_START_FAILED", message))

    def _worker_gone(self, state: _AppState, worker: Worker, reason: str) -> None:
        if worker not in state.workers:
            return  # retired or already counted as failed
        WORKER_CRASH.log(
            level="error",
            message=f"Worker for {state.app.label} {reason}",
            reason=reason,
            **worker.tags(),
        )
        # "exited with code 1", "closed its channel", "could not be launched: ..."
        self._events[state.app.label, "crashed", reason.split(" with ")[0].split(":")[0]] += 1
        if isinstance(worker.launch_error, LauncherUnavailable):
            # The fork template is down: not the app's fault, and soon over.
            response = Response.error(
                503,
                "WORKERS_UNAVAILABLE",
                f"Workers cannot be started right now ({worker.launch_error}); retry shortly",
                {"retry-after": "1"},
            )
        else:
            response = self._crash_response(state, f"worker {reason}")
        self._worker_failed(state, worker, response)

    def _worker_failed(self, state: _AppState, worker: Worker, response: Response) -> None:
        """A critical error: count it, back off, and answer waiting requests if none is left."""
        if worker not in state.workers:
            return
        worker.healthy = False
        state.failures += 1
        delay = 0.0 if state.failures <= 1 else BACKOFF_BASE * 2 ** (state.failures - 2)
        state.retry_at = self._reactor.seconds() + min(delay, BACKOFF_MAX)
        state.last_failure = response
        self._discard(state, worker, "unhealthy", grace=0, failed=True, replace=False)
        if not any(not w.ephemeral for w in state.workers):
            self._refuse_queue(state.queue, response)

    def _refuse_if_failing(self, state: _AppState) -> None:
        """While a crash-looping app backs off, answer from its last failure."""
        if state.last_failure is None or self._reactor.seconds() >= state.retry_at:
            return
        if not any(w.is_ready and w.healthy and not w.ephemeral for w in state.workers):
            raise _Refused(state.last_failure)

    def _discard(
        self,
        state: _AppState,
        worker: Worker,
        reason: str,
        grace: float,
        failed: bool = False,
        kill: bool = False,
        replace: bool = True,
    ) -> Deferred:
        """
        Take C{worker} out of service and stop it: drain for up to C{grace}
        seconds, or SIGKILL it at once with C{kill}.  With C{replace}, requests
        queued for the app get another worker.
        """
        if worker in self._stopping:
            return self._stopping[worker]
        if worker not in state.workers:
            return succeed(None)  # already stopped
        state.workers.remove(worker)
        self._counts["failed" if failed else "retired"] += 1
        if not failed:  # a failure is counted as the crash or start failure it was
            self._events[state.app.label, "retired", reason] += 1
        retiring = None
        if not worker.ephemeral or failed:
            retiring = WORKER_RETIRE(
                level="info",
                message=f"Retiring a worker of {state.app.label}: {reason}",
                reason=reason,
                **worker.tags(),
            )
        self._notify(self.on_worker_terminate, worker, state.app)
        if kill:
            worker.kill()
        stopped = Deferred.fromCoroutine(worker.stop(self._config.delay, grace))
        self._stopping[worker] = stopped

        def stopped_now(_: object) -> None:
            self._stopping.pop(worker, None)
            if retiring is not None:
                label = state.app.label
                retiring.add_success_fields(
                    level="info", message=f"A worker of {label} is gone", **worker.tags()
                )
                retiring.finish()

        stopped.addBoth(stopped_now)
        if worker in self._ephemeral_holders:
            self._ephemeral_holders.discard(worker)
            self._release_ephemeral_slot()
        if replace and state.queue and self._apps.get(state.app.key) is state:
            self._pump(state)
        return stopped

    def _notify(self, hooks: list[Callable[..., object]], worker: Worker, app: PoolApp) -> None:
        for hook in list(hooks):
            try:
                result = hook(worker, app)
            except Exception as error:
                log("error", "buntime:pool:hook", "A worker hook failed", error=repr(error))
                continue
            if isinstance(result, Deferred):
                result.addErrback(
                    lambda f: log(
                        "error",
                        "buntime:pool:hook",
                        "A worker hook failed",
                        error=f.getErrorMessage(),
                    )
                )

    # -- finished requests, timeouts, periodic checks ----------------------------

    def _request_finished(self, state: _AppState, worker: Worker, exchange: WorkerExchange) -> None:
        timeout = state.app.manifest.timeout
        if worker.ephemeral:
            if exchange.outcome == "timeout":
                self._explain_timeout(state, worker, exchange, "killing the worker").addCallback(
                    lambda _: self._discard(state, worker, "timed out", grace=0, kill=True)
                )
            elif exchange.outcome != "gone":
                self._discard(state, worker, "ephemeral request done", grace=timeout)
            return
        if exchange.outcome == "timeout":
            if worker.consecutive_timeouts >= TIMEOUT_STRIKES and worker.healthy:
                worker.healthy = False  # no new requests while its stack is read
                self._explain_timeout(state, worker, exchange, "recycling the worker").addCallback(
                    lambda _: self._discard(state, worker, "timeouts", grace=timeout)
                )
            else:
                log(
                    "warn",
                    "buntime:pool:timeout",
                    f"{exchange.method} {exchange.path} on {state.app.label} timed out after "
                    f"{exchange.elapsed * 1000:.0f} ms ({worker.consecutive_timeouts} in a row)",
                    **worker.tags(),
                    request_id=exchange.request_id,
                    method=exchange.method,
                    path=exchange.path,
                    elapsed_ms=round(exchange.elapsed * 1000),
                )
        if state.queue:
            self._pump(state)

    def _explain_timeout(
        self, state: _AppState, worker: Worker, exchange: WorkerExchange, action: str
    ) -> Deferred:
        """Read the worker's stack, then log one error line that explains the kill."""
        elapsed_ms = round(exchange.elapsed * 1000)

        def report(stack: str) -> None:
            log(
                "error",
                "buntime:pool:timeout",
                f"{exchange.method} {exchange.path} on {state.app.label} timed out after "
                f"{elapsed_ms} ms; {action} (pid {worker.pid})",
                **worker.tags(),
                request_id=exchange.request_id,
                method=exchange.method,
                path=exchange.path,
                elapsed_ms=elapsed_ms,
                stack=stack,
            )

        return worker.dump_stack(STACK_WAIT).addCallback(report)

    def _start_checker(self, state: _AppState) -> None:
        manifest = state.app.manifest
        interval = min(manifest.idle_timeout, manifest.ttl) / 2
        if manifest.ttl <= 0 or interval <= 0 or state.checker is not None:
            return
        state.checker = LoopingCall(self._check, state)
        state.checker.clock = self._reactor
        state.checker.start(interval, now=False).addErrback(
            lambda f: log(
                "error", "buntime:pool:check", "Worker checks stopped", error=f.getErrorMessage()
            )
        )

    def _stop_checker(self, state: _AppState) -> None:
        if state.checker is not None and state.checker.running:
            state.checker.stop()
        state.checker = None

    def _check(self, state: _AppState) -> None:
        """Retire workers past ttl, idleTimeout or maxRequests; tell idle ones so."""
        manifest = state.app.manifest
        now = self._reactor.seconds()
        idle_after = manifest.idle_timeout / 2
        for worker in list(state.workers):
            if worker.ephemeral or not worker.is_ready:
                continue
            idle = now - worker.last_used if worker.in_flight == 0 else 0.0
            reason = None
            if now - worker.created_at >= manifest.ttl:
                reason = "ttl reached"
            elif worker.in_flight == 0 and idle >= manifest.idle_timeout:
                reason = "idleTimeout reached"
            elif worker.request_count >= manifest.max_requests:
                reason = "maxRequests reached"
            if reason is not None:
                self._discard(state, worker, reason, grace=manifest.timeout)
            elif worker.in_flight == 0 and not worker.idle_sent and idle >= idle_after:
                log(
                    "debug",
                    "buntime:pool:idle",
                    f"Worker of {state.app.label} is idle",
                    **worker.tags(),
                    idle_ms=round(idle * 1000),
                )
                worker.send_idle()

    # -- numbers ---------------------------------------------------------------

    def _all_workers(self) -> list[Worker]:
        live = [w for state in self._apps.values() for w in state.workers]
        return live + [w for w in self._stopping if w not in live]

    def metrics(self) -> dict[str, float | int]:
        """Pool numbers, named as SPEC section 3 lists them."""
        counts = self._counts
        now = self._reactor.seconds()
        uptime = now - self._started_at if self._started_at is not None else 0.0
        lookups = counts["hits"] + counts["misses"]
        times = self._response_times
        workers = self._all_workers()
        return {
            "activeWorkers": sum(1 for w in workers if w.status not in ("stopping", "offline")),
            "avgResponseTimeMs": round(sum(times) / len(times), 2) if times else 0.0,
            "evictions": counts["evictions"],
            "hitRate": round(counts["hits"] * 100 / lookups, 2) if lookups else 0.0,
            "hits": counts["hits"],
            "misses": counts["misses"],
            "memoryUsageMB": round(sum(w.rss_mb() for w in workers), 2),
            "requestsPerSecond": round(counts["requests"] / uptime, 2) if uptime > 0 else 0.0,
            "totalRequests": counts["requests"],
            "totalWorkersFailed": counts["failed"],
            "totalWorkersCreated": counts["created"],
            "totalWorkersRetired": counts["retired"],
            "uptimeMs": round(uptime * 1000),
            "ephemeralQueueDepth": len(self._ephemeral_queue),
        }

    def worker_stats(self) -> list[dict[str, object]]:
        """Per-worker numbers (SPEC section 3), with app, version, id and key."""
        return [worker.stats() for worker in self._all_workers()]

    def worker_events(self) -> list[dict[str, object]]:
        """
        Workers started, failed to start, crashed and retired so far, by app
        and reason: C{[{"app", "event", "reason", "count"}]}.
        """
        return [
            {"app": app, "event": event, "reason": reason, "count": count}
            for (app, event, reason), count in sorted(self._events.items())
        ]

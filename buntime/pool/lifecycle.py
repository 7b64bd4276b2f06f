"""
The workers of each app: starting one more when all are near full (under
C{maxInstances} and the pool size, an app chosen by L{buntime.pool.eviction}
giving way),
readiness, crashes and the crash-loop backoff, retiring (drain, then stop),
and the hooks told when a worker comes and goes.

Choices the spec leaves open: another instance starts when every one has
80% of its slots busy; a crash-looping app is respawned at once after one
failure, then after 0.5 s, 1 s, 2 s ... up to 30 s, answering from its last
failure meanwhile.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import NamedTuple
from uuid import uuid4

from eliot import Action
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime.http import Response
from buntime.logs import log
from buntime.logs.types import WORKER_CRASH, WORKER_RETIRE, WORKER_START, WORKER_START_FAILED
from buntime.pool.checks import WorkerChecks
from buntime.pool.eviction import FrequencyEviction
from buntime.pool.launch.launcher import ILauncher, LauncherUnavailable
from buntime.pool.metrics import PoolNumbers
from buntime.pool.queues import WaitQueue, _Refused
from buntime.pool.rss import RssSource, read_rss
from buntime.pool.state import PoolApp, PoolConfig, _AppState
from buntime.pool.status import READY, STARTING
from buntime.pool.worker import StartupError, Worker

BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0
"""Crash-loop backoff: no wait after one failure, then 0.5 s doubling up to 30 s."""
NEAR_FULL = 0.8
"""Share of C{maxConcurrency} in use at which another instance is started."""


class _Survey(NamedTuple):
    """What L{WorkerPool._survey} sees of an app's workers."""

    warm: bool
    """A worker is ready and healthy."""
    free: Worker | None
    """The persistent worker to send a request to now, if any."""
    wants_another: bool
    """Another persistent worker should start."""


class WorkerLifecycle:
    """
    The pool's workers, app by app (L{buntime.pool.pool.WorkerPool} adds the
    requests).  Hooks in C{on_worker_spawn} (called once a worker is ready)
    and C{on_worker_terminate} (once it is retired or has died) take
    C{(worker, app)}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: PoolConfig,
        launcher: ILauncher,
        rss: RssSource = read_rss,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._launcher = launcher
        self._apps: OrderedDict[str, _AppState] = OrderedDict()  # least recently used first
        self._eviction = FrequencyEviction(config.pool_size)
        self._stopping: dict[Worker, Deferred] = {}
        self._ephemeral_running = 0
        self._ephemeral_holders: set[Worker] = set()
        self._ephemeral_queue = WaitQueue()
        self._numbers = PoolNumbers()
        # the request path counts through these two directly
        self._counts = self._numbers.counts
        self._response_times = self._numbers.response_times
        self._events = self._numbers.events
        self._checks = WorkerChecks(reactor, self._discard, self._pump, rss)
        self.on_worker_spawn: list[Callable[[Worker, PoolApp], object]] = []
        self.on_worker_terminate: list[Callable[[Worker, PoolApp], object]] = []

    # -- scaling and eviction --------------------------------------------------

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
        """
        Keep within C{pool_size}: retire a worker of the app the eviction
        policy (L{buntime.pool.eviction}) chooses among those with workers.
        """
        alive = sum(1 for s in self._apps.values() for w in s.workers if not w.ephemeral)
        if alive < self._config.pool_size:
            return True
        residents = [
            key
            for key, other in self._apps.items()  # least recently used first
            if other is not state and any(not w.ephemeral for w in other.workers)
        ]
        # An app still starting its worker for requests that wait gives way
        # only when no other can: they would wait until the app's next request.
        starting = {key for key in residents if not self._settled(self._apps[key])}
        chosen = self._eviction.victim(residents, starting)
        if chosen is None:
            return False
        other = self._apps[chosen]
        victims = [w for w in other.workers if not w.ephemeral]
        victim = min(victims, key=lambda w: (not w.is_ready, w.in_flight > 0, w.last_used))
        self._counts["evictions"] += 1
        grace = other.app.manifest.timeout
        self._discard(other, victim, "evicted (pool full)", grace=grace, replace=False)
        return True

    def _settled(self, state: _AppState) -> bool:
        """No request of the app waits, and none of its workers is starting."""
        return not state.queue and all(w.status != STARTING for w in state.workers)

    # -- starting, failing and retiring workers --------------------------------

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
        if not ephemeral:
            self._eviction.admitted(app.key)
        worker.on_finished.append(partial(self._checks.request_finished, state))
        worker.on_gone.append(partial(self._worker_gone, state))
        starting = WORKER_START(
            level="info",
            message=f"Starting a worker for {app.label}",
            ephemeral=ephemeral,
            **worker.tags(),
        )
        env = {**app.env, "WORKER_ID": worker.id}
        started = self._reactor.seconds()
        # (heard before the launch: one that fails at once is a start failure, not a crash)
        worker.ready.addCallbacks(
            lambda _: self._worker_ready(state, worker, started, starting),
            lambda failure: self._worker_failed_start(state, worker, failure, started, starting),
        )
        worker.launch(self._launcher, app.dir, env, self._config.ready_timeout)
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
        if isinstance(worker.launch_error, LauncherUnavailable):
            response = _unavailable(worker.launch_error)  # the template is down: not the app
        else:
            message = self._detail(f"App {state.app.label} failed to start", text)
            response = Response.error(502, "WORKER_START_FAILED", message)
        self._worker_failed(state, worker, response)

    def _worker_gone(self, state: _AppState, worker: Worker, reason: str) -> None:
        if worker not in state.workers:
            return  # retired or already counted as failed
        # "exited with code 1", "closed its channel", "could not be launched: ..."
        self._events[state.app.label, "crashed", reason.split(" with ")[0].split(":")[0]] += 1
        if isinstance(worker.launch_error, LauncherUnavailable):
            response = _unavailable(worker.launch_error)
        else:
            response = self._crash_response(state, f"worker {reason}")
        self._worker_failed(state, worker, response, crash=reason)

    def _worker_failed(
        self, state: _AppState, worker: Worker, response: Response, crash: str | None = None
    ) -> None:
        """
        A critical error: count it, back off, and answer waiting requests if
        none is left.  C{crash}: why the worker died unasked (logged in its
        retire action).
        """
        if worker not in state.workers:
            return
        worker.healthy = False
        state.failures += 1
        delay = 0.0 if state.failures <= 1 else BACKOFF_BASE * 2 ** (state.failures - 2)
        state.retry_at = self._reactor.seconds() + min(delay, BACKOFF_MAX)
        state.last_failure = response
        self._discard(state, worker, "unhealthy", grace=0, failed=True, replace=False, crash=crash)
        if not any(not w.ephemeral for w in state.workers):
            state.queue.refuse(response)

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
        terminate: bool = True,
        crash: str | None = None,
    ) -> Deferred:
        """
        Take C{worker} out of service and stop it: drain for up to C{grace}
        seconds, or SIGKILL it at once with C{kill}; without C{terminate} it
        gets no C{on_terminate} (it is killed after its drain and DELAY_MS).
        With C{replace}, requests queued for the app get another worker.
        C{crash}: the worker died unasked, this is why (the first message
        of its retire action).
        """
        if worker in self._stopping:
            return self._stopping[worker]
        if worker not in state.workers:
            return succeed(None)  # already stopped
        state.workers.remove(worker)
        if worker.memory_recheck is not None:  # a maxMemory read put off: no longer wanted
            worker.memory_recheck.cancel()
            worker.memory_recheck = None
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
            if crash is not None:
                with retiring.context():
                    WORKER_CRASH.log(
                        level="error",
                        message=f"Worker for {state.app.label} {crash}",
                        reason=crash,
                        **worker.tags(),
                    )
        self._notify(self.on_worker_terminate, worker, state.app)
        if kill:
            worker.kill()
        stopped = Deferred.fromCoroutine(worker.stop(self._config.delay, grace, terminate))
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

    # -- queued requests and freed slots ---------------------------------------

    def _pump(self, state: _AppState) -> None:
        """Give free worker slots to queued requests; scale out if some still wait."""
        while state.queue:
            worker = self._free_worker(state)
            if worker is None:
                break
            state.queue.wake(worker)  # the request is sent before this returns
        if state.queue:
            self._scale(state)

    def _release_ephemeral_slot(self) -> None:
        if not self._ephemeral_queue.wake(None):
            self._ephemeral_running -= 1

    # -- shared with the request path ------------------------------------------

    def _crash_response(self, state: _AppState, error: str = "the worker died") -> Response:
        message = self._detail(f"The worker for {state.app.label} crashed", error)
        return Response.error(502, "WORKER_CRASHED", message)

    def _detail(self, message: str, error: str) -> str:
        """C{message}, with the error text appended outside production."""
        return message if self._config.production or not error else f"{message}: {error}"

    def _all_workers(self) -> list[Worker]:
        live = [w for state in self._apps.values() for w in state.workers]
        return live + [w for w in self._stopping if w not in live]

    # -- checks (L{buntime.pool.checks}) ---------------------------------------

    def _start_checker(self, state: _AppState) -> None:
        self._checks.start(state)

    def _stop_checker(self, state: _AppState) -> None:
        self._checks.stop(state)


def _unavailable(error: LauncherUnavailable) -> Response:
    """The answer while the fork template is down: not the app's fault, and soon over."""
    return Response.error(
        503,
        "WORKERS_UNAVAILABLE",
        f"Workers cannot be started right now ({error}); retry shortly",
        {"retry-after": "1"},
    )

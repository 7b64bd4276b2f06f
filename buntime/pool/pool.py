"""
The worker pool: which worker serves a request, when workers start and
stop (SPEC section 3), and the numbers the metrics plugin shows.

Apps with C{ttl: 0} get a fresh worker per request, bounded by
C{ephemeral_concurrency} with a bounded queue.  Other apps keep up to
C{maxInstances} workers, each serving up to C{maxConcurrency} requests at
once, with a bounded per-app queue that also holds requests while a worker
cold-starts; at most C{pool_size} such workers live at once, the least
recently used app giving way unless it is asked for more often than the
newest apps (L{buntime.pool.eviction}).

C{timeout} bounds the time until the response starts (a stream may then
run on), a choice the spec leaves open.  This module is the requests' side:
which worker a request goes to, or the queue it waits in
(L{buntime.pool.queues}); the workers' side is L{buntime.pool.lifecycle}
(starting, failing, retiring, evicting) and L{buntime.pool.checks} (ttl,
idleTimeout, maxRequests, timeouts); the numbers are
L{buntime.pool.metrics}.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime.http import Request, Response
from buntime.logs import log
from buntime.pool.deps import DependencyInstaller, InstallError
from buntime.pool.inflight import AppError, NotStarted, RequestTimedOut, WorkerGone
from buntime.pool.launch.launcher import ILauncher
from buntime.pool.lifecycle import WorkerLifecycle
from buntime.pool.queues import AppRetired, _Refused
from buntime.pool.rss import RssSource, read_rss
from buntime.pool.state import PoolApp, PoolConfig, _AppState
from buntime.pool.worker import StartupError, Worker

RETRY_AFTER = "1"

Served = Callable[[str], object]
"""Told the id of the worker a request is sent to (for the request's log line)."""

Again = Callable[[Response, Request, str, "Served | None"], "Response | Deferred[Response]"]
"""
Answers a request whose app was retired while it waited (see
L{WorkerPool.handle}): given the refusal it would get, and the request,
base and C{served} it came with; it routes it anew with
L{WorkerPool.reroute}.
"""


def _busy(code: str, message: str) -> Response:
    return Response.error(503, code, message, headers={"Retry-After": RETRY_AFTER})


@frozen
class _Waiting:
    """
    A request on the pool's slower paths (one that was not sent at once to
    a warm worker): what sending it takes, and its C{again} (L{WorkerPool.handle}).
    """

    request: Request
    base: str
    served: Served | None
    again: Again | None = None


def _queue_timeout(state: _AppState) -> Response:
    """The answer to a request that waited C{timeout} for a worker of its app."""
    message = f"No worker of {state.app.label} was free within {state.app.manifest.timeout:g}s"
    return Response.error(504, "QUEUE_TIMEOUT", message)


def _retired(state: _AppState) -> Response:
    return _busy("APP_RETIRED", f"{state.app.label} was replaced or removed")


class WorkerPool(WorkerLifecycle):
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
        rss: RssSource = read_rss,
    ) -> None:
        super().__init__(reactor, config, launcher, rss)
        self._installer = installer or DependencyInstaller(reactor)  # type: ignore[arg-type]
        self._names: dict[str, str] = {}
        self._running = False
        self._closing = False

    # -- service lifecycle ---------------------------------------------------

    def start(self) -> None:
        """Start the clocks: uptime and the periodic ttl/idle checks."""
        if self._running:
            return
        self._running, self._closing = True, False
        self._numbers.started_at = self._reactor.seconds()
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
            state.queue.refuse(_busy("SHUTTING_DOWN", "The runtime is stopping"))
            for worker in list(state.workers):
                self._discard(state, worker, "runtime stopping", grace=state.app.manifest.timeout)
        self._ephemeral_queue.refuse(_busy("SHUTTING_DOWN", "The runtime is stopping"))
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
        state.queue.refuse(_retired(state), AppRetired)
        grace = state.app.manifest.timeout
        stops = [self._discard(state, w, "app retired", grace=grace) for w in list(state.workers)]
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- requests --------------------------------------------------------------

    def handle(
        self,
        app: PoolApp,
        request: Request,
        base: str,
        served: Served | None = None,
        again: Again | None = None,
    ) -> Deferred:
        """
        Run C{request} (URL relative to the app, C{base} stripped) on a
        worker of C{app}; fires with a L{Response}, an error one included.
        Cancel it when the client goes away.  The worker gives the app
        C{base} as its C{x-base} header (a client's own is dropped).  C{served}
        is called with the id of the worker the request is sent to.  A
        request whose app is retired (replaced or removed) while it waits
        for a worker was never sent: C{again}, if given, answers it (the
        caller routes it anew, with L{reroute}), else it answers 503
        C{APP_RETIRED}.

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
                worker = self._warm_worker(state, self._counts)
                if worker is not None:  # a warm worker with a free slot: no waiting
                    answer = self._send(state, worker, request, base, served)
                    sent = state
                else:
                    waiting = _Waiting(request, base, served, again)
                    answer = Deferred.fromCoroutine(self._queued(state, waiting))
            else:
                waiting = _Waiting(request, base, served, again)
                answer = Deferred.fromCoroutine(self._prepared(state, waiting, self._counts))
        except Exception:
            answer = fail()
        return answer.addBoth(self._answered, app, arrived, sent)

    def reroute(
        self, app: PoolApp, request: Request, base: str, served: Served | None = None
    ) -> Deferred:
        """
        Run a request that L{handle} gave its C{again} (its app was retired
        while it waited) on a worker of C{app}, the app's copy now, as
        L{handle} would, but not routed anew a second time, and neither
        counted nor timed: the first pass counts the client's one request as
        it arrived (C{totalRequests}, the hit or miss it met then) and times
        it from its arrival to this answer, the client's whole wait.  A
        failure here is answered (as a JSON error) by that pass.
        """
        try:
            if self._closing:
                raise _Refused(_busy("SHUTTING_DOWN", "The runtime is stopping"))
            state = self._enter(app)
            uncounted = Counter[str]()  # (thrown away: the first pass counted it)
            waiting = _Waiting(request, base, served)
            return Deferred.fromCoroutine(self._prepared(state, waiting, uncounted))
        except Exception:
            return fail()

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

    async def _prepared(
        self, state: _AppState, waiting: _Waiting, counts: dict[str, int]
    ) -> Response:
        """
        The paths that wait first (installing dependencies, ephemeral
        workers), then L{_persistent}; hits and misses go to C{counts}.
        """
        if state.app.manifest.auto_install and not state.installed:
            await self._install(state)
            # the app may have been retired (or the pool stopped) meanwhile: a
            # worker started for it now would serve the old copy, and outlive it
            if self._closing:
                raise _Refused(_busy("SHUTTING_DOWN", "The runtime is stopping"))
            if self._retired_since(state):
                return await self._anew(_retired(state), waiting)
        if state.app.manifest.ttl <= 0:
            return await self._ephemeral(state, waiting, counts)
        return await self._persistent(state, waiting, counts)

    def _enter(self, app: PoolApp) -> _AppState:
        """The app's state (made on first use), after the name@version collision check."""
        self._eviction.record(app.key)
        label = app.label
        owner = self._names.get(label)
        if owner == app.key:  # the usual: this directory has the name
            state = self._apps.get(app.key)
            if state is not None:
                if state.app is not app:
                    self._app_changed(state, app)
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
            if state.app is not app:
                self._app_changed(state, app)
            self._apps.move_to_end(app.key)
        return state

    def _app_changed(self, state: _AppState, app: PoolApp) -> None:
        """
        The app's manifest was read again: its checks follow the new ttl and
        idleTimeout, and a crash loop's backoff ends (the change may be the
        fix: the next request starts a worker).
        """
        state.app = app
        state.failures, state.retry_at = 0, 0.0
        if self._running:
            self._start_checker(state)

    async def _install(self, state: _AppState) -> None:
        try:
            await self._installer.ensure(state.app.dir)
        except InstallError as error:
            message = f"Installing the dependencies of {state.app.label} failed: {error}"
            raise _Refused(Response.error(500, "INSTALL_FAILED", message)) from None
        state.installed = True

    def _persistent(self, state: _AppState, waiting: _Waiting, counts: dict[str, int]) -> Deferred:
        worker = self._warm_worker(state, counts)
        if worker is not None:
            return self._run(state, worker, waiting)
        return Deferred.fromCoroutine(self._queued(state, waiting))

    def _warm_worker(self, state: _AppState, counts: dict[str, int]) -> Worker | None:
        """
        A worker of a persistent app free to take a request now, or C{None}:
        the request queues.  Counts the hit or miss in C{counts} and scales
        the app.
        """
        if state.last_failure is not None:
            self._refuse_if_failing(state)
        survey = self._survey(state)
        counts["hits" if survey.warm else "misses"] += 1
        if survey.wants_another:
            failures = state.failures
            self._start_another(state)
            if survey.free is None and state.failures > failures and state.last_failure:
                raise _Refused(state.last_failure)  # the worker could not even be launched
        return survey.free

    async def _queued(self, state: _AppState, waiting: _Waiting) -> Response:
        """
        Wait for a worker of the app, then run the request on it.  A worker
        still starting (a cold start's) may take it ahead of its C{Ready}
        (L{_wait}); if it never becomes ready, the request waits again as it
        would have (in the app's queue, within what is left of its
        C{timeout}), or gets the start's failure when no other worker is left.
        """
        arrived = self._reactor.seconds()
        while True:
            left = state.app.manifest.timeout - (self._reactor.seconds() - arrived)
            try:
                worker = await self._wait(state, left)
            except AppRetired as retired:
                return await self._anew(retired.response, waiting)
            failures = state.failures
            try:
                return await self._run(state, worker, waiting)
            except NotStarted as error:
                if self._closing:
                    raise _Refused(_busy("SHUTTING_DOWN", "The runtime is stopping")) from None
                if error.timed_out:
                    raise _Refused(_queue_timeout(state)) from None
                if self._retired_since(state):
                    return await self._anew(_retired(state), waiting)
                alive = any(not w.ephemeral for w in state.workers)
                if state.failures > failures and not alive:  # its start failed: no other left
                    raise _Refused(state.last_failure or self._crash_response(state)) from None

    def _retired_since(self, state: _AppState) -> bool:
        """Whether the app of C{state} was retired while a request of it waited."""
        return self._apps.get(state.app.key) is not state

    async def _anew(self, refusal: Response, waiting: _Waiting) -> Response:
        """
        A request whose app was retired before it was sent: its C{again}'s
        answer (the caller routes it anew, to the app's new copy), else
        C{refusal}.
        """
        again = waiting.again
        if again is None:
            return refusal
        answer = again(refusal, waiting.request, waiting.base, waiting.served)
        return await answer if isinstance(answer, Deferred) else answer

    async def _ephemeral(
        self, state: _AppState, waiting: _Waiting, counts: dict[str, int]
    ) -> Response:
        self._refuse_if_failing(state)
        counts["misses"] += 1
        await self._ephemeral_slot(state)
        if self._retired_since(state):
            # a fresh worker of the old copy would serve it
            self._release_ephemeral_slot()
            return await self._anew(_retired(state), waiting)
        try:
            worker = self._spawn(state, ephemeral=True)
        except BaseException:
            self._release_ephemeral_slot()
            raise
        if worker in state.workers:
            self._ephemeral_holders.add(worker)
        else:  # its launch failed at once: discarded before it held the slot
            self._release_ephemeral_slot()
        if not worker.takes_early:  # its channel is not up yet (the template forks it)
            try:
                await worker.ready
            except StartupError:
                return await self._unstarted(state, waiting)
            except BaseException:
                self._discard(state, worker, "request ended early", grace=0)
                raise
        # From here on, the worker's finished request (or its death) stops it.
        try:  # (ahead of its Ready when it is still starting: it waits for that)
            return await self._run(state, worker, waiting)
        except NotStarted:
            return await self._unstarted(state, waiting)

    async def _unstarted(self, state: _AppState, waiting: _Waiting) -> Response:
        """
        An ephemeral request whose worker never got ready: routed anew when
        its app was retired meanwhile (the worker was stopped for that: the
        app never had the request), else the start's failure.
        """
        if self._retired_since(state):
            return await self._anew(_retired(state), waiting)
        raise _Refused(state.last_failure or self._crash_response(state))

    def _run(self, state: _AppState, worker: Worker, waiting: _Waiting) -> Deferred:
        """Send the request to C{worker}; fires with its response, or the error response."""
        sent = self._send(state, worker, waiting.request, waiting.base, waiting.served)
        return sent.addBoth(self._ran, state)

    def _send(
        self, state: _AppState, worker: Worker, request: Request, base: str, served: Served | None
    ) -> Deferred:
        """
        Send C{request} to C{worker}: L{Worker.request}, and a retirement at
        C{maxRequests}; C{served} learns the worker's id.
        """
        manifest = state.app.manifest
        if served is not None:
            served(worker.id)
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

    # -- queues ----------------------------------------------------------------

    async def _wait(self, state: _AppState, timeout: float) -> Worker:
        """
        Queue for a worker slot of this app (at most C{timeout} seconds), or,
        when no request waits ahead, take a free slot of a ready worker (a
        request back from a worker that never got ready), else one of a worker still starting
        whose channel is up (the request goes ahead of its C{Ready}, saving
        the round trip).
        """
        manifest = state.app.manifest
        if not state.queue:
            # (a request back from a worker that never got ready: another may be free)
            free = self._free_worker(state)
            if free is not None:
                return free
            for worker in state.workers:
                if (
                    worker.takes_early
                    and not worker.ephemeral
                    and worker.in_flight < manifest.max_concurrency
                    and worker.request_count + 1 < manifest.max_requests
                ):
                    return worker
        if len(state.queue) >= manifest.max_queue:
            raise _Refused(_busy("QUEUE_FULL", f"Too many requests waiting for {state.app.label}"))
        return await state.queue.wait(self._reactor, timeout, _queue_timeout(state))

    async def _ephemeral_slot(self, state: _AppState) -> None:
        """Take one of the C{ephemeral_concurrency} slots, queueing for one if needed."""
        if self._ephemeral_running < self._config.ephemeral_concurrency:
            self._ephemeral_running += 1
            return
        if len(self._ephemeral_queue) >= self._config.ephemeral_queue:
            raise _Refused(_busy("QUEUE_FULL", "Too many requests waiting for a fresh worker"))
        timeout = state.app.manifest.timeout
        late = Response.error(504, "QUEUE_TIMEOUT", f"No worker slot was free within {timeout:g}s")
        await self._ephemeral_queue.wait(self._reactor, timeout, late)

    # -- numbers ---------------------------------------------------------------

    def metrics(self) -> dict[str, float | int]:
        """Pool numbers, named as SPEC section 3 lists them."""
        now = self._reactor.seconds()
        return self._numbers.summary(now, self._all_workers(), len(self._ephemeral_queue))

    def worker_stats(self) -> list[dict[str, object]]:
        """Per-worker numbers (SPEC section 3), with app, version, id and key."""
        return [worker.stats() for worker in self._all_workers()]

    def worker_events(self) -> list[dict[str, object]]:
        """
        Workers started, failed to start, crashed and retired so far, by app
        and reason: C{[{"app", "event", "reason", "count"}]}.
        """
        return self._numbers.worker_events()

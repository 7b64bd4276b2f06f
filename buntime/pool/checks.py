"""
When a worker retires besides crashing: after a request (an ephemeral
worker's is done; a persistent one has timed out C{TIMEOUT_STRIKES} times in
a row, or once for a WSGI app, whose call cannot be cancelled, or its RSS is
past C{maxMemory}), and on a timer (C{ttl},
C{idleTimeout}, C{maxRequests}, C{maxMemory}; C{on_idle} sent after half of
C{idleTimeout}).  A timeout that kills a worker is explained in one error
line with the worker's stack.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from buntime.logs import log
from buntime.pool.inflight import WorkerExchange
from buntime.pool.rss import CHECK_INTERVAL, RssSource, megabytes, read_rss
from buntime.pool.state import _AppState
from buntime.pool.worker import Worker

TIMEOUT_STRIKES = 3
"""Timeouts in a row after which a persistent worker is recycled."""
UNSTOPPABLE = frozenset({"wsgi"})
"""Workers whose timed-out call cannot be cancelled (it runs in a thread): recycled at once."""
STACK_WAIT = 0.2
"""Seconds to collect a worker's stack dump from stderr before killing it."""


@frozen
class WorkerChecks:
    """
    The checks of the pool's workers; C{discard} retires a worker (as
    L{buntime.pool.lifecycle.WorkerLifecycle._discard}), C{pump} gives freed
    slots to queued requests, C{rss} reads a worker's resident memory.
    """

    clock: IReactorTime
    discard: Callable[..., Deferred]
    pump: Callable[[_AppState], None]
    rss: RssSource = field(default=read_rss)

    def request_finished(self, state: _AppState, worker: Worker, exchange: WorkerExchange) -> None:
        """After a request: an ephemeral worker goes; a persistent one after timeouts."""
        timeout = state.app.manifest.timeout
        if worker.ephemeral:
            if exchange.outcome == "timeout":
                self._explain_timeout(state, worker, exchange, "killing the worker").addCallback(
                    lambda _: self.discard(state, worker, "timed out", grace=0, kill=True)
                )
            elif exchange.outcome == "cancelled" and not worker.is_ready:  # sent ahead of it
                self.discard(state, worker, "request ended early", grace=0)
            elif exchange.outcome != "gone":
                self.discard(state, worker, "ephemeral request done", grace=timeout)
            return
        if exchange.outcome == "timeout":
            if worker.kind in UNSTOPPABLE and worker.healthy:
                # The thread running the call goes on (a loop, a hung read):
                # the worker takes no more requests, drains the others, and is
                # killed without waiting for that call (as gunicorn's sync workers).
                worker.healthy = False
                action = f"killing the worker after its other requests ({worker.kind} call)"
                self._explain_timeout(state, worker, exchange, action).addCallback(
                    lambda _: self.discard(
                        state, worker, "timed out", grace=timeout, terminate=False
                    )
                )
            elif worker.consecutive_timeouts >= TIMEOUT_STRIKES and worker.healthy:
                worker.healthy = False  # no new requests while its stack is read
                self._explain_timeout(state, worker, exchange, "recycling the worker").addCallback(
                    lambda _: self.discard(state, worker, "timeouts", grace=timeout)
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
        self.check_memory(state, worker)
        if state.queue:
            self.pump(state)

    def check_memory(self, state: _AppState, worker: Worker) -> bool:
        """
        Retire C{worker} (reason C{memory}: after its in-flight requests) when
        its RSS is past the app's C{maxMemory}; read at most every
        L{CHECK_INTERVAL} seconds (a read asked for sooner is made once they
        are up, so a request that grew the worker is not missed).  C{True}
        when it was retired.
        """
        limit = state.app.manifest.max_memory
        if limit is None or worker.ephemeral or worker.pid is None or not worker.healthy:
            return False
        if worker not in state.workers:
            return False
        now = self.clock.seconds()
        wait = worker.memory_checked_at + CHECK_INTERVAL - now
        if wait > 0:
            if worker.memory_recheck is None:
                worker.memory_recheck = self.clock.callLater(wait, self._recheck, state, worker)
            return False
        worker.memory_checked_at = now
        rss = self.rss(worker.pid)
        if rss is None or rss <= limit:
            return False
        log(
            "warn",
            "buntime:pool:memory",
            f"Worker of {state.app.label} uses {megabytes(rss)} MB, over its maxMemory of "
            f"{megabytes(limit)} MB; recycling it after its {worker.in_flight} requests in flight",
            **worker.tags(),
            rss_mb=megabytes(rss),
            limit_mb=megabytes(limit),
            in_flight=worker.in_flight,
        )
        self.discard(state, worker, "memory", grace=state.app.manifest.timeout)
        return True

    def _recheck(self, state: _AppState, worker: Worker) -> None:
        worker.memory_recheck = None
        self.check_memory(state, worker)

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

    def start(self, state: _AppState) -> None:
        """
        Check the app's workers every half of its shorter of ttl and
        idleTimeout; again after its manifest changed (a checker already
        running at another interval is replaced).
        """
        manifest = state.app.manifest
        interval = min(manifest.idle_timeout, manifest.ttl) / 2
        if manifest.ttl <= 0 or interval <= 0:
            return  # a checker left running retires the persistent workers there were
        if state.checker is not None:
            if state.checker.interval == interval:
                return
            self.stop(state)
        state.checker = LoopingCall(self._check, state)
        state.checker.clock = self.clock
        state.checker.start(interval, now=False).addErrback(
            lambda f: log(
                "error", "buntime:pool:check", "Worker checks stopped", error=f.getErrorMessage()
            )
        )

    def stop(self, state: _AppState) -> None:
        if state.checker is not None and state.checker.running:
            state.checker.stop()
        state.checker = None

    def _check(self, state: _AppState) -> None:
        """Retire workers past ttl, idleTimeout, maxRequests or maxMemory; tell idle ones so."""
        manifest = state.app.manifest
        now = self.clock.seconds()
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
                self.discard(state, worker, reason, grace=manifest.timeout)
            elif self.check_memory(state, worker):
                continue
            elif worker.in_flight == 0 and not worker.idle_sent and idle >= idle_after:
                log(
                    "debug",
                    "buntime:pool:idle",
                    f"Worker of {state.app.label} is idle",
                    **worker.tags(),
                    idle_ms=round(idle * 1000),
                )
                worker.send_idle()

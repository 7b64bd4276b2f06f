"""
The threads a WSGI worker runs its app in: at most C{size} threads taking
calls from one queue, each call's answer handed back to the reactor thread
as a Deferred's result.

Twisted's C{ThreadPool} and C{deferToThreadPool} cost about 30 µs of CPU a
call (each call goes through its coordinator's locks and queues, in
Python, on the way in and on the way out), and C{concurrent.futures} about
44 (a C{Future}, with its condition, per call). This costs about 8: one
C{queue.SimpleQueue} (written in C), one lock for the counts, and answers
handed back in batches, one wake-up of the reactor for every call that
ended since the reactor last looked.  A WSGI request is one call.

Threads start when a call finds none free (none before the first call),
and are daemon threads: a stuck call must not keep the worker from exiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_Call = tuple[Deferred, Callable[..., Any], tuple[Any, ...]]


class CallThreads:
    """
    Runs calls in at most C{size} threads named C{PoolThread-<name>-<n>};
    C{reactor} is the thread their answers go back to.
    """

    def __init__(self, reactor: Any, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a thread pool needs a thread at least, not {size}")
        self.size = size
        self.name = name
        self._reactor = reactor
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._free = 0
        """Threads not running a call (waiting for one, or about to)."""
        self._waiting = 0
        """Calls queued and not taken yet."""
        self._ended: deque[tuple[Deferred, bool, Any]] = deque()
        self._woken = False
        """Whether the reactor has been asked to take the ended calls and has not yet."""
        self._stopped = False

    @property
    def started(self) -> int:
        """Threads started (they run until L{stop})."""
        return self._started

    def call(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """
        C{function(*args)} in one of the threads: a Deferred that fires, in
        the reactor thread, with its result or its exception.
        """
        if self._stopped:
            raise RuntimeError(f"the {self.name} threads are stopped")
        answer: Deferred = Deferred()
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._free and self._started < self.size
            if start:
                self._started += 1
                self._free += 1
                number = self._started
        self._calls.put((answer, function, args))
        if start:
            name = f"PoolThread-{self.name}-{number}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return answer

    def stop(self) -> None:
        """No more calls; each thread ends once the calls queued before this have run."""
        self._stopped = True
        for _ in range(self._started):
            self._calls.put(None)

    def _work(self) -> None:
        """One thread: take calls and run them until L{stop}."""
        calls, lock, ended = self._calls, self._lock, self._ended
        while True:
            taken = calls.get()
            if taken is None:
                return
            answer, function, args = taken
            with lock:
                self._waiting -= 1
                self._free -= 1
            try:
                outcome = (answer, True, function(*args))
            except BaseException:
                outcome = (answer, False, Failure())
            with lock:
                self._free += 1
                ended.append(outcome)
                wake = not self._woken
                self._woken = True
            if wake:
                self._reactor.callFromThread(self._hand_back)
            del taken, answer, function, args, outcome  # nothing kept alive while waiting

    def _hand_back(self) -> None:
        """In the reactor thread: fire the Deferreds of the calls that ended."""
        with self._lock:
            ended = list(self._ended)
            self._ended.clear()
            self._woken = False
        for answer, succeeded, value in ended:
            if succeeded:
                answer.callback(value)
            else:
                answer.errback(value)

"""The threads a WSGI worker runs its app in (L{buntime.pool.child.threads})."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from buntime.pool.child.threads import CallThreads

WAIT = 10  # seconds a test waits for a thread before it fails


@pytest.fixture
def pools():
    made: list[CallThreads] = []

    def make(size: int, on: Any = reactor, name: str = "test") -> CallThreads:
        pool = CallThreads(on, size, name)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_runs_in_a_pool_thread_and_answers_in_the_reactor_thread(pools) -> None:
    pool = pools(2)
    assert pool.started == 0, "no thread before the first call"
    seen: list[str] = []
    answer = pool.call(lambda a, b: (threading.current_thread().name, a + b), 2, 3)
    answer.addCallback(lambda result: seen.append(threading.current_thread().name) or result)
    name, total = await answer
    assert name == "PoolThread-test-1" and total == 5
    assert seen == [threading.main_thread().name]


@pytest_twisted.ensureDeferred
async def test_an_exception_fails_the_deferred_with_it(pools) -> None:
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await pools(1).call(broken)


@pytest_twisted.ensureDeferred
async def test_calls_one_after_another_share_one_thread(pools) -> None:
    pool = pools(4)
    names = {await pool.call(lambda: threading.current_thread().name) for _ in range(20)}
    assert names == {"PoolThread-test-1"} and pool.started == 1


@pytest_twisted.ensureDeferred
async def test_calls_made_together_run_at_once_up_to_the_size(pools) -> None:
    """
    Three calls that each wait for the other two end only if three threads
    run them at once: calls made in one go must not queue behind a thread
    that has not yet taken the first.  Two more wait for a free thread.
    """
    pool = pools(3)
    barrier = threading.Barrier(3, timeout=WAIT)
    lock, running, peak = threading.Lock(), [0], [0]

    def meet() -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return barrier.wait()
        finally:
            with lock:
                running[0] -= 1

    def plain() -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            running[0] -= 1
        return "ok"

    answers = [pool.call(meet) for _ in range(3)] + [pool.call(plain) for _ in range(2)]
    results = [await answer for answer in answers]
    assert sorted(results[:3]) == [0, 1, 2] and results[3:] == ["ok", "ok"]
    assert pool.started == 3 and peak[0] <= 3


class _Reactor:
    """A reactor that keeps what it is given from other threads, to run when told."""

    def __init__(self) -> None:
        self.given: list[Any] = []

    def callFromThread(self, function: Any, *args: Any) -> None:
        self.given.append((function, args))


def test_calls_that_end_before_the_reactor_looks_wake_it_once(pools) -> None:
    held = _Reactor()
    pool = pools(1, held)
    last = threading.Event()
    answers = [pool.call(lambda n=n: n) for n in range(3)]
    answers.append(pool.call(last.set))
    assert last.wait(WAIT), "the thread ran the calls"
    fired: list[Any] = []
    for answer in answers:
        answer.addCallback(fired.append)
    # the first call's end asked the reactor to look; the others found it asked
    assert len(held.given) == 1
    function, args = held.given.pop()
    function(*args)
    assert fired[:3] == [0, 1, 2]


def test_a_stopped_pool_takes_no_call_and_its_threads_end(pools) -> None:
    held = _Reactor()
    pool = pools(2, held, "stopping")
    started = threading.Event()
    pool.call(started.set)
    assert started.wait(WAIT)
    threads = [t for t in threading.enumerate() if t.name.startswith("PoolThread-stopping-")]
    assert len(threads) == 1
    pool.stop()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="stopped"):
        pool.call(print)


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least"):
        CallThreads(reactor, 0, "none")

"""One result, many waiters (L{buntime.once})."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from buntime.once import Once, relay


def results(deferred: Deferred) -> list:
    seen: list = []
    deferred.addBoth(seen.append)
    return seen


def test_every_waiter_gets_the_result_and_its_own_deferred() -> None:
    once = Once()
    first, second = once.wait(), once.wait()
    assert first is not second
    first.addCallback(lambda value: value + 1)  # one waiter's chain is its own
    once.fire(41)
    assert results(first) == [42]
    assert results(second) == [41]
    assert once.fired


def test_a_late_waiter_gets_the_result_at_once() -> None:
    once = Once()
    once.fire("done")
    assert results(once.wait()) == ["done"]


def test_firing_again_does_nothing() -> None:
    once = Once()
    waiter = once.wait()
    once.fire(1)
    once.fire(2)
    assert results(waiter) == [1]
    assert results(once.wait()) == [1]


def test_a_failure_fails_every_waiter() -> None:
    once = Once()
    early = once.wait()
    once.fire(Failure(ValueError("no")))
    for waiter in (early, once.wait()):
        [failure] = results(waiter)
        assert isinstance(failure, Failure) and failure.check(ValueError)


def test_a_cancelled_waiter_is_left_alone() -> None:
    once = Once()
    cancelled, kept = once.wait(), once.wait()
    cancelled.cancel()
    once.fire(None)
    [failure] = results(cancelled)
    assert failure.check(CancelledError)
    assert results(kept) == [None]


def test_relay_leaves_the_source_as_it_was() -> None:
    source: Deferred = Deferred()
    mine = relay(source)
    source.callback("value")
    assert results(mine) == ["value"]
    assert results(source) == ["value"]


def test_relay_hands_a_failure_to_the_caller() -> None:
    source: Deferred = Deferred()
    mine = relay(source)
    source.errback(ValueError("broken"))
    [failure] = results(mine)
    assert failure.check(ValueError)
    assert results(source) == [None]  # handled: it went on to the caller

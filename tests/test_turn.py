"""Calls at the end of the reactor turn (L{buntime._turn.EndOfTurn})."""

from __future__ import annotations

from twisted.internet.task import Clock

from buntime._turn import EndOfTurn


def test_calls_wait_for_the_end_of_the_turn_and_run_in_order() -> None:
    clock, called = Clock(), []
    turn = EndOfTurn.of(clock)
    assert EndOfTurn.of(clock) is turn
    turn.add(lambda: called.append(1))
    turn.add(lambda: called.append(2))
    assert called == []
    clock.advance(0)
    assert called == [1, 2] and not clock.getDelayedCalls()


def test_a_failing_call_is_logged_and_the_others_still_run(eliot_logger) -> None:
    clock, called = Clock(), []
    turn = EndOfTurn.of(clock)

    def broken() -> None:
        raise RuntimeError("one connection's bug")

    turn.add(lambda: called.append("before"))
    turn.add(broken)
    turn.add(lambda: called.append("after"))
    clock.advance(0)
    assert called == ["before", "after"]
    [failed] = [
        message
        for message in eliot_logger.messages
        if message.get("message_type") == "buntime:turn:call-failed"
    ]
    assert failed["level"] == "error"
    assert "RuntimeError: one connection's bug" in failed["traceback"]
    turn.add(lambda: called.append("next turn"))  # the turn goes on being used
    clock.advance(0)
    assert called[-1] == "next turn"

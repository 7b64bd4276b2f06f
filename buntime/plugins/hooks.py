"""Calling plugin hooks that may be plain, C{async def}, or return a Deferred."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime


async def call(hook: Callable[..., Any], *args: Any) -> Any:
    """The result of C{hook(*args)}, awaited when it is a Deferred or awaitable."""
    return await awaited(hook(*args))


async def awaited(result: Any) -> Any:
    """C{result}, awaited when it is a Deferred or awaitable (a hook's answer)."""
    if isinstance(result, Deferred) or inspect.isawaitable(result):
        return await result
    return result


def as_deferred(result: Any) -> Deferred[Any]:
    """C{result} (a hook's answer) as a Deferred: itself, awaited, or fired with it."""
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return ensureDeferred(awaited(result))
    return succeed(result)


def bounded(
    hook: Callable[..., Any], args: tuple[Any, ...], seconds: float, clock: IReactorTime
) -> Deferred[Any]:
    """
    C{hook(*args)} as a Deferred that fails with C{twisted.internet.defer.TimeoutError}
    (and cancels the hook) when it takes longer than C{seconds} on C{clock}.
    """
    done = ensureDeferred(call(hook, *args))
    done.addTimeout(seconds, clock)
    return done

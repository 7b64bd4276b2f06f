"""Calling plugin hooks that may be plain, C{async def}, or return a Deferred."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.once import relay
from buntime.plugins.manifest import PluginError

if TYPE_CHECKING:
    from buntime.plugins.registry import LoadedPlugin


async def call(hook: Callable[..., Any], *args: Any) -> Any:
    """The result of C{hook(*args)}, awaited when it is a Deferred or awaitable."""
    return await awaited(hook(*args))


async def awaited(result: Any) -> Any:
    """C{result}, awaited when it is a Deferred or awaitable (a hook's answer)."""
    if isinstance(result, Deferred) or inspect.isawaitable(result):
        return await result
    return result


def as_deferred(result: Any) -> Deferred[Any]:
    """
    C{result} (a hook's answer) as a Deferred of the caller's own: one that
    fires with what a hook's Deferred fires with (which is left as it was,
    for whoever else waits on it), the awaitable awaited, or fired with it.
    """
    if isinstance(result, Deferred):
        return relay(result)
    if inspect.isawaitable(result):
        return ensureDeferred(awaited(result))
    return succeed(result)


def when_answered(
    result: Any,
    answered: Callable[..., Any],
    failed: Callable[..., Any],
    *args: Any,
) -> Deferred[Any]:
    """
    A hook's awaitable C{result} (see L{as_deferred}) followed by
    C{answered(value, *args)}, or C{failed(failure, *args)}, run in the
    context of this call (the request's eliot action and context
    variables), as the rest of an C{async def} would be.
    """
    context = contextvars.copy_context()
    return as_deferred(result).addCallbacks(
        _in_context,
        _in_context,
        callbackArgs=(context, answered, *args),
        errbackArgs=(context, failed, *args),
    )


def _in_context(
    value: Any, context: contextvars.Context, function: Callable[..., Any], *args: Any
) -> Any:
    return context.run(function, value, *args)


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


def plugin_error(plugin: LoadedPlugin, hook: str, error: BaseException) -> None:
    """Log a plugin's failing C{hook} with its traceback."""
    log(
        "error",
        "buntime:plugins:hook-failed",
        f'Plugin "{plugin.name}" {hook} failed: {type(error).__name__}: {error}',
        plugin=plugin.name,
        hook=hook,
        traceback=Failure(error).getTraceback(),
    )


def plugin_failed(name: str, what: str, message_type: str, error: BaseException) -> PluginError:
    """
    Log that plugin C{name} C{what} (C{failed to load}, C{on_init failed})
    with the traceback of C{error}; the L{PluginError} to raise, naming it.
    """
    log(
        "error",
        message_type,
        f'Plugin "{name}" {what}',
        plugin=name,
        traceback=Failure(error).getTraceback(),
    )
    return PluginError(f'Plugin "{name}" {what}: {type(error).__name__}: {error}')

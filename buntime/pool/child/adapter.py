"""
What every app kind looks like to the worker (L{IAdapter}), and how the
worker calls app code that may be sync, async (asyncio) or Twisted.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

KINDS = ("asgi", "wsgi", "klein", "resource", "routes")


class IAdapter(Interface):
    """Serves one loaded app inside the worker."""

    kind = Attribute("One of L{KINDS}: what the worker reports in C{Ready}.")

    def startup() -> Deferred:
        """Get ready before the worker reports C{Ready} (ASGI: lifespan startup)."""

    def shutdown() -> Deferred:
        """Stop, on C{Terminate} (ASGI: lifespan shutdown)."""

    def handle(request: Any, writer: Any) -> Deferred:
        """
        Serve one L{buntime.pool.child.request.IncomingRequest}, answering
        through its L{buntime.pool.child.writer.ResponseWriter}.  Fires when
        the app is done; fails with the app's exception.  Cancelling it
        cancels the app's work on the request.
        """


def awaited(result: object, loop: asyncio.AbstractEventLoop | None) -> Deferred:
    """
    The outcome of C{result} as a Deferred: a coroutine or other awaitable
    runs as an asyncio task on C{loop}, a Deferred is itself, anything else
    is the value.
    """
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        if loop is None:
            raise RuntimeError("an async handler needs the worker's asyncio event loop")
        return Deferred.fromFuture(asyncio.ensure_future(result, loop=loop))
    return succeed(result)


def call(
    function: Callable[..., object], loop: asyncio.AbstractEventLoop | None, *args: Any
) -> Deferred:
    """Call C{function} (sync or async) and give its outcome as a Deferred."""
    try:
        return awaited(function(*args), loop)
    except Exception:
        return fail()


async def on_loop(deferred: Deferred, loop: asyncio.AbstractEventLoop) -> Any:
    """Await a Deferred from asyncio code (a Deferred is not an asyncio awaitable)."""
    if deferred.called and not deferred.paused and not isinstance(deferred.result, Failure):
        return deferred.result  # already there (a response sent at once): no future needed
    return await deferred.asFuture(loop)

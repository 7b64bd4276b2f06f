"""
The chains of C{on_request} and C{on_response} hooks, in load order.  A hook
may answer at once or with an awaitable; the hooks after one wait for its
answer, in the request's context.  A failing C{on_request} hook answers 500
(a broken guard must not let requests through); a failing C{on_response}
hook leaves the response as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from buntime.http import AppInfo, Request, Response
from buntime.plugins.hooks import plugin_error, when_answered

if TYPE_CHECKING:
    from buntime.plugins.registry import LoadedPlugin

Hooks = tuple[tuple["LoadedPlugin", Any], ...]
"""C{(plugin, hook)} pairs, in load order."""


def _hook_failed(plugin: LoadedPlugin, hook: str, error: BaseException) -> Response:
    """A failing request hook: logged, and a 500 (a broken guard must not let requests through)."""
    plugin_error(plugin, hook, error)
    return Response.error(
        500, "PLUGIN_ERROR", f'Plugin "{plugin.name}" failed to handle the request'
    )


def _hook_failed_late(failure: Failure, plugin: LoadedPlugin, *_: object) -> Response:
    """An awaited C{on_request} answer that failed (see L{_hook_failed})."""
    return _hook_failed(plugin, "on_request", failure.value)


def request_chain(
    hooks: Hooks,
    start: int,
    request: Request,
    app: AppInfo | None,
) -> Request | Response | Deferred[Request | Response]:
    """
    The C{on_request} hooks from C{start} on: the request to go on with, or
    the answer of the hook that answered (a failing hook answers 500),
    answered at once when every hook answers at once.
    """
    for index in range(start, len(hooks)):
        plugin, hook = hooks[index]
        try:
            result = hook(request, app)
        except Exception as error:
            return _hook_failed(plugin, "on_request", error)
        if result is None:
            continue
        if isinstance(result, Response):
            return result
        if isinstance(result, Request):
            request = result
            continue
        # an awaitable: the hooks after it wait for its answer
        return when_answered(
            result,
            _request_hooked,
            _hook_failed_late,
            plugin,
            hooks,
            index,
            request,
            app,
        )
    return request


def _request_hooked(
    result: object,
    plugin: LoadedPlugin,
    hooks: Hooks,
    index: int,
    request: Request,
    app: AppInfo | None,
) -> Request | Response | Deferred[Request | Response]:
    """An awaited C{on_request} answer; then the hooks after it."""
    if isinstance(result, Response):
        return result
    if isinstance(result, Request):
        request = result
    elif result is not None:
        error = TypeError(f"returned {type(result).__name__}")
        return _hook_failed(plugin, "on_request", error)
    return request_chain(hooks, index + 1, request, app)


def response_chain(
    hooks: Hooks,
    start: int,
    response: Response,
    app: AppInfo | None,
    request: Request | None = None,
    given: frozenset[LoadedPlugin] = frozenset(),
) -> Response | Deferred[Response]:
    """
    The C{on_response} hooks from C{start} on (a failing hook leaves the
    response as it was), answered at once when every hook answers at once.
    The hooks of the plugins in C{given} (those declaring a C{request}
    parameter) are given C{request} too.
    """
    for index in range(start, len(hooks)):
        plugin, hook = hooks[index]
        try:
            if plugin in given:
                result = hook(response, app, request)
            else:
                result = hook(response, app)
        except Exception as error:
            plugin_error(plugin, "on_response", error)
            continue
        if isinstance(result, Response):
            response = result
        elif result is not None:  # an awaitable (or a wrong answer: see L{_hooked_response})
            return when_answered(
                result,
                _response_hooked,
                _response_hooked,
                plugin,
                hooks,
                index,
                response,
                app,
                request,
                given,
            )
    return response


def _hooked_response(plugin: LoadedPlugin, result: object, response: Response) -> Response:
    """The response after an C{on_response} hook answered C{result}."""
    if isinstance(result, Response):
        return result
    if result is not None:
        plugin_error(plugin, "on_response", TypeError(f"returned {type(result).__name__}"))
    return response


def _response_hooked(
    result: object,
    plugin: LoadedPlugin,
    hooks: Hooks,
    index: int,
    response: Response,
    app: AppInfo | None,
    request: Request | None = None,
    given: frozenset[LoadedPlugin] = frozenset(),
) -> Response | Deferred[Response]:
    """An awaited C{on_response} answer (a failure keeps the response), then the rest."""
    if isinstance(result, Failure):
        plugin_error(plugin, "on_response", result.value)
    else:
        response = _hooked_response(plugin, result, response)
    return response_chain(hooks, index + 1, response, app, request, given)

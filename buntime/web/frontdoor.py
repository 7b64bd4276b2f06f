"""
The front door: the one twisted.web resource every request enters.

It gives each request its id and its eliot action, then walks the order of
resolution of SPEC §4 in L{FrontDoor.dispatch}, and writes the resulting
L{buntime.http.Response} back, streaming bodies with backpressure.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from buntime import __version__
from buntime._logging import finish_request, log, new_id, request_action, request_fields
from buntime.http import AppInfo, Headers, Request, Response
from buntime.web.api import CoreAPI
from buntime.web.state import RuntimeState
from buntime.web.websocket import WebSockets, handed_over

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "x-request-id",
    }
)

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response | None]]
"""A dispatch step: answer with a response, or C{None} for "not mine"."""


def request_id_for(header: bytes | None) -> str:
    """The client's C{x-request-id} when it is sane, else a new uuid4."""
    return _client_request_id(header) or new_id()


def _client_request_id(header: bytes | None) -> str | None:
    """The client's C{x-request-id} when it is sane."""
    if header:
        text = header.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return None


def _ids(header: bytes | None) -> tuple[str, str | None]:
    """
    A request's id (see L{request_id_for}) and the uuid of its eliot task:
    the same new uuid when the client sent no id (one uuid made, not two),
    else C{None} for a new one (a client's id need not be unique).
    """
    given = _client_request_id(header)
    if given is not None:
        return given, None
    made = new_id()
    return made, made


_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def csrf_refusal(request: Any) -> Response | None:
    """
    SPEC §4 CSRF rule for the core API: a state-changing request needs an
    C{Origin} with an http(s) scheme, no credentials, and the C{Host}'s
    host:port; C{x-buntime-internal: true} is exempt.  C{None} means allowed.
    """
    if request.method in _SAFE_METHODS:
        return None
    if (request.getHeader(b"x-buntime-internal") or b"").lower() == b"true":
        return None
    origin = request.getHeader(b"origin")
    if not origin:
        return Response.error(403, "FORBIDDEN", "Forbidden - Origin required")
    try:
        parsed = urlsplit(origin.decode("latin-1"))
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        allowed = (
            parsed.scheme in ("http", "https")
            and parsed.username is None
            and parsed.password is None
            and "@" not in parsed.netloc
            and parsed.netloc.lower() == host
            and host != ""
        )
    except ValueError:
        allowed = False
    if not allowed:
        return Response.error(403, "FORBIDDEN", "Forbidden")
    return None


def _replace_headers(request: Any, headers: Headers) -> None:
    """Give a twisted.web request the headers a plugin hook chose."""
    replaced = TwistedHeaders()
    for name, value in headers.items():
        replaced.addRawHeader(name, value)
    request.requestHeaders = replaced


def to_request(request: Any, request_id: str) -> Request:
    """A L{buntime.http.Request} for a twisted.web request (body fully read)."""
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    headers = [(n, v) for n, v in headers if n.lower() != "x-request-id"]
    headers.append(("x-request-id", request_id))
    content = request.content
    body = b""
    if content is not None:
        content.seek(0)
        body = content.read()
    address = request.getClientAddress()
    return Request(
        method=request.method.decode("ascii"),
        url=request.uri.decode("latin-1"),
        headers=Headers(headers),
        body=body,
        remote_addr=getattr(address, "host", None),
    )


@implementer(IPushProducer)
class _Backpressure:
    """Tells a streaming writer when the client's transport wants a pause."""

    def __init__(self) -> None:
        self._resumed: Deferred[None] | None = None
        self.stopped = False

    def wait(self) -> Deferred[None] | None:
        return self._resumed

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        waiter, self._resumed = self._resumed, None
        if waiter is not None:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()


async def send_response(request: Any, response: Response) -> None:
    """Write C{response} to the twisted.web C{request} and finish it."""
    streaming = start_response(request, response)
    if streaming is not None:
        await streaming


def start_response(request: Any, response: Response) -> Deferred[None] | None:
    """
    L{send_response} without a coroutine for a body of bytes: C{None} once
    it is written, or a Deferred that fires when the stream is.
    """
    request.setResponseCode(response.status)
    for name, value in response.headers.items():
        if name.lower() not in HOP_BY_HOP:
            request.responseHeaders.addRawHeader(name, value)
    body = response.body
    if isinstance(body, bytes | bytearray):
        if body:
            request.write(bytes(body))
        request.finish()
        return None
    return ensureDeferred(_stream(request, body))


async def _stream(request: Any, body: Any) -> None:
    producer = _Backpressure()
    request.registerProducer(producer, True)
    iterator: AsyncIterator[bytes] = body.__aiter__()
    try:
        async for chunk in iterator:
            if producer.stopped:
                break
            if chunk:
                request.write(chunk)
            waiter = producer.wait()
            if waiter is not None:
                await waiter
    except Exception as error:
        log("error", "buntime:http:stream-failed", "Response stream failed", error=str(error))
        request.unregisterProducer()
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
        return
    finally:
        aclose = getattr(iterator, "aclose", None)
        if producer.stopped and aclose is not None:
            await aclose()
    if producer.stopped:
        return
    request.unregisterProducer()
    request.finish()


def _log_crash(failure: Any) -> None:
    log(
        "error",
        "buntime:http:internal-error",
        "Unhandled error while answering a request",
        error=failure.getErrorMessage(),
        traceback=failure.getTraceback(),
    )


class _Tracked:
    """
    One request's eliot action, its place in the in-flight count, and the
    work to cancel (C{running}) when the client goes away before the answer.
    C{fields} are added to the log line (the app, the worker id).
    """

    __slots__ = ("_clock", "_line", "_started", "_state", "action", "fields", "gone", "running")

    def __init__(
        self,
        clock: IReactorTime,
        state: RuntimeState,
        request_id: str,
        method: Any,
        path: str,
        task_uuid: str | None = None,
    ) -> None:
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        self._clock = clock
        self._state = state
        self._line = (request_id, method, path)
        self.fields: dict[str, Any] = {}
        self.running: Deferred[None] | None = None
        self.gone = False
        self.action = request_action(request_id, method, path, task_uuid)
        self._started = clock.seconds()
        state.request_started()

    def run(self, function: Callable[..., Deferred], *args: Any) -> Deferred:
        """
        C{function(*args)} in the request's log context (its eliot action, and
        C{fields} for the log line): the work to cancel if the client leaves.
        """
        token = request_fields.set(self.fields)
        try:
            done = self.action.run(function, *args)
        except Exception:
            done = fail()
        finally:
            request_fields.reset(token)
        self.running = done
        return done

    def finished(self, result: object, status: int) -> None:
        """The response is written (C{result} C{None}), or the connection was lost first."""
        request_id, method, path = self._line
        # milliseconds to the microsecond: round(..., 3) at half the cost
        duration = int((self._clock.seconds() - self._started) * 1_000_000 + 0.5) / 1000
        # websocket: an upgraded request ends by handing its connection over
        aborted = result is not None and not handed_over(result)
        self.gone = True
        finish_request(
            self.action,
            {
                "level": "error" if status >= 500 else "info",
                "message": f"{method} {path} {status} {duration}ms",
                # the start message is debug: repeat what names the request
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration,
                "aborted": aborted,
                **self.fields,
            },
        )
        self._state.request_finished()
        running = self.running
        if aborted and running is not None and not running.called:
            # The client went away: stop the work (a queued request is
            # dropped, a worker is told to cancel).
            running.cancel()


class FrontDoor(Resource):
    """
    Every request: an id, an eliot action, then the dispatch steps in order.
    C{steps} are the hooks later subsystems (plugins, apps) fill in.

    C{direct} is the hot path for requests no plugin takes part in (see
    L{buntime.plugins.registry.PluginRegistry.passive_for}): the worker-app
    step as a plain Deferred, tried before the steps, which then stand for
    nothing but plugins ahead of it.  It answers C{None} for a request it
    does not take, which then goes the whole way.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        clock: IReactorTime,
        state: RuntimeState,
        api: CoreAPI,
        api_prefix: str = "",
        steps: list[Handler] | None = None,
        apis: Sequence[tuple[str, Any]] = (),
        plugins: Callable[[], Any] | None = None,
        identify: Callable[[str], tuple[AppInfo, str] | None] | None = None,
        websockets: WebSockets | None = None,
        direct: Callable[[Request, dict[str, Any]], Deferred[Response] | None] | None = None,
        claims: Callable[[str], int | None] | None = None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._state = state
        self._api = api
        self._plugins = plugins
        self._identify = identify
        self._websockets = websockets
        self._direct = direct
        self._claims = claims
        # (route prefix, Klein resource), longest prefix first; the core API last.
        mounted = [(prefix, obj.app.resource()) for prefix, obj in apis]
        mounted.sort(key=lambda pair: len(pair[0]), reverse=True)
        self._api_resources = [*mounted, ("/api", api.app.resource())]
        self._api_prefix = api_prefix
        self._api_base = f"{api_prefix}/api"
        self.steps: list[Handler] = steps or []

    def render(self, request: Any) -> Any:
        request_id, task_uuid = _ids(request.getHeader(b"x-request-id"))
        request.setHeader(b"x-request-id", request_id.encode("ascii"))
        path = request.path.decode("latin-1")
        tracked = _Tracked(self._clock, self._state, request_id, request.method, path, task_uuid)
        request.notifyFinish().addBoth(lambda result: tracked.finished(result, request.code))
        done = tracked.run(self._begin, request, request_id, path, tracked)
        done.addErrback(self._crashed, request)
        return NOT_DONE_YET

    def _begin(self, request: Any, request_id: str, path: str, tracked: _Tracked) -> Deferred:
        done = self._answer_directly(request, request_id, path, tracked)
        if done is None:
            done = ensureDeferred(self._answer(request, request_id, path, tracked))
        return done

    def takes_directly(self, path: str) -> int | None:
        """
        Whether a request for C{path} is a worker app's that no plugin takes
        part in, and then its body limit: the fast lane of L{buntime.web.h1}
        brings such requests to L{answer_fast}, without a twisted.web request.
        C{None}: not such a request.
        """
        if self._claims is None or not self._passive(path):
            return None
        return self._claims(path)

    def _passive(self, path: str) -> bool:
        """Whether C{path} may be a worker app's that no plugin takes part in."""
        if self._direct is None or path == "/.well-known/buntime":
            return False
        if path == self._api_base or path.startswith(self._api_base + "/"):
            return False
        registry = self._plugins() if self._plugins is not None else None
        return registry is None or registry.passive_for(path)

    def answer_fast(self, exchange: Any) -> bool:
        """
        Answer a request L{takes_directly} took (a L{buntime.web.h1.Exchange}):
        the same id, log action, in-flight count and cancellation as
        L{render}, the same answer as the worker-app step.
        """
        head = exchange.head
        request_id, task_uuid = _ids(head.request_id)
        incoming = Request(
            head.method,
            head.target,
            Headers._of((*head.headers, ("x-request-id", request_id))),
            exchange.body,
            exchange.remote,
        )
        tracked = _Tracked(self._clock, self._state, request_id, head.method, head.path, task_uuid)
        exchange.on_end(lambda result: tracked.finished(result, exchange.status))
        done = tracked.run(self._begin_fast, incoming, tracked.fields)
        # respond never raises (a response it cannot write aborts the connection)
        done.addCallbacks(
            exchange.respond,
            self._crashed_fast,
            callbackArgs=(request_id,),
            errbackArgs=(exchange, request_id),
        )
        return True

    def _begin_fast(self, incoming: Request, fields: dict[str, Any]) -> Deferred:
        answer = self._direct(incoming, fields)  # type: ignore[misc]
        if answer is None:  # the app went away since the head: the other steps
            answer = ensureDeferred(self.dispatch(incoming, fields))
        return answer

    def _crashed_fast(self, failure: Any, exchange: Any, request_id: str) -> None:
        if failure.check(CancelledError):
            return
        _log_crash(failure)
        if not exchange.written and not exchange.gone:
            error = Response.error(500, "INTERNAL_ERROR", "Internal error")
            exchange.respond(error, request_id)

    def _crashed(self, failure: Any, request: Any) -> None:
        if failure.check(CancelledError):
            return  # the client disconnected and its work was cancelled
        _log_crash(failure)
        if not request.startedWriting and not request.finished:
            ensureDeferred(
                send_response(request, Response.error(500, "INTERNAL_ERROR", "Internal error"))
            )

    def _answer_directly(
        self, request: Any, request_id: str, path: str, tracked: _Tracked
    ) -> Deferred[None] | None:
        """L{_answer} for a worker app no plugin takes part in; C{None}: not such a request."""
        if not self._passive(path):
            return None
        answer = self._direct(to_request(request, request_id), tracked.fields)  # type: ignore[misc]
        if answer is None:
            return None
        return answer.addCallback(self._deliver, request, tracked)

    def _deliver(
        self, response: Response, request: Any, tracked: _Tracked
    ) -> Deferred[None] | None:
        """L{_send} without a coroutine for a body of bytes."""
        if request.finished or tracked.gone:
            aclose = getattr(response.body, "aclose", None)
            return ensureDeferred(aclose()) if aclose is not None else None
        return start_response(request, response)

    async def _answer(self, request: Any, request_id: str, path: str, tracked: _Tracked) -> None:
        fields = tracked.fields
        is_api = path == self._api_base or path.startswith(self._api_base + "/")
        if is_api:
            refusal = csrf_refusal(request)
            if refusal is not None:
                await send_response(request, refusal)
                return
        registry = self._plugins() if self._plugins is not None else None
        if registry is None and is_api:
            self._render_api(request)
            return
        incoming = to_request(request, request_id)
        app = None
        if registry is not None:
            found = None if is_api or self._identify is None else self._identify(incoming.path)
            app, app_path = found if found is not None else (None, None)
            outcome = await registry.on_request(incoming, app, app_path)
            if isinstance(outcome, Response):
                await self._send(request, outcome, tracked)
                return
            if is_api:
                if outcome.headers != incoming.headers:
                    _replace_headers(request, outcome.headers)
                self._render_api(request)
                return
            incoming = outcome
            # websocket: an upgrade on a plugin's WebSocket path goes to its handler
            if self._websockets is not None and self._websockets.upgrade(
                request, incoming, registry, fields
            ):
                return
        response = await self.dispatch(incoming, fields)
        if registry is not None:
            response = await registry.on_response(response, app)
        await self._send(request, response, tracked)

    async def _send(self, request: Any, response: Response, tracked: _Tracked) -> None:
        if request.finished or tracked.gone:
            aclose = getattr(response.body, "aclose", None)
            if aclose is not None:
                await aclose()
            return
        await send_response(request, response)

    def _render_api(self, request: Any) -> None:
        prefix = [s for s in self._api_prefix.encode("latin-1").split(b"/") if s]
        segments = request.path.split(b"/")[1:]
        request.prepath = segments[: len(prefix)]
        request.postpath = segments[len(prefix) :]
        inner = b"/" + b"/".join(request.postpath)
        resource = next(
            res
            for prefix, res in self._api_resources
            if inner == prefix.encode() or inner.startswith(prefix.encode() + b"/")
        )
        result = resource.render(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()

    async def dispatch(self, request: Request, fields: dict[str, Any]) -> Response:
        """
        Steps 5 to 10 of the order of resolution (SPEC §4) for everything but
        the core API: C{/.well-known/buntime}, then each of C{steps} (plugin
        handlers, plugin routes, plugin apps, worker apps, the homepage),
        then the built-in answers and the 404.
        """
        path = request.path
        if path == "/.well-known/buntime":
            return Response.json({"api": self._api_base, "version": __version__})
        for step in self.steps:
            answer = await step(request, fields)
            if answer is not None:
                return answer
        if path == "/" and request.method in ("GET", "HEAD"):
            return Response.text(f"Buntime v{__version__}")
        if path == "/favicon.ico":
            return Response(204)
        return Response.error(404, "NOT_FOUND", f"Nothing at {path}", {"x-not-found": "true"})

"""
Apps made of a module-level C{routes} dict and/or a C{fetch(request)}
function::

    routes = {
        "/": "Hello from buntime",                      # a fixed response
        "/items/:id": get_item,                         # a handler
        "/users": {"GET": list_users, "POST": add_user},
        "/files/*": get_file,                           # params["*"]: the rest of the path
    }

    def get_item(request, params):
        return {"id": params["id"]}

    async def fetch(request):                           # whatever routes does not answer
        return Response.text("not here", status=404)

A dict whose keys are all HTTP methods maps methods to answers; any other
dict is a JSON response.  Handlers receive a L{buntime.http.Request} whose C{body} is all the bytes
(read before the call), plus, when they take a second argument, the path
parameters as a dict (C{:name} → C{params["name"]}, a final C{*} →
C{params["*"]}; values percent-decoded).  They return a
L{buntime.http.Response} (its body may be an async iterator: it streams),
C{str} (text/plain), C{bytes} (application/octet-stream), a C{dict} or
C{list} (JSON) or C{None} (204).  Fixed responses are the same values.

Async handlers run as asyncio tasks on the worker's event loop (await
asyncio things; a Deferred is awaited with C{d.asFuture(loop)}); a handler
may also return a Deferred.

Matching: exact paths first, then patterns with C{:params} in the order
written, then C{*} patterns, longest first; a trailing slash does not
matter.  HEAD uses the GET handler, whose answer goes to the runtime whole
(its connection sends the length, not the body).  A path that matches with
another method answers 405 (with C{Allow}) unless there is a C{fetch};
nothing matching and no C{fetch} answers 404.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from buntime.http import Headers, Request, Response
from buntime.pool.child.adapter import IAdapter, awaited
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.writer import ResponseWriter


def to_response(value: object) -> Response:
    """What a handler returned, as a L{Response}."""
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return Response.text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return Response(200, {"content-type": "application/octet-stream"}, bytes(value))
    if isinstance(value, dict | list):
        return Response.json(value)
    if value is None:
        return Response(204)
    raise TypeError(
        f"handler returned {type(value).__name__}: return a Response, str, bytes, dict, list"
        " or None"
    )


METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"))


def is_method_map(value: object) -> bool:
    """Whether a C{routes} value maps HTTP methods to answers (else a dict is JSON)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) and key.upper() in METHODS for key in value)
    )


def _takes_params(handler: Callable[..., object]) -> bool:
    """Whether C{handler} accepts a second positional argument (the path parameters)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


@frozen
class Endpoint:
    """A fixed response, or a handler (called with the parameters when it takes them)."""

    fixed: Response | None = None
    handler: Callable[..., object] | None = None
    wants_params: bool = False

    @classmethod
    def of(cls, value: object, where: str) -> Endpoint:
        if callable(value) and not isinstance(value, Response):
            return cls(handler=value, wants_params=_takes_params(value))
        try:
            return cls(fixed=to_response(value))
        except TypeError:
            raise TypeError(f"routes[{where!r}] is a {type(value).__name__}") from None

    def call(self, request: Request, params: dict[str, str], loop: Any) -> Deferred:
        if self.fixed is not None:
            return succeed(self.fixed)
        assert self.handler is not None
        if self.wants_params:
            return awaited(self.handler(request, params), loop)
        return awaited(self.handler(request), loop)


_PCHAR = "!$&'()*+,;=:@-._~"
"""What stays as it is in a path segment (RFC 3986 C{pchar}); the rest is percent-encoded."""


_CANONICAL = re.compile(r"[A-Za-z0-9/!$&'()*+,;=:@._~-]*")
"""A path already in that one encoding: nothing to decode, nothing to encode."""


def _normalize(path: str) -> str:
    """
    C{path} without its trailing slash, each segment in one percent-encoding
    (C{/caf%c3%a9} and a route's C{/café} are the same path; C{%2F} stays
    inside its segment).  A path in it already (most) is not split.
    """
    if _CANONICAL.fullmatch(path) is None:
        path = "/".join(quote(unquote(segment), safe=_PCHAR) for segment in path.split("/"))
    return path.rstrip("/") or "/"


@frozen
class Route:
    """One entry of C{routes}: its pattern and what answers each method (C{None}: any)."""

    pattern: str
    regex: re.Pattern[str] | None
    names: tuple[str, ...]
    methods: Mapping[str | None, Endpoint]

    @classmethod
    def compile(cls, pattern: str, value: object) -> Route:
        if not pattern.startswith("/"):
            raise ValueError(f"route {pattern!r} must start with /")
        if is_method_map(value):
            assert isinstance(value, Mapping)
            methods: dict[str | None, Endpoint] = {
                str(method).upper(): Endpoint.of(target, f"{pattern} {method}")
                for method, target in value.items()
            }
        else:
            methods = {None: Endpoint.of(value, pattern)}
        segments = _normalize(pattern).split("/")
        if not any(s.startswith(":") or s == "*" for s in segments):
            return cls(_normalize(pattern), None, (), methods)
        wildcard = segments[-1] == "*"
        parts: list[str] = []
        names: list[str] = []
        for segment in segments[:-1] if wildcard else segments:
            if segment.startswith(":") and len(segment) > 1:
                parts.append(f"(?P<p{len(names)}>[^/]+)")
                names.append(segment[1:])
            else:
                parts.append(re.escape(segment))
        regex = "/".join(parts)
        if wildcard:  # "/files/*" matches "/files" too
            regex += f"(?:/(?P<p{len(names)}>.*))?"
            names.append("*")
        return cls(pattern, re.compile(regex + r"\Z"), tuple(names), methods)

    @property
    def wildcard(self) -> bool:
        return bool(self.names) and self.names[-1] == "*"

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if C{path} (normalized) matches, else C{None}."""
        if self.regex is None:
            return {} if path == self.pattern else None
        found = self.regex.match(path)
        if found is None:
            return None
        return {
            name: unquote(found.group(f"p{index}") or "") for index, name in enumerate(self.names)
        }

    def allowed(self) -> list[str]:
        """The methods this route answers: its own, and HEAD where it has GET."""
        methods = [str(method) for method in self.methods]
        if "GET" in self.methods and "HEAD" not in self.methods:
            methods.append("HEAD")
        return methods

    def endpoint(self, method: str) -> Endpoint | None:
        methods = self.methods
        found = methods.get(None) or methods.get(method)
        if found is None and method == "HEAD":
            found = methods.get("GET")
        return found


@implementer(IAdapter)
@define(eq=False)
class RoutesAdapter:
    """Serves a module's C{routes} and C{fetch}; async handlers run on C{loop}."""

    routes: Mapping[str, object]
    fetch: Callable[..., object] | None
    loop: asyncio.AbstractEventLoop | None
    kind: str = "routes"
    _exact: dict[str, Route] = field(init=False, factory=dict)
    _patterns: list[Route] = field(init=False, factory=list)
    _fetch: Endpoint | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        compiled = [Route.compile(str(pattern), value) for pattern, value in self.routes.items()]
        self._exact = {route.pattern: route for route in compiled if route.regex is None}
        params = [route for route in compiled if route.regex is not None and not route.wildcard]
        wildcards = [route for route in compiled if route.wildcard]
        wildcards.sort(key=lambda route: -len(route.pattern))
        self._patterns = params + wildcards
        if self.fetch is not None:
            self._fetch = Endpoint(handler=self.fetch)

    def startup(self) -> Deferred:
        return succeed(None)

    def shutdown(self) -> Deferred:
        return succeed(None)

    def find(self, method: str, path: str) -> tuple[Endpoint | None, dict[str, str], list[str]]:
        """What answers C{method path}, its parameters, and the methods the path allows."""
        path = _normalize(path)
        allowed: list[str] = []
        exact = self._exact.get(path)
        candidates: list[tuple[Route, dict[str, str]]] = [(exact, {})] if exact is not None else []
        for route in self._patterns:
            params = route.match(path)
            if params is not None:
                candidates.append((route, params))
        for route, params in candidates:
            endpoint = route.endpoint(method)
            if endpoint is not None:
                return endpoint, params, []
            allowed.extend(m for m in route.allowed() if m not in allowed)
        return None, {}, allowed

    def handle(self, request: IncomingRequest, writer: ResponseWriter) -> Deferred:
        return Deferred.fromCoroutine(self.serve(request, writer))

    async def serve(self, incoming: IncomingRequest, writer: ResponseWriter) -> None:
        """Answer one request."""
        method = incoming.method.upper()
        endpoint, params, allowed = self.find(method, incoming.path)
        body = await incoming.body.read_all()
        if endpoint is None:
            endpoint = self._fetch
        if endpoint is None:
            response = self._unmatched(method, incoming.path, allowed)
        else:
            client = incoming.client
            request = Request(
                method,
                incoming.target,
                Headers([(name, value) for name, value in incoming.headers]),
                body,
                client[0] if client else None,
                client[1] or None if client else None,
                incoming.local_addr,
                incoming.http_version,
            )
            response = to_response(await endpoint.call(request, params, self.loop))
        await self._send(response, writer)

    @staticmethod
    def _unmatched(method: str, path: str, allowed: list[str]) -> Response:
        if allowed:
            response = Response.error(
                405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}"
            )
            return response.with_header("allow", ", ".join(sorted(allowed)))
        return Response.error(404, "NOT_FOUND", f"No route for {path}")

    async def _send(self, response: Response, writer: ResponseWriter) -> None:
        body = response.body
        headers = response.headers.items()
        if isinstance(body, bytes | bytearray | memoryview):
            await writer.respond(response.status, headers, bytes(body), response.reason)
            return
        writer.start(response.status, headers, response.reason)
        chunks = body.__aiter__()
        while True:
            try:
                chunk = await awaited(chunks.__anext__(), self.loop)
            except StopAsyncIteration:
                break
            await writer.write(bytes(chunk))
        await writer.end()

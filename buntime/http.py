"""
buntime's own HTTP value types, shared by the router, the worker pool,
plugin hooks and worker ``routes`` handlers.

All of them are immutable: every "change" returns a new value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import evolve, field, frozen

from buntime.headers import Headers

_new = object.__new__

__all__ = [
    "AppInfo",
    "Body",
    "Headers",
    "Request",
    "Response",
    "Takeover",
    "asset_answer",
    "json_answer",
    "json_error",
    "page_answer",
    "read_body",
]

Body = bytes | AsyncIterable[bytes]
"""A body is either all its bytes, or an async iterator of chunks (a stream)."""


def _headers(value: object) -> Headers:
    return value if isinstance(value, Headers) else Headers(value)


def _split_url(url: str) -> tuple[str, str]:
    """
    The path and query of C{url}: a request target (C{/path?query}; a path
    that starts with C{//} is a path, never an authority, as servers read a
    target), else an absolute URL as C{urlsplit} reads it.
    """
    if url.startswith("/"):
        if "\t" in url or "\r" in url or "\n" in url:  # dropped, as urlsplit drops them
            url = url.replace("\t", "").replace("\r", "").replace("\n", "")
        path, _, query = url.partition("#")[0].partition("?")
        return path, query
    parts = urlsplit(url)
    return parts.path, parts.query


_SPLITS_A_PATH = re.compile(r"[?#\t\r\n]")
"""What L{_split_url} would read out of a path (or drop from it)."""


def _known_parts(path: str, query: str) -> tuple[str, str] | None:
    """
    The parts L{_split_url} would read from C{path} and C{query} joined,
    when it is plain to see (a path starting with C{/} holding nothing it
    splits at or drops); C{None}: leave it to L{_split_url}.
    """
    if path[:1] == "/" and _SPLITS_A_PATH.search(path) is None:
        return path, query
    return None


@frozen
class Request:
    """
    An HTTP request as plugins and worker ``routes`` handlers see it.

    C{url} is the path with its query string (C{/api/x?q=1}), or an absolute
    URL; C{path} and C{query} are read from it.  C{remote_addr} and
    C{remote_port} are the client's end of the connection, C{local_addr}
    the C{(host, port)} the runtime accepted it on (C{None} when unknown),
    C{http_version} the client's (C{"1.1"} or C{"1.0"}).

    C{mount} is where the client sees the app that serves the request
    mounted, when a plugin routed it there from elsewhere (L{with_mount}):
    a virtual host's app is at the root of its host (C{""}), though the
    request reaches it as C{/<name>@<range>/...}.  The app is given it as
    its base (C{x-base}, C{SCRIPT_NAME}, C{root_path}, a static app's
    C{<base href>}), so the links it makes stay where the client is.
    C{None}: the app's own base.
    """

    method: str
    url: str
    headers: Headers = field(factory=Headers, converter=_headers)
    body: Body = b""
    remote_addr: str | None = None
    remote_port: int | None = None
    local_addr: tuple[str, int] | None = None
    http_version: str = "1.1"
    mount: str | None = None

    _parts: tuple[str, str] | None = field(default=None, init=False, eq=False, repr=False)
    """The path (C{/} at least) and the query, split once (see L{path})."""

    def _split(self) -> tuple[str, str]:
        parts = self._parts
        if parts is None:
            path, query = _split_url(self.url)
            parts = (path or "/", query)
            object.__setattr__(self, "_parts", parts)
        return parts

    @property
    def path(self) -> str:
        """The path part of the URL (still percent-encoded), C{/} at least."""
        parts = self._parts
        return (parts or self._split())[0]

    @property
    def query(self) -> str:
        """The raw query string, without the C{?}."""
        parts = self._parts
        return (parts or self._split())[1]

    @property
    def request_id(self) -> str | None:
        """The C{x-request-id} header, which the runtime always sets."""
        return self.headers.get("x-request-id")

    @classmethod
    def _of(
        cls,
        method: str,
        url: str,
        headers: Headers,
        body: Body,
        remote_addr: str | None,
        remote_port: int | None,
        local_addr: tuple[str, int] | None,
        parts: tuple[str, str] | None = None,
        http_version: str = "1.1",
        mount: str | None = None,
    ) -> Request:
        """
        A request of C{headers} that already are L{Headers} (C{parts}: its
        path and query when known): its slots set as attrs' frozen
        C{__init__} sets them, without the name lookups and the converter.
        Every request is made so, and copied so on its way to an app.
        """
        if cls is not Request:  # a subclass may have more to set
            return cls(
                method,
                url,
                headers,
                body,
                remote_addr,
                remote_port,
                local_addr,
                http_version,
                mount,
            )
        made = _new(Request)
        _set_method(made, method)
        _set_url(made, url)
        _set_request_headers(made, headers)
        _set_request_body(made, body)
        _set_remote_addr(made, remote_addr)
        _set_remote_port(made, remote_port)
        _set_local_addr(made, local_addr)
        _set_http_version(made, http_version)
        _set_mount(made, mount)
        _set_parts(made, parts)
        return made

    def with_header(self, name: str, value: str) -> Request:
        return self._of(
            self.method,
            self.url,
            self.headers.set(name, value),
            self.body,
            self.remote_addr,
            self.remote_port,
            self.local_addr,
            self._parts,
            self.http_version,
            self.mount,
        )

    def with_path(self, path: str) -> Request:
        """A copy with another path; the query string is kept."""
        query = self.query
        return self._of(
            self.method,
            path + ("?" + query if query else ""),
            self.headers,
            self.body,
            self.remote_addr,
            self.remote_port,
            self.local_addr,
            _known_parts(path, query),
            self.http_version,
            self.mount,
        )

    def with_body(self, body: Body) -> Request:
        return evolve(self, body=body)

    def with_mount(self, mount: str | None) -> Request:
        """
        A copy whose app is told it is mounted at C{mount} (C{""}: the
        root), not at its own base (see L{mount}).
        """
        if mount and (mount[0] != "/" or mount[-1] == "/"):
            raise ValueError(f"a mount is empty or a path without a trailing slash, not {mount!r}")
        return self._of(
            self.method,
            self.url,
            self.headers,
            self.body,
            self.remote_addr,
            self.remote_port,
            self.local_addr,
            self._parts,
            self.http_version,
            mount,
        )

    def for_app(self, path: str, base: str) -> Request:
        """
        The request as an app mounted at C{base} sees it: C{path} (the query
        string kept) and an C{x-base} header: C{with_path(path).with_header("x-base", base)}.
        """
        query = self.query
        return self._of(
            self.method,
            path + ("?" + query if query else ""),
            self.headers.set("x-base", base),
            self.body,
            self.remote_addr,
            self.remote_port,
            self.local_addr,
            _known_parts(path, query),
            self.http_version,
            self.mount,
        )


@frozen
class Response:
    """
    An HTTP response.  C{body} is bytes, or an async iterator of bytes that
    the runtime streams to the client as it is produced.  C{reason} is the
    status line's phrase when the app gave its own (C{None}: the standard
    one of C{status}).
    """

    status: int = 200
    headers: Headers = field(factory=Headers, converter=_headers)
    body: Body = b""
    reason: str | None = None

    @classmethod
    def text(cls, text: str, status: int = 200, headers: object = None) -> Response:
        hdrs = _headers(headers)
        if "content-type" not in hdrs:
            hdrs = hdrs.set("content-type", "text/plain; charset=utf-8")
        return cls(status, hdrs, text.encode("utf-8"))

    @classmethod
    def json(cls, obj: object, status: int = 200, headers: object = None) -> Response:
        """C{obj} as JSON, C{application/json} unless C{headers} give a content type."""
        hdrs = _headers(headers)
        if "content-type" not in hdrs:
            hdrs = hdrs.set("content-type", "application/json")
        return cls(status, hdrs, json.dumps(obj).encode("utf-8"))

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: object = None) -> Response:
        """A JSON error in buntime's format: C{{"error": {"code", "message"}}}."""
        return cls.json({"error": {"code": code, "message": message}}, status, headers)

    def with_header(self, name: str, value: str) -> Response:
        return _with_response_headers(self, self.headers.set(name, value))

    def with_headers(self, pairs: Iterable[tuple[str, str]]) -> Response:
        """A copy with each header of C{pairs} set (see L{Headers.set_many})."""
        return _with_response_headers(self, self.headers.set_many(pairs))

    def with_status(self, status: int) -> Response:
        """A copy with another status (and its standard reason phrase)."""
        return evolve(self, status=status, reason=None)

    def with_body(self, body: Body) -> Response:
        return evolve(self, body=body)


def _slot_setters(cls: type, *names: str) -> list[Any]:
    """
    The setters of C{names}' slots on C{cls}: they set a field of an
    instance just made as attrs' frozen C{__init__} does, without looking
    its name up (see L{Request._of} and L{_with_response_headers}).
    """
    return [cls.__dict__[name].__set__ for name in names]


(
    _set_method,
    _set_url,
    _set_request_headers,
    _set_request_body,
    _set_remote_addr,
    _set_remote_port,
    _set_local_addr,
    _set_http_version,
    _set_mount,
    _set_parts,
) = _slot_setters(
    Request,
    *(
        "method",
        "url",
        "headers",
        "body",
        "remote_addr",
        "remote_port",
        "local_addr",
        "http_version",
        "mount",
        "_parts",
    ),
)
_set_status, _set_headers, _set_body, _set_reason = _slot_setters(
    Response, "status", "headers", "body", "reason"
)


def _with_response_headers(response: Response, headers: Headers) -> Response:
    """
    A copy of C{response} with C{headers}: its slots set as attrs' frozen
    C{__init__} sets them, without the name lookups and the converter (the
    copy of every answer a plugin's C{on_response} hook changes).
    """
    if type(response) is not Response:  # a subclass may have more to set
        return type(response)(response.status, headers, response.body, response.reason)
    made = _new(Response)
    _set_status(made, response.status)
    _set_headers(made, headers)
    _set_body(made, response.body)
    _set_reason(made, response.reason)
    return made


@frozen
class Takeover:
    """
    The body of a C{101} answer that takes the client's connection over
    (a plugin's tunnel, say): the runtime writes nothing of the answer and
    hands the connection, as it is, to the protocol C{build()} makes (a
    Twisted C{IProtocol}), which then writes the 101 itself and owns the
    connection until it closes.  Bytes the client sent after its request
    reach the protocol's C{dataReceived}.  For a request that asked for no
    upgrade, the client gets a 502 instead.
    """

    build: Callable[[], Any]


@frozen
class AppInfo:
    """The app a request is for, as plugin hooks see it."""

    name: str
    version: str
    dir: str
    config: Mapping[str, Any] = field(factory=dict)


async def read_body(body: Body) -> bytes:
    """All the bytes of C{body}, consuming it if it is a stream."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    chunks = [bytes(chunk) async for chunk in body]
    return b"".join(chunks)


# -- answers from a plugin's Klein routes ---------------------------------------------------


def json_answer(request: Any, obj: object, status: int = 200) -> bytes:
    """
    For a plugin's Klein route: C{obj} as a JSON answer with C{status}
    (C{request} is the route's twisted.web request), never cached.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj).encode("utf-8")


def json_error(request: Any, status: int, code: str, message: str) -> bytes:
    """For a plugin's Klein route: an error in buntime's format (see L{Response.error})."""
    return json_answer(request, {"error": {"code": code, "message": message}}, status)


def page_answer(request: Any, path: str) -> bytes:
    """
    For a plugin's Klein route: the HTML page at C{path}, checked again on
    every load.  Only a page of the runtime's own origin (the shell) may
    frame it: another site's page could lure a click onto its buttons, whose
    requests, of the runtime's origin, pass the CSRF rule (clickjacking).
    """
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"SAMEORIGIN")
    request.setHeader(b"content-security-policy", b"frame-ancestors 'self'")
    with open(path, "rb") as page:
        return page.read()


ASSET_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
"""What L{asset_answer} serves, by file name ending."""


def asset_answer(request: Any, directory: str, name: str) -> bytes:
    """
    For a plugin's Klein route: the file C{name} of C{directory} (a page's
    script, stylesheet or icon), revalidated on every load; a 404 for a
    name with a path in it, an ending outside L{ASSET_TYPES}, or no file.
    """
    kind = ASSET_TYPES.get(os.path.splitext(name)[1])
    path = os.path.join(directory, name)
    if kind is None or name != os.path.basename(name) or name.startswith("."):
        return json_error(request, 404, "NOT_FOUND", f"No file {name!r} here")
    try:
        with open(path, "rb") as asset:
            data = asset.read()
    except OSError:
        return json_error(request, 404, "NOT_FOUND", f"No file {name!r} here")
    request.setHeader(b"content-type", kind)
    request.setHeader(b"cache-control", b"no-cache")
    return data

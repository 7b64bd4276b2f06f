"""
The core API, C{{prefix}/api/...}: health probes, and (in later modules)
app and plugin management.  A Klein app whose routes start at C{/api}.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from attrs import frozen
from klein import Klein
from twisted.web.server import Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from buntime import __version__
from buntime.logs import log
from buntime.web.api.openapi import STRING, describe, docs_page, json_object, json_response
from buntime.web.state import RuntimeState

HEALTH_SCHEMA = json_object(ok={"type": "boolean"}, status=STRING, version=STRING)
"""C{{"ok", "status", "version"}}: every health probe's answer."""


def api_routes() -> Klein:
    """
    A Klein app for the core API: its paths are matched as sent, so that
    C{/api//health} is a JSON 404 rather than werkzeug's HTML redirect to a
    path with the empty segment merged (declare routes after this).
    """
    routes = Klein()
    routes.url_map.merge_slashes = False
    return routes


def json_body(request: Any, obj: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode("utf-8")


def json_error(request: Any, status: int, code: str, message: str) -> bytes:
    return json_body(request, {"error": {"code": code, "message": message}}, status)


class APISite(Site):
    """
    A quiet site rendering an API Klein app (no access log, no tracebacks
    to clients).  The request it renders has the API C{prefix}
    (C{RUNTIME_API_PREFIX}) taken off its path; its errors put it back.
    """

    def __init__(self, resource: Any, prefix: str = "") -> None:
        super().__init__(resource)
        self.prefix = prefix
        self.displayTracebacks = False
        self.noisy = False


def _client_path(request: Any) -> str:
    """The path of an API request as the client sent it: the API prefix back in front."""
    site = getattr(request, "site", None)
    prefix = site.prefix if isinstance(site, APISite) else ""
    return prefix + request.path.decode()


def api_not_found(self: object, request: Any, failure: Any) -> bytes:
    """404 for an unknown API route, JSON like every API error, naming the path as sent."""
    request.setHeader(b"x-not-found", b"true")
    return json_error(request, 404, "NOT_FOUND", f"No API route {_client_path(request)}")


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allow_header(methods: Iterable[str]) -> bytes:
    """The C{Allow} value naming C{methods} in the usual order (GET first)."""
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    ordered = sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m))
    return ", ".join(ordered).encode("ascii")


def api_not_allowed(self: object, request: Any, failure: Any) -> bytes:
    """405 for a known API path, with the C{Allow} header HTTP asks for (RFC 9110 15.5.6)."""
    request.setHeader(b"allow", allow_header(failure.value.valid_methods or ()))
    return json_error(
        request, 405, "METHOD_NOT_ALLOWED", f"{request.method.decode()} is not allowed here"
    )


def install_refused(self: object, request: Any, failure: Any) -> bytes:
    """An archive or a removal refused: its own status and code."""
    error = failure.value
    return json_error(request, error.status, error.code, error.message)


class ErrorHandler(Protocol):
    """A Klein error handler registered on a class-level app (C{self} first)."""

    def __call__(_self, self: Any, request: Any, failure: Any) -> bytes: ...


def disk_error(things: str) -> ErrorHandler:
    """
    A failed change on disk, logged: a full disk (or quota) is 507
    C{INSUFFICIENT_STORAGE}, one line; anything else a 500 with its traceback.
    Either answer says why.
    """

    def handler(self: object, request: Any, failure: Any) -> bytes:
        error = failure.value
        reason = getattr(error, "strerror", None) or failure.getErrorMessage()
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        log(
            "error",
            f"buntime:{things}:disk-error",
            f"Changing {things} on disk failed: {failure.getErrorMessage()}",
            **({} if full else {"traceback": failure.getTraceback()}),
        )
        if full:
            message = f"Changing {things} on disk failed: {reason}; nothing changed"
            return json_error(request, 507, "INSUFFICIENT_STORAGE", message)
        return json_error(
            request, 500, "INTERNAL_ERROR", f"Changing {things} on disk failed: {reason}"
        )

    return handler


def standard_errors(app: Klein) -> None:
    """
    The JSON 404 and 405 every API Klein app answers with.  (These handlers
    are registered on class-level Klein apps, so Klein passes the API object
    first, as C{self}.)
    """
    app.handle_errors(NotFound)(api_not_found)
    app.handle_errors(MethodNotAllowed)(api_not_allowed)


@frozen
class CoreAPI:
    """The runtime's own JSON API; C{api_base} is where it is mounted."""

    state: RuntimeState
    api_base: str = "/api"
    openapi: Callable[[], dict[str, Any]] | None = None

    app = api_routes()

    def _health(self, request: Any, status: str, ok: bool = True) -> bytes:
        body = {"ok": ok, "status": status, "version": __version__}
        return json_body(request, body, 200 if ok else 503)

    @app.route("/api/health", methods=["GET", "HEAD"])
    @describe(responses={200: json_response("Healthy", HEALTH_SCHEMA)})
    def health(self, request: Any) -> bytes:
        """
        Health check.

        Always answers 200 `{"ok": true, "status": "healthy", "version": V}`
        while the runtime process is up.
        """
        return self._health(request, "healthy")

    @app.route("/api/health/live", methods=["GET", "HEAD"])
    @describe(responses={200: json_response("Live", HEALTH_SCHEMA)})
    def live(self, request: Any) -> bytes:
        """
        Liveness probe.

        Answers 200 `{"ok": true, "status": "live", "version": V}` as long as
        the runtime answers requests at all; restart the process when it does not.
        """
        return self._health(request, "live")

    @app.route("/api/health/ready", methods=["GET", "HEAD"])
    @describe(
        responses={
            200: json_response("Ready", HEALTH_SCHEMA),
            503: json_response(
                'Not ready: `{"ok": false, "status": "starting"}` (or `"stopping"`), '
                "the health shape, not an error",
                HEALTH_SCHEMA,
            ),
        }
    )
    def ready(self, request: Any) -> bytes:
        """
        Readiness probe.

        Answers 200 `{"ok": true, "status": "ready", "version": V}` once the
        plugins are initialized and the port is listening; 503 with `"ok":
        false` and the current status before that and while shutting down, so
        a load balancer sends no traffic then.
        """
        if self.state.ready:
            return self._health(request, "ready")
        return self._health(request, self.state.status, ok=False)

    @app.route("/api/openapi.json", methods=["GET", "HEAD"])
    @describe(
        responses={
            200: json_response(
                "The OpenAPI 3.1 document of the core API",
                json_object(openapi=STRING, info={"type": "object"}, paths={"type": "object"}),
            )
        }
    )
    def openapi_json(self, request: Any) -> bytes:
        """
        The OpenAPI 3.1 document of the core API.

        Generated from the route definitions themselves, so it always lists
        every route the runtime serves.
        """
        document = self.openapi() if self.openapi is not None else {}
        return json_body(request, document)

    @app.route("/api/docs", methods=["GET", "HEAD"])
    @describe(responses={200: {"description": "An HTML page", "content": {"text/html": {}}}})
    def docs(self, request: Any) -> bytes:
        """
        Human-readable API documentation.

        A self-contained page (no scripts, nothing fetched from the network)
        rendered from the OpenAPI document.
        """
        document = self.openapi() if self.openapi is not None else {}
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return docs_page(document)

    standard_errors(app)

"""
Sending a request upstream and its answer back, as a reverse proxy does:
hop-by-hop headers dropped both ways, C{X-Forwarded-For/Proto/Host} set,
the answer's body streamed to the client as the upstream sends it (paced by
the client: the upstream connection pauses while the client does not read),
502 when the upstream cannot be reached, 504 when it does not answer in time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred

from buntime.builtins.proxy.client import UpstreamPool
from buntime.builtins.proxy.rules import Rule
from buntime.http import Request, Response, read_body

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers about one connection (RFC 9110 §7.6.1): never passed on by a proxy."""


def _hop_by_hop(pairs: Iterable[tuple[str, str]]) -> frozenset[str]:
    """L{HOP_BY_HOP} and the headers a C{Connection} header names."""
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return HOP_BY_HOP | named if named else HOP_BY_HOP


def outgoing_headers(request: Request, rule: Rule) -> list[tuple[str, str]]:
    """The headers the upstream gets: the client's less hop-by-hop, C{X-Forwarded-*}, the rule's."""
    pairs = list(request.headers.items())
    dropped = _hop_by_hop(pairs) | {"host", "content-length"}
    kept = [(name, value) for name, value in pairs if name.lower() not in dropped]
    host = request.headers.get("host") or ""
    forwarded_for = request.headers.get("x-forwarded-for")
    client = request.remote_addr or ""
    kept = [(n, v) for n, v in kept if not n.lower().startswith("x-forwarded-")]
    kept.append(("x-forwarded-for", f"{forwarded_for}, {client}" if forwarded_for else client))
    kept.append(("x-forwarded-proto", request.headers.get("x-forwarded-proto") or "http"))
    kept.append(("x-forwarded-host", request.headers.get("x-forwarded-host") or host))
    kept.append(("host", urlsplit(rule.target).netloc if rule.change_origin else host))
    kept.extend(rule.headers)
    return kept


class Forwarder:
    """Sends requests upstream over kept-alive connections (one pool for every rule)."""

    def __init__(self, reactor: Any, timeout: float, connections_per_upstream: int = 32) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.pool = UpstreamPool(reactor, connections_per_upstream)

    async def forward(self, request: Request, rule: Rule, path: str) -> Response:
        """The upstream's answer to C{request} (asked for C{path}), or the 502/504 error."""
        body = request.body if isinstance(request.body, bytes) else await read_body(request.body)
        asking = Deferred.fromCoroutine(
            self.pool.request(
                rule.upstream, request.method, _request_bytes(request, rule, path, body)
            )
        )
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            asking.cancel()

        timer = self.reactor.callLater(self.timeout, give_up)
        try:
            answer = await asking
        except Exception as error:
            if timed_out:
                return _error(504, "GATEWAY_TIMEOUT", f"{rule.target} did not answer in time")
            if isinstance(error, CancelledError):
                raise  # the client went away
            return _error(502, "BAD_GATEWAY", f"{rule.target} cannot be reached: {_why(error)}")
        finally:
            if timer.active():
                timer.cancel()
        dropped = _hop_by_hop(answer.headers)
        headers = [(name, value) for name, value in answer.headers if name.lower() not in dropped]
        return Response(answer.status, headers, answer.body, answer.reason)

    def close(self) -> None:
        """Close the upstream connections."""
        self.pool.close()


def _request_bytes(request: Request, rule: Rule, path: str, body: bytes) -> bytes:
    """The request as it goes upstream: its head and its body, in one piece."""
    query = request.query
    lines = [f"{request.method} {path}{'?' + query if query else ''} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in outgoing_headers(request, rule))
    if body or request.method in _BODY_METHODS:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose requests say their length even when it is 0 (RFC 9110 §8.6)."""


def _why(error: BaseException) -> str:
    return str(error) or error.__class__.__name__


def _error(status: int, code: str, message: str) -> Response:
    return Response.error(status, code, message, {"x-buntime-proxy": "error"})

"""
Sending a request upstream and its answer back, as a reverse proxy does:
hop-by-hop headers dropped both ways, C{X-Forwarded-For/Proto/Host} set,
the answer's body streamed to the client as the upstream sends it (paced by
the client: the upstream connection pauses while the client does not read),
an upload's body streamed to the upstream as the client sends it (paced by
the upstream), 502 when the upstream cannot be reached, 504 when it does
not answer in time (for an upload: when the upload makes no progress, or
the answer does not start after its end, in time).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from buntime.builtins.proxy.client import (
    IDLE_TIMEOUT,
    MAX_IDLE,
    Answer,
    UpstreamPool,
    UpstreamRefused,
)
from buntime.builtins.proxy.rules import Rule
from buntime.http import Request, Response
from buntime.stream import close_body

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


_NOT_PASSED = HOP_BY_HOP | {"host", "content-length"}


def outgoing_headers(request: Request, rule: Rule) -> list[tuple[str, str]]:
    """The headers the upstream gets: the client's less hop-by-hop, C{X-Forwarded-*}, the rule's."""
    kept: list[tuple[str, str, str]] = []
    forwarded: dict[str, str] = {}
    named: set[str] = set()
    host = ""
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in _NOT_PASSED:
            if lower == "host":
                host = host or value
            elif lower == "connection":
                named.update(token.strip().lower() for token in value.split(","))
        elif lower.startswith("x-forwarded-"):
            forwarded.setdefault(lower, value)
        else:
            kept.append((name, value, lower))
    headers = [(name, value) for name, value, lower in kept if lower not in named]
    given_for = forwarded.get("x-forwarded-for")
    client = request.remote_addr or ""
    headers.append(("x-forwarded-for", f"{given_for}, {client}" if given_for else client))
    headers.append(("x-forwarded-proto", forwarded.get("x-forwarded-proto") or "http"))
    headers.append(("x-forwarded-host", forwarded.get("x-forwarded-host") or host))
    headers.append(("host", rule.authority if rule.change_origin else host))
    headers.extend(rule.headers)
    return headers


class Forwarder:
    """Sends requests upstream over kept-alive connections (one pool for every rule)."""

    def __init__(
        self,
        reactor: Any,
        timeout: float,
        max_idle: int = MAX_IDLE,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.pool = UpstreamPool(reactor, max_idle, idle_timeout=idle_timeout)

    def forward(self, request: Request, rule: Rule, path: str) -> Deferred[Response]:
        """The upstream's answer to C{request} (asked for C{path}), or the 502/504 error."""
        body = request.body
        if isinstance(body, bytes):
            data = request_bytes(request, rule, path, body)
            asking = self.pool.request(rule.upstream, request.method, data, rule.guarded)
        else:  # an upload: sent on as it arrives
            length = _length(request)
            head = request_head(request, rule, path, length, chunked=length is None)
            timers: list[Any] = []
            sent = _timed(body if length is not None else _chunked(body), timers, self.timeout)
            asking = self.pool.upload(
                rule.upstream, request.method, head, sent, rule.guarded, send_timeout=self.timeout
            )
        late = self.reactor.callLater(self.timeout, _give_up, asking)
        if not isinstance(body, bytes):
            timers.append(late)
        return asking.addBoth(self._answered, rule, late)

    def _answered(self, result: Answer | Failure, rule: Rule, late: Any) -> Response | Failure:
        if late.active():
            late.cancel()
        elif isinstance(result, Failure):  # the timer cancelled the request
            return _error(504, "GATEWAY_TIMEOUT", f"{rule.target} did not answer in time")
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return result  # the client went away
            if result.check(UpstreamRefused):
                return _error(502, "LINK_LOCAL_REFUSED", link_local_refusal(rule, result.value))
            message = f"{rule.target} cannot be reached: {_why(result.value)}"
            return _error(502, "BAD_GATEWAY", message)
        dropped = _hop_by_hop(result.headers)
        headers = [(name, value) for name, value in result.headers if name.lower() not in dropped]
        return Response(result.status, headers, result.body, result.reason)

    def close(self) -> None:
        """Close the upstream connections."""
        self.pool.close()


def request_bytes(
    request: Request, rule: Rule, path: str, body: bytes, extra: Iterable[str] = ()
) -> bytes:
    """
    The request as it goes upstream: its head (with the C{extra} header
    lines) and its body, in one piece.
    """
    length = len(body) if body or request.method in _BODY_METHODS else None
    return request_head(request, rule, path, length, extra) + body


def request_head(
    request: Request,
    rule: Rule,
    path: str,
    length: int | None,
    extra: Iterable[str] = (),
    chunked: bool = False,
) -> bytes:
    """
    The request's head as it goes upstream, with the C{extra} header lines
    and its body's C{length} (C{None}: no body, or C{chunked}: a body of
    unknown length, sent in chunks).
    """
    query = request.query
    lines = [f"{request.method} {path}{'?' + query if query else ''} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in outgoing_headers(request, rule))
    lines.extend(extra)
    if length is not None:
        lines.append(f"content-length: {length}")
    elif chunked:
        lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _length(request: Request) -> int | None:
    """An upload's length, as its C{Content-Length} says (the HTTP layer held it to it)."""
    given = request.headers.get("content-length")
    return int(given) if given is not None and given.isdigit() else None


async def _timed(
    body: AsyncIterable[bytes], timers: list[Any], timeout: float
) -> AsyncIterator[bytes]:
    """
    C{body}, its progress putting the C{timers} off by C{timeout}: an
    upload's timeout runs from the last chunk that came from the client or
    was taken by the upstream, then from its end to the start of the answer.
    """

    def progress() -> None:
        for timer in timers:
            if timer.active():
                timer.reset(timeout)

    try:
        async for chunk in body:
            progress()
            yield chunk
            progress()
        progress()
    finally:
        await close_body(body)


async def _chunked(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """C{body} in HTTP/1.1 chunks, for a stream whose length is unknown."""
    try:
        async for chunk in body:
            if chunk:
                yield b"%x\r\n%b\r\n" % (len(chunk), chunk)
        yield b"0\r\n\r\n"
    finally:
        await close_body(body)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose requests say their length even when it is 0 (RFC 9110 §8.6)."""


def _give_up(asking: Deferred[Answer]) -> None:
    """The upstream took too long to answer: drop the request (L{Forwarder._answered} says 504)."""
    asking.cancel()


def link_local_refusal(rule: Rule, address: object) -> str:
    """Why a guarded rule's request was not sent (the SSRF guard)."""
    return (
        f"{rule.target} resolves to the link-local address {address}, which rules added"
        " through the API may not reach (the manifest's allowLinkLocal allows it)"
    )


def _why(error: BaseException) -> str:
    return str(error) or error.__class__.__name__


def _error(status: int, code: str, message: str) -> Response:
    return Response.error(status, code, message, {"x-buntime-proxy": "error"})

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

import treq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TwistedHeaders

from buntime.builtins.proxy.rules import Rule
from buntime.http import Request, Response
from buntime.stream import PushedStream

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

HIGH_WATER = 4
"""Chunks waiting for the client after which the upstream connection is paused."""


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

    def __init__(self, reactor: Any, timeout: float, connections_per_host: int = 32) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections_per_host
        self.pool.retryAutomatically = False  # a request is sent once (it may not be idempotent)

    async def forward(self, request: Request, rule: Rule, path: str) -> Response:
        """The upstream's answer to C{request} (asked for C{path}), or the 502/504 error."""
        query = request.query
        url = rule.target + path + (f"?{query}" if query else "")
        headers = TwistedHeaders()
        for name, value in outgoing_headers(request, rule):
            headers.addRawHeader(name, value)
        body = (
            request.body
            if isinstance(request.body, bytes)
            else b"".join([bytes(chunk) async for chunk in request.body])
        )
        asked: Deferred[Any] = treq.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            reactor=self.reactor,
            pool=self.pool,
            unbuffered=True,
            allow_redirects=False,
        )
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            asked.cancel()

        timer = self.reactor.callLater(self.timeout, give_up)
        try:
            upstream = await asked
        except Exception as error:
            if timed_out:
                return _error(504, "GATEWAY_TIMEOUT", f"{rule.target} did not answer in time")
            if isinstance(error, CancelledError):
                raise  # the client went away
            return _error(502, "BAD_GATEWAY", f"{rule.target} cannot be reached: {_why(error)}")
        finally:
            if timer.active():
                timer.cancel()
        return _answer(request, upstream)

    def close(self) -> Deferred[None]:
        """Close the kept-alive upstream connections."""
        return self.pool.closeCachedConnections()


def _why(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived, RequestTransmissionFailed
    if reasons:
        return "; ".join(str(reason.value) for reason in reasons)
    return str(error) or error.__class__.__name__


def _error(status: int, code: str, message: str) -> Response:
    return Response.error(status, code, message, {"x-buntime-proxy": "error"})


def _answer(request: Request, upstream: Any) -> Response:
    pairs = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in upstream.headers.getAllRawHeaders()
        for value in values
    ]
    dropped = _hop_by_hop(pairs)
    headers = [(name, value) for name, value in pairs if name.lower() not in dropped]
    reason = upstream.phrase.decode("latin-1") if upstream.phrase else None
    if request.method == "HEAD" or upstream.code in (204, 304) or 100 <= upstream.code < 200:
        upstream.deliverBody(_Discard())
        return Response(upstream.code, headers, b"", reason)
    receiver = _Receiver()
    upstream.deliverBody(receiver)
    return Response(upstream.code, headers, receiver.stream, reason)


class _Discard(Protocol):
    """Takes a body nobody wants (so the upstream connection can be used again)."""


class _Receiver(Protocol):
    """
    An upstream body as a L{PushedStream}: the upstream connection pauses
    while more than L{HIGH_WATER} chunks wait for the client, and is
    dropped when the client goes away.
    """

    transport: Any  # the response's producer side (pause, resume, stop)

    def __init__(self) -> None:
        self.stream = PushedStream(self._client_gone)
        self._waiting = 0
        self._paused = False
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        ack: Deferred[object] = Deferred()
        ack.addCallback(self._taken)
        self._waiting += 1
        self.stream.feed(data, ack)
        if self._waiting > HIGH_WATER and not self._paused and not self._done:
            self._paused = True
            self.transport.pauseProducing()

    def _taken(self, _: object) -> None:
        self._waiting -= 1
        if self._paused and self._waiting <= HIGH_WATER // 2 and not self._done:
            self._paused = False
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._done = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self.stream.end()
        else:
            self.stream.fail(ConnectionError(f"the upstream's answer broke off: {reason.value}"))

    def _client_gone(self) -> None:
        if not self._done:
            self._done = True
            self.transport.stopProducing()

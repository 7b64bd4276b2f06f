"""
Request body limits, enforced while the request arrives.

twisted.web reads a whole body before it calls a resource, so the limit is
checked earlier: the channel notes each request's target as its request
line arrives, and the request checks C{Content-Length} when the headers are
complete (413 without reading the body) and counts chunked bodies as they
come in (413 as soon as the limit is passed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from buntime._logging import log
from buntime.web.frontdoor import request_id_for

BodyLimit = Callable[[bytes], int]
"""Gives the body limit, in bytes, for a request target (path and query)."""


class LimitedChannel(HTTPChannel):
    """An HTTP channel that records each request's target on the request."""

    def lineReceived(self, line: bytes) -> None:
        count = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > count:
            parts = line.split(b" ")
            request = self.requests[-1]
            request.target = parts[1] if len(parts) == 3 else b"/"

    def headerReceived(self, line: bytes) -> bool:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and self.requests:
            text = value.strip()
            if not text.isdigit():
                shown = text[:40].decode("latin-1")
                self.requests[-1].reject_body(f"Invalid Content-Length: {shown!r}")
                return False
        return super().headerReceived(line)


class LimitedRequest(Request):
    """A request that refuses bodies above its target's limit with 413."""

    # No "text/html" for a response without a content type: the fast lane
    # (buntime.web.h1) adds none either, and neither do other app servers.
    defaultContentType = None
    target: bytes = b"/"
    limit: int | None = None
    received = 0
    rejected = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        # Bodies go to apps as they are; nothing here needs form parsing,
        # which would also hold a second copy of every multipart upload.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(channel, *args, **kwargs)

    uploading: Any = None  # the RuntimeState counting this request while its body arrives

    def gotLength(self, length: int | None) -> None:
        # From here until the resource renders, the request is in flight too:
        # a shutdown waits for a body that is still arriving.
        site = self.channel.site  # type: ignore[attr-defined]  # set by Site.buildProtocol
        state = getattr(site, "state", None)
        if state is not None:
            state.request_started()
            self.uploading = state
        limiter = getattr(site, "body_limit", None)
        self.limit = limiter(self.target) if limiter is not None else None
        if length is not None and self.limit is not None and length > self.limit:
            self.reject_body(f"Request body of {length} bytes exceeds the limit of {self.limit}")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.rejected:
            return
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.reject_body(f"Request body exceeds the limit of {self.limit} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        try:
            if not self.rejected:
                super().requestReceived(command, path, version)
        finally:
            self._uploaded()

    def connectionLost(self, reason: Any) -> None:
        self._uploaded()
        super().connectionLost(reason)

    def _uploaded(self) -> None:
        state, self.uploading = self.uploading, None
        if state is not None:
            state.request_finished()

    def reject_body(self, reason: str) -> None:
        """Answer 413 at once, without reading the body, and close the connection."""
        if self.rejected:
            return
        self.rejected = True
        header = self.requestHeaders.getRawHeaders(b"x-request-id")
        target = self.target.decode("latin-1", "replace")
        refuse_body(self.channel.transport, target, header[0] if header else None, reason)


def refuse_body(transport: Any, target: str, request_id: bytes | None, reason: str) -> None:
    """
    Write a 413 on C{transport} (with the request's C{x-request-id}, or a
    new one), log it, and close the connection: the body is never read.
    """
    request_id_text = request_id_for(request_id)
    body = json.dumps(
        {"error": {"code": "PAYLOAD_TOO_LARGE", "message": f"Payload Too Large: {reason}"}}
    ).encode("utf-8")
    head = (
        "HTTP/1.1 413 Payload Too Large\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id_text}\r\n"
        "connection: close\r\n\r\n"
    ).encode("latin-1")
    log(
        "info",
        "buntime:http:body-rejected",
        f"413 {target.split('?')[0]}: {reason}",
        request_id=request_id_text,
        status=413,
    )
    if transport is not None:
        transport.write(head + body)
        transport.loseConnection()


class LimitedSite(Site):
    """A Site whose requests enforce C{body_limit(target)}."""

    requestFactory = LimitedRequest
    # twisted.web types this as its HTTP/2-negotiating factory; a plain HTTP/1.1 channel works.
    protocol = LimitedChannel  # type: ignore[assignment]

    def __init__(
        self, resource: Any, body_limit: BodyLimit, state: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(resource, **kwargs)
        self.body_limit = body_limit
        self.state = state

    def http_channel(self, addr: Any) -> LimitedChannel:
        """A twisted.web channel for a connection (see L{buntime.web.h1})."""
        return Site.buildProtocol(self, addr)

    def log(self, request: Any) -> None:
        """No access log here: the front door logs every request as an eliot action."""

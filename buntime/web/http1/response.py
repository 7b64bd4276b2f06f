"""How an answer's head is written: status line, the app's headers made safe, the framing."""

from __future__ import annotations

import json
import re
from http import HTTPStatus

from twisted.web.http import datetimeToString

from buntime import __version__
from buntime.headers import is_header_name
from buntime.http import Headers
from buntime.logs import log
from buntime.web.http1.head import Refusal

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
"""Headers of an app's answer that are about its hop, not the client's: never passed on."""
_OWN = HOP_BY_HOP | {"content-length", "date", "server"}
"""Headers the connection writes itself."""
NO_BODY = frozenset({204, 304})
SERVER_VERSION = f"buntime/{__version__}".encode("ascii")
"""The C{server} header of every answer (gunicorn and uvicorn name themselves too)."""
PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus} | {
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}
"""
The reason phrase of each status as C{http.HTTPStatus} gives it (and
uvicorn sends it), with RFC 9110's names where Python before 3.13 still has
RFC 7231's; none for other statuses.
"""


def _clean(text: str) -> bytes:
    """A header name or value as bytes, line breaks replaced by spaces: it cannot split the head."""
    data = text.encode("latin-1", "replace")
    if b"\n" in data or b"\r" in data or b"\x00" in data:
        data = b" ".join(data.replace(b"\x00", b" ").splitlines())
    return data


def declared_length(value: str | None) -> int | None:
    """An app's C{Content-Length}, when it is one plain number."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii() and len(value) <= 18:
        return int(value)
    return None


def header_lines(headers: Headers) -> tuple[list[bytes], int | None]:
    """
    The lines of an app's C{headers} the connection passes on, and the
    app's own C{Content-Length} (C{None}: none, or not a plain number).
    A name that is not a token (a plugin's C{"Content-Length "}, which a
    lenient client would read as the length) is left out, and logged.
    """
    kept = []
    given = None
    bad = None
    for name, value in headers.items():
        lower = name.lower()
        if lower in _OWN:
            if lower == "content-length":
                given = declared_length(value)
            continue
        if not is_header_name(name):
            bad = [*(bad or ()), name]
            continue
        kept.append(f"{name}: {value}")
    if bad is not None:
        log(
            "warn",
            "buntime:http:bad-header",
            f"Header names that are not tokens were left out of an answer: {bad!r}",
            names=bad,
        )
    if not kept:
        return [], given
    block = "\r\n".join(kept).encode("latin-1", "replace")
    breaks = len(kept) - 1  # the joins': no name or value holds CR, LF or NUL
    if block.count(b"\r") == breaks and block.count(b"\n") == breaks and b"\x00" not in block:
        return [block], given  # the common case: one encoding, no line to repair
    return [_clean(line) for line in kept], given


class DateHeader:
    """The C{Date} header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = datetimeToString(second)
        return self._value


date_header = DateHeader()


_NOT_IN_A_PHRASE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""What RFC 9112 keeps out of a reason phrase (HTAB, SP, visible and obs-text stay)."""


def reason_phrase(text: str) -> bytes:
    """An app's own reason phrase as it can go on a status line (a control character: a space)."""
    return _NOT_IN_A_PHRASE.sub(b" ", text.encode("latin-1", "replace"))


def status_line(status: int, now: float, request_id: str, reason: bytes | None = None) -> bytes:
    """The status line and the headers every answer carries."""
    if reason is None:
        reason = PHRASES.get(status, b"")
    return b"HTTP/1.1 %d %s\r\nserver: %s\r\ndate: %s\r\nx-request-id: %s" % (
        status,
        reason,
        SERVER_VERSION,
        date_header(now),
        _clean(request_id),
    )


def refusal_bytes(refusal: Refusal, now: float, request_id: str, extra: bytes = b"") -> bytes:
    """
    The whole answer to a request the connection refuses: a JSON error, then
    close.  C{extra}: more header lines, each ending in CRLF.
    """
    message = f"{refusal.reason}: {refusal.message}"
    body = json.dumps({"error": {"code": refusal.code, "message": message}}).encode("utf-8")
    head = status_line(refusal.status, now, request_id, refusal.reason.encode("ascii"))
    lines = b"content-type: application/json\r\ncontent-length: %d\r\n%s" % (len(body), extra)
    return b"%s\r\n%sconnection: close\r\n\r\n%s" % (head, lines, body)

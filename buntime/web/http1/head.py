"""
A request head, judged by the rules of RFC 9112 before anything sees it.

C{httptools} (llhttp, strict mode) has already refused bad syntax: unknown
or lower-case methods, control characters in the target or in header
values, bad header names, obs-fold, bare LF, a C{Content-Length} that is
not one plain number, C{Content-Length} beside C{Transfer-Encoding}.
L{judge} adds what the parser leaves to the server: the version, the
target's form, exactly one valid C{Host}, transfer codings, C{Expect}, and
whether the connection stays open.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from attrs import define

from buntime.logs import new_id

_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
"""Origin form: visible ASCII (the parser refuses the rest already; this is the contract)."""
_ABSOLUTE = re.compile(rb"https?://[\x21-\x7e]+\Z", re.IGNORECASE)
_VALID_HOST = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?\Z",
)
"""RFC 3986 C{host [":" port]}: an IP literal or a reg-name (no user info, no spaces)."""
_MAX_LENGTH_DIGITS = 18
"""Longer C{Content-Length}s are refused before any arithmetic (Python's int-digit limit is far)."""


REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
"""The answers the connection gives itself (RFC 9110's reason phrases)."""


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}\Z")


def client_request_id(header: bytes | None) -> str | None:
    """The client's C{x-request-id} when it is sane (else C{None})."""
    if header:
        text = header.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return None


def request_id_for(header: bytes | None) -> str:
    """The client's C{x-request-id} when it is sane, else a new uuid4."""
    return client_request_id(header) or new_id()


class Refusal(Exception):
    """A request the connection answers itself with C{status} and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id: bytes | None = None  # the client's, when the head got that far
        self.path: str | None = None

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Bad Request")

    @property
    def code(self) -> str:
        """The error code of its JSON body: C{PAYLOAD_TOO_LARGE} for 413, say."""
        return self.reason.upper().replace(" ", "_")


@define(slots=True, eq=False)
class Head:
    """
    What the front door needs of a request head (never changed once made).
    C{headers} are the client's, C{x-request-id} aside (C{request_id}: the
    front door gives the request its own); C{close}: the connection ends
    after this exchange; C{length}: the C{Content-Length}, or C{None}
    (chunked, or no body).
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    request_id: bytes | None
    length: int | None = None
    chunked: bool = False
    close: bool = False
    keep_alive: bool = False
    expect: bool = False
    upgrade: bool = False

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated tokens of every line of one header, lower-cased."""
    return [t.strip().lower() for value in values for t in value.split(b",") if t.strip()]


_HOST, _CODINGS, _LENGTH, _CONNECTION, _EXPECT, _UPGRADE, _REQUEST_ID_HEADER = range(7)
_SPECIAL = {
    b"host": _HOST,
    b"transfer-encoding": _CODINGS,
    b"content-length": _LENGTH,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"x-request-id": _REQUEST_ID_HEADER,
}
"""The header names L{judge} looks at (the rest go to the app as they are)."""


def judge(method: bytes, target: bytes, version: str, lines: list[tuple[bytes, bytes]]) -> Head:
    """
    The L{Head} of a request the parser took, or a L{Refusal}: 505 for a
    version other than 1.0 or 1.1, 400 for a target in no form a server
    takes, a missing (HTTP/1.1), repeated or invalid C{Host}, or a transfer
    coding other than a final C{chunked} (501 when C{chunked} is final but
    other codings come before it), 417 for an C{Expect} other than
    C{100-continue}, 501 for C{CONNECT}.
    """
    if version != "1.1" and version != "1.0":
        raise Refusal(505, f"HTTP/{version} is not supported")
    if method == b"CONNECT":
        raise Refusal(501, "CONNECT is not supported")
    headers, found = _sorted_out(lines)
    none: list[bytes] = []
    lengths = found.get(_LENGTH, none)
    length = _content_length(lengths[0]) if lengths else None  # the parser refuses two
    text = _origin_form(method, target)
    _check_host(found.get(_HOST, none), version)
    if not text:  # absolute form (RFC 9112 §3.2.2): its authority stands for the Host
        text, headers = _from_absolute(target, headers)
    codings = found.get(_CODINGS, none)
    chunked = bool(codings) and _chunked(codings, version)
    if codings:
        length = None
    expect = found.get(_EXPECT, none)
    wants = _tokens(expect) if expect else []
    if wants and wants != [b"100-continue"]:
        raise Refusal(417, "Only Expect: 100-continue is supported")
    connection = found.get(_CONNECTION, none)
    options = _tokens(connection) if connection else []
    if version == "1.1":
        close, keep_alive = b"close" in options, False
    else:
        keep_alive = b"keep-alive" in options and b"close" not in options
        close = not keep_alive
    ids = found.get(_REQUEST_ID_HEADER, none)
    return Head(
        method.decode("ascii"),
        text,
        version,
        tuple(headers),
        ids[-1] if ids else None,
        length,
        chunked,
        close,
        keep_alive,
        bool(wants) and version == "1.1",  # HTTP/1.0's 100-continue is ignored (RFC 9110 §10.1.1)
        bool(found.get(_UPGRADE)) and b"upgrade" in options,
    )


def _sorted_out(
    lines: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], dict[int, list[bytes]]]:
    """
    The headers that go to the app (as text; C{x-request-id} left out: the
    front door gives the request its own), and the values of those L{judge}
    looks at, by kind.
    """
    found: dict[int, list[bytes]] = {}
    headers: list[tuple[str, str]] = []
    special = _SPECIAL
    for name, value in lines:
        kind = special.get(name.lower())
        if kind is not None:
            if kind in found:
                found[kind].append(value)
            else:
                found[kind] = [value]
            if kind == _REQUEST_ID_HEADER:
                continue
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers, found


def _content_length(value: bytes) -> int:
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        raise Refusal(400, "Invalid Content-Length")
    return int(value)


def _origin_form(method: bytes, target: bytes) -> str:
    """The target as text; empty for the absolute form (read once the Host is judged)."""
    if target == b"*":
        if method != b"OPTIONS":
            raise Refusal(400, "Invalid request target")
        return "*"
    if _TARGET.match(target):  # a fragment, which clients should not send, is dropped:
        # the path routed by is the path whose body limit is asked
        return target.split(b"#", 1)[0].decode("ascii")
    if _ABSOLUTE.match(target):
        return ""
    raise Refusal(400, "Invalid request target")


def _check_host(hosts: list[bytes], version: str) -> None:
    if len(hosts) > 1:
        raise Refusal(400, "More than one Host header")
    if not hosts:
        if version == "1.1":
            raise Refusal(400, "Missing Host header")
    elif not _VALID_HOST.match(hosts[0]):
        raise Refusal(400, "Invalid Host header")


def _from_absolute(
    target: bytes, headers: list[tuple[str, str]]
) -> tuple[str, list[tuple[str, str]]]:
    """An absolute-form target's path and query, and the headers with its authority as Host."""
    parts = urlsplit(target.decode("ascii"))
    text = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if (
        not parts.netloc
        or not _TARGET.match(text.encode("ascii"))
        or not _VALID_HOST.match(parts.netloc.encode("ascii"))
    ):
        raise Refusal(400, "Invalid request target")
    headers = [(n, v) for n, v in headers if n.lower() != "host"]
    headers.append(("host", parts.netloc))
    return text, headers


def _chunked(codings: list[bytes], version: str) -> bool:
    """C{True} for a lone final C{chunked}; any other transfer coding is refused."""
    given = _tokens(codings)
    if given == [b"chunked"] and version == "1.1":
        return True
    if given and given[-1] == b"chunked" and version == "1.1":
        raise Refusal(501, "Transfer codings other than chunked are not supported")
    raise Refusal(400, "Invalid Transfer-Encoding")

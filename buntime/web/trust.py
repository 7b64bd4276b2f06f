"""
Who may say what about a request: its id (a client's sane C{x-request-id})
and where it came from (C{X-Forwarded-*}, only from trusted proxies).  Who
may change what is L{buntime.trust}'s rule, for the core API and plugins.
"""

from __future__ import annotations

from buntime.logs import new_id
from buntime.web.http1.head import client_request_id


def request_ids(header: bytes | None) -> tuple[str, str | None]:
    """
    A request's id (the client's C{x-request-id} when it is sane, else a new
    uuid4) and the uuid of its eliot task: the same new uuid when the client
    sent no id (one uuid made, not two), else C{None} for a new one (a
    client's id need not be unique).
    """
    given = client_request_id(header)
    if given is not None:
        return given, None
    made = new_id()
    return made, made


_FORWARDED = frozenset({"forwarded"})
_FORWARDED_AND_INTERNAL = frozenset({"forwarded", "x-buntime-internal"})


def without_forwarded(
    headers: tuple[tuple[str, str], ...], internal: bool = False
) -> tuple[tuple[str, str], ...]:
    """
    C{headers} without C{X-Forwarded-*} and C{Forwarded}: an untrusted
    peer's claims; without C{x-buntime-internal} too unless C{internal}
    (this machine may claim it, docs/api.md "Who may change what").
    """
    dropped = _FORWARDED if internal else _FORWARDED_AND_INTERNAL
    kept = tuple(
        (name, value)
        for name, value in headers
        if not ((lower := name.lower()) in dropped or lower.startswith("x-forwarded-"))
    )
    return kept if len(kept) != len(headers) else headers


def with_https(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """
    C{headers} of a request that came over TLS: with C{x-forwarded-proto:
    https} unless a trusted proxy in front said how it came (in
    C{X-Forwarded-Proto}, or the C{proto} of its C{Forwarded}, which then
    becomes the C{x-forwarded-proto} apps and upstreams read; as gunicorn's
    C{wsgi.url_scheme} is C{https} on its TLS listener).  A C{Forwarded}
    without C{proto} (C{for=...} alone) says nothing about the scheme.
    """
    forwarded: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == "x-forwarded-proto":
            return headers
        if lower == "forwarded" and forwarded is None:
            forwarded = value  # the first proxy's: what the client used
    proto = _forwarded_proto(forwarded) if forwarded is not None else None
    return (*headers, ("x-forwarded-proto", proto or "https"))


def _forwarded_proto(value: str) -> str | None:
    """The C{proto} of a C{Forwarded} header's first element (RFC 7239), if it has one."""
    first = value.split(",", 1)[0]
    for pair in first.split(";"):
        key, _, given = pair.partition("=")
        if key.strip().lower() == "proto":
            return given.strip().strip('"').lower() or None
    return None

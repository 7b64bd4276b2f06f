"""
Rate limiting: at most C{requests} per C{window} for each client, counted in
windows aligned to the clock (every client's count starts again when a
window ends).  Memory is bounded: at most C{max_clients} clients are
counted in a window; past that the client seen first is forgotten.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Container, Mapping
from functools import partial
from typing import Any

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from buntime.builtins._paths import NO_PATHS, PathSet
from buntime.http import Request
from buntime.trust import trusted as is_trusted
from buntime.units import parse_duration

KEY_KINDS = ("ip", "apikey", "header:<name>")


@frozen
class RateLimitSettings:
    """C{rateLimit:} of the gateway's manifest."""

    requests: int
    window: float
    key_by: str = "ip"
    max_clients: int = 10_000
    exclude: PathSet = NO_PATHS

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> RateLimitSettings | None:
        """The settings, or C{None} when rate limiting is off (no C{requests})."""
        if not value or not value.get("requests"):
            return None
        requests = value["requests"]
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
            raise ValueError(f"rateLimit.requests must be a positive integer, not {requests!r}")
        window = parse_duration(value.get("window", "1m"))
        if window <= 0:
            raise ValueError("rateLimit.window must be longer than 0")
        key_by = str(value.get("keyBy", "ip"))
        if key_by not in ("ip", "apikey") and not (
            key_by.startswith("header:") and key_by[7:].strip()
        ):
            kinds = ", ".join(KEY_KINDS)
            raise ValueError(f"rateLimit.keyBy must be one of {kinds}, not {key_by!r}")
        max_clients = value.get("maxClients", 10_000)
        if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
            raise ValueError(f"rateLimit.maxClients must be a positive integer: {max_clients!r}")
        exclude = PathSet.parse(value.get("excludePaths"), "rateLimit.excludePaths")
        return cls(requests, window, key_by, max_clients, exclude)


TRUSTED_PEERS: frozenset[str] = frozenset({"127.0.0.1", "::1"})
"""The runtime's trusted proxies by default (C{RUNTIME_FORWARDED_ALLOW_IPS})."""


def client_ip(request: Request, trusted: Container[str] | None = TRUSTED_PEERS) -> str:
    """
    The client's address: the last C{X-Forwarded-For} entry that is not a
    C{trusted} proxy (the runtime keeps that header only from trusted
    proxies, which append to it what the client sent; C{None}: every peer
    is trusted, the first entry then), else the peer's address.
    """
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        entries = [entry.strip() for entry in forwarded.split(",")]
        if trusted is not None:
            for entry in reversed(entries):
                if entry and not is_trusted(entry, trusted):
                    return entry
        return entries[0] or request.remote_addr or "unknown"
    return request.remote_addr or "unknown"


def _api_key(request: Request) -> str | None:
    headers = request.headers
    key = headers.get("x-api-key")
    if key:
        return key
    authorization = headers.get("authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def key_function(key_by: str, trusted: Container[str] | None = TRUSTED_PEERS) -> Any:
    """
    The function giving a request's client key for C{keyBy} (the IP when it
    has none), C{trusted} the runtime's trusted proxies (L{client_ip}).
    """
    if key_by == "ip":
        return partial(client_ip, trusted=trusted)
    if key_by == "apikey":
        read = _api_key
    else:
        name = key_by[7:].strip().lower()

        def read(request: Request) -> str | None:
            return request.headers.get(name)

    def key(request: Request) -> str:
        found = read(request)
        # another space of keys, so that a header cannot take an address's count
        return "k:" + found if found else "ip:" + client_ip(request, trusted)

    return key


@define
class RateLimiter:
    """
    Counts requests per client key (L{hit}) in fixed windows of C{window}
    seconds on C{clock}.  O(1) per request: a clock reading, a float
    comparison and a dict update; C{max_clients} bounds the dict.
    """

    requests: int
    window: float
    clock: IReactorTime
    max_clients: int = 10_000
    limited: int = 0
    """Requests refused, since start."""
    forgotten: int = 0
    """Clients forgotten because C{max_clients} were counted in one window."""
    _counts: OrderedDict[str, int] = field(factory=OrderedDict, init=False)
    _ends: float = field(default=-math.inf, init=False)
    """When the current window ends."""

    def hit(self, key: str) -> int:
        """Count a request of C{key}: how many more it may make (negative: refuse it)."""
        now = self.clock.seconds()
        if now >= self._ends:
            self._roll(now)
        counts = self._counts
        count = counts.get(key)
        if count is None:
            if len(counts) >= self.max_clients:
                counts.popitem(last=False)
                self.forgotten += 1
            count = 0
        count += 1
        counts[key] = count
        remaining = self.requests - count
        if remaining < 0:
            self.limited += 1
        return remaining

    def remaining(self, key: str) -> tuple[int, int]:
        """
        How many more requests C{key} may make in this window (0 at least),
        and the whole seconds until the window ends (1 at least).
        """
        now = self.clock.seconds()
        if now >= self._ends:
            self._roll(now)
        left = self.requests - self._counts.get(key, 0)
        return (left if left > 0 else 0), math.ceil(self._ends - now) or 1

    def reset_in(self) -> int:
        """Whole seconds until the current window ends (1 at least)."""
        return self.remaining("")[1]

    def _roll(self, now: float) -> None:
        start = (now // self.window) * self.window
        self._ends = start + self.window
        self._counts.clear()

    @property
    def clients(self) -> int:
        """Clients counted in the current window."""
        if self.clock.seconds() >= self._ends:
            return 0
        return len(self._counts)

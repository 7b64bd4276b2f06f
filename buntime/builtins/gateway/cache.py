"""
The GET response cache: whole answers of status 200 kept for C{ttl} (or
less, as C{Cache-Control: max-age} says), at most C{maxEntries} of them,
the least recently used dropped first.  An answer marked C{no-store},
C{private} or C{no-cache}, with a C{Set-Cookie}, or with C{Vary: *} is not
kept; one with C{Vary} is served only to requests with the same values of
those headers.
"""

from __future__ import annotations

import fnmatch
import time
from collections import OrderedDict
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from buntime.builtins._paths import NO_PATHS, PathSet
from buntime.http import Request, Response
from buntime.units import parse_duration, parse_size

Key = tuple[str, str]
"""C{(host, url)}: one resource of one virtual host."""


@frozen
class CacheSettings:
    """C{cache:} of the gateway's manifest."""

    ttl: float
    max_entries: int = 1000
    max_entry_size: int = 1024 * 1024
    exclude: PathSet = NO_PATHS
    max_size: int = 64 * 1024 * 1024
    """Bytes of bodies kept in all: past it, the least recently used are dropped."""

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> CacheSettings | None:
        """The settings, or C{None} when the cache is off (no C{ttl})."""
        if not value or not value.get("ttl"):
            return None
        ttl = parse_duration(value["ttl"])
        max_entries = value.get("maxEntries", 1000)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"cache.maxEntries must be a positive integer, not {max_entries!r}")
        return cls(
            ttl=ttl,
            max_entries=max_entries,
            max_entry_size=parse_size(value.get("maxEntrySize", "1mb")),
            exclude=PathSet.parse(value.get("excludePaths"), "cache.excludePaths"),
            max_size=parse_size(value.get("maxSize", "64mb")),
        )


@frozen
class _Entry:
    response: Response
    stored: float
    expires: float
    vary: tuple[tuple[str, str | None], ...]
    """The C{Vary} headers and the values the stored answer was made for."""


def _directives(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    found = {}
    for part in value.lower().split(","):
        name, _, argument = part.strip().partition("=")
        found[name] = argument.strip('" ')
    return found


def _bypasses(control: str) -> bool:
    """Whether a request's C{Cache-Control} asks for a fresh answer: C{no-cache} or C{no-store}."""
    directives = _directives(control)
    return "no-cache" in directives or "no-store" in directives


def _too_old(control: str, age: int) -> bool:
    """Whether a request's C{Cache-Control: max-age} takes no answer of C{age} seconds."""
    limit = _directives(control).get("max-age")
    if limit is None:
        return False
    try:
        return age > int(limit)
    except ValueError:
        return True


def _lifetime(response: Response, ttl: float) -> float:
    """How long C{response} may be kept (0: not at all)."""
    headers = response.headers
    if "set-cookie" in headers:
        return 0.0
    control = _directives(headers.get("cache-control"))
    if "no-store" in control or "private" in control or "no-cache" in control:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in control:
            try:
                return min(ttl, float(control[name]))
            except ValueError:
                return 0.0
    expires = headers.get("expires")
    if expires is not None:  # RFC 9111 §4.2.1: Expires less Date, or now
        ends = _http_date(expires)
        if ends is None:
            return 0.0  # an invalid Expires (e.g. "0") means already expired (§5.3)
        date = _http_date(headers.get("date") or "")
        return min(ttl, ends - (date if date is not None else time.time()))
    return ttl


def _http_date(value: str) -> float | None:
    """The POSIX time of an HTTP date, or C{None} when it is not one."""
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@define
class ResponseCache:
    """L{lookup} and L{store} answers by C{(host, url)}, LRU, on C{clock}."""

    settings: CacheSettings
    clock: IReactorTime
    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    invalidated: int = 0
    _entries: OrderedDict[Key, _Entry] = field(factory=OrderedDict, init=False)
    _bytes: int = field(default=0, init=False)
    """The bodies' bytes kept (see C{maxSize})."""

    def applies(self, request: Request) -> bool:
        """Whether C{request} is the cache's: a GET, not excluded, no credentials."""
        return (
            request.method == "GET"
            and request.path not in self.settings.exclude
            and "authorization" not in request.headers
        )

    @staticmethod
    def key(request: Request) -> Key:
        return (request.headers.get("host") or "", request.url)

    def lookup(self, request: Request) -> Response | None:
        """The kept answer to C{request} (with C{X-Cache: HIT} and its C{Age}), or C{None}."""
        asked = request.headers.get("cache-control")
        if asked is not None and _bypasses(asked):
            self.misses += 1
            return None
        key = self.key(request)
        entry = self._entries.get(key)
        now = self.clock.seconds()
        if entry is not None and entry.expires <= now:
            self._drop(key)
            entry = None
        if entry is None or any(request.headers.get(n) != v for n, v in entry.vary):
            self.misses += 1
            return None
        age_seconds = int(now - entry.stored)
        if asked is not None and _too_old(asked, age_seconds):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        age = str(age_seconds)
        return entry.response.with_headers((("x-cache", "HIT"), ("age", age)))

    def store(self, request: Request, response: Response) -> bool:
        """Keep C{response} to C{request} if it may be kept; whether it was."""
        body = response.body
        if (
            response.status != 200
            or not isinstance(body, bytes)
            or len(body) > self.settings.max_entry_size
            or "no-store" in _directives(request.headers.get("cache-control"))
        ):
            return False
        lifetime = _lifetime(response, self.settings.ttl)
        vary = [n.strip().lower() for n in (response.headers.get("vary") or "").split(",")]
        if lifetime <= 0 or "*" in vary:
            return False
        now = self.clock.seconds()
        varied = tuple((name, request.headers.get(name)) for name in vary if name)
        entries = self._entries
        key = self.key(request)
        if key in entries:
            self._drop(key)
        entries[key] = _Entry(response, now, now + lifetime, varied)
        self._bytes += len(body)
        self.stores += 1
        settings = self.settings
        while len(entries) > settings.max_entries or self._bytes > settings.max_size:
            self._drop(next(iter(entries)))
            self.evictions += 1
        return key in entries

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.response.body)  # type: ignore[arg-type]  # kept: bytes

    def invalidate(self, pattern: str) -> int:
        """Drop the answers whose path (with its query) matches the glob C{pattern}: how many."""
        doomed = [key for key in self._entries if fnmatch.fnmatchcase(key[1], pattern)]
        for key in doomed:
            self._drop(key)
        self.invalidated += len(doomed)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)

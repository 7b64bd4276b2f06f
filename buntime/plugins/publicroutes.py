"""
Public routes: paths that skip plugin C{on_request} hooks (SPEC §5).

Written as a list (every method) or a map of method -> list, with C{ALL}
for every method.  In a pattern C{*} (or a C{:name} segment) is exactly one
path segment and C{**} any depth, none included (C{/api/public/**} matches
C{/api/public} and C{/api/public/a/b}).  A trailing slash does not matter,
and a HEAD request matches the GET patterns.  A path is matched as the
route or app that serves it reads it, percent-decoded: C{%2F} is a slash
there (twisted.web and WSGI decode the path), so C{/api/a%2Fb} is two
segments under C{/api}, not one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

from attrs import field, frozen

METHODS = ("ALL", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression for one public route pattern."""
    parts = [segment for segment in pattern.strip("/").split("/") if segment]
    regex = ""
    for index, segment in enumerate(parts):
        if segment == "**":
            rest = "(?:/.*)?" if index == len(parts) - 1 else "(?:/[^/]+)*"
            regex += rest
        elif segment == "*" or (segment.startswith(":") and len(segment) > 1):
            regex += "/[^/]+"
        else:
            pieces = [re.escape(piece) for piece in segment.split("*")]
            regex += "/" + "[^/]*".join(pieces)
    return re.compile(f"^{regex}/?$" if regex else "^/$")


def _pattern_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}must be a list of path patterns")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(f"{where}each pattern must be a path starting with /: {pattern!r}")
    return tuple(value)


@frozen
class PublicRoutes:
    """Compiled public routes, by method (C{ALL} for any)."""

    patterns: Mapping[str, tuple[str, ...]] = field(factory=dict)
    _compiled: Mapping[str, tuple[re.Pattern[str], ...]] = field(init=False)

    @_compiled.default
    def _compile(self) -> dict[str, tuple[re.Pattern[str], ...]]:
        return {
            method: tuple(compile_pattern(p) for p in patterns)
            for method, patterns in self.patterns.items()
            if patterns
        }

    @classmethod
    def parse(cls, value: object) -> PublicRoutes:
        """
        From a manifest's C{publicRoutes} (a list, a map, or C{None}).

        @raise ValueError: a malformed value.
        """
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            patterns = {}
            for key, items in value.items():
                method = str(key).upper()
                if method not in METHODS:
                    raise ValueError(f"unknown method {key!r} (use {', '.join(METHODS)})")
                patterns[method] = _pattern_list(items, f"{method}: ")
            return cls(patterns)
        return cls({"ALL": _pattern_list(value, "")})

    def __bool__(self) -> bool:
        return any(self.patterns.values())

    @property
    def any(self) -> bool:
        """Whether any path is public (C{False}: L{matches} is always C{False})."""
        return bool(self._compiled)

    def matches(self, method: str, path: str) -> bool:
        """Whether C{method} and C{path} (no query string, still percent-encoded) are public."""
        if not self._compiled:
            return False
        if "%" in path:  # as the route or app reads it (see the module's docstring)
            path = unquote(path)
        method = method.upper()
        methods = ["ALL", method] + (["GET"] if method == "HEAD" else [])
        for name in methods:
            for regex in self._compiled.get(name, ()):
                if regex.match(path):
                    return True
        return False

"""Paths the built-ins share: where an app named C{name@range} is mounted, and path lists."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from attrs import frozen


def app_base(spec: str) -> str:
    """
    The base an app is served at for C{name}, C{name@range} or
    C{@scope/name@range}: C{/site}, C{/site@%5E1} (the range percent-encoded,
    as the app step decodes it).

    @raise ValueError: C{spec} names no app.
    """
    spec = spec.strip().strip("/")
    scoped = spec.startswith("@")
    name, at, version = spec[1:].partition("@") if scoped else spec.partition("@")
    name = "@" + name if scoped else name
    if not name or name == "@" or " " in name:
        raise ValueError(f"invalid app {spec!r}: use name or name@range")
    return "/" + name + ("@" + quote(version, safe="") if at and version else "")


@frozen
class PathSet:
    """
    Paths as settings list them: C{/health} is that path and everything
    under it; C{/static*} every path that starts so.  Matching is two C
    operations (a set look-up and C{str.startswith} of a tuple), no regex.
    """

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, paths: Iterable[object] | None, what: str) -> PathSet:
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths or ():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"{what}: {path!r} is not a path starting with /")
            if path.endswith("*"):
                prefixes.append(path.rstrip("*"))
            else:
                path = path.rstrip("/") or "/"
                exact.add(path)
                prefixes.append(path if path == "/" else path + "/")
        return cls(frozenset(exact), tuple(prefixes))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self.exact or path.startswith(self.prefixes))

    def __bool__(self) -> bool:
        return bool(self.prefixes)


NO_PATHS = PathSet()
"""The empty list of paths."""

"""
Shell routing (SPEC §7): a browser's navigation to C{/} or to a plugin's
base (not its C{/api}) is served by the shell app, which shows the plugin's
page in a frame.  The frame's own load (C{Sec-Fetch-Dest: iframe}) and
every other request go on as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, frozen

from buntime.builtins._paths import NO_PATHS, PathSet, app_base
from buntime.http import Request


@frozen
class ShellSettings:
    """C{shell:} of the gateway's manifest."""

    app: str
    excludes: PathSet = NO_PATHS

    @classmethod
    def parse(cls, value: Mapping[str, Any] | str | None) -> ShellSettings | None:
        """The settings, or C{None} when no shell is configured (no C{app})."""
        if isinstance(value, str):
            value = {"app": value}
        if not value or not value.get("app"):
            return None
        app = value["app"]
        if not isinstance(app, str):
            raise ValueError(f"shell.app must be an app name like cpanel, not {app!r}")
        app_base(app)  # checks it
        return cls(app, PathSet.parse(value.get("excludes"), "shell.excludes"))


_API = PathSet.parse(["/api"], "api")
"""A plugin's API, under its base: never the shell's."""


def _first_segment(path: str) -> str:
    end = path.find("/", 1)
    return path if end < 0 else path[:end]


@define
class Shell:
    """Which navigations the shell app serves, and the request it gets for one."""

    base: str
    """The shell app's base (C{/cpanel}): a navigation to C{/metrics} goes to C{/cpanel/metrics}."""
    plugin_bases: frozenset[str]
    excludes: PathSet = NO_PATHS
    routed: int = 0

    @classmethod
    def build(cls, settings: ShellSettings, plugin_bases: Iterable[str]) -> Shell:
        return cls(app_base(settings.app), frozenset(plugin_bases), settings.excludes)

    def route(self, request: Request) -> Request | None:
        """The request the shell app gets for C{request}, or C{None} when it is not the shell's."""
        path = request.path
        if request.method != "GET" or path in self.excludes:
            return None
        headers = request.headers
        if headers.get("sec-fetch-mode") != "navigate":
            return None
        if headers.get("sec-fetch-dest", "document") != "document":
            return None  # a frame's (or an object's) load goes to the plugin itself
        if path != "/":
            base = _first_segment(path)
            if base not in self.plugin_bases or path[len(base) :] in _API:
                return None
        self.routed += 1
        return request.with_path(self.base + path)

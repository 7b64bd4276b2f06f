"""
Finding apps and their versions in the worker directories, and picking the
version a URL asks for.

Layouts (SPEC §2), side by side in any worker dir, scoped names
(C{@scope/name}) one directory level deeper:
  - flat:   C{<dir>/<name>@<version>/}
  - nested: C{<dir>/<name>/<version>/}
  - simple: C{<dir>/<name>/} holding a manifest or C{pyproject.toml} -> C{latest}
Versions are strict semver or C{latest}; anything else (and hidden entries)
is ignored.  When two directories claim the same version, the earlier worker
dir wins, and within one worker dir flat beats nested beats simple.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from buntime.apps.versions import is_version, max_satisfying, parse_range, version_key
from buntime.manifest import MANIFEST_FILES, PYPROJECT

LATEST = "latest"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME = re.compile(rf"\A{_NAME}\Z")
"""An app name (or a scope without its C{@})."""

_LAYOUT_RANK = {"flat": 0, "nested": 1, "simple": 2}
_RESOLVED_MAX = 4096
"""Remembered resolve() answers per scan (names and ranges come from URLs: bounded)."""


@frozen
class AppVersion:
    """One version of one app, and the directory that holds it."""

    name: str
    version: str
    dir: str
    layout: str  # "flat" | "nested" | "simple"

    @property
    def label(self) -> str:
        """C{name@version}, as logs and errors name an app."""
        return f"{self.name}@{self.version}"


def _is_version_dir(name: str) -> bool:
    return name == LATEST or is_version(name)


def _subdirs(path: str) -> list[str]:
    """Visible subdirectory names of C{path} (symlinks followed), sorted."""
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and _is_dir(e)]
    except OSError:
        return []
    return sorted(names)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _has_manifest(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in (*MANIFEST_FILES, PYPROJECT))


def _scan_level(path: str, prefix: str) -> list[AppVersion]:
    """The apps in one directory level (a worker dir, or a scope inside one)."""
    found = []
    for entry in _subdirs(path):
        entry_path = os.path.join(path, entry)
        name, at, version = entry.partition("@")
        if at:
            if NAME.match(name) and _is_version_dir(version):
                found.append(AppVersion(prefix + name, version, entry_path, "flat"))
            continue
        if NAME.match(entry) is None:
            continue
        for child in _subdirs(entry_path):
            if _is_version_dir(child):
                found.append(
                    AppVersion(prefix + entry, child, os.path.join(entry_path, child), "nested")
                )
        if _has_manifest(entry_path):
            found.append(AppVersion(prefix + entry, LATEST, entry_path, "simple"))
    return found


def scan_worker_dir(path: str) -> list[AppVersion]:
    """Every app version in one worker dir, scoped ones included."""
    found = []
    for entry in _subdirs(path):
        if entry.startswith("@") and NAME.match(entry[1:]):
            found.extend(_scan_level(os.path.join(path, entry), entry + "/"))
    found.extend(_scan_level(path, ""))
    return found


def scan(worker_dirs: Sequence[str]) -> dict[str, dict[str, AppVersion]]:
    """
    All apps across C{worker_dirs}: name -> version -> the winning
    L{AppVersion} (earlier dir first, then flat, nested, simple).
    """
    apps: dict[str, dict[str, AppVersion]] = {}
    for worker_dir in worker_dirs:
        found = scan_worker_dir(worker_dir)
        found.sort(key=lambda app: _LAYOUT_RANK[app.layout])
        for app in found:
            apps.setdefault(app.name, {}).setdefault(app.version, app)
    return apps


def _ordered(versions: Sequence[str]) -> list[str]:
    """C{latest} first, then semver versions, highest first."""
    semver = sorted((v for v in versions if v != LATEST), key=version_key, reverse=True)
    return ([LATEST] if LATEST in versions else []) + semver


def ordered_versions(versions: Iterable[str]) -> list[str]:
    """C{versions} as users read them: C{latest} first, then the highest first."""
    return _ordered(list(versions))


def _dir_tuple(dirs: Iterable[str]) -> tuple[str, ...]:
    return tuple(dirs)


@define
class AppCatalog:
    """
    The apps in the worker dirs, rescanned at most every C{cache_seconds}
    on C{clock} (a new version is seen once the cache expires, or at once
    after L{invalidate}).
    """

    worker_dirs: Sequence[str] = field(converter=_dir_tuple)
    clock: IReactorTime
    cache_seconds: float = 1.0
    _apps: dict[str, dict[str, AppVersion]] | None = field(default=None, init=False)
    _scanned_at: float = field(default=0.0, init=False)
    # resolve() answers for the current scan: (name, spec) -> version
    _resolved: dict[tuple[str, str | None], AppVersion | None] = field(factory=dict, init=False)
    changes: int = field(default=0, init=False)
    """How many times L{invalidate} was called: the runtime changed the apps' files."""

    def _current(self) -> dict[str, dict[str, AppVersion]]:
        now = self.clock.seconds()
        if self._apps is None or now - self._scanned_at >= self.cache_seconds:
            self._apps = scan(self.worker_dirs)
            self._scanned_at = now
            self._resolved = {}
        return self._apps

    def invalidate(self) -> None:
        """Forget the cached scan (after an install or a delete), and count the change."""
        self._apps = None
        self.changes += 1

    def versions(self, name: str) -> dict[str, AppVersion]:
        """Every version of C{name}: version -> L{AppVersion} (empty if unknown)."""
        return dict(self._current().get(name, {}))

    def resolve(self, name: str, spec: str | None) -> AppVersion | None:
        """
        The version of C{name} that C{spec} picks (SPEC §2): no spec ->
        C{latest} if present, else the highest version (pre-releases count);
        C{latest} -> only the latest dir; otherwise an npm range, highest
        match.  C{None} when nothing matches.

        @raise InvalidRange: C{spec} is neither C{latest} nor a valid range
            (checked even when the app does not exist).
        """
        apps = self._current()
        key = (name, spec)
        if key in self._resolved:
            return self._resolved[key]
        found = self._pick(apps, name, spec)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved = {}
        self._resolved[key] = found
        return found

    @staticmethod
    def _pick(
        apps: dict[str, dict[str, AppVersion]], name: str, spec: str | None
    ) -> AppVersion | None:
        rng = None if spec is None or spec == LATEST else parse_range(spec)
        versions = apps.get(name)
        if not versions:
            return None
        if spec is None:
            return versions.get(LATEST) or versions[_ordered(list(versions))[0]]
        if rng is None:
            return versions.get(LATEST)
        best = max_satisfying(versions, rng)
        return versions[best] if best is not None else None

    def list_apps(self) -> list[dict]:
        """
        C{GET /api/apps}: C{[{"name", "path", "versions"}]} sorted by name.
        C{path} is where the preferred version lives (C{<dir>/<name>} for
        nested and simple layouts, the worker dir for flat ones); versions
        list C{latest} first, then highest first.
        """
        listing = []
        for name, versions in sorted(self._current().items()):
            ordered = _ordered(list(versions))
            first = versions[ordered[0]]
            path = first.dir if first.layout == "simple" else os.path.dirname(first.dir)
            listing.append({"name": name, "path": path, "versions": ordered})
        return listing


def split_app_path(path: str) -> tuple[str, str | None, str, str] | None:
    """
    Split a request path into C{(name, spec, base, rest)}:
    C{"/hello@^1.0.0/api/x"} -> C{("hello", "^1.0.0", "/hello@^1.0.0", "/api/x")},
    C{"/@scope/name@1/x"} -> C{("@scope/name", "1", "/@scope/name@1", "/x")}.
    The spec is percent-decoded (C{%5E1.0.0} -> C{^1.0.0}) and C{None}
    without an C{@}; C{base} is the path prefix as sent; C{rest} is at least
    C{/}.  C{None} when the path cannot name an app.  C{path} has no query.
    """
    if not path.startswith("/"):
        return None
    if not path.startswith("/@"):  # the usual: no scope, one segment names the app
        end = path.find("/", 1)
        first = path[1:end] if end > 0 else path[1:]
        name, at, spec = first.partition("@")
        if NAME.match(name) is None:
            return None
        return name, unquote(spec) if at else None, "/" + first, path[end:] if end > 0 else "/"
    segments = path[1:].split("/")
    count = 2 if segments[0].startswith("@") else 1
    if len(segments) < count:
        return None
    scope = segments[0] + "/" if count == 2 else ""
    if scope and NAME.match(scope[1:-1]) is None:
        return None
    name, at, spec = segments[count - 1].partition("@")
    if NAME.match(name) is None:
        return None
    base = "/" + "/".join(segments[:count])
    rest = path[len(base) :] or "/"
    return scope + name, unquote(spec) if at else None, base, rest

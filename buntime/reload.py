"""
Development reload: a change to an app's files retires its workers, so the
next request starts one on the new code; a change in a plugin directory
reloads the plugins.

Changes are seen through inotify where Twisted has it (Linux), else by
polling modification times.  Hidden files and directories (C{.deps},
C{.git}, editor lock files such as C{.#app.py}), C{__pycache__} and editor
leftovers (C{app.py~}, C{.app.py.swp}, vim's C{4913}) are ignored, and a burst
of changes (an editor's save, a C{git checkout}) is acted on once, after
L{QUIET} seconds without another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.filepath import FilePath

from buntime.logs import log

QUIET = 0.1
"""Seconds without a new change before a burst of changes is acted on."""
POLL_INTERVAL = 0.5
"""Seconds between two looks at the files when there is no inotify."""

_LEFTOVER_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".pyc")


def ignored(name: str) -> bool:
    """Whether a file or directory called C{name} never triggers a reload."""
    return (
        name.startswith(".")
        or name == "__pycache__"
        or name == "4913"
        or (name.startswith("#") and name.endswith("#"))
        or name.endswith(_LEFTOVER_SUFFIXES)
    )


def relevant(path: str, roots: Iterable[str]) -> bool:
    """Whether C{path} lies under one of C{roots} through no ignored name."""
    for root in roots:
        relative = os.path.relpath(path, root)
        if relative == os.curdir:
            return True
        if not relative.startswith(os.pardir):
            return not any(ignored(part) for part in relative.split(os.sep))
    return False


def walk(root: str) -> Iterator[tuple[str, list[str]]]:
    """
    Each directory under C{root} (ignored ones left out) with its file names.
    A symlinked directory leading out of C{root} (a project linked into a
    worker dir) is followed, each real directory once (a link back up makes
    no loop); one leading to a directory inside C{root} is not: that one is
    walked (and watched) as itself.
    """
    inside = os.path.realpath(root) + os.sep
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [
            d for d in dirs if not ignored(d) and not _leads_to(os.path.join(folder, d), inside)
        ]
        yield folder, [f for f in files if not ignored(f)]


def _leads_to(path: str, inside: str) -> bool:
    """Whether C{path} is a symlink to somewhere under C{inside} (a real path ending in C{/})."""
    return os.path.islink(path) and (os.path.realpath(path) + os.sep).startswith(inside)


@define(eq=False)
class Debouncer:
    """Collects changed paths and calls C{act} with them once the burst is over."""

    clock: IReactorTime
    act: Callable[[set[str]], Any]
    quiet: float = QUIET
    _pending: set[str] = field(factory=set)
    _call: IDelayedCall | None = None

    def changed(self, path: str) -> None:
        self._pending.add(path)
        if self._call is not None and self._call.active():
            self._call.reset(self.quiet)
        else:
            self._call = self.clock.callLater(self.quiet, self._fire)

    def _fire(self) -> None:
        paths, self._pending, self._call = self._pending, set(), None
        self.act(paths)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._pending = set()


@define(eq=False)
class Poller:
    """Sees changes by comparing modification times and sizes every C{interval} seconds."""

    clock: IReactorTime
    roots: Sequence[str]
    changed: Callable[[str], None]
    interval: float = POLL_INTERVAL
    _seen: dict[str, tuple[int, int]] = field(factory=dict)
    _loop: LoopingCall | None = None

    def snapshot(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for root in self.roots:
            for folder, files in walk(root):
                for name in files:
                    path = os.path.join(folder, name)
                    try:
                        stat = os.stat(path)
                    except OSError:
                        continue
                    found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def start(self) -> None:
        self._seen = self.snapshot()
        self._loop = LoopingCall(self.look)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def look(self) -> None:
        now = self.snapshot()
        for path in set(now) | set(self._seen):
            if now.get(path) != self._seen.get(path):
                self.changed(path)
        self._seen = now

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


@define(eq=False)
class Notifier:
    """
    Sees changes through inotify, one watch per directory (ignored ones left
    out); a removed directory loses its watch and no other.
    """

    roots: Sequence[str]
    changed: Callable[[str], None]
    _inotify: Any = None
    _unwatched: int = 0
    """Directories that could not be watched: the first is logged, then a count."""

    def start(self) -> None:
        from buntime._inotify import INotify

        self._inotify = INotify()
        self._inotify.startReading()
        for root in self.roots:
            self._watch_tree(root)

    def _watch_tree(self, root: str) -> None:
        before = self._unwatched
        for folder, _ in walk(root):
            self._watch(folder)
        if self._unwatched - before > 1:
            log(
                "warn",
                "buntime:reload:watch-failed",
                f"{self._unwatched - before} directories under {root} cannot be watched",
                count=self._unwatched - before,
            )

    def _watch(self, folder: str) -> None:
        from twisted.internet import inotify

        mask = (
            inotify.IN_CLOSE_WRITE
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_MOVED_FROM
            | inotify.IN_MOVED_TO
            | inotify.IN_ATTRIB
        )
        try:
            self._inotify.watch(FilePath(folder), mask, callbacks=[self._event])
        except Exception as error:  # a directory gone already, or the watch limit
            if not os.path.isdir(folder):
                return  # gone already: nothing left to see there
            self._unwatched += 1
            if self._unwatched == 1:
                log(
                    "warn",
                    "buntime:reload:watch-failed",
                    f"Cannot watch {folder} ({error}): changes there are not seen; "
                    "is the inotify watch limit reached (fs.inotify.max_user_watches)?",
                )

    def _event(self, _: object, path: FilePath, mask: int) -> None:
        from twisted.internet import inotify

        name = path.path if isinstance(path.path, str) else path.path.decode()
        if mask & inotify.IN_DELETE_SELF and name in map(os.path.abspath, self.roots):
            log(
                "warn",
                "buntime:reload:root-removed",
                f"{name} was removed: changes there are no longer seen until a restart",
                root=name,
            )
        if not relevant(name, self.roots):
            return
        moved = mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM)
        if moved and (mask & inotify.IN_ISDIR or os.path.isdir(name)):
            # whatever directory was watched at this path is gone from it
            self._inotify.forget(path)
            if os.path.isdir(name):
                self._watch_tree(name)
        self.changed(name)

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None


def watcher(clock: IReactorTime, roots: Sequence[str], changed: Callable[[str], None]) -> Any:
    """An inotify L{Notifier} where the platform has inotify, else a L{Poller}."""
    try:
        from twisted.internet import inotify  # noqa: F401
    except ImportError:
        return Poller(clock, roots, changed)
    return Notifier(roots, changed)


def _owners(path: str, root: str) -> list[str]:
    """The directories from C{path}'s folder up to (not including) the worker dir C{root}."""
    owners = []
    folder = os.path.dirname(path) if not os.path.isdir(path) else path
    while folder != root and folder.startswith(root + os.sep):
        owners.append(folder)
        folder = os.path.dirname(folder)
    return owners


@define(eq=False)
class ReloadService(Service):
    """
    Watches the worker and plugin directories: C{retire(app_dir)} for each
    app a change touched (a no-op for directories that are no app), and
    C{reload_plugins()} once for any change among the plugins; C{invalidate()}
    once for any change among the apps.
    """

    clock: IReactorTime
    worker_dirs: Sequence[str]
    plugin_dirs: Sequence[str]
    retire: Callable[[str], Any]
    reload_plugins: Callable[[], Any]
    invalidate: Callable[[], None] = lambda: None
    """Forget cached app lookups (new or removed apps and versions are seen at once)."""
    make_watcher: Callable[..., Any] = watcher
    _watcher: Any = None
    _debouncer: Debouncer | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._debouncer = Debouncer(self.clock, self._act)
        roots = [d for d in (*self.worker_dirs, *self.plugin_dirs) if os.path.isdir(d)]
        self._watcher = self.make_watcher(self.clock, roots, self._debouncer.changed)
        try:
            self._watcher.start()
        except Exception as error:  # no inotify instance left (fs.inotify.max_user_instances)
            log(
                "warn",
                "buntime:reload:notifier-failed",
                f"Cannot watch files with inotify ({error}): polling them instead",
            )
            self._watcher = Poller(self.clock, roots, self._debouncer.changed)
            self._watcher.start()
        log(
            "info",
            "buntime:reload:watching",
            f"Reloading on changes in {', '.join(roots)}",
            how=type(self._watcher).__name__.lower(),
        )

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self._watcher is not None:
            self._watcher.stop()
        if self._debouncer is not None:
            self._debouncer.cancel()
        return None

    def _act(self, paths: set[str]) -> None:
        apps: set[str] = set()
        plugins = False
        for path in paths:
            for root in self.worker_dirs:
                if path.startswith(root + os.sep):
                    apps.update(_owners(path, root))
            plugins = plugins or any(path.startswith(root + os.sep) for root in self.plugin_dirs)
        if apps:
            log("info", "buntime:reload:apps", "App files changed", paths=sorted(paths))
            self.invalidate()
        for app_dir in sorted(apps):
            maybeDeferred(self.retire, app_dir).addErrback(self._failed, app_dir)
        if plugins:
            log("info", "buntime:reload:plugins", "Plugin files changed; reloading plugins")
            maybeDeferred(self.reload_plugins).addErrback(self._failed, "plugins")

    def _failed(self, failure: Any, what: str) -> None:
        log(
            "error",
            "buntime:reload:failed",
            f"Reloading {what} failed: {failure.getErrorMessage()}",
        )

"""Development reload: which files count, debouncing, polling, and what a change retires."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from e2e_apps import wait_until
from twisted.internet import reactor

from buntime.reload import (
    POLL_INTERVAL,
    QUIET,
    Debouncer,
    Notifier,
    Poller,
    ReloadService,
    ignored,
    relevant,
)

try:
    from twisted.internet import inotify
except ImportError:  # not Linux
    inotify = None

needs_inotify = pytest.mark.skipif(inotify is None, reason="Twisted has inotify on Linux only")


@pytest.mark.parametrize(
    "name",
    [".deps", ".deps-x1y2", "__pycache__", ".git", ".app.py.swp", "app.py~", "#app.py#", "4913"],
)
def test_ignored_names(name):
    assert ignored(name)


@pytest.mark.parametrize("name", ["app.py", "manifest.yaml", "index.html", "templates"])
def test_names_that_count(name):
    assert not ignored(name)


def test_relevant_looks_at_every_part_below_the_root():
    assert relevant("/apps/shop/app.py", ["/apps"])
    assert not relevant("/apps/shop/.deps/flask/app.py", ["/apps"])
    assert not relevant("/apps/shop/__pycache__/app.cpython-311.pyc", ["/apps"])
    assert not relevant("/elsewhere/app.py", ["/apps"])


def test_a_burst_is_acted_on_once_after_a_quiet_spell(clock):
    seen: list[set[str]] = []
    debouncer = Debouncer(clock, seen.append)
    debouncer.changed("/a")
    clock.advance(QUIET * 0.9)
    debouncer.changed("/b")
    clock.advance(QUIET * 0.9)
    assert seen == []
    debouncer.changed("/a")
    clock.advance(QUIET)
    assert seen == [{"/a", "/b"}]
    clock.advance(10)
    assert seen == [{"/a", "/b"}]
    debouncer.changed("/c")
    clock.advance(QUIET)
    assert seen == [{"/a", "/b"}, {"/c"}]


def test_cancel_forgets_what_was_pending(clock):
    seen: list[set[str]] = []
    debouncer = Debouncer(clock, seen.append)
    debouncer.changed("/a")
    debouncer.cancel()
    clock.advance(10)
    assert seen == []


def test_polling_sees_new_changed_and_removed_files_but_not_ignored_ones(clock, tmp_path):
    app = tmp_path / "shop"
    app.mkdir()
    (app / "app.py").write_text("one")
    (app / "gone.py").write_text("x")
    changed: list[str] = []
    poller = Poller(clock, [str(tmp_path)], changed.append, interval=0.5)
    poller.start()
    clock.advance(0.5)
    assert changed == []
    (app / "app.py").write_text("two, longer")
    (app / "new.py").write_text("y")
    (app / "gone.py").unlink()
    (app / ".deps").mkdir()
    (app / ".deps" / "lib.py").write_text("z")
    (app / ".app.py.swp").write_text("z")
    clock.advance(0.4)
    assert changed == []
    clock.advance(0.1)
    assert sorted(changed) == sorted(str(app / n) for n in ("app.py", "new.py", "gone.py"))
    poller.stop()
    (app / "app.py").write_text("three")
    clock.advance(5)
    assert len(changed) == 3


@needs_inotify
@pytest_twisted.ensureDeferred
async def test_inotify_keeps_watching_after_a_directory_is_removed(tmp_path):
    sub, app = tmp_path / "other" / "sub", tmp_path / "live" / "app.py"
    app.parent.mkdir()
    sub.mkdir(parents=True)
    changed: list[str] = []
    notifier = Notifier([str(tmp_path)], changed.append)
    notifier.start()
    try:
        sub.rmdir()
        assert await wait_until(reactor, lambda: str(sub) in changed, 5)
        app.write_text("edited")
        assert await wait_until(reactor, lambda: str(app) in changed, 5)
        # A directory made later is watched, even where another was removed.
        seen = len(changed)
        sub.mkdir()
        assert await wait_until(reactor, lambda: str(sub) in changed[seen:], 5)
        page = sub / "page.html"
        page.write_text("new")
        assert await wait_until(reactor, lambda: str(page) in changed, 5)
    finally:
        notifier.stop()


def test_a_symlinked_app_is_polled_through_its_link_and_a_loop_ends(clock, tmp_path):
    apps, target = tmp_path / "apps", tmp_path / "project"
    apps.mkdir()
    target.mkdir()
    (target / "app.py").write_text("one")
    (apps / "linked").symlink_to(target)
    (target / "up").symlink_to(apps)  # a loop: apps/linked/up/linked/...
    changed: list[str] = []
    poller = Poller(clock, [str(apps)], changed.append)
    poller.start()
    (target / "app.py").write_text("two, longer")
    clock.advance(POLL_INTERVAL)
    assert changed == [str(apps / "linked" / "app.py")]
    poller.stop()


def test_a_version_linked_to_another_in_the_same_dir_is_seen_as_that_one(clock, tmp_path):
    apps = tmp_path / "apps"
    (apps / "hello@1.0.0").mkdir(parents=True)
    (apps / "hello@1.0.0" / "app.py").write_text("one")
    for alias in ("hello@latest", "hello@0.9.9", "hello@zzz"):  # before and after in a listing
        (apps / alias).symlink_to(apps / "hello@1.0.0")
    changed: list[str] = []
    poller = Poller(clock, [str(apps)], changed.append)
    poller.start()
    (apps / "hello@1.0.0" / "app.py").write_text("two, longer")
    clock.advance(POLL_INTERVAL)
    assert changed == [str(apps / "hello@1.0.0" / "app.py")]
    poller.stop()


@needs_inotify
@pytest_twisted.ensureDeferred
async def test_inotify_watches_a_symlinked_app_from_the_start(tmp_path):
    apps, target = tmp_path / "apps", tmp_path / "project"
    apps.mkdir()
    (target / "templates").mkdir(parents=True)
    (apps / "linked").symlink_to(target)
    changed: list[str] = []
    notifier = Notifier([str(apps)], changed.append)
    notifier.start()
    try:
        (target / "templates" / "index.html").write_text("edited")
        page = apps / "linked" / "templates" / "index.html"
        assert await wait_until(reactor, lambda: str(page) in changed, 5)
    finally:
        notifier.stop()


@needs_inotify
@pytest_twisted.ensureDeferred
async def test_inotify_says_when_a_watched_root_is_removed(tmp_path, eliot_logger):
    apps, plugins = tmp_path / "apps", tmp_path / "plugins"
    apps.mkdir()
    plugins.mkdir()
    changed: list[str] = []
    notifier = Notifier([str(apps), f"{plugins}/"], changed.append)
    notifier.start()
    try:
        plugins.rmdir()
        assert await wait_until(reactor, lambda: len(eliot_logger.messages) > 0, 5)
        [message] = eliot_logger.messages
        assert message["message_type"] == "buntime:reload:root-removed"
        assert message["level"] == "warn" and message["root"] == str(plugins)
        # The other root is still watched.
        (apps / "app.py").write_text("edited")
        assert await wait_until(reactor, lambda: str(apps / "app.py") in changed, 5)
    finally:
        notifier.stop()


class FakeWatcher:
    def __init__(self, clock, roots, changed):
        self.roots, self.changed, self.running = roots, changed, False

    def start(self):
        self.running = True

    def stop(self):
        self.running = False


def test_changes_retire_their_app_and_reload_plugins_once(clock, tmp_path, eliot_logger):
    apps, plugins = str(tmp_path / "apps"), str(tmp_path / "plugins")
    os.makedirs(os.path.join(apps, "shop", "1.0.0"))
    os.makedirs(plugins)
    retired: list[str] = []
    reloads: list[int] = []
    invalidated: list[int] = []
    service = ReloadService(
        clock=clock,
        worker_dirs=[apps],
        plugin_dirs=[plugins],
        retire=retired.append,
        reload_plugins=lambda: reloads.append(1),
        invalidate=lambda: invalidated.append(1),
        make_watcher=FakeWatcher,
    )
    service.startService()
    watcher = service._watcher
    assert watcher.running and watcher.roots == [apps, plugins]
    watcher.changed(os.path.join(apps, "shop", "1.0.0", "app.py"))
    watcher.changed(os.path.join(apps, "shop", "1.0.0", "templates", "page.html"))
    watcher.changed(os.path.join(plugins, "p", "plugin.py"))
    watcher.changed(os.path.join(plugins, "p", "manifest.yaml"))
    assert (retired, reloads) == ([], [])
    clock.advance(QUIET)
    assert retired == [
        os.path.join(apps, "shop"),
        os.path.join(apps, "shop", "1.0.0"),
        os.path.join(apps, "shop", "1.0.0", "templates"),
    ]
    assert reloads == [1]
    assert invalidated == [1]
    service.stopService()
    assert not watcher.running


@needs_inotify
def test_past_the_inotify_watch_limit_one_line_says_so_not_one_per_directory(
    tmp_path, eliot_logger, monkeypatch
):
    from twisted.python._inotify import INotifyError

    from buntime._inotify import INotify

    for number in range(50):
        (tmp_path / f"app{number}").mkdir()
    watched: list[str] = []

    def watch(self, path, mask, autoAdd=False, callbacks=None, recursive=False):
        if len(watched) >= 3:  # the limit: inotify_add_watch fails with ENOSPC
            raise INotifyError(f"Failed to add watch on {path!r} - (-1)")
        watched.append(path.path)

    monkeypatch.setattr(INotify, "watch", watch)
    notifier = Notifier([str(tmp_path)], lambda path: None)
    notifier.start()
    try:
        first, summary = (m["message"] for m in eliot_logger.messages)
        assert "max_user_watches" in first
        assert summary == f"48 directories under {tmp_path} cannot be watched"
    finally:
        notifier.stop()


def test_without_an_inotify_instance_files_are_polled(clock, tmp_path, eliot_logger):
    class Refused(FakeWatcher):
        def start(self):
            raise OSError("INotify initialization error.")

    service = ReloadService(
        clock=clock,
        worker_dirs=[str(tmp_path)],
        plugin_dirs=[],
        retire=lambda app_dir: None,
        reload_plugins=lambda: None,
        make_watcher=Refused,
    )
    service.startService()
    try:
        assert isinstance(service._watcher, Poller)
        assert "polling them instead" in eliot_logger.messages[0]["message"]
    finally:
        service.stopService()


@needs_inotify
@pytest_twisted.ensureDeferred
async def test_inotify_watches_a_directory_made_where_another_was_moved_away(tmp_path):
    # An atomic swap (mv app old; mv new app, as deploy tools and installs do):
    # the directory now at the path is watched, not the one moved away.
    root, outside = tmp_path / "apps", tmp_path / "outside"
    version = root / "hello" / "1.0.0"
    version.mkdir(parents=True)
    outside.mkdir()
    changed: list[str] = []
    notifier = Notifier([str(root)], changed.append)
    notifier.start()
    try:
        version.rename(outside / "old")
        assert await wait_until(reactor, lambda: str(version) in changed, 5)
        seen = len(changed)
        version.mkdir()
        assert await wait_until(reactor, lambda: str(version) in changed[seen:], 5)
        app = version / "app.py"
        app.write_text("edited")
        assert await wait_until(reactor, lambda: str(app) in changed, 5)
    finally:
        notifier.stop()


@needs_inotify
@pytest_twisted.ensureDeferred
async def test_inotify_watches_a_version_an_upload_replaced(tmp_path):
    # what an upload of an installed version does: exchange, then discard the old copy
    from buntime.unpacked import exchange_paths

    version = tmp_path / "apps" / "hello" / "1.0.0"
    (version / "sub").mkdir(parents=True)
    new = tmp_path / "scratch" / "new"
    (new / "sub").mkdir(parents=True)
    changed: list[str] = []
    notifier = Notifier([str(tmp_path / "apps")], changed.append)
    notifier.start()
    try:
        if not exchange_paths(str(new), str(version)):
            pytest.skip("no renameat2 RENAME_EXCHANGE here")
        for item in sorted((tmp_path / "scratch").rglob("*"), reverse=True):
            item.rmdir()
        app = version / "sub" / "app.py"
        await wait_until(reactor, lambda: False, 0.3)  # the old copy's events arrive
        app.write_text("edited")
        assert await wait_until(reactor, lambda: str(app) in changed, 5)
    finally:
        notifier.stop()

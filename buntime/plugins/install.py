"""
Installing a plugin from an uploaded archive, and removing one, in two
steps: L{stage_plugin} / L{stage_removal} change the plugin dir and keep what
they replaced aside, then the caller reloads the plugins and either
C{commit()}s or C{rollback()}s (a plugin that fails to load changes nothing).

Archives are checked and extracted by L{buntime.archive}, as app archives
are (no C{..}, no absolute paths, no links, bounded size and entry count).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from attrs import frozen

from buntime.archive import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    Budget,
    InstallError,
    Source,
)
from buntime.plugins.discovery import DIR, MANIFEST_FILES, PluginSource, read_manifest
from buntime.unpacked import unpack

_NAME = re.compile(r"\A(?:@[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@frozen
class Staged:
    """
    A change made in a plugin dir, reversible until committed: C{path} is
    the plugin's directory, C{aside} where its previous content waits.
    """

    name: str
    path: str
    scratch: str
    aside: str | None
    installed_at: str = ""
    removal: bool = False

    def commit(self) -> None:
        """Keep the change: forget what was put aside."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.removal:
            _prune(os.path.dirname(self.path))

    def rollback(self) -> None:
        """Undo the change: the plugin dir is as it was before staging."""
        if not self.removal and os.path.lexists(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        if self.aside is not None and os.path.lexists(self.aside):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.rename(self.aside, self.path)
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.removal:
            _prune(os.path.dirname(self.path))


def _prune(directory: str) -> None:
    """Remove an emptied C{@scope} directory."""
    if os.path.basename(directory).startswith("@"):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def check_plugin_name(name: object) -> str:
    """A plugin name safe to use as a directory (C{name} or C{@scope/name})."""
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        code = (
            "PATH_TRAVERSAL" if isinstance(name, str) and (".." in name or "\\" in name) else None
        )
        raise InstallError(
            code or "INVALID_ARCHIVE",
            f"Invalid plugin name {name!r}: use letters, digits, '.', '_', '-'"
            " (optionally as @scope/name)",
        )
    return name.strip()


def _has_manifest(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, m)) for m in MANIFEST_FILES)


def _plugin_name(root: str) -> str:
    manifest = next(
        os.path.join(root, m) for m in MANIFEST_FILES if os.path.isfile(os.path.join(root, m))
    )
    document, error = read_manifest(manifest, {})
    if error:
        raise InstallError("INVALID_ARCHIVE", error)
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InstallError("MISSING_NAME", "The plugin manifest must set name")
    return check_plugin_name(name)


def stage_plugin(
    data: Source,
    filename: str,
    plugin_dir: str,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    now: Callable[[], float] = time.time,
) -> Staged:
    """
    Extract the plugin archive C{data} into C{plugin_dir} as C{<name>/} (or
    C{@scope/<name>/}), the previous copy put aside.

    @raise InstallError: C{INVALID_FILE_TYPE}, C{INVALID_ARCHIVE},
        C{PATH_TRAVERSAL}, C{MISSING_PARAMS}, C{MISSING_NAME} (400),
        C{PAYLOAD_TOO_LARGE} (413); nothing on disk changed then.
    """
    unpacked = unpack(data, filename, plugin_dir, Budget(max_total_bytes, max_files))
    try:
        root = unpacked.root(_has_manifest)
        if root is None:
            raise InstallError("MISSING_PARAMS", "Archive has no manifest.yaml at its root")
        name = _plugin_name(root)
        target = os.path.join(plugin_dir, *name.split("/"))
        aside = unpacked.move_into_place(root, target, plugin_dir)
    except BaseException:
        unpacked.discard()
        raise
    stamp = datetime.fromtimestamp(now(), UTC).isoformat(timespec="milliseconds")
    return Staged(name, target, unpacked.scratch, aside, stamp.replace("+00:00", "Z"))


def find_removable(sources: Sequence[PluginSource], name: str, plugin_dirs: Sequence[str]) -> str:
    """
    The directory of the plugin called C{name} in one of C{plugin_dirs}.

    @raise InstallError: C{PLUGIN_NOT_FOUND} (404), or C{PLUGIN_NOT_REMOVABLE}
        (400) for a built-in, a packaged plugin, or a plugin dir itself.
    """
    roots = [os.path.realpath(d) for d in plugin_dirs]
    for source in sources:
        if source.name != name:
            continue
        # A dir plugin is removed; for a built-in, its override manifests are.
        candidates = [source.path] if source.origin == DIR else list(source.overrides)
        for path in candidates:
            real = os.path.realpath(path)
            if any(real.startswith(root + os.sep) for root in roots):
                return path
        what = "a plugin dir itself" if source.origin == DIR else f"a {source.origin} plugin"
        raise InstallError(
            "PLUGIN_NOT_REMOVABLE",
            f'Plugin "{name}" is {what} and cannot be removed;'
            " disable it with enabled: false in a manifest instead",
        )
    raise InstallError("PLUGIN_NOT_FOUND", f'No plugin named "{name}"', 404)


def stage_removal(path: str) -> Staged:
    """Move the plugin at C{path} aside (hidden, in its plugin dir)."""
    parent = os.path.dirname(path)
    scratch = os.path.join(parent, f".buntime-remove-{uuid.uuid4().hex}")
    os.mkdir(scratch, 0o700)
    aside = os.path.join(scratch, "previous")
    try:
        os.rename(path, aside)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Staged(os.path.basename(path), path, scratch, aside, removal=True)

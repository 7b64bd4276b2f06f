"""
Finding plugins (nothing is imported here, except what Twisted's plugin
system imports to find packaged plugins).

Three sources, in this order of precedence (highest last):

 1. built-ins: C{buntime/builtins/<name>/manifest.yaml}, loaded first;
 2. installed packages: objects providing C{IBuntimePlugin} in a
    C{twisted/plugins/*.py} module, found with C{twisted.plugin.getPlugins};
 3. plugin dirs: C{<dir>/manifest.yaml}, C{<dir>/<name>/manifest.yaml} and
    C{<dir>/@scope/<name>/manifest.yaml}; an earlier dir wins over a later one.

A plugin-dir manifest without code that carries the name of a built-in (or
packaged) plugin is an override: its keys are merged over that plugin's
manifest.  With code of its own, it replaces that plugin.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from attrs import define, evolve, field, frozen
from twisted.plugin import getPlugins

from buntime.interfaces import IBuntimePlugin
from buntime.logs import log
from buntime.manifest import DocumentError, interpolate, parse_yaml
from buntime.plugins.manifest import DEFAULT_ENTRY, manifest_name

MANIFEST_FILES = ("manifest.yaml", "manifest.yml")
BUILTINS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "builtins")
BUILTINS_PACKAGE = "buntime.builtins"
DIR, BUILTIN, PACKAGE = "dir", "builtin", "package"
_SKIPPED = {"__pycache__", "node_modules"}


@frozen
class PluginSource:
    """
    One plugin found: its (interpolated) manifest document and where its
    code is.  C{module} is the dotted package of a built-in's directory,
    C{provider} the object of a packaged plugin; C{error} a reason the
    manifest could not be read at all.
    """

    document: Mapping[str, Any]
    path: str
    origin: str = DIR
    module: str | None = None
    provider: object | None = None
    overrides: tuple[str, ...] = ()
    error: str | None = None

    @property
    def name(self) -> str | None:
        return manifest_name(self.document)

    @property
    def entry(self) -> str:
        """The C{pluginEntry} file name (relative to C{path})."""
        entry = self.document.get("pluginEntry")
        return entry if isinstance(entry, str) and entry.strip() else DEFAULT_ENTRY

    @property
    def has_code(self) -> bool:
        if self.provider is not None:
            return True
        return os.path.isfile(os.path.join(self.path, self.entry))

    def describe(self) -> dict[str, Any]:
        """The C{GET /api/plugins} entry."""
        enabled = self.document.get("enabled", True)
        described = {
            "name": self.name,
            "path": self.path,
            "source": self.origin,
            "enabled": enabled if isinstance(enabled, bool) else str(enabled),
        }
        if self.error:
            described["error"] = self.error
        return described


def read_manifest(
    manifest_path: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], str | None]:
    """The interpolated document of a manifest file, or C{({}, reason)} when unreadable."""
    label = os.path.dirname(manifest_path)
    try:
        with open(manifest_path, "rb") as f:
            document = parse_yaml(f.read())
    except OSError as e:
        return {}, f'Plugin "{label}" manifest cannot be read: {e.strerror}'
    except DocumentError as e:
        where = f" at line {e.line}" if e.line is not None else f": {e}"
        return {}, f'Plugin "{label}" manifest is not valid YAML{where}'
    if document is None:
        document = {}
    if not isinstance(document, dict):
        return {}, f'Plugin "{label}" manifest must be a map of settings'
    return interpolate(document, environ), None


def _manifest_in(directory: str) -> str | None:
    for name in MANIFEST_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _subdirs(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [
        os.path.join(directory, name)
        for name in names
        if not name.startswith(".")
        and name not in _SKIPPED
        and os.path.isdir(os.path.join(directory, name))
    ]


def manifest_paths(plugin_dir: str) -> list[str]:
    """
    The manifests of one plugin dir: the dir itself when it has one (then
    nothing below it), else C{<name>/} and C{@scope/<name>/} below it.
    """
    own = _manifest_in(plugin_dir)
    if own is not None:
        return [own]
    found = []
    for child in _subdirs(plugin_dir):
        manifest = _manifest_in(child)
        if manifest is not None:
            found.append(manifest)
        elif os.path.basename(child).startswith("@"):
            found.extend(m for m in map(_manifest_in, _subdirs(child)) if m is not None)
    return found


def scan_dir(plugin_dir: str, environ: Mapping[str, str], origin: str = DIR) -> list[PluginSource]:
    """The plugins in one plugin dir, in name order; a missing dir has none."""
    if not os.path.isdir(plugin_dir):
        log(
            "debug",
            "buntime:plugins:dir-missing",
            f"Plugin dir {plugin_dir} does not exist",
            path=plugin_dir,
        )
        return []
    sources = []
    for manifest_path in manifest_paths(plugin_dir):
        document, error = read_manifest(manifest_path, environ)
        path = os.path.dirname(os.path.abspath(manifest_path))
        sources.append(PluginSource(document, path, origin, error=error))
    return sources


def scan_builtins(builtins_dir: str, environ: Mapping[str, str]) -> list[PluginSource]:
    """The built-in plugins shipped in the package, one directory each."""
    return [
        evolve(source, module=f"{BUILTINS_PACKAGE}.{os.path.basename(source.path)}")
        for source in scan_dir(builtins_dir, environ, BUILTIN)
    ]


def _module_dir(obj: object) -> str:
    module = sys.modules.get(getattr(obj, "__module__", None) or type(obj).__module__)
    filename = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()


def scan_packages(
    environ: Mapping[str, str], package: ModuleType | None = None
) -> list[PluginSource]:
    """
    Plugins shipped by installed packages: every object in a
    C{twisted/plugins/*.py} module (of C{package}, C{twisted.plugins} by
    default) that provides L{IBuntimePlugin}, with its C{manifest} dict.
    """
    sources = []
    for obj in getPlugins(IBuntimePlugin, package):
        manifest = getattr(obj, "manifest", None)
        path = _module_dir(obj)
        if not isinstance(manifest, Mapping):
            error = f'Plugin "{obj!r}" in {path} has no manifest dict'
            sources.append(PluginSource({}, path, PACKAGE, provider=obj, error=error))
            continue
        document = interpolate(dict(manifest), environ)
        sources.append(PluginSource(document, path, PACKAGE, provider=obj))
    return sources


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """C{over} merged over C{base}: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@define
class _Found:
    """The sources found so far, each name once, applying the precedence rules."""

    sources: list[PluginSource] = field(factory=list)
    by_name: dict[str, int] = field(factory=dict)

    def add(self, source: PluginSource) -> None:
        name = source.name
        index = self.by_name.get(name) if name is not None else None
        if name is None or index is None:
            if name is not None:
                self.by_name[name] = len(self.sources)
            self.sources.append(source)
            return
        known = self.sources[index]
        if source.origin == known.origin:
            log(
                "warn",
                "buntime:plugins:duplicate",
                f'Plugin "{name}" found in {known.path} and {source.path}; using {known.path}',
                plugin=name,
            )
        elif source.origin == DIR and not source.has_code:
            log(
                "info",
                "buntime:plugins:override",
                f'Plugin "{name}" settings overridden by {source.path}',
                plugin=name,
            )
            self.sources[index] = evolve(
                known,
                document=merge(known.document, source.document),
                overrides=(*known.overrides, source.path),
            )
        else:
            log(
                "warn",
                "buntime:plugins:replaced",
                f'Plugin "{name}" in {source.path} replaces the {known.origin} one',
                plugin=name,
            )
            self.sources[index] = source


def discover(
    plugin_dirs: Sequence[str],
    *,
    environ: Mapping[str, str],
    builtins_dir: str | None = BUILTINS_DIR,
    package: ModuleType | None = None,
    packages: bool = True,
) -> list[PluginSource]:
    """
    Every plugin found (enabled or not), built-ins first, each name once.

    @param builtins_dir: where the built-ins are (C{None}: none).
    @param package: the plugin package to scan (default C{twisted.plugins}).
    @param packages: whether to look for packaged plugins at all.
    """
    found = _Found()
    groups: list[Iterable[PluginSource]] = []
    if builtins_dir is not None:
        groups.append(scan_builtins(builtins_dir, environ))
    if packages:
        groups.append(scan_packages(environ, package))
    for plugin_dir in plugin_dirs:
        groups.append(scan_dir(os.path.abspath(plugin_dir), environ))
    for group in groups:
        for source in group:
            found.add(source)
    return list(found.sources)

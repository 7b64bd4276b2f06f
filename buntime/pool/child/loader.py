"""
Finding, importing and recognising the app a worker serves.

C{ENTRYPOINT} is a path inside C{APP_DIR} (relative, or absolute but still
inside), optionally with C{:attr}, read by the runtime's own rule
(L{buntime.apps.resolve}); empty means the first of C{app.py}, C{main.py},
C{index.py}.  The file is imported under a module name of its own, with the
app dir and the file's directory on C{sys.path}.  The app is the C{attr}
given, else C{app}, else C{application}; else the module's C{routes}/C{fetch}.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Any

from attrs import frozen
from twisted.web.resource import IResource

from buntime.apps.resolve import EntrypointError, resolve
from buntime.fresh import spec_from_source
from buntime.pool.child.adapter import IAdapter
from buntime.pool.child.asgi import AsgiAdapter, is_asgi
from buntime.pool.child.routes import RoutesAdapter
from buntime.pool.child.web import WebAdapter, is_klein
from buntime.pool.child.wsgi import WsgiAdapter

APP_NAMES = ("app", "application")
NO_APP = "Module must expose a WSGI/ASGI app, a Klein app, routes or fetch"


class LoadError(Exception):
    """The app cannot be loaded; the message is one line for the runtime to show."""


@frozen
class LoadedApp:
    """The imported module and the adapter serving it."""

    module: ModuleType
    adapter: Any

    @property
    def kind(self) -> str:
        return self.adapter.kind

    def hook(self, name: str) -> Any:
        """The module-level C{on_idle}/C{on_terminate} hook, or C{None}."""
        hook = getattr(self.module, name, None)
        return hook if callable(hook) else None


def import_file(path: str) -> ModuleType:
    """Import C{path} as a module of its own (its directory first on C{sys.path})."""
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    name = f"buntime_app_{stem}_{digest}"
    spec = spec_from_source(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"Cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def missing_module_hint(error: ModuleNotFoundError, app_dir: str) -> str:
    """
    What to do about a module the app imports and nobody provides: the three
    places an app's imports are found (docs/apps.md, "Dependencies and autoInstall").
    """
    name = (error.name or "").split(".")[0]
    if not name:
        return str(error)
    deps = os.path.join(app_dir, ".deps")
    return (
        f"ModuleNotFoundError: {error}. Provide {name!r} in one of three ways: list it"
        f" (pinned, with hashes) in the app's requirements.txt and set autoInstall: true"
        f" in its manifest;"
        f" or install it into {deps} (pip install --target {deps} {name});"
        f" or install it into the runtime's own environment"
        f" ({sys.executable} -m pip install {name})."
        " See docs/apps.md, 'Dependencies and autoInstall'."
    )


def find_app(module: ModuleType, attr: str | None) -> object | None:
    """The object named C{attr} (dotted), else C{app}, else C{application}, else C{None}."""
    if attr is not None:
        found: object = module
        for part in attr.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise LoadError(f"{module.__file__} has no attribute {attr!r}") from None
        return found
    for name in APP_NAMES:
        found = getattr(module, name, None)
        if found is not None:
            return found
    return None


def adapter_for(
    module: ModuleType,
    app: object | None,
    *,
    reactor: Any,
    loop: asyncio.AbstractEventLoop | None,
    threads: int = 10,
) -> Any:
    """The L{IAdapter} for C{app} (or for the module's C{routes}/C{fetch})."""
    adapter: Any
    if app is not None and (is_klein(app) or IResource.providedBy(app)):
        adapter = WebAdapter.for_app(app, reactor)
    elif app is not None and is_asgi(app):
        if loop is None:
            raise LoadError("ASGI apps need the asyncio reactor")
        adapter = AsgiAdapter(app, loop)
    elif app is not None and callable(app):
        adapter = WsgiAdapter(app, reactor, threads=threads)
    else:
        routes = getattr(module, "routes", None)
        fetch = getattr(module, "fetch", None)
        if not isinstance(routes, dict) and not callable(fetch):
            raise LoadError(NO_APP)
        adapter = RoutesAdapter(
            routes if isinstance(routes, dict) else {},
            fetch if callable(fetch) else None,
            loop,
        )
    assert IAdapter.providedBy(adapter)
    return adapter


def load(
    app_dir: str,
    entrypoint: str,
    *,
    reactor: Any,
    loop: asyncio.AbstractEventLoop | None,
    threads: int = 10,
) -> LoadedApp:
    """Import the app of C{app_dir} and pick its adapter (not started yet)."""
    try:
        path, attr = resolve(app_dir, entrypoint or None, suffixes=(".py",), absolute=True)
    except EntrypointError as error:
        raise LoadError(str(error)) from None
    root = os.path.realpath(app_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = import_file(path)
    app = find_app(module, attr)
    adapter = adapter_for(module, app, reactor=reactor, loop=loop, threads=threads)
    return LoadedApp(module, adapter)

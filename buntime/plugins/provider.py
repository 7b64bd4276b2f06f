"""
A plugin's code: its entry module imported (afresh for a plugin directory),
its provider made and checked against L{IBuntimePlugin}, and its C{routes}
mounted at its base.  Every failure is a L{PluginError} with the reason of
SPEC §5.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import re
import sys
import types
from typing import Any

from twisted.web.resource import IResource
from zope.interface import implementer
from zope.interface.exceptions import (
    BrokenImplementation,
    BrokenMethodImplementation,
    DoesNotImplement,
    Invalid,
)
from zope.interface.verify import verifyObject

from buntime.fresh import spec_from_source
from buntime.interfaces import IBuntimePlugin
from buntime.plugins.discovery import PluginSource
from buntime.plugins.hooks import call, plugin_failed
from buntime.plugins.manifest import PluginError, PluginManifest
from buntime.plugins.rendering import mount

_modules = itertools.count(1)


@implementer(IBuntimePlugin)
class NoCode:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """The provider of a plugin without a module: it has no hooks (an app, menus...)."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "plugin"


def import_entry(source: PluginSource, manifest: PluginManifest) -> types.ModuleType | None:
    """
    The plugin's module, or C{None} for a plugin without one.  A plugin-dir
    module is imported afresh under a new name every time (so a reload sees
    edited code); its directory is a package, so relative imports work.
    """
    entry = manifest.plugin_entry
    root = os.path.realpath(source.path)
    path = os.path.realpath(os.path.join(root, entry))
    if not path.startswith(root + os.sep) or not entry.endswith(".py"):
        raise PluginError(
            f'Plugin "{manifest.name}": pluginEntry "{entry}" must be a .py file'
            " inside the plugin directory"
        )
    if not os.path.isfile(path):
        if "pluginEntry" in manifest.raw:
            raise PluginError(
                f'Plugin "{manifest.name}": pluginEntry "{entry}" not found in {source.path}'
            )
        return None
    if source.module is not None:
        stem = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        return importlib.import_module(f"{source.module}.{stem}")
    package_name = f"_buntime_plugin_{_slug(manifest.name)}_{next(_modules)}"
    package = types.ModuleType(package_name)
    package.__path__ = [os.path.dirname(path)]
    module_name = f"{package_name}.{os.path.basename(path)[:-3]}"
    spec = spec_from_source(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f'Plugin "{manifest.name}": cannot import {path}')
    module = importlib.util.module_from_spec(spec)
    sys.modules[package_name] = package
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n.startswith(package_name)]:
            del sys.modules[name]
        raise
    return module


async def make_provider(source: PluginSource, manifest: PluginManifest) -> object:
    """
    The plugin's provider: a packaged plugin's object, the module's
    C{plugin(config)} factory result, or its module-level C{provider}.

    @raise PluginError: the module fails to import, or exposes neither.
    """
    if source.provider is not None:
        return source.provider
    try:
        module = import_entry(source, manifest)
        if module is None:
            return NoCode()
        factory = getattr(module, "plugin", None)
        if callable(factory):
            return await call(factory, dict(manifest.settings))
    except PluginError:
        raise
    except (Exception, SystemExit) as error:  # a module's sys.exit() is its failure to load
        failed = "buntime:plugins:import-failed"
        raise plugin_failed(manifest.name, "failed to load", failed, error) from None
    if hasattr(module, "provider"):
        return module.provider
    raise PluginError(
        f'Plugin "{manifest.name}": {manifest.plugin_entry} must define'
        " a plugin(config) factory or a provider object"
    )


def _member(error: Invalid) -> str:
    name = getattr(error, "name", None)
    return getattr(name, "__name__", None) or str(name)


def verify(provider: object, name: str) -> None:
    """
    C{verifyObject(IBuntimePlugin, provider)}, where only absent members are
    forgiven (they are all optional); a present one must fit its signature.

    @raise PluginError: naming what is wrong.
    """
    try:
        verifyObject(IBuntimePlugin, provider)
    except Invalid as error:
        problems = []
        for problem in getattr(error, "exceptions", None) or (error,):
            if isinstance(problem, DoesNotImplement):
                problems.append("the plugin object does not declare @implementer(IBuntimePlugin)")
            elif isinstance(problem, BrokenMethodImplementation):
                problems.append(f"{problem.method.__name__}(): {problem.mess}")
            elif isinstance(problem, BrokenImplementation):
                if hasattr(provider, _member(problem)):
                    problems.append(f"{_member(problem)} is broken")
            else:
                problems.append(str(problem))
        if problems:
            raise PluginError(
                f'Plugin "{name}" does not implement IBuntimePlugin: ' + "; ".join(problems)
            ) from None


def routes_site(provider: object, manifest: PluginManifest) -> Any:
    """The site serving the provider's C{routes} at its base (C{None} without routes)."""
    routes = getattr(provider, "routes", None)
    if routes is None:
        return None
    if manifest.base is None:
        raise PluginError(f'Plugin "{manifest.name}" has routes but no base to mount them at')
    if IResource.providedBy(routes):
        return mount(manifest.base, routes, manifest.name)
    make_resource = getattr(routes, "resource", None)
    if not callable(make_resource):
        raise PluginError(
            f'Plugin "{manifest.name}": routes must be a klein.Klein app or a twisted.web resource'
        )
    return mount(manifest.base, make_resource(), manifest.name)

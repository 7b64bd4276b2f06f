"""
Conformance of plugin providers to C{IBuntimePlugin} (STYLE #12): one test
factory, run against every built-in plugin, the example plugin, a packaged
style fake and the code-less provider.

L{conformance_tests} takes an async C{make()} returning C{(manifest, provider)}
and returns a test class checking what the runtime relies on: the object
declares and verifies against the interface; C{on_init} completes with a
real context; hooks return what they may return; C{routes} mount at the
base and answer 404 to paths they do not know (so requests fall through);
C{on_shutdown} completes after C{on_init}.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from attrs import evolve
from klein import Klein
from test_plugins_support import FakePlugin, FakePool
from twisted.internet.task import Clock
from twisted.web.resource import IResource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from buntime.http import AppInfo, Request, Response
from buntime.interfaces import IBuntimePlugin, IPluginContext
from buntime.plugins.context import PluginContext, PluginLogger, ServiceRegistry
from buntime.plugins.discovery import BUILTINS_DIR, scan_builtins, scan_dir
from buntime.plugins.hooks import call
from buntime.plugins.manifest import PluginError, parse_plugin_manifest
from buntime.plugins.provider import NoCode, make_provider, routes_site, verify
from buntime.plugins.registry import LoadedPlugin, PluginRegistry

Make = Callable[[], Awaitable[tuple[dict[str, Any], object]]]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def context_for(manifest: Any) -> PluginContext:
    return PluginContext(
        name=manifest.name,
        base=manifest.base,
        path="/plugins/x",
        config=manifest.settings,
        global_config={"worker_dirs": []},
        logger=PluginLogger(manifest.name, manifest.short_name),
        pool=FakePool(),
        services=ServiceRegistry(),
        data_dir="/tmp/data",
        reactor=Clock(),
    )


def conformance_tests(make: Make) -> type:
    """A test class for the provider C{await make()} returns (with its manifest document)."""

    async def build() -> tuple[Any, object]:
        document, provider = await make()
        return parse_plugin_manifest(document, label="?", environ={}), provider

    async def initialized() -> tuple[Any, object]:
        manifest, provider = await build()
        if callable(getattr(provider, "on_init", None)):
            await call(provider.on_init, context_for(manifest))
        return manifest, provider

    class Conformance:
        @pytest_twisted.ensureDeferred
        async def test_declares_and_verifies(self) -> None:
            _, provider = await build()
            assert IBuntimePlugin.providedBy(provider)
            verify(provider, "under test")

        @pytest_twisted.ensureDeferred
        async def test_the_context_it_gets_verifies(self) -> None:
            manifest, _ = await build()
            verifyObject(IPluginContext, context_for(manifest))

        @pytest_twisted.ensureDeferred
        async def test_init_then_shutdown(self) -> None:
            _, provider = await initialized()
            if callable(getattr(provider, "on_shutdown", None)):
                await call(provider.on_shutdown)

        @pytest_twisted.ensureDeferred
        async def test_hooks_return_what_they_may(self) -> None:
            _, provider = await initialized()
            app = AppInfo("conformance", "1.0.0", "/apps/conformance", {})
            request = Request("GET", "/conformance/x", {"x-request-id": "r1"})
            if callable(getattr(provider, "on_request", None)):
                for target in (app, None):
                    result = await call(provider.on_request, request, target)
                    assert result is None or isinstance(result, Request | Response)
            if callable(getattr(provider, "on_response", None)):
                result = await call(provider.on_response, Response.text("ok"), app)
                assert result is None or isinstance(result, Response)
            if callable(getattr(provider, "server_fetch", None)):
                result = await call(provider.server_fetch, request)
                assert result is None or isinstance(result, Response)

        @pytest_twisted.ensureDeferred
        async def test_routes_mount_at_the_base_and_fall_through(self) -> None:
            manifest, provider = await initialized()
            routes = getattr(provider, "routes", None)
            if routes is None:
                return
            assert isinstance(routes, Klein) or IResource.providedBy(routes)
            assert manifest.base is not None
            plugin = LoadedPlugin(manifest, provider, "/x", site=routes_site(provider, manifest))
            registry = PluginRegistry([plugin])
            unknown = Request("GET", manifest.base + "/__no_such_path__/x")
            assert await registry.route(unknown) is None

        @pytest_twisted.ensureDeferred
        async def test_packaged_providers_carry_a_manifest(self) -> None:
            document, provider = await make()
            manifest = getattr(provider, "manifest", None)
            if manifest is not None:
                assert manifest.get("name") == document["name"]

    return Conformance


def from_directory(path: str, module: str | None = None) -> Make:
    """C{make()} for the plugin in C{path}, loaded the way the runtime loads it."""

    async def make() -> tuple[dict[str, Any], object]:
        [source] = [s for s in scan_dir(path, {}) if s.path == path]
        if module is not None:
            source = evolve(source, module=module)
        manifest = parse_plugin_manifest(source.document, label=path, environ={})
        return dict(source.document), await make_provider(source, manifest)

    return make


async def _value(document: dict[str, Any], provider: object) -> tuple[dict[str, Any], object]:
    return document, provider


for _source in scan_builtins(BUILTINS_DIR, {}):
    _name = os.path.basename(_source.path)
    globals()[f"TestBuiltin_{_name}"] = conformance_tests(
        from_directory(_source.path, _source.module)
    )


class FakePackaged(FakePlugin):
    manifest = {"name": "fake", "base": "/fake"}


TestFakePlugin = conformance_tests(
    lambda: _value({"name": "fake", "base": "/fake"}, FakePackaged())
)
TestCodeless = conformance_tests(lambda: _value({"name": "nothing"}, NoCode()))
TestExamplePlugin = conformance_tests(from_directory(os.path.join(REPO, "plugins", "hello-plugin")))


def test_every_builtin_is_covered():
    names = {os.path.basename(s.path) for s in scan_builtins(BUILTINS_DIR, {})}
    assert "metrics" in names
    assert all(f"TestBuiltin_{n}" in globals() for n in names)


@pytest_twisted.ensureDeferred
async def test_the_factory_catches_a_broken_provider():
    @implementer(IBuntimePlugin)
    class Liar:
        def on_request(self, request):
            return None

    tests = conformance_tests(lambda: _value({"name": "liar"}, Liar()))()
    with pytest.raises(PluginError, match="does not implement IBuntimePlugin"):
        await tests.test_declares_and_verifies()

"""
Finding plugins: the plugin-dir layouts, built-ins and their override
manifests, and plugins shipped by installed packages in C{twisted/plugins/}.

For packaged plugins the tests build a temporary C{<root>/twisted/plugins/}
directory with a module in it, put C{<root>} on C{sys.path} and append the
directory to C{twisted.plugins.__path__} (which Twisted computes once, at
import): that is exactly what an installed package looks like to
C{twisted.plugin.getPlugins}.  Twisted writes its C{dropin.cache} into the
temporary directory, and the module is dropped from C{sys.modules} after.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import pytest_twisted
from test_plugins_support import write_plugin

import twisted.plugins
from buntime.http import Response
from buntime.interfaces import IBuntimePlugin
from buntime.plugins.discovery import (
    BUILTIN,
    DIR,
    PACKAGE,
    discover,
    manifest_paths,
    merge,
    scan_builtins,
    scan_packages,
)


def names(sources):
    return [s.name for s in sources]


def test_three_layouts(tmp_path):
    write_plugin(tmp_path, "alpha", {"name": "alpha"})
    write_plugin(tmp_path, "@acme/beta", {"name": "@acme/beta"})
    write_plugin(tmp_path, "@acme/gamma", {"name": "@acme/gamma"})
    (tmp_path / "not-a-plugin").mkdir()
    write_plugin(tmp_path, ".hidden", {"name": "hidden"})
    write_plugin(tmp_path, "__pycache__", {"name": "cache"})
    sources = discover([str(tmp_path)], environ={}, builtins_dir=None, packages=False)
    assert names(sources) == ["@acme/beta", "@acme/gamma", "alpha"]
    assert all(s.origin == DIR for s in sources)
    assert sources[2].path == str(tmp_path / "alpha")


def test_a_plugin_dir_that_is_itself_a_plugin(tmp_path):
    root = write_plugin(tmp_path, "", {"name": "solo"})
    # an app with its own manifest inside the plugin is not another plugin
    write_plugin(tmp_path, "app", {"name": "the-app", "version": "1.0.0"})
    assert manifest_paths(root) == [os.path.join(root, "manifest.yaml")]
    assert names(discover([root], environ={}, builtins_dir=None, packages=False)) == ["solo"]


def test_yml_manifests_and_missing_dirs(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.yml").write_text("name: p\n")
    sources = discover(
        [str(tmp_path / "missing"), str(tmp_path)], environ={}, builtins_dir=None, packages=False
    )
    assert names(sources) == ["p"]


def test_unreadable_manifests_are_reported_not_raised(tmp_path):
    write_plugin(tmp_path, "broken", "name: [unclosed\n")
    write_plugin(tmp_path, "list", "- a\n- b\n")
    sources = discover([str(tmp_path)], environ={}, builtins_dir=None, packages=False)
    errors = {os.path.basename(s.path): s.error for s in sources}
    assert errors["broken"].startswith(f'Plugin "{tmp_path / "broken"}" manifest is not valid YAML')
    assert errors["list"] == f'Plugin "{tmp_path / "list"}" manifest must be a map of settings'


def test_variables_are_interpolated(tmp_path):
    write_plugin(tmp_path, "p", "name: p\ntoken: ${TOKEN}\nmode: ${MODE:-fast}\n")
    [source] = discover([str(tmp_path)], environ={"TOKEN": "t"}, builtins_dir=None, packages=False)
    assert source.document == {"name": "p", "token": "t", "mode": "fast"}


def test_earlier_plugin_dir_wins(tmp_path, eliot_logger):
    first = write_plugin(tmp_path / "one", "p", {"name": "p", "n": 1})
    write_plugin(tmp_path / "two", "p", {"name": "p", "n": 2})
    [source] = discover(
        [str(tmp_path / "one"), str(tmp_path / "two")],
        environ={},
        builtins_dir=None,
        packages=False,
    )
    assert source.path == first
    warnings = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:plugins:duplicate"
    ]
    assert len(warnings) == 1


def test_has_code(tmp_path):
    write_plugin(tmp_path, "with", {"name": "with"}, code="provider = None\n")
    write_plugin(tmp_path, "custom", {"name": "custom", "pluginEntry": "main.py"})
    (tmp_path / "custom" / "main.py").write_text("")
    write_plugin(tmp_path, "without", {"name": "without"})
    sources = {
        s.name: s for s in discover([str(tmp_path)], environ={}, builtins_dir=None, packages=False)
    }
    assert sources["with"].has_code
    assert sources["custom"].has_code
    assert not sources["without"].has_code


# -- built-ins ---------------------------------------------------------------------


def test_the_shipped_builtins_are_found():
    builtins = {s.name: s for s in discover([], environ={}, packages=False)}
    metrics = builtins["@buntime/plugin-metrics"]
    assert metrics.origin == BUILTIN
    assert metrics.module == "buntime.builtins.metrics"
    assert metrics.document["base"] == "/metrics"
    assert metrics.document["enabled"] is True
    assert metrics.has_code


def fake_builtins(tmp_path):
    builtins = tmp_path / "builtins"
    write_plugin(
        builtins,
        "thing",
        {"name": "@buntime/plugin-thing", "base": "/thing", "limits": {"a": 1, "b": 2}},
        code="provider = None\n",
    )
    return str(builtins)


def test_a_codeless_manifest_overrides_a_builtin(tmp_path, eliot_logger):
    builtins = fake_builtins(tmp_path)
    override = write_plugin(
        tmp_path / "plugins",
        "thing-settings",
        {"name": "@buntime/plugin-thing", "enabled": False, "limits": {"b": 3}},
    )
    sources = discover(
        [str(tmp_path / "plugins")], environ={}, builtins_dir=builtins, packages=False
    )
    [source] = sources
    assert source.origin == BUILTIN
    assert source.path == os.path.join(builtins, "thing")
    assert source.overrides == (override,)
    assert source.document == {
        "name": "@buntime/plugin-thing",
        "base": "/thing",
        "enabled": False,
        "limits": {"a": 1, "b": 3},
    }
    assert source.describe()["enabled"] is False


def test_a_plugin_with_code_replaces_a_builtin(tmp_path):
    builtins = fake_builtins(tmp_path)
    mine = write_plugin(
        tmp_path / "plugins", "thing", {"name": "@buntime/plugin-thing"}, code="provider = 1\n"
    )
    [source] = discover(
        [str(tmp_path / "plugins")], environ={}, builtins_dir=builtins, packages=False
    )
    assert source.origin == DIR
    assert source.path == mine
    assert "base" not in source.document


def test_builtins_come_first(tmp_path):
    builtins = fake_builtins(tmp_path)
    write_plugin(tmp_path / "plugins", "aaa", {"name": "aaa"})
    sources = discover(
        [str(tmp_path / "plugins")], environ={}, builtins_dir=builtins, packages=False
    )
    assert names(sources) == ["@buntime/plugin-thing", "aaa"]


def test_scan_builtins_names_their_package(tmp_path):
    [source] = scan_builtins(fake_builtins(tmp_path), {})
    assert source.module == "buntime.builtins.thing"


def test_merge_is_deep_for_maps_only():
    assert merge({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2]}) == {
        "a": {"x": 1, "y": 3},
        "l": [2],
    }


# -- installed packages ------------------------------------------------------------

PACKAGED = """
from zope.interface import implementer
from buntime.interfaces import IBuntimePlugin


@implementer(IBuntimePlugin)
class Greeter:
    manifest = {{"name": "{name}", "base": "/greeter", "token": "${{GREETER_TOKEN}}"}}

    def on_request(self, request, app):
        return None


greeter = Greeter()


@implementer(IBuntimePlugin)
class NoManifest:
    pass


{extra}
"""


@pytest.fixture
def package_root(tmp_path, monkeypatch):
    """C{<tmp>/site/twisted/plugins/} on the plugin path, like an installed package."""
    site = tmp_path / "site"
    plugins = site / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    yield plugins
    for name in [n for n in sys.modules if n.startswith("twisted.plugins.buntime_test_")]:
        del sys.modules[name]


def write_packaged(plugins, module, name="greeter", extra=""):
    (plugins / f"{module}.py").write_text(textwrap.dedent(PACKAGED.format(name=name, extra=extra)))


def test_packaged_plugins_are_found_through_twisted_plugins(package_root):
    write_packaged(package_root, "buntime_test_greeter", extra="no_manifest = NoManifest()")
    sources = [s for s in scan_packages({"GREETER_TOKEN": "abc"}) if s.path == str(package_root)]
    by_name = {s.name: s for s in sources}
    greeter = by_name["greeter"]
    assert greeter.origin == PACKAGE
    assert IBuntimePlugin.providedBy(greeter.provider)
    assert greeter.document == {"name": "greeter", "base": "/greeter", "token": "abc"}
    assert greeter.has_code
    [broken] = [s for s in sources if s.error]
    assert "has no manifest dict" in broken.error
    assert (package_root / "dropin.cache").exists()


def test_discover_includes_packages_between_builtins_and_dirs(package_root, tmp_path):
    write_packaged(package_root, "buntime_test_order", name="packaged-one")
    write_plugin(tmp_path / "plugins", "mine", {"name": "mine"})
    sources = discover([str(tmp_path / "plugins")], environ={})
    found = names(sources)
    assert found.index("@buntime/plugin-metrics") < found.index("packaged-one")
    assert found.index("packaged-one") < found.index("mine")


def test_a_codeless_manifest_overrides_a_packaged_plugin(package_root, tmp_path):
    write_packaged(package_root, "buntime_test_override", name="packaged-two")
    write_plugin(tmp_path / "plugins", "two", {"name": "packaged-two", "base": "/two"})
    sources = discover([str(tmp_path / "plugins")], environ={}, builtins_dir=None)
    [source] = [s for s in sources if s.name == "packaged-two"]
    assert source.origin == PACKAGE
    assert source.document["base"] == "/two"


def test_a_plugin_package_object_can_be_given(tmp_path, monkeypatch):
    """C{package=}: scan another plugin package than C{twisted.plugins}."""
    root = tmp_path / "root"
    package = root / "buntime_test_pkgplugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_packaged(package, "one", name="from-package")
    monkeypatch.syspath_prepend(str(root))
    import importlib

    module = importlib.import_module("buntime_test_pkgplugins")
    try:
        sources = scan_packages({}, module)
        assert "from-package" in names(sources)
    finally:
        for name in [n for n in sys.modules if n.startswith("buntime_test_pkgplugins")]:
            del sys.modules[name]


@pytest_twisted.ensureDeferred
async def test_a_packaged_plugin_is_loaded_and_serves(package_root, tmp_path):
    from test_plugins_service import make_service

    write_packaged(
        package_root,
        "buntime_test_served",
        name="served",
        extra=textwrap.dedent(
            """
            @implementer(IBuntimePlugin)
            class Stamp:
                manifest = {"name": "stamper", "optionalDependencies": ["served"]}

                def on_response(self, response, app):
                    return response.with_header("x-stamped", "yes")

            stamp = Stamp()
            """
        ),
    )
    service = make_service(tmp_path, packages=True, environ={"GREETER_TOKEN": "t"})
    service.startService()
    registry = await service.when_loaded()
    assert service.failed is None
    loaded = [p.name for p in registry.plugins]
    assert loaded.index("served") < loaded.index("stamper")
    served = registry.get("served")
    assert (served.origin, served.base, served.context.config) == (
        "package",
        "/greeter",
        {"token": "t"},
    )
    response = await registry.on_response(Response.text("hi"), None)
    assert response.headers.get("x-stamped") == "yes"
    await service.stopService()

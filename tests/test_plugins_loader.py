"""
Loading plugins: order (toposort), the exact startup errors of SPEC §5,
importing, C{verifyObject}, C{on_init} (30 s limit) and the plugin context.
"""

from __future__ import annotations

import re
import sys

import pytest
import pytest_twisted
from test_plugins_support import (
    EVENTS,
    RECORDING_PLUGIN,
    FakePlugin,
    FakePool,
    load_dirs,
    make_loader,
    write_plugin,
)
from twisted.internet.defer import ensureDeferred

from buntime.plugins.context import PLUGIN_LOG, PluginLogger
from buntime.plugins.discovery import PluginSource
from buntime.plugins.loader import order, plan
from buntime.plugins.manifest import PluginError, parse_plugin_manifest
from buntime.plugins.provider import NoCode, verify


def manifests(*documents):
    return [parse_plugin_manifest(d, label="?", environ={}) for d in documents]


def names(items):
    return [getattr(i, "name", None) or i[1].name for i in items]


def sources(*documents):
    return [PluginSource(d, f"/plugins/{d.get('name', 'nameless')}") for d in documents]


@pytest.fixture(autouse=True)
def clear_events():
    EVENTS.clear()
    yield
    EVENTS.clear()


# -- order -------------------------------------------------------------------------


def test_dependencies_load_first():
    ordered = order(
        manifests(
            {"name": "app", "dependencies": ["db", "kv"]},
            {"name": "kv", "dependencies": ["db"]},
            {"name": "db"},
            {"name": "other"},
        )
    )
    assert names(ordered) == ["db", "other", "kv", "app"]


def test_optional_dependencies_order_first_only_when_present():
    ordered = order(
        manifests(
            {"name": "a", "optionalDependencies": ["b", "absent"]},
            {"name": "b"},
        )
    )
    assert names(ordered) == ["b", "a"]


def test_without_dependencies_the_discovery_order_is_kept():
    assert names(order(manifests({"name": "z"}, {"name": "a"}, {"name": "m"}))) == ["z", "a", "m"]


def test_cycle_exact_message_names_only_the_cycle():
    with pytest.raises(PluginError) as caught:
        order(
            manifests(
                {"name": "b", "dependencies": ["a"]},
                {"name": "a", "dependencies": ["b"]},
                {"name": "c", "dependencies": ["a"]},
            )
        )
    assert str(caught.value) == "Circular dependency detected among plugins: a, b"


def test_cycle_through_optional_dependencies():
    with pytest.raises(PluginError, match=r"^Circular dependency detected among plugins: x, y, z$"):
        order(
            manifests(
                {"name": "x", "dependencies": ["y"]},
                {"name": "y", "optionalDependencies": ["z"]},
                {"name": "z", "dependencies": ["x"]},
            )
        )


def test_missing_dependency_exact_message():
    with pytest.raises(PluginError) as caught:
        order(manifests({"name": "x", "dependencies": ["y"]}))
    assert str(caught.value) == (
        'Plugin "x" requires "y" which is not available. Ensure "y" is installed in pluginDirs.'
    )


def test_disabled_dependency_counts_as_missing():
    with pytest.raises(PluginError) as caught:
        plan(
            sources({"name": "x", "dependencies": ["y"]}, {"name": "y", "enabled": False}),
            environ={},
        )
    assert str(caught.value) == (
        'Plugin "x" requires "y" which is not available. Ensure "y" is installed in pluginDirs.'
    )


def test_route_collision_exact_message():
    with pytest.raises(PluginError) as caught:
        plan(sources({"name": "a", "base": "/x"}, {"name": "b", "base": "/x"}), environ={})
    assert str(caught.value) == (
        'Route collision: Plugin "b" cannot mount routes at "/x" - already used by "a"'
    )


def test_route_collision_follows_load_order():
    with pytest.raises(PluginError, match=r'Plugin "a" cannot mount .* already used by "b"'):
        plan(
            sources(
                {"name": "a", "base": "/x", "dependencies": ["b"]}, {"name": "b", "base": "/x"}
            ),
            environ={},
        )


def test_disabled_plugins_do_not_collide():
    planned = plan(
        sources({"name": "a", "base": "/x"}, {"name": "b", "base": "/x", "enabled": False}),
        environ={},
    )
    assert names(planned) == ["a"]


def test_reserved_base_exact_message():
    with pytest.raises(PluginError) as caught:
        plan(sources({"name": "p", "base": "/api"}), environ={})
    assert str(caught.value) == (
        'Plugin "p" cannot use reserved path "/api". Reserved paths: /api, /health, /.well-known'
    )


def test_reserved_base_follows_the_api_prefix():
    with pytest.raises(
        PluginError, match=re.escape('reserved path "/admin". Reserved paths: /admin, ')
    ):
        plan(sources({"name": "p", "base": "/admin"}), environ={}, api_prefix="/admin")


def test_invalid_base_message():
    with pytest.raises(PluginError) as caught:
        plan(sources({"name": "p", "base": "/a/b"}), environ={})
    assert str(caught.value).startswith('Plugin "p" has an invalid base "/a/b"')


def test_manifest_without_name_exact_message():
    with pytest.raises(PluginError) as caught:
        plan([PluginSource({"base": "/x"}, "/plugins/nameless")], environ={})
    assert str(caught.value) == (
        'Plugin "/plugins/nameless" manifest is missing required field: name'
    )


def test_unreadable_manifest_fails():
    with pytest.raises(PluginError, match=r"^broken$"):
        plan([PluginSource({}, "/plugins/x", error="broken")], environ={})


def test_a_disabled_plugin_with_a_bad_field_is_skipped():
    planned = plan(sources({"name": "p", "enabled": False, "menus": "bad"}), environ={})
    assert planned == []


# -- import and verify ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_disabled_plugins_are_never_imported(tmp_path):
    write_plugin(tmp_path, "off", {"name": "off", "enabled": False}, code="raise SystemExit(3)\n")
    write_plugin(tmp_path, "on", {"name": "on"}, code=RECORDING_PLUGIN)
    registry = await load_dirs([tmp_path])
    assert [p.name for p in registry.plugins] == ["on"]


@pytest_twisted.ensureDeferred
async def test_enabled_via_environment(tmp_path):
    write_plugin(tmp_path, "p", "name: p\nenabled: ${P_ENABLED:-false}\n", code=RECORDING_PLUGIN)
    assert (await load_dirs([tmp_path])).plugins == ()
    registry = await load_dirs([tmp_path], environ={"P_ENABLED": "true"})
    assert [p.name for p in registry.plugins] == ["p"]


@pytest_twisted.ensureDeferred
async def test_factory_gets_the_settings(tmp_path):
    write_plugin(
        tmp_path,
        "p",
        {
            "name": "p",
            "label": "first",
            "config": {"size": {"env": "P_SIZE", "default": 1, "type": "integer"}},
        },
        code=RECORDING_PLUGIN,
    )
    registry = await load_dirs([tmp_path], environ={"P_SIZE": "9"})
    [plugin] = registry.plugins
    assert plugin.provider.config == {"label": "first", "size": 9}
    assert plugin.context.config == {"label": "first", "size": 9}
    assert EVENTS == [("init", "first")]


@pytest_twisted.ensureDeferred
async def test_module_level_provider(tmp_path):
    write_plugin(
        tmp_path,
        "p",
        {"name": "p"},
        code="""
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            pass

        provider = P()
        """,
    )
    [plugin] = (await load_dirs([tmp_path])).plugins
    assert type(plugin.provider).__name__ == "P"


@pytest_twisted.ensureDeferred
async def test_a_plugin_without_code(tmp_path):
    write_plugin(tmp_path, "p", {"name": "p", "menus": [{"title": "P"}]})
    [plugin] = (await load_dirs([tmp_path])).plugins
    assert isinstance(plugin.provider, NoCode)


@pytest_twisted.ensureDeferred
async def test_relative_imports_and_plugin_entry(tmp_path):
    write_plugin(
        tmp_path,
        "p",
        {"name": "p", "pluginEntry": "src/main.py"},
        files={
            "src/helpers.py": "GREETING = 'hi'\n",
            "src/main.py": """
            from zope.interface import implementer
            from buntime.interfaces import IBuntimePlugin
            from .helpers import GREETING

            @implementer(IBuntimePlugin)
            class P:
                greeting = GREETING

            def plugin(config):
                return P()
            """,
        },
    )
    [plugin] = (await load_dirs([tmp_path])).plugins
    assert plugin.provider.greeting == "hi"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../escape.py", 'pluginEntry "../escape.py" must be a .py file inside the plugin'),
        ("missing.py", 'pluginEntry "missing.py" not found in'),
        ("plugin.txt", 'pluginEntry "plugin.txt" must be a .py file'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_plugin_entry(tmp_path, entry, message):
    write_plugin(tmp_path / "plugins", "p", {"name": "p", "pluginEntry": entry})
    (tmp_path / "plugins" / "escape.py").write_text("")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path / "plugins"])
    assert str(caught.value).startswith('Plugin "p": ')
    assert message in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_import_errors(tmp_path, eliot_logger):
    write_plugin(tmp_path, "p", {"name": "p"}, code="import does_not_exist_anywhere\n")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path])
    assert str(caught.value) == (
        'Plugin "p" failed to load: ModuleNotFoundError:'
        " No module named 'does_not_exist_anywhere'"
    )
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:plugins:import-failed"
    ]
    assert "does_not_exist_anywhere" in logged["traceback"]


@pytest_twisted.ensureDeferred
async def test_a_module_exiting_at_import_is_an_import_error(tmp_path, eliot_logger):
    # SystemExit is no Exception: it went past the loader, and the runtime
    # started serving without any plugin, built-ins included, saying nothing
    write_plugin(tmp_path, "p", {"name": "p"}, code="import sys\nsys.exit('p needs FOO')\n")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path])
    assert str(caught.value) == 'Plugin "p" failed to load: SystemExit: p needs FOO'


@pytest_twisted.ensureDeferred
async def test_module_without_factory_or_provider(tmp_path):
    write_plugin(tmp_path, "p", {"name": "p"}, code="x = 1\n")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path])
    assert str(caught.value) == (
        'Plugin "p": plugin.py must define a plugin(config) factory or a provider object'
    )


@pytest_twisted.ensureDeferred
async def test_each_load_imports_the_code_afresh(tmp_path, monkeypatch):
    # With bytecode caching on (tox does not pass PYTHONDONTWRITEBYTECODE on),
    # a .pyc of the first version matches the second's size and whole-second
    # mtime: it must not be used.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    code = """
    from zope.interface import implementer
    from buntime.interfaces import IBuntimePlugin

    @implementer(IBuntimePlugin)
    class P:
        version = {version}

    provider = P()
    """
    write_plugin(tmp_path, "p", {"name": "p"}, code=code.format(version=1))
    first = (await load_dirs([tmp_path])).plugins[0].provider
    write_plugin(tmp_path, "p", {"name": "p"}, code=code.format(version=2))
    second = (await load_dirs([tmp_path])).plugins[0].provider
    assert (first.version, second.version) == (1, 2)


def test_verify_accepts_a_partial_provider():
    verify(FakePlugin(), "fake")
    verify(NoCode(), "nothing")


def test_verify_refuses_an_undeclared_provider():
    class Plain:
        def on_request(self, request, app):
            return None

    with pytest.raises(PluginError) as caught:
        verify(Plain(), "p")
    assert str(caught.value) == (
        'Plugin "p" does not implement IBuntimePlugin: the plugin object does not declare'
        " @implementer(IBuntimePlugin)"
    )


def test_verify_refuses_a_wrong_signature():
    from zope.interface import implementer

    from buntime.interfaces import IBuntimePlugin

    @implementer(IBuntimePlugin)
    class Wrong:
        def on_request(self, request):
            return None

        def on_shutdown(self, now, really):
            return None

    with pytest.raises(PluginError) as caught:
        verify(Wrong(), "p")
    message = str(caught.value)
    assert message.startswith('Plugin "p" does not implement IBuntimePlugin: ')
    assert "on_request(): implementation doesn't allow enough arguments" in message
    assert "on_shutdown(): implementation requires too many arguments" in message


@pytest_twisted.ensureDeferred
async def test_routes_need_a_base(tmp_path):
    write_plugin(
        tmp_path,
        "p",
        {"name": "p"},
        code="""
        from klein import Klein
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            routes = Klein()

        provider = P()
        """,
    )
    with pytest.raises(PluginError, match=r'^Plugin "p" has routes but no base to mount them at$'):
        await load_dirs([tmp_path])


@pytest_twisted.ensureDeferred
async def test_routes_must_be_klein_or_a_resource(tmp_path):
    write_plugin(
        tmp_path,
        "p",
        {"name": "p", "base": "/p"},
        code="""
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            routes = {"/": "nope"}

        provider = P()
        """,
    )
    with pytest.raises(
        PluginError, match=re.escape("routes must be a klein.Klein app or a twisted.web")
    ):
        await load_dirs([tmp_path])


@pytest_twisted.ensureDeferred
async def test_an_entrypoint_needs_a_base(tmp_path):
    write_plugin(tmp_path, "p", {"name": "p", "entrypoint": "index.html"})
    with pytest.raises(PluginError, match=r'^Plugin "p" has an entrypoint but no base'):
        await load_dirs([tmp_path])


# -- on_init ---------------------------------------------------------------------------------

HOOKED = """
from twisted.internet.defer import Deferred
from zope.interface import implementer
from buntime.interfaces import IBuntimePlugin
from test_plugins_support import EVENTS

@implementer(IBuntimePlugin)
class P:
    def __init__(self, config):
        self.config = config
        self.name = config["label"]

    {on_init}

    def on_shutdown(self):
        EVENTS.append(("shutdown", self.name))

def plugin(config):
    return P(config)
"""


def hooked(root, name, on_init, **manifest):
    code = HOOKED.replace("{on_init}", on_init)
    write_plugin(root, name, {"name": name, "label": name, **manifest}, code=code)


@pytest_twisted.ensureDeferred
async def test_on_init_may_be_a_coroutine_or_return_a_deferred(tmp_path, clock):
    hooked(
        tmp_path,
        "a",
        """async def on_init(self, ctx):
        EVENTS.append(("init", self.name))""",
    )
    hooked(
        tmp_path,
        "b",
        """def on_init(self, ctx):
        d = Deferred()
        ctx.reactor.callLater(5, d.callback, None)
        d.addCallback(lambda _: EVENTS.append(("init", self.name)))
        return d""",
        dependencies=["a"],
    )
    loading = ensureDeferred(load_dirs([tmp_path], clock=clock))
    assert EVENTS == [("init", "a")]
    assert not loading.called
    clock.advance(5)
    registry = await loading
    assert EVENTS == [("init", "a"), ("init", "b")]
    assert [p.name for p in registry.plugins] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_on_init_timeout_fails_and_shuts_down_the_initialized(tmp_path, clock):
    hooked(tmp_path, "a", "def on_init(self, ctx): pass")
    hooked(
        tmp_path,
        "b",
        """def on_init(self, ctx):
        return Deferred()""",
        dependencies=["a"],
    )
    hooked(
        tmp_path, "c", "def on_init(self, ctx): EVENTS.append(('init', 'c'))", dependencies=["b"]
    )
    loading = ensureDeferred(load_dirs([tmp_path], clock=clock))
    clock.advance(29.9)
    assert not loading.called
    clock.advance(0.1)
    with pytest.raises(PluginError) as caught:
        await loading
    assert str(caught.value) == 'Plugin "b" on_init timed out after 30s'
    assert EVENTS == [("shutdown", "a")]


@pytest_twisted.ensureDeferred
async def test_on_init_error(tmp_path, eliot_logger):
    hooked(tmp_path, "a", "def on_init(self, ctx): raise ValueError('no database')")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path])
    assert str(caught.value) == 'Plugin "a" on_init failed: ValueError: no database'
    assert EVENTS == []


@pytest_twisted.ensureDeferred
async def test_on_init_exiting_is_an_on_init_error(tmp_path, eliot_logger):
    hooked(tmp_path, "a", "def on_init(self, ctx): raise SystemExit('no database')")
    with pytest.raises(PluginError) as caught:
        await load_dirs([tmp_path])
    assert str(caught.value) == 'Plugin "a" on_init failed: SystemExit: no database'


def test_plugin_log_fields_named_as_the_line_s_own_keys_are_kept_aside(eliot_logger):
    """
    ctx.logger takes any field: one named as a key of the line itself
    (level, message, context, timestamp, task_uuid ...) neither raises in
    the plugin's code nor replaces the line's own; it is kept as <name>_.
    """
    logger = PluginLogger("@acme/plugin-zip", "zip")
    logger.info("compressed", level=9, message="m", context="c", timestamp=1, task_uuid="t")
    [line] = [m for m in eliot_logger.messages if m.get("message_type") == PLUGIN_LOG]
    assert (line["level"], line["message"], line["context"]) == ("info", "compressed", "plugin:zip")
    assert line["timestamp"] != 1 and line["task_uuid"] != "t"
    assert (line["level_"], line["message_"], line["context_"]) == (9, "m", "c")
    assert (line["timestamp_"], line["task_uuid_"]) == (1, "t")


@pytest_twisted.ensureDeferred
async def test_context(tmp_path, eliot_logger):
    pool = FakePool()
    hooked(
        tmp_path,
        "@acme/plugin-keyval",
        """def on_init(self, ctx):
        self.ctx = ctx
        ctx.logger.info("Request processed", duration=45)
        ctx.logger.warn("careful")
        ctx.register_service("kv", "store")""",
        base="/kv",
        depth=3,
    )
    hooked(
        tmp_path,
        "user",
        """def on_init(self, ctx):
        self.found = ctx.get_service("kv")
        ctx.register_service("kv", "other")""",
        dependencies=["@acme/plugin-keyval"],
    )
    registry = await load_dirs([tmp_path], pool=pool, data_dir="/data")
    first, second = (p.provider for p in registry.plugins)
    ctx = first.ctx
    assert ctx.name == "@acme/plugin-keyval"
    assert ctx.base == "/kv"
    assert ctx.path == str(tmp_path / "@acme" / "plugin-keyval")
    assert ctx.config == {"label": "@acme/plugin-keyval", "depth": 3}
    assert ctx.global_config == {"worker_dirs": ["/apps"], "pool_size": 5}
    assert ctx.pool is pool
    assert ctx.data_dir == "/data"
    assert second.found == "store"
    assert registry.services.get("kv") == "other"
    logged = [m for m in eliot_logger.messages if m.get("message_type") == PLUGIN_LOG]
    assert [(m["level"], m["message"], m["context"]) for m in logged] == [
        ("info", "Request processed", "plugin:keyval"),
        ("warn", "careful", "plugin:keyval"),
    ]
    assert logged[0]["duration"] == 45
    assert logged[0]["plugin"] == "@acme/plugin-keyval"
    # each plugin's start is one action, and the plugin's own lines sit in it
    loads = [m for m in eliot_logger.messages if m.get("action_type") == "buntime:plugins:load"]
    assert [(m["action_status"], m["plugin"]) for m in loads] == [
        ("started", "@acme/plugin-keyval"),
        ("succeeded", "@acme/plugin-keyval"),
        ("started", "user"),
        ("succeeded", "user"),
    ]
    assert loads[1]["message"] == 'Plugin "@acme/plugin-keyval" loaded at /kv'
    assert logged[0]["task_uuid"] == loads[0]["task_uuid"]
    [overwrite] = [
        m
        for m in eliot_logger.messages
        if m.get("message_type") == "buntime:plugins:service-overwritten"
    ]
    assert overwrite["level"] == "warn"
    assert overwrite["message"] == (
        'Service "kv" registered by "@acme/plugin-keyval" is replaced by "user"'
    )


@pytest_twisted.ensureDeferred
async def test_shutdown_runs_in_reverse_order_and_survives_errors(tmp_path, clock, eliot_logger):
    hooked(tmp_path, "a", "def on_init(self, ctx): pass")
    hooked(tmp_path, "b", "def on_init(self, ctx): pass", dependencies=["a"])
    write_plugin(
        tmp_path,
        "c",
        {"name": "c", "dependencies": ["b"]},
        code="""
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            def on_shutdown(self):
                raise RuntimeError("boom")

        provider = P()
        """,
    )
    loader = make_loader(clock)
    registry = await load_dirs([tmp_path], clock=clock)
    await loader.shutdown(registry.plugins)
    assert EVENTS == [("shutdown", "b"), ("shutdown", "a")]
    [failed] = [
        m
        for m in eliot_logger.messages
        if m.get("message_type") == "buntime:plugins:shutdown-failed"
    ]
    assert failed["message"] == 'Plugin "c" on_shutdown failed: RuntimeError: boom'


@pytest_twisted.ensureDeferred
async def test_shutdown_is_bounded(tmp_path, clock, eliot_logger):
    write_plugin(
        tmp_path,
        "slow",
        {"name": "slow"},
        code="""
        from twisted.internet.defer import Deferred
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            def on_shutdown(self):
                return Deferred()

        provider = P()
        """,
    )
    registry = await load_dirs([tmp_path], clock=clock)
    stopping = ensureDeferred(make_loader(clock).shutdown(registry.plugins))
    clock.advance(10)
    await stopping
    assert any(
        m.get("message_type") == "buntime:plugins:shutdown-timeout" for m in eliot_logger.messages
    )


@pytest_twisted.ensureDeferred
async def test_a_shared_provider_is_shut_down_before_it_is_initialized_again(clock):
    shared = FakePlugin()
    source = PluginSource({"name": "shared"}, "/pkg", "package", provider=shared)
    loader = make_loader(clock)
    first, _ = await loader.load([source])
    _, restarted = await loader.load([source], first)
    assert shared.calls == [("on_init", "shared"), ("on_shutdown", None), ("on_init", "shared")]
    assert restarted == {id(shared)}
    await loader.shutdown(first.plugins, skip=restarted)
    assert len(shared.calls) == 3

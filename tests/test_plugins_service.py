"""The plugin service: load on start, reload (new set first, old kept on failure), stop."""

from __future__ import annotations

import pytest
import pytest_twisted
from test_plugins_support import EVENTS, RECORDING_PLUGIN, FakePool, write_plugin
from twisted.internet.task import Clock

from buntime.plugins.discovery import BUILTINS_DIR
from buntime.plugins.manifest import PluginError
from buntime.plugins.service import PluginService


@pytest.fixture(autouse=True)
def clear_events():
    EVENTS.clear()
    yield
    EVENTS.clear()


def make_service(*dirs, **kwargs) -> PluginService:
    values = {
        "plugin_dirs": [str(d) for d in dirs],
        "global_config": {"api_prefix": ""},
        "pool": FakePool(),
        "environ": {},
        "reactor": Clock(),
        "data_dir": "/tmp/data",
        "builtins_dir": None,
        "packages": False,
    }
    values.update(kwargs)
    return PluginService(**values)


def recording(root, name, label, **manifest):
    write_plugin(root, name, {"name": name, "label": label, **manifest}, code=RECORDING_PLUGIN)


@pytest_twisted.ensureDeferred
async def test_start_loads_and_stop_shuts_down_in_reverse(tmp_path):
    recording(tmp_path, "a", "a")
    recording(tmp_path, "b", "b", dependencies=["a"])
    service = make_service(tmp_path)
    assert service.name == "plugins"
    service.startService()
    registry = await service.when_loaded()
    assert registry is service.registry
    assert [p.name for p in registry.plugins] == ["a", "b"]
    assert service.failed is None
    assert (await service.when_loaded()) is registry
    await service.stopService()
    assert EVENTS == [("init", "a"), ("init", "b"), ("shutdown", "b"), ("shutdown", "a")]
    assert service.registry.plugins == ()


@pytest_twisted.ensureDeferred
async def test_a_failed_start_is_one_line(tmp_path, eliot_logger):
    recording(tmp_path, "a", "a", dependencies=["ghost"])
    service = make_service(tmp_path)
    waiting = service.when_loaded()
    service.startService()
    assert await waiting is None
    reason = (
        'Plugin "a" requires "ghost" which is not available.'
        ' Ensure "ghost" is installed in pluginDirs.'
    )
    assert service.failed == reason
    assert service.registry.plugins == ()
    [logged] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:plugins:failed"
    ]
    assert (logged["level"], logged["message"]) == ("error", reason)
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_builtins_load_by_default(tmp_path):
    service = make_service(tmp_path, builtins_dir=BUILTINS_DIR)
    service.startService()
    registry = await service.when_loaded()
    assert [p.name for p in registry.plugins] == ["@buntime/plugin-logs", "@buntime/plugin-metrics"]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_reload_initializes_the_new_set_before_shutting_down_the_old(tmp_path):
    recording(tmp_path, "a", "old-a")
    service = make_service(tmp_path)
    service.startService()
    old = await service.when_loaded()
    recording(tmp_path, "a", "new-a")
    recording(tmp_path, "b", "new-b")
    registry = await service.reload()
    assert service.registry is registry is not old
    assert [p.name for p in registry.plugins] == ["a", "b"]
    assert EVENTS == [
        ("init", "old-a"),
        ("init", "new-a"),
        ("init", "new-b"),
        ("shutdown", "old-a"),
    ]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_failed_reload_keeps_the_old_set(tmp_path, eliot_logger):
    recording(tmp_path, "a", "old-a")
    service = make_service(tmp_path)
    service.startService()
    old = await service.when_loaded()
    recording(tmp_path, "a", "new-a")
    write_plugin(
        tmp_path,
        "b",
        {"name": "b", "dependencies": ["a"]},
        code="""
        from zope.interface import implementer
        from buntime.interfaces import IBuntimePlugin

        @implementer(IBuntimePlugin)
        class P:
            def on_init(self, ctx):
                raise RuntimeError("cannot start")

        provider = P()
        """,
    )
    with pytest.raises(PluginError) as caught:
        await service.reload()
    assert str(caught.value) == 'Plugin "b" on_init failed: RuntimeError: cannot start'
    assert service.registry is old
    assert service.failed is None
    assert EVENTS == [("init", "old-a"), ("init", "new-a"), ("shutdown", "new-a")]
    await service.stopService()
    assert EVENTS[-1] == ("shutdown", "old-a")


@pytest_twisted.ensureDeferred
async def test_a_reload_with_a_bad_manifest_touches_nothing(tmp_path, eliot_logger):
    recording(tmp_path, "a", "old-a")
    service = make_service(tmp_path)
    service.startService()
    old = await service.when_loaded()
    write_plugin(tmp_path, "b", {"base": "/b"})
    with pytest.raises(PluginError, match="manifest is missing required field: name"):
        await service.reload()
    assert service.registry is old
    assert EVENTS == [("init", "old-a")]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_server_start_hooks_run_again_for_a_reloaded_set(tmp_path):
    code = """
    from zope.interface import implementer
    from buntime.interfaces import IBuntimePlugin
    from test_plugins_support import EVENTS

    @implementer(IBuntimePlugin)
    class P:
        def on_server_start(self, server):
            EVENTS.append(("server", server))

    def plugin(config):
        return P()
    """
    write_plugin(tmp_path, "a", {"name": "a"}, code=code)
    service = make_service(tmp_path)
    service.startService()
    await service.when_loaded()
    await service.server_started("the-server")
    await service.reload()
    assert EVENTS == [("server", "the-server"), ("server", "the-server")]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_api_prefix_from_global_config(tmp_path):
    write_plugin(tmp_path, "a", {"name": "a", "base": "/admin"})
    service = make_service(tmp_path, global_config={"api_prefix": "/admin"})
    service.startService()
    await service.when_loaded()
    assert service.failed.startswith('Plugin "a" cannot use reserved path "/admin"')
    await service.stopService()


# -- what the context offers the built-ins --------------------------------------------

CONTEXT_PLUGIN = """
from zope.interface import implementer
from buntime.interfaces import IBuntimePlugin

@implementer(IBuntimePlugin)
class Keeper:
    def on_init(self, ctx):
        self.ctx = ctx

def plugin(config):
    return Keeper()
"""


async def context_of(tmp_path):
    write_plugin(tmp_path, "keeper", {"name": "keeper"}, code=CONTEXT_PLUGIN)
    service = make_service(tmp_path)
    service.startService()
    registry = await service.when_loaded()
    [plugin] = registry.plugins
    return service, plugin.provider.ctx


@pytest_twisted.ensureDeferred
async def test_the_context_gives_request_outcomes_and_the_runtime_stopping(tmp_path):
    service, ctx = await context_of(tmp_path)
    assert ctx.requests is service.requests
    before = ctx.when_stopping()
    assert not before.called
    service.runtime_stopping()
    assert before.called
    assert ctx.when_stopping().called  # asked after: at once
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_context_adds_and_removes_log_destinations(tmp_path):
    from buntime.logs import log

    service, ctx = await context_of(tmp_path)
    seen: list[dict] = []
    ctx.add_log_destination(seen.append)
    log("info", "test:context:one", "to the destination", headers={"cookie": "s3cret"})
    ctx.remove_log_destination(seen.append)
    ctx.remove_log_destination(seen.append)  # twice: nothing happens
    log("info", "test:context:two", "not any more")
    [message] = [m for m in seen if m.get("message_type", "").startswith("test:context")]
    record = ctx.log_record(message)
    assert record["message"] == "to the destination" and record["context"] == "runtime"
    assert record["headers"] == {"cookie": "[redacted]"}
    assert message["headers"] == {"cookie": "s3cret"}  # the message itself is left alone
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_plugin_code_exiting_anywhere_in_the_load_fails_it(
    tmp_path, eliot_logger, monkeypatch
):
    # sys.exit() in a plugin's code is caught where the loader calls it; wherever
    # else it came from, the runtime must not start as if no plugin were wanted
    service = make_service(tmp_path)

    async def exits(self, found):
        raise SystemExit("plugin p needs FOO")

    monkeypatch.setattr(type(service.loader), "load", exits)
    service.startService()
    assert await service.when_loaded() is None
    assert service.failed == "Plugins failed to load: SystemExit: plugin p needs FOO"

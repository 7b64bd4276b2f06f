"""lowMemory mode of the worker: detection, malloc arenas, releasing memory when idle."""

from __future__ import annotations

import json
import types

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.loopback import loopbackAsync

from buntime.pool import commands
from buntime.pool.child import protocol as protocol_module
from buntime.pool.child.loader import LoadedApp
from buntime.pool.child.memory import (
    GC_THRESHOLD,
    limit_arenas,
    low_memory,
    release_memory,
    settle,
)
from buntime.pool.child.protocol import ChildProtocol


def test_low_memory_read_from_worker_config() -> None:
    assert low_memory({"WORKER_CONFIG": json.dumps({"lowMemory": True})})
    assert not low_memory({"WORKER_CONFIG": json.dumps({"lowMemory": False})})
    assert not low_memory({"WORKER_CONFIG": json.dumps({})})
    assert not low_memory({})
    assert not low_memory({"WORKER_CONFIG": "not json"})


@pytest.mark.parametrize("value", ["on", "On", "YES", "True", " 1 ", 1])
def test_low_memory_honours_every_bool_the_manifest_accepts(value: object) -> None:
    """What validation takes as true is true in the worker too (a quoted "on" was ignored)."""
    assert low_memory({"WORKER_CONFIG": json.dumps({"lowMemory": value})})


@pytest.mark.parametrize("value", ["off", "No", "0", 0, None, "maybe"])
def test_low_memory_off_for_every_other_value(value: object) -> None:
    assert not low_memory({"WORKER_CONFIG": json.dumps({"lowMemory": value})})


def test_arena_limit_and_release_work_on_glibc() -> None:
    assert limit_arenas() is True
    release_memory()  # must not raise


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("frugal", [True, False])
async def test_idle_releases_memory_only_in_low_memory_mode(monkeypatch, frugal) -> None:
    from test_child_protocol import RuntimeSide, Unhurried

    released: list[bool] = []
    monkeypatch.setattr(protocol_module, "release_memory", lambda: released.append(True))
    runtime, worker = RuntimeSide(), ChildProtocol(reactor)
    worker.low_memory = frugal
    closed = loopbackAsync(worker, runtime)
    await worker.serve(LoadedApp(types.ModuleType("idle"), Unhurried()))
    await runtime.callRemote(commands.Idle)
    assert released == ([True] if frugal else [])
    runtime.transport.loseConnection()
    await closed


@pytest.mark.parametrize("frugal", [False, True])
def test_settle_freezes_the_loaded_app_and_collects_less_unless_frugal(frugal) -> None:
    import gc

    threshold = gc.get_threshold()
    try:
        settle(frugal)
        assert gc.get_freeze_count() > 0
        expected = threshold if frugal else (GC_THRESHOLD, *threshold[1:])
        assert gc.get_threshold() == expected
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

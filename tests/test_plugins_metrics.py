"""The metrics built-in: on by default, its JSON routes, and switching it off."""

from __future__ import annotations

import json

import pytest_twisted
from test_plugins_service import make_service
from test_plugins_support import FakePool, write_plugin

from buntime.http import Request
from buntime.plugins.discovery import BUILTINS_DIR

METRICS = "@buntime/plugin-metrics"


async def started(tmp_path, **kwargs):
    service = make_service(tmp_path, builtins_dir=BUILTINS_DIR, **kwargs)
    service.startService()
    await service.when_loaded()
    return service


@pytest_twisted.ensureDeferred
async def test_enabled_by_default_at_metrics(tmp_path):
    service = await started(tmp_path)
    [plugin] = service.registry.plugins
    assert (plugin.name, plugin.base) == (METRICS, "/metrics")
    assert plugin.context.logger.context == "plugin:metrics"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_snapshot(tmp_path):
    pool = FakePool()
    service = await started(tmp_path, pool=pool)
    response = await service.registry.route(Request("GET", "/metrics/api/"))
    assert response.status == 200
    assert response.headers.get("content-type") == "application/json"
    assert json.loads(response.body) == {"pool": pool.metrics(), "workers": pool.worker_stats()}
    pool.numbers["totalRequests"] = 8
    again = await service.registry.route(Request("GET", "/metrics/api/"))
    assert json.loads(again.body)["pool"]["totalRequests"] == 8
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stats(tmp_path):
    pool = FakePool()
    pool.workers.append({"status": "idle"})
    service = await started(tmp_path, pool=pool)
    response = await service.registry.route(Request("GET", "/metrics/api/stats"))
    assert json.loads(response.body) == {
        "pool": pool.metrics(),
        "workers": {"total": 3, "byStatus": {"active": 1, "idle": 2}},
    }
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_worker_stats_as_a_mapping(tmp_path):
    class MappingPool(FakePool):
        def worker_stats(self):
            return {"w1": {"status": "active"}, "w2": {"status": "active"}}

    service = await started(tmp_path, pool=MappingPool())
    response = await service.registry.route(Request("GET", "/metrics/api/stats"))
    assert json.loads(response.body)["workers"] == {"total": 2, "byStatus": {"active": 2}}
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_a_pool(tmp_path):
    service = await started(tmp_path, pool=None)
    response = await service.registry.route(Request("GET", "/metrics/api/"))
    assert response.status == 503
    assert json.loads(response.body)["error"]["code"] == "NO_POOL"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_unknown_paths_fall_through(tmp_path):
    service = await started(tmp_path)
    assert await service.registry.route(Request("GET", "/metrics/nothing")) is None
    assert await service.registry.route(Request("POST", "/metrics/api/")) is not None
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_switched_off_by_an_override_manifest(tmp_path):
    write_plugin(tmp_path, "metrics", {"name": METRICS, "enabled": False})
    service = await started(tmp_path)
    assert service.registry.plugins == ()
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_moved_by_an_override_manifest(tmp_path):
    write_plugin(tmp_path, "metrics", {"name": METRICS, "base": "/stats"})
    service = await started(tmp_path)
    response = await service.registry.route(Request("GET", "/stats/api/"))
    assert response.status == 200
    assert await service.registry.route(Request("GET", "/metrics/api/")) is None
    await service.stopService()

"""
The gateway and vhosts built-ins end to end: a real C{twistd -n buntime}
whose plugin dir holds manifests that switch them on and configure them,
a real app, and treq over 127.0.0.1.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from e2e_apps import write_app
from test_plugins_support import write_plugin

pytestmark = pytest.mark.e2e

INTERNAL = {"x-buntime-internal": "true"}
"""A change from this machine's tools: the CSRF rule's exemption (docs/api.md)."""

COUNTER = """
    from buntime.http import Response

    seen = []

    def fetch(request):
        if request.path == "/seen":
            return Response.json(seen)
        seen.append([request.method, request.path])
        tenant = request.headers.get("x-vhost-tenant")
        base = request.headers.get("x-base")
        return Response.text(f"n={len(seen)} path={request.path} tenant={tenant} base={base!r}")
"""

ORIGIN = "https://app.example"


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    from runtime import RuntimeProcess
    from twisted.internet import reactor

    root = tmp_path_factory.mktemp("gateway")
    apps = root / "apps"
    write_app(apps, "counter", "1.0.0", manifest={"ttl": "5m"}, files={"app.py": COUNTER})
    plugins = root / "plugins"
    write_plugin(
        plugins,
        "gateway",
        {
            "name": "@buntime/plugin-gateway",
            "enabled": True,
            "rateLimit": {
                "requests": 3,
                "window": "1h",
                "keyBy": "header:x-client",
                "excludePaths": ["/api", "/counter/seen"],
            },
            "cors": {"origins": [ORIGIN], "credentials": True},
            "cache": {"ttl": "1h", "excludePaths": ["/counter/seen"]},
        },
    )
    write_plugin(
        plugins,
        "vhosts",
        {
            "name": "@buntime/plugin-vhosts",
            "enabled": True,
            "hosts": {"*.tenants.test": {"app": "counter@1"}},
        },
    )
    proc = await RuntimeProcess.start(
        reactor, worker_dirs=[str(apps)], env={"RUNTIME_PLUGIN_DIRS": str(plugins)}
    )
    try:
        yield proc
    finally:
        await proc.terminate()


async def seen(proc) -> list[list[str]]:
    return await treq.json_content(await proc.get("/counter/seen"))


@pytest_twisted.ensureDeferred
async def test_over_the_limit_is_429_with_its_headers(gateway):
    for remaining in ("2", "1", "0"):
        answer = await gateway.get("/counter/limited", headers={"x-client": "c1"})
        await treq.content(answer)
        assert answer.code == 200
        assert answer.headers.getRawHeaders("x-ratelimit-limit") == ["3"]
        assert answer.headers.getRawHeaders("x-ratelimit-remaining") == [remaining]
    refused = await gateway.get("/counter/limited", headers={"x-client": "c1"})
    body = await treq.json_content(refused)
    assert refused.code == 429
    assert body["error"]["code"] == "RATE_LIMITED"
    [retry] = refused.headers.getRawHeaders("retry-after")
    assert 0 < int(retry) <= 3600
    assert refused.headers.getRawHeaders("x-ratelimit-remaining") == ["0"]
    assert refused.headers.getRawHeaders("x-ratelimit-reset") == [retry]
    # another client has its own count
    other = await gateway.get("/counter/limited", headers={"x-client": "c2"})
    await treq.content(other)
    assert other.code == 200


@pytest_twisted.ensureDeferred
async def test_a_preflight_never_reaches_the_app(gateway):
    answer = await gateway.request(
        "OPTIONS",
        "/counter/cors",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "PUT",
            "access-control-request-headers": "x-token",
            "x-client": "cors",
        },
    )
    assert await treq.content(answer) == b""
    assert answer.code == 204
    headers = answer.headers
    assert headers.getRawHeaders("access-control-allow-origin") == [ORIGIN]
    assert headers.getRawHeaders("access-control-allow-credentials") == ["true"]
    assert headers.getRawHeaders("access-control-allow-headers") == ["x-token"]
    assert "PUT" in headers.getRawHeaders("access-control-allow-methods")[0]
    refused = await gateway.request(
        "OPTIONS",
        "/counter/cors",
        headers={"origin": "https://evil.example", "access-control-request-method": "PUT"},
    )
    await treq.content(refused)
    assert refused.code == 403
    assert ["OPTIONS", "/cors"] not in await seen(gateway)
    # the real request carries the origin's headers, and Vary: Origin
    real = await gateway.request(
        "PUT", "/counter/cors", headers={"origin": ORIGIN, "x-client": "cors"}
    )
    await treq.content(real)
    assert real.headers.getRawHeaders("access-control-allow-origin") == [ORIGIN]
    assert real.headers.getRawHeaders("vary") == ["Origin"]
    assert ["PUT", "/cors"] in await seen(gateway)


@pytest_twisted.ensureDeferred
async def test_cache_hit_miss_and_invalidation(gateway):
    async def fetch() -> tuple[str, str]:
        answer = await gateway.get("/counter/cached?x=1", headers={"x-client": "cache"})
        body = (await treq.content(answer)).decode()
        [state] = answer.headers.getRawHeaders("x-cache")
        return state, body

    state, first = await fetch()
    assert state == "MISS"
    assert await fetch() == ("HIT", first)
    invalidated = await gateway.request(
        "POST",
        "/gateway/api/cache/invalidate",
        data=json.dumps({"pattern": "/counter/cached*"}).encode(),
        headers={"content-type": "application/json", "x-client": "admin", **INTERNAL},
    )
    assert await treq.json_content(invalidated) == {
        "invalidated": 1,
        "pattern": "/counter/cached*",
    }
    state, again = await fetch()
    assert state == "MISS" and again != first
    stats = await treq.json_content(
        await gateway.get("/gateway/api/stats", headers={"x-client": "admin"})
    )
    assert stats["cache"]["hits"] >= 1 and stats["cache"]["invalidated"] >= 1


@pytest_twisted.ensureDeferred
async def test_a_vhost_is_served_by_its_app_with_the_tenant(gateway):
    answer = await gateway.get(
        "/hello?q=1", headers={"host": "acme.tenants.test:8080", "x-client": "vhost"}
    )
    body = (await treq.content(answer)).decode()
    assert answer.code == 200
    # the app is at the host's root: the links it makes from its base stay there
    assert "path=/hello tenant=acme base=''" in body
    # another host falls through: nothing at /hello
    missing = await gateway.get("/hello", headers={"x-client": "vhost"})
    await treq.content(missing)
    assert missing.code == 404

"""
The built-in plugins' changes under the runtime's trust rule, end to end:
a real runtime with C{RUNTIME_API_TOKEN} refuses every change of the proxy's
rules, the gateway's cache and the logs without the bearer token (even from
this machine with C{Origin} and C{x-buntime-internal}) and takes it with the
token; a runtime without a token, reached over a UNIX socket (a peer it
cannot name, so not this machine's), refuses them and still lets reading
through.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from test_plugins_support import write_plugin

pytestmark = pytest.mark.e2e

TOKEN = "e2e-plugin-token-0123456789abcdef"

CHANGES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/redirects/api/rules", {"id": "r1", "pattern": "^/r1", "target": "http://h"}, 201),
    ("PUT", "/redirects/api/rules/r1", {"pattern": "^/r2", "target": "http://h"}, 200),
    ("DELETE", "/redirects/api/rules/r1", None, 204),
    ("POST", "/gateway/api/cache/invalidate", {"pattern": "*"}, 200),
    ("POST", "/logs/api/", {"message": "deployed"}, 201),
    ("POST", "/logs/api/clear", None, 200),
]


def plugin_dir(root) -> str:
    plugins = root / "plugins"
    write_plugin(plugins, "proxy", {"name": "@buntime/plugin-proxy", "enabled": True})
    write_plugin(
        plugins,
        "gateway",
        {"name": "@buntime/plugin-gateway", "enabled": True, "cache": {"ttl": "1m"}},
    )
    return str(plugins)


@pytest_twisted.ensureDeferred
async def test_a_token_guards_every_builtin_change(runtimes, tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    proc = await runtimes.start(
        worker_dirs=[str(apps)],
        env={"RUNTIME_API_TOKEN": TOKEN, "RUNTIME_PLUGIN_DIRS": plugin_dir(tmp_path)},
    )

    async def change(method: str, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        sent = {"content-type": "application/json", **headers}
        response = await proc.request(method, path, data=data, headers=sent)
        raw = await response.content()
        return int(response.code), json.loads(raw) if raw.startswith(b"{") else None

    for method, path, body, _ in CHANGES:
        for headers in (
            {"Origin": proc.url, "x-buntime-internal": "true"},
            {"Authorization": "Bearer not-the-token-0123456789"},
        ):
            status, error = await change(method, path, body, **headers)
            assert (status, error["error"]["code"]) == (401, "UNAUTHORIZED"), (method, path)
    for method, path, body, succeeds in CHANGES:
        status, _ = await change(method, path, body, Authorization=f"Bearer {TOKEN}")
        assert status == succeeds, (method, path)
    for path in ("/redirects/api/rules", "/gateway/api/stats", "/logs/api/stats"):
        assert (await proc.get(path)).code == 200
    logged = " ".join(str(line) for line in proc.lines)
    assert TOKEN not in logged


@pytest_twisted.ensureDeferred
async def test_without_a_token_a_peer_that_is_not_this_machine_changes_nothing(runtimes, tmp_path):
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    apps = tmp_path / "apps"
    apps.mkdir()
    socket_path = str(tmp_path / "buntime.sock")
    proc = runtimes.spawn(
        worker_dirs=[str(apps)],
        env={"RUNTIME_PLUGIN_DIRS": plugin_dir(tmp_path)},
        listen=f"unix:{socket_path}",
    )
    await proc.wait_for_log(lambda line: line.get("message_type") == "buntime:runtime:ready")

    @implementer(IAgentEndpointFactory)
    class ToSocket:
        def endpointForURI(self, uri: Any) -> Any:
            return UNIXClientEndpoint(reactor, socket_path)

    client = HTTPClient(Agent.usingEndpointFactory(reactor, ToSocket()))
    proof = {"Origin": "http://buntime", "x-buntime-internal": "true"}
    for method, path, body, _ in [*CHANGES, ("POST", "/api/plugins/reload", None, 200)]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json", **proof}
        response = await client.request(method, f"http://buntime{path}", data=data, headers=headers)
        error = await response.json()
        assert (response.code, error["error"]["code"]) == (403, "FORBIDDEN"), (method, path)
        assert "RUNTIME_API_TOKEN" in error["error"]["message"]
    for path in ("/redirects/api/rules", "/logs/api/stats", "/api/plugins"):
        response = await client.get(f"http://buntime{path}")
        await response.content()
        assert response.code == 200, path
    assert await proc.stop("TERM") in (0, -15)

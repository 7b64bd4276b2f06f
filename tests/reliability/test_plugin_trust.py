"""
The built-in plugins' changes answer to the runtime's trust rule, the one
the core API applies (docs/api.md, "Who may change what"), through the
public C{ctx.refuse_change}: every POST, PUT, PATCH and DELETE route of
every built-in (found from their Klein route maps, so a new one is checked
too), with and without C{RUNTIME_API_TOKEN}, from this machine and from
another; reading stays open.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted
from test_plugins_service import make_service
from test_plugins_support import write_plugin
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from buntime.http import Request, Response
from buntime.plugins.discovery import BUILTINS_DIR
from buntime.trust import SAFE_METHODS, ChangeRule

TOKEN = "plugin-trust-token-0123456789"
ELSEWHERE = "10.1.2.3"
"""A peer that is not this machine."""
HOME = "127.0.0.1"

ENABLED = {
    "proxy": {"name": "@buntime/plugin-proxy", "enabled": True},
    "gateway": {"name": "@buntime/plugin-gateway", "enabled": True, "cache": {"ttl": "1m"}},
}

# What each change needs to succeed once it is let through (status when it does).
CHANGES: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("POST", "/redirects/api/rules", {"id": "r1", "pattern": "^/r1", "target": "http://h"}, 201),
    ("PUT", "/redirects/api/rules/r1", {"pattern": "^/r2", "target": "http://h"}, 200),
    ("DELETE", "/redirects/api/rules/r1", None, 204),
    ("POST", "/gateway/api/cache/invalidate", {"pattern": "*"}, 200),
    ("POST", "/logs/api/", {"message": "from a tool"}, 201),
    ("POST", "/logs/api/clear", None, 200),
]


async def loaded(tmp_path, rule: ChangeRule):
    plugins = tmp_path / "plugins"
    for name, manifest in ENABLED.items():
        write_plugin(plugins, name, manifest)
    service = make_service(
        plugins,
        builtins_dir=BUILTINS_DIR,
        reactor=Clock(),
        data_dir=str(tmp_path / "data"),
        change_rule=rule,
    )
    service.startService()
    await service.when_loaded()
    return service


async def send(
    service, method: str, path: str, body: Any = None, remote: str | None = HOME, **headers: str
) -> tuple[int, Response, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    sent = {"host": "rt.localhost", "content-type": "application/json", **headers}
    request = Request(method, path, sent, data, remote_addr=remote)
    answer = await service.registry.route(request)
    assert answer is not None, f"{method} {path} found no route"
    raw = answer.body if isinstance(answer.body, bytes) else b""
    return answer.status, answer, json.loads(raw) if raw.startswith(b"{") else None


def changing_routes(service) -> set[tuple[str, str]]:
    """Every (method, path) of a built-in's Klein routes that may change state."""
    found = set()
    for plugin in service.registry.plugins:
        routes = getattr(plugin.provider, "routes", None)
        if routes is None or not plugin.path.startswith(BUILTINS_DIR):
            continue
        for rule in routes.url_map.iter_rules():
            path = plugin.base + re.sub(r"<[^>]*>", "r1", rule.rule)  # a value for each variable
            found.update((method, path) for method in rule.methods if method not in SAFE_METHODS)
    return found


@pytest_twisted.ensureDeferred
async def test_every_change_a_builtin_offers_is_on_the_list_checked_here(tmp_path):
    service = await loaded(tmp_path, ChangeRule())
    listed = {(method, path) for method, path, _, _ in CHANGES}
    assert changing_routes(service) == listed
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_a_token_another_machine_changes_nothing(tmp_path):
    service = await loaded(tmp_path, ChangeRule())
    for method, path, body, _ in CHANGES:
        status, _, error = await send(
            service, method, path, body, ELSEWHERE, origin="http://rt.localhost", **_internal()
        )
        assert (status, error["error"]["code"]) == (403, "FORBIDDEN"), (method, path)
        message = error["error"]["message"]
        assert "from this machine only" in message and "RUNTIME_API_TOKEN" in message
        assert "@buntime/plugin-" in message  # names whose state it would change
    for path in ("/redirects/api/rules", "/gateway/api/stats", "/logs/api/stats"):
        assert (await send(service, "GET", path, remote=ELSEWHERE))[0] == 200
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_a_token_this_machine_changes_with_proof_it_is_no_other_site(tmp_path):
    service = await loaded(tmp_path, ChangeRule())
    for method, path, body, _ in CHANGES:
        status, _, error = await send(service, method, path, body)
        assert (status, error["error"]["message"]) == (403, "Forbidden - Origin required")
        status, _, error = await send(service, method, path, body, origin="https://evil.test")
        assert status == 403 and "is not this runtime's" in error["error"]["message"]
    for index, (method, path, body, succeeds) in enumerate(CHANGES):
        # alternately a browser page of this runtime and a tool on this machine
        proof = {"origin": "http://rt.localhost"} if index % 2 else _internal()
        assert (await send(service, method, path, body, **proof))[0] == succeeds, (method, path)
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_with_a_token_every_change_needs_it_from_anywhere(tmp_path):
    service = await loaded(tmp_path, ChangeRule(TOKEN))
    for method, path, body, _ in CHANGES:
        for peer in (HOME, ELSEWHERE):
            for headers in (
                {"origin": "http://rt.localhost", **_internal()},
                {"authorization": f"Bearer {TOKEN}x"},
                {"authorization": TOKEN},
            ):
                status, answer, error = await send(service, method, path, body, peer, **headers)
                assert (status, error["error"]["code"]) == (401, "UNAUTHORIZED"), (path, headers)
                assert answer.headers["www-authenticate"] == 'Bearer realm="buntime"'
                assert TOKEN not in json.dumps(error)
    for method, path, body, succeeds in CHANGES:
        bearer = {"authorization": f"Bearer {TOKEN}"}  # no Origin needed: no browser adds it
        assert (await send(service, method, path, body, ELSEWHERE, **bearer))[0] == succeeds
    assert (await send(service, "GET", "/logs/api/", remote=ELSEWHERE))[0] == 200
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_peer_the_runtime_cannot_name_is_not_this_machine(tmp_path):
    """A request with no known peer (a UNIX socket's) is refused like another machine's."""
    service = await loaded(tmp_path, ChangeRule())
    status, _, error = await send(service, "POST", "/logs/api/clear", None, None, **_internal())
    assert (status, error["error"]["code"]) == (403, "FORBIDDEN")
    await service.stopService()


# -- the public API a plugin author uses ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_refuse_change_takes_a_hooks_request_or_a_routes_request(tmp_path):
    service = await loaded(tmp_path, ChangeRule(TOKEN))
    [logs] = [p for p in service.registry.plugins if p.name == "@buntime/plugin-logs"]
    ctx = logs.context
    hook_request = Request("DELETE", "/logs/x", remote_addr=HOME)
    refused = ctx.refuse_change(hook_request)
    assert isinstance(refused, Response) and refused.status == 401
    assert ctx.refuse_change(hook_request.with_header("authorization", f"Bearer {TOKEN}")) is None
    assert ctx.refuse_change(Request("GET", "/logs/x", remote_addr=ELSEWHERE)) is None

    route_request = DummyRequest([b"x"])
    route_request.method = b"POST"
    body = ctx.refuse_change(route_request)
    assert route_request.responseCode == 401
    assert json.loads(body)["error"]["code"] == "UNAUTHORIZED"
    assert route_request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    allowed = DummyRequest([b"x"])
    allowed.method = b"POST"
    allowed.requestHeaders.addRawHeader(b"authorization", f"Bearer {TOKEN}".encode())
    assert ctx.refuse_change(allowed) is None
    await service.stopService()


def test_a_change_rule_never_shows_its_token():
    assert TOKEN not in repr(ChangeRule(TOKEN))


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_this_machine_is_every_loopback_form(remote):
    change = Request("POST", "/x", {"x-buntime-internal": "true"}, remote_addr=remote)
    assert ChangeRule().refusal(change) is None


def _internal() -> dict[str, str]:
    return {"x-buntime-internal": "true"}


@pytest_twisted.ensureDeferred
async def test_plugins_are_told_which_proxies_the_runtime_trusts(tmp_path):
    """
    C{ctx.trusted_proxies} is C{RUNTIME_FORWARDED_ALLOW_IPS}: the gateway keys
    its rate limit by the last C{X-Forwarded-For} address none of them added.
    """
    proxies = frozenset({"10.0.0.9"})
    service = await loaded(tmp_path, ChangeRule(None, proxies))
    try:
        contexts = [plugin.context for plugin in service.registry.plugins]
        assert contexts and all(context.trusted_proxies is proxies for context in contexts)
    finally:
        await service.stopService()
    service = await loaded(tmp_path, ChangeRule(None, None))  # every peer trusted
    try:
        assert all(plugin.context.trusted_proxies is None for plugin in service.registry.plugins)
    finally:
        await service.stopService()

"""The vhosts built-in against its object, and switched on through the plugin service."""

from __future__ import annotations

import pytest
import pytest_twisted
from test_plugins_service import make_service
from test_plugins_support import write_plugin

from buntime.builtins.vhosts.plugin import VhostsPlugin, plugin
from buntime.http import Request
from buntime.plugins.discovery import BUILTINS_DIR

VHOSTS = "@buntime/plugin-vhosts"
HOSTS = {
    "www.example.com": {"app": "site"},
    "Docs.Example.com": "docs@^2",
    "*.example.com": {"app": "tenant@1", "pathPrefix": "/api"},
    "*.shop.test": {"app": "@acme/shop"},
}


def vhosts() -> VhostsPlugin:
    return plugin({"hosts": HOSTS})


def on(host: str | None, path: str = "/x?q=1", **headers: str) -> Request | None:
    sent = dict(headers)
    if host is not None:
        sent["host"] = host
    return vhosts().on_request(Request("GET", path, sent), None)


def test_an_exact_host_is_served_by_its_app_port_and_case_ignored():
    routed = on("www.example.com:8443")
    assert routed is not None
    assert routed.url == "/site/x?q=1"
    assert routed.mount == ""  # the app is at the root of its host
    assert "x-vhost-tenant" not in routed.headers
    assert on("DOCS.example.com.").url == "/docs@%5E2/x?q=1"


def test_a_wildcard_captures_the_tenant_within_its_path_prefix():
    routed = on("acme.example.com", "/api/items")
    assert routed is not None
    assert routed.path == "/tenant@1/api/items"
    assert routed.mount == ""  # the path unchanged: /api/items at the host's root
    assert routed.headers["x-vhost-tenant"] == "acme"
    assert on("acme.example.com", "/api").path == "/tenant@1/api"
    # outside the prefix the request goes on as it was
    assert on("acme.example.com", "/other") is None
    assert on("acme.example.com", "/apix") is None
    # one label only; the bare domain is not a tenant
    assert on("a.b.example.com", "/api/x") is None
    assert on("example.com", "/api/x") is None
    assert on("b.shop.test", "/").path == "/@acme/shop/"


def test_unmatched_hosts_fall_through():
    assert on("other.test") is None
    assert on(None) is None
    assert on("[::1]:8000") is None


def test_a_client_cannot_name_its_own_tenant():
    spoofed = on("other.test", **{"x-vhost-tenant": "victim"})
    assert spoofed is not None and "x-vhost-tenant" not in spoofed.headers
    exact = on("www.example.com", **{"x-vhost-tenant": "victim"})
    assert exact.path == "/site/x" and "x-vhost-tenant" not in exact.headers
    wildcard = on("acme.example.com", "/api/x", **{"X-Vhost-Tenant": "victim"})
    assert wildcard.headers.getall("x-vhost-tenant") == ["acme"]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (["a"], "hosts must be a map of host names to apps"),
        ({"a.test": {}}, 'hosts\\["a.test"\\] needs an app'),
        ({"a.*.test": "site"}, "is not a host name or \\*.domain"),
        ({"a.test": {"app": "site", "pathPrefix": "api"}}, "pathPrefix: 'api' is not a path"),
    ],
)
def test_bad_hosts(hosts, message):
    with pytest.raises(ValueError, match=message):
        plugin({"hosts": hosts})


@pytest_twisted.ensureDeferred
async def test_enabled_by_its_variable():
    service = make_service(builtins_dir=BUILTINS_DIR, environ={"VHOSTS_ENABLED": "yes"})
    service.startService()
    registry = await service.when_loaded()
    assert registry.get(VHOSTS) is not None
    assert registry.request_hooks(Request("GET", "/", {"host": "a.test"}), None, None).path == "/"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_off_by_default_and_on_through_a_manifest(tmp_path):
    service = make_service(builtins_dir=BUILTINS_DIR)
    service.startService()
    await service.when_loaded()
    assert service.registry.get(VHOSTS) is None
    await service.stopService()

    plugins = tmp_path / "plugins"
    write_plugin(plugins, "vhosts", {"name": VHOSTS, "enabled": True, "hosts": HOSTS})
    service = make_service(plugins, builtins_dir=BUILTINS_DIR)
    service.startService()
    registry = await service.when_loaded()
    loaded = registry.get(VHOSTS)
    assert loaded is not None and loaded.base is None
    routed = registry.request_hooks(Request("GET", "/", {"host": "www.example.com"}), None, None)
    assert routed.path == "/site/"
    assert loaded.provider.served == 1
    await service.stopService()

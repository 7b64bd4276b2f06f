"""
C{@buntime/plugin-vhosts}: a request whose C{Host} names a configured host
is served by that host's app, as if its path were under the app's base
(C{https://www.example.com/x} is served as C{/site/x}).  C{*.example.com}
matches one more label and passes it to the app as C{x-vhost-tenant}; a
C{pathPrefix} limits a host to the paths under it.  The port of the
C{Host} header is ignored; requests for other hosts go on unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, evolve, field, frozen
from zope.interface import implementer

from buntime.builtins._paths import PathSet, app_base
from buntime.http import AppInfo, Request
from buntime.interfaces import IBuntimePlugin, IPluginContext

TENANT = "x-vhost-tenant"


@frozen
class VirtualHost:
    """One entry of C{hosts:}: the host pattern, the app and its base, the paths it takes."""

    host: str
    app: str
    base: str
    paths: PathSet | None = None
    """C{pathPrefix}: only these paths are the app's (C{None}: every path)."""

    @classmethod
    def parse(cls, host: object, value: object) -> VirtualHost:
        if not isinstance(host, str) or not host or "*" in host.removeprefix("*."):
            raise ValueError(f"hosts: {host!r} is not a host name or *.domain")
        if isinstance(value, str):
            value = {"app": value}
        if not isinstance(value, Mapping) or not isinstance(value.get("app"), str):
            raise ValueError(f'hosts["{host}"] needs an app: {{app: "name@range"}}')
        prefix = value.get("pathPrefix")
        paths = None if prefix in (None, "", "/") else PathSet.parse([prefix], "pathPrefix")
        return cls(host.lower().rstrip("."), value["app"], app_base(value["app"]), paths)


def _host_name(host: str) -> str:
    """C{Host} without its port (C{[::1]:8000} -> C{[::1]}), lower case, no final dot."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0].rstrip(".")


@implementer(IBuntimePlugin)
@define
class VhostsPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """Exact hosts in one dict, wildcards by their domain in another: two look-ups per request."""

    exact: dict[str, VirtualHost] = field(factory=dict)
    wildcards: dict[str, VirtualHost] = field(factory=dict)
    """C{*.example.com} under C{.example.com}."""
    served: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VhostsPlugin:
        hosts = config.get("hosts") or {}
        if not isinstance(hosts, Mapping):
            raise ValueError(f"hosts must be a map of host names to apps, not {hosts!r}")
        found = cls()
        for host, value in hosts.items():
            vhost = VirtualHost.parse(host, value)
            if vhost.host.startswith("*."):
                found.wildcards[vhost.host[1:]] = vhost
            else:
                found.exact[vhost.host] = vhost
        return found

    def on_init(self, ctx: IPluginContext) -> None:
        hosts = sorted([*self.exact, *("*" + d for d in self.wildcards)])
        ctx.logger.info("Virtual hosts ready", hosts=hosts)

    def match(self, host: str | None) -> tuple[VirtualHost, str | None] | None:
        """The virtual host C{host} names, and the tenant a wildcard captured."""
        if not host:
            return None
        name = _host_name(host)
        vhost = self.exact.get(name)
        if vhost is not None:
            return vhost, None
        dot = name.find(".")
        if dot > 0:
            vhost = self.wildcards.get(name[dot:])
            if vhost is not None:
                return vhost, name[:dot]
        return None

    def on_request(self, request: Request, app: AppInfo | None) -> Request | None:
        headers = request.headers
        found = self.match(headers.get("host"))
        routed = None
        if found is not None:
            vhost, tenant = found
            path = request.path
            if vhost.paths is None or path in vhost.paths:
                self.served += 1
                # served at the host's root: the app's links stay on the host
                routed = request.with_path(vhost.base + path).with_mount("")
                if tenant is not None:
                    return routed.with_header(TENANT, tenant)
        if TENANT in headers:  # only this plugin says which tenant a request is for
            source = routed or request
            return evolve(source, headers=source.headers.remove(TENANT))
        return routed


def plugin(config: Mapping[str, Any]) -> VhostsPlugin:
    """The factory the loader calls with the manifest's settings."""
    return VhostsPlugin.from_config(config)

"""What a plugin's C{on_init(ctx)} receives: L{PluginContext}, its logger, the service registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from attrs import define, field, frozen
from zope.interface import implementer

from buntime.interfaces import IPluginContext, IPluginLogger
from buntime.logs import log

PLUGIN_LOG = "buntime:plugin:log"


@implementer(IPluginLogger)
@frozen
class PluginLogger:
    """eliot messages with C{context="plugin:<short name>"} and the plugin's name."""

    plugin: str
    short: str

    @property
    def context(self) -> str:
        return f"plugin:{self.short}"

    def _log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        fields.setdefault("plugin", self.plugin)
        log(level, PLUGIN_LOG, str(message), context=self.context, **fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._log("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._log("warn", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._log("error", message, fields)


@define
class ServiceRegistry:
    """Services plugins offer each other; one registry per loaded plugin set."""

    _services: dict[str, object] = field(factory=dict)
    _owners: dict[str, str] = field(factory=dict)

    def register(self, name: str, service: object, owner: str) -> None:
        if name in self._services:
            log(
                "warn",
                "buntime:plugins:service-overwritten",
                f'Service "{name}" registered by "{self._owners[name]}" is replaced by "{owner}"',
                service=name,
                plugin=owner,
            )
        self._services[name] = service
        self._owners[name] = owner

    def get(self, name: str) -> object | None:
        return self._services.get(name)

    def names(self) -> list[str]:
        return sorted(self._services)


class PoolView(Protocol):
    """What a plugin sees of the worker pool (L{IPluginContext.pool})."""

    def metrics(self) -> dict[str, float | int]:
        """Pool numbers, named as SPEC section 3 lists them."""

    def worker_stats(self) -> list[dict[str, object]]:
        """Per-worker numbers (SPEC section 3), with app, version, id and key."""


@implementer(IPluginContext)
@define
class PluginContext:
    """One plugin's view of the runtime (see L{IPluginContext})."""

    name: str
    base: str | None
    path: str
    config: Mapping[str, Any]
    global_config: Mapping[str, Any]
    logger: PluginLogger
    pool: PoolView
    services: ServiceRegistry
    data_dir: str
    reactor: Any
    plugin_bases: tuple[str, ...] = ()

    def register_service(self, name: str, service: object) -> None:
        self.services.register(name, service, self.name)

    def get_service(self, name: str) -> object | None:
        return self.services.get(name)

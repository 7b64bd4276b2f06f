"""What a plugin's C{on_init(ctx)} receives: L{PluginContext}, its logger, the service registry."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any, Protocol, overload

import eliot
from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from zope.interface import implementer

from buntime.http import Headers, Request, Response
from buntime.interfaces import IPluginContext, IPluginLogger
from buntime.logs import log
from buntime.logs.render import to_record
from buntime.once import Once
from buntime.plugins.outcomes import RequestOutcomes
from buntime.trust import ChangeRule

PLUGIN_LOG = "buntime:plugin:log"

_LINE_KEYS = frozenset(
    {
        "level",
        "message",
        "context",
        "timestamp",
        "message_type",
        "task_uuid",
        "task_level",
        "action_type",
        "action_status",
    }
)
"""A log line's own keys: a plugin's field of one of these names is kept as C{<name>_}."""


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
        if not _LINE_KEYS.isdisjoint(fields):
            # ctx.logger.info("saved", level=9) is a field, not the line's level
            fields = {(f"{k}_" if k in _LINE_KEYS else k): v for k, v in fields.items()}
        fields.setdefault("plugin", self.plugin)
        log(level, PLUGIN_LOG, str(message), context=self.context, **fields)

    def debug(self, message: str, /, **fields: Any) -> None:
        self._log("debug", message, fields)

    def info(self, message: str, /, **fields: Any) -> None:
        self._log("info", message, fields)

    def warn(self, message: str, /, **fields: Any) -> None:
        self._log("warn", message, fields)

    warning = warn

    def error(self, message: str, /, **fields: Any) -> None:
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

    def worker_events(self) -> list[dict[str, object]]:
        """Workers started, failed to start, crashed, retired: C{[{app, event, reason, count}]}."""


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
    requests: RequestOutcomes = field(factory=RequestOutcomes)
    stopping: Once = field(factory=Once)
    """Fired by the plugin service when the runtime's drain begins."""
    plugin_bases: tuple[str, ...] = ()
    change_rule: ChangeRule = field(factory=ChangeRule)
    """The runtime's rule for changes (its API token, its trusted proxies)."""
    _waiting: list[Deferred[None]] = field(factory=list, init=False, repr=False)

    @property
    def trusted_proxies(self) -> Container[str] | None:
        return self.change_rule.allowed

    def register_service(self, name: str, service: object) -> None:
        self.services.register(name, service, self.name)

    def get_service(self, name: str) -> object | None:
        return self.services.get(name)

    def add_log_destination(self, destination: Callable[[dict[str, Any]], None]) -> None:
        eliot.add_destinations(destination)

    def remove_log_destination(self, destination: Callable[[dict[str, Any]], None]) -> None:
        try:
            eliot.remove_destination(destination)
        except ValueError:
            pass  # not added, or removed already

    def log_record(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return dict(to_record(dict(message)))

    def when_stopping(self) -> Deferred[None]:
        waiting: Deferred[None] = self.stopping.wait()
        self._waiting.append(waiting)
        return waiting

    def release(self) -> None:
        """
        The plugin is shut down (replaced by a reload): its L{when_stopping}
        Deferreds stop waiting, so the runtime keeps nothing of it.
        """
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            self.stopping.forget(waiter)

    @overload
    def refuse_change(self, request: Request) -> Response | None: ...

    @overload
    def refuse_change(self, request: Any) -> bytes | None: ...

    def refuse_change(self, request: Any) -> Response | bytes | None:
        what = f"what {self.name} keeps"
        if isinstance(request, Request):
            return self.change_rule.refusal(request, what)
        refused = self.change_rule.refusal(_seen(request), what)
        if refused is None:
            return None
        request.setResponseCode(refused.status)
        for name, value in refused.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        body = refused.body
        assert isinstance(body, bytes)  # Response.error's JSON
        return body


def _seen(request: Any) -> Request:
    """What the trust rule reads of a twisted.web request: its method, headers and peer."""
    headers = Headers._of(
        tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        )
    )
    peer = getattr(request.getClientAddress(), "host", None)
    return Request(
        request.method.decode("latin-1"), request.uri.decode("latin-1"), headers, b"", peer
    )

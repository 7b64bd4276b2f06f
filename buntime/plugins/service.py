"""
The plugin set as a child service of the runtime: loaded and initialized on
start, reloaded on demand, shut down (reverse load order) on stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.once import Once
from buntime.plugins.context import PoolView
from buntime.plugins.discovery import BUILTINS_DIR, PluginSource, discover
from buntime.plugins.loader import Loader
from buntime.plugins.manifest import PluginError
from buntime.plugins.outcomes import RequestOutcomes
from buntime.plugins.registry import PluginRegistry
from buntime.trust import ChangeRule


@define(eq=False, kw_only=True)
class PluginService(Service):
    """
    Owns the current L{PluginRegistry} (C{registry}), swapped in one step by
    L{reload}.  When loading at start fails, C{failed} is the one-line
    reason (the runtime exits with status 1 on it) and C{registry} stays
    empty; L{when_loaded} fires once that first load is over either way.
    """

    plugin_dirs: Sequence[str]
    global_config: Mapping[str, Any]
    pool: PoolView
    environ: Mapping[str, str]
    reactor: Any
    data_dir: str
    builtins_dir: str | None = BUILTINS_DIR
    package: ModuleType | None = None
    packages: bool = True
    requests: RequestOutcomes = field(factory=RequestOutcomes)
    """What every request became, for C{ctx.requests}."""
    change_rule: ChangeRule = field(factory=ChangeRule)
    """Who may change what (C{ctx.refuse_change}): the runtime's API token and trusted proxies."""
    registry: PluginRegistry = field(factory=PluginRegistry)
    failed: str | None = None
    _server: Any = None
    _lock: DeferredLock = field(factory=DeferredLock)
    _loaded: Deferred[None] | None = None
    _waiting: Once | None = None
    _stopping: Once = field(factory=Once)

    def __attrs_post_init__(self) -> None:
        self.setName("plugins")

    @property
    def loader(self) -> Loader:
        prefix = self.global_config.get("api_prefix") or self.global_config.get("apiPrefix") or ""
        return Loader(
            environ=self.environ,
            global_config=self.global_config,
            pool=self.pool,
            reactor=self.reactor,
            data_dir=self.data_dir,
            api_prefix=str(prefix),
            requests=self.requests,
            stopping=self._stopping,
            change_rule=self.change_rule,
        )

    def discover(self) -> list[PluginSource]:
        """Every plugin found now (built-ins, packages, plugin dirs), enabled or not."""
        return discover(
            self.plugin_dirs,
            environ=self.environ,
            builtins_dir=self.builtins_dir,
            package=self.package,
            packages=self.packages,
        )

    # -- start --------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._loaded = Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        async with self._lock:
            try:
                self.registry, _ = await self.loader.load(self.discover())
            except PluginError as error:
                self.failed = str(error)
            except (Exception, SystemExit) as error:  # sys.exit() in a plugin's code too
                self.failed = f"Plugins failed to load: {type(error).__name__}: {error}"
                log(
                    "error",
                    "buntime:plugins:crashed",
                    self.failed,
                    traceback=Failure(error).getTraceback(),
                )
            if self.failed:
                log("error", "buntime:plugins:failed", self.failed)
            else:
                names = [p.name for p in self.registry.plugins]
                log(
                    "info",
                    "buntime:plugins:ready",
                    f"{len(names)} plugin(s) loaded" + (": " + ", ".join(names) if names else ""),
                    plugins=names,
                )
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.fire(None if self.failed else self.registry)

    def when_loaded(self) -> Deferred[PluginRegistry | None]:
        """
        Fires once the first load is over: with the registry, or C{None}
        when it failed (then C{failed} says why).  Never fails.
        """
        if self._loaded is not None and self._loaded.called:
            return succeed(None if self.failed else self.registry)
        if self._waiting is None:
            self._waiting = Once()
        waiter: Deferred[PluginRegistry | None] = self._waiting.wait()
        return waiter

    def runtime_stopping(self) -> None:
        """The runtime's drain begins: fire every context's C{when_stopping()}."""
        self._stopping.fire(None)

    async def server_started(self, server: Any) -> None:
        """Run the C{on_server_start} hooks (again for every reloaded set)."""
        self._server = server
        await self.registry.server_started(server)

    # -- reload ---------------------------------------------------------------------

    async def reload(self) -> PluginRegistry:
        """
        Rescan and reload every plugin.  The new set is validated, imported
        and initialized first; only then does it replace the old set, whose
        C{on_shutdown} hooks run next (reverse order).  On failure the old set
        keeps serving.

        @raise PluginError: the reason, as at startup.
        """
        async with self._lock:
            loader = self.loader
            previous = self.registry
            try:
                registry, restarted = await loader.load(self.discover(), previous)
            except PluginError as error:
                log("error", "buntime:plugins:reload-failed", f"Reload failed: {error}")
                raise
            self.registry = registry
            self.failed = None
            await loader.shutdown(previous.plugins, skip=restarted)
            log(
                "info",
                "buntime:plugins:reloaded",
                f"Plugins reloaded: {len(registry.plugins)} loaded",
                plugins=[p.name for p in registry.plugins],
            )
            if self._server is not None:
                await registry.server_started(self._server)
            return registry

    # -- stop -------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        async with self._lock:
            registry, self.registry = self.registry, PluginRegistry()
            await self.loader.shutdown(registry.plugins)

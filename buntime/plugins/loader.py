"""
Loading plugins: validate manifests, order them by dependencies (toposort),
import their code and check their providers (L{buntime.plugins.provider}),
run C{on_init}.

Every failure is a L{PluginError} whose message is the one-line reason of
SPEC §5.  Nothing runs a hook until the whole set validated and imported, and
a failing C{on_init} shuts down the plugins initialized before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any

from attrs import field, frozen
from toposort import CircularDependencyError, toposort
from twisted.internet import defer
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.logs.types import PLUGIN_LOAD
from buntime.once import Once
from buntime.plugins.context import PluginContext, PluginLogger, PoolView, ServiceRegistry
from buntime.plugins.discovery import PluginSource
from buntime.plugins.hooks import bounded, plugin_failed
from buntime.plugins.manifest import (
    PluginError,
    PluginManifest,
    check_base,
    parse_plugin_manifest,
    reserved_bases,
)
from buntime.plugins.outcomes import RequestOutcomes
from buntime.plugins.provider import make_provider, routes_site, verify
from buntime.plugins.registry import LoadedPlugin, PluginRegistry
from buntime.trust import ChangeRule

INIT_TIMEOUT = 30.0
"""Seconds an C{on_init} may take."""

SHUTDOWN_TIMEOUT = 10.0
"""Seconds an C{on_shutdown} may take before it is abandoned (and logged)."""


# -- ordering -------------------------------------------------------------------


def _in_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """The names that can reach themselves in C{graph} (what toposort could not order)."""
    members = []
    for start in graph:
        seen: set[str] = set()
        stack = list(graph.get(start, ()))
        while stack:
            node = stack.pop()
            if node == start:
                members.append(start)
                break
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
    return sorted(members or graph)


def order(manifests: Sequence[PluginManifest]) -> list[PluginManifest]:
    """
    C{manifests} (all enabled) in load order: dependencies first, optional
    dependencies first when present, otherwise in the given order.

    @raise PluginError: a missing required dependency, or a cycle.
    """
    index = {m.name: i for i, m in enumerate(manifests)}
    for manifest in manifests:
        for dependency in manifest.dependencies:
            if dependency not in index:
                raise PluginError(
                    f'Plugin "{manifest.name}" requires "{dependency}" which is not available.'
                    f' Ensure "{dependency}" is installed in pluginDirs.'
                )
    graph = {
        m.name: set(m.dependencies) | {d for d in m.optional_dependencies if d in index}
        for m in manifests
    }
    try:
        levels = list(toposort(graph))
    except CircularDependencyError as error:
        cycle = _in_cycle({k: set(v) for k, v in error.data.items()})
        raise PluginError(
            f"Circular dependency detected among plugins: {', '.join(cycle)}"
        ) from None
    by_name = {m.name: m for m in manifests}
    return [by_name[name] for level in levels for name in sorted(level, key=index.__getitem__)]


def plan(
    sources: Sequence[PluginSource], *, environ: Mapping[str, str], api_prefix: str = ""
) -> list[tuple[PluginSource, PluginManifest]]:
    """
    The enabled plugins of C{sources} in load order, validated (names,
    bases, dependencies, cycles, route collisions), nothing imported.

    @raise PluginError: the first problem found.
    """
    reserved = reserved_bases(api_prefix)
    enabled: list[tuple[PluginSource, PluginManifest]] = []
    for source in sources:
        if source.error:
            raise PluginError(source.error)
        try:
            manifest = parse_plugin_manifest(source.document, label=source.path, environ=environ)
        except PluginError:
            if source.name is not None and source.document.get("enabled") is False:
                continue
            raise
        if not manifest.enabled:
            log(
                "debug",
                "buntime:plugins:disabled",
                f'Plugin "{manifest.name}" is disabled',
                plugin=manifest.name,
            )
            continue
        check_base(manifest.name, manifest.base, reserved)
        enabled.append((source, manifest))
    source_of = {manifest.name: source for source, manifest in enabled}
    ordered = order([manifest for _, manifest in enabled])
    mounted: dict[str, str] = {}
    for manifest in ordered:
        if manifest.base is None:
            continue
        owner = mounted.get(manifest.base)
        if owner is not None:
            raise PluginError(
                f'Route collision: Plugin "{manifest.name}" cannot mount routes at'
                f' "{manifest.base}" - already used by "{owner}"'
            )
        mounted[manifest.base] = manifest.name
    return [(source_of[manifest.name], manifest) for manifest in ordered]


# -- lifecycle -------------------------------------------------------------------


@frozen
class Prepared:
    """A plugin imported and verified, not yet initialized."""

    source: PluginSource
    manifest: PluginManifest
    provider: object
    site: Any


@frozen
class Loader:
    """
    Builds registries: what every plugin's context gets (C{global_config},
    C{pool}, C{data_dir}, C{reactor}) and the clock for time limits.
    """

    environ: Mapping[str, str]
    global_config: Mapping[str, Any]
    pool: PoolView
    reactor: Any
    data_dir: str
    api_prefix: str = ""
    requests: RequestOutcomes = field(factory=RequestOutcomes)
    stopping: Once = field(factory=Once)
    change_rule: ChangeRule = field(factory=ChangeRule)
    init_timeout: float = INIT_TIMEOUT
    shutdown_timeout: float = SHUTDOWN_TIMEOUT

    async def prepare(self, sources: Sequence[PluginSource]) -> list[Prepared]:
        """Validate, order, import and verify: every step without side effects on the runtime."""
        prepared = []
        for source, manifest in plan(sources, environ=self.environ, api_prefix=self.api_prefix):
            if manifest.entrypoint and manifest.base is None:
                raise PluginError(
                    f'Plugin "{manifest.name}" has an entrypoint but no base to serve it at'
                )
            provider = await make_provider(source, manifest)
            verify(provider, manifest.name)
            prepared.append(Prepared(source, manifest, provider, routes_site(provider, manifest)))
        return prepared

    def context(
        self, item: Prepared, services: ServiceRegistry, bases: tuple[str, ...] = ()
    ) -> PluginContext:
        manifest = item.manifest
        return PluginContext(
            name=manifest.name,
            base=manifest.base,
            path=item.source.path,
            config=manifest.settings,
            global_config=MappingProxyType(dict(self.global_config)),
            logger=PluginLogger(manifest.name, manifest.short_name),
            pool=self.pool,
            services=services,
            data_dir=self.data_dir,
            reactor=self.reactor,
            requests=self.requests,
            stopping=self.stopping,
            plugin_bases=bases,
            change_rule=self.change_rule,
        )

    async def _init(self, plugin: LoadedPlugin) -> None:
        hook = plugin.hook("on_init")
        if hook is None:
            return
        try:
            await bounded(hook, (plugin.context,), self.init_timeout, self.reactor)
        except defer.TimeoutError:
            raise PluginError(
                f'Plugin "{plugin.name}" on_init timed out after {self.init_timeout:g}s'
            ) from None
        except (Exception, SystemExit) as error:  # sys.exit() in on_init too
            failed = "buntime:plugins:init-failed"
            raise plugin_failed(plugin.name, "on_init failed", failed, error) from None

    async def start(
        self, prepared: Sequence[Prepared], previous: PluginRegistry | None = None
    ) -> tuple[PluginRegistry, set[int]]:
        """
        C{on_init} each plugin in load order.  A provider object that is also
        in C{previous} (a packaged plugin's module-level object) first gets
        its C{on_shutdown}; the ids of those are returned so the caller does
        not shut them down twice.

        @raise PluginError: an C{on_init} failed or timed out; the plugins
            initialized before it were shut down.
        """
        services = ServiceRegistry()
        bases = tuple(
            sorted(
                {p.manifest.base for p in prepared if p.manifest.base},
                key=lambda base: (-len(base), base),
            )
        )
        old = {id(p.provider): p for p in (previous.plugins if previous else ())}
        restarted: list[LoadedPlugin] = []
        started: list[LoadedPlugin] = []
        try:
            for item in prepared:
                plugin = LoadedPlugin(
                    manifest=item.manifest,
                    provider=item.provider,
                    path=item.source.path,
                    origin=item.source.origin,
                    context=self.context(item, services, bases),
                    site=item.site,
                )
                if id(item.provider) in old:
                    restarted.append(old[id(item.provider)])
                    await self.shutdown([old[id(item.provider)]])
                loading = PLUGIN_LOAD(
                    level="debug", message=f'Loading plugin "{plugin.name}"', plugin=plugin.name
                )
                with loading.context():
                    try:
                        await self._init(plugin)
                    except BaseException as error:
                        loading.finish(error)
                        raise
                started.append(plugin)
                where = f" at {plugin.base}" if plugin.base else ""
                loading.add_success_fields(
                    level="info",
                    message=f'Plugin "{plugin.name}" loaded{where}',
                    plugin=plugin.name,
                    base=plugin.base,
                )
                loading.finish()
        except PluginError:
            await self.shutdown(started)
            for plugin in restarted:
                try:
                    await self._init(plugin)
                except PluginError as error:
                    log("error", "buntime:plugins:restore-failed", str(error), plugin=plugin.name)
            raise
        return PluginRegistry(started, services, self.reactor), {id(p.provider) for p in restarted}

    async def shutdown(
        self, plugins: Sequence[LoadedPlugin], skip: AbstractSet[int] = frozenset()
    ) -> None:
        """C{on_shutdown} in reverse order; failures and timeouts are logged, never raised."""
        for plugin in reversed(list(plugins)):
            if id(plugin.provider) in skip:
                continue
            hook = plugin.hook("on_shutdown")
            if hook is None:
                _release(plugin)
                continue
            try:
                await bounded(hook, (), self.shutdown_timeout, self.reactor)
            except defer.TimeoutError:
                log(
                    "error",
                    "buntime:plugins:shutdown-timeout",
                    f'Plugin "{plugin.name}" on_shutdown took longer than'
                    f" {self.shutdown_timeout:g}s",
                    plugin=plugin.name,
                )
            except Exception as error:
                log(
                    "error",
                    "buntime:plugins:shutdown-failed",
                    f'Plugin "{plugin.name}" on_shutdown failed: {type(error).__name__}: {error}',
                    plugin=plugin.name,
                    traceback=Failure(error).getTraceback(),
                )
            _release(plugin)

    async def load(
        self, sources: Sequence[PluginSource], previous: PluginRegistry | None = None
    ) -> tuple[PluginRegistry, set[int]]:
        """L{prepare} then L{start}."""
        return await self.start(await self.prepare(sources), previous)


def _release(plugin: LoadedPlugin) -> None:
    """A plugin shut down: the runtime lets go of it (see L{PluginContext.release})."""
    release = getattr(plugin.context, "release", None)
    if release is not None:
        release()

"""
The runtime built from its config (L{make_runtime}): the services of the
tree (logging, the pool, plugins, WebSockets, web, reload) and the parts
they share, wired together.  What the tree does once built (its start
order, signals, the shutdown cap) is L{buntime.service}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from attrs import frozen
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred

from buntime import __version__
from buntime.apps.discovery import AppCatalog, scan_worker_dir
from buntime.config import ConfigError, RuntimeConfig
from buntime.cpus import cpu_list, keep_cpus, plan
from buntime.http import AppInfo
from buntime.logs import log
from buntime.logs.service import LoggingService
from buntime.plugins.service import PluginService
from buntime.pool.launch.fork import ForkLauncher
from buntime.pool.launch.spawn import SpawnLauncher
from buntime.pool.pool import WorkerPool
from buntime.pool.service import PoolService
from buntime.pool.state import PoolConfig
from buntime.reload import ReloadService
from buntime.service import RuntimeService, exit_now, fatal_exit
from buntime.trust import ChangeRule
from buntime.web.api.apps import AppsAPI
from buntime.web.api.core import CoreAPI
from buntime.web.api.openapi import STRING, json_object, openapi_document
from buntime.web.api.plugins import PluginsAPI
from buntime.web.apps import AppStep
from buntime.web.frontdoor import FrontDoor
from buntime.web.http1 import HTTP1Factory, Limits
from buntime.web.plugins import PluginSteps
from buntime.web.server import WebService, scheme
from buntime.web.shell import FrameModules, ShellRouting
from buntime.web.state import RuntimeState
from buntime.web.websocket import WebSockets


def _api_url(port: Any, scheme: str = "http") -> str:
    address = port.getHost()
    if isinstance(address, UNIXAddress):  # requests-unixsocket's and docker's form
        path = address.name.decode() if isinstance(address.name, bytes) else str(address.name)
        return f"{scheme}+unix://{quote(path, safe='')}"
    host = getattr(address, "host", "127.0.0.1")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{getattr(address, 'port', 0)}"


@frozen
class ServerInfo:
    """What C{on_server_start} hooks get: where the runtime listens, and its config."""

    url: str
    config: RuntimeConfig


def _app_info(app: Any) -> AppInfo:
    return AppInfo(app.name, app.version, app.dir, getattr(app.manifest, "raw", {}))


def _plugins_loaded(registry: Any, plugins: PluginService) -> None:
    """Startup order: plugins are initialized before the port listens; failing ones stop it."""
    if plugins.failed:
        exit_now(1)  # the plugin service has logged the one-line reason


def report_empty(worker_dirs: Sequence[str]) -> None:
    """Say so (at info) for each app directory that holds no app yet."""
    for path in worker_dirs:
        if not scan_worker_dir(path):
            log("info", "buntime:apps:empty-dir", f"No apps in {path} yet", dir=path)


def place_on_cpus(config: RuntimeConfig) -> frozenset[int] | None:
    """
    C{RUNTIME_WORKER_CPUS} (L{buntime.cpus}): move the runtime to its CPUs
    now, and give the CPUs its workers run on (C{None}: any).

    @raise ConfigError: the setting leaves the workers no CPU.
    """
    try:
        placed = plan(config.worker_cpus, frozenset(os.sched_getaffinity(0)))
    except ValueError as error:
        raise ConfigError(f"RUNTIME_WORKER_CPUS: {error}") from None
    if placed.runtime is not None:
        keep_cpus(placed.runtime)
    if placed.workers is not None:
        runtime = cpu_list(placed.runtime) if placed.runtime else "any CPU"
        log(
            "info",
            "buntime:cpus",
            f"The runtime runs on {runtime}, its workers on CPUs {cpu_list(placed.workers)}",
            runtime=runtime,
            workers=cpu_list(placed.workers),
        )
    elif config.worker_cpus == "others":
        log(
            "warn",
            "buntime:cpus",
            "RUNTIME_WORKER_CPUS=others needs two CPUs; this process has one: workers share it",
        )
    return placed.workers


def make_pool(config: RuntimeConfig, reactor: Any) -> PoolService:
    """The worker pool and its launcher for C{config}."""
    cpus = place_on_cpus(config)
    if config.worker_mode == "fork":
        launcher: ForkLauncher | SpawnLauncher = ForkLauncher(reactor, cpus=cpus)
    else:
        launcher = SpawnLauncher(reactor, cpus=cpus)
    pool = WorkerPool(
        reactor,
        PoolConfig(
            pool_size=config.pool_size,
            ephemeral_concurrency=config.ephemeral_concurrency,
            ephemeral_queue=max(100, config.ephemeral_concurrency * 10),
            delay=config.delay,
            production=config.production,
        ),
        launcher,
    )
    service = PoolService(pool=pool, launcher=launcher)
    service.setName("pool")
    return service


def body_limit(config: RuntimeConfig, apps: AppStep) -> Callable[[str], int]:
    """The body limit of a request path: the app's, or the ceiling for the core API."""
    api_base = config.api_base

    def limit(path: str) -> int:
        if path == api_base or path.startswith(api_base + "/"):
            return config.body_size_max
        return apps.body_limit_for(path)

    return limit


def make_runtime(
    config: RuntimeConfig, reactor: Any, console_path: str | None = None
) -> RuntimeService:
    """
    Wire the runtime for C{config}; C{console_path}: write the console's log
    lines to this file (twistd's log file, when daemonized).
    """
    state = RuntimeState()
    logging = LoggingService(
        clock=reactor,
        level=config.log_level,
        fmt=config.log_format,
        file_path=config.log_file,
        console_path=console_path,
    )
    logging.setName("logging")
    pool = make_pool(config, reactor)
    runtime_env = {
        "RUNTIME_API_URL": "",
        "RUNTIME_ENV": config.env,
        "RUNTIME_LOG_LEVEL": config.log_level,
        "RUNTIME_WORKER_DIRS": ":".join(config.worker_dirs),
        "RUNTIME_PLUGIN_DIRS": ":".join(config.plugin_dirs),
    }
    apps = AppStep(
        catalog=AppCatalog(config.worker_dirs, reactor),
        pool=pool.pool,
        environ=config.environ,
        runtime_env=lambda: runtime_env,
        body_size_default=config.body_size_default,
        body_size_max=config.body_size_max,
        production=config.production,
        homepage=config.homepage,
        clock=reactor,
        reserved=frozenset({"health", ".well-known", config.api_base.strip("/").split("/")[0]}),
    )
    plugins = PluginService(
        plugin_dirs=config.plugin_dirs,
        global_config={
            "workerDirs": list(config.worker_dirs),
            "pluginDirs": list(config.plugin_dirs),
            "poolSize": config.pool_size,
            "env": config.env,
            "api_prefix": config.api_prefix,
            "dataDir": config.data_dir,
        },
        pool=pool.pool,
        environ=config.environ,
        reactor=reactor,
        data_dir=config.data_dir,
        change_rule=ChangeRule(config.api_token, config.forwarded_allow_ips),
    )
    plugins.setName("plugins")
    pool.pool.on_worker_spawn.append(
        lambda worker, app: Deferred.fromCoroutine(
            plugins.registry.worker_spawned(worker, _app_info(app))
        )
    )
    pool.pool.on_worker_terminate.append(
        lambda worker, app: Deferred.fromCoroutine(
            plugins.registry.worker_terminated(worker, _app_info(app))
        )
    )
    plugin_steps = PluginSteps(registry=lambda: plugins.registry, apps=apps)
    apps_api = AppsAPI(
        worker_dirs=config.worker_dirs,
        catalog=apps.catalog,
        retire=pool.pool.retire_app,
        threads=reactor,
        check=apps.check,
    )
    apis: list[tuple[str, Any]] = [
        ("/api/apps", apps_api),
        ("/api/plugins", PluginsAPI(service=plugins, threads=reactor)),
    ]

    def document() -> dict[str, Any]:
        klein_apps = [(type(obj).app, obj) for _, obj in apis] + [(CoreAPI.app, api)]
        document = openapi_document(klein_apps, config.api_base, __version__)
        document["paths"]["/.well-known/buntime"] = {
            "get": {
                "summary": "Where this runtime's API is, and its version",
                "description": "Always at this path, whatever RUNTIME_API_PREFIX says.",
                "operationId": "wellKnownBuntime",
                "responses": {
                    "200": {
                        "description": '`{"api": "/api", "version": "0.1.0"}`',
                        "content": {
                            "application/json": {"schema": json_object(api=STRING, version=STRING)}
                        },
                    }
                },
            }
        }
        return document

    api = CoreAPI(state=state, api_base=config.api_base, openapi=document)
    # websocket: plugins' open WebSockets, closed (1001) once web has drained on stop
    websockets = WebSockets(clock=reactor)
    websockets.setName("websockets")
    frontdoor = FrontDoor(
        clock=reactor,
        state=state,
        api=api,
        api_prefix=config.api_prefix,
        steps=[
            FrameModules(),
            ShellRouting(registry=lambda: plugins.registry, apps=apps),
            plugin_steps,
            apps,
            apps.serve_homepage,
        ],
        apis=apis,
        plugins=lambda: plugins.registry,
        identify=apps.identify,
        websockets=websockets,
        body_limit=body_limit(config, apps),
        forwarded_allow=config.forwarded_allow_ips,
        api_token=config.api_token,
        outcomes=plugins.requests,
    )
    limits = Limits(header_timeout=config.header_timeout, max_connections=config.max_connections)
    web = WebService(
        reactor=reactor,
        description=config.listen,
        site=HTTP1Factory(frontdoor, reactor, limits, state),
        state=state,
        fatal=fatal_exit,
        wait_for=lambda: plugins.when_loaded().addCallback(_plugins_loaded, plugins),
    )
    web.setName("web")
    runtime = RuntimeService(
        reactor=reactor,
        state=state,
        web=web,
        drain_delay=config.drain_delay,
        shutdown_timeout=config.shutdown_timeout,
        take_signals=True,
    )

    def listening(port: Any) -> Any:
        runtime_env["RUNTIME_API_URL"] = _api_url(port, scheme(config.listen))
        return port

    web.listening.addCallback(listening)
    runtime.on_serving.append(lambda: pool.launcher_ready)
    runtime.on_serving.append(lambda: report_empty(config.worker_dirs))
    runtime.on_stopping.append(plugins.runtime_stopping)
    runtime.on_stopping.append(websockets.close_tunnels)  # in flight: the drain waits on them
    runtime.on_serving.append(
        lambda: Deferred.fromCoroutine(
            plugins.server_started(ServerInfo(url=runtime_env["RUNTIME_API_URL"], config=config))
        )
    )
    logging.setServiceParent(runtime)
    # children stop in reverse: the pool retires its workers (each one's
    # on_worker_terminate hooks) before the plugins' on_shutdown runs
    plugins.setServiceParent(runtime)
    pool.setServiceParent(runtime)
    if config.reload:
        reload = ReloadService(
            clock=reactor,
            worker_dirs=config.worker_dirs,
            plugin_dirs=config.plugin_dirs,
            retire=pool.pool.retire_app,
            reload_plugins=lambda: Deferred.fromCoroutine(plugins.reload()),
            invalidate=apps.catalog.invalidate,
        )
        reload.setName("reload")
        reload.setServiceParent(runtime)
    websockets.setServiceParent(runtime)  # websocket: stops right after web (its drain)
    web.setServiceParent(runtime)
    return runtime

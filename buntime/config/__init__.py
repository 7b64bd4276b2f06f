"""
The runtime's configuration: command-line options beat environment variables,
which beat a C{.env} file in the working directory, which beats defaults.
L{load_config} reads every setting (L{buntime.config.readers}) into a
L{RuntimeConfig} (L{buntime.config.values}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from buntime.config.readers import (
    _addresses,
    _api_prefix,
    _api_token,
    _body_sizes,
    _delay,
    _directories,
    _duration,
    _Given,
    _listening,
    _log_file,
    _logging,
    _per_cpu,
    _reload,
    read_dotenv,
)
from buntime.config.values import (
    ENV_NAMES,
    ENVIRONMENTS,
    LOG_FORMATS,
    LOG_LEVELS,
    POOL_SIZE_DEFAULTS,
    ConfigError,
    Peers,
    RuntimeConfig,
)
from buntime.cpus import check_setting

__all__ = [
    "ENVIRONMENTS",
    "ENV_NAMES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "POOL_SIZE_DEFAULTS",
    "ConfigError",
    "Peers",
    "RuntimeConfig",
    "check_directories",
    "check_listen",
    "load_config",
    "read_dotenv",
]


def load_config(
    options: Mapping[str, Any],
    environ: Mapping[str, str],
    dotenv: Mapping[str, str] | None = None,
) -> RuntimeConfig:
    """
    Build a L{RuntimeConfig} from command-line C{options} (C{None} = not
    given), the process environment and the C{.env} variables.

    @raise ConfigError: naming the variable and the bad value.
    """
    merged_env = {**(dotenv or {}), **environ}
    given = _Given.read(options, merged_env)
    env = given.choice("env", "development", ENVIRONMENTS)
    worker_dirs, plugin_dirs = _directories(given)
    listen, port = _listening(given)
    pool_size = given.integer("pool_size", POOL_SIZE_DEFAULTS[env], 1)
    log_level, log_format = _logging(given, env)
    body_size_default, body_size_max = _body_sizes(given)
    api_prefix = _api_prefix(given)
    ephemeral_concurrency = given.integer("ephemeral_concurrency", _per_cpu(8), 1)
    delay = _delay(given)
    worker_mode = given.choice("worker_mode", "fork", ("fork", "spawn"))
    header_timeout = _duration(given, "header_timeout", "10s", positive=True)
    max_connections = given.integer("max_connections", 4096, 1)
    forwarded_allow_ips = _addresses(
        given.label("forwarded_allow_ips"), given.get("forwarded_allow_ips") or "127.0.0.1,::1"
    )
    log_file = _log_file(given)
    reload = _reload(given, env)
    drain_delay = _duration(given, "drain_delay", "5s" if env == "production" else "0s")
    shutdown_timeout = _duration(given, "shutdown_timeout", "30s", positive=True)
    worker_cpus = _worker_cpus(given)
    return RuntimeConfig(
        listen=listen,
        port=port,
        env=env,
        worker_dirs=worker_dirs,
        plugin_dirs=plugin_dirs,
        pool_size=pool_size,
        log_level=log_level,
        log_format=log_format,
        log_file=log_file,
        body_size_default=body_size_default,
        body_size_max=body_size_max,
        api_prefix=api_prefix,
        ephemeral_concurrency=ephemeral_concurrency,
        delay=delay,
        data_dir=os.path.abspath(given.get("data_dir") or "./.buntime"),
        homepage=given.get("homepage") or None,
        worker_mode=worker_mode,
        environ=dict(merged_env),
        header_timeout=header_timeout,
        drain_delay=drain_delay,
        shutdown_timeout=shutdown_timeout,
        api_token=_api_token(given),
        max_connections=max_connections,
        forwarded_allow_ips=forwarded_allow_ips,
        reload=reload,
        worker_cpus=worker_cpus,
    )


def _worker_cpus(given: _Given) -> str:
    """C{RUNTIME_WORKER_CPUS}: C{all} (the default), C{others} or a CPU list."""
    try:
        return check_setting(given.get("worker_cpus") or "all")
    except ValueError as error:
        raise ConfigError(f"{given.label('worker_cpus')}: {error} (or all, or others)") from None


def check_directories(config: RuntimeConfig) -> None:
    """
    Refuse app directories that do not exist (a typo would otherwise serve
    nothing but 404s, silently).

    @raise ConfigError: naming the first such directory.
    """
    for path in config.worker_dirs:
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise ConfigError(
                f"RUNTIME_WORKER_DIRS (or --worker-dirs): the app directory {path} {what};"
                " create it (mkdir -p) or fix the path"
            )


def check_listen(config: RuntimeConfig, reactor: Any) -> None:
    """
    Refuse a listen description Twisted cannot make an endpoint of (an
    unknown type, a bad argument, a TLS key file that is not there, is no
    PEM or does not match the certificate), before plugins load and workers
    start.

    @raise ConfigError: naming the setting and the description.
    """
    from OpenSSL import SSL, crypto
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.error import VerifyError

    unusable = (ValueError, TypeError, KeyError, OSError, VerifyError, SSL.Error, crypto.Error)
    try:
        serverFromString(reactor, config.listen)
    except unusable as error:
        raise ConfigError(
            f"RUNTIME_LISTEN (or --listen) must be a Twisted endpoint like"
            f" tcp:8000:interface=127.0.0.1, got {config.listen!r}: {error}"
        ) from None

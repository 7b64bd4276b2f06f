"""
What the runtime's configuration is: its settings' names and environment
variables, and the parsed, validated L{RuntimeConfig}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from attrs import field, frozen

ENVIRONMENTS = ("development", "staging", "production", "test")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("pretty", "json")

POOL_SIZE_DEFAULTS = {"development": 10, "staging": 50, "production": 500, "test": 5}

# option name -> environment variable(s), first set wins
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "port": ("PORT",),
    "listen": ("RUNTIME_LISTEN",),
    "env": ("RUNTIME_ENV", "NODE_ENV"),
    "worker_dirs": ("RUNTIME_WORKER_DIRS",),
    "plugin_dirs": ("RUNTIME_PLUGIN_DIRS",),
    "pool_size": ("RUNTIME_POOL_SIZE",),
    "log_level": ("RUNTIME_LOG_LEVEL",),
    "log_format": ("RUNTIME_LOG_FORMAT",),
    "log_file": ("RUNTIME_LOG_FILE",),
    "body_size_default": ("BODY_SIZE_DEFAULT",),
    "body_size_max": ("BODY_SIZE_MAX",),
    "api_prefix": ("RUNTIME_API_PREFIX",),
    "ephemeral_concurrency": ("RUNTIME_EPHEMERAL_CONCURRENCY",),
    "delay_ms": ("DELAY_MS",),
    "data_dir": ("RUNTIME_DATA_DIR",),
    "homepage": ("RUNTIME_HOMEPAGE",),
    "worker_mode": ("RUNTIME_WORKER_MODE",),
    "header_timeout": ("RUNTIME_HEADER_TIMEOUT",),
    "max_connections": ("RUNTIME_MAX_CONNECTIONS",),
    "forwarded_allow_ips": ("RUNTIME_FORWARDED_ALLOW_IPS",),
    "reload": ("RUNTIME_RELOAD",),
    "drain_delay": ("RUNTIME_DRAIN_DELAY",),
    "api_token": ("RUNTIME_API_TOKEN",),
    "shutdown_timeout": ("RUNTIME_SHUTDOWN_TIMEOUT",),
    "worker_cpus": ("RUNTIME_WORKER_CPUS",),
}


@frozen
class Peers:
    """
    Some peers by address: C{remote in peers} for an address as text (the
    usual, an exact address, costs one set lookup; networks are looked at
    only when there are some).
    """

    addresses: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __contains__(self, remote: object) -> bool:
        if remote in self.addresses:
            return True
        if not self.networks or not isinstance(remote, str):
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class ConfigError(Exception):
    """A user error in the configuration; its message is one line for the terminal."""


@frozen
class RuntimeConfig:
    """Everything the runtime was told, parsed and validated."""

    listen: str
    port: int | None
    env: str
    worker_dirs: tuple[str, ...]
    plugin_dirs: tuple[str, ...]
    pool_size: int
    log_level: str
    log_format: str
    log_file: str | None
    body_size_default: int
    body_size_max: int
    api_prefix: str
    ephemeral_concurrency: int
    delay: float
    data_dir: str
    homepage: str | None
    worker_mode: str
    environ: Mapping[str, str] = field(repr=False)  # values may be secrets
    header_timeout: float = 10.0
    max_connections: int = 4096
    forwarded_allow_ips: Peers | None = Peers(frozenset({"127.0.0.1", "::1"}))
    """Peers whose C{X-Forwarded-*} and C{Forwarded} headers are passed on; C{None}: any."""
    api_token: str | None = field(default=None, repr=False)
    """C{RUNTIME_API_TOKEN}: the bearer token core API changes need (C{None}: loopback only)."""
    drain_delay: float = 0.0
    """Seconds a stopping runtime goes on serving (readiness 503) before it stops listening."""
    shutdown_timeout: float = 30.0
    """Seconds in-flight requests get to finish once the runtime stops listening."""
    reload: bool = False
    """Retire an app's workers when its files change, reload plugins when theirs do."""
    worker_cpus: str = "all"
    """C{RUNTIME_WORKER_CPUS}: C{all}, C{others} or a CPU list (see L{buntime.cpus})."""

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def api_base(self) -> str:
        """Where the core API is mounted: C{{prefix}/api}."""
        return f"{self.api_prefix}/api"

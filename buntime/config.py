"""
The runtime's configuration: command-line options beat environment variables,
which beat a C{.env} file in the working directory, which beats defaults.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from buntime.units import parse_duration, parse_size

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
}


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
    forwarded_allow_ips: frozenset[str] | None = frozenset({"127.0.0.1", "::1"})
    """Peers whose C{X-Forwarded-*} and C{Forwarded} headers are passed on; C{None}: any."""

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def api_base(self) -> str:
        """Where the core API is mounted: C{{prefix}/api}."""
        return f"{self.api_prefix}/api"


def read_dotenv(path: str) -> dict[str, str]:
    """The variables of a C{.env} file, or nothing when there is none."""
    if not os.path.isfile(path):
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _split_dirs(value: str) -> tuple[str, ...]:
    return tuple(os.path.abspath(os.path.expanduser(p)) for p in value.split(":") if p.strip())


def _int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    lowered = str(value).strip().lower()
    if lowered == "warning":
        lowered = "warn"
    if lowered not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return lowered


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
    raw: dict[str, tuple[str, str]] = {}  # option -> (label for errors, value)
    for option, names in ENV_NAMES.items():
        cli = options.get(option)
        flag = "--" + option.replace("_", "-")
        if cli is not None:
            raw[option] = (flag, str(cli))
            continue
        for name in names:
            if merged_env.get(name, "") != "":
                raw[option] = (name, merged_env[name])
                break

    def label(option: str, fallback: str) -> str:
        return raw[option][0] if option in raw else fallback

    def get(option: str) -> str | None:
        return raw[option][1] if option in raw else None

    env = _choice(label("env", "RUNTIME_ENV"), get("env") or "development", ENVIRONMENTS)

    worker_dirs_value = get("worker_dirs")
    if not worker_dirs_value or not _split_dirs(worker_dirs_value):
        raise ConfigError("workerDirs is required: set RUNTIME_WORKER_DIRS env var")
    worker_dirs = _split_dirs(worker_dirs_value)
    plugin_dirs = _split_dirs(get("plugin_dirs") or "./plugins")

    port: int | None = None
    listen = get("listen")
    if options.get("listen") is None and options.get("port") is not None:
        listen = None  # --port on the command line beats RUNTIME_LISTEN
    if listen is None:
        port = _int(label("port", "PORT"), get("port") or "8000", 0)
        if port > 65535:
            raise ConfigError(f"{label('port', 'PORT')} must be at most 65535, got {port!r}")
        listen = f"tcp:{port}"

    pool_size = POOL_SIZE_DEFAULTS[env]
    if get("pool_size") is not None:
        pool_size = _int(label("pool_size", "RUNTIME_POOL_SIZE"), get("pool_size") or "", 1)

    log_level = _choice(
        label("log_level", "RUNTIME_LOG_LEVEL"),
        get("log_level") or ("debug" if env == "development" else "info"),
        LOG_LEVELS,
    )
    log_format = _choice(
        label("log_format", "RUNTIME_LOG_FORMAT"),
        get("log_format") or ("pretty" if env == "development" else "json"),
        LOG_FORMATS,
    )

    def size(option: str, name: str, default: str) -> int:
        value = get(option) or default
        try:
            return parse_size(value)
        except ValueError:
            raise ConfigError(
                f"{label(option, name)} must be a size like 10mb, got {value!r}"
            ) from None

    body_size_default = size("body_size_default", "BODY_SIZE_DEFAULT", "10mb")
    body_size_max = size("body_size_max", "BODY_SIZE_MAX", "100mb")
    if body_size_default > body_size_max:
        raise ConfigError(
            f"BODY_SIZE_DEFAULT ({body_size_default} bytes) must not exceed "
            f"BODY_SIZE_MAX ({body_size_max} bytes)"
        )

    api_prefix = (get("api_prefix") or "").strip().rstrip("/")
    if api_prefix and (not api_prefix.startswith("/") or " " in api_prefix):
        raise ConfigError(
            f"{label('api_prefix', 'RUNTIME_API_PREFIX')} must be a path like /_, "
            f"got {get('api_prefix')!r}"
        )

    ephemeral_concurrency = 8 * (os.cpu_count() or 1)
    if get("ephemeral_concurrency") is not None:
        ephemeral_concurrency = _int(
            label("ephemeral_concurrency", "RUNTIME_EPHEMERAL_CONCURRENCY"),
            get("ephemeral_concurrency") or "",
            1,
        )

    delay_value = get("delay_ms") or "100"
    try:
        delay = parse_duration(float(delay_value) / 1000.0)
    except ValueError:
        raise ConfigError(
            f"{label('delay_ms', 'DELAY_MS')} must be a number of milliseconds, got {delay_value!r}"
        ) from None

    worker_mode = _choice(
        label("worker_mode", "RUNTIME_WORKER_MODE"), get("worker_mode") or "fork", ("fork", "spawn")
    )

    header_value = get("header_timeout") or "10s"
    try:
        header_timeout = parse_duration(header_value)
    except ValueError:
        header_timeout = -1.0
    if header_timeout <= 0:
        raise ConfigError(
            f"{label('header_timeout', 'RUNTIME_HEADER_TIMEOUT')} must be a positive duration "
            f"(like 10s), got {header_value!r}"
        )
    max_connections = 4096
    if get("max_connections") is not None:
        max_connections = _int(
            label("max_connections", "RUNTIME_MAX_CONNECTIONS"), get("max_connections") or "", 1
        )

    forwarded_allow_ips = _addresses(
        label("forwarded_allow_ips", "RUNTIME_FORWARDED_ALLOW_IPS"),
        get("forwarded_allow_ips") or "127.0.0.1,::1",
    )

    log_file = get("log_file") or None
    if log_file is not None:
        log_file = os.path.abspath(log_file)
        try:
            with open(log_file, "a", encoding="utf-8"):
                pass
        except OSError as error:
            raise ConfigError(
                f"{label('log_file', 'RUNTIME_LOG_FILE')} cannot be written: "
                f"{log_file!r} ({error.strerror})"
            ) from None

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
        data_dir=os.path.abspath(get("data_dir") or "./.buntime"),
        homepage=get("homepage") or None,
        worker_mode=worker_mode,
        environ=dict(merged_env),
        header_timeout=header_timeout,
        max_connections=max_connections,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def _addresses(name: str, value: str) -> frozenset[str] | None:
    """A comma-separated list of IP addresses as their canonical text; C{*}: any (C{None})."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if items == ["*"]:
        return None
    found = set()
    for item in items:
        try:
            found.add(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(
                f"{name} must be IP addresses separated by commas, or *; got {item!r}"
            ) from None
    return frozenset(found)

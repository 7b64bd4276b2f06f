"""
How each setting is read: from the command line, the environment or a
C{.env} file (L{_Given}), parsed and checked, with a line naming the
variable when it is wrong (L{buntime.config.values.ConfigError}).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from buntime.config.values import ENV_NAMES, LOG_FORMATS, LOG_LEVELS, ConfigError, Peers
from buntime.units import parse_duration, parse_size


def read_dotenv(path: str) -> dict[str, str]:
    """The variables of a C{.env} file, or nothing when there is none."""
    if not os.path.isfile(path):
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _split_dirs(value: str) -> tuple[str, ...]:
    """The absolute paths of a C{:}-separated list, blanks left out."""
    return tuple(os.path.abspath(os.path.expanduser(p)) for p in value.split(":") if p.strip())


def _int(name: str, value: str, minimum: int) -> int:
    """
    C{value} as an integer of at least C{minimum}.

    @raise ConfigError: naming C{name} when it is not one.
    """
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """
    C{value}, lowercased, if it is one of C{choices} (C{warning} reads as C{warn}).

    @raise ConfigError: naming C{name} when it is none of them.
    """
    lowered = str(value).strip().lower()
    if lowered == "warning":
        lowered = "warn"
    if lowered not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return lowered


@frozen
class _Given:
    """
    What each option was given, and where: C{values} maps an option to the
    label its errors use (C{--flag} or the environment variable's name) and
    its text.  Options given nowhere, or as empty variables, are absent.
    """

    values: Mapping[str, tuple[str, str]]

    @classmethod
    def read(cls, options: Mapping[str, Any], environ: Mapping[str, str]) -> _Given:
        """
        Each option from the command line (C{None}: not given), else from the
        first of its L{ENV_NAMES} set to something in C{environ}.
        """
        values: dict[str, tuple[str, str]] = {}
        for option, names in ENV_NAMES.items():
            if options.get(option) is not None:
                values[option] = ("--" + option.replace("_", "-"), str(options[option]))
                continue
            for name in names:
                if environ.get(name, "") != "":
                    values[option] = (name, environ[name])
                    break
        return cls(values)

    def get(self, option: str) -> str | None:
        """The text C{option} was given, C{None} when none."""
        return self.values[option][1] if option in self.values else None

    def label(self, option: str) -> str:
        """What C{option}'s errors call it: where it was given, else its first variable."""
        return self.values[option][0] if option in self.values else ENV_NAMES[option][0]

    def on_command_line(self, option: str) -> bool:
        """Whether C{option} came from the command line."""
        return self.label(option).startswith("--")

    def choice(self, option: str, default: str, choices: tuple[str, ...]) -> str:
        """C{option} (or C{default} when it is unset or empty), one of C{choices}."""
        return _choice(self.label(option), self.get(option) or default, choices)

    def integer(self, option: str, default: int, minimum: int) -> int:
        """C{option} as an integer of at least C{minimum}, C{default} when not given."""
        value = self.get(option)
        if value is None:
            return default
        return _int(self.label(option), value, minimum)


def _per_cpu(count: int) -> int:
    """C{count} for each CPU of this machine."""
    return count * (os.cpu_count() or 1)


def _directories(given: _Given) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """
    The app directories (required) and the plugin directories.

    @raise ConfigError: when no app directory is given.
    """
    worker_dirs = _split_dirs(given.get("worker_dirs") or "")
    if not worker_dirs:
        raise ConfigError(
            "workerDirs is required: set RUNTIME_WORKER_DIRS env var (or pass -w/--worker-dirs)"
        )
    return worker_dirs, _split_dirs(given.get("plugin_dirs") or "./plugins")


def _listening(given: _Given) -> tuple[str, int | None]:
    """
    The endpoint string to listen on, and the TCP port when it is one made
    from C{--port}/C{PORT} (which C{--listen}/C{RUNTIME_LISTEN} beats, but
    for C{--port} on the command line, which beats C{RUNTIME_LISTEN}).
    """
    listen = given.get("listen")
    if not given.on_command_line("listen") and given.on_command_line("port"):
        listen = None
    if listen is not None:
        return listen, None
    port = _int(given.label("port"), given.get("port") or "8000", 0)
    if port > 65535:
        raise ConfigError(f"{given.label('port')} must be at most 65535, got {port!r}")
    return f"tcp:{port}", port


def _logging(given: _Given, env: str) -> tuple[str, str]:
    """The log level and format: C{debug} and C{pretty} in development, by default."""
    development = env == "development"
    level = given.choice("log_level", "debug" if development else "info", LOG_LEVELS)
    log_format = given.choice("log_format", "pretty" if development else "json", LOG_FORMATS)
    return level, log_format


def _size(given: _Given, option: str, default: str) -> int:
    """
    C{option} as a number of bytes (C{10mb}, say).

    @raise ConfigError: when it is not a size.
    """
    value = given.get(option) or default
    try:
        return parse_size(value)
    except ValueError:
        raise ConfigError(
            f"{given.label(option)} must be a size like 10mb, got {value!r}"
        ) from None


def _body_sizes(given: _Given) -> tuple[int, int]:
    """
    The request body limit of apps that set none, and the ceiling of all.

    @raise ConfigError: when the first exceeds the second.
    """
    default = _size(given, "body_size_default", "10mb")
    ceiling = _size(given, "body_size_max", "100mb")
    if default > ceiling:
        raise ConfigError(
            f"BODY_SIZE_DEFAULT ({default} bytes) must not exceed BODY_SIZE_MAX ({ceiling} bytes)"
        )
    return default, ceiling


def _api_prefix(given: _Given) -> str:
    """
    Where the core API is mounted, below C{/api}: empty, or a path without
    a trailing slash.
    """
    prefix = (given.get("api_prefix") or "").strip().rstrip("/")
    if prefix and (not prefix.startswith("/") or " " in prefix):
        raise ConfigError(
            f"{given.label('api_prefix')} must be a path like /_, got {given.get('api_prefix')!r}"
        )
    return prefix


def _delay(given: _Given) -> float:
    """
    The grace, in seconds, before a retired worker is killed (C{DELAY_MS}
    is milliseconds).
    """
    value = given.get("delay_ms") or "100"
    try:
        return parse_duration(float(value) / 1000.0)
    except ValueError:
        raise ConfigError(
            f"{given.label('delay_ms')} must be a non-negative number of milliseconds"
            f" (like 100), got {value!r}"
        ) from None


def _reload(given: _Given, env: str) -> bool:
    """
    Whether to reload on file changes: on by default in development only,
    and never in production.

    @raise ConfigError: for a value that is no boolean, or reload in production.
    """
    value = given.get("reload")
    if value is None:
        return env == "development"
    lowered = value.strip().lower()
    if lowered not in _TRUE + _FALSE:
        raise ConfigError(f"{given.label('reload')} must be 1 or 0 (true or false), got {value!r}")
    if lowered in _TRUE and env == "production":
        raise ConfigError(
            f"{given.label('reload')} is for development: it cannot be on in production"
        )
    return lowered in _TRUE


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _api_token(given: _Given) -> str | None:
    """C{RUNTIME_API_TOKEN}, at least 16 characters when set (a guessable token is no lock)."""
    token = given.get("api_token") or None
    if token is not None and len(token.strip()) < 16:
        raise ConfigError(f"{given.label('api_token')} must be at least 16 characters long")
    if token is not None and not all(" " <= c <= "~" or c == "\t" for c in token):
        # a header value is latin-1 to the runtime and UTF-8 to most clients: it never matches
        raise ConfigError(
            f"{given.label('api_token')} must be printable ASCII (a client cannot send"
            " other characters in an Authorization header)"
        )
    return token.strip() if token is not None else None


def _duration(given: _Given, name: str, default: str, positive: bool = False) -> float:
    """
    Setting C{name} as seconds (C{default} when not given).

    @raise ConfigError: unless it is a non-negative (C{positive}: positive) duration.
    """
    value = given.get(name) or default
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0 or (positive and seconds == 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigError(f"{given.label(name)} must be a {kind} duration (like 5s), got {value!r}")
    return seconds


def _log_file(given: _Given) -> str | None:
    """
    The absolute path of the JSON log file, if any, made when missing.

    @raise ConfigError: when it cannot be opened for appending.
    """
    log_file = given.get("log_file") or None
    if log_file is None:
        return None
    log_file = os.path.abspath(log_file)
    try:
        with open(log_file, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise ConfigError(
            f"{given.label('log_file')} cannot be written: {log_file!r} ({error.strerror})"
        ) from None
    return log_file


def _addresses(name: str, value: str) -> Peers | None:
    """
    A comma-separated list of IP addresses and networks (C{10.0.0.0/8});
    C{*}: any peer (C{None}).
    """
    items = [item.strip() for item in value.split(",") if item.strip()]
    if items == ["*"]:
        return None
    addresses, networks = set(), []
    for item in items:
        try:
            if "/" in item:
                networks.append(ipaddress.ip_network(item, strict=False))
            else:
                addresses.add(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(
                f"{name} must be IP addresses or networks (10.0.0.0/8) separated by commas,"
                f" or *; got {item!r}"
            ) from None
    return Peers(frozenset(addresses), tuple(networks))

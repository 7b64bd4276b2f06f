"""
The fields of an app manifest: each key's L{buntime.manifest.AppManifest}
attribute and its parser.  A parser returns the value as its type or raises
C{ValueError} with a message for the user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from buntime.units import parse_duration, parse_size, quoted, shown

HTTP_METHODS = ("ALL", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""Keys a C{publicRoutes} map may use; C{ALL} matches every method."""


def _show(value: object) -> str:
    """
    C{value} as an error line shows it: a string in double quotes, cut
    short, with what is not printable (a line break, say) escaped as JSON
    escapes it, so that the error stays one line.
    """
    if isinstance(value, str):
        return quoted(value if len(value) <= 60 else value[:57] + "...")
    return shown(value)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"must be a string, not {_kind(value)}")


def _entrypoint(value: object) -> str:
    text = _string(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"invalid duration: {_show(value)} (a non-negative number of seconds, "
            'or a string like "500ms", "30s", "5m", "2h", "1d")'
        ) from None


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(
            f'invalid size: {_show(value)} (a number of bytes, or a string like "512kb", "10mb")'
        ) from None


MIN_MEMORY = 1024 * 1024
"""The least C{maxMemory} (1mb): a smaller number is a unit left out."""


def _memory(value: object) -> int | None:
    """C{maxMemory}: a size (a bare number is bytes); C{0} means no limit."""
    size = _size(value)
    if size == 0:
        return None
    if size < MIN_MEMORY:
        raise ValueError(
            f"too small: {_show(value)} is {size} bytes; give a unit, "
            'like "256mb" or "1gb" (the least is 1mb, 0 turns the limit off)'
        )
    return size


def _positive_int(value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number <= 0:
        raise ValueError(f"must be a positive integer, not {_show(value)}")
    return number


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(value: object) -> bool:
    """A manifest bool: C{true/false}, C{yes/no}, C{on/off}, C{1/0}, strings in any case too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, not {_show(value)}")


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a map of NAME: value, not {_kind(value)}")
    env = {}
    for key, item in value.items():
        name = str(key)
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"invalid variable name {_show(name)}")
        if item is None:
            text = ""
        elif isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, str | int | float):
            text = str(item)
        else:
            raise ValueError(
                f'the value of "{name}" must be a string, a number or a boolean, not {_kind(item)}'
            )
        if "\0" in text:
            raise ValueError(f'the value of "{name}" contains a NUL character')
        env[name] = text
    return env


def _names(value: object) -> frozenset[str]:
    """A list of environment variable names (compared without case)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of variable names, not {_kind(value)}")
    names = set()
    for item in value:
        if not isinstance(item, str) or not item or "=" in item or "\0" in item:
            raise ValueError(f"invalid variable name {_show(item)}")
        names.add(item.upper())
    return frozenset(names)


def _route_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}must be a list of path patterns, not {_kind(value)}")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(
                f"{where}each pattern must be a path starting with /: {_show(pattern)}"
            )
    return tuple(value)


def _public_routes(value: object) -> dict[str, tuple[str, ...]]:
    if isinstance(value, Mapping):
        routes = {}
        for key, patterns in value.items():
            method = str(key).upper()
            if method not in HTTP_METHODS:
                raise ValueError(f"unknown method {_show(key)} (use {', '.join(HTTP_METHODS)})")
            routes[method] = _route_list(patterns, f"{method}: ")
        return routes
    return {"ALL": _route_list(value, "")}


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


FIELDS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "name": ("name", _string),
    "version": ("version", _string),
    "entrypoint": ("entrypoint", _entrypoint),
    "timeout": ("timeout", _duration),
    "ttl": ("ttl", _duration),
    "idleTimeout": ("idle_timeout", _duration),
    "maxRequests": ("max_requests", _positive_int),
    "maxBodySize": ("max_body_size", _size),
    "maxMemory": ("max_memory", _memory),
    "lowMemory": ("low_memory", parse_bool),
    "autoInstall": ("auto_install", parse_bool),
    "injectBase": ("inject_base", parse_bool),
    "env": ("env", _env),
    "envAllow": ("env_allow", _names),
    "publicRoutes": ("public_routes", _public_routes),
    "maxConcurrency": ("max_concurrency", _positive_int),
    "maxInstances": ("max_instances", _positive_int),
    "maxQueue": ("max_queue", _positive_int),
}
"""Manifest key -> (AppManifest attribute, parser).  Other keys stay in C{raw}."""

"""
Durations and sizes as manifests and environment variables write them.

A bare number is seconds (durations) or bytes (sizes); strings carry a unit:
``"500ms"``, ``"30s"``, ``"5m"``, ``"2d"``, ``"10mb"``.
"""

from __future__ import annotations

import json
import re

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}
_SIZE_UNITS = {"b": 1.0, "kb": 1024.0, "mb": 1024.0**2, "gb": 1024.0**3}

_NUMBER_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def _split(value: str) -> tuple[float, str] | None:
    match = _NUMBER_WITH_UNIT.match(value)
    if match is None:
        return None
    return float(match.group(1)), match.group(2).lower()


def _parse(value: object, units: dict[str, float], default: str, kind: str, hint: str) -> float:
    """C{value} in the base unit of C{units} (a number is already in C{default})."""
    if isinstance(value, bool):
        raise ValueError(f"invalid {kind}: {shown(value)}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = float("inf") if value > 0 else float("-inf")
    elif isinstance(value, str):
        parts = _split(value)
        if parts is None or (parts[1] and parts[1] not in units):
            raise ValueError(f"invalid {kind}: {shown(value)} (use e.g. {hint})")
        number = parts[0] * units[parts[1] or default]
    else:
        raise ValueError(f"invalid {kind}: {shown(value)}")
    if number < 0 or number != number or number == float("inf"):
        raise ValueError(f"invalid {kind}: {shown(value)} (must be a non-negative number)")
    return number


def quoted(text: str) -> str:
    """
    C{text} in double quotes for an error line: as it is when it is all
    printable, else with what is not (a line break, say) escaped as JSON
    escapes it, so that the error stays one line.
    """
    return json.dumps(text, ensure_ascii=not text.isprintable())


def shown(value: object) -> str:
    """C{value} as an error line shows it: its repr, cut short (a number of 5000 digits too)."""
    if isinstance(value, int) and abs(value).bit_length() > 64:
        return "a number of more than 64 bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: object) -> float:
    """
    Return C{value} as seconds (a float).

    @raise ValueError: for negative numbers, unknown units and anything that
        is not a number or a string.
    """
    return _parse(value, _DURATION_UNITS, "s", "duration", "500ms, 30s, 5m, 2h, 1d")


def parse_size(value: object) -> int:
    """
    Return C{value} as a number of bytes (an int).

    @raise ValueError: for negative numbers, unknown units and anything that
        is not a number or a string.
    """
    return int(_parse(value, _SIZE_UNITS, "b", "size", "512kb, 10mb, 1gb"))


def format_size(size: int) -> str:
    """Render C{size} bytes the short way a person reads it (C{"10mb"})."""
    for unit in ("gb", "mb", "kb"):
        factor = int(_SIZE_UNITS[unit])
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"

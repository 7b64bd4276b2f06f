"""
JSON for the hot paths (the worker channel's heads, log lines): orjson,
with the standard library for the odd value orjson refuses (a lone
surrogate, an integer past 64 bits, a key that is not text), so that
nothing a JSON encoder can write is refused here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, default: Callable[[Any], Any] = _not_json) -> str:
    """
    C{json.dumps(value, separators=(",", ":"), default=default)}, but
    non-ASCII text is written as it is and a non-finite float as C{null}.
    Without C{default}, what JSON cannot hold raises C{TypeError}.
    """
    try:
        return orjson.dumps(value, default=default).decode("utf-8")
    except orjson.JSONEncodeError:
        return json.dumps(_finite(value), default=default, separators=(",", ":"))


def _finite(value: Any) -> Any:
    """C{value} with C{None} for every non-finite float, as orjson writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def loads(text: str | bytes) -> Any:
    """C{json.loads(text)}: C{ValueError} for what is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # a lone surrogate's escape, say; else the same ValueError

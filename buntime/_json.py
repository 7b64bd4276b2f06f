"""
JSON for the hot paths (the worker channel's heads, log lines): orjson,
with the standard library for the odd value orjson refuses (a lone
surrogate, an integer past 64 bits, a key that is not text), so that
nothing a JSON encoder can write is refused here.
"""

from __future__ import annotations

import json
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
        return json.dumps(value, default=default, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """C{json.loads(text)}: C{ValueError} for what is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # a lone surrogate's escape, say; else the same ValueError

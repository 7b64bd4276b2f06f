"""Compact JSON encoding for the hot path."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def compact_encoder(default: Callable[[Any], Any] = _not_json) -> Callable[[Any], str]:
    """
    C{json.dumps(value, separators=(",", ":"), default=default)} as one
    function: the C encoder built once rather than on every call (what
    C{json.dumps} does), which halves the time of a small value.  Without
    C{default}, what JSON cannot hold raises C{TypeError}, as in C{json.dumps}.
    """
    plain = json.JSONEncoder(default=default, separators=(",", ":"))
    try:
        from json.encoder import (  # type: ignore[attr-defined]
            c_make_encoder,
            encode_basestring_ascii,
        )
    except ImportError:  # a Python without the C accelerator
        return plain.encode
    if c_make_encoder is None:
        return plain.encode
    encoder = c_make_encoder(
        None, default, encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode

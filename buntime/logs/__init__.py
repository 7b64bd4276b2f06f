"""
Logging for buntime: every line is an eliot message.

Messages carry C{level} (debug, info, warn, error), a human C{message} and
a C{context} (C{runtime}, C{plugin:keyval}, C{worker:hello@1.0.0} ...).
L{log} writes one; the destinations (L{buntime.logs.destinations}) filter
them by level and write them as JSON lines or pretty, coloured lines
(L{buntime.logs.render}); the service (L{buntime.logs.service}) sets them
up and forwards C{twisted.logger} events into eliot.  A request is one
eliot action (L{buntime.logs.requests}).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from eliot import log_message

LEVELS = ("debug", "info", "warn", "error")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}


SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
REDACTED = "[redacted]"


class Record(dict[str, Any]):
    """
    An eliot message that is already its own JSON record (see
    L{buntime.logs.render.to_record}): C{level}, C{message}, C{timestamp}
    and C{context} first, then its fields, every value plain (text, numbers,
    booleans, C{None}, the task level's list of ints) and nothing to
    redact.  The formatters write it as it is.  A request's start and end
    lines are made this way (L{buntime.logs.requests}).
    """

    __slots__ = ()


def log(level: str, message_type: str, message: str, **fields: object) -> None:
    """
    Log one eliot message.  C{message_type} is C{buntime:<subsystem>:<event>},
    C{message} the human sentence, C{fields} structured data (never secrets).
    """
    log_message(message_type=message_type, level=level, message=message, **fields)


_random = b""
_random_at = 0


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """
    A random (version 4) UUID as text, for request and task ids: what
    C{str(uuid.uuid4())} gives, with C{os.urandom} drawn 4 KiB at a time
    instead of 16 bytes per id (a system call each).  A forked child starts
    with fresh randomness.
    """
    global _random, _random_at
    if _random_at >= len(_random):
        _random, _random_at = os.urandom(4096), 0
    text = _random[_random_at : _random_at + 16].hex()
    _random_at += 16
    variant = "89ab"[int(text[16], 16) & 3]
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:]}"


def level_enabled(minimum: str, level: str) -> bool:
    """Whether a message at C{level} passes a C{minimum} filter."""
    return _RANK.get(level, 1) >= _RANK.get(minimum, 0)


def redact_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header pairs safe to log: credentials and cookies replaced."""
    return [
        (name, REDACTED if name.lower() in SENSITIVE_HEADERS else value) for name, value in pairs
    ]

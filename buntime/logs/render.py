"""
How a log message is written: a JSON line (L{format_json}) or a pretty,
optionally coloured line (L{format_pretty}), credentials never included.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from buntime._json import dumps
from buntime.http import Headers
from buntime.logs import _RANK, REDACTED, SENSITIVE_HEADERS, Record, redact_headers

# Keys of an eliot message that the formatters place themselves.
_OWN_KEYS = {"level", "message", "timestamp", "context"}
_TASK_KEYS = ("task_uuid", "task_level", "message_type", "action_type", "action_status")


def _level_of(message: dict[str, Any]) -> str:
    level = message.get("level")
    if isinstance(level, str) and level in _RANK:
        return level
    if message.get("action_status") == "failed":
        return "error"
    return "debug"


def _text_of(message: dict[str, Any]) -> str:
    text = message.get("message")
    if isinstance(text, str):
        return text
    if "action_type" in message:
        return f"{message['action_type']} {message.get('action_status', '')}".strip()
    if "exception" in message:
        return f"{message['exception']}: {message.get('reason', '')}"
    return str(message.get("message_type", ""))


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)


_PLAIN = frozenset({str, int, float, bool, type(None)})

_CREDENTIALS = SENSITIVE_HEADERS | {name.replace("-", "_") for name in SENSITIVE_HEADERS}
"""Names whose values are never written, as headers or keys: C{x-api-key}, C{x_api_key} ..."""

_SAFE_FIELDS: set[str] = set(_OWN_KEYS) | set(_TASK_KEYS) | {"task_level"}
"""
Field names known to be no credential's in any spelling, learned as lines
are written: a line whose fields are all known (almost every line) costs
one C{issuperset}; a field name not yet known is lowered once.
"""
_SAFE_LIMIT = 4096
"""How many field names L{_SAFE_FIELDS} learns (a line of more is lowered each time)."""


def _credential_fields(message: dict[str, Any]) -> list[str]:
    """
    The fields of C{message} named as a credential in any case (C{aUTHORIZATION},
    C{X_Api_Key}); those found no credential's are learned as safe.
    """
    found = []
    for key in message:
        if key in _SAFE_FIELDS:
            continue
        if str(key).lower() in _CREDENTIALS:
            found.append(key)
        elif len(_SAFE_FIELDS) < _SAFE_LIMIT:
            _SAFE_FIELDS.add(key)
    return found


def _scrub(value: Any) -> Any:
    """C{value} with credentials replaced, in dicts, header pairs and L{Headers}."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if str(k).lower() in _CREDENTIALS else _scrub(v)) for k, v in value.items()
        }
    if isinstance(value, Headers):
        return [list(pair) for pair in redact_headers(value.items())]
    if isinstance(value, list | tuple):
        if value and all(_is_pair(item) for item in value):
            return [[name, _scrub(item)] for name, item in redact_headers(value)]
        return [_scrub(item) for item in value]
    return value


def _timestamp_of(message: dict[str, Any]) -> Any:
    """The message's C{timestamp}, or now (only asked when it has none)."""
    return message["timestamp"] if "timestamp" in message else time.time()


def _own_fields(message: dict[str, Any]) -> tuple[str, str, Any, Any]:
    """
    A line's own C{level}, C{message}, C{timestamp} (epoch seconds, as eliot
    writes it) and C{context}.
    """
    text = message.get("message")
    return (
        _level_of(message),
        text if type(text) is str else _text_of(message),
        _timestamp_of(message),
        message.get("context", "runtime"),
    )


def to_record(message: dict[str, Any]) -> dict[str, Any]:
    """
    The JSON object for one eliot message: C{level}, C{message},
    C{timestamp} (epoch seconds), C{context}, the message's own fields, and
    eliot's task fields.  Credentials are replaced: the message's own
    fields of a credential's name (C{authorization}, C{cookie}, C{x_api_key}
    ...), and those in dicts, header pairs and L{Headers}.  A L{Record} is
    its own record.
    """
    if type(message) is Record:
        return message
    level, text, timestamp, context = _own_fields(message)
    record: dict[str, Any] = {"level": level, "message": text, "timestamp": timestamp}
    record["context"] = context
    record.update(message)  # its own fields keep their place, first; their values are ours
    record["level"], record["message"] = level, text
    record["timestamp"], record["context"] = timestamp, context
    for key, value in message.items():
        if type(value) not in _PLAIN and key != "task_level" and key not in _OWN_KEYS:
            record[key] = _scrub(value)  # (eliot's task_level: a list of ints)
    if not _SAFE_FIELDS.issuperset(message):
        for key in _credential_fields(message):
            record[key] = REDACTED
    return record


def _json_text(value: object) -> str:
    """Text for a value JSON cannot hold (what C{json.dumps(default=repr)} writes)."""
    return repr(value)


def format_json(message: dict[str, Any]) -> str:
    """One JSON line (without its line break) for an eliot message (see L{to_record})."""
    return dumps(to_record(message), _json_text)


_COLOURS = {"debug": "\x1b[90m", "info": "\x1b[36m", "warn": "\x1b[33m", "error": "\x1b[31m"}
_ABBREV = {"debug": "DBG", "info": "INF", "warn": "WRN", "error": "ERR"}


def format_pretty(message: dict[str, Any], colour: bool = False) -> str:
    """C{12:34:56.789 INF [plugin:keyval] Request processed {"duration": 45}}."""
    record = dict(to_record(message))
    stamp = datetime.fromtimestamp(_timestamp_of(message)).strftime("%H:%M:%S.%f")
    level = record.pop("level")
    text = record.pop("message")
    context = record.pop("context")
    record.pop("timestamp")
    for key in _TASK_KEYS:
        record.pop(key, None)
    extra = " " + json.dumps(record, default=repr, ensure_ascii=False) if record else ""
    tag = _ABBREV[level]
    if colour:
        tag = f"{_COLOURS[level]}{tag}\x1b[0m"
        context = f"\x1b[35m[{context}]\x1b[0m"
    else:
        context = f"[{context}]"
    return f"{stamp[:-3]} {tag} {context} {text}{extra}"

"""
Logging for buntime: every line is an eliot message.

Messages carry C{level} (debug, info, warn, error), a human C{message} and
a C{context} (C{runtime}, C{plugin:keyval}, C{worker:hello@1.0.0} ...).  The
destinations here filter them by level and write them as JSON lines or as
pretty, coloured lines; L{TwistedToEliot} forwards C{twisted.logger} events
into eliot so Twisted's own messages come out the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import datetime
from typing import IO, Any

import eliot
from attrs import define, field
from eliot import log_message
from eliot._action import Action, TaskLevel
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LoggingFile, LogLevel, formatEvent
from zope.interface import implementer

from buntime._json import dumps
from buntime.http import Headers

LEVELS = ("debug", "info", "warn", "error")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}

REQUEST_ACTION = "buntime:http:request"

request_fields: ContextVar[dict[str, Any] | None] = ContextVar("request_fields", default=None)
"""Extra fields for the current request's log line (the pool adds C{worker_id})."""

SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
REDACTED = "[redacted]"

# Keys of an eliot message that the formatters place themselves.
_OWN_KEYS = {"level", "message", "timestamp", "context"}
_TASK_KEYS = ("task_uuid", "task_level", "message_type", "action_type", "action_status")


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


_start_messages = True
"""
Whether request actions log their start message (debug).  JSON logs keep
every action whole, start included, whatever their level (so C{eliot-tree}
renders them); the logging service turns it off while its only destination
is a pretty console above debug: the message would only be made to be
dropped.
"""


def request_action(request_id: str, method: str, path: str, task_uuid: str | None = None) -> Action:
    """
    The eliot action of one HTTP request (L{REQUEST_ACTION}), a new task
    (C{task_uuid}, or a new one): C{start_action} without its costs on the
    hot path (a C{uuid4} system call, and a start message that no
    destination takes unless one logs debug).
    """
    action = Action(None, task_uuid or new_id(), TaskLevel(level=[]), REQUEST_ACTION)
    if _start_messages:
        action._start(
            {
                "level": "debug",
                "message": f"{method} {path}",
                "request_id": request_id,
                "method": method,
                "path": path,
            }
        )
    return action


def finish_request(action: Action, fields: dict[str, Any]) -> None:
    """
    C{action.add_success_fields(**fields); action.finish()} for a request's
    action (see L{request_action}): the same message, without eliot's copies
    of it on the way to the destinations.  C{fields} becomes the message.
    """
    if action._finished:
        return
    action._finished = True
    fields["action_status"] = "succeeded"
    fields["timestamp"] = time.time()
    fields.update(action._identification)
    fields["task_level"] = action._nextTaskLevel().as_list()
    logger = action._logger
    if type(logger) is eliot.Logger:
        logger._destinations.send(fields, logger)
    else:  # a test's MemoryLogger, say
        logger.write(fields)


def level_enabled(minimum: str, level: str) -> bool:
    """Whether a message at C{level} passes a C{minimum} filter."""
    return _RANK.get(level, 1) >= _RANK.get(minimum, 0)


def redact_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header pairs safe to log: credentials and cookies replaced."""
    return [
        (name, REDACTED if name.lower() in SENSITIVE_HEADERS else value) for name, value in pairs
    ]


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


def _scrub(value: Any) -> Any:
    """C{value} with credentials replaced, in dicts, header pairs and L{Headers}."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if str(k).lower() in SENSITIVE_HEADERS else _scrub(v))
            for k, v in value.items()
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
    eliot's task fields.  Credentials in dicts, header pairs and L{Headers}
    are replaced.
    """
    level, text, timestamp, context = _own_fields(message)
    record: dict[str, Any] = {"level": level, "message": text, "timestamp": timestamp}
    record["context"] = context
    record.update(message)  # its own fields keep their place, first; their values are ours
    record["level"], record["message"] = level, text
    record["timestamp"], record["context"] = timestamp, context
    for key, value in message.items():
        if type(value) not in _PLAIN and key != "task_level" and key not in _OWN_KEYS:
            record[key] = _scrub(value)  # (eliot's task_level: a list of ints)
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
    record = to_record(message)
    stamp = datetime.fromtimestamp(_timestamp_of(message)).strftime("%H:%M:%S.%f")
    level = record.pop("level")
    text = record.pop("message")
    context = record.pop("context")
    record.pop("timestamp")
    for key in _TASK_KEYS:
        record.pop(key, None)
    extra = " " + json.dumps(record, default=repr) if record else ""
    tag = _ABBREV[level]
    if colour:
        tag = f"{_COLOURS[level]}{tag}\x1b[0m"
        context = f"\x1b[35m[{context}]\x1b[0m"
    else:
        context = f"[{context}]"
    return f"{stamp[:-3]} {tag} {context} {text}{extra}"


STREAM_BUFFER = 256
"""Buffered lines after which a stream destination writes without waiting for L{flush}."""


@define
class StreamDestination:
    """
    An eliot destination writing filtered, formatted lines to a stream.

    Without C{flush_each}, lines wait in a buffer and go out in one write:
    at the end of the current reactor turn when C{clock} is given (so a
    busy runtime pays one system call for all the lines of a turn, whatever
    buffering the stream does: C{PYTHONUNBUFFERED} makes stdout write each
    line), on L{flush}, or once L{STREAM_BUFFER} lines wait.  An error line
    is written at once, with whatever waits before it.
    """

    stream: IO[str]
    min_level: str = "info"
    fmt: str = "json"
    colour: bool = False
    flush_each: bool = True
    clock: IReactorTime | None = None
    _pending: list[str] = field(factory=list)
    _scheduled: IDelayedCall | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        level = _level_of(message)
        if not level_enabled(self.min_level, level) and not (
            self.fmt == "json" and "action_status" in message
        ):
            return
        if self.fmt == "json":
            line = format_json(message)
        else:
            line = format_pretty(message, self.colour)
        if self.flush_each:
            self._write(line + "\n")
            return
        self._pending.append(line)
        if len(self._pending) >= STREAM_BUFFER or level == "error":
            self.flush()
        elif self._scheduled is None and self.clock is not None:
            self._scheduled = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and scheduled.active():
            scheduled.cancel()
        pending, self._pending = self._pending, []
        if pending:
            pending.append("")  # the last line's break
        self._write("\n".join(pending))

    def _write(self, text: str) -> None:
        try:
            if text:
                self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout (daemonized) must not break the runtime


@define
class FileDestination:
    """JSON lines appended to a file, buffered; L{flush} writes them out."""

    path: str
    min_level: str = "info"
    _buffer: list[str] = field(factory=list)
    _file: IO[str] | None = None
    _failed: bool = False

    def __call__(self, message: dict[str, Any]) -> None:
        if level_enabled(self.min_level, _level_of(message)) or "action_status" in message:
            self._buffer.append(format_json(message) + "\n")
            if len(self._buffer) >= 512:
                self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write("".join(self._buffer))
            self._file.flush()
        except OSError as error:
            # Never let the log file take the runtime down; say so once on stderr.
            if not self._failed:
                self._failed = True
                sys.stderr.write(f"buntime: cannot write the log file {self.path}: {error}\n")
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


_TWISTED_LEVELS = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "error",
}


# Twisted namespaces whose info messages are per-connection chatter.
_CHATTY = ("twisted.protocols.amp",)


@implementer(ILogObserver)
class TwistedToEliot:
    """A C{twisted.logger} observer that re-logs every event as an eliot message."""

    def __call__(self, event: dict[str, Any]) -> None:
        level = _TWISTED_LEVELS.get(event.get("log_level", LogLevel.info), "info")
        if level == "info" and event.get("log_namespace", "").startswith(_CHATTY):
            level = "debug"
        if event.get("isError"):
            level = "error"
        text = formatEvent(event)
        fields: dict[str, Any] = {}
        failure = event.get("log_failure")
        if failure is not None:
            fields["traceback"] = failure.getTraceback()
            level = "error"
        log_message(
            message_type="twisted:log",
            level=level,
            message=text,
            context="twisted",
            namespace=event.get("log_namespace", ""),
            **fields,
        )


_forwarding = False


def twistd_observer() -> TwistedToEliot:
    """
    The observer factory buntime hands to twistd's C{--logger}: Twisted's own
    log events go into eliot, and the L{LoggingService} decides where they end.
    """
    global _forwarding
    _forwarding = True
    return TwistedToEliot()


def console() -> IO[str]:
    """
    Where log lines go, looked up when logging starts.  twistd has replaced
    C{sys.stdout} with a writer into Twisted's log by then: in the foreground
    (Twisted's log forwarded into eliot) that would loop, so the real stdout
    is used; daemonized, Twisted's log is C{twistd.log}, and lines go there.
    """
    stream = sys.stdout
    if isinstance(stream, LoggingFile) and _forwarding and sys.__stdout__ is not None:
        return sys.__stdout__
    return stream


@define(eq=False)
class LoggingService(Service):
    """
    Adds the eliot destinations on start and removes them on stop.  Lines
    to a terminal are flushed one by one; to a pipe or file they are
    buffered and written once per reactor turn (so a busy runtime does not
    pay a system call per line), the log file every second, and both on
    stop.
    """

    clock: IReactorTime
    level: str = "info"
    fmt: str = "json"
    file_path: str | None = None
    stream: IO[str] | None = None  # default: sys.stdout as it is when the service starts
    _destinations: list[Callable[[dict[str, Any]], None]] = field(factory=list)
    _file: FileDestination | None = None
    _flusher: LoopingCall | None = None
    _console: StreamDestination | None = None

    def startService(self) -> None:
        Service.startService(self)
        if self.stream is None:
            self.stream = console()
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        colour = self.fmt == "pretty" and tty
        self._console = StreamDestination(
            self.stream, self.level, self.fmt, colour, flush_each=tty, clock=self.clock
        )
        self._destinations = [self._console]
        if self.file_path:
            self._file = FileDestination(self.file_path, self.level)
            self._destinations.append(self._file)
            self._flusher = LoopingCall(self._file.flush)
            self._flusher.clock = self.clock
            self._flusher.start(1.0, now=False)
        eliot.add_destinations(*self._destinations)
        global _start_messages
        _start_messages = (
            level_enabled(self.level, "debug") or self.fmt == "json" or self._file is not None
        )

    def stopService(self) -> None:
        Service.stopService(self)
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self._console is not None:
            self._console.flush()
        for destination in self._destinations:
            eliot.remove_destination(destination)
        global _start_messages
        _start_messages = True
        if self._file is not None:
            self._file.close()
        self._destinations = []

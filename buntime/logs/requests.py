"""
The eliot action of an HTTP request, made and finished without eliot's
per-message costs on the hot path.

This is the one module that reaches into eliot's internals (C{Action}'s
constructor, C{_start}, C{_finished}, C{_nextTaskLevel}, a logger's
C{_destinations}): eliot's version is bounded in C{pyproject.toml}, and
C{tests/test_logging.py} fails loudly when they change.
"""

from __future__ import annotations

import time
from typing import Any

import eliot
from eliot._action import Action, TaskLevel

from buntime.logs import Record, new_id
from buntime.logs.render import to_record
from buntime.logs.types import HTTP_REQUEST

REQUEST_ACTION = HTTP_REQUEST.action_type
"""The action type of a request (its fields: L{buntime.logs.types.HTTP_REQUEST})."""

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
        _write(
            action,
            Record(
                level="debug",
                message=f"{method} {path}",
                timestamp=time.time(),
                context="runtime",
                request_id=request_id,
                method=method,
                path=path,
                action_status="started",
            ),
        )
    return action


def request_record(level: str, text: str) -> Record:
    """The start of a request's end message: its C{level}, C{message} and the time now."""
    return Record(level=level, message=text, timestamp=time.time(), context="runtime")


def finish_request(action: Action, fields: dict[str, Any]) -> None:
    """
    C{action.add_success_fields(**fields); action.finish()} for a request's
    action (see L{request_action}): the same message, without eliot's copies
    of it on the way to the destinations.  C{fields} becomes the message: a
    L{Record} (made by L{request_record}, its fields all plain) as it is,
    any other dict as L{buntime.logs.render.to_record} makes it one.
    """
    if action._finished:
        return
    action._finished = True
    if type(fields) is not Record:
        fields = Record(to_record(fields))
    fields["action_status"] = "succeeded"
    _write(action, fields)


def _write(action: Action, record: Record) -> None:
    """Log C{record} as the next message of C{action}, straight to the destinations."""
    record.update(action._identification)
    record["task_level"] = action._nextTaskLevel().as_list()
    logger = action._logger
    if type(logger) is eliot.Logger:
        logger._destinations.send(record, logger)
    else:  # a test's MemoryLogger, say
        logger.write(record)


def take_start_messages(taken: bool) -> None:
    """Whether request actions log their start message from now on (see L{_start_messages})."""
    global _start_messages
    _start_messages = taken

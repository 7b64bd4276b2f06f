"""
C{@buntime/plugin-logs}: the runtime's recent log messages, in memory.

Every log message (runtime, plugins, workers) goes into a ring of
C{maxEntries} (an eliot destination added in C{on_init} and removed in
C{on_shutdown}); reads show C{minLevel} and up unless they ask for another
level.  C{GET /logs/api/?level=&search=&task=&request_id=&limit=} reads
it (newest last; C{task} is an eliot task, one per request across the
runtime and its worker), C{GET /logs/api/stats} counts it, C{GET /logs/api/sse}
streams new messages, C{POST /logs/api/} logs an entry, C{POST
/logs/api/clear} empties the ring, and C{GET /logs/} is a live viewer over
all of it (its script and stylesheet under C{/logs/ui/}).  Records are
made when read, with the runtime's redaction of credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from zope.interface import implementer

from buntime.builtins.logs.ring import LEVELS, Filter, LogRing
from buntime.http import asset_answer, json_answer, page_answer
from buntime.interfaces import IBuntimePlugin, IPluginContext
from buntime.sse import EventStream, event

UI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
PAGE = os.path.join(UI, "index.html")
DEFAULT_LIMIT = 100
MAX_MESSAGE = 8 * 1024
"""Characters of an entry's message added through the API."""
MAX_BODY = 64 * 1024
MIN_SSE_INTERVAL_MS = 50
MAX_DEPTH = 32
"""How deep an entry's fields may nest (its record is made and written recursively)."""


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def _setting(config: Mapping[str, Any], name: str, default: int) -> int:
    try:
        return int(config.get(name, default))
    except (TypeError, ValueError):
        return default


def _filter(request: Any, default_level: str) -> Filter:
    """
    The query's filter.  Asking for a task or a request id shows all of it,
    every level, unless a level is named too.
    """
    task, request_id = _arg(request, "task") or None, _arg(request, "request_id") or None
    if task or request_id:
        default_level = "debug"
    level = (_arg(request, "level") or "").lower() or default_level
    if level not in LEVELS:
        raise _Refused(400, "INVALID_LEVEL", f"level must be one of {', '.join(LEVELS)}")
    search = _arg(request, "search") or None
    return Filter(level=level, search=search, task=task, request_id=request_id)


def _entry(body: bytes) -> tuple[str, str, str, dict[str, Any]]:
    """The level, message, source and fields of an entry POSTed as JSON."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise _Refused(400, "INVALID_JSON", "The body is not JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "INVALID_ENTRY", 'Send a JSON object: {"message": "...", ...}')
    message, level = data.get("message"), data.get("level", "info")
    if not isinstance(message, str) or not message.strip():
        raise _Refused(400, "INVALID_ENTRY", "message must be a non-empty string")
    if level not in LEVELS:
        raise _Refused(400, "INVALID_LEVEL", f"level must be one of {', '.join(LEVELS)}")
    source, fields = data.get("source", "api"), data.get("fields", {})
    if not isinstance(source, str) or not isinstance(fields, dict):
        raise _Refused(400, "INVALID_ENTRY", "source must be a string and fields an object")
    if _too_deep(fields, MAX_DEPTH):
        raise _Refused(400, "INVALID_ENTRY", f"fields nest at most {MAX_DEPTH} deep")
    return level, message[:MAX_MESSAGE], source[:200], fields


def _too_deep(value: object, limit: int) -> bool:
    """Whether C{value} has objects or arrays nested more than C{limit} deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


@implementer(IBuntimePlugin)
@define
class LogsPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """The ring, its eliot destination while loaded, and the open event streams."""

    config: Mapping[str, Any] = field(factory=dict)
    ring: LogRing = field(factory=LogRing)
    context: Any = None
    streams: set[EventStream] = field(factory=set)

    routes = Klein()

    @property
    def sse_interval(self) -> float:
        """Seconds between two looks for new messages on C{/api/sse} (C{sseInterval}, ms)."""
        return max(_setting(self.config, "sseInterval", 500), MIN_SSE_INTERVAL_MS) / 1000

    def on_init(self, ctx: IPluginContext) -> None:
        self.config = ctx.config
        self.context = ctx
        level = str(ctx.config.get("minLevel", "info")).lower()
        self.ring = LogRing(
            max_entries=max(1, _setting(ctx.config, "maxEntries", 1000)),
            min_level=level if level in LEVELS else "info",
            format=ctx.log_record,
        )
        ctx.add_log_destination(self.ring.destination)
        ctx.when_stopping().addCallback(lambda _: self.close_streams())

    def on_shutdown(self) -> None:
        if self.context is not None:
            self.context.remove_log_destination(self.ring.destination)
        self.close_streams()

    def close_streams(self) -> None:
        """End every open event stream."""
        for stream in list(self.streams):
            stream.close()

    @routes.handle_errors(_Refused)
    def refused(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        return json_answer(
            request, {"error": {"code": error.code, "message": error.message}}, error.status
        )

    @routes.route("/", methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        return page_answer(request, PAGE)

    @routes.route("/ui/<name>", methods=["GET", "HEAD"])
    def asset(self, request: Any, name: str) -> bytes:
        return asset_answer(request, UI, name)

    @routes.route("/api/", methods=["GET", "HEAD"])
    def entries(self, request: Any) -> bytes:
        wanted = _filter(request, self.ring.min_level)
        raw = _arg(request, "limit")
        try:
            limit = DEFAULT_LIMIT if raw is None else int(raw)
        except ValueError:
            limit = 0
        if limit < 1:
            raise _Refused(400, "INVALID_LIMIT", "limit must be a whole number, 1 or more")
        limit = min(limit, max(len(self.ring), 1))
        found = self.ring.query(wanted, limit)
        return json_answer(
            request, {"entries": found, "count": len(found), "total": self.ring.total}
        )

    @routes.route("/api/stats", methods=["GET", "HEAD"])
    def stats(self, request: Any) -> bytes:
        return json_answer(request, {**self.ring.stats(), "sseClients": len(self.streams)})

    @routes.route("/api/", methods=["POST"])
    def add(self, request: Any) -> bytes:
        refused: bytes | None = self.context.refuse_change(request)
        if refused is not None:
            return refused
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise _Refused(415, "UNSUPPORTED_MEDIA_TYPE", "Send the entry as application/json")
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise _Refused(413, "PAYLOAD_TOO_LARGE", f"An entry is at most {MAX_BODY} bytes")
        level, message, source, fields = _entry(body)
        log = getattr(self.context.logger, level)
        log(message, source=source, fields=fields)  # the ring has it now: its newest
        self.ring.sync()
        return json_answer(request, {"ok": True, "id": self.ring.total}, status=201)

    @routes.route("/api/clear", methods=["POST"])
    def clear(self, request: Any) -> bytes:
        refused: bytes | None = self.context.refuse_change(request)
        if refused is not None:
            return refused
        return json_answer(request, {"ok": True, "cleared": self.ring.clear()})

    @routes.route("/api/sse", methods=["GET"])
    def sse(self, request: Any) -> Deferred[None]:
        wanted = _filter(request, self.ring.min_level)
        # where to go on from: a reconnecting EventSource's Last-Event-ID, else the
        # page's ?after= (the total its query saw: nothing is lost in between), else now
        last = request.getHeader("last-event-id") or _arg(request, "after")
        self.ring.sync()
        try:
            after = int(last) if last is not None else self.ring.total
        except ValueError:
            after = self.ring.total
        if after > self.ring.total:
            # an id of another ring (before a restart or a plugin reload, which numbers
            # from 1 again): everything this ring holds is new to this client
            after = 0
        stream = EventStream(request, self.context.reactor)
        seen = [after]

        def tick() -> bytes | None:
            records = list(self.ring.since(seen[0], wanted))
            seen[0] = self.ring.total
            return b"".join(_event(record) for record in records) or None

        self.streams.add(stream)
        stream.on_close.append(lambda: self.streams.discard(stream))
        stream.every(self.sse_interval, tick)
        return stream.open()


def _event(record: dict[str, Any]) -> bytes:
    return event(json.dumps(record, default=str, ensure_ascii=False), event_id=record["id"])


def plugin(config: Mapping[str, Any]) -> LogsPlugin:
    """The factory the loader calls with the manifest's settings."""
    return LogsPlugin(config)

"""
The last log messages, kept as they were logged and formatted only when read.

L{LogRing.destination} is an eliot destination: a bounded deque's
C{append}, so a message costs one C-level call (nothing formatted, copied
or even looked at).  Reading (L{LogRing.query}, L{LogRing.since}) numbers
the new messages, turns them into records with a formatter given by the
plugin (C{ctx.log_record}, which redacts credentials) and filters them.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from attrs import define, field

LEVELS = ("debug", "info", "warn", "error")
RANK = {name: rank for rank, name in enumerate(LEVELS)}

Formatter = Callable[[Mapping[str, Any]], dict[str, Any]]


def level_of(message: Mapping[str, Any]) -> str:
    """A message's level: its own, else error for a failed action, else debug."""
    level = message.get("level")
    if type(level) is str and level in RANK:
        return level
    return "error" if message.get("action_status") == "failed" else "debug"


@define(eq=False)
class Filter:
    """
    What a reader asked for: a least level, a text to find (case-insensitive),
    the eliot task (C{task_uuid}: one per request, across runtime and worker)
    and the request id the records must have.
    """

    level: str | None = None
    search: str | None = None
    task: str | None = None
    request_id: str | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.level is not None and RANK.get(record.get("level", ""), 0) < RANK[self.level]:
            return False
        if self.task is not None and record.get("task_uuid") != self.task:
            return False
        if self.request_id is not None and record.get("request_id") != self.request_id:
            return False
        if self.search:
            text = json.dumps(record, default=str, ensure_ascii=False).lower()
            return self.search.lower() in text
        return True


@define(eq=False)
class LogRing:
    """
    The last C{max_entries} messages, every level.  C{destination} is the
    deque's own C{append}: eliot calls it for each message and no Python
    runs.  Ids are given when the ring is read (L{sync}): each message's
    number among every message kept since start, C{total} the newest's; if
    more than C{max_entries} arrive between two reads, the ones dropped
    unread get no number.
    """

    max_entries: int = 1000
    min_level: str = "info"
    """The least level a query that names none shows."""
    format: Formatter = dict
    total: int = 0
    _entries: deque[Mapping[str, Any]] = field(init=False)
    _newest: Mapping[str, Any] | None = None
    destination: Callable[[Mapping[str, Any]], None] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._entries = deque(maxlen=max(1, self.max_entries))
        self.destination = self._entries.append

    def take(self, message: Mapping[str, Any]) -> None:
        """Keep C{message} (what C{destination} does)."""
        self._entries.append(message)

    def sync(self) -> list[Mapping[str, Any]]:
        """The messages kept, oldest first, with C{total} brought up to date."""
        entries = list(self._entries)  # one step: other threads may log meanwhile
        newest = self._newest
        if entries and entries[-1] is not newest:
            arrived = 0
            for message in reversed(entries):
                if message is newest:
                    break
                arrived += 1
            self.total += arrived
            self._newest = entries[-1]
        return entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> int:
        """Forget every message kept; how many there were."""
        count = len(self.sync())
        self._entries.clear()
        self._newest = None
        return count

    def record(self, entry_id: int, message: Mapping[str, Any]) -> dict[str, Any]:
        """The record of one message, with its C{id}."""
        record = self.format(message)
        record["id"] = entry_id
        return record

    def since(self, last_id: int, wanted: Filter | None = None) -> Iterator[dict[str, Any]]:
        """Records of the messages after id C{last_id} that C{wanted} matches, oldest first."""
        entries = self.sync()
        first = self.total - len(entries) + 1
        start = max(last_id + 1, first)
        for offset, message in enumerate(entries[start - first :]):
            record = self.record(start + offset, message)
            if wanted is None or wanted.matches(record):
                yield record

    def query(self, wanted: Filter, limit: int) -> list[dict[str, Any]]:
        """The last C{limit} records C{wanted} matches, newest last."""
        found: list[dict[str, Any]] = []
        entries = self.sync()
        last = self.total
        for offset, message in enumerate(reversed(entries)):
            if len(found) >= limit:
                break
            record = self.record(last - offset, message)
            if wanted.matches(record):
                found.append(record)
        found.reverse()
        return found

    def stats(self) -> dict[str, Any]:
        """How many messages are kept, by level, and how many were numbered in all."""
        entries = self.sync()
        by_level = Counter(level_of(message) for message in entries)
        return {
            "entries": len(entries),
            "maxEntries": self._entries.maxlen,
            "minLevel": self.min_level,
            "total": self.total,
            "byLevel": {level: by_level.get(level, 0) for level in LEVELS},
        }

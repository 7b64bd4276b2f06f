"""
The logging service: eliot's destinations while the runtime runs, and
C{twisted.logger} events forwarded into eliot (as tahoe-lafs's
C{_EliotLogging} does).

Under twistd, twistd's own log observer is the service's L{TwistdLog} (set
on the application by L{buntime.service.RuntimeService}): it writes nothing
itself, so Twisted's events are written once, by the service's destinations
in buntime's format, in the foreground as in twistd's log file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

import eliot
from attrs import define, field
from eliot import log_message
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import (
    ILogObserver,
    LimitedHistoryLogObserver,
    LoggingFile,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

from buntime.logs import level_enabled
from buntime.logs.destinations import FileDestination, StreamDestination
from buntime.logs.requests import take_start_messages

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
            if not text:  # twisted.web's processingFailed says nothing but its failure
                text = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        log_message(
            message_type="twisted:log",
            level=level,
            message=text,
            context="twisted",
            namespace=event.get("log_namespace", ""),
            **fields,
        )


EARLY_EVENTS = 1000
"""Twisted events kept from before the logging service starts."""


@implementer(ILogObserver)
@define(eq=False)
class TwistdLog:
    """
    twistd's own log observer when buntime runs under twistd.  It writes
    nothing: the L{LoggingService} forwards Twisted's events into eliot.  It
    keeps the last L{EARLY_EVENTS} events from before the service started
    (twistd's start-up lines among them) for the service to replay, and
    none after.
    """

    _early: LimitedHistoryLogObserver | None = field(
        factory=lambda: LimitedHistoryLogObserver(EARLY_EVENTS)
    )

    def __call__(self, event: dict[str, Any]) -> None:
        if self._early is not None:
            self._early(event)

    def replay_to(self, observer: ILogObserver) -> None:
        """Give the events kept so far to C{observer}, and keep no more."""
        early, self._early = self._early, None
        if early is not None:
            early.replayTo(observer)


def console() -> IO[str]:
    """
    Where log lines go, looked up when logging starts.  twistd has replaced
    C{sys.stdout} with a writer into Twisted's log by then; since Twisted's
    log is forwarded into eliot, writing there would loop, so the real stdout
    is used (a daemon writes to twistd's log file: C{console_path}).
    """
    stream = sys.stdout
    if isinstance(stream, LoggingFile) and sys.__stdout__ is not None:
        return sys.__stdout__
    return stream


@define(eq=False)
class LoggingService(Service):
    """
    Adds the eliot destinations and forwards C{twisted.logger}'s events into
    eliot on start (first those L{twistd_log} kept); undoes both on stop.  Lines
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
    console_path: str | None = None
    """Where console lines go instead of a stream: twistd's log file when daemonized."""
    _opened: IO[str] | None = None
    _destinations: list[Callable[[dict[str, Any]], None]] = field(factory=list)
    _file: FileDestination | None = None
    _flusher: LoopingCall | None = None
    _console: StreamDestination | None = None
    twistd_log: TwistdLog = field(factory=TwistdLog)
    """twistd's own observer while buntime runs under twistd (see L{TwistdLog})."""
    _twisted: TwistedToEliot = field(factory=TwistedToEliot)

    def startService(self) -> None:
        Service.startService(self)
        if self.console_path is not None:
            self.stream = self._opened = open(self.console_path, "a", encoding="utf-8")
        elif self.stream is None:
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
        globalLogPublisher.addObserver(self._twisted)
        self.twistd_log.replay_to(self._twisted)
        take_start_messages(
            level_enabled(self.level, "debug") or self.fmt == "json" or self._file is not None
        )

    def flush(self) -> None:
        """Write out the lines buffered so far (the process is about to leave at once)."""
        if self._console is not None:
            self._console.flush()
        if self._file is not None:
            self._file.flush()

    def stopService(self) -> None:
        Service.stopService(self)
        globalLogPublisher.removeObserver(self._twisted)
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self._console is not None:
            self._console.flush()
        for destination in self._destinations:
            eliot.remove_destination(destination)
        take_start_messages(True)
        if self._file is not None:
            self._file.close()
        if self._opened is not None:
            self._opened.close()
            self._opened = None
        self._destinations = []

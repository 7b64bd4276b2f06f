"""
The runtime's end of a worker's AMP channel: the worker's events
(L{buntime.pool.events}) handed to its L{Worker}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from buntime.pool.events import (
    Ready,
    ResponseBody,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    StartupFailed,
    WebSocketClose,
    WebSocketSend,
)
from buntime.pool.wire import FastAMP, responder

if TYPE_CHECKING:
    from buntime.pool.worker import Worker

EARLY_FLUSH = 4
"""Requests the runtime sends a worker before it writes them out, even mid-turn."""


class WorkerChannel(FastAMP):
    """
    The runtime's end of a worker's AMP channel: answers L{buntime.pool.events}.
    Requests go out in fours at the latest: the worker starts on them while
    the runtime reads more.
    """

    flush_every = EARLY_FLUSH

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.clock = worker.clock

    @Ready.responder
    def got_ready(self, pid: int, kind: str) -> dict:
        self.worker.ready_received(pid, kind)
        return {}

    @StartupFailed.responder
    def got_startup_failed(self, error: str, detail: str) -> dict:
        self.worker.startup_failed(error, detail)
        return {}

    @responder(ResponseStart)
    def got_response_start(self, rid: int, head: str, body: bytes) -> dict:
        self.worker.response_started(rid, head, body)
        return {}

    @ResponseBody.responder
    def got_response_body(self, rid: int, data: bytes) -> Deferred:
        return self.worker.response_body(rid, data)

    @WebSocketSend.responder
    def got_websocket_send(self, rid: int, data: bytes, binary: bool, final: bool) -> Deferred:
        return self.worker.socket_message(rid, data, binary, final)

    @responder(WebSocketClose)
    def got_websocket_close(self, rid: int, code: int, reason: str) -> dict:
        self.worker.socket_closed(rid, code, reason)
        return {}

    @responder(ResponseEnd)
    def got_response_end(self, rid: int) -> dict:
        self.worker.response_ended(rid)
        return {}

    @responder(ResponseError)
    def got_response_error(self, rid: int, error: str) -> dict:
        self.worker.response_failed(rid, error)
        return {}

    def connectionMade(self) -> None:
        super().connectionMade()
        self.worker.channel_made()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.worker.channel_lost(reason)

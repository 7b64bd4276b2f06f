"""
AMP commands the runtime sends to a worker.

A request travels as one L{StartRequest} carrying the first chunk of its body
(often all of it), then, when C{more} is true, L{RequestBody} chunks and a
final L{RequestBodyEnd}.  The worker answers through the events in
L{buntime.pool.events}.  Request ids (C{rid}) are chosen by the runtime and
unique per worker connection.
"""

from twisted.protocols import amp

CHUNK_SIZE = 60 * 1024
"""Largest body chunk in one AMP value (AMP's limit is 64 KiB minus a bit)."""


class StartRequest(amp.Command):
    """
    Begin a request.  C{path} has the app's base stripped and keeps its query
    string; C{headers} is JSON: a list of C{[name, value]} pairs; C{task} is
    the serialized eliot task id the worker continues (may be empty).
    """

    arguments = [
        (b"rid", amp.Integer()),
        (b"method", amp.Unicode()),
        (b"path", amp.Unicode()),
        (b"base", amp.Unicode()),
        (b"headers", amp.Unicode()),
        (b"body", amp.String()),
        (b"more", amp.Boolean()),
        (b"remote", amp.Unicode()),
        (b"task", amp.String()),
    ]
    requiresAnswer = False


class RequestBody(amp.Command):
    """One more chunk (at most L{CHUNK_SIZE} bytes) of a request body."""

    arguments = [(b"rid", amp.Integer()), (b"data", amp.String())]
    response: list = []


class RequestBodyEnd(amp.Command):
    """The request body is complete."""

    arguments = [(b"rid", amp.Integer())]
    requiresAnswer = False


class CancelRequest(amp.Command):
    """The client went away or the request timed out: stop working on it."""

    arguments = [(b"rid", amp.Integer())]
    requiresAnswer = False


class Idle(amp.Command):
    """The worker has been idle a while: call the app's C{on_idle} hook."""

    arguments: list = []
    response: list = []


class Terminate(amp.Command):
    """
    Stop: call C{on_terminate} and the ASGI lifespan shutdown, answer, then
    exit once the connection closes.
    """

    arguments: list = []
    response: list = []

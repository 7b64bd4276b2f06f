"""
What the fork template runs before it forks, so that its workers copy fewer
of the pages they share with it.

Python 3.11 writes to what it runs: a function's code is specialised in
place over its first runs, type caches fill, and every object used has its
reference count written.  A worker forked from the template copies each
shared page it writes to first (4 KB a page): that copying is most of a
worker's private memory and much of its cold start (see
C{docs/performance.md}).  So the template does once, for all its workers,
what a worker inherits as it is (L{buntime.pool.child.main.inherit}), and
runs what every worker then runs at its start, several times, and throws
the result away (L{warm_up}): a worker then finds that code specialised
and those caches filled.  Objects made anew in a worker are its own
whatever the template did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import asyncioreactor
from twisted.protocols import amp

from buntime.pool import commands
from buntime.pool.child.loader import LoadedApp, load
from buntime.pool.child.main import error_observer, listen
from buntime.pool.child.protocol import ChildProtocol

ROUNDS = 10
"""How often each step runs: Python 3.11 specialises a function's code from its eighth run."""

_APPS = {
    "routes": 'async def item(request, params):\n    return {"id": params["id"]}\n\n'
    'routes = {"/": lambda request: "ok", "/items/:id": item}\n',
    "asgi": "async def app(scope, receive, send):\n"
    '    if scope["type"] == "http":\n'
    '        await send({"type": "http.response.start", "status": 200, "headers": []})\n'
    '        await send({"type": "http.response.body", "body": b"ok"})\n',
}
"""The apps whose start is rehearsed: one of each kind that needs no thread."""
_PATHS = ("/", "/items/7?q=1")
"""The requests each rehearsed app serves."""
_TURNS = 6
"""Turns of the loop that serve the requests (reads, the app's coroutines, writes)."""


def warm_up(rounds: int = ROUNDS) -> None:
    """
    Run C{rounds} times what a worker runs while it starts, and throw it
    away: a log observer, an event loop and an asyncio reactor on it
    (started and stopped, not installed, without signal handlers), and a
    routes and an ASGI app loaded, started, made to serve a request or two
    and terminated over a channel like a worker's (L{_serve}).
    Leaves no fd open, C{sys.path} as it was and the rehearsed apps' modules
    out of C{sys.modules}.
    """
    saved_path = list(sys.path)
    with tempfile.TemporaryDirectory(prefix="buntime-warm-") as root:
        try:
            folders = []
            for kind, source in _APPS.items():
                folder = os.path.join(root, kind)
                os.mkdir(folder)
                with open(os.path.join(folder, "app.py"), "w", encoding="utf-8") as file:
                    file.write(source)
                folders.append(folder)
            for _ in range(rounds):
                _one_round(folders)
        finally:
            sys.path[:] = saved_path
            for name, module in list(sys.modules.items()):
                if (getattr(module, "__file__", None) or "").startswith(root + os.sep):
                    del sys.modules[name]  # the rehearsed apps (what they imported stays)


def _one_round(folders: list[str]) -> None:
    error_observer()
    loop = asyncio.new_event_loop()
    try:
        reactor = asyncioreactor.AsyncioSelectorReactor(loop)
        try:
            reactor.callWhenRunning(reactor.stop)
            reactor.run(installSignalHandlers=False)
            for folder in folders:
                _serve(load(folder, "", reactor=reactor, loop=loop), reactor, loop)
        finally:
            reactor.waker.connectionLost(None)
    finally:
        loop.close()


def _serve(app: LoadedApp, reactor: Any, loop: asyncio.AbstractEventLoop) -> None:
    """
    Start C{app}, have it serve L{_PATHS} and terminate it, over a channel
    like a worker's (a socket pair, the worker's end on two fds taken as a
    worker takes them: L{buntime.pool.child.main.listen}) whose runtime end
    sends the boxes and drops the answers.
    """
    ours, theirs = socket.socketpair()
    with theirs:
        ends = (os.dup(theirs.fileno()), os.dup(theirs.fileno()))
    try:
        protocol = ChildProtocol(reactor, loop)
        listen(protocol, reactor, ends)
        with ours:
            ours.setblocking(False)
            app.adapter.startup()
            _settle(loop)
            protocol.serve(app).addErrback(lambda _: None)  # no runtime will answer Ready
            boxes = []
            for rid, path in enumerate(_PATHS, 1):
                headers = [("host", "localhost"), ("x-request-id", f"warm-{rid}")]
                head = commands.request_head("GET", path, "/warm", headers, "127.0.0.1:1", False)
                boxes.append(_box(commands.StartRequest, rid=rid, head=head, body=b""))
            boxes.append(_box(commands.Terminate, ask=1))
            ours.sendall(b"".join(box.serialize() for box in boxes))
            _settle(loop)
            _drain(ours)
        _settle(loop)  # the channel closed: the worker's end sees it close
    finally:
        for fd in ends:  # a worker's channel fds close with it; these are closed here
            os.close(fd)


def _box(command: type[amp.Command], ask: int | None = None, **arguments: Any) -> amp.AmpBox:
    """The box the runtime sends for C{command} (encoded by its own argument schema)."""
    box = command.makeArguments(arguments, None)
    box[b"_command"] = command.commandName
    if ask is not None:
        box[b"_ask"] = b"%d" % ask
    return box


def _drain(channel: socket.socket) -> None:
    """Read and drop what the rehearsed worker wrote."""
    with contextlib.suppress(BlockingIOError):
        while channel.recv(65536):
            pass


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run C{loop} a few turns: the reads, writes and coroutines of an app at work."""
    for _ in range(_TURNS):
        loop.run_until_complete(asyncio.sleep(0))

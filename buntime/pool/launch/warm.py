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
import os
import sys
import tempfile

from twisted.internet import asyncioreactor

from buntime.pool.child.loader import load
from buntime.pool.child.main import error_observer

ROUNDS = 10
"""How often each step runs: Python 3.11 specialises a function's code from its eighth run."""

_APPS = {
    "routes": 'async def item(request, params):\n    return {"id": params["id"]}\n\n'
    'routes = {"/": lambda request: "ok", "/items/:id": item}\n',
    "asgi": "async def app(scope, receive, send):\n    pass\n",
}
"""The apps whose loading is rehearsed: one of each kind loaded without threads."""


def warm_up(rounds: int = ROUNDS) -> None:
    """
    Run C{rounds} times what a worker runs while it starts, and throw it
    away: a log observer, an event loop and an asyncio reactor on it
    (started and stopped, not installed, without signal handlers), and the
    loading of a routes and an ASGI app (imported, their adapters made,
    not started).  Leaves no fd open, and C{sys.path} and C{sys.modules}
    as they were.
    """
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    try:
        with tempfile.TemporaryDirectory(prefix="buntime-warm-") as root:
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
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]


def _one_round(folders: list[str]) -> None:
    error_observer()
    loop = asyncio.new_event_loop()
    try:
        reactor = asyncioreactor.AsyncioSelectorReactor(loop)
        try:
            reactor.callWhenRunning(reactor.stop)
            reactor.run(installSignalHandlers=False)
            for folder in folders:
                load(folder, "", reactor=reactor, loop=loop)
        finally:
            reactor.waker.connectionLost(None)
    finally:
        loop.close()

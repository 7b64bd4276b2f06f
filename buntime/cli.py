"""
The C{buntime} command: C{twistd -n buntime} with the same options, without
a pidfile, found without Twisted's plugin discovery; C{buntime --version}
prints buntime's version (wherever C{--version} is among the options).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.application.service import ServiceMaker

from buntime import __version__

DESCRIPTION = "A multi-app HTTP runtime: one port, many apps, each in its own worker process."


def twistd_argv(args: Sequence[str]) -> list[str]:
    """What C{buntime ARGS} runs: C{twistd --nodaemon --pidfile= buntime ARGS}."""
    return ["--nodaemon", "--pidfile=", "buntime", *args]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:  # anywhere: twistd's would print its own
        print(f"buntime {__version__}")
        return
    from twisted.application import app
    from twisted.scripts.twistd import ServerOptions, runApp

    maker = ServiceMaker("buntime", "buntime.tap", DESCRIPTION, "buntime")

    class Options(ServerOptions):
        """twistd's options with C{buntime} as the only subcommand."""

        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
            self.loadedPlugins = {"buntime": maker}
            yield ("buntime", None, maker.options, DESCRIPTION)

    sys.argv = ["buntime", *twistd_argv(args)]
    app.run(runApp, Options)

"""
What C{twistd buntime} calls: the command-line L{Options} and L{makeService}.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.python import usage

from buntime import __version__
from buntime.config import (
    ConfigError,
    check_directories,
    check_listen,
    load_config,
    read_dotenv,
)

DEFAULT_PIDFILE = "twistd.pid"
"""twistd's default pidfile, written in the working directory."""


def refuse(error: ConfigError) -> NoReturn:
    """Leave with status 2 and the user error as one line on stderr."""
    sys.stderr.write(f"buntime: {error}\n")
    sys.stderr.flush()
    raise SystemExit(2) from None


class Options(usage.Options):
    """C{twistd buntime} options; each one also has an environment variable."""

    synopsis = "[options]"
    console_path: str | None = None
    """Where log lines go when twistd writes a log file (daemonized: always)."""
    longdesc = (
        "Run the buntime multi-app runtime. Every option has an environment "
        "variable (see docs/configuration.md); the command line wins over the "
        "environment, which wins over a .env file, which wins over defaults."
    )
    optParameters = [
        ["port", "p", None, "TCP port to listen on [env: PORT, default: 8000]"],
        ["env", "e", None, "development, staging, production or test [env: RUNTIME_ENV]"],
        ["worker-dirs", "w", None, "app directories, ':'-separated [env: RUNTIME_WORKER_DIRS]"],
        ["plugin-dirs", None, None, "plugin directories, ':'-separated [env: RUNTIME_PLUGIN_DIRS]"],
        ["pool-size", None, None, "most workers alive at once [env: RUNTIME_POOL_SIZE]"],
        ["log-level", None, None, "debug, info, warn or error [env: RUNTIME_LOG_LEVEL]"],
        ["log-format", None, None, "pretty or json [env: RUNTIME_LOG_FORMAT]"],
        ["log-file", None, None, "also write JSON log lines here [env: RUNTIME_LOG_FILE]"],
        ["worker-mode", None, None, "fork (default) or spawn [env: RUNTIME_WORKER_MODE]"],
    ]

    optFlags = [
        [
            "reload",
            None,
            "retire an app's workers when its files change [env: RUNTIME_RELOAD,"
            " default: on in development]",
        ],
    ]

    def parseOptions(self, options: Any = None) -> None:
        """An unknown option or a missing value is a bad value too: one line, status 2."""
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            refuse(ConfigError(f"{error} (--help lists the options)"))

    def opt_version(self) -> NoReturn:
        """Display buntime's version and exit."""
        # Without this, twistd's Options answers "Twisted version: ..." here.
        sys.stdout.write(f"buntime {__version__}\n")
        raise SystemExit(0)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint string, e.g. tcp:8000:interface=127.0.0.1."""
        self["listen"] = description

    def postOptions(self) -> None:
        given = {key.replace("-", "_"): value for key, value in self.items()}
        given["reload"] = "1" if self["reload"] else None
        try:
            self.config = load_config(given, os.environ, read_dotenv(".env"))
        except ConfigError as error:
            refuse(error)
        parent: Any = getattr(self, "parent", None)
        if parent is None:
            return
        if parent.get("nodaemon") and parent.get("pidfile") == DEFAULT_PIDFILE:
            # In the foreground a pidfile only stops a second runtime started
            # from the same directory; --pidfile=PATH still writes one.
            parent["pidfile"] = ""
        if parent.get("logger") is not None:
            return  # twistd's log is the user's to set
        logfile = parent.get("logfile")
        if not parent.get("nodaemon") or logfile not in (None, "-"):
            # twistd's log file holds our lines alone, in our format (Twisted's
            # events included: see buntime.logs.service.TwistdLog).
            self.console_path = os.path.abspath(logfile or "twistd.log")


def report_failed_start(parent: Any, reactor: Any) -> Callable[[int], None]:
    """
    Daemonized, the C{twistd} command waits until its daemon writes to a
    status pipe once started, and keeps waiting if the daemon exits first
    (it holds the pipe's other end too): a start that fails (a port in use)
    says so there, so that the command exits 1, and removes the pidfile, as
    twistd does when a service raises.
    """

    def leaving(code: int) -> None:
        pipe = parent.get("statusPipe")
        if not code or pipe is None or reactor.running:
            return  # once the reactor runs, twistd has written and closed it
        os.write(pipe, b"1 buntime could not start: see the log")
        if parent.get("pidfile"):
            with contextlib.suppress(OSError):
                os.remove(parent["pidfile"])

    return leaving


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from buntime._libc import hide_environment_values
    from buntime.sensitive import is_sensitive
    from buntime.service import before_exit, settle_memory
    from buntime.wiring import make_runtime

    # Workers run as our user: they could read our secrets in /proc/<pid>/environ.
    hide_environment_values(is_sensitive)
    try:
        check_directories(options.config)  # here, not in postOptions: only to run
        check_listen(options.config, reactor)
        runtime = make_runtime(options.config, reactor, options.console_path)
    except ConfigError as error:
        refuse(error)
    runtime.on_serving.append(settle_memory)
    parent = getattr(options, "parent", None)
    if parent is not None and not parent.get("nodaemon"):
        before_exit.append(report_failed_start(parent, reactor))
    return runtime

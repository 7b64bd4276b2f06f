"""
The fork template: C{python -m buntime.pool.launch.template}, started once by
L{buntime.pool.launch.ForkLauncher}.

It imports what every worker needs (Twisted's AMP, stdio, web and asyncio
reactor modules, the worker code) but installs no reactor and starts no
thread, then waits on its control socket (fd 3) for JSON lines
C{{"worker_id", "app_dir", "env"}}, each sent with four file descriptors
(SCM_RIGHTS): the worker's AMP channel, stdout, stderr and output channel.
For each it forks; the child puts the fds on 3+4, 1, 2 and 5, takes the given environment,
directory and C{sys.path}, and runs the worker's C{main()}.  The template
answers C{{"worker_id", "pid"}} after each fork and C{{"pid", "exited"}}
when a child ends, and exits when the control socket closes.

Third-party libraries an app might pin itself (Flask, Starlette...) are not
pre-imported: the app must get the version on its own C{PYTHONPATH}.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback

from buntime.pool.output import OUTPUT_FD

CONTROL_FD = 3
PRELOAD = (
    "asyncio",
    "json",
    "inspect",
    "faulthandler",
    "twisted.internet.asyncioreactor",
    "twisted.internet.stdio",
    "twisted.internet.threads",
    "twisted.logger",
    "twisted.protocols.amp",
    "twisted.python.threadpool",
    "twisted.web.server",
    "twisted.web.resource",
    "buntime.http",
    "buntime.pool.child.main",
)
"""Modules imported before any fork, so workers start with them loaded."""


def preload() -> None:
    """
    Import L{PRELOAD}; the reactor must still be uninstalled afterwards.

    The collector is off while importing and nothing is collected before
    C{gc.freeze()} (as the C{gc} docs advise for fork servers): a collection
    here would leave holes in the shared pages, which each worker's first
    allocations would then fill, copying those pages (about 0.15 MB a worker).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in PRELOAD:
            importlib.import_module(name)
        if "twisted.internet.reactor" in sys.modules:
            raise RuntimeError("the fork template must not import twisted.internet.reactor")
        _declare_interfaces()
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def _declare_interfaces() -> None:
    """
    Work out now which interfaces the preloaded classes provide: zope does
    it on first use, and in each worker that first use would copy the pages
    the answer is written to.
    """
    from zope.interface import implementedBy

    for name in list(sys.modules):
        if not name.startswith(("twisted.", "buntime.", "zope.")):
            continue
        for value in list(vars(sys.modules[name]).values()):
            if isinstance(value, type):
                try:
                    implementedBy(value)
                except TypeError:
                    pass


def _send(control: socket.socket, message: dict) -> None:
    control.sendall(json.dumps(message).encode("utf-8") + b"\n")


def _python_path(env: dict[str, str], app_dir: str, base: list[str], old: list[str]) -> list[str]:
    """The child's C{sys.path}: app dir, its C{PYTHONPATH}, the interpreter's, the template's."""
    new = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    path: list[str] = []
    for entry in [app_dir, *new, *base, *old]:
        if entry not in path:
            path.append(entry)
    return path


class Template:
    """The template's loop: fork on request, report forks and exits."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.buffer = b""
        self.fds: list[int] = []
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        old = os.environ.get("PYTHONPATH", "")
        self.old_path = [entry for entry in old.split(os.pathsep) if entry]
        # sys.path[0] is the directory the template was started in: not the app's.
        self.base_path = [entry for entry in sys.path[1:] if entry not in self.old_path]

    def run(self) -> None:
        self.own_pid = os.getpid()
        # The runtime stops the template by closing its control channel;
        # Ctrl-C or a SIGTERM sent to the whole process group (a terminal,
        # `timeout`, systemd's control-group kill) must not take it down
        # while the runtime is still draining.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        _send(self.control, {"ready": os.getpid()})
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        self._drain_wakeups()
                    elif not self._read_control():
                        return
                self._reap()
        finally:
            selector.close()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _read_control(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, 65536, 48)
        except InterruptedError:
            return True
        self.fds.extend(fds)
        if not data:
            return False
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._launch(json.loads(line))
        return True

    def _launch(self, message: dict) -> None:
        fds, self.fds = self.fds[:4], self.fds[4:]
        worker_id = message.get("worker_id", "")
        if len(fds) != 4:
            _send(self.control, {"worker_id": worker_id, "error": "file descriptors missing"})
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as error:
            _send(self.control, {"worker_id": worker_id, "error": str(error)})
        else:
            if pid == 0:
                self._become_worker(message, fds)
            self.children.add(pid)
            _send(self.control, {"worker_id": worker_id, "pid": pid})
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            _send(self.control, {"pid": pid, "exited": os.waitstatus_to_exitcode(status)})

    def _become_worker(self, message: dict, fds: list[int]) -> None:
        """In the forked child: take the worker's fds, environment and path; run it."""
        code = 70
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            channel, stdout, stderr, output = fds
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            os.dup2(channel, 3)
            os.dup2(channel, 4)
            os.dup2(output, OUTPUT_FD)
            os.closerange(OUTPUT_FD + 1, os.sysconf("SC_OPEN_MAX"))
            env = {str(k): str(v) for k, v in message["env"].items()}
            app_dir = message["app_dir"]
            os.chdir(app_dir)
            os.environ.clear()
            os.environ.update(env)
            sys.path[:] = _python_path(env, app_dir, self.base_path, self.old_path)
            importlib.invalidate_caches()
            from buntime.pool.child import main as child

            sys.argv = [child.__file__ or "buntime.pool.child"]
            child.main(parent=self.own_pid)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def main() -> None:
    """Run the template on the control socket at fd 3."""
    from buntime.pool.child.lifeline import die_with_parent

    die_with_parent(os.getppid())
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    preload()
    Template(control).run()


if __name__ == "__main__":
    main()

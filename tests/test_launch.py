"""
Real worker processes through both launchers (L{buntime.pool.launch}):
C{python -m buntime.pool.child} spawned, and forked from the template.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from fakes import logged
from test_child_protocol import RuntimeSide
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

import buntime
from buntime.pool import commands
from buntime.pool.launch.fork import ForkLauncher
from buntime.pool.launch.launcher import (
    MAX_LINE,
    UNKNOWN_EXIT,
    ILauncher,
    LaunchedProcess,
    LauncherUnavailable,
    LaunchSpec,
    LineSplitter,
)
from buntime.pool.launch.spawn import SpawnLauncher
from buntime.pool.launch.template import SPARE_RETRY
from buntime.pool.output import Write

APPS = Path(__file__).resolve().parent.parent / "apps"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(buntime.__file__)))
WAIT = 15.0


def worker_env(app_dir: Path, entrypoint: str = "") -> dict[str, str]:
    """The environment the runtime would give a worker of C{app_dir}."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(app_dir), ROOT]),
        "APP_DIR": str(app_dir),
        "ENTRYPOINT": entrypoint,
        "WORKER_ID": str(uuid.uuid4()),
        "WORKER_CONFIG": json.dumps({"ttl": 300}),
    }


def bounded(d: Deferred, seconds: float = WAIT) -> Deferred:
    return d.addTimeout(seconds, reactor)


async def until(condition, seconds: float = WAIT) -> None:
    """Wait (polling the real reactor) until C{condition()} holds."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never became true")


class Harness:
    """A launcher and the workers started through it; everything is killed at the end."""

    def __init__(self, launcher) -> None:
        self.launcher = launcher
        self.processes: list[LaunchedProcess] = []
        self.output: list[Write] = []

    async def launch(
        self, app_dir: Path, entrypoint: str = ""
    ) -> tuple[RuntimeSide, LaunchedProcess]:
        runtime = RuntimeSide()
        spec = LaunchSpec(str(uuid.uuid4()), str(app_dir), worker_env(app_dir, entrypoint))
        launched = self.launcher.launch(spec, runtime, self.output.append)
        process = await bounded(launched)
        self.processes.append(process)
        return runtime, process

    async def ready(self, app_dir: Path) -> tuple[RuntimeSide, LaunchedProcess]:
        runtime, process = await self.launch(app_dir)
        pid, _ = await bounded(runtime.ready)
        assert pid == process.pid
        return runtime, process

    def lines(self, stream: str, raw: bool | None = None) -> list[str]:
        """The lines written to C{stream}: framed, raw (fds 1 and 2) or (C{None}) both."""
        writes = [w for w in self.output if w.stream == stream and raw in (None, w.raw)]
        return "".join(w.text for w in writes).splitlines()

    async def close(self) -> None:
        for process in self.processes:
            process.signal(signal.SIGKILL)
            await bounded(process.exited)
        await bounded(self.launcher.stop())


@pytest.fixture(params=["spawn", "fork"])
def mode(request) -> str:
    return request.param


@pytest_twisted.async_yield_fixture
async def harness(mode: str):
    launcher = SpawnLauncher(reactor) if mode == "spawn" else ForkLauncher(reactor)
    verifyObject(ILauncher, launcher)
    await bounded(launcher.start())
    harness = Harness(launcher)
    try:
        yield harness
    finally:
        await harness.close()


@pytest_twisted.ensureDeferred
async def test_a_request_sent_with_the_launch_is_answered_once_the_app_is_loaded(
    harness: Harness,
) -> None:
    """
    The pool sends a cold start's first request ahead of the worker's
    Ready, right after the launch (on a spare's socket, perhaps in the same
    read as the launch itself): the worker holds it until its app is loaded.
    """
    runtime = RuntimeSide()
    app = APPS / "routes-demo"
    spec = LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app))
    launched = harness.launcher.launch(spec, runtime, harness.output.append)
    answer = None
    if launched.called:  # (a spare's, or spawned: its channel is up at once)
        answer = runtime.request(path="/health").done
    process = await bounded(launched)
    harness.processes.append(process)
    if answer is None:  # forked by the template: its channel is up now
        answer = runtime.request(path="/health").done
    assert (await bounded(answer)).status == 200
    assert (await bounded(runtime.ready))[0] == process.pid


@pytest_twisted.ensureDeferred
async def test_request_response_and_output(harness: Harness) -> None:
    runtime, _ = await harness.ready(APPS / "routes-demo")
    assert (await runtime.ready)[1] == "routes"
    answer = await bounded(runtime.request(path="/items/7?x=1").done)
    assert (answer.status, json.loads(answer.body)) == (200, {"id": "7", "query": "x=1"})
    answer = await bounded(runtime.request(path="/").done)
    assert bytes(answer.body) == b"Hello from buntime!"
    await until(lambda: "hello from routes-demo (GET /)" in harness.lines("stdout", raw=False))


@pytest_twisted.ensureDeferred
async def test_big_bodies_round_trip(harness: Harness) -> None:
    runtime, _ = await harness.ready(APPS / "routes-demo")
    body = os.urandom(5 * 1024 * 1024)
    answer = await bounded(runtime.request("POST", "/echo", body).done)
    assert bytes(answer.body) == body
    size = 5 * 1024 * 1024
    answer = await bounded(runtime.request(path=f"/bytes/{size}").done)
    pattern = bytes(range(256))
    assert bytes(answer.body) == pattern * (size // 256)


@pytest_twisted.ensureDeferred
async def test_sse_first_event_arrives_before_the_end(harness: Harness) -> None:
    runtime, _ = await harness.ready(APPS / "asgi-demo")
    answer = runtime.request(path="/events?count=3&interval=0.5")
    await bounded(answer.started)
    await until(lambda: b"data: 1" in answer.body)
    assert not answer.done.called
    assert b"data: 2" not in answer.body
    await bounded(answer.done)
    assert bytes(answer.body) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"


@pytest_twisted.ensureDeferred
async def test_sigusr1_dumps_the_stack(harness: Harness) -> None:
    _, process = await harness.ready(APPS / "routes-demo")
    process.signal(signal.SIGUSR1)
    # faulthandler writes to fd 2 itself
    await until(lambda: any("most recent call" in line for line in harness.lines("stderr", True)))
    assert not process.exited.called


@pytest_twisted.ensureDeferred
async def test_twisted_s_own_errors_in_a_worker_reach_its_stderr(
    harness: Harness, tmp_path: Path
) -> None:
    """
    An error Twisted logs in a worker (here an unhandled error in a
    Deferred) is written to the worker's stderr, framed as the app's own
    output: set up once in the fork template and inherited by its workers.
    """
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import gc
            from twisted.internet.defer import fail

            def lost(request):
                fail(ValueError("nobody handled this"))  # garbage with an unhandled error
                gc.collect()
                return "ok"

            routes = {"/": lost}
            """
        )
    )
    runtime, _ = await harness.ready(tmp_path)
    assert (await bounded(runtime.request(path="/").done)).status == 200
    await until(lambda: any("nobody handled this" in line for line in harness.lines("stderr")))
    assert any("Unhandled error in Deferred" in line for line in harness.lines("stderr", False))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest_twisted.ensureDeferred
async def test_group_signals_are_ignored(harness: Harness, signum: int) -> None:
    """Ctrl-C or a process-group SIGTERM leaves the worker serving; the runtime stops it."""
    runtime, process = await harness.ready(APPS / "routes-demo")
    process.signal(signum)
    answer = await bounded(runtime.request(path="/health").done)
    assert json.loads(answer.body) == {"ok": True}
    assert not process.exited.called
    runtime.transport.loseConnection()
    assert await bounded(process.exited) == 0


@pytest_twisted.ensureDeferred
async def test_kill(harness: Harness) -> None:
    runtime, process = await harness.ready(APPS / "routes-demo")
    process.signal(signal.SIGKILL)
    assert await bounded(process.exited) == -signal.SIGKILL
    await bounded(runtime.lost)
    process.signal(signal.SIGKILL)  # exited already: nothing happens


@pytest_twisted.ensureDeferred
async def test_closing_the_channel_ends_the_worker(harness: Harness) -> None:
    runtime, process = await harness.ready(APPS / "routes-demo")
    runtime.transport.loseConnection()
    assert await bounded(process.exited) == 0


@pytest_twisted.ensureDeferred
async def test_terminate(harness: Harness) -> None:
    runtime, process = await harness.ready(APPS / "routes-demo")
    await bounded(runtime.callRemote(commands.Idle))
    await bounded(runtime.callRemote(commands.Terminate))
    runtime.transport.loseConnection()
    assert await bounded(process.exited) == 0
    await until(lambda: "routes-demo is stopping" in harness.lines("stdout"))
    assert "routes-demo is idle" in harness.lines("stdout")


@pytest_twisted.ensureDeferred
async def test_startup_failure(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('loading')\nvalue = 1\n")
    runtime, process = await harness.launch(tmp_path)
    with pytest.raises(RuntimeError, match="Module must expose a WSGI/ASGI app"):
        await bounded(runtime.ready)
    assert await bounded(process.exited) == 3
    await until(lambda: "loading" in harness.lines("stdout"))


@pytest_twisted.ensureDeferred
async def test_worker_environment(harness: Harness, tmp_path: Path) -> None:
    """The worker sees exactly the given environment, runs in its app dir, imports from it."""
    (tmp_path / "helper.py").write_text("NAME = 'helper'\n")
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            import helper

            def state(request):
                return {"env": dict(os.environ), "cwd": os.getcwd(), "path": sys.path,
                        "helper": helper.NAME}

            routes = {"/": state}
            """
        )
    )
    runtime, _ = await harness.ready(tmp_path)
    answer = await bounded(runtime.request(path="/").done)
    state = json.loads(answer.body)
    expected = worker_env(tmp_path)
    assert set(state["env"]) == set(expected)
    assert state["env"]["APP_DIR"] == str(tmp_path)
    assert state["cwd"] == str(tmp_path)
    assert state["path"][0] == str(tmp_path)
    assert state["helper"] == "helper"


@pytest_twisted.ensureDeferred
async def test_fork_launcher_must_be_started() -> None:
    launcher = ForkLauncher(reactor)
    spec = LaunchSpec("w", str(APPS / "routes-demo"), worker_env(APPS / "routes-demo"))
    with pytest.raises(LauncherUnavailable, match="not running"):
        await launcher.launch(spec, RuntimeSide(), lambda stream, line: None)
    await launcher.stop()


@pytest_twisted.ensureDeferred
async def test_fork_launch_waits_for_a_starting_template() -> None:
    """A launch while the template is still starting waits for it instead of failing."""
    launcher = ForkLauncher(reactor)
    starting = launcher.start()
    harness = Harness(launcher)
    try:
        assert not starting.called
        runtime, _ = await harness.ready(APPS / "routes-demo")
        assert (await bounded(runtime.request(path="/health").done)).status == 200
    finally:
        await harness.close()


@pytest_twisted.ensureDeferred
async def test_fork_launch_gives_up_after_launch_timeout() -> None:
    clock = Clock()
    launcher = ForkLauncher(clock, launch_timeout=5.0)
    launcher._started = True  # as if start() ran and the template never became ready
    spec = LaunchSpec("w", str(APPS / "routes-demo"), worker_env(APPS / "routes-demo"))
    launched = launcher.launch(spec, RuntimeSide(), lambda stream, line: None)
    assert not launched.called
    clock.advance(5.0)
    with pytest.raises(LauncherUnavailable, match="not ready within 5 s"):
        await launched


@pytest_twisted.ensureDeferred
async def test_fork_template_restarts() -> None:
    launcher = ForkLauncher(reactor, restart_delay=0.2)
    await bounded(launcher.start())
    harness = Harness(launcher)
    try:
        runtime, process = await harness.ready(APPS / "routes-demo")
        launcher._transport.signalProcess("KILL")
        await until(lambda: not launcher._ready_now)
        # A worker never outlives its parent: it goes with the template (the
        # pool answers its requests 502 and starts a new one)...
        assert await bounded(process.exited) == UNKNOWN_EXIT  # its template is gone
        await bounded(runtime.lost)
        # ... and a launch while the template restarts waits for it.
        assert not launcher._ready_now
        second, _ = await harness.ready(APPS / "routes-demo")
        assert (await bounded(second.request(path="/health").done)).status == 200
    finally:
        await harness.close()


def _probe(code: str) -> subprocess.CompletedProcess[str]:
    """Run C{code} in a fresh Python (no reactor installed) with buntime on its path."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )


def test_the_template_freezes_what_it_preloads_for_its_forks():
    """Workers must not copy the template's pages by collecting its objects."""
    probe = (
        "import gc\n"
        "from buntime.pool.launch.template import preload\n"
        "from twisted.internet.asyncioreactor import AsyncioSelectorReactor\n"
        "collections = [generation['collections'] for generation in gc.get_stats()]\n"
        "preload()\n"
        "print(gc.get_freeze_count() > 1000, '__implemented__' in vars(AsyncioSelectorReactor))\n"
        "# no collection (which would leave holes for the workers to fill), gc back on\n"
        "print(collections == [generation['collections'] for generation in gc.get_stats()])\n"
        "print(gc.isenabled())\n"
    )
    result = _probe(probe)
    assert result.stdout.split() == ["True", "True", "True", "True"]


def test_the_template_sets_up_and_warms_what_its_workers_share():
    """
    What every worker sets up the same way (the stack dump on SIGUSR1,
    Twisted's error log) is done once in the template, and what each does
    itself is run there first (warmed, so that workers copy fewer pages):
    no reactor installed, no fd left open.
    """
    probe = (
        "import faulthandler, os, signal, sys\n"
        "fds = set(os.listdir('/proc/self/fd'))\n"
        "from buntime.pool.launch.template import preload\n"
        "path = list(sys.path)\n"
        "preload()\n"
        "from buntime.pool.child import main as child\n"
        "print(child._inherited, faulthandler.unregister(signal.SIGUSR1))\n"
        "print('twisted.internet.reactor' not in sys.modules)\n"
        "print(set(os.listdir('/proc/self/fd')) == fds)\n"
        "# the rehearsed apps are gone: the path and modules are as they were\n"
        "print(sys.path == path, not [m for m in sys.modules if m.startswith('buntime_app_')])\n"
    )
    result = _probe(probe)
    assert result.stdout.split() == ["True"] * 6


def test_the_template_s_rehearsal_serves_as_a_worker_does():
    """
    The rehearsal runs a worker's real paths (warming error paths instead
    would be of no use): over its channel, each app says Ready, answers
    each request 200 and answers Terminate, and nothing is written to
    stderr.
    """
    probe = (
        "import json\n"
        "from twisted.protocols.amp import parseString\n"
        "from buntime.pool.launch import warm\n"
        "written = []\n"
        "def drain(channel):\n"
        "    try:\n"
        "        while data := channel.recv(65536):\n"
        "            written.append(data)\n"
        "    except BlockingIOError:\n"
        "        pass\n"
        "warm._drain = drain\n"
        "warm.warm_up(1)\n"
        "for box in parseString(b''.join(written)):\n"
        "    head = json.loads(box.get(b'head', b'[null]'))\n"
        "    print(box.get(b'_command', b'answer').decode(), head[0])\n"
    )
    result = _probe(probe)
    assert result.stderr == ""
    served = ["Ready None", "ResponseStart 200", "ResponseStart 200", "answer None"]
    assert result.stdout.splitlines() == served * 2


def test_a_rehearsal_that_fails_leaves_the_template_working():
    probe = (
        "import gc\n"
        "from buntime.pool.launch import warm\n"
        "def broken(folders):\n"
        "    raise RuntimeError('the rehearsal broke')\n"
        "warm._one_round = broken\n"
        "from buntime.pool.launch.template import preload\n"
        "preload()\n"
        "print(gc.get_freeze_count() > 1000)\n"
    )
    result = _probe(probe)
    assert result.stdout.split() == ["True"]
    assert "RuntimeError: the rehearsal broke" in result.stderr


def test_a_rehearsal_without_a_temporary_directory_is_one_line_not_a_traceback():
    probe = (
        "import gc, tempfile\n"
        "tempfile.tempdir = '/nonexistent/tmp'  # TMPDIR, /tmp and the rest unwritable\n"
        "from buntime.pool.launch.template import preload\n"
        "preload()\n"
        "print(gc.get_freeze_count() > 1000)\n"
    )
    result = _probe(probe)
    assert result.stdout.split() == ["True"]
    [skipped] = result.stderr.splitlines()  # one line
    assert skipped.startswith(
        "The fork template's warm-up was skipped (workers start colder): "
        "[Errno 2] No such file or directory: '/nonexistent/tmp/buntime-warm-"
    )


def test_a_spare_finds_exactly_the_fds_it_has_open():
    """What a spare keeps for its reactor is worked out from the fds it has open."""
    from buntime.pool.launch.template import _open_fds

    read, write = os.pipe()
    high = os.dup2(read, 300)
    try:
        found = _open_fds()
        assert {0, 1, 2, read, write} <= found
        assert 300 not in found  # only those under 256
        assert 300 in _open_fds(below=301)
    finally:
        for fd in (read, write, high):
            os.close(fd)
    assert not {read, write} & _open_fds()


class NoProcesses(Clock):
    """A reactor that can start no process: each try is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.tries: list[float] = []

    def spawnProcess(self, *args, **kwargs):
        self.tries.append(self.seconds())
        raise PermissionError(13, "Permission denied", "/venv/bin/python")


def test_a_template_that_cannot_be_started_fails_the_start_with_its_reason(eliot_logger):
    clock = NoProcesses()
    launcher = ForkLauncher(clock)
    failures: list = []
    launcher.start().addErrback(failures.append)
    [failure] = failures
    assert failure.check(PermissionError)
    assert "Permission denied" in failure.getErrorMessage()
    [line] = logged(eliot_logger, "buntime:launch:template-failed")
    assert line["level"] == "error"
    assert line["message"] == (
        "The fork template could not be started: "
        "[Errno 13] Permission denied: '/venv/bin/python'; trying again in 1 s"
    )
    launcher.stop()


def test_a_template_that_cannot_be_started_is_tried_again_and_again(eliot_logger, monkeypatch):
    """
    Whatever kept it from starting (no fd, no process left, a venv being
    replaced) may pass: the launcher tries again, a while later each time.
    """
    clock = NoProcesses()
    launcher = ForkLauncher(clock)
    launcher.start().addErrback(lambda _: None)
    for _ in range(5):
        clock.advance(60)
    assert clock.tries == [0, 60, 120, 180, 240, 300]  # 1 s, 2, 4, 8, 16 s... at most 30 s
    monkeypatch.setattr(
        "socket.socketpair", lambda *args: (_ for _ in ()).throw(OSError(24, "Too many open files"))
    )
    clock.advance(60)
    assert len(clock.tries) == 6  # not even a socket pair: tried again too
    monkeypatch.undo()
    clock.advance(30)
    assert len(clock.tries) == 7
    lines = logged(eliot_logger, "buntime:launch:template-failed")
    assert len(lines) == 8 and "Too many open files" in lines[6]["message"]
    launcher.stop()
    clock.advance(60)
    assert len(clock.tries) == 7  # stopped: no more tries


# -- the spare the template forks ahead ------------------------------------------------


def children_of(pid: int) -> set[int]:
    """The live (not zombie) child processes of C{pid}, from C{/proc}."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


@pytest_twisted.async_yield_fixture
async def forking():
    launcher = ForkLauncher(reactor)
    await bounded(launcher.start())
    harness = Harness(launcher)
    try:
        yield harness
    finally:
        await harness.close()


async def spare_of(harness: Harness, besides: set[int] = frozenset()) -> int:
    """
    The template's spare: its one child that is no worker (waiting for it
    to be forked, and for the launcher to hold it).
    """
    launcher = harness.launcher
    template = launcher._transport.pid
    workers = {process.pid for process in harness.processes} | besides
    await until(lambda: len(children_of(template) - workers) == 1)
    [spare] = children_of(template) - workers
    await until(lambda: launcher._spare is not None and launcher._spare[0] == spare)
    return spare


async def launched_on(harness: Harness, pid: int) -> None:
    """The next launch is the process C{pid}, and its worker answers."""
    runtime, process = await harness.ready(APPS / "routes-demo")
    assert process.pid == pid
    assert (await bounded(runtime.request(path="/health").done)).status == 200


@pytest_twisted.ensureDeferred
async def test_a_cold_start_takes_the_spare_the_template_forked_ahead(forking: Harness) -> None:
    spare = await spare_of(forking)
    await launched_on(forking, spare)  # the launch did not wait for a fork
    following = await spare_of(forking)  # and the next one is forked once the template is idle
    assert following != spare
    await launched_on(forking, following)


@pytest_twisted.ensureDeferred
async def test_the_next_spare_is_forked_soon_after_a_launch_takes_one(forking: Harness) -> None:
    spare = await spare_of(forking)
    await launched_on(forking, spare)
    # told the spare was taken, the template forks the next one at once and
    # hands it over: the next cold start of a burst finds a spare too
    template = forking.launcher._transport.pid
    workers = {process.pid for process in forking.processes}
    await until(lambda: forking.launcher._spare is not None, SPARE_RETRY / 4)
    assert forking.launcher._spare[0] in children_of(template) - workers


@pytest_twisted.ensureDeferred
async def test_a_launch_goes_straight_to_the_spare_the_runtime_holds(forking: Harness) -> None:
    """No hop through the template: the launch is done when it is sent."""
    spare = await spare_of(forking)
    runtime = RuntimeSide()
    app = APPS / "routes-demo"
    spec = LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app))
    launched = forking.launcher.launch(spec, runtime, forking.output.append)
    assert launched.called  # not waiting for the template's word
    process = await launched
    forking.processes.append(process)
    assert process.pid == spare
    assert (await bounded(runtime.ready))[0] == spare
    assert (await bounded(runtime.request(path="/health").done)).status == 200
    # its exit is still reported (by the template, its parent)
    process.signal(signal.SIGKILL)
    assert await bounded(process.exited) == -signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_the_worker_a_spare_becomes_talks_on_the_socket_it_waited_on(
    forking: Harness,
) -> None:
    """
    Its channel was in its reactor before the launch came: the launch
    brings three fds (stdout, stderr, output), not a fourth for the channel
    on fds 3 and 4, which the worker closes.
    """
    spare = await spare_of(forking)
    waited_on = forking.launcher._spare[1]
    await launched_on(forking, spare)
    assert waited_on.fileno() == -1  # the runtime's end is the channel's now (adopted)

    def target(fd: int) -> str | None:
        try:
            return os.readlink(f"/proc/{spare}/fd/{fd}")
        except OSError:
            return None

    for fd in (3, 4):  # closed (or, reused since, no socket)
        assert not (target(fd) or "").startswith("socket:"), fd


@pytest_twisted.ensureDeferred
async def test_a_launch_to_the_spare_adopts_its_channel_outside_the_callers_action(
    forking: Harness, eliot_logger
) -> None:
    """
    As a launch the template forks: the channel's own log lines (Twisted's,
    the protocol's) belong to no request, whatever action launched it.
    """
    from eliot import current_action, start_action

    class Noting(RuntimeSide):
        def makeConnection(self, transport) -> None:
            self.action = current_action()
            super().makeConnection(transport)

    spare = await spare_of(forking)
    runtime = Noting()
    app = APPS / "routes-demo"
    with start_action(action_type="test:request"):
        launched = forking.launcher.launch(
            LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app)), runtime, print
        )
    process = await bounded(launched)
    forking.processes.append(process)
    assert process.pid == spare
    assert runtime.action is None


@pytest_twisted.ensureDeferred
async def test_a_launch_close_behind_the_one_that_took_the_spare_tells_the_template_at_once(
    forking: Harness,
) -> None:
    """
    The template is told of a taken spare SPARE_DELAY later (its next fork
    would slow the worker starting), or with the next launch it forks.
    """
    spare = await spare_of(forking)
    app = APPS / "routes-demo"
    first = forking.launcher.launch(
        LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app)), RuntimeSide(), print
    )
    assert first.called and forking.launcher._telling is not None  # not told yet
    second = forking.launcher.launch(
        LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app)), RuntimeSide(), print
    )
    assert forking.launcher._telling is None  # told along with this launch
    for launched in (first, second):
        forking.processes.append(await bounded(launched))
    assert forking.processes[0].pid == spare and forking.processes[1].pid != spare
    await spare_of(forking)  # and the next spare is forked


@pytest_twisted.ensureDeferred
async def test_in_a_burst_of_launches_the_template_is_told_of_a_taken_spare_at_once(
    forking: Harness,
) -> None:
    spare = await spare_of(forking)
    forking.launcher._last_launch = reactor.seconds()  # a launch just went out
    app = APPS / "routes-demo"
    launched = forking.launcher.launch(
        LaunchSpec(str(uuid.uuid4()), str(app), worker_env(app)), RuntimeSide(), print
    )
    assert launched.called and forking.launcher._telling is None  # told already
    forking.processes.append(await launched)
    assert forking.processes[0].pid == spare
    await spare_of(forking)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest_twisted.ensureDeferred
async def test_a_launch_to_a_spare_that_just_died_is_forked_by_the_template(
    forking: Harness,
) -> None:
    spare = await spare_of(forking)
    os.kill(spare, signal.SIGKILL)
    # gone, and the reactor not yet told (no turn of it while we wait)
    for _ in range(10_000):
        if _gone(spare):
            break
        os.sched_yield()
    assert _gone(spare)
    assert forking.launcher._spare is not None
    runtime, process = await forking.ready(APPS / "routes-demo")
    assert process.pid != spare
    assert (await bounded(runtime.request(path="/health").done)).status == 200


@pytest_twisted.ensureDeferred
async def test_a_spare_that_dies_is_replaced_a_while_later(forking: Harness) -> None:
    spare = await spare_of(forking)
    os.kill(spare, signal.SIGKILL)
    await until(lambda: forking.launcher._spare is None)  # its socket dropped when told
    # not at once: a spare that cannot live must not make the template fork in a loop
    await deferLater(reactor, SPARE_RETRY / 3, lambda: None)
    template = forking.launcher._transport.pid
    assert children_of(template) == set()
    replacement = await spare_of(forking, besides={spare})
    assert replacement != spare
    await launched_on(forking, replacement)


@pytest_twisted.ensureDeferred
async def test_a_burst_of_launches_forks_past_the_one_spare(forking: Harness) -> None:
    await spare_of(forking)
    started = await bounded(
        DeferredList(
            [Deferred.fromCoroutine(forking.ready(APPS / "routes-demo")) for _ in range(4)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
    )
    pids = {process.pid for _, (_, process) in started}
    assert len(pids) == 4
    for _, (runtime, _) in started:
        assert (await bounded(runtime.request(path="/health").done)).status == 200


@pytest_twisted.ensureDeferred
async def test_the_spare_goes_with_the_template() -> None:
    launcher = ForkLauncher(reactor)
    await bounded(launcher.start())
    harness = Harness(launcher)
    spare = await spare_of(harness)
    await bounded(launcher.stop())
    await until(lambda: spare not in children_of(1) and not os.path.exists(f"/proc/{spare}/stat"))


def test_a_forked_worker_s_environment_is_exactly_the_one_it_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from buntime.pool.launch.template import _set_environment

    monkeypatch.setenv("BUNTIME_TEST_KEPT", "same")
    monkeypatch.setenv("BUNTIME_TEST_CHANGED", "old")
    monkeypatch.setenv("BUNTIME_TEST_SECRET", "the template's")
    before = dict(os.environ)
    wanted = {
        **{k: v for k, v in before.items() if k != "BUNTIME_TEST_SECRET"},
        "BUNTIME_TEST_CHANGED": "new",
        "BUNTIME_TEST_ADDED": "added",
    }
    try:
        _set_environment(wanted)
        assert dict(os.environ) == wanted
        assert os.getenv("BUNTIME_TEST_SECRET") is None  # gone from the C environment too
        _set_environment({"ONLY": "this"})
        assert dict(os.environ) == {"ONLY": "this"}
    finally:
        os.environ.clear()
        os.environ.update(before)


def test_a_spare_that_cannot_be_forked_is_tried_again_a_while_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import time

    from buntime.pool.launch import template

    control, other = socket.socketpair()
    try:
        made = template.Template(control)

        def refuse() -> int:
            raise BlockingIOError("fork: resource temporarily unavailable")

        monkeypatch.setattr(template.os, "fork", refuse)
        made._fork_spare()
        assert made.spare is None
        # the template's loop waits until then, not forking in a loop
        assert made.spare_due >= time.monotonic() + template.SPARE_RETRY / 2
        os.close(made.wake_r)
        os.close(made.wake_w)
    finally:
        control.close()
        other.close()


@pytest.mark.parametrize("character", ["é", "中", "😀"])
def test_a_long_raw_line_is_split_between_characters(character: str) -> None:
    """
    A line over L{MAX_LINE} bytes (a subprocess's JSON, say) is logged in
    pieces, each cut between two characters: none turns into U+FFFD.
    """
    pieces: list[str] = []
    splitter = LineSplitter("stdout", lambda stream, line: pieces.append(line))
    text = "x" + character * (3 * MAX_LINE // len(character.encode()))
    data = (text + "\n").encode()
    for start in range(0, len(data), 4096):
        splitter.feed(data[start : start + 4096])
    splitter.flush()
    assert len(pieces) > 1
    assert all(len(piece.encode()) <= MAX_LINE for piece in pieces)
    assert "".join(pieces) == text

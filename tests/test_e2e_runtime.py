"""
The real thing: C{twistd -n buntime} in a child process (see C{runtime.py}).

Kept few because each starts a Python process; the details are unit-tested
through C{StubTreq} and C{task.Clock} in the other modules.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import pytest_twisted
from runtime import RuntimeExited, twistd_command

from buntime import __version__

pytestmark = pytest.mark.e2e

LOG_KEYS = {"level", "message", "timestamp", "context", "task_uuid", "task_level"}


def assert_log_lines_well_formed(proc) -> None:
    """Every stdout line is one JSON object with the SPEC §6 keys."""
    assert proc.unparsed == []
    assert proc.lines
    for line in proc.lines:
        missing = LOG_KEYS - set(line)
        assert not missing, (missing, line)
        assert line["level"] in ("debug", "info", "warn", "error")
        assert "message_type" in line or "action_type" in line, line


@pytest_twisted.ensureDeferred
async def test_serves_health_and_stops_cleanly_on_sigterm(runtimes, tmp_path):
    """
    A production runtime: health probes, the front door's fixed answers,
    request ids, one request action per request in JSON lines, then a clean
    SIGTERM stop.
    """
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "production"})

    for path, status in [("/api/health", "healthy"), ("/api/health/live", "live")]:
        response = await proc.get(path)
        assert response.code == 200
        assert await proc.json(response) == {"ok": True, "status": status, "version": __version__}
    response = await proc.get("/api/health/ready")
    assert response.code == 200
    assert (await proc.json(response))["status"] == "ready"

    response = await proc.get("/.well-known/buntime")
    assert await proc.json(response) == {"api": "/api", "version": __version__}
    response = await proc.get("/")
    assert await response.text() == f"Buntime v{__version__}"
    response = await proc.get("/favicon.ico")
    assert response.code == 204
    await response.content()

    # A client's id is kept; without one, a uuid4 is made; 404s carry it too.
    response = await proc.get("/no/such/thing", headers={"x-request-id": "e2e-given-id"})
    assert response.code == 404
    assert response.headers.getRawHeaders("x-request-id") == ["e2e-given-id"]
    assert response.headers.getRawHeaders("x-not-found") == ["true"]
    assert (await proc.json(response))["error"]["code"] == "NOT_FOUND"
    response = await proc.get("/api/health")
    generated = response.headers.getRawHeaders("x-request-id")[0]
    assert uuid.UUID(generated).version == 4
    await response.content()

    # The request action's end line names the request.
    done = await proc.wait_for_log(
        lambda line: (
            line.get("request_id") == "e2e-given-id" and line.get("action_status") == "succeeded"
        )
    )
    assert done["status"] == 404
    assert done["action_type"] == "buntime:http:request"
    assert isinstance(done["duration_ms"], int | float)
    assert (done["method"], done["path"]) == ("GET", "/no/such/thing")
    # Production logs at info hold every action whole (eliot-tree renders them):
    # the start messages of actions are their only debug lines.
    debug = [line for line in proc.lines if line["level"] == "debug"]
    assert debug and all(line.get("action_status") == "started" for line in debug)

    status = await proc.stop("TERM")
    assert status in (0, -15)
    assert proc.messages("buntime:runtime:stopping")
    assert_log_lines_well_formed(proc)
    assert json.dumps(proc.lines).count("Traceback") == 0
    assert proc.stderr == []


@pytest_twisted.ensureDeferred
async def test_sigint_stops_cleanly_and_flushes_the_log_file(runtimes, tmp_path):
    """SIGINT stops like SIGTERM; the log file holds the JSON lines, flushed on stop."""
    log_file = tmp_path / "runtime.log"
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path)],
        env={"RUNTIME_ENV": "staging", "RUNTIME_LOG_FILE": str(log_file)},
    )
    response = await proc.get("/api/health", headers={"x-request-id": "to-the-file"})
    await response.content()
    status = await proc.stop("INT")
    assert status in (0, -2)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(record.get("request_id") == "to-the-file" for record in records)
    assert any(record.get("message_type") == "buntime:runtime:stopping" for record in records)


@pytest_twisted.ensureDeferred
async def test_dotenv_in_working_directory_is_read(runtimes, tmp_path):
    """A C{.env} in the working directory configures it (here: the API prefix)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / ".env").write_text("RUNTIME_API_PREFIX=/_\nRUNTIME_ENV=test\n")
    proc = runtimes.spawn(worker_dirs=[str(tmp_path)], cwd=str(workdir))
    await proc.started(wait_ready=False)
    response = await proc.get("/_/api/health")
    assert response.code == 200
    await response.content()
    response = await proc.get("/.well-known/buntime")
    assert (await proc.json(response))["api"] == "/_/api"
    response = await proc.get("/api/health")
    assert response.code == 404
    await response.content()


@pytest_twisted.ensureDeferred
async def test_missing_worker_dirs_exits_2_with_one_line(runtimes):
    proc = runtimes.spawn(worker_dirs=None)
    status = await proc.wait_exit()
    assert status == 2
    assert proc.stderr == [
        "buntime: workerDirs is required: set RUNTIME_WORKER_DIRS env var"
        " (or pass -w/--worker-dirs)"
    ]
    assert proc.lines == [] and proc.unparsed == []


@pytest_twisted.ensureDeferred
async def test_a_worker_dir_that_does_not_exist_exits_2_naming_it(runtimes, tmp_path):
    missing = tmp_path / "nonexistent"
    proc = runtimes.spawn(worker_dirs=[str(tmp_path), str(missing)])
    assert await proc.wait_exit() == 2
    assert proc.stderr == [
        f"buntime: RUNTIME_WORKER_DIRS (or --worker-dirs): the app directory {missing}"
        " does not exist; create it (mkdir -p) or fix the path"
    ]
    assert proc.messages("buntime:runtime:ready") == []


@pytest_twisted.ensureDeferred
async def test_bad_port_exits_nonzero_with_one_line(runtimes, tmp_path):
    proc = runtimes.spawn(worker_dirs=[str(tmp_path)], env={"PORT": "abc"}, listen=None)
    status = await proc.wait_exit()
    assert status != 0
    assert proc.stderr == ["buntime: PORT must be an integer, got 'abc'"]


@pytest_twisted.ensureDeferred
async def test_unusable_listen_description_exits_2_with_one_stderr_line(runtimes, tmp_path):
    proc = runtimes.spawn(worker_dirs=[str(tmp_path)], listen="bogus:1")
    status = await proc.wait_exit()
    assert status == 2
    assert proc.stderr == [
        "buntime: RUNTIME_LISTEN (or --listen) must be a Twisted endpoint like"
        " tcp:8000:interface=127.0.0.1, got 'bogus:1': Unknown endpoint type: 'bogus'"
    ]
    assert proc.lines == [] and proc.unparsed == []


SLOW_APP = """
import time


def ping(request):
    return "pong"


def wait(request):
    time.sleep(float(request.query.partition("=")[2] or "1"))
    return "done"


routes = {"/ping": ping, "/wait": wait}
"""


@pytest_twisted.ensureDeferred
async def test_slow_request_finishes_during_shutdown(runtimes, tmp_path):
    """
    SIGTERM while an app request is in flight: the runtime stops listening
    but the request is answered in full before the process exits.  Skipped
    while worker apps are not routed by the runtime yet.
    """
    app = tmp_path / "apps" / "slow"
    app.mkdir(parents=True)
    (app / "manifest.yaml").write_text("ttl: 60s\ntimeout: 30s\nidleTimeout: 60s\n")
    (app / "app.py").write_text(SLOW_APP)
    proc = await runtimes.start(worker_dirs=[str(tmp_path / "apps")])

    response = await proc.get("/slow/ping")
    body = await response.text()
    if response.code == 404 and response.headers.getRawHeaders("x-not-found"):
        pytest.skip("worker apps are not routed by the runtime yet")
    assert (response.code, body) == (200, "pong")

    in_flight = proc.get("/slow/wait?s=2", headers={"x-request-id": "slow-1"})
    await proc.wait_for_log(
        lambda line: line.get("request_id") == "slow-1" and line.get("action_status") == "started"
    )
    proc.signal("TERM")
    await proc.wait_for_message("buntime:runtime:stopping")
    response = await in_flight
    assert (response.code, await response.text()) == (200, "done")
    assert await proc.wait_exit() == 0


@pytest_twisted.ensureDeferred
async def test_sigterm_turns_readiness_off_and_serves_through_the_drain_delay(runtimes, tmp_path):
    """
    What Kubernetes needs: at SIGTERM the readiness probe fails at once, but
    requests (new connections too) are served for RUNTIME_DRAIN_DELAY; then
    the port closes, the requests in flight finish, and the exit is 0.
    """
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path)],
        env={"RUNTIME_ENV": "production", "RUNTIME_DRAIN_DELAY": "1500ms"},
    )
    assert (await proc.get("/api/health/ready")).code == 200
    proc.signal("TERM")
    await proc.wait_for_message("buntime:runtime:draining")
    ready = await proc.get("/api/health/ready")
    assert ready.code == 503 and (await ready.json())["status"] == "stopping"
    assert (await proc.get("/api/health/live")).code == 200  # not dead: still serving
    assert (await proc.get("/")).code == 200
    await proc.wait_for_message("buntime:runtime:stopping")
    assert await proc.wait_exit() == 0
    draining, stopping = (
        proc.messages(name)[0] for name in ("buntime:runtime:draining", "buntime:runtime:stopping")
    )
    assert stopping["timestamp"] - draining["timestamp"] >= 1.4


async def _refused(proc, seconds: float) -> bool:
    """Whether new connections are refused within C{seconds} (the port closed)."""
    from twisted.internet import reactor
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.task import deferLater
    from twisted.web.client import ResponseNeverReceived

    started = reactor.seconds()
    while reactor.seconds() - started < seconds:
        try:
            await (await proc.get("/api/health/live")).content()
        except ConnectionRefusedError:
            return True
        except ResponseNeverReceived:
            # accepted by the kernel as the port closed, then reset unanswered:
            # the next connection finds it closed
            continue
        await deferLater(reactor, 0.05, lambda: None)
    return False


@pytest_twisted.ensureDeferred
async def test_sigterm_with_a_request_in_flight_drains_in_kubernetes_order_and_exits_0(
    runtimes, tmp_path
):
    """
    The whole stop, end to end, with a request in flight that outlasts the
    drain delay: readiness 503 at once while new connections are still
    served; after RUNTIME_DRAIN_DELAY new connections are refused while the
    request in flight goes on; it is answered in full within
    RUNTIME_SHUTDOWN_TIMEOUT, and the exit status is 0.
    """
    app = tmp_path / "apps" / "slow"
    app.mkdir(parents=True)
    (app / "manifest.yaml").write_text("ttl: 60s\ntimeout: 30s\nidleTimeout: 60s\n")
    (app / "app.py").write_text(SLOW_APP)
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path / "apps")],
        env={
            "RUNTIME_ENV": "production",
            "RUNTIME_DRAIN_DELAY": "1s",
            "RUNTIME_SHUTDOWN_TIMEOUT": "10s",
        },
    )
    response = await proc.get("/slow/ping")
    assert (response.code, await response.text()) == (200, "pong")

    in_flight = proc.get("/slow/wait?s=3", headers={"x-request-id": "drain-1"})
    answered: list[object] = []
    in_flight.addBoth(lambda result: answered.append(result) or result)
    await proc.wait_for_log(
        lambda line: line.get("request_id") == "drain-1" and line.get("action_status") == "started"
    )
    proc.signal("TERM")
    await proc.wait_for_message("buntime:runtime:draining")
    ready = await proc.get("/api/health/ready")
    assert ready.code == 503 and (await ready.json())["status"] == "stopping"
    live = await proc.get("/api/health/live")  # a new connection, still accepted
    assert live.code == 200
    assert answered == []

    await proc.wait_for_message("buntime:runtime:stopping")
    assert await _refused(proc, 1.0), "still accepting after the drain delay"
    assert answered == []  # refusing new connections, still serving this one
    response = await in_flight
    assert (response.code, await response.text()) == (200, "done")
    assert await proc.wait_exit() == 0
    assert not proc.messages("buntime:runtime:shutdown-timeout")


@pytest_twisted.ensureDeferred
async def test_in_the_foreground_twisted_s_log_is_written_once_in_buntime_s_format(
    runtimes, tmp_path
):
    """twistd's own lines (its start-up among them) are JSON lines like ours, not twistd's."""
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "production"})
    twisted = [line for line in proc.lines if line.get("message_type") == "twisted:log"]
    assert any("starting up" in line["message"] for line in twisted), proc.lines
    assert_log_lines_well_formed(proc)


@pytest_twisted.ensureDeferred
async def test_the_helper_reports_a_runtime_that_cannot_start(runtimes):
    with pytest.raises(RuntimeExited) as caught:
        await runtimes.start(worker_dirs=None)
    assert "workerDirs is required" in str(caught.value)


def test_daemon_mode_logs_to_the_twistd_log(tmp_path):
    """Without -n, twistd daemonizes: buntime's own lines must reach twistd.log."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    twistd = Path(sys.executable).with_name("twistd")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "RUNTIME_ENV": "production",
        "RUNTIME_DRAIN_DELAY": "0s",
        "RUNTIME_WORKER_DIRS": str(tmp_path),
        "RUNTIME_PLUGIN_DIRS": str(tmp_path / "plugins"),
    }
    subprocess.run(
        [
            str(twistd),
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "buntime",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if logfile.exists() and "Runtime ready" in logfile.read_text():
                break
            time.sleep(0.05)
        assert "Runtime ready" in logfile.read_text()
        # one format: every line is one of ours, Twisted's own events included
        records = [json.loads(line) for line in logfile.read_text().splitlines()]
        assert any(r.get("message_type") == "buntime:runtime:ready" for r in records)
        twisted = [r for r in records if r.get("message_type") == "twisted:log"]
        assert any("starting up" in r["message"] for r in twisted), records
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            while pidfile.exists() and time.monotonic() < deadline + 20:
                time.sleep(0.05)


def test_a_daemon_that_cannot_listen_makes_the_twistd_command_exit_1(tmp_path):
    """
    Daemonized, the C{twistd} command waits for its daemon to say it started:
    a port in use must end that wait with status 1, not leave it hanging.
    """
    import socket
    import subprocess
    import sys
    from pathlib import Path

    twistd = Path(sys.executable).with_name("twistd")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "RUNTIME_ENV": "production",
        "RUNTIME_WORKER_DIRS": str(tmp_path),
        "RUNTIME_PLUGIN_DIRS": str(tmp_path / "plugins"),
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                str(twistd),
                f"--pidfile={pidfile}",
                f"--logfile={logfile}",
                "buntime",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done
    assert "buntime could not start: see the log" in done.stderr
    assert "Address already in use" in logfile.read_text()
    assert not pidfile.exists()


@pytest_twisted.ensureDeferred
async def test_two_foreground_runtimes_start_from_one_directory(runtimes, tmp_path):
    """C{twistd -n buntime} as the README runs it writes no twistd.pid to stop a second one."""
    readme_command = [*twistd_command(), "-n", "buntime"]  # no --pidfile=
    started = []
    for _ in range(2):
        started.append(
            await runtimes.start(
                worker_dirs=[str(tmp_path)], cwd=str(tmp_path), command=readme_command, twistd=False
            )
        )
    first, second = started
    assert first.port != second.port
    assert not (tmp_path / "twistd.pid").exists()


@pytest_twisted.ensureDeferred
async def test_listens_on_a_unix_socket(runtimes, tmp_path):
    """--listen takes any endpoint string: a UNIX socket serves and becomes ready."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    socket_path = str(tmp_path / "buntime.sock")
    proc = runtimes.spawn(worker_dirs=[str(tmp_path)], listen=f"unix:{socket_path}")
    await proc.wait_for_log(lambda line: line.get("message_type") == "buntime:runtime:ready")

    @implementer(IAgentEndpointFactory)
    class ToSocket:
        def endpointForURI(self, uri):
            return UNIXClientEndpoint(reactor, socket_path)

    client = HTTPClient(Agent.usingEndpointFactory(reactor, ToSocket()))
    response = await client.get("http://buntime/api/health")
    assert response.code == 200
    assert (await response.json())["status"] == "healthy"
    assert await proc.stop("TERM") in (0, -15)


HOOK_RECORDER = """
import os

from zope.interface import implementer

from buntime.interfaces import IBuntimePlugin


@implementer(IBuntimePlugin)
class Recorder:
    def _note(self, line):
        with open(os.environ["HOOK_RECORD"], "a") as record:
            record.write(line + "\\n")

    def on_worker_terminate(self, worker, app):
        self._note("terminate " + app.name)

    def on_shutdown(self):
        self._note("shutdown")


def plugin(config):
    return Recorder()
"""


@pytest_twisted.ensureDeferred
async def test_a_stop_retires_the_workers_before_the_plugins_shut_down(runtimes, tmp_path):
    """
    SIGTERM with a worker running: the plugins hear that worker end
    (C{on_worker_terminate}), and only then shut down (docs/deployment.md).
    """
    apps = tmp_path / "apps"
    (apps / "live").mkdir(parents=True)
    (apps / "live" / "manifest.yaml").write_text("ttl: 5m\n")
    (apps / "live" / "app.py").write_text('routes = {"/": "up"}\n')
    recorder = tmp_path / "plugins" / "recorder"
    recorder.mkdir(parents=True)
    (recorder / "manifest.yaml").write_text('name: "recorder"\n')
    (recorder / "plugin.py").write_text(HOOK_RECORDER)
    record = tmp_path / "hooks.txt"
    env = {"RUNTIME_PLUGIN_DIRS": str(tmp_path / "plugins"), "HOOK_RECORD": str(record)}
    proc = await runtimes.start(worker_dirs=[str(apps)], env=env)
    response = await proc.get("/live/")
    assert await response.text() == "up"
    assert await proc.stop("TERM") == 0
    assert record.read_text().splitlines() == ["terminate live", "shutdown"]

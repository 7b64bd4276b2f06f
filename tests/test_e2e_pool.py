"""
The worker pool through a real runtime: concurrency inside one worker,
ephemeral and persistent workers, recycling, timeouts that kill and explain,
crashes that answer 502 and recover, and no worker outliving its runtime.

Most tests share one runtime; the orphan and SIGTERM tests stop theirs.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import descendants, pid_alive, wait_until, within, write_app
from runtime import Runtimes
from twisted.internet.defer import Deferred, gatherResults

pytestmark = pytest.mark.e2e

PID_APP = """
    import os

    routes = {"/": lambda request: {"pid": os.getpid()}}
"""

OVERLAP_WSGI = """
    import json
    import os
    import time

    def app(environ, start_response):
        started = time.time()
        time.sleep(0.3)
        body = json.dumps({"pid": os.getpid(), "start": started, "end": time.time()})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]
"""

SLEEPY = """
    import time

    def sleepy_handler(request):
        print("sleepy handler started", flush=True)
        time.sleep(5)
        return "too late"

    routes = {"/": sleepy_handler}
"""

CRASH_AT_IMPORT = """
    raise RuntimeError("boom while importing")
"""

DIES = """
    import os

    def die(request):
        os._exit(1)

    routes = {"/": lambda request: {"pid": os.getpid()}, "/die": die}
"""

SLOW_ASYNC = """
    import asyncio
    import os

    async def slow(request):
        print("slow request begun", flush=True)
        await asyncio.sleep(1.5)
        return "finished after all"

    routes = {"/": lambda request: {"pid": os.getpid()}, "/slow": slow}
"""

STUCK = """
    import time

    def stuck(request):
        print("stuck handler started", flush=True)
        time.sleep(60)  # blocks the worker's event loop
        return "never"

    routes = {"/": stuck}
"""

PERSISTENT = {"version": "1.0.0", "ttl": "5m"}


def build_apps(root: Path) -> None:
    write_app(root, "overlap", "1.0.0", manifest=PERSISTENT, files={"app.py": OVERLAP_WSGI})
    write_app(root, "eph", "1.0.0", manifest={"ttl": 0}, files={"app.py": PID_APP})
    write_app(root, "keep", "1.0.0", manifest=PERSISTENT, files={"app.py": PID_APP})
    write_app(
        root,
        "recycle",
        "1.0.0",
        manifest={**PERSISTENT, "maxRequests": 2},
        files={"app.py": PID_APP},
    )
    write_app(
        root, "sleepy", "1.0.0", manifest={"ttl": 0, "timeout": "1s"}, files={"app.py": SLEEPY}
    )
    write_app(root, "crashy", "1.0.0", manifest=PERSISTENT, files={"app.py": CRASH_AT_IMPORT})
    write_app(root, "dies", "1.0.0", manifest=PERSISTENT, files={"app.py": DIES})
    write_app(
        root,
        "needs",
        "1.0.0",
        manifest=PERSISTENT,
        files={"app.py": "import not_installed_anywhere\n"},
    )
    write_app(root, "slow", "1.0.0", manifest=PERSISTENT, files={"app.py": SLOW_ASYNC})
    write_app(
        root,
        "stuck",
        "1.0.0",
        manifest={**PERSISTENT, "timeout": "50s"},
        files={"app.py": STUCK},
    )


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool-apps")
    build_apps(root)
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path):
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield await factory.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    finally:
        await factory.kill_all()


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def pid_of(proc: Any, path: str) -> int:
    response = await proc.get(path)
    assert response.code == 200, (path, response.code, await response.text())
    return (await proc.json(response))["pid"]


def ready_pids(proc: Any, app: str) -> list[int]:
    return [
        line["pid"]
        for line in proc.messages("buntime:worker:start", "succeeded")
        if line["app"] == app
    ]


async def gone(pids: set[int] | list[int], timeout: float = 5.0) -> set[int]:
    """Wait until every pid has exited; the ones still alive after C{timeout}."""
    await wait_until(reactor_(), lambda: not any(pid_alive(pid) for pid in pids), timeout)
    return {pid for pid in pids if pid_alive(pid)}


# -- concurrency and policies ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_to_one_wsgi_worker_overlap(shared):
    """Five requests that each sleep 0.3 s run at once in one worker's threads."""
    await pid_of(shared, "/overlap@1/")  # warm: the cold start is not what is measured
    reactor = reactor_()
    started = reactor.seconds()
    responses = await gatherResults([shared.get("/overlap@1/") for _ in range(5)])
    bodies = [await shared.json(response) for response in responses]
    elapsed = reactor.seconds() - started
    assert [response.code for response in responses] == [200] * 5
    assert len({body["pid"] for body in bodies}) == 1, "one worker served them all"
    # Every request started before any finished: they overlapped.
    assert max(body["start"] for body in bodies) < min(body["end"] for body in bodies)
    assert elapsed < 1.4, f"5 x 0.3 s took {elapsed:.2f} s: not concurrent"


@pytest_twisted.ensureDeferred
async def test_ephemeral_app_gets_a_fresh_worker_per_request_that_then_exits(shared):
    pids = [await pid_of(shared, "/eph@1/") for _ in range(3)]
    parallel = [Deferred.fromCoroutine(pid_of(shared, "/eph@1/")) for _ in range(3)]
    pids += await gatherResults(parallel)
    assert len(set(pids)) == 6, pids
    assert set(pids) <= set(ready_pids(shared, "eph"))
    assert await gone(pids) == set(), "ephemeral workers must exit after their response"


@pytest_twisted.ensureDeferred
async def test_persistent_worker_is_reused(shared):
    pids = [await pid_of(shared, "/keep@1/") for _ in range(4)]
    assert len(set(pids)) == 1, pids
    assert pid_alive(pids[0])


@pytest_twisted.ensureDeferred
async def test_max_requests_recycles_the_worker(shared):
    """C{maxRequests: 2}: the third request gets a new worker; the old one exits."""
    first, second, third = [await pid_of(shared, "/recycle@1/") for _ in range(3)]
    assert first == second
    assert third != first
    assert await gone([first]) == set()
    assert pid_alive(third)


# -- timeouts and crashes ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeout_answers_504_and_explains_the_kill_with_a_stack(shared):
    """
    C{timeout: 1s}, the app sleeps 5 s: 504 JSON well before the 5 s, the
    worker is killed, and one error line names app, method, path, elapsed,
    pid and carries the worker's Python stack.
    """
    reactor = reactor_()
    started = reactor.seconds()
    response = await within(reactor, shared.get("/sleepy@1/?why=timeout"), 10)
    elapsed = reactor.seconds() - started
    assert response.code == 504
    error = (await shared.json(response))["error"]
    assert error["code"] == "WORKER_TIMEOUT"
    assert "sleepy" in error["message"]
    assert elapsed < 4.0, f"the client waited {elapsed:.1f} s"

    line = await shared.wait_for_log(
        lambda line: (
            line.get("message_type") == "buntime:pool:timeout" and line.get("app") == "sleepy"
        ),
        timeout=5,
    )
    (pid,) = ready_pids(shared, "sleepy")
    assert line["level"] == "error"
    assert "sleepy@1.0.0" in line["message"]
    assert (line["method"], line["path"], line["pid"]) == ("GET", "/", pid)
    assert 1000 <= line["elapsed_ms"] < 4000
    # faulthandler's dump, taken while the handler was still sleeping.
    stack = line["stack"]
    assert re.search(r'sleepy@1\.0\.0/app\.py", line \d+ in sleepy_handler', stack), stack
    timeouts = [
        line
        for line in shared.messages("buntime:pool:timeout")
        if line["app"] == "sleepy" and line["level"] == "error"
    ]
    assert len(timeouts) == 1
    assert await gone([pid]) == set(), "the timed-out ephemeral worker is killed"


@pytest_twisted.ensureDeferred
async def test_app_crashing_at_import_answers_502_naming_the_app(shared):
    response = await shared.get("/crashy@1/")
    assert response.code == 502
    error = (await shared.json(response))["error"]
    assert "crashy@1.0.0" in error["message"]
    assert "boom while importing" in error["message"]  # not production: the exception is shown
    # A crash loop backs off: more requests get the last failure, not a new worker each.
    for _ in range(6):
        response = await shared.get("/crashy@1/")
        assert response.code == 502
        assert "crashy@1.0.0" in (await shared.json(response))["error"]["message"]
    spawned = [
        line
        for line in shared.messages("buntime:worker:start", "started")
        if line["app"] == "crashy"
    ]
    assert 1 <= len(spawned) <= 4, f"{len(spawned)} workers started for 7 requests"
    # The runtime itself is fine.
    response = await shared.get("/keep@1/")
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_a_missing_module_answers_502_saying_how_to_provide_it(shared, worker_dir):
    response = await shared.get("/needs@1/")
    assert response.code == 502
    message = (await shared.json(response))["error"]["message"]
    deps = worker_dir / "needs@1.0.0" / ".deps"
    for advice in (
        "No module named 'not_installed_anywhere'",
        "autoInstall: true",
        f"pip install --target {deps} not_installed_anywhere",
        "-m pip install not_installed_anywhere",
    ):
        assert advice in message
    await shared.wait_for_log(
        lambda line: (
            line.get("message_type") == "buntime:worker:start-failed"
            and f"pip install --target {deps}" in str(line)
        )
    )


@pytest_twisted.ensureDeferred
async def test_worker_dying_mid_request_answers_502_then_a_fresh_worker_serves(shared):
    reactor = reactor_()
    before = await pid_of(shared, "/dies@1/")
    started = reactor.seconds()
    response = await within(reactor, shared.get("/dies@1/die"), 10)
    assert response.code == 502
    error = (await shared.json(response))["error"]
    assert "dies@1.0.0" in error["message"]
    assert reactor.seconds() - started < 3.0, "a dead worker must not hang the client"
    after = await pid_of(shared, "/dies@1/")
    assert after != before
    assert not pid_alive(before)


# -- the runtime's own end -------------------------------------------------------------


def _template_pids(proc: Any) -> list[int]:
    return [line["pid"] for line in proc.messages("buntime:launch:template-ready")]


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_workers_do_not_outlive_a_killed_runtime(mode, runtimes, worker_dir):
    """SIGKILL the runtime: its workers (and the fork template) exit within seconds."""
    proc = await runtimes.start(
        worker_dirs=[str(worker_dir)],
        env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode},
    )
    workers = {await pid_of(proc, "/keep@1/"), await pid_of(proc, "/overlap@1/")}
    below = descendants(proc.pid)
    assert workers <= below
    if mode == "fork":
        (template,) = _template_pids(proc)
        assert template in below
    assert below, "the runtime has worker processes"

    await proc.kill()
    survivors = await gone(below, timeout=5.0)
    for pid in survivors:  # do not leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert survivors == set(), f"still running after the runtime was killed: {survivors}"


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_a_busy_worker_does_not_outlive_a_killed_runtime(runtimes, worker_dir, mode):
    """
    SIGKILL the runtime while a handler blocks its worker's event loop: the
    worker must still go away within seconds, not when the handler returns.
    """
    proc = await runtimes.start(
        worker_dirs=[str(worker_dir)],
        env={"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode},
    )
    pending = proc.get("/stuck@1/")
    pending.addErrback(lambda _: None)  # the runtime dies under it
    await proc.wait_for_log(lambda line: line.get("message") == "stuck handler started")
    below = descendants(proc.pid)
    assert set(ready_pids(proc, "stuck")) <= below

    await proc.kill()
    survivors = await gone(below, timeout=5.0)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == set(), f"still running after the runtime was killed: {survivors}"


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_the_in_flight_request_finish_then_exits_cleanly(runtimes, worker_dir):
    reactor = reactor_()
    proc = await runtimes.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    await pid_of(proc, "/slow@1/")
    pending = proc.get("/slow@1/slow")
    await proc.wait_for_log(lambda line: line.get("message") == "slow request begun", timeout=10)
    below = descendants(proc.pid)
    assert below

    proc.signal("TERM")
    response = await within(reactor, pending, 10)
    assert response.code == 200
    assert await response.text() == "finished after all"
    status = await proc.wait_exit(20)
    assert status in (0, -15)
    assert await gone(below) == set(), "workers must be gone once the runtime has stopped"
    assert proc.messages("buntime:runtime:stopping")
    assert not proc.messages("buntime:runtime:shutdown-timeout")


@pytest_twisted.ensureDeferred
async def test_a_package_installed_after_the_runtime_started_is_importable_by_a_new_worker(
    runtimes: Runtimes, tmp_path: Path
) -> None:
    # The fork template filled its import caches when it started; a worker
    # forked later finds what was installed since (pip install into the venv
    # of a running runtime), without the template being restarted.
    import site
    import uuid

    packages = Path(site.getsitepackages()[0])
    if not os.access(packages, os.W_OK):
        pytest.skip(f"{packages} is not writable")
    module = f"buntime_late_{uuid.uuid4().hex}"
    write_app(
        tmp_path,
        "late",
        manifest={"entrypoint": "app.py"},
        files={
            "app.py": f"""
                import {module}

                def app(environ, start_response):
                    start_response("200 OK", [("Content-Type", "text/plain")])
                    return [{module}.ANSWER]
            """
        },
    )
    proc = await runtimes.start(worker_dirs=[str(tmp_path)])
    first = await proc.get("/late/")
    assert first.code == 502  # not installed yet
    installed = packages / f"{module}.py"
    installed.write_text('ANSWER = b"installed later"\n')
    try:
        answer = await proc.get("/late/")
        assert (answer.code, await answer.content()) == (200, b"installed later")
    finally:
        installed.unlink()

"""
Worker faults, through a real runtime: a worker SIGKILLed under concurrent
load costs only its in-flight requests (each a 502 JSON error, none
hanging); a WSGI handler spinning in C{while True: pass} is answered 504 at
its C{timeout}, its stack logged and its worker killed; a SIGKILLed runtime
leaves no worker or template process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from e2e_apps import pid_alive, pid_of, wait_until, within, write_app
from reliability_procs import sleep, tree
from twisted.internet.defer import Deferred, gatherResults

CLIENTS = 20

BUSY = """
    import asyncio
    import os
    async def work(request):
        await asyncio.sleep(0.2)
        return {"pid": os.getpid()}

    async def hold(request):
        # Says which worker holds it, then stays in flight for a while.
        with open(request.headers["x-holder-file"], "w") as file:
            file.write(str(os.getpid()))
        await asyncio.sleep(10)
        return {"pid": os.getpid()}

    routes = {"/": work, "/hold": hold}
"""

SPIN_WSGI = """
    import json
    import os

    def spin():
        while True:
            pass

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/spin":
            spin()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"pid": os.getpid()}).encode()]
"""

PERSISTENT = {"version": "1.0.0", "ttl": "5m"}


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


@attrs.define
class Outcome:
    """One request of a load client: its path, wall-clock times, status and JSON body."""

    path: str
    sent: float
    done: float = 0.0
    status: int | str = "pending"
    body: Any = None


async def request_once(proc: Any, path: str, log: list[Outcome], **kwargs: Any) -> None:
    """Request C{path} once and log its outcome; a hang is C{"hang"}."""
    outcome = Outcome(path, time.time())
    log.append(outcome)
    try:
        response = await within(reactor_(), proc.get(path, **kwargs), 15)
        text = await within(reactor_(), response.text(), 15)
        outcome.status = response.code
        outcome.body = json.loads(text)
    except Exception as error:
        outcome.status = "hang" if "Timeout" in type(error).__name__ else repr(error)
    outcome.done = time.time()


async def client(proc: Any, path: str, running: list[bool], log: list[Outcome]) -> None:
    """Request C{path} back to back until C{running[0]} is false."""
    while running[0]:
        await request_once(proc, path, log)


async def _holder(path: Path) -> int:
    """The pid of the worker serving C{/hold}, once its handler has written it."""
    assert await wait_until(reactor_(), path.exists, 15), "the hold request never started"
    return int(path.read_text())


@pytest_twisted.ensureDeferred
async def test_a_worker_killed_under_load_costs_only_its_in_flight_requests(
    runtimes, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
):
    reactor = reactor_()
    write_app(tmp_path, "busy", "1.0.0", manifest=PERSISTENT, files={"app.py": BUSY})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test"})
    await pid_of(proc, "/busy@1/")  # a worker is up before the load

    running, log = [True], []
    clients = [
        Deferred.fromCoroutine(client(proc, "/busy@1/", running, log)) for _ in range(CLIENTS)
    ]
    await sleep(reactor, 1.5)
    # The victim is the worker that holds a long request: whatever the
    # timing of the short ones, it has one in flight when it is killed.
    holder = tmp_path_factory.mktemp("hold") / "holder"
    headers = {"x-holder-file": str(holder)}
    held = Deferred.fromCoroutine(request_once(proc, "/busy@1/hold", log, headers=headers))
    victim = await _holder(holder)
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    await sleep(reactor, 2.5)
    running[0] = False
    await within(reactor, gatherResults([*clients, held]), 40)

    crash = await proc.wait_for_log(
        lambda m: m.get("message_type") == "buntime:worker:crash" and m.get("pid") == victim,
        timeout=10,
    )
    noticed = crash["timestamp"]
    failed = [o for o in log if o.status != 200]
    # in flight when it died: sent before the runtime saw it die, not answered
    # before the kill (the runtime answers them 502 before it logs the crash)
    in_flight = [o for o in log if o.sent <= noticed and o.done > killed_at]
    print(
        f"\nworker {victim} SIGKILLed under {CLIENTS} clients: {len(log)} requests, "
        f"{len(failed)} failed, {len(in_flight)} in flight when it died, "
        f"death noticed after {(noticed - killed_at) * 1000:.0f} ms"
    )
    assert not [o for o in log if o.status == "hang"], "no request may hang"
    assert {o.status for o in failed} <= {502}, [o.status for o in failed]
    for outcome in failed:
        assert outcome.body["error"]["code"] == "WORKER_CRASHED"
        assert "busy@1.0.0" in outcome.body["error"]["message"]
        assert outcome.sent <= noticed, "only requests sent to the dead worker fail"
    # at most one request of each client (and the held one) was on the dead worker
    assert 1 <= len(failed) <= CLIENTS + 1
    assert all(o in in_flight for o in failed), "a failed request was in flight at the kill"
    assert [o.status for o in log if o.path == "/busy@1/hold"] == [502], "the held one fails"
    after = [o for o in log if o.sent > noticed]
    assert after and all(o.status == 200 for o in after)
    assert {o.body["pid"] for o in after} - {victim}, "a fresh worker serves after the kill"
    assert await pid_of(proc, "/busy@1/") != victim


@pytest_twisted.ensureDeferred
async def test_a_wsgi_infinite_loop_is_killed_at_its_timeout_with_its_stack(
    runtimes, tmp_path: Path
):
    reactor = reactor_()
    manifest = {**PERSISTENT, "timeout": "2s"}
    write_app(tmp_path, "spin", "1.0.0", manifest=manifest, files={"app.py": SPIN_WSGI})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test"})
    spinner = await pid_of(proc, "/spin@1/")

    started = time.monotonic()
    response = await within(reactor, proc.get("/spin@1/spin"), 20)
    waited = time.monotonic() - started
    assert response.code == 504
    error = (await proc.json(response))["error"]
    assert error["code"] == "WORKER_TIMEOUT" and "spin@1.0.0" in error["message"]
    assert 1.9 <= waited < 6.0, f"answered after {waited:.1f} s for a 2 s timeout"

    line = await proc.wait_for_log(
        lambda m: m.get("message_type") == "buntime:pool:timeout" and m.get("level") == "error",
        timeout=10,
    )
    assert line["pid"] == spinner and line["path"] == "/spin"
    assert re.search(r'spin@1\.0\.0/app\.py", line \d+ in spin\b', line["stack"]), line["stack"]
    assert await wait_until(reactor, lambda: not pid_alive(spinner), 15), "the spinner is killed"
    killed_after = time.monotonic() - started
    assert await pid_of(proc, "/spin@1/") != spinner, "a fresh worker serves"
    print(f"\nWSGI loop: 504 after {waited:.2f} s, worker gone {killed_after:.2f} s after the call")


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_a_killed_runtime_leaves_no_process_behind(runtimes, tmp_path: Path, mode: str):
    """
    SIGKILL the runtime with idle workers, a worker spinning in a WSGI loop
    and (in fork mode) the template: every process below it is gone within
    seconds.
    """
    reactor = reactor_()
    write_app(tmp_path, "busy", "1.0.0", manifest=PERSISTENT, files={"app.py": BUSY})
    manifest = {**PERSISTENT, "timeout": "60s"}
    write_app(tmp_path, "spin", "1.0.0", manifest=manifest, files={"app.py": SPIN_WSGI})
    env = {"RUNTIME_ENV": "test", "RUNTIME_WORKER_MODE": mode}
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env=env)
    workers = {await pid_of(proc, "/busy@1/"), await pid_of(proc, "/spin@1/")}
    pending = proc.get("/spin@1/spin")
    pending.addErrback(lambda _: None)  # the runtime dies under it
    await sleep(reactor, 0.5)
    below = tree(proc.pid, zombies=False)
    templates = {m["pid"] for m in proc.messages("buntime:launch:template-ready")}
    assert workers <= below and templates <= below
    assert len(templates) == (1 if mode == "fork" else 0)

    await proc.kill()
    alive = await wait_until(reactor, lambda: not any(pid_alive(p) for p in below), 5.0)
    survivors = {pid for pid in below if pid_alive(pid)}
    for pid in survivors:  # do not leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert alive and not survivors, f"still running after the runtime was killed: {survivors}"

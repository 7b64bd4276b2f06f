"""
Limits that hold, through a real runtime: C{maxMemory} recycles a worker
that grew, after its in-flight request; a crash-looping app keeps
answering at once while it backs off, for a few percent of one core; an
oversized request target or header section is refused (414, 431).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import parse_reply, pid_alive, pid_of, raw_request, wait_until, within, write_app
from reliability_procs import cpu_seconds, own_cpu_seconds, sleep

LIMIT_MB = 150

GROWER = """
    import asyncio
    import os

    HELD = []

    def pid(request):
        return {"pid": os.getpid()}

    def grow(request):
        HELD.append(b"\\x01" * (200 * 1024 * 1024))  # written, so resident
        return {"pid": os.getpid(), "held_mb": 200 * len(HELD)}

    async def slow(request):
        await asyncio.sleep(2)
        return {"pid": os.getpid()}

    routes = {"/": pid, "/grow": grow, "/slow": slow}
"""

CRASH_AT_IMPORT = """
    raise RuntimeError("boom while importing")
"""

CRASH_ON_REQUEST = """
    import os

    def die(request):
        os._exit(3)

    routes = {"/": die}
"""

FIELDS = "REQUEST_HEADER_FIELDS_TOO_LARGE"

WINDOW = 6.0
"""Seconds the crash-loop client runs while the CPU is measured."""
INTERVAL = 0.05
"""Seconds between its requests (20 a second)."""


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_max_memory_recycles_a_grown_worker_after_its_in_flight_request(
    runtimes, tmp_path: Path
):
    reactor = reactor_()
    manifest = {"version": "1.0.0", "ttl": "5m", "maxMemory": f"{LIMIT_MB}mb"}
    write_app(tmp_path, "grower", "1.0.0", manifest=manifest, files={"app.py": GROWER})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test"})

    first = await pid_of(proc, "/grower@1/")
    slow = proc.get("/grower@1/slow")  # in flight on the worker while it grows
    assert await pid_of(proc, "/grower@1/grow") == first
    # RSS is read after a request, at most every 100 ms: keep asking until a fresh worker answers.
    pids = []
    deadline = reactor.seconds() + 20
    while reactor.seconds() < deadline:
        await sleep(reactor, 0.15)
        pids.append(await pid_of(proc, "/grower@1/"))
        if pids[-1] != first:
            break
    assert pids[-1] != first, f"the grown worker was never recycled: {pids}"

    response = await within(reactor, slow, 30)
    assert response.code == 200, "the in-flight request finished on the retired worker"
    assert (await proc.json(response))["pid"] == first
    [line] = [m for m in proc.messages("buntime:pool:memory") if m["pid"] == first]
    assert line["level"] == "warn" and line["limit_mb"] == LIMIT_MB
    assert line["rss_mb"] > LIMIT_MB
    assert "grower@1.0.0" in line["message"] and "maxMemory" in line["message"]
    retired = [
        m
        for m in proc.messages("buntime:worker:retire", "started")
        if m["pid"] == first and m["reason"] == "memory"
    ]
    assert len(retired) == 1
    assert await wait_until(reactor, lambda: not pid_alive(first), 15), "the old worker exited"
    print(f"\nmaxMemory {LIMIT_MB} MB: worker {first} retired at {line['rss_mb']} MB")


@pytest.mark.parametrize("app", ["import", "request"])
@pytest_twisted.ensureDeferred
async def test_a_crash_looping_app_answers_at_once_and_costs_little_cpu(
    runtimes, tmp_path: Path, app: str
):
    """
    An app that dies at import (or on its first request) is requested 20
    times a second for L{WINDOW} seconds: every answer is a quick 502/503
    JSON error naming it, and the runtime with all its processes (workers
    that came and went included) uses under 5 % of one core meanwhile.
    """
    reactor = reactor_()
    code = CRASH_AT_IMPORT if app == "import" else CRASH_ON_REQUEST
    manifest = {"version": "1.0.0", "ttl": "5m"}
    write_app(tmp_path, "crashy", "1.0.0", manifest=manifest, files={"app.py": code})
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test"})
    await sleep(reactor, 1.0)  # the runtime's own start is not what is measured

    cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
    own_before = own_cpu_seconds(proc.pid)
    answers: list[tuple[int, str, float]] = []
    while time.monotonic() - wall_before < WINDOW:
        sent = time.monotonic()
        response = await within(reactor, proc.get("/crashy@1/"), 10)
        error = (await proc.json(response))["error"]
        answers.append((response.code, error["message"], time.monotonic() - sent))
        await sleep(reactor, max(0.0, INTERVAL - (time.monotonic() - sent)))
    wall = time.monotonic() - wall_before
    used = cpu_seconds(proc.pid) - cpu_before
    own = own_cpu_seconds(proc.pid) - own_before
    share = used / wall

    starts = len([m for m in proc.messages("buntime:worker:start", "started")])
    slowest = max(took for _, _, took in answers)
    print(
        f"\ncrash loop ({app}): {len(answers)} requests in {wall:.1f} s, {starts} worker starts, "
        f"CPU {used:.3f} s = {share * 100:.2f} % of a core ({own:.3f} s the runtime's own), "
        f"slowest answer {slowest * 1000:.0f} ms"
    )
    assert {status for status, _, _ in answers} <= {502, 503}
    assert all("crashy@1.0.0" in message for _, message, _ in answers)
    assert slowest < 3.0, "answers come at once while the app backs off"
    assert starts <= 8, f"{starts} workers started in {wall:.0f} s: the backoff does not hold"
    # A loop that does not back off costs most of a core; this one measures
    # 1 to 5 % (answering the requests included), and a loaded CI machine adds noise.
    assert share < 0.10, f"the crash loop costs {share * 100:.1f} % of a core"


@pytest.mark.parametrize(
    "head,status,code",
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n", 431, FIELDS),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 600 + b"\r\n", 431, FIELDS),
    ],
    ids=["target", "header-bytes", "header-lines"],
)
@pytest_twisted.ensureDeferred
async def test_an_oversized_head_is_refused_and_the_runtime_goes_on(
    runtimes, tmp_path: Path, head: bytes, status: int, code: str | None
):
    reactor = reactor_()
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env={"RUNTIME_ENV": "test"})
    answer, headers, body = parse_reply(await raw_request(reactor, proc.port, head, timeout=15))
    assert answer == status
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == code
    response = await within(reactor, proc.get("/api/health"), 15)
    assert response.code == 200
    await response.content()

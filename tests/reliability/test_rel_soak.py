"""
The soak: 100 000 requests across 20 apps through a pool of 5 (so workers
are evicted and started all along), keep-alive clients on 127.0.0.1 (wrk
with C{soak.lua} when it is on PATH, else C{soak_client.py}; C{SOAK_CLIENT=python}
picks the latter).  Zero errors;
the runtime's RSS, its file descriptors, its children and the fork
template's RSS are the same after the load as after a warm-up, and no
zombie is left.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from e2e_apps import write_app
from reliability_procs import children, fd_count, rss_kb, sleep, tree, zombies_below
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

HERE = Path(__file__).resolve().parent
APPS = 20
POOL = 5
REQUESTS = 100_000
WARMUP = 10_000
THREADS = 2
CONNECTIONS = 8
RUN = 400
"""Requests in a row a wrk thread sends to one app before the next."""

APP = """
    import os

    BODY = {"app": os.environ.get("APP_NAME", ""), "pid": os.getpid()}

    routes = {"/": lambda request: BODY}
"""


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def load(port: int, requests: int) -> dict[str, Any]:
    """Run C{requests} requests (wrk, or the asyncio client); its C{SOAK_JSON} report."""
    env = {
        **os.environ,
        "SOAK_APPS": str(APPS),
        "SOAK_RUN": str(RUN),
        "SOAK_QUOTA": str(requests // THREADS),
        "SOAK_THREADS": str(THREADS),
    }
    wrk = shutil.which("wrk") if os.environ.get("SOAK_CLIENT") != "python" else None
    if wrk is not None:
        command = wrk
        args = [
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            "-d600s",
            "--timeout",
            "30s",
            "-s",
            str(HERE / "soak.lua"),
            f"http://127.0.0.1:{port}/",
        ]
    else:
        command = sys.executable
        args = [str(HERE / "soak_client.py"), str(port), str(CONNECTIONS), str(THREADS)]
    client = _Client(threads=THREADS if wrk is not None else 0)
    process = reactor_().spawnProcess(client, command, [command, *args], env=env)
    client.process = process
    code = await client.ended
    text = client.out.decode()
    assert code == 0, (text, client.err.decode())
    [line] = [line for line in text.splitlines() if line.startswith("SOAK_JSON ")]
    report = json.loads(line.removeprefix("SOAK_JSON "))
    report["client"] = "wrk" if wrk else "asyncio"
    return report


class _Client(ProcessProtocol):
    """
    The load process: its output, its exit code in C{ended}; wrk is sent
    SIGINT once each of its C{threads} has printed C{SOAK_THREAD_DONE}.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self.process: Any = None
        self._told = False

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.threads and not self._told and self.out.count(b"SOAK_THREAD_DONE") >= self.threads:
            self._told = True
            self.process.signalProcess("INT")

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", 0) or 0)


def snapshot(pid: int) -> dict[str, Any]:
    """What must not grow: the runtime's RSS and fds, its children, the template's RSS."""
    kids = children(pid)
    below = tree(pid, zombies=False)
    templates = [child for child in kids if child in below and tree(child, zombies=False)]
    return {
        "rss_kb": rss_kb(pid),
        "fds": fd_count(pid),
        "children": sorted(kids),
        "live": len(below),
        "template_rss_kb": rss_kb(templates[0]) if templates else None,
        "zombies": sorted(zombies_below(pid)),
    }


async def settled(pid: int, pool: int) -> dict[str, Any]:
    """A snapshot once the pool is back to C{pool} live workers (or 15 s passed)."""
    reactor = reactor_()
    deadline = reactor.seconds() + 15
    while True:
        await sleep(reactor, 1.0)
        now = snapshot(pid)
        # the template, and the spare it keeps forked ahead, are not the pool's workers
        workers = now["live"] - (2 if now["template_rss_kb"] is not None else 0)
        if (workers <= pool and not now["zombies"]) or reactor.seconds() > deadline:
            return now


@pytest_twisted.ensureDeferred
async def test_soak_100k_requests_across_20_apps_with_a_pool_of_5(runtimes, tmp_path: Path):
    for number in range(APPS):
        name = f"soak{number:02d}"
        manifest = {
            "version": "1.0.0",
            "ttl": "10m",
            "idleTimeout": "10m",
            "env": {"APP_NAME": name},
        }
        write_app(tmp_path, name, "1.0.0", manifest=manifest, files={"app.py": APP})
    env = {"RUNTIME_ENV": "test", "RUNTIME_POOL_SIZE": str(POOL)}
    proc = await runtimes.start(worker_dirs=[str(tmp_path)], env=env)
    # A request's log line is not kept here (100 000 of them); everything else is.
    keep = proc._line
    proc._line = lambda fd, text: None if '"buntime:http:request"' in text else keep(fd, text)

    warm = await load(proc.port, WARMUP)
    assert warm["non2xx"] == warm["socket_errors"] == warm["timeouts"] == 0, warm
    before = await settled(proc.pid, POOL)
    metrics_before = await (await proc.get("/metrics/api/")).json()

    started = time.monotonic()
    report = await load(proc.port, REQUESTS)
    took = time.monotonic() - started
    after = await settled(proc.pid, POOL)
    metrics = (await (await proc.get("/metrics/api/")).json())["pool"]

    evictions = metrics["evictions"] - metrics_before["pool"]["evictions"]
    created = metrics["totalWorkersCreated"] - metrics_before["pool"]["totalWorkersCreated"]
    growth = after["rss_kb"] / before["rss_kb"] - 1
    print(
        f"\nsoak ({report['client']}): {report['requests']} requests in {took:.1f} s "
        f"({report['requests'] / took:.0f}/s), p50 {report['p50_ms']:.1f} ms, "
        f"p99 {report['p99_ms']:.1f} ms, max {report['max_ms']:.0f} ms; "
        f"{evictions} evictions, {created} workers started\n"
        f"runtime RSS {before['rss_kb'] / 1024:.1f} -> {after['rss_kb'] / 1024:.1f} MB "
        f"({growth * 100:+.1f} %), fds {before['fds']} -> {after['fds']}, "
        f"children {before['children']} -> {after['children']}, "
        f"live processes {before['live']} -> {after['live']}, "
        f"template RSS {before['template_rss_kb']} -> {after['template_rss_kb']} KiB"
    )
    assert report["requests"] >= REQUESTS
    assert report["non2xx"] == report["socket_errors"] == report["timeouts"] == 0, report
    assert evictions >= 50, "the pool kept evicting"
    assert growth < 0.10, f"runtime RSS grew {growth * 100:.1f} %"
    assert after["zombies"] == [], after["zombies"]
    assert after["children"] == before["children"], "the same children (the template)"
    assert after["live"] == before["live"], "the same number of live workers"
    assert after["fds"] <= before["fds"], "no file descriptor leak"
    if before["template_rss_kb"] is not None:
        template_growth = after["template_rss_kb"] / before["template_rss_kb"] - 1
        assert template_growth < 0.05, f"the template's RSS grew {template_growth * 100:.1f} %"
    errors = [
        line
        for line in proc.lines
        if line.get("level") in ("error", "critical")
        and "/api/health/ready" not in line.get("message", "")  # 503 while it starts
    ]
    assert errors == [], errors[:3]

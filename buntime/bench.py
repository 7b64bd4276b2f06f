"""
The benchmark: C{python -m buntime.bench}.

Starts the runtime on a free loopback port with generated apps, drives the
SPEC §10 scenarios with C{wrk} (or, clearly labelled, a small Python load
generator when wrk is missing), runs a bare twisted.web baseline in the same
run, and prints requests/s, latency percentiles, errors, the ratio to the
baseline, pool metrics and memory.  A tool, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

SCENARIOS = {
    # name: (app path, method, clients, baseline scenario)
    "warm-noop": ("/noop-asgi/", "GET", 50, "baseline-noop"),
    "warm-noop-wsgi": ("/noop-wsgi/", "GET", 50, "baseline-noop"),
    "echo-1kb": ("/echo/", "POST", 50, "baseline-echo"),
    "slow-50ms": ("/slow/", "GET", 50, None),
    "ephemeral-noop": ("/ephemeral/", "GET", 10, None),
    "warm-noop-varied": ("/noop-asgi/", "GET", 50, "baseline-varied"),
    "warm-noop-plugin": ("/noop-asgi/", "GET", 50, "baseline-noop"),
    "baseline-noop": ("/", "GET", 50, None),
    "baseline-echo": ("/echo", "POST", 50, None),
    "baseline-varied": ("/", "GET", 50, None),
}
DEFAULT_SCENARIOS = list(SCENARIOS)
EXTRA_CHECKS = ("cold-start", "stream-100mb")
# Sent with other headers on every request (a request id, a cookie, a user agent).
VARIED_SCENARIOS = ("warm-noop-varied", "baseline-varied")
# Served by a runtime of their own, started with the bench-hooks plugin.
PLUGIN_SCENARIOS = ("warm-noop-plugin",)
GOALS = {
    # name: ((the scenario whose req/s it is compared with, the least ratio), ...)
    "warm-noop-plugin": (("warm-noop", 0.9),),
    "warm-noop-varied": (("warm-noop", 0.9), ("baseline-varied", 0.7)),
}

_APPS = {
    "noop-asgi@1.0.0": (
        "ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n",
        """
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        """,
    ),
    "noop-wsgi@1.0.0": (
        "ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n",
        """
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        """,
    ),
    "echo@1.0.0": (
        "ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n",
        """
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        """,
    ),
    "slow@1.0.0": (
        "ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n",
        """
        import asyncio

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await asyncio.sleep(0.05)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        """,
    ),
    "ephemeral@1.0.0": (
        "ttl: 0\ntimeout: 10s\n",
        """
        routes = {"/": "ok"}
        """,
    ),
    "cold@1.0.0": (
        "ttl: 5m\n",
        """
        routes = {"/": "ok"}
        """,
    ),
    "stream@1.0.0": (
        "ttl: 10m\nidleTimeout: 5m\ntimeout: 5m\n",
        """
        CHUNK = b"x" * 65536

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            total = 100 * 1024 * 1024
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(total).encode())]})
            for _ in range(total // len(CHUNK)):
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        """,
    ),
}

_WRK_SCRIPT = """
wrk.method = os.getenv("BENCH_METHOD") or "GET"
if wrk.method == "POST" then
  wrk.body = string.rep("x", 1024)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,\\"non2xx\\":%d,"
    .. "\\"p50_ms\\":%.3f,\\"p95_ms\\":%.3f,\\"p99_ms\\":%.3f}\\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""

# Added to _WRK_SCRIPT for VARIED_SCENARIOS: every request its own headers,
# the same sequence in every run (each wrk thread has a number of its own).
_WRK_VARIED = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

math.randomseed(1)
local sent = 0
request = function()
  sent = sent + 1
  local n = thread_number .. "." .. sent
  return wrk.format(nil, nil, {
    ["x-request-id"] = string.format("bench-%s-%08x", n, math.random(0, 0x7fffffff)),
    ["cookie"] = "session=" .. n .. "; theme=dark",
    ["user-agent"] = "bench/" .. n,
  })
end
"""

# The plugin of PLUGIN_SCENARIOS: both request hooks, as cheap as they come.
_PLUGIN = {
    "manifest.yaml": "name: bench-hooks\n",
    "plugin.py": """
        from zope.interface import implementer

        from buntime.interfaces import IBuntimePlugin


        @implementer(IBuntimePlugin)
        class BenchHooks:
            def on_request(self, request, app):
                return None

            def on_response(self, response, app):
                return response.with_header("x-bench", "1")


        provider = BenchHooks()
        """,
}


def serve_baseline() -> None:
    """A bare twisted.web server answering the same noop and echo, printing its port."""
    from twisted.internet import endpoints, reactor
    from twisted.web import resource, server

    class Noop(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return b"ok"

        def render_POST(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"application/octet-stream")
            return request.content.read()

    site = server.Site(Noop())
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    endpoint.listen(site).addCallback(lambda port: print(port.getHost().port, flush=True))
    reactor.run()


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of C{pid} so far, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of the runtime C{pid} and of all its descendants (living ones)."""
    return _cpu_seconds(pid), sum(_cpu_seconds(child) for child in _descendants(pid))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def write_files(folder: str, files: dict[str, str]) -> None:
    """Write C{files} (name: text, dedented) into C{folder}, made when missing."""
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as handle:
            handle.write(textwrap.dedent(text))


def write_apps(root: str) -> None:
    """Generate the benchmark apps under C{root}."""
    for name, (manifest, code) in _APPS.items():
        write_files(os.path.join(root, name), {"manifest.yaml": manifest, "app.py": code})


def write_plugin(root: str) -> str:
    """Generate the bench-hooks plugin in a plugin dir under C{root}: that dir."""
    plugin_dir = os.path.join(root, "bench-plugins")
    write_files(os.path.join(plugin_dir, "bench-hooks"), _PLUGIN)
    return plugin_dir


@contextmanager
def runtime(
    workdir: str,
    worker_mode: str,
    log_level: str,
    wrap: Sequence[str] = (),
    startup: float = 30,
    plugin_dir: str | None = None,
) -> Iterator[tuple[str, int]]:
    """
    A runtime process on a free loopback port: yields (base url, pid).
    C{wrap} goes before its command (valgrind, say), which then takes up
    to C{startup} seconds to answer.  Its plugins are those of C{plugin_dir}
    (none by default: the dir does not exist).
    """
    apps = os.path.join(workdir, "apps")
    write_apps(apps)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    command = [twistd] if os.path.exists(twistd) else [sys.executable, "-m", "twisted", "twistd"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNTIME_")},
        "RUNTIME_WORKER_DIRS": apps,
        "RUNTIME_PLUGIN_DIRS": plugin_dir or os.path.join(workdir, "plugins"),
        "RUNTIME_ENV": "production",
        "RUNTIME_LOG_FORMAT": "json",
        "RUNTIME_LOG_LEVEL": log_level,
        "RUNTIME_WORKER_MODE": worker_mode,
        "RUNTIME_POOL_SIZE": "50",
        "RUNTIME_DATA_DIR": os.path.join(workdir, "data"),
    }
    # A free port chosen here (not tcp:0): readiness is then asked over HTTP,
    # which works at any log level (the "ready" log line is info).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tempfile.TemporaryFile()  # the runtime never blocks on a full pipe
    process = subprocess.Popen(
        [
            *wrap,
            *command,
            *("-n", "--pidfile=", "buntime", "--listen", f"tcp:{port}:interface=127.0.0.1"),
        ],
        cwd=workdir,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + startup
    while _fetch_status(f"http://127.0.0.1:{port}/api/health/ready") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output.seek(0)
            sys.stdout.write(output.read().decode("utf-8", "replace")[-4000:])
            raise SystemExit("bench: the runtime did not start (its output is above)")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
        output.close()


@contextmanager
def baseline(wrap: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """A bare twisted.web server answering the same noop, in one process."""
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "buntime.bench", "--serve-baseline"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.kill()
        process.wait()


def run_wrk(url: str, method: str, clients: int, duration: float, script: str) -> dict[str, Any]:
    threads = min(2, clients)
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{clients}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            script,
            url,
        ],
        env={**os.environ, "BENCH_METHOD": method},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk gave no result:\n{output}")
    result = json.loads(match.group(1))
    seconds = result.pop("duration_us") / 1e6
    result["rps"] = round(result["requests"] / seconds, 1) if seconds else 0.0
    result["generator"] = "wrk"
    return result


async def _python_load(
    url: str, method: str, clients: int, duration: float, varied: bool = False
) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1] if "/" in url.split("//", 1)[1] else "/"
    body = b"x" * 1024 if method == "POST" else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    sent, chosen = itertools.count(1), random.Random(1)

    def request() -> bytes:
        """The next request: with headers of its own when C{varied} (as _WRK_VARIED)."""
        if not varied:
            return (head + "\r\n").encode() + body
        n = f"1.{next(sent)}"  # one thread, as wrk numbers them
        return (
            f"{head}x-request-id: bench-{n}-{chosen.getrandbits(31):08x}\r\n"
            f"cookie: session={n}; theme=dark\r\nuser-agent: bench/{n}\r\n\r\n"
        ).encode() + body

    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < stop:
            started = time.monotonic()
            writer.write(request())
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 2"):
                errors += 1
            latencies.append((time.monotonic() - started) * 1000)
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    elapsed = time.monotonic() - began
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "errors": 0,  # a failed connection ends its client; non-2xx answers are counted here:
        "non2xx": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49], 3),
        "p95_ms": round(quantiles[94], 3),
        "p99_ms": round(quantiles[98], 3),
        "generator": "python (fallback: install wrk for real numbers)",
    }


def time_to_first_byte(url: str) -> float:
    """Milliseconds from connect to the first response byte of one GET."""
    host, rest = url.split("//", 1)[1].split("/", 1)
    address, port = host.split(":")
    started = time.monotonic()
    with socket.create_connection((address, int(port)), timeout=30) as connection:
        connection.sendall(f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        connection.recv(1)
    return round((time.monotonic() - started) * 1000, 2)


def stream_rss(url: str, pid: int) -> dict[str, Any]:
    """Download the 100 MB stream; report the runtime's resident memory growth."""
    before = _rss_mb(pid) or 0.0
    peak_before = _hwm_mb(pid) or 0.0
    host, rest = url.split("//", 1)[1].split("/", 1)
    address, port = host.split(":")
    received = 0
    peak = before
    started = time.monotonic()
    with socket.create_connection((address, int(port)), timeout=60) as connection:
        connection.sendall(
            f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        while chunk := connection.recv(1 << 20):
            received += len(chunk)
            if received % (8 << 20) < len(chunk):
                peak = max(peak, _rss_mb(pid) or 0.0)
    elapsed = time.monotonic() - started
    peak = max(peak, _rss_mb(pid) or 0.0, _hwm_mb(pid) or 0.0 if peak_before < before else 0.0)
    return {
        "ok": received > 100 * 1024 * 1024,
        "bytes": received,
        "seconds": round(elapsed, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(peak - before, 1),
    }


INSTRUCTION_SCENARIOS = (
    "baseline-noop",
    "baseline-echo",
    "baseline-varied",
    "warm-noop",
    "echo-1kb",
    "warm-noop-varied",
    "warm-noop-plugin",
)
INSTRUCTION_CLIENTS = 10


def count_instructions(
    pid: int, output: str, load: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """
    Run C{load} while callgrind counts the instructions of process C{pid}
    (started with L{callgrind} and its C{output}); its result and the count.
    """
    control = ["callgrind_control"]
    subprocess.run([*control, "-i", "on", str(pid)], check=True, capture_output=True)
    result = load()
    subprocess.run([*control, "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run([*control, "-d", str(pid)], check=True, capture_output=True)
    total = 0
    folder, name = os.path.split(output)
    for entry in os.listdir(folder):
        if entry.startswith(name):
            with open(os.path.join(folder, entry)) as handle:
                for line in handle:
                    if line.startswith(("summary:", "totals:")):
                        total = max(total, int(line.split()[1]))
    return result, total


def callgrind(output: str) -> list[str]:
    """The command prefix that runs a process under callgrind, counting nothing until told."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=no",
        "--instr-atstart=no",
        f"--callgrind-out-file={output}",
    ]


def measure_instructions(
    wanted: list[str],
    duration: float,
    log_level: str,
    workdir: str,
    script: str,
    varied_script: str,
) -> dict[str, Any]:
    """
    Instructions per request of the baseline and of the runtime (its own
    process only: workers are spawned, and run outside valgrind), counted
    by callgrind while wrk drives each scenario with 10 clients: the same
    for the same code, whatever else the machine does.
    """
    results: dict[str, Any] = {}

    def measured(pid: int, output: str, url: str, name: str) -> None:
        path, method, _, _ = SCENARIOS[name]
        if not name.startswith("baseline"):
            time_to_first_byte(url + path)  # warm it up
        chosen = varied_script if name in VARIED_SCENARIOS else script
        result, total = count_instructions(
            pid, output, lambda: run_wrk(url + path, method, INSTRUCTION_CLIENTS, duration, chosen)
        )
        if result["requests"]:
            result["instructions_per_request"] = round(total / result["requests"])
        results[name] = result

    baselines = [name for name in wanted if name.startswith("baseline")]
    if baselines:
        output = os.path.join(workdir, "baseline.callgrind")
        with baseline(callgrind(output)) as (url, pid):
            for name in baselines:
                measured(pid, output, url, name)
    plain = [n for n in wanted if not n.startswith("baseline") and n not in PLUGIN_SCENARIOS]
    if plain:
        output = os.path.join(workdir, "runtime.callgrind")
        with runtime(workdir, "spawn", log_level, callgrind(output), startup=300) as (url, pid):
            for name in plain:
                measured(pid, output, url, name)
    hooked = [name for name in wanted if name in PLUGIN_SCENARIOS]
    if hooked:
        output = os.path.join(workdir, "hooked.callgrind")
        plugin_dir = write_plugin(workdir)
        with runtime(
            workdir, "spawn", log_level, callgrind(output), startup=300, plugin_dir=plugin_dir
        ) as (url, pid):
            for name in hooked:
                measured(pid, output, url, name)
    _add_ratios(results, "instructions_per_request", "instructions_ratio")
    return results


def print_instructions(report: dict[str, Any]) -> None:
    print(f"\nbuntime instructions per request ({report['duration']:g}s per scenario)\n")
    header = f"{'scenario':<16} {'requests':>9} {'k instr/request':>16} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, result in report["results"].items():
        per = result.get("instructions_per_request")
        print(
            f"{name:<16} {result['requests']:>9} "
            f"{'' if per is None else f'{per / 1000:.1f}':>16} "
            f"{result.get('instructions_ratio', ''):>6}"
        )
    print("\ncounted by callgrind in the runtime's own process (workers spawned, not counted)")


def _fetch_status(url: str) -> int | None:
    """The status of a GET to C{url}, C{None} when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def _fetch_header(url: str, name: str) -> str | None:
    """Header C{name} of a successful GET to C{url}, C{None} when absent."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.headers.get(name)
    except OSError:
        return None


def _fetch_json(url: str) -> Any:
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buntime.bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure the scenarios in turn this many times (the duration split among them); "
        "each reports its median round",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join([*DEFAULT_SCENARIOS, *EXTRA_CHECKS]),
        help="comma-separated: " + ", ".join([*SCENARIOS, *EXTRA_CHECKS]),
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--worker-mode", default="fork", choices=("fork", "spawn"))
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    parser.add_argument("--python-load", action="store_true", help="use the Python generator")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind instead (needs valgrind and wrk)",
    )
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve_baseline:
        serve_baseline()
        return 0
    wanted = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS and s not in EXTRA_CHECKS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if options.instructions:
        return _instructions_main(parser, wanted, options)
    use_wrk = shutil.which("wrk") is not None and not options.python_load
    if not use_wrk:
        print("bench: wrk not found (apt-get install wrk); using the Python load generator")

    report: dict[str, Any] = {
        "duration": options.duration,
        "rounds": max(1, options.rounds),
        "results": {},
    }
    with _workdir() as (workdir, script, varied_script):

        def load(url: str, name: str, seconds: float) -> dict[str, Any]:
            """Drive scenario C{name} at C{url} (the server's base) for C{seconds}."""
            path, method, clients, _ = SCENARIOS[name]
            varied = name in VARIED_SCENARIOS
            if use_wrk:
                chosen = varied_script if varied else script
                return run_wrk(url + path, method, clients, seconds, chosen)
            return asyncio.run(_python_load(url + path, method, clients, seconds, varied))

        def measure(url: str, pid: int, name: str, seconds: float, number: int) -> dict[str, Any]:
            """Drive runtime scenario C{name}, warm (but ephemeral-noop), timing the CPU."""
            if name != "ephemeral-noop" and number == 0:
                time_to_first_byte(url + SCENARIOS[name][0])  # warm it up
            before = _cpu_split(pid)
            result = load(url, name, seconds)
            after = _cpu_split(pid)
            if result.get("requests"):
                # CPU time per request: steadier than req/s on a busy machine
                # (exited ephemeral workers are not counted)
                result["runtime_cpu_us"] = round(
                    (after[0] - before[0]) * 1e6 / result["requests"], 1
                )
                result["workers_cpu_us"] = round(
                    (after[1] - before[1]) * 1e6 / result["requests"], 1
                )
            return result

        # Every server up at once, the scenarios measured in turn, round after
        # round: a scenario and its baseline meet the same moments of a
        # busy machine, and each reports its median round.
        hooked = [name for name in wanted if name in PLUGIN_SCENARIOS]
        loads = [name for name in wanted if name in SCENARIOS]
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
        rounds = max(1, options.rounds)
        with ExitStack() as servers:
            base_url, base_pid = servers.enter_context(baseline())
            url, pid = servers.enter_context(
                runtime(workdir, options.worker_mode, options.log_level)
            )
            where = {name: (url, pid) for name in loads}
            if hooked:
                plugin_dir = write_plugin(workdir)
                hooked_at = servers.enter_context(
                    runtime(workdir, options.worker_mode, options.log_level, plugin_dir=plugin_dir)
                )
                for name in hooked:
                    # Proof that the hooks run, before any load: on_response's header.
                    if _fetch_header(hooked_at[0] + SCENARIOS[name][0], "x-bench") == "1":
                        where[name] = hooked_at
                    else:
                        loads.remove(name)
                        report["results"][name] = {
                            "hooks_ran": False,
                            "error": "no x-bench: 1 on a response: the plugin's hooks did not run",
                        }
            if "cold-start" in wanted:
                report["results"]["cold-start"] = {"ttfb_ms": time_to_first_byte(url + "/cold/")}
            for number in range(rounds):
                for name in loads:
                    if name.startswith("baseline"):
                        result = load(base_url, name, options.duration / rounds)
                        result["rss_mb"] = _rss_mb(base_pid)
                    else:
                        result = measure(*where[name], name, options.duration / rounds, number)
                    samples[name].append(result)
            for name in loads:
                report["results"][name] = _median(samples[name])
                if name in hooked:
                    report["results"][name]["hooks_ran"] = True
            if "stream-100mb" in wanted:
                time_to_first_byte(url + "/noop-asgi/")
                report["results"]["stream-100mb"] = stream_rss(url + "/stream/", pid)
            report["runtime_rss_mb"] = _rss_mb(pid)
            report["worker_rss_mb"] = {
                str(child): _rss_mb(child) for child in _descendants(pid) if _rss_mb(child)
            }
            metrics = _fetch_json(url + "/metrics/api/")
            if metrics is not None:
                report["pool"] = metrics.get("pool", metrics)

    _add_ratios(report["results"], "rps", "ratio_to_baseline")
    _check_goals(report["results"])
    print_report(report)
    _save(report, options.json)
    return 0


@contextmanager
def _workdir() -> Iterator[tuple[str, str, str]]:
    """
    A temporary directory for one run, and the wrk scripts in it: the plain
    one, and the one of C{VARIED_SCENARIOS}.
    """
    with tempfile.TemporaryDirectory(prefix="buntime-bench-") as workdir:
        write_files(workdir, {"report.lua": _WRK_SCRIPT, "varied.lua": _WRK_SCRIPT + _WRK_VARIED})
        yield workdir, os.path.join(workdir, "report.lua"), os.path.join(workdir, "varied.lua")


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample of median req/s (the lower of the middle two), with every round's req/s."""
    ordered = sorted(samples, key=lambda sample: sample.get("rps", 0.0))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(samples) > 1:
        chosen["rps_rounds"] = [sample.get("rps") for sample in samples]
    return chosen


def _ratio(result: dict[str, Any], other: dict[str, Any] | None, measure: str) -> float | None:
    """C{result}'s C{measure} divided by C{other}'s, C{None} if either lacks it."""
    if other and other.get(measure) and measure in result:
        return round(result[measure] / other[measure], 2)
    return None


def _add_ratios(results: dict[str, Any], measure: str, ratio: str) -> None:
    """Each scenario's C{measure} divided by its baseline's, as C{ratio}."""
    for name, result in results.items():
        base = results.get(SCENARIOS.get(name, (None, None, None, None))[3] or "")
        if (value := _ratio(result, base, measure)) is not None:
            result[ratio] = value


def _check_goals(results: dict[str, Any]) -> None:
    """
    Each scenario's req/s against those its L{GOALS} name, as C{goals}: a
    list of C{{"compared_with", "least", "ratio", "met"}} (C{ratio} and
    C{met} are C{None} when the other scenario was not measured).
    """
    for name, goals in GOALS.items():
        if name not in results:
            continue
        results[name]["goals"] = []
        for other, least in goals:
            ratio = _ratio(results[name], results.get(other), "rps")
            met = None if ratio is None else ratio >= least
            results[name]["goals"].append(
                {"compared_with": other, "least": least, "ratio": ratio, "met": met}
            )


def _goals_text(result: dict[str, Any]) -> str:
    """The goals of a scenario's result and whether it met them, for the report."""
    verdicts = {True: "met", False: "NOT MET", None: "not measured"}
    return "; ".join(
        f"goal ≥ {goal['least']}x {goal['compared_with']}: "
        + ("" if goal["ratio"] is None else f"{goal['ratio']}x ")
        + verdicts[goal["met"]]
        for goal in result.get("goals", ())
    )


def _save(report: dict[str, Any], path: str | None) -> None:
    """Write C{report} as JSON to C{path}, if given (C{--json})."""
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)


def _instructions_main(parser: Any, wanted: list[str], options: Any) -> int:
    if options.scenarios == parser.get_default("scenarios"):
        wanted = list(INSTRUCTION_SCENARIOS)
    unfit = [name for name in wanted if name not in INSTRUCTION_SCENARIOS]
    if unfit:
        parser.error(f"--instructions measures {', '.join(INSTRUCTION_SCENARIOS)}; not {unfit}")
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if not shutil.which(tool)]
    if missing:
        parser.error(f"--instructions needs {', '.join(missing)} (apt-get install valgrind wrk)")
    report: dict[str, Any] = {"duration": options.duration}
    with _workdir() as (workdir, script, varied_script):
        report["results"] = measure_instructions(
            wanted, options.duration, options.log_level, workdir, script, varied_script
        )
    print_instructions(report)
    _save(report, options.json)
    return 0


def print_report(report: dict[str, Any]) -> None:
    rounds = report.get("rounds", 1)
    print(
        f"\nbuntime benchmark ({report['duration']:g}s per scenario, in {rounds} round(s): "
        "req/s of the median round)\n"
    )
    columns = (
        ("req/s", 9),
        ("p50 ms", 8),
        ("p95 ms", 8),
        ("p99 ms", 8),
        ("errors", 7),
        ("ratio", 6),
        ("rt µs", 7),
        ("wk µs", 7),
    )
    header = f"{'scenario':<16} " + " ".join(f"{title:>{width}}" for title, width in columns)
    print(header)
    print("-" * len(header))
    for name, result in report["results"].items():
        if "rps" in result:
            print(
                f"{name:<16} {result['rps']:>9.1f} {result['p50_ms']:>8.2f} "
                f"{result['p95_ms']:>8.2f} {result['p99_ms']:>8.2f} "
                f"{result['errors'] + result['non2xx']:>7} "
                f"{result.get('ratio_to_baseline', ''):>6} "
                f"{result.get('runtime_cpu_us', ''):>7} {result.get('workers_cpu_us', ''):>7}"
                f"  {_goals_text(result)}".rstrip()
            )
        else:
            print(f"{name:<16} {json.dumps(result)}")
    generators = {r.get("generator") for r in report["results"].values() if "generator" in r}
    print(f"\nload generator: {', '.join(sorted(g for g in generators if g))}")
    print(f"runtime RSS: {report.get('runtime_rss_mb')} MB; workers: {report.get('worker_rss_mb')}")
    if "pool" in report:
        print(f"pool: {json.dumps(report['pool'])}")


if __name__ == "__main__":
    sys.exit(main())

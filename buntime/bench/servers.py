"""
The servers the benchmark drives: the runtime in a process of its own, and
the bare twisted.web baseline; and the small HTTP requests that ask them
whether they are up and what they report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from buntime.bench.apps import write_apps


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


@contextmanager
def runtime(
    workdir: str,
    worker_mode: str,
    log_level: str,
    wrap: Sequence[str] = (),
    startup: float = 30,
    plugin_dir: str | None = None,
    pool_size: int = 50,
    apps: str | None = None,
    worker_cpus: str = "all",
) -> Iterator[tuple[str, int]]:
    """
    A runtime process on a free loopback port: yields (base url, pid).
    C{wrap} goes before its command (valgrind, say), which then takes up
    to C{startup} seconds to answer.  Its plugins are those of C{plugin_dir}
    (none by default: the dir does not exist), its apps those in C{apps}
    (by default the generated apps of L{write_apps}), its C{RUNTIME_POOL_SIZE}
    C{pool_size}, its C{RUNTIME_WORKER_CPUS} C{worker_cpus}.
    """
    if apps is None:
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
        "RUNTIME_WORKER_CPUS": worker_cpus,
        "RUNTIME_POOL_SIZE": str(pool_size),
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
    while fetch_status(f"http://127.0.0.1:{port}/api/health/ready") != 200:
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


def fetch_status(url: str) -> int | None:
    """The status of a GET to C{url}, C{None} when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def fetch_header(url: str, name: str) -> str | None:
    """Header C{name} of a successful GET to C{url}, C{None} when absent."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.headers.get(name)
    except OSError:
        return None


def fetch_json(url: str) -> Any:
    """The JSON answer to a GET to C{url}, C{None} when there is none."""
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except Exception:
        return None

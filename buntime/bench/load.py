"""
Driving a server: C{wrk} with the Lua script that reports its results as
JSON, or a small asyncio load generator when wrk is missing; and the single
requests that time a first byte or a 100 MB download.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from buntime.bench.proc import hwm_mb, rss_mb


def run_wrk(
    url: str,
    method: str,
    clients: int,
    duration: float,
    script: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """
    Drive C{url} with wrk and C{script} (which prints C{BENCH_JSON}), with
    C{env} added to its environment: its result.
    """
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
        env={**os.environ, "BENCH_METHOD": method, **(env or {})},
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


async def python_load(
    url: str,
    method: str,
    clients: int,
    duration: float,
    varied: bool = False,
    paths: Iterator[str] | None = None,
) -> dict[str, Any]:
    """
    Drive C{url} with C{clients} keep-alive connections for C{duration}
    seconds from this process: the fallback when wrk is missing.  With
    C{paths}, each request takes the next path from it instead of C{url}'s.
    """
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1] if "/" in url.split("//", 1)[1] else "/"
    body = b"x" * 1024 if method == "POST" else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    sent, chosen = itertools.count(1), random.Random(1)

    def request() -> bytes:
        """The next request: with headers of its own when C{varied} (as C{varied.lua})."""
        if paths is not None:
            return f"{method} {next(paths)} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
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
    before = rss_mb(pid) or 0.0
    peak_before = hwm_mb(pid) or 0.0
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
                peak = max(peak, rss_mb(pid) or 0.0)
    elapsed = time.monotonic() - started
    peak = max(peak, rss_mb(pid) or 0.0, hwm_mb(pid) or 0.0 if peak_before < before else 0.0)
    return {
        "ok": received > 100 * 1024 * 1024,
        "bytes": received,
        "seconds": round(elapsed, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(peak - before, 1),
    }

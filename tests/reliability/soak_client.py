"""
The soak's load without wrk: the same walk as C{soak.lua} (each connection
group walks the apps in runs, offset from the others), over keep-alive
HTTP/1.1 connections with asyncio, printing the same C{SOAK_JSON} line.

    python soak_client.py PORT CONNECTIONS THREADS  (SOAK_APPS, SOAK_RUN, SOAK_QUOTA set)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


async def connection(port: int, group: int, offset: int, quota: int, stats: dict) -> None:
    apps, run = int(os.environ["SOAK_APPS"]), int(os.environ["SOAK_RUN"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while stats["received"][group] < quota:
            app = (stats["sent"][group] // run + group * offset) % apps
            stats["sent"][group] += 1
            writer.write(f"GET /soak{app:02d}@1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            started = time.monotonic()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 30)
            stats["latencies"].append(time.monotonic() - started)
            stats["received"][group] += 1
            if status != 200:
                stats["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError):
        stats["socket_errors"] += 1
    except TimeoutError:
        stats["timeouts"] += 1
    finally:
        writer.close()


async def main(port: int, connections: int, groups: int) -> None:
    quota = int(os.environ["SOAK_QUOTA"])
    offset = int(os.environ["SOAK_APPS"]) // groups
    stats: dict = {"sent": [0] * groups, "received": [0] * groups, "latencies": []}
    stats.update(non2xx=0, socket_errors=0, timeouts=0)
    started = time.monotonic()
    await asyncio.gather(
        *(connection(port, n % groups, offset, quota, stats) for n in range(connections))
    )
    latencies = sorted(stats["latencies"]) or [0.0]
    report = {
        "requests": len(stats["latencies"]),
        "duration_us": int((time.monotonic() - started) * 1e6),
        "socket_errors": stats["socket_errors"],
        "non2xx": stats["non2xx"],
        "timeouts": stats["timeouts"],
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
    }
    print("SOAK_JSON " + json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))

"""
The many-apps scenarios: a runtime serving a few hundred small apps (ASGI,
WSGI and routes apps in turn), traffic that picks each request's app from a
seeded Zipf distribution, the pool's hit rate and cold starts over a run, and
the memory of idle workers (C{density}).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from buntime.bench.proc import descendants

ZIPF_S = 1.1
"""The skew of the traffic: app number k (from 1) is drawn in proportion to 1 / k ** s."""
SEED = 1
"""The Zipf draws' seed (each wrk thread adds its number to it)."""

NOOP_ASGI = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""
"""The no-op ASGI app of the benchmark (warm-noop's, and a third of the many apps)."""
NOOP_WSGI = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""
"""The no-op WSGI app (warm-noop-wsgi's, and a third of the many apps)."""
NOOP_ROUTES = 'routes = {"/": "ok"}\n'
"""The no-op routes app (the cold-start apps', and a third of the many apps)."""

_KINDS = (("asgi", NOOP_ASGI), ("wsgi", NOOP_WSGI), ("routes", NOOP_ROUTES))
_MANIFEST = "ttl: 30m\nidleTimeout: 30m\nmaxRequests: 10000000\n"


def app_name(number: int) -> str:
    """The name of many-app C{number} (0 is the most popular)."""
    return f"app-{number:03d}"


def write_many_apps(root: str, count: int) -> str:
    """
    Generate C{count} small apps under C{root}/many (an ASGI, a WSGI and a
    routes app in turn, by popularity): that directory.
    """
    folder = os.path.join(root, "many")
    for number in range(count):
        kind, code = _KINDS[number % len(_KINDS)]
        app_dir = os.path.join(folder, f"{app_name(number)}@1.0.0")
        os.makedirs(app_dir, exist_ok=True)
        with open(os.path.join(app_dir, "manifest.yaml"), "w") as handle:
            handle.write(_MANIFEST)
        with open(os.path.join(app_dir, "app.py"), "w") as handle:
            handle.write(f"# a {kind} app\n{code}")
    return folder


# Added to the reporting wrk script: each request's path is /app-NNN/, NNN
# drawn from the Zipf distribution, the same sequence in every run.
WRK_ZIPF = f"""
local apps = tonumber(os.getenv("BENCH_APPS")) or 200
local s = {ZIPF_S}
local cdf, paths, total = {{}}, {{}}, 0
for k = 1, apps do
  total = total + 1 / k ^ s
  cdf[k] = total
  paths[k] = string.format("/app-%03d/", k - 1)
end
for k = 1, apps do cdf[k] = cdf[k] / total end

local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

init = function(args)
  math.randomseed({SEED} + thread_number)
end

request = function()
  local r, low, high = math.random(), 1, apps
  while low < high do
    local middle = math.floor((low + high) / 2)
    if cdf[middle] < r then low = middle + 1 else high = middle end
  end
  return wrk.format(nil, paths[low])
end
"""


def zipf_paths(count: int, seed: int = SEED) -> Iterator[str]:
    """The Python load generator's paths: as L{WRK_ZIPF} draws them."""
    weights = [1 / k**ZIPF_S for k in range(1, count + 1)]
    chosen = random.Random(seed)
    names = [f"/{app_name(number)}/" for number in range(count)]
    while True:
        yield from chosen.choices(names, weights, k=1024)


def pool_counts(fetch_json: Callable[[str], Any], url: str) -> dict[str, int]:
    """The pool's hits, misses, workers created and evictions so far (from the metrics API)."""
    answer = fetch_json(url + "/metrics/api/") or {}
    pool = answer.get("pool", {})
    return {
        "hits": pool.get("hits", 0),
        "misses": pool.get("misses", 0),
        "created": pool.get("totalWorkersCreated", 0),
        "evictions": pool.get("evictions", 0),
    }


def pool_change(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, Any]:
    """What the pool did between two L{pool_counts}: hit rate, misses, cold starts per second."""
    change = {name: after[name] - before[name] for name in before}
    lookups = change["hits"] + change["misses"]
    return {
        "pool_hit_rate": round(100 * change["hits"] / lookups, 2) if lookups else None,
        "pool_miss_rate": round(100 * change["misses"] / lookups, 2) if lookups else None,
        "cold_starts": change["created"],
        "cold_starts_per_s": round(change["created"] / seconds, 1) if seconds else None,
        "evictions": change["evictions"],
    }


def _smaps_rollup(pid: int) -> dict[str, int]:
    """C{/proc/<pid>/smaps_rollup} in kB by field, empty when the process is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return {}
    return fields


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """PSS and private memory (clean and dirty) of C{pid} in MB, C{None} when gone."""
    fields = _smaps_rollup(pid)
    if "Pss" not in fields:
        return None
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields["Pss"] / 1024, private / 1024


def density(
    url: str,
    pid: int,
    count: int,
    first_byte: Callable[[str], float],
    fetch_json: Callable[[str], Any],
    idle: float = 2.0,
) -> dict[str, Any]:
    """
    Start C{count} many-apps once each (one request), let them idle for
    C{idle} seconds, then read the memory of the runtime C{pid}, its
    workers (their pids from the metrics API) and its other descendants
    (the fork template and the spare it keeps forked ahead) from
    C{/proc/<pid>/smaps_rollup}.
    """
    started = time.monotonic()
    for number in range(count):
        first_byte(f"{url}/{app_name(number)}/")
    elapsed = time.monotonic() - started
    time.sleep(idle)
    answer = fetch_json(url + "/metrics/api/") or {}
    workers = {w["pid"] for w in answer.get("workers", ()) if w.get("pid")}
    measured = [m for m in map(_memory_mb, sorted(workers)) if m is not None]
    others = [_memory_mb(child) for child in descendants(pid) if child not in workers]
    runtime = _memory_mb(pid) or (0.0, 0.0)
    template = sum(m[0] for m in others if m is not None)
    pss = [m[0] for m in measured]
    private = [m[1] for m in measured]
    return {
        "workers": len(measured),
        "start_seconds": round(elapsed, 2),
        "pss_per_worker_mb": round(statistics.mean(pss), 2) if pss else None,
        "private_per_worker_mb": round(statistics.mean(private), 2) if private else None,
        "runtime_pss_mb": round(runtime[0], 1),
        "template_pss_mb": round(template, 1),
        "total_pss_mb": round(runtime[0] + template + sum(pss), 1),
    }

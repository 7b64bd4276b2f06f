"""
What the benchmark serves and sends: the generated apps, the bench-hooks
plugin, and the wrk Lua scripts, written into a temporary directory per run.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

from buntime.bench.many import NOOP_ASGI, NOOP_ROUTES, NOOP_WSGI, WRK_ZIPF
from buntime.bench.scenarios import COLD_APPS, GATEWAY_LIMIT

_APPS = {
    "noop-asgi@1.0.0": ("ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n", NOOP_ASGI),
    "noop-wsgi@1.0.0": ("ttl: 5m\nidleTimeout: 5m\nmaxRequests: 10000000\n", NOOP_WSGI),
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
    "ephemeral@1.0.0": ("ttl: 0\ntimeout: 10s\n", NOOP_ROUTES),
    **{f"cold-{number}@1.0.0": ("ttl: 5m\n", NOOP_ROUTES) for number in range(COLD_APPS)},
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


# warm-noop-gateway: the built-in gateway switched on by a manifest, with
# CORS and a rate limit no run reaches (metrics and logs on, as by default).
_GATEWAY = {
    "manifest.yaml": f"""
        name: "@buntime/plugin-gateway"
        enabled: true
        rateLimit: {{requests: {GATEWAY_LIMIT}, window: 1m}}
        cors: {{origins: ["https://bench.example"], credentials: true}}
        """,
}


def write_plugin_dir(root: str, scenario: str) -> str:
    """
    Generate the plugin dir of C{scenario} (one of C{PLUGIN_SCENARIOS}) under
    C{root}: the bench-hooks plugin, or the gateway's manifest; that dir.
    """
    name, files = {
        "warm-noop-plugin": ("bench-hooks", _PLUGIN),
        "warm-noop-gateway": ("gateway", _GATEWAY),
    }[scenario]
    plugin_dir = os.path.join(root, f"{scenario}-plugins")
    write_files(os.path.join(plugin_dir, name), files)
    return plugin_dir


def write_proxy_plugin(root: str, upstream: str) -> str:
    """
    A plugin dir under C{root} turning the built-in proxy on, with one rule
    sending C{/proxied/...} to C{upstream} (the baseline server): that dir.
    """
    plugin_dir = os.path.join(root, "proxy-plugins")
    rule = {"id": "bench", "pattern": "^/proxied/(.*)", "target": upstream, "rewrite": "/$1"}
    manifest = {"name": "@buntime/plugin-proxy", "enabled": True, "rules": [rule]}
    write_files(os.path.join(plugin_dir, "proxy"), {"manifest.yaml": json.dumps(manifest)})
    return plugin_dir


@contextmanager
def temporary_workdir() -> Iterator[tuple[str, str, str]]:
    """
    A temporary directory for one run, and the wrk scripts in it: the plain
    one, and the one of C{VARIED_SCENARIOS}; beside them C{zipf.lua}, that of
    C{MANY_SCENARIOS}.
    """
    with tempfile.TemporaryDirectory(prefix="buntime-bench-") as workdir:
        scripts = {
            "report.lua": _WRK_SCRIPT,
            "varied.lua": _WRK_SCRIPT + _WRK_VARIED,
            "zipf.lua": _WRK_SCRIPT + WRK_ZIPF,
        }
        write_files(workdir, scripts)
        yield workdir, os.path.join(workdir, "report.lua"), os.path.join(workdir, "varied.lua")

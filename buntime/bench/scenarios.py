"""
The benchmark's scenarios (SPEC §10): what each drives, with how many
clients, against which baseline, and the goals some must meet.
"""

from __future__ import annotations

SCENARIOS = {
    # name: (app path, method, clients, baseline scenario)
    "warm-noop": ("/noop-asgi/", "GET", 50, "baseline-noop"),
    "warm-noop-wsgi": ("/noop-wsgi/", "GET", 50, "baseline-noop"),
    "echo-1kb": ("/echo/", "POST", 50, "baseline-echo"),
    "slow-50ms": ("/slow/", "GET", 50, None),
    "ephemeral-noop": ("/ephemeral/", "GET", 10, None),
    "warm-noop-varied": ("/noop-asgi/", "GET", 50, "baseline-varied"),
    "warm-noop-plugin": ("/noop-asgi/", "GET", 50, "baseline-noop"),
    "warm-noop-gateway": ("/noop-asgi/", "GET", 50, "baseline-noop"),
    "proxy-1kb": ("/proxied/echo", "POST", 50, "baseline-echo"),
    "many-apps-warm": ("/", "GET", 50, None),
    "many-apps-churn": ("/", "GET", 50, None),
    "baseline-noop": ("/", "GET", 50, None),
    "baseline-echo": ("/echo", "POST", 50, None),
    "baseline-varied": ("/", "GET", 50, None),
}
DEFAULT_SCENARIOS = list(SCENARIOS)
EXTRA_CHECKS = ("cold-start", "density", "stream-100mb")
# Sent with other headers on every request (a request id, a cookie, a user agent).
VARIED_SCENARIOS = ("warm-noop-varied", "baseline-varied")
# Served by a runtime of their own, started with a plugin dir (see apps.write_plugin_dir).
PLUGIN_SCENARIOS = ("warm-noop-plugin", "warm-noop-gateway")
GATEWAY_LIMIT = "1000000000"
"""The gateway's rate limit in warm-noop-gateway: far more than a run sends."""
PLUGIN_PROOF = {
    # name: (a header every answer carries when the plugin's hooks ran, its value)
    "warm-noop-plugin": ("x-bench", "1"),
    "warm-noop-gateway": ("x-ratelimit-limit", GATEWAY_LIMIT),
}
# Served by a runtime of their own with the built-in proxy in front of the baseline.
PROXY_SCENARIOS = ("proxy-1kb",)
# Served by runtimes of their own with --apps generated apps (buntime.bench.many),
# each request's app drawn from a Zipf distribution; the warm one's pool holds
# every app, the churn one's a quarter of them (50 of 200).
MANY_SCENARIOS = ("many-apps-warm", "many-apps-churn")
COLD_APPS = 5
"""cold-start: the first request to this many fresh routes apps; it reports their median."""
DENSITY_APPS = 100
"""density: the idle workers of this many apps (fewer when --apps is smaller)."""
GOALS = {
    # name: ((the scenario whose req/s it is compared with, the least ratio), ...)
    "warm-noop-plugin": (("warm-noop", 0.9),),
    "warm-noop-gateway": (("warm-noop", 0.85),),
    "warm-noop-varied": (("warm-noop", 0.9), ("baseline-varied", 0.7)),
    "proxy-1kb": (("baseline-echo", 0.5),),
    "many-apps-warm": (("warm-noop", 0.8),),
    "many-apps-churn": (("warm-noop", 0.15),),
}
LIMITS = {
    # name: ((a measure of its result, "at most" or "at least", the limit), ...)
    "many-apps-warm": (("p99_ms", "at most", 20.0),),
    "many-apps-churn": (("errors", "at most", 0), ("non2xx", "at most", 0)),
    "ephemeral-noop": (("rps", "at least", 300.0), ("p95_ms", "at most", 50.0)),
    "cold-start": (("ttfb_ms", "at most", 5.0),),
    "density": (("pss_per_worker_mb", "at most", 5.0),),
}

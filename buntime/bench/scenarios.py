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
    "baseline-noop": ("/", "GET", 50, None),
    "baseline-echo": ("/echo", "POST", 50, None),
    "baseline-varied": ("/", "GET", 50, None),
}
DEFAULT_SCENARIOS = list(SCENARIOS)
EXTRA_CHECKS = ("cold-start", "stream-100mb")
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
GOALS = {
    # name: ((the scenario whose req/s it is compared with, the least ratio), ...)
    "warm-noop-plugin": (("warm-noop", 0.9),),
    "warm-noop-gateway": (("warm-noop", 0.85),),
    "warm-noop-varied": (("warm-noop", 0.9), ("baseline-varied", 0.7)),
    "proxy-1kb": (("baseline-echo", 0.5),),
}

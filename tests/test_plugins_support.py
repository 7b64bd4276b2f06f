"""
Helpers for the plugin tests (no tests here): writing plugin directories,
a fake pool, a recording plugin, and running a loader against a clock.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from attrs import define, field
from twisted.internet.task import Clock
from zope.interface import implementer

from buntime.interfaces import IBuntimePlugin
from buntime.plugins.discovery import discover
from buntime.plugins.loader import Loader
from buntime.plugins.registry import PluginRegistry


def write_plugin(
    root: Any,
    relative: str,
    manifest: Mapping[str, Any] | str,
    code: str | None = None,
    files: Mapping[str, str] | None = None,
) -> str:
    """Write C{root/relative/manifest.yaml} (+ C{plugin.py} when C{code}); the directory."""
    directory = os.path.join(str(root), relative) if relative else str(root)
    os.makedirs(directory, exist_ok=True)
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(dict(manifest))
    with open(os.path.join(directory, "manifest.yaml"), "w") as f:
        f.write(text)
    if code is not None:
        with open(os.path.join(directory, "plugin.py"), "w") as f:
            f.write(textwrap.dedent(code))
    for name, content in (files or {}).items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(content))
    return directory


RECORDING_PLUGIN = """
from zope.interface import implementer
from buntime.interfaces import IBuntimePlugin
from test_plugins_support import EVENTS

@implementer(IBuntimePlugin)
class Recorder:
    def __init__(self, config):
        self.config = config
        self.name = config.get("label", "?")

    def on_init(self, ctx):
        EVENTS.append(("init", self.name))

    def on_shutdown(self):
        EVENTS.append(("shutdown", self.name))

def plugin(config):
    return Recorder(config)
"""
"""A plugin whose hooks append to L{EVENTS} (its C{label} setting names it)."""

EVENTS: list[tuple[str, str]] = []
"""What L{RECORDING_PLUGIN}s did, in order; tests clear it."""


@define
class FakePool:
    """What plugins see of the pool: C{metrics()}, C{worker_stats()}, C{worker_events()}."""

    numbers: dict[str, Any] = field(factory=lambda: {"totalRequests": 7, "activeWorkers": 1})
    workers: list[dict[str, Any]] = field(
        factory=lambda: [
            {"status": "active", "pid": 10, "requestCount": 3},
            {"status": "idle", "pid": 11, "requestCount": 4},
        ]
    )
    events: list[dict[str, Any]] = field(
        factory=lambda: [
            {"app": "hello@1.0.0", "event": "started", "reason": "", "count": 2},
            {"app": "hello@1.0.0", "event": "crashed", "reason": "exited", "count": 1},
            {"app": "hello@1.0.0", "event": "retired", "reason": "ttl reached", "count": 1},
        ]
    )

    def metrics(self) -> dict[str, Any]:
        return dict(self.numbers)

    def worker_stats(self) -> list[dict[str, Any]]:
        return [dict(w) for w in self.workers]

    def worker_events(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events]


@implementer(IBuntimePlugin)
@define
class FakePlugin:
    """A provider written in a test: hooks record their calls."""

    calls: list[tuple[str, Any]] = field(factory=list)

    def on_init(self, ctx: Any) -> None:
        self.calls.append(("on_init", ctx.name))

    def on_request(self, request: Any, app: Any) -> None:
        self.calls.append(("on_request", request.path))

    def on_response(self, response: Any, app: Any) -> Any:
        self.calls.append(("on_response", response.status))
        return response

    def on_shutdown(self) -> None:
        self.calls.append(("on_shutdown", None))


def make_loader(clock: Clock | None = None, **kwargs: Any) -> Loader:
    values: dict[str, Any] = {
        "environ": {},
        "global_config": {"worker_dirs": ["/apps"], "pool_size": 5},
        "pool": FakePool(),
        "reactor": clock or Clock(),
        "data_dir": "/tmp/buntime-data",
    }
    values.update(kwargs)
    return Loader(**values)


async def load_dirs(
    dirs: Sequence[Any],
    *,
    clock: Clock | None = None,
    environ: Mapping[str, str] | None = None,
    builtins: bool = False,
    **kwargs: Any,
) -> PluginRegistry:
    """Discover C{dirs} (no packages; built-ins only when asked) and load them."""
    environ = dict(environ or {})
    sources = discover(
        [str(d) for d in dirs],
        environ=environ,
        packages=False,
        **({} if builtins else {"builtins_dir": None}),
    )
    registry, _ = await make_loader(clock, environ=environ, **kwargs).load(sources)
    return registry

"""
What the runtime does for the shell (SPEC §7): it serves the frame
protocol's two JavaScript modules at a stable URL, and sends a browser's
navigation to C{/} or to a plugin's UI to the shell app (C{RUNTIME_HOMEPAGE}).

The modules live in C{buntime/web/ui/} and answer at
C{/.well-known/buntime/ui/z-frame.js} and C{/.well-known/buntime/ui/frame-sdk.js},
whatever apps and plugins are installed, so a plugin's UI can import the SDK
from a URL that never moves.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from attrs import frozen
from twisted.internet.defer import succeed

from buntime.http import Request, Response
from buntime.plugins.registry import PluginRegistry
from buntime.web.apps import AppStep
from buntime.web.static import serve_static

UI_PATH = "/.well-known/buntime/ui"
"""Where the frame protocol's modules are served."""
UI_DIR = os.path.join(os.path.dirname(__file__), "ui")


@frozen
class FrameModules:
    """Serves the files of L{UI_DIR} at L{UI_PATH} (GET and HEAD)."""

    directory: str = UI_DIR
    may_decline: ClassVar[bool] = False

    def __call__(self, request: Request, fields: dict[str, Any]) -> Awaitable[Response] | None:
        path = request.path
        if not path.startswith(UI_PATH + "/") or request.method not in ("GET", "HEAD"):
            return None
        rest = path[len(UI_PATH) :]
        if rest.rstrip("/") == "":
            return succeed(Response.error(404, "NOT_FOUND", f"Nothing at {path}"))
        answer = serve_static(self.directory, rest, UI_PATH, False, request_headers=request.headers)
        if answer.status in (200, 304):
            # revalidated on every load (a runtime upgrade changes them); any origin
            # may import them (a plugin UI served on another host)
            answer = answer.with_header("cache-control", "no-cache").with_header(
                "access-control-allow-origin", "*"
            )
        return succeed(answer)


def _top_level_navigation(request: Request) -> bool:
    """A browser loading a page in a tab (not a frame, not a fetch)."""
    headers = request.headers
    if headers.get("sec-fetch-mode") != "navigate":
        return False
    return headers.get("sec-fetch-dest") in (None, "document")


@frozen
class ShellRouting:
    """
    With a homepage app set, a top-level navigation (C{Sec-Fetch-Mode:
    navigate}, C{Sec-Fetch-Dest: document}) to C{/} or to a path under a
    plugin's base that is not its API (C{{base}/api/...}) gets the shell's
    page, which then shows that plugin's UI in a frame.  Frames, fetches
    and API paths go on to the plugin.
    """

    registry: Callable[[], PluginRegistry | None]
    apps: AppStep
    may_decline: ClassVar[bool] = False

    def __call__(self, request: Request, fields: dict[str, Any]) -> Awaitable[Response] | None:
        homepage = self.apps.homepage
        if homepage is None or request.method not in ("GET", "HEAD"):
            return None
        path = request.path
        if not _top_level_navigation(request) or not self._shell_path(path):
            return None
        return self.apps(request.with_path("/" + homepage.strip("/") + "/"), fields)

    def _shell_path(self, path: str) -> bool:
        if path == "/":
            return True
        registry = self.registry()
        if registry is None or not registry.mounted_under(path):
            return False
        # bases are one segment: what follows the first one is inside the plugin
        end = path.find("/", 1)
        inside = "/" if end < 0 else path[end:]
        return not (inside == "/api" or inside.startswith("/api/"))

"""
Tests in a real browser: headless Chromium (Debian's C{chromium}) driven by
Playwright for Python, against a real C{twistd -n buntime}.

Playwright's own browsers are never installed: it launches the system's
Chromium (C{BUNTIME_CHROMIUM}, default C{/usr/bin/chromium}).  Without
Chromium or Playwright the tests skip with the reason.

The runtime runs as a plain child process (not through the reactor:
Playwright's sync API keeps its own loop), on a free port that its
C{buntime:web:listening} log line names.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime import child_environment, twistd_command

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("BUNTIME_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def missing() -> str | None:
    """Why browser tests cannot run here, or C{None}."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if shutil.which(CHROMIUM) is None and not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def launch(playwright: Any) -> Any:
    """The system's Chromium, headless."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class BrowserRuntime:
    """A C{twistd -n buntime} child for a browser to talk to."""

    def __init__(
        self,
        worker_dirs: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.cwd = tempfile.mkdtemp(prefix="buntime-browser-")
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port: int | None = None
        self.uploads: Path | None = None
        argv = [*twistd_command(), "--pidfile=", "-n", "buntime"]
        argv.append("--listen=tcp:0:interface=127.0.0.1")
        self.process = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=child_environment(worker_dirs, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if "buntime:web:listening" in line and self.port is None:
                try:
                    self.port = int(json.loads(line)["port"])
                except (ValueError, KeyError):
                    continue
                self._listening.set()

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the runtime did not start:\n" + "\n".join(self.lines[-30:]))
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/health/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the runtime did not get ready:\n" + "\n".join(self.lines[-30:]))

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        """A JSON request from outside the browser (C{x-buntime-internal} passes the CSRF rule)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        request.add_header("x-buntime-internal", "true")
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        shutil.rmtree(self.cwd, ignore_errors=True)


def shell_runtime(root: Path, env: Mapping[str, str] | None = None) -> BrowserRuntime:
    """
    A runtime with the shell as its homepage, the repository's apps, the
    frame protocol's test pages, the proxy built-in and the demo plugin;
    uploads go to C{root/uploads} (its C{uploads} attribute).
    """
    uploads = root / "uploads"
    uploads.mkdir()
    plugins = root / "plugins"
    (plugins / "proxy").mkdir(parents=True)
    proxy = 'name: "@buntime/plugin-proxy"\nenabled: true\n'
    (plugins / "proxy" / "manifest.yaml").write_text(proxy)
    started = BrowserRuntime(
        [str(uploads), str(REPO / "apps"), str(HERE / "apps")],
        {
            "RUNTIME_HOMEPAGE": "cpanel",
            "RUNTIME_PLUGIN_DIRS": f"{plugins}:{HERE / 'plugins'}",
            "RUNTIME_DATA_DIR": str(root / "data"),
            "RUNTIME_ENV": "test",
            **(env or {}),
        },
    )
    started.uploads = uploads
    return started


def archive(name: str, version: str) -> bytes:
    """A zip of a static app named C{name} at C{version}."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zipped:
        zipped.writestr(f"{name}/manifest.yaml", f"name: {name}\nversion: {version}\n")
        zipped.writestr(f"{name}/index.html", f"<!doctype html><h1>{name} {version}</h1>")
    return data.getvalue()

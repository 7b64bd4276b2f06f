"""
Apps and tools for the end-to-end tests (C{test_e2e_*.py}).

The apps are written into a temporary worker dir by the tests themselves
(L{write_app}, L{copy_demo}); the tools talk to a runtime where treq would
hide what matters: L{raw_request} sends exact bytes (C{..} paths, chunked
bodies), L{pid_alive}, L{descendants} and L{rss_kb} look at processes
through C{/proc}, L{zip_archive} and L{multipart} build uploads.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import textwrap
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

DEMO_APPS = Path(__file__).resolve().parent.parent / "apps"
"""The example apps of the repository (read only: copied before use)."""


# -- apps on disk ---------------------------------------------------------------


def app_dir(root: Path, name: str, version: str | None = None, layout: str = "flat") -> Path:
    """Where an app version lives: C{name@version}, C{name/version} or C{name} (simple)."""
    if layout == "simple" or version is None:
        return root / name
    if layout == "nested":
        return root / name / version
    return root / f"{name}@{version}"


def write_app(
    root: Path,
    name: str,
    version: str | None = None,
    *,
    layout: str = "flat",
    manifest: Mapping[str, Any] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """
    Write an app: a C{manifest.yaml} from C{manifest} (always written, so
    the simple layout is recognised) and C{files} (text is dedented).
    """
    target = app_dir(root, name, version, layout)
    target.mkdir(parents=True, exist_ok=True)
    (target / "manifest.yaml").write_text(yaml.safe_dump(dict(manifest or {})))
    for relative, content in (files or {}).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip())
    return target


def copy_demo(root: Path, demo: str, version: str | None = None, layout: str = "flat") -> Path:
    """Copy C{apps/<demo>} (without caches) into C{root} as C{demo} at C{version}."""
    target = app_dir(root, demo, version, layout)
    shutil.copytree(DEMO_APPS / demo, target, ignore=shutil.ignore_patterns("__pycache__", ".deps"))
    return target


def static_app(root: Path, name: str, version: str | None, text: str, layout: str = "flat") -> Path:
    """A static app whose C{index.html} says C{text} (to tell versions apart)."""
    page = f"<!doctype html><html><head><title>{text}</title></head><body>{text}</body></html>"
    return write_app(
        root,
        name,
        version,
        layout=layout,
        manifest={"entrypoint": "index.html"},
        files={"index.html": page},
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file under C{root} with its content (to prove nothing changed)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def listing(root: Path) -> list[str]:
    """Every file and directory under C{root}, relative (caches left out)."""
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if "__pycache__" not in path.parts
    )


# -- app code -------------------------------------------------------------------

PROBE_ROUTES = """
    import os

    from buntime.http import Response

    def probe(request):
        return {
            "pid": os.getpid(),
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "x_base": request.headers.get("x-base"),
        }

    def environment(request):
        return dict(os.environ)

    PAGE = b"<!doctype html><html><head><title>probe</title></head><body>hi</body></html>"

    def page(request):
        return Response(200, {"content-type": "text/html; charset=utf-8"}, PAGE)

    routes = {"/env": environment, "/page.html": page}
    fetch = probe
"""
"""
A routes app: C{/env} answers its environment, C{/page.html} a small HTML
page, anything else what it saw and its pid.
"""

PROBE_WSGI = """
    import json
    import os

    KEYS = (
        "PATH_INFO",
        "SCRIPT_NAME",
        "QUERY_STRING",
        "HTTP_X_BASE",
        "REQUEST_METHOD",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_FOR",
        "wsgi.url_scheme",
    )

    def app(environ, start_response):
        seen = {key: environ.get(key) for key in KEYS}
        seen["pid"] = os.getpid()
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
"""
"""A bare WSGI app answering the environ keys that carry the path and base."""


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- processes ------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from C{/proc/<pid>/stat}, or C{None} if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie waiting to be reaped counts as gone)."""
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    """The parent of C{pid}, or C{None} if it is gone."""
    found = _stat(pid)
    return found[1] if found is not None else None


def rss_kb(pid: int) -> int:
    """The resident memory of C{pid} in KiB (C{VmRSS} of C{/proc/<pid>/status})."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def descendants(pid: int) -> set[int]:
    """The live processes below C{pid} (children, grandchildren ...)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None and found[0] not in ("Z", "X"):
                parents[int(entry)] = found[1]
    below: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - below
        below |= children
    return below


async def wait_until(
    reactor: Any, predicate: Callable[[], bool], timeout: float, interval: float = 0.05
) -> bool:
    """Poll C{predicate} until it holds (C{True}) or C{timeout} seconds pass (C{False})."""
    deadline = reactor.seconds() + timeout
    while True:
        if predicate():
            return True
        if reactor.seconds() >= deadline:
            return False
        await task.deferLater(reactor, interval, lambda: None)


async def within(reactor: Any, d: defer.Deferred[Any], seconds: float) -> Any:
    """C{await d}, failing with L{defer.TimeoutError} after C{seconds}."""
    return await d.addTimeout(seconds, reactor)


# -- raw HTTP -------------------------------------------------------------------


class _Collect(Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.received))


async def pid_of(proc: Any, path: str, seconds: float = 30) -> int:
    """The C{pid} a worker's JSON answer to C{GET path} names (asserting a 200)."""
    from twisted.internet import reactor

    response = await within(reactor, proc.get(path), seconds)
    assert response.code == 200, (path, response.code, await response.text())
    return (await proc.json(response))["pid"]


async def raw_request(reactor: Any, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send C{data} as is to the runtime and return every byte of its reply (until it closes)."""
    return (await raw_exchange(reactor, port, data, timeout))[0]


async def raw_exchange(
    reactor: Any, port: int, data: bytes, timeout: float = 10.0
) -> tuple[bytes, int]:
    """L{raw_request}, and the client's own port."""
    protocol = _Collect(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    own_port = protocol.transport.getHost().port
    try:
        return await protocol.done.addTimeout(timeout, reactor), own_port
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and raw body of an HTTP/1.1 reply."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[:size])
        body = body[size + 2 :]
    return b"".join(out)


def get_bytes(path: str, host: str) -> bytes:
    """A raw C{GET} for C{path} exactly as given (no normalisation of C{..})."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1")


# -- uploads --------------------------------------------------------------------


def zip_archive(
    entries: Mapping[str, str | bytes], symlinks: Mapping[str, str] | None = None
) -> bytes:
    """
    A zip holding C{entries} (names are written exactly as given, C{..}
    included) and C{symlinks} (entry name -> link target).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            data = content.encode() if isinstance(content, str) else content
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix: external_attr holds the file mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its content type."""
    boundary = "buntime-e2e-boundary-7d1f"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"

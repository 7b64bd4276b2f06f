"""
Static apps (entrypoint C{index.html}), served by the runtime itself.

Files come only from inside the app directory: any path that could reach
outside it (C{..}, encoded slashes or dots, backslashes, NUL) is refused
with 403 before the filesystem is touched, and a symlink in the app that
resolves outside it (into another app, say) is not served: 404, and a
warning logged once per link.  Unknown paths without a file extension get
C{index.html} (SPA fallback).
"""

from __future__ import annotations

import html
import mimetypes
import os
import re
import zlib
from collections.abc import AsyncIterator
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote

from buntime.apps.versions import is_version
from buntime.http import Headers, Response
from buntime.logs import log

INDEX = "index.html"
STREAM_THRESHOLD = 1024 * 1024
"""Files larger than this are streamed in chunks rather than read whole."""
CHUNK = 64 * 1024
HIDDEN_AT_ROOT = frozenset(("manifest.yaml", "manifest.yml", "pyproject.toml", "requirements.txt"))
"""App configuration files in the app's root that are not served as content."""

_CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".xml": "application/xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
}
_COMPRESSED = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}
"""The type of a compressed file by its encoding (C{mimetypes} names what is inside)."""
_TEXTUAL = re.compile(
    r"^(text/|application/(json|javascript|xml|manifest\+json)|image/svg\+xml)|\+(xml|json)$"
)
_UNSAFE_ENCODED = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_HEAD = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)
_HTML = re.compile(rb"<html(?:\s[^>]*)?>", re.IGNORECASE)
_BASE = re.compile(rb"<base[\s/>]", re.IGNORECASE)
_HEAD_END = re.compile(rb"</head\s*>|<body[\s>]", re.IGNORECASE)
_DRIVE = re.compile(r"\A[A-Za-z]:\Z")
OUTSIDE = "buntime:static:outside"
"""The message type of the warning about a symlink that leads out of its app."""
_WARNED: set[tuple[str, str]] = set()
"""The (app dir, link) pairs warned about already: each once per process."""
_MAX_WARNED = 4096


def content_type(path: str) -> str:
    """The C{content-type} for a file name; text types carry C{charset=utf-8}."""
    ext = os.path.splitext(path)[1].lower()
    kind = _CONTENT_TYPES.get(ext)
    if kind is None:
        guessed, encoding = mimetypes.guess_type(path)
        if encoding is not None:  # a.json.gz: gzip bytes, not JSON (no content-encoding is sent)
            guessed = _COMPRESSED.get(encoding)
        kind = guessed or "application/octet-stream"
    if _TEXTUAL.search(kind):
        return f"{kind}; charset=utf-8"
    return kind


def inject_base_href(document: bytes, base: str) -> bytes:
    """
    C{document} with C{<base href="{base}/">} inserted right after its
    C{<head>} tag (any case, attributes allowed), or after C{<html>} when
    there is no C{<head>}; unchanged when it has neither, or already has a
    C{<base>} tag in its head.  The href is HTML-escaped.
    """
    head_end = _HEAD_END.search(document)
    if _BASE.search(document, 0, head_end.start() if head_end else len(document)):
        return document
    match = _HEAD.search(document) or _HTML.search(document)
    if match is None:
        return document
    href = html.escape(base.rstrip("/") + "/", quote=True)
    tag = f'<base href="{href}">'.encode()
    return document[: match.end()] + tag + document[match.end() :]


def _forbidden() -> Response:
    return Response.error(403, "PATH_TRAVERSAL", "Forbidden")


def _not_found() -> Response:
    return Response.error(404, "NOT_FOUND", "Not Found")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _leads_out(root: str, candidate: str, real: str) -> Response:
    """The 404 for C{candidate}, a path in the app dir C{root} that resolves to C{real} outside."""
    link = _first_link_out(root, candidate)
    shown = os.path.relpath(link, root)
    key = (root, shown)
    if key not in _WARNED and len(_WARNED) < _MAX_WARNED:
        _WARNED.add(key)
        log(
            "warn",
            OUTSIDE,
            f"Not serving {shown} of {root}: a symlink leads outside the app's directory",
            app_dir=root,
            path=shown,
            target=os.path.realpath(link),
        )
    return _not_found()


def _first_link_out(root: str, candidate: str) -> str:
    """The first symlink on the way from C{root} to C{candidate} that leads out of C{root}."""
    path = root
    for part in os.path.relpath(candidate, root).split(os.sep):
        path = os.path.join(path, part)
        if os.path.islink(path) and not _inside(root, os.path.realpath(path)):
            return path
    return candidate


def _is_version_dir(root: str, name: str) -> bool:
    """Whether C{root/name} is a version directory: a nested app, not this app's content."""
    return (name == "latest" or is_version(name)) and os.path.isdir(os.path.join(root, name))


def _segments(path: str) -> list[str] | None:
    """The decoded path segments, or C{None} if the path is unsafe."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "\\" in path or "\0" in path or _UNSAFE_ENCODED.search(path):
        return None
    decoded = unquote(path, errors="strict") if "%" in path else path
    if "\\" in decoded or "\0" in decoded or decoded.startswith("//"):
        return None
    segments = [s for s in decoded.split("/") if s not in ("", ".")]
    if ".." in segments or (segments and _DRIVE.match(segments[0])):
        return None
    return segments


def serve_static(
    app_dir: str,
    path: str,
    base: str,
    inject_base: bool,
    *,
    request_headers: Headers | None = None,
    nested_versions: bool = False,
) -> Response:
    """
    Answer C{path} (relative to the app, base already stripped) from the
    files in C{app_dir}: the file, a directory's C{index.html}, or the
    app's C{index.html} for unknown paths without an extension.  HTML gets
    C{<base href>} when C{inject_base}.  With C{request_headers}, a
    matching C{If-None-Match}/C{If-Modified-Since} answers 304.

    403 for a path that could leave C{app_dir}; 404 for missing files with
    an extension, hidden files, the app's own configuration files, and
    symlinks that lead out of C{app_dir} (logged once each).  With
    C{nested_versions} (a simple-layout app: SPEC §2), a first segment that
    is a version directory (C{latest} or semver) is another app's: 404.
    """
    try:
        segments = _segments(path)
    except UnicodeDecodeError:
        segments = None
    if segments is None:
        return _forbidden()
    if any(s.startswith(".") for s in segments) or (
        len(segments) == 1 and segments[0] in HIDDEN_AT_ROOT
    ):
        return _not_found()
    root = os.path.realpath(app_dir)
    if nested_versions and segments and _is_version_dir(root, segments[0]):
        return _not_found()
    candidate = os.path.join(root, *segments)
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        return _leads_out(root, candidate, real)
    if os.path.isdir(candidate):
        candidate = os.path.join(candidate, INDEX)
    if not os.path.isfile(candidate):
        last = segments[-1] if segments else ""
        if os.path.splitext(last)[1]:
            return _not_found()
        candidate = os.path.join(root, INDEX)
        if not os.path.isfile(candidate):
            return _not_found()
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        return _leads_out(root, candidate, real)
    return _file_response(real, base if inject_base else None, request_headers or Headers())


def _file_response(path: str, base: str | None, request_headers: Headers) -> Response:
    try:
        stat = os.stat(path)
    except OSError:
        return _not_found()
    kind = content_type(path)
    is_html = kind.startswith("text/html")
    inject = is_html and base is not None
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}'
    if inject and base is not None:
        etag += f"-{zlib.crc32(base.encode('utf-8')):x}"
    etag += '"'
    headers = Headers(
        [
            ("content-type", kind),
            ("etag", etag),
            ("last-modified", formatdate(stat.st_mtime, usegmt=True)),
            ("x-content-type-options", "nosniff"),
        ]
    )
    if is_html:
        headers = headers.set("cache-control", "no-cache")
    if _not_modified(request_headers, etag, stat.st_mtime):
        return Response(304, headers)
    if inject or stat.st_size <= STREAM_THRESHOLD:
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return _not_found()
        if inject:
            body = inject_base_href(body, base or "")
        return Response(200, headers.set("content-length", str(len(body))), body)
    return Response(
        200, headers.set("content-length", str(stat.st_size)), _read_chunks(path, stat.st_size)
    )


def _not_modified(request_headers: Headers, etag: str, mtime: float) -> bool:
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or etag in tags
    since = request_headers.get("if-modified-since")
    if since:
        try:
            return int(mtime) <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


async def _read_chunks(path: str, size: int) -> AsyncIterator[bytes]:
    """A large file's bytes, L{CHUNK} at a time, stopping at the size served."""
    remaining = size
    with open(path, "rb") as f:
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
